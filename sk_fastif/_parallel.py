"""Dispatch of engine work over joblib workers (loky, threading, Dask), each bound to a device.

This module only maps and reduces: the engine cuts a call into **work units** (the solver's
units for a solve, partitions of the scored set for a scoring pass, chunks of points for
self-influence) and puts their results back together (:meth:`InfluenceEngine.bind
<sk_fastif.InfluenceEngine.bind>`); a :class:`Dispatcher` runs them. The units are dealt
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
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from joblib import cpu_count, effective_n_jobs
from sklearn.utils.parallel import Parallel, delayed
from tqdm.auto import tqdm

__all__ = ["Dispatcher", "check_devices", "split_units"]

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
