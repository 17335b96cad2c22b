"""Dispatch of engine work over joblib workers (loky, threading, Dask), each bound to a device.

A call is cut into **work units** (blocks of test points for the solve, partitions of the
training set for the scoring pass, chunks of points for self-influence). The units are dealt
into one contiguous **share** per worker, so each worker receives the engine once per call and
keeps it for all its units; results come back in the units' order, whatever the backend. Seeds
are fixed before dispatch (a solver's seed never depends on the block it solves), so results do
not depend on ``n_jobs``, the partitioning or the backend.

Workers in other processes limit their torch and BLAS threads to their share of the cores
(threadpoolctl), so that workers never oversubscribe the machine; threads of the calling process
(the threading backend) each work on their own copy of the engine, since torch modules are not
safe to share between threads for every operation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from joblib import Parallel, cpu_count, delayed, effective_n_jobs
from tqdm.auto import tqdm

from . import _batch as rows_of
from ._engine import merge_results

__all__ = ["Dispatcher", "ParallelEngine", "check_devices", "split_units"]

logger = logging.getLogger("sk_fastif")

def check_devices(devices, default: torch.device) -> list[torch.device]:
    """The devices work is bound to: ``[default]`` for None; a clear ValueError for bad ones."""
    if devices is None:
        return [torch.device(default)]
    if isinstance(devices, (str, torch.device)):
        devices = [devices]
    out = []
    for d in devices:
        try:
            dev = torch.device(d)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"devices: {d!r} is not a torch device ({exc}).") from None
        if dev.type == "cuda":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (dev.index or 0) >= n:
                raise ValueError(
                    f"devices: {d!r} does not exist on this machine ({n} CUDA device(s) "
                    "visible). Use devices=None for the net's device."
                )
        elif dev.type == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise ValueError(f"devices: {d!r} does not exist on this machine (no MPS).")
        elif dev.type != "cpu":
            raise ValueError(f"devices: {d!r} is not supported; use 'cpu', 'cuda:N' or 'mps'.")
        out.append(dev)
    if not out:
        raise ValueError("devices must name at least one device, or be None.")
    return out


def split_units(n: int, size: int) -> list[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` items (the work units)."""
    return [slice(a, min(a + size, n)) for a in range(0, n, max(1, size))]


@contextlib.contextmanager
def _thread_limits(n_threads: int | None, caller: int) -> Iterator[None]:
    """Limit torch's and the BLAS libraries' threads in a worker process (not the caller's)."""
    if n_threads is None or os.getpid() == caller:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        torch.set_num_threads(before)


_HEAP_LOCK = threading.Lock()
_heap_users = 0


def _static_mmap_threshold() -> int | None:
    """glibc's mmap threshold when the environment froze it at a small value, else None.

    Setting ``MALLOC_TRIM_THRESHOLD_`` (Dask's nanny starts every worker with 65536) turns off
    glibc's dynamic mmap threshold, which stays at 128 KiB unless ``MALLOC_MMAP_THRESHOLD_`` says
    otherwise. Then every tensor over 128 KiB is a fresh ``mmap`` whose pages fault in on first
    touch and go back to the system when freed: torch's per-sample gradients and curvature
    products, which allocate and free such blocks all the time, run about twice as slowly.
    """
    if not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return None
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:  # chosen explicitly: respected
        return None
    return 128 * 1024


@contextlib.contextmanager
def _heap_for_tensors() -> Iterator[None]:
    """While work units run in this process, serve blocks up to 32 MiB from the heap.

    Only where :func:`_static_mmap_threshold` finds a frozen threshold (a Dask worker, typically),
    and only on glibc; the worker's setting is restored when its last running share ends, so its
    other tasks see the allocator as it was configured.
    """
    global _heap_users
    frozen = _static_mmap_threshold()
    mallopt = None
    if frozen is not None:
        try:
            import ctypes

            mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc only
        except (OSError, AttributeError):
            mallopt = None
    if mallopt is None:
        yield
        return
    m_mmap_threshold = -3  # from glibc's malloc.h
    with _HEAP_LOCK:
        if _heap_users == 0:
            mallopt(m_mmap_threshold, 32 << 20)
        _heap_users += 1
    try:
        yield
    finally:
        with _HEAP_LOCK:
            _heap_users -= 1
            if _heap_users == 0:
                mallopt(m_mmap_threshold, frozen)


