"""The influence engine and its one scoring pipeline, with no scikit-learn in it.

An :class:`InfluenceEngine` holds what every influence computation needs once ``fit`` is done:
the gradient bridge over the net, the curvature operator of the mean training loss, the prepared
solver and the training tensors. It works on tensors only (the estimator's input handling, task
checks and result objects live above it), so the same engine can be handed to a worker process
or moved to another device: it pickles small (no autograd graph, no closure: the operator is
rebuilt on unpickling) and a copy keeps its solver's prepared state, because solvers key that
state on the operator's value :attr:`~InfluenceEngine.fingerprint`.

Scores follow the package's one convention, ``score(z, z_j) = (1/n) g(z)ᵀ (H + λI)⁻¹ g(z_j)``.
Every path that scores goes through :meth:`InfluenceEngine.scores`: query gradients → iHVPs
(:meth:`~InfluenceEngine.factors`) → the scored set (the training set or an outside pool),
dense or shortlisted by a selector → one finiteness check → a :class:`Scores` record. An engine
bound to a dispatcher (:meth:`~InfluenceEngine.bind`) spreads the solves and the scoring passes
over its workers; the results are the same.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Iterator

import joblib
import numpy as np
import torch
from tqdm.auto import tqdm

from . import _gradients as grads
from . import _inputs as rows_of
from . import _store as stores
from . import _validation as val
from ._curvature import CurvatureProducts
from ._inputs import chunks, samples
from ._net import NetBridge
from ._store import DenseGradients, LinearFactors, keep_gradients
from .neighbors._base import SearchContext
from .solvers import BaseSolver, SolveResult, auto_solver

__all__ = ["InfluenceEngine", "Scores"]

logger = logging.getLogger("sk_fastif")

_QUERIES = ("each", "mean")

#: The training set's per-sample gradients are kept after the first full scoring pass while
#: they take at most this many bytes, so that every later query scores the training set by
#: matrix products instead of a gradient pass. For Linear layers they are kept as factors
#: (``n_train * (n_in + n_out) * 4`` bytes per layer in float32, see :mod:`sk_fastif._store`),
#: otherwise dense (``n_train * n_params * 4``).
TRAIN_GRADIENT_BYTES = 256 * 2**20


@dataclasses.dataclass
class Scores:
    """What :meth:`InfluenceEngine.scores` returns: the scores and how they were made.

    Attributes
    ----------
    values : ndarray of shape (n_rows, n_data) or (n_rows, n_neighbors), float64
        Dense scores of every row of the scored set, or, with a selector, the scores of each
        row's candidates (aligned with ``candidates``).
    candidates : ndarray of shape (n_rows, n_neighbors) or None
        Each row's shortlist (row indices of the scored set, sorted), or None when dense.
    n_data : int
        Number of rows of the scored set (the training set or the pool).
    solve : SolveResult
        The iHVPs of the queries and the solver's trace (for convergence checks).
    """

    values: np.ndarray
    candidates: np.ndarray | None
    n_data: int
    solve: SolveResult


class _KeptGradients:
    """The training gradients one engine and its copies keep (``store``: None until scored,
    a :class:`~sk_fastif._store.LinearFactors` or :class:`~sk_fastif._store.DenseGradients`).

    ``root`` is the directory of an on-disk store (``memory=``), or None: a pickled or moved
    engine keeps only that reference, and opens the store again when it first scores.
    """

    store: LinearFactors | DenseGradients | None = None
    root = None

    def reference(self) -> _KeptGradients:
        """A new record with this one's on-disk reference only (what travels in a pickle)."""
        new = _KeptGradients()
        new.root = self.root
        return new


class _Counted:
    """A curvature product that advances a progress bar by the number of vectors."""

    def __init__(self, fn, bar) -> None:
        self.fn, self.bar = fn, bar

    def __call__(self, V: torch.Tensor, *args):
        out = self.fn(V, *args)
        self.bar.update(int(V.shape[0]))
        return out


