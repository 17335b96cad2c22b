"""The influence engine: gradients, iHVPs and scores, with no scikit-learn in it.

An :class:`InfluenceEngine` holds what every influence computation needs once ``fit`` is done:
the gradient bridge over the net, the curvature operator of the mean training loss, the prepared
solver and the training tensors. It works on tensors only (the estimator's input handling, task
checks and result objects live above it), so the same engine can be handed to a worker process
or moved to another device: it pickles small (no autograd graph, no closure: the operator is
rebuilt on unpickling) and a copy keeps its solver's prepared state, because solvers key that
state on the operator's value :attr:`~InfluenceEngine.fingerprint`.

Scores follow the package's one convention, ``score(z, z_j) = (1/n) g(z)ᵀ (H + λI)⁻¹ g(z_j)``:
:meth:`~InfluenceEngine.factors` computes the iHVPs ``S`` of a block of test gradients and the
``score_*`` methods reduce them against training (or other) gradients.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Iterator

import joblib
import numpy as np
import torch
from tqdm.auto import tqdm

from . import _batch as rows_of
from . import _validation as val
from ._curvature import CurvatureProducts
from ._gradients import NetBridge
from .solvers import BaseSolver, SolveResult, auto_solver

__all__ = ["InfluenceEngine", "merge_results"]


def merge_results(results: list[SolveResult], S: torch.Tensor) -> SolveResult:
    """One :class:`SolveResult` for a solve done in blocks: the block trace maxima per step.

    Parameters
    ----------
    results : list of SolveResult
        The solves of the blocks, in order.
    S : torch.Tensor of shape (n, n_params)
        Their solutions, concatenated.

    Returns
    -------
    result : SolveResult
        ``S`` with, at each step, the largest trace value over the blocks that ran that step;
        the products summed, converged when every block converged, the most iterations of a
        block, and the last block's ``info``.

    Examples
    --------
    >>> import torch
    >>> from sk_fastif._engine import merge_results
    >>> from sk_fastif.solvers import SolveResult
    >>> a = SolveResult(torch.zeros(2, 3), trace=[1.0, 0.1], n_hvp=4, converged=True, n_iter=2)
    >>> b = SolveResult(torch.ones(1, 3), trace=[0.5, 0.2, 0.01], n_hvp=3, converged=False,
    ...                 n_iter=3)
    >>> merged = merge_results([a, b], torch.cat([a.solution, b.solution]))
    >>> merged.trace, merged.n_hvp, merged.converged, merged.n_iter
    ([1.0, 0.2, 0.01], 7, False, 3)
    """
    if len(results) == 1:
        return SolveResult(solution=S, trace=results[0].trace, n_hvp=results[0].n_hvp,
                           converged=results[0].converged, n_iter=results[0].n_iter,
                           info=dict(results[0].info))
    n_steps = max((len(r.trace) for r in results), default=0)
    trace = [max(r.trace[i] for r in results if i < len(r.trace)) for i in range(n_steps)]
    return SolveResult(
        solution=S,
        trace=trace,
        n_hvp=sum(r.n_hvp for r in results),
        converged=all(r.converged for r in results),
        n_iter=max(r.n_iter for r in results),
        info=dict(results[-1].info),
    )


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
        self._build_operator()

    @classmethod
    def from_net(cls, net, X_train: torch.Tensor, y_train: torch.Tensor, *, params=None,
                 curvature: str = "gauss_newton", batch_size: int = 128,
                 solver: BaseSolver | str, verbose: int = 0) -> InfluenceEngine:
        """Build the engine of a fitted skorch net (not yet prepared: call :meth:`prepare`).

        ``solver="auto"`` is :func:`~sk_fastif.solvers.auto_solver` for the parameters selected.

        Checks that the net's loss is finite on every training point and whether its batch
        loss is the mean of the per-sample losses (then curvature products use it).
        """
        bridge = NetBridge(net, params, batch_size)
        if isinstance(solver, str):
            if solver != "auto":
                raise ValueError(f'solver must be a solver or "auto", got {solver!r}.')
            solver = auto_solver(bridge.n_params)
        val.check_finite_training_loss(bridge, X_train, y_train)
        bridge.check_batch_loss_is_mean(X_train, y_train)
        return cls(bridge, curvature, X_train, y_train, solver, verbose=verbose)

    # ------------------------------------------------------------------------- state
    def _build_operator(self) -> None:
        self.products = CurvatureProducts(self.bridge, self.curvature)
        self.op = self.products.operator(self.X_train, self.y_train, self.fingerprint)

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
    def device(self) -> torch.device:
        """Device of the engine's tensors."""
        return self.bridge.device

    @property
    def damping(self) -> float:
        """The solver's damping ``λ`` in use (its ``damping_``; 0 for a solver without one)."""
        if "damping" not in self.solver.get_params(deep=False):
            return 0.0
        return float(self.solver.damping_)

    # ------------------------------------------------------------------------- gradients
    def gradients(self, X: torch.Tensor, y: torch.Tensor, *, what: str = "test point"
                  ) -> torch.Tensor:
        """Per-sample loss gradients of (X, y), shape ``(len(X), n_params)``, checked finite."""
        G = self.bridge.gradients(X, y)
        val.check_finite_gradients(G, what=what)
        return G

    def _progress(self, chunks: Iterator, X, desc: str) -> Iterator:
        """``chunks`` (one per ``batch_size`` rows of X), under a progress bar when verbose."""
        if not self.verbose:
            return chunks
        return tqdm(chunks, total=-(-rows_of.n_rows(X) // self.bridge.batch_size), desc=desc,
                    leave=False)

    def _iter_gradients(self, X: torch.Tensor, y: torch.Tensor, desc: str,
                        rows: np.ndarray | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """Stream the gradients of (X, y) in chunks, checked finite (reported by ``rows``)."""
        for sl, G in self._progress(self.bridge.iter_gradients(X, y), X, desc):
            if rows is None:
                val.check_finite_gradients(G, what="training point", offset=sl.start)
            else:
                val.check_finite_gradients(G, what="training point", rows=rows[sl])
            yield sl, G

    def _iter_products(self, S: torch.Tensor, X, y: torch.Tensor, desc: str,
                       rows: np.ndarray | None, what: str = "training point"
                       ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Stream ``S @ G.T`` over chunks of (X, y) (forward mode for few rows of ``S``).

        A chunk whose products are not finite has its gradients checked, which names the
        rows (reported by ``rows``) whose gradient is not finite.
        """
        for sl, P in self._progress(self.bridge.iter_products(S, X, y), X, desc):
            val.check_finite_products(
                P, lambda sl=sl: next(self.bridge.iter_gradients(rows_of.take(X, sl), y[sl]))[1],
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
        """The iHVPs ``(H + λI)⁻¹ g`` of the rows of ``G``, solved in blocks of ``batch_size``.

        Returns one :class:`~sk_fastif.solvers.SolveResult` for the whole block (its trace holds
        the largest value over the blocks at each step).
        """
        out, results = [], []
        for sl in self.bridge.chunks(len(G)):
            res = self.solver.solve(self.op, G[sl])
            results.append(res)
            out.append(res.solution)
        S = torch.cat(out) if out else G.new_zeros((0, G.shape[1]))
        if not results:
            return SolveResult(solution=S, trace=[], n_hvp=0, converged=True)
        return merge_results(results, S)

    def residuals(self, S: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """``‖(H + λI) s − g‖ / ‖g‖`` per row (NaN where ``g`` is exactly zero)."""
        R = self.op.matvec(S) + self.damping * S - G
        gnorm = G.norm(dim=1)
        return torch.where(gnorm > 0, R.norm(dim=1) / gnorm, torch.full_like(gnorm, np.nan))

    # ------------------------------------------------------------------------- scores
    def score_rows(self, S: torch.Tensor, rows=None) -> np.ndarray:
        """Scores of the training points ``rows`` (None: all), shape ``(len(S), n_rows)``.

        One streaming pass over their gradients, ``batch_size`` rows at a time.
        """
        X, y, index = self._train_rows(rows)
        out = np.empty((len(S), len(y)), dtype=np.float64)
        for sl, P in self._iter_products(S, X, y, "training gradients", index):
            out[:, sl] = P.cpu().numpy()
        return out / self.n_train

    def score_data(self, S: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Scores of points outside the training set, as if they were training points.

        ``out[i, j] = (1/n) S[i] · g(X[j], y[j])`` with ``n`` the training-set size: the
        estimated rise of test loss ``i`` if point ``j`` had been in training and were removed
        (its up-weighting, with the opposite sign, for a pool of candidate data).
        """
        out = np.empty((len(S), len(y)), dtype=np.float64)
        for sl, P in self._iter_products(S, X, y, "gradients", None, what="point"):
            out[:, sl] = P.cpu().numpy()
        return out / self.n_train

    def score_candidates(self, S: torch.Tensor, C: np.ndarray) -> np.ndarray:
        """Scores ``(1/n) S[i] · g(C[i, j])`` of each row's candidates, shape ``C.shape``.

        Training gradients are computed once for each distinct candidate of the whole block
        (the union of the rows of ``C``), streamed in chunks of ``batch_size``. Each chunk is
        reduced against the factors of the test points that list its rows: by one matrix
        product when those test points share most of the chunk, otherwise pair by pair.
        """
        m, kc = C.shape
        U, inv = np.unique(C.ravel(), return_inverse=True)
        order = np.argsort(inv, kind="stable")  # (test, candidate) pairs grouped by row of U
        pair_u = inv[order]
        pair_row = order // kc
        values = np.empty(m * kc, dtype=np.float64)
        device = S.device
        X, y, _ = self._train_rows(U)
        batch = self.bridge.batch_size
        for sl, G in self._iter_gradients(X, y, "candidate gradients", U):
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
        X, y, _ = self._train_rows(rows)
        return self.self_scores_data(X, y)

    def self_scores_data(self, X: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Self-influence of any points (X, y), one solve per chunk of ``batch_size``."""
        out = np.empty(len(y), dtype=np.float64)
        for sl, G in self.bridge.iter_gradients(X, y):
            val.check_finite_gradients(G, what="point", offset=sl.start)
            val.warn_zero_gradients(G, "their self-influence is 0", stacklevel=3)
            S = self.factors(G).solution
            out[sl] = (S * G).sum(dim=1).cpu().numpy()
        return out / self.n_train