def _run_share(boxed: tuple, device: torch.device, n_threads: int | None, kernel: Callable,
               units: Sequence[tuple[int, object]], shared: tuple, filters: list,
               caller: int) -> list:
    """Worker: run ``kernel(engine, unit, *shared)`` on each unit of the share, in order.

    In the caller's own process (threading backend) the engine is copied first, so no two
    threads share a module; in a worker process the unpickled engine is already private. The
    caller's warning filters apply in the worker too. ``boxed`` holds the engine in a tuple:
    Dask's joblib backend would scatter a bare engine to one worker, and the data locality of
    that copy would then run every share of the call on that one worker.
    """
    (engine,) = boxed
    with _thread_limits(n_threads, caller), _heap_for_tensors(), warnings.catch_warnings():
        warnings.filters[:] = filters
        if os.getpid() == caller or engine.device != device:
            engine = engine.to(device)
        engine.verbose = 0  # a private copy: the caller's bar counts the units
        shared = tuple(s.to(device) if isinstance(s, torch.Tensor) else s for s in shared)
        out = []
        for index, unit in units:
            try:
                out.append(kernel(engine, unit, *shared))
            except Exception as exc:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"(in work unit {index} of {kernel.__name__})")
                raise
        return out


class Dispatcher:
    """Run the units of one call on the workers, and put the results back in order.

    Parameters
    ----------
    n_jobs : int or None
        As in scikit-learn: None means 1 unless a :func:`joblib.parallel_config` context says
        otherwise (e.g. ``backend="dask"``); -1 means all workers.
    devices : list of torch.device
        Share ``i`` runs on ``devices[i % len(devices)]``.
    verbose : int
        ``> 0`` shows a progress bar over the work units.
    """

    def __init__(self, n_jobs, devices: list[torch.device], verbose: int = 0) -> None:
        self.n_jobs = n_jobs
        self.devices = devices
        self.verbose = verbose

    @property
    def n_workers(self) -> int:
        """Workers of the active backend for ``n_jobs``."""
        return max(1, int(effective_n_jobs(self.n_jobs)))

    def parallel(self, engine) -> bool:
        """Whether calls are dispatched (more than one worker, or another device)."""
        return self.n_workers > 1 or self.devices[0] != engine.device

    def map(self, engine, kernel: Callable, units: Sequence, *shared, desc: str = "work"
            ) -> list:
        """``[kernel(engine, unit, *shared) for unit in units]``, computed by the workers."""
        units = list(units)
        n_shares = min(self.n_workers, len(units)) or 1
        if n_shares == 1 and self.devices[0] == engine.device:  # nothing to spread
            return [kernel(engine, unit, *shared) for unit in units]
        bounds = np.linspace(0, len(units), n_shares + 1).round().astype(int)
        shares = [list(enumerate(units))[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        n_threads = max(1, cpu_count() // n_shares) if n_shares > 1 else None
        tasks = (
            delayed(_run_share)((engine,), self.devices[i % len(self.devices)], n_threads, kernel,
                                share, shared, list(warnings.filters), os.getpid())
            for i, share in enumerate(shares)
        )
        bar = tqdm(total=len(units), desc=desc, leave=False, disable=not self.verbose)
        results: list = []
        try:
            for share, out in zip(shares, Parallel(n_jobs=n_shares, return_as="generator")(
                    tasks)):
                results.extend(out)
                bar.update(len(share))
        finally:
            bar.close()
        return results


# ------------------------------------------------------------------------------ the kernels
def _factors(engine, rows: slice, G: torch.Tensor):
    return engine.factors(G[rows])


def _score_rows(engine, rows: slice, S: torch.Tensor) -> np.ndarray:
    return engine.score_rows(S, np.arange(rows.start, rows.stop))


def _score_candidates(engine, rows: slice, S: torch.Tensor, C: np.ndarray) -> np.ndarray:
    return engine.score_candidates(S[rows], C[rows])


def _self_scores(engine, rows: slice, X, y: torch.Tensor | None):
    if X is None:
        return engine.self_scores(np.arange(rows.start, rows.stop))
    return engine.self_scores_data(rows_of.take(X, rows), y[rows])


class ParallelEngine:
    """An engine's computations, dispatched over the workers of a :class:`Dispatcher`.

    The same methods as :class:`~sk_fastif.InfluenceEngine` that dominate a call, and the same
    results: ``factors`` over blocks of ``batch_size`` test points, ``score_rows`` over
    partitions of the training set, ``score_candidates`` over blocks of test points, and the
    self-influence over chunks of points. With one worker on the engine's own device every
    method is the engine's, in this process.
    """

    def __init__(self, engine, dispatcher: Dispatcher) -> None:
        self.engine = engine
        self.dispatcher = dispatcher

    def __getattr__(self, name: str):
        if name in ("engine", "dispatcher"):
            raise AttributeError(name)
        return getattr(self.engine, name)  # gradients, residuals, n_train, ...

    def with_solver(self, solver) -> ParallelEngine:
        """The same dispatch over a sibling engine with another (prepared) solver."""
        return ParallelEngine(self.engine.with_solver(solver), self.dispatcher)

    @property
    def _parallel(self) -> bool:
        return self.dispatcher.parallel(self.engine)

    @contextlib.contextmanager
    def _timed(self, phase: str, n: int) -> Iterator[None]:
        """Log the phase's wall time at INFO (logger ``sk_fastif``)."""
        t0 = time.perf_counter()
        yield
        logger.info("%s: %d rows in %.3f s (%d workers)", phase, n, time.perf_counter() - t0,
                    self.dispatcher.n_workers if self._parallel else 1)

    def gradients(self, X: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
        """The engine's per-sample gradients of (X, y), in this process (timed)."""
        with self._timed("gradients", len(y)):
            return self.engine.gradients(X, y, **kw)

    def factors(self, G: torch.Tensor):
        """The iHVPs of the rows of ``G``, one block of ``batch_size`` rows per work unit."""
        with self._timed("solve", len(G)):
            if not self._parallel:
                return self.engine.factors(G)
            n_workers = self.dispatcher.n_workers
            n_repeats = int(self.engine.solver.get_params().get("n_repeats", 1))
            if n_repeats > 1 and hasattr(self.engine.solver, "solve_chains"):
                return self._factors_by_chains(G, n_repeats)
            # blocks of batch_size test points, smaller when that leaves a worker idle (a
            # solution never depends on the block it is solved in)
            size = min(self.engine.bridge.batch_size, -(-len(G) // n_workers))
            units = split_units(len(G), size)
            results = self.dispatcher.map(self.engine, _factors, units, G, desc="solves")
            S = torch.cat([r.solution.to(G.device) for r in results]) if results else G[:0]
            self._adopt_restarts(results)
            return merge_results(results, S)

    def _factors_by_chains(self, G: torch.Tensor, n_repeats: int):
        """LiSSA's ``n_repeats`` chains spread over the workers, and averaged (FastIF's variant).

        Units are (block of test points, group of chains). The groups of a block must end at
        one scale to be averaged: a group that an automatic-scale restart left behind is run
        again at the scale the others reached, as a sequential solve would have done.
        """
        n_groups = min(n_repeats, self.dispatcher.n_workers)
        groups = [tuple(int(r) for r in g) for g in np.array_split(np.arange(n_repeats), n_groups)]
        blocks = split_units(len(G), self.engine.bridge.batch_size)
        units = [(rows, g, None) for rows in blocks for g in groups]
        results = self.dispatcher.map(self.engine, _chains, units, G, desc="LiSSA chains")
        self._adopt_restarts(results)
        while True:
            by_block = [results[i * n_groups:(i + 1) * n_groups] for i in range(len(blocks))]
            top = [max(float(r.info["scale"]) for r in rs) for rs in by_block]
            behind = [(b, j) for b, rs in enumerate(by_block) for j, r in enumerate(rs)
                      if float(r.info["scale"]) < top[b]]
            if not behind:
                break
            redo = [(blocks[b], groups[j], top[b]) for b, j in behind]
            again = self.dispatcher.map(self.engine, _chains, redo, G, desc="LiSSA chains")
            self._adopt_restarts(again)
            for (b, j), r in zip(behind, again):
                results[b * n_groups + j] = r
        merged = []
        for rs in by_block:
            S = sum(r.solution.to(G.device) for r in rs[1:]) + rs[0].solution.to(G.device)
            block = merge_results(rs, S)
            block.n_hvp = sum(r.n_hvp for r in rs)
            merged.append(block)
        S = torch.cat([m.solution for m in merged]) if merged else G[:0]
        result = merge_results(merged, S)
        result.info.pop("repeats", None)
        return result

    def _adopt_restarts(self, results) -> None:
        """Keep a scale that a worker's restart doubled (as a sequential solve would)."""
        solver = self.engine.solver
        restarts = [r for res in results for r in res.info.get("restarts", [])]
        if restarts and hasattr(solver, "restarts_"):
            solver.restarts_.extend(restarts)
            solver.scale_ = max(float(res.info["scale"]) for res in results)

    def _training_units(self, n: int) -> list[slice]:
        per = -(-n // (4 * self.dispatcher.n_workers))  # a few units per worker: progress
        return split_units(n, max(per, self.engine.bridge.batch_size))

    def score_rows(self, S: torch.Tensor) -> np.ndarray:
        """Scores of every training point, one partition of the training set per work unit."""
        with self._timed("scoring", self.engine.n_train):
            if not self._parallel:
                return self.engine.score_rows(S)
            units = self._training_units(self.engine.n_train)
            parts = self.dispatcher.map(self.engine, _score_rows, units, S, desc="scoring")
            return np.concatenate(parts, axis=1)

    def score_candidates(self, S: torch.Tensor, C: np.ndarray) -> np.ndarray:
        """Scores of each row's candidates, one block of test points per work unit."""
        with self._timed("candidate scoring", C.size):
            if not self._parallel:
                return self.engine.score_candidates(S, C)
            units = split_units(len(S), max(1, -(-len(S) // self.dispatcher.n_workers)))
            parts = self.dispatcher.map(self.engine, _score_candidates, units, S, C,
                                        desc="candidate scoring")
            return np.concatenate(parts, axis=0)

    def self_scores(self, X: torch.Tensor | None = None, y: torch.Tensor | None = None
                    ) -> np.ndarray:
        """Self-influence of the training set (``X=None``) or of the points (X, y)."""
        n = self.engine.n_train if X is None else len(y)
        with self._timed("self-influence", n):
            if not self._parallel:
                return (self.engine.self_scores() if X is None
                        else self.engine.self_scores_data(X, y))
            units = self._training_units(n)
            parts = self.dispatcher.map(self.engine, _self_scores, units, X, y,
                                        desc="self-influence")
            return np.concatenate(parts)


def _chains(engine, unit: tuple[slice, tuple[int, ...], float | None], G: torch.Tensor):
    rows, repeats, scale = unit
    return engine.solver.solve_chains(engine.op, G[rows], repeats, scale=scale)