class InfluenceEngine:
    """Influence computations for one fitted net, training set, curvature and solver.

    Parameters
    ----------
    bridge : NetBridge
        The net's loss as a function of the selected parameters.
    curvature : {"hessian", "gauss_newton"}
        The curvature of the mean training loss.
    X_train : torch.Tensor, dict of torch.Tensor or DatasetRows
        The training inputs as the net takes them: a tensor, a dict of tensors (skorch passes
        its values to the module as keyword arguments) or the rows of a Dataset, read lazily.
        They stay where they are (CPU memory): chunks of ``batch_size`` rows go to the net's
        device as they are used.
    y_train : torch.Tensor
        The encoded training targets.
    solver : BaseSolver
        The iHVP solver; :meth:`prepare` prepares it for this engine's operator.
    verbose : int, default=0
        ``> 0`` shows progress bars for passes over the training set.

    Attributes
    ----------
    fingerprint : str
        A hash of the values the curvature depends on: the net's classes, the selected
        parameter names and values, the fixed parameters and buffers, the curvature kind and
        the training data. It does not depend on the device.
    op : CurvatureOperator
        The operator the solver is prepared for (rebuilt, with the same fingerprint, when the
        engine is unpickled or moved).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceEngine
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = torch.as_tensor(rng.randn(40, 3).astype("float32")); y = (X[:, 0] > 0).long()
    >>> net = NeuralNetClassifier(torch.nn.Linear(3, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
    >>> engine = InfluenceEngine.from_net(net, X, y, solver=Exact(damping=0.01)).prepare()
    >>> S = engine.factors(engine.gradients(X[:2], y[:2])).solution  # the iHVPs
    >>> engine.score_rows(S).shape  # their influence on every training point
    (2, 40)
    >>> engine.scores(X[:2], y[:2]).values.shape  # the same, by the one pipeline
    (2, 40)
    >>> np.allclose(engine.self_scores([0, 1]), np.diag(engine.score_rows(S)[:, :2]))
    True
    """

    def __init__(self, bridge: NetBridge, curvature: str, X_train: torch.Tensor,
                 y_train: torch.Tensor, solver: BaseSolver, *, verbose: int = 0,
                 fingerprint: str | None = None) -> None:
        self.bridge = bridge
        self.curvature = curvature
        self.X_train = X_train
        self.y_train = y_train
        self.solver = solver
        self.verbose = verbose
        self.fingerprint = self._compute_fingerprint() if fingerprint is None else fingerprint
        self.dispatcher = None  # see bind()
        self._kept = _KeptGradients()  # shared by copies (bind, with_solver): see score_rows
        self._build_operator()

    @classmethod
    def from_net(cls, net, X_train: torch.Tensor, y_train: torch.Tensor, *, params=None,
                 curvature: str = "gauss_newton", batch_size: int | str = "auto",
                 solver: BaseSolver | str, verbose: int = 0) -> InfluenceEngine:
        """Build the engine of a fitted skorch net (not yet prepared: call :meth:`prepare`).

        ``solver="auto"`` is :func:`~sk_fastif.solvers.auto_solver` for the parameters selected.

        Checks whether the net's batch loss is the mean of the per-sample losses (then
        curvature products use it) and that its loss is finite on every training point.
        """
        bridge = NetBridge(net, params, batch_size)
        if isinstance(solver, str):
            if solver != "auto":
                raise ValueError(f'solver must be a solver or "auto", got {solver!r}.')
            solver = auto_solver(bridge.n_params)
        bridge.check_batch_loss_is_mean(X_train, y_train)
        val.check_finite_training_loss(bridge, X_train, y_train)
        return cls(bridge, curvature, X_train, y_train, solver, verbose=verbose)

    # ------------------------------------------------------------------------- state
    def _build_operator(self) -> None:
        self.products = CurvatureProducts(self.bridge, self.curvature)
        self.op = self.products.operator(self.X_train, self.y_train, self.fingerprint)
        root = self._kept.root
        if root is not None and self.op.factored is not None:  # EK-FAC's factors on disk too
            self.op.factored.memo = stores.KroneckerMemo(root, self.fingerprint, self.bridge)

    def _compute_fingerprint(self) -> str:
        b = self.bridge

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        return joblib.hash((
            type(b.net).__qualname__,
            type(b.net.module_).__qualname__,
            type(getattr(b.net, "criterion_", None)).__qualname__,
            list(b.selected),
            arr(b.theta),
            sorted((k, arr(v)) for k, v in b.fixed.items()),
            self.curvature,
            bool(b.batch_loss_is_mean),
            rows_of.content_hash(self.X_train),
            arr(self.y_train),
        ))

    def __copy__(self) -> InfluenceEngine:
        new = object.__new__(type(self))  # shares the operator (pickling rebuilds it)
        new.__dict__.update(self.__dict__)
        return new

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("op", None)  # partials over the training tensors: rebuilt on loading
        state.pop("products", None)
        state["dispatcher"] = None  # a worker's copy computes where it is
        state["_kept"] = self._kept.reference()  # a worker scores its own partition
        for name in ("X_train", "y_train"):  # as numpy: joblib memory-maps large arrays
            state[name] = rows_of.to_numpy(state[name])
        return state

    def __setstate__(self, state: dict) -> None:
        for name in ("X_train", "y_train"):
            with warnings.catch_warnings():  # a read-only memory map: never written to
                warnings.simplefilter("ignore", UserWarning)
                state[name] = rows_of.from_numpy(state[name])
        self.__dict__.update(state)
        self._build_operator()

    def prepare(self) -> InfluenceEngine:
        """Prepare the solver for the operator (factorise, estimate a scale); returns self.

        With ``verbose > 0`` a progress bar counts the curvature products it spends
        (``Exact``'s curvature build, ``LiSSA``'s power iterations).
        """
        if not self.verbose:
            self.solver.prepare(self.op)
            return self
        with tqdm(desc="fit: curvature products", unit="product", leave=False) as bar:
            # the same values (and fingerprint), products counted: the solver is prepared for
            # self.op afterwards
            counted = dataclasses.replace(self.op, matvec=_Counted(self.op.matvec, bar),
                                          batch_matvec=_Counted(self.op.batch_matvec, bar))
            self.solver.prepare(counted)
        return self

    @property
    def is_prepared(self) -> bool:
        """Whether the solver is prepared for this engine's operator (a solve costs no prepare)."""
        return self.solver.is_prepared_for(self.op)

    def bind(self, dispatcher) -> InfluenceEngine:
        """A copy of the engine whose heavy methods run on ``dispatcher``'s workers.

        ``dispatcher`` has ``n_workers``, ``parallel(engine)`` and ``map(engine, kernel,
        units, *shared, desc=...)`` (see :class:`sk_fastif._parallel.Dispatcher`); the engine
        cuts each call into work units (the solver's, for solves) and puts the results back
        together, so results do not depend on the dispatcher. ``None`` computes here.
        """
        new = copy.copy(self)
        new.dispatcher = dispatcher
        return new

    def local(self) -> InfluenceEngine:
        """The same engine, computing in this process (what a worker runs)."""
        return self if self.dispatcher is None else self.bind(None)

    def with_solver(self, solver: BaseSolver) -> InfluenceEngine:
        """A sibling engine with another solver (prepared), sharing everything else."""
        new = copy.copy(self)
        new.solver = solver
        return new.prepare()

    def to(self, device: str | torch.device) -> InfluenceEngine:
        """A copy of the engine on ``device`` (the net is copied there; nothing is re-prepared).

        The training data stays where it is: chunks of ``batch_size`` rows go to the device
        as they are used.
        """
        device = torch.device(device)
        new = copy.copy(self)
        new.bridge = self.bridge.to(device)
        new.solver = copy.deepcopy(self.solver)
        new.dispatcher = None
        new._kept = self._kept.reference()
        new._build_operator()
        return new

    @property
    def n_train(self) -> int:
        """Number of training points ``n``."""
        return rows_of.n_rows(self.X_train)

    @property
    def n_params(self) -> int:
        """Number of parameters differentiated."""
        return self.bridge.n_params

    @property
    def batch_size(self) -> int:
        """Rows per chunk of per-sample work (the explainer's ``batch_size``; 128 for "auto")."""
        return self.bridge.batch_size

    @property
    def param_names(self) -> list[str]:
        """Names of the parameters differentiated, in the order of a gradient's entries."""
        return list(self.bridge.selected)

    @property
    def device(self) -> torch.device:
        """Device of the engine's tensors."""
        return self.bridge.device

    @property
    def damping(self) -> float:
        """The solver's damping ``λ`` in use (its ``damping_``; 0 for a solver without one)."""
        if "damping" not in self.solver.get_params(deep=False):
            return 0.0
        return float(self.solver.damping_)

    # ------------------------------------------------------------------------ dispatch
    @property
    def _dispatched(self) -> bool:
        return self.dispatcher is not None and self.dispatcher.parallel(self)

    @property
    def n_workers(self) -> int:
        """Workers the heavy methods are spread over (1 when computing here)."""
        return self.dispatcher.n_workers if self._dispatched else 1

    def _run(self, kernel: Callable, units: list, *shared, desc: str) -> list:
        """``[kernel(engine, unit, *shared) for unit in units]``, on the workers if bound."""
        if not self._dispatched:
            return [kernel(self, unit, *shared) for unit in units]
        return self.dispatcher.map(self.local(), kernel, units, *shared, desc=desc)

    @contextlib.contextmanager
    def _timed(self, phase: str, n: int) -> Iterator[None]:
        """Log the phase's wall time at INFO (logger ``sk_fastif``)."""
        t0 = time.perf_counter()
        yield
        logger.info("%s: %d rows in %.3f s (%d workers)", phase, n, time.perf_counter() - t0,
                    self.n_workers)

    def _partitions(self, n: int) -> list[slice]:
        """Partitions of ``n`` scored rows: one when computing here, else a few per worker."""
        if not self._dispatched:
            return [slice(0, n)] if n else []
        per = -(-n // (4 * self.n_workers))  # a few units per worker: progress
        return list(chunks(n, max(per, self.bridge.batch_size)))

    # ------------------------------------------------------------------------- gradients
    def gradients(self, X: torch.Tensor, y: torch.Tensor, *, what: str = "test point"
                  ) -> torch.Tensor:
        """Per-sample loss gradients of (X, y), shape ``(len(X), n_params)``, checked finite."""
        with self._timed("gradients", len(y)):
            G = grads.gradients(self.bridge, X, y)
        val.check_finite_gradients(G, what=what)
        return G

    def iter_gradients(self, X=None, y: torch.Tensor | None = None, *, size: int | None = None,
                       what: str = "training point") -> Iterator[tuple[slice, torch.Tensor]]:
        """Stream the gradients of (X, y) (None: the training set) in blocks of ``size`` rows.

        Each block is checked finite (a row that is not is named by its index).
        """
        if X is None:
            X, y = self.X_train, self.y_train
        size = self.bridge.batch_size if size is None else int(size)
        for sl in chunks(len(y), size):
            G = grads.gradients(self.bridge, rows_of.take(X, sl), y[sl])
            val.check_finite_gradients(G, what=what, offset=sl.start)
            yield sl, G

    def search_context(self, X=None, y: torch.Tensor | None = None, *,
                       factors: torch.Tensor | None = None,
                       what: str = "training samples") -> SearchContext:
        """The :class:`~sk_fastif.neighbors.SearchContext` of rows (None: the training set).

        With labels (or for the training set) it carries the rows' gradient stream, which
        selectors in gradient space index; ``factors`` are the queries' iHVPs.
        """
        if X is None:
            X, y = self.X_train, self.y_train
        stream = None
        if y is not None:
            point = "training point" if X is self.X_train else "point"

            def stream(size: int) -> Iterator[tuple[slice, torch.Tensor]]:
                return self.iter_gradients(X, y, size=size, what=point)

        return SearchContext(net=self.bridge.net, X=X, gradients=stream,
                             n_params=self.n_params, factors=factors, what=what)

    def _progress(self, chunks_: Iterator, X, desc: str) -> Iterator:
        """``chunks_`` (one per ``batch_size`` rows of X), under a progress bar when verbose."""
        if not self.verbose:
            return chunks_
        total = (len(chunks_) if hasattr(chunks_, "__len__")
                 else -(-rows_of.n_rows(X) // self.bridge.batch_size))
        return tqdm(chunks_, total=total, desc=desc, leave=False)

    def _iter_products(self, S: torch.Tensor, X, y: torch.Tensor, desc: str,
                       rows: np.ndarray | None, what: str = "training point"
                       ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Stream ``S @ G.T`` over chunks of (X, y) (forward mode for few rows of ``S``).

        A chunk whose products are not finite has its gradients checked, which names the
        rows (reported by ``rows``) whose gradient is not finite.
        """
        for sl, P in self._progress(grads.iter_products(self.bridge, S, X, y), X, desc):
            val.check_finite_products(
                P, lambda sl=sl: next(grads.iter_gradients(self.bridge, rows_of.take(X, sl),
                                                           y[sl]))[1],
                what=what, offset=sl.start, rows=None if rows is None else rows[sl])
            yield sl, P

    def _train_rows(self, rows) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
        if rows is None:
            return self.X_train, self.y_train, None
        rows = np.asarray(rows, dtype=np.int64)
        index = torch.as_tensor(rows, dtype=torch.long)
        return (rows_of.take(self.X_train, index), self.y_train[index.to(self.y_train.device)],
                rows)

    # ------------------------------------------------------------------------- iHVPs
    def factors(self, G: torch.Tensor) -> SolveResult:
        """The iHVPs ``(H + λI)⁻¹ g`` of the rows of ``G``.

        The solver cuts them into work units (blocks of ``batch_size`` rows; LiSSA's chain
        groups on several workers) and combines their results into one
        :class:`~sk_fastif.solvers.SolveResult` (its trace holds the largest value over the
        blocks at each step).
        """
        with self._timed("solve", len(G)):
            units = self.solver.work_units(len(G), self.bridge.batch_size, self.n_workers)

            def run(us: list) -> list:
                return self._run(_solve_unit, us, G, desc="solves")

            return self.solver.combine(units, run(units), G, run)

    def solve_queries(self, X, y: torch.Tensor, *, query: str = "each",
                      consequence: str = "their influence scores are all 0") -> SolveResult:
        """The iHVPs of the queries' loss gradients (of their mean loss for ``query="mean"``).

        Points whose gradient is exactly zero are solved exactly, by 0, with a warning that
        ends in ``consequence``.
        """
        if query not in _QUERIES:
            raise ValueError(f"query must be 'each' or 'mean'; got {query!r}.")
        G = self.gradients(X, y)
        if query == "mean":
            G = G.mean(dim=0, keepdim=True)
        val.warn_zero_gradients(G, consequence, stacklevel=4)
        return self.factors(G)

    def residuals(self, S: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """``‖(H + λI) s − g‖ / ‖g‖`` per row (NaN where ``g`` is exactly zero)."""
        R = self.op.matvec(S) + self.damping * S - G
        gnorm = G.norm(dim=1)
        return torch.where(gnorm > 0, R.norm(dim=1) / gnorm, torch.full_like(gnorm, np.nan))

    def residual_score(self, X, y: torch.Tensor) -> tuple[float, SolveResult]:
        """Minus the mean relative residual of the queries' iHVPs, and the solve.

        Points whose gradient is exactly zero are left out (with a warning); 0.0 when all are.
        """
        G = self.gradients(X, y)
        val.warn_zero_gradients(G, "they are solved exactly (by 0) and left out of the score",
                                stacklevel=3)
        res = self.factors(G)
        rel = self.residuals(res.solution, G)
        rel = rel[torch.isfinite(rel)]
        return (0.0 if rel.numel() == 0 else -float(rel.mean())), res

    # ------------------------------------------------------------------- the one pipeline
    def scores(self, X, y: torch.Tensor, *, data: tuple | None = None, selector=None,
               query: str = "each", solve: SolveResult | None = None) -> Scores:
        """Score queries against the training set or an outside pool: the one pipeline.

        Parameters
        ----------
        X, y : net input and torch.Tensor
            The queries, as the net takes them, and their encoded targets.
        data : (X, y) or None, default=None
            The scored set: None for the training set, or an outside pool (net input and
            encoded targets), scored as if its points were training points.
        selector : BaseCandidates or None, default=None
            None scores every row of the scored set. A selector fitted on the training set
            shortlists it; for a pool, a copy with the same settings is fitted on the pool
            first (its search context: embeddings, or the pool's gradient stream).
        query : {"each", "mean"}, default="each"
            One row per query, or one row for the queries' mean loss.
        solve : SolveResult or None, default=None
            The queries' iHVPs from an earlier call (of the same queries and ``query``), to
            score them again without solving.

        Returns
        -------
        scores : Scores
            Dense or candidate values (checked finite), the shortlists, the solve.
        """
        if solve is None:
            solve = self.solve_queries(X, y, query=query)
        S = solve.solution
        n_data = self.n_train if data is None else len(data[1])
        Xd, yd = (None, None) if data is None else data
        if selector is None:
            values = self.score_rows(S) if data is None else self.score_data(S, Xd, yd)
            candidates = None
        else:
            candidates = np.sort(self.shortlist(selector, X, S, query=query, data=data), axis=1)
            values = self.score_candidates(S, candidates, Xd, yd)
        val.check_finite_scores(values)
        return Scores(values=values, candidates=candidates, n_data=n_data, solve=solve)

    def shortlist(self, selector, X, S: torch.Tensor, *, query: str = "each",
                  data: tuple | None = None, n_neighbors: int | None = None) -> np.ndarray:
        """Each query's candidates among the scored set, best first (see :meth:`scores`)."""
        if data is not None:
            selector = selector.fit_like(self.search_context(*data, what="pool points"))
        context = self.search_context(X, None, factors=S, what="queries")
        return selector.kneighbors(context, n_neighbors=n_neighbors, query=query)[0]

    # ------------------------------------------------------------------------- scores
    def score_rows(self, S: torch.Tensor, rows=None) -> np.ndarray:
        """Scores of the training points ``rows`` (None: all), shape ``(len(S), n_rows)``.

        One streaming pass over their gradients, ``batch_size`` rows at a time (partitions of
        the training set on the workers, when bound).
        """
        if rows is None and self._dispatched:
            with self._timed("scoring", self.n_train):
                parts = self._run(_score_rows_unit, self._partitions(self.n_train), S,
                                  desc="scoring")
                return np.concatenate(parts, axis=1)
        store = self._kept_gradients(build=rows is None)
        if store is not None:
            with self._timed("scoring", self.n_train):
                return store.dot(S, rows).double().cpu().numpy() / self.n_train
        X, y, index = self._train_rows(rows)
        with self._timed("scoring", len(y)):
            out = np.empty((len(S), len(y)), dtype=np.float64)
            for sl, P in self._iter_products(S, X, y, "training gradients", index):
                out[:, sl] = P.cpu().numpy()
        return out / self.n_train

    def use_store(self, memory) -> InfluenceEngine:
        """Keep the training gradients on disk under ``memory`` (a directory or a
        ``joblib.Memory``; None: in memory, as needed), in the store of this engine's
        fingerprint: opened when it is there, else written in one pass over the training set
        (see :mod:`sk_fastif._store`). Returns self."""
        root = stores.store_root(memory)
        if root is not None:
            self._kept.store = stores.write_store(
                root, self.fingerprint, self.bridge, self.X_train, self.y_train,
                progress=lambda it: self._progress(it, self.X_train, "gradient store"))
            self._kept.root = root
            self._build_operator()
        return self

    def _kept_gradients(self, build: bool) -> LinearFactors | DenseGradients | None:
        """The training gradients kept in memory or on disk; computed (checked finite) when
        ``build`` and they fit :data:`TRAIN_GRADIENT_BYTES`, else None."""
        kept = getattr(self, "_kept", None)
        if kept is not None and kept.store is None and kept.root is not None:
            kept.store = stores.open_store(kept.root, self.fingerprint, self.bridge,
                                           self.n_train)
        if kept is None or kept.store is not None or not build:
            return None if kept is None else kept.store
        kept.store = keep_gradients(
            self.bridge, self.X_train, self.y_train, max_bytes=TRAIN_GRADIENT_BYTES,
            progress=lambda it: self._progress(it, self.X_train, "training gradients"))
        return kept.store

    def score_data(self, S: torch.Tensor, X, y: torch.Tensor) -> np.ndarray:
        """Scores of points outside the training set, as if they were training points.

        ``out[i, j] = (1/n) S[i] · g(X[j], y[j])`` with ``n`` the training-set size: the
        estimated rise of test loss ``i`` if point ``j`` had been in training and were removed
        (its up-weighting, with the opposite sign, for a pool of candidate data).
        """
        if self._dispatched:
            parts = self._run(_score_data_unit, self._partitions(len(y)), S, X, y,
                              desc="scoring")
            return np.concatenate(parts, axis=1) if parts else np.empty((len(S), 0))
        out = np.empty((len(S), len(y)), dtype=np.float64)
        for sl, P in self._iter_products(S, X, y, "gradients", None, what="point"):
            out[:, sl] = P.cpu().numpy()
        return out / self.n_train

    def score_candidates(self, S: torch.Tensor, C: np.ndarray, X=None,
                         y: torch.Tensor | None = None) -> np.ndarray:
        """Scores ``(1/n) S[i] · g(C[i, j])`` of each row's candidates, shape ``C.shape``.

        ``C`` holds rows of the training set (``X=None``) or of the points ``(X, y)``.
        Gradients are computed once for each distinct candidate of the whole block (the union
        of the rows of ``C``), streamed in chunks of ``batch_size``. Each chunk is reduced
        against the factors of the test points that list its rows: by one matrix product when
        those test points share most of the chunk, otherwise pair by pair.
        """
        if self._dispatched:
            units = list(chunks(len(S), max(1, -(-len(S) // self.n_workers))))
            with self._timed("candidate scoring", C.size):
                parts = self._run(_score_candidates_unit, units, S, C, X, y,
                                  desc="candidate scoring")
            return np.concatenate(parts, axis=0)
        m, kc = C.shape
        U, inv = np.unique(C.ravel(), return_inverse=True)
        order = np.argsort(inv, kind="stable")  # (test, candidate) pairs grouped by row of U
        pair_u = inv[order]
        pair_row = order // kc
        values = np.empty(m * kc, dtype=np.float64)
        device = S.device
        batch = self.bridge.batch_size
        store = self._kept_gradients(build=False) if X is None else None
        if store is not None:  # the kept training gradients: read, not recomputed
            stream = ((sl, store.gradients(U[sl])) for sl in chunks(len(U), batch))
            what = "training point"
        else:
            if X is None:
                Xc, yc, _ = self._train_rows(U)
                what = "training point"
            else:
                index = torch.as_tensor(U, dtype=torch.long)
                Xc, yc, what = rows_of.take(X, index), y[index.to(y.device)], "point"
            stream = self._progress(grads.iter_gradients(self.bridge, Xc, yc), Xc,
                                    "candidate gradients")
        for sl, G in stream:
            val.check_finite_gradients(G, what=what, rows=U[sl])
            lo, hi = np.searchsorted(pair_u, [sl.start, sl.stop])
            pos, rows, local = order[lo:hi], pair_row[lo:hi], pair_u[lo:hi] - sl.start
            involved = np.unique(rows)
            if len(involved) * (sl.stop - sl.start) <= 4 * (hi - lo):
                block = S[torch.as_tensor(involved, device=device)] @ G.T
                r = torch.as_tensor(np.searchsorted(involved, rows), device=device)
                c = torch.as_tensor(local, device=device)
                values[pos] = block[r, c].cpu().numpy()
            else:
                for a in range(0, hi - lo, batch):
                    b = slice(a, a + batch)
                    r = torch.as_tensor(rows[b], device=device)
                    c = torch.as_tensor(local[b], device=device)
                    values[pos[b]] = (S[r] * G[c]).sum(dim=1).cpu().numpy()
        return values.reshape(m, kc) / self.n_train

    def self_scores(self, rows=None) -> np.ndarray:
        """Self-influence ``(1/n) g(z_j)ᵀ (H + λI)⁻¹ g(z_j)`` of training points ``rows``."""
        if rows is None and self._dispatched:
            with self._timed("self-influence", self.n_train):
                return np.concatenate(self._run(_self_scores_unit,
                                                self._partitions(self.n_train), None, None,
                                                desc="self-influence"))
        X, y, _ = self._train_rows(rows)
        return self.local().self_scores_data(X, y)

    def self_scores_data(self, X, y: torch.Tensor) -> np.ndarray:
        """Self-influence of any points (X, y), one solve per chunk of ``batch_size``.

        The inner products are summed in float64, so they do not overflow where the
        gradients and factors are finite; a score that is still not finite is an error.
        """
        if self._dispatched:
            with self._timed("self-influence", len(y)):
                return np.concatenate(self._run(_self_scores_unit, self._partitions(len(y)),
                                                X, y, desc="self-influence"))
        out = np.empty(len(y), dtype=np.float64)
        for sl, G in grads.iter_gradients(self.bridge, X, y):
            val.check_finite_gradients(G, what="point", offset=sl.start)
            val.warn_zero_gradients(G, "their self-influence is 0", stacklevel=3)
            S = self.factors(G).solution
            out[sl] = (S.double() * G.double()).sum(dim=1).cpu().numpy()
        out /= self.n_train
        val.check_finite_scores(out)
        return out

    # ------------------------------------------------------------------------- steps
    def losses(self, X, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses of (X, y) at the fitted parameters, shape ``(n,)``."""
        return self.bridge.losses(X, y)

    def losses_after_step(self, X, y: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Loss of each point ``i`` of (X, y) at the parameters ``θ - steps[i]``.

        Only the selected parameters move, and only in this computation: the net is left as
        it is. ``steps`` has shape ``(len(y), n_params)``.
        """
        bridge = self.bridge
        out = torch.empty(len(y), dtype=bridge.dtype, device=bridge.device)
        with bridge.modes(), torch.no_grad():
            for i, (xi, yi) in enumerate(zip(samples(X), y)):
                out[i] = bridge.sample_loss(bridge.theta - steps[i].to(bridge.device),
                                            rows_of.to_device(xi, bridge.device),
                                            yi.to(bridge.device))
        return out


# ------------------------------------------------------------------ the work-unit kernels
def _solve_unit(engine: InfluenceEngine, unit, G: torch.Tensor) -> SolveResult:
    return engine.solver.solve_unit(engine.op, G, unit)


def _score_rows_unit(engine: InfluenceEngine, rows: slice, S: torch.Tensor) -> np.ndarray:
    return engine.score_rows(S, np.arange(rows.start, rows.stop))


def _score_data_unit(engine: InfluenceEngine, rows: slice, S: torch.Tensor, X, y
                     ) -> np.ndarray:
    return engine.score_data(S, rows_of.take(X, rows), y[rows])


def _score_candidates_unit(engine: InfluenceEngine, rows: slice, S: torch.Tensor,
                           C: np.ndarray, X, y) -> np.ndarray:
    return engine.score_candidates(S[rows], C[rows], X, y)


def _self_scores_unit(engine: InfluenceEngine, rows: slice, X, y) -> np.ndarray:
    if X is None:
        return engine.self_scores(np.arange(rows.start, rows.stop))
    return engine.self_scores_data(rows_of.take(X, rows), y[rows])
