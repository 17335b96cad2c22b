"""LiSSA: stochastic Neumann-series estimation of inverse-Hessian-vector products."""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._sklearn_compat import Interval, StrOptions
from ..exceptions import LiSSADepthWarning  # noqa: F401  (re-exported)
from ._base import (
    BaseSolver,
    CurvatureOperator,
    DivergenceError,
    IndefiniteCurvatureWarning,
    ScaleRestartWarning,
    SolveResult,
    merge_results,
)

# Power iterations per top-eigenvalue estimate, minibatch Hessians probed, safety factor.
_POWER_ITER = 30
_N_PROBE_BATCHES = 4
_SAFETY = 1.5
# Restarts with a doubled scale allowed per solve when ``scale="auto"``.
_MAX_RESTARTS = 3
# ||h_t|| may not exceed _GROWTH * (t + 1) * ||g|| (a contraction keeps it below (t + 1) ||g||).
_GROWTH = 10.0
# depth="auto": along the flattest direction (curvature 0) the series' tail falls below this
# fraction; a fixed depth whose tail there is above _TRUNCATED is warned about; an automatic
# depth above _LONG steps is warned about (CG needs far fewer products).
_AUTO_DEPTH_TAIL = 1e-2
_TRUNCATED = 0.1
_LONG = 20_000


def auto_depth(scale: float, damping: float) -> int:
    """The depth of ``LiSSA(depth="auto")``: the tail along zero curvature falls below 1%.

    Along an eigenvalue ``w`` of ``H`` the series' terms shrink by ``1 - (w + λ) / scale`` per
    step, slowest for ``w = 0`` (every direction a Gauss-Newton curvature leaves flat), so the
    depth is the smallest ``t`` with ``(1 - λ / scale)^t <= 0.01``, about
    ``4.6 * scale / λ``.

    Parameters
    ----------
    scale : float
        The recursion's scale.
    damping : float
        ``λ > 0``.

    Returns
    -------
    int
        The number of steps.

    Examples
    --------
    >>> from sk_fastif.solvers._lissa import auto_depth
    >>> auto_depth(scale=10.0, damping=0.1)
    459
    """
    if not damping > 0:
        raise ValueError(
            'LiSSA(depth="auto") needs damping > 0: with damping=0 the series does not '
            "converge along directions of zero curvature. Set damping > 0 or a numeric depth.")
    ratio = min(damping / scale, 1.0)
    if ratio >= 1.0:
        return 1
    return max(1, int(np.ceil(np.log(_AUTO_DEPTH_TAIL) / np.log1p(-ratio))))


class _Diverged(Exception):
    """Internal: a chain diverged (carries the details for the user-facing message)."""

    def __init__(self, step: int, repeat: int, nonfinite: bool, n_hvp: int) -> None:
        super().__init__(step, repeat, nonfinite, n_hvp)
        self.step = step
        self.repeat = repeat
        self.nonfinite = nonfinite
        self.n_hvp = n_hvp


class LiSSA(BaseSolver):
    """Linear-time Stochastic Second-order Algorithm (Agarwal et al., 2017) for iHVPs.

    For every right-hand side ``g`` runs the recursion ``h_0 = g``,
    ``h_t = g + h_{t-1} - (H_B h_{t-1} + damping * h_{t-1}) / scale`` where ``H_B`` is the
    curvature of the mean loss over a fresh minibatch ``B`` of ``batch_size`` distinct training
    rows drawn uniformly at each step, and returns ``h_depth / scale``. Its fixed point is
    ``(H + damping I)^{-1} g`` when every eigenvalue of ``(H + damping I) / scale`` lies in
    ``(0, 2)``. ``n_repeats`` independent chains are averaged. All columns of a block share the
    minibatches and each step is one block call of ``op.batch_matvec``.

    Parameters
    ----------
    damping : float, default=1e-3
        The ``lambda >= 0`` of ``(H + lambda I)^{-1}``, the same meaning for every solver.
    scale : "auto" or float, default="auto"
        The ``scale`` of the recursion; must exceed half the largest eigenvalue of
        ``H_B + damping I`` for every minibatch, while a larger value slows convergence (the error
        along an eigenvalue ``w`` shrinks like ``(1 - (w + damping) / scale)^t``). ``"auto"``
        estimates it in :meth:`prepare` (see Notes) and doubles it on divergence.
    depth : int or "auto", default="auto"
        Number of recursion steps per chain. ``"auto"``: :func:`auto_depth`, the steps after
        which the series' tail along directions of zero curvature is below 1% (about
        ``4.6 * scale_ / damping``; recomputed when a restart doubles the scale). A numeric
        depth that leaves more than 10% of that tail is warned about.
    batch_size : int, default=32
        Training rows per minibatch; must not exceed ``op.n_samples``. When equal to it each
        step uses the full curvature ``op.matvec`` and the recursion is deterministic.
    n_repeats : int, default=1
        Independent chains averaged.
    tol : float or None, default=None
        If set, a column stops (is frozen) once the relative change
        ``||h_t - h_{t-1}|| / ||h_t||`` falls below ``tol``; a chain ends early once every column
        is frozen. With small minibatches the change does not vanish, so this mostly helps with
        large ``batch_size``.
    random_state : int, RandomState instance or None, default=None
        Seeds the power iteration of ``scale="auto"`` and the minibatches. Each :meth:`solve`
        creates its generator afresh with :func:`sklearn.utils.check_random_state` (so an int
        gives the same result on every call, while a ``RandomState`` instance advances) and draws
        one integer seed per repeat before running the chains; chain ``r`` draws its minibatches
        from ``np.random.default_rng(seed_r)``.

    Attributes
    ----------
    scale_ : float
        The scale in use: ``scale`` when numeric, else the estimate of :meth:`prepare`, doubled
        for each restart. A numeric ``scale`` is part of the prepared state: after
        ``set_params(scale=...)`` the next :meth:`solve` prepares again (no curvature product)
        and so sets ``scale_``.
    top_eigenvalue_ : float or None
        ``scale="auto"`` only: the Rayleigh quotient of the power iteration on the full ``H``
        (approximately its largest-magnitude eigenvalue, with its sign).
    restarts_ : list of dict
        One entry ``{"repeat", "step", "scale"}`` per divergence that made ``scale="auto"``
        restart since :meth:`prepare` (``scale`` is the one that diverged).
    n_hvp_prepare_ : int
        Curvature-vector products spent by :meth:`prepare` (0 for a numeric ``scale``).

    Raises
    ------
    DivergenceError
        When a chain diverges: some ``h_t`` is non-finite or ``||h_t|| > 10 (t + 1) ||g||``
        (impossible when every eigenvalue of ``(H_B + damping I) / scale`` lies in ``(0, 2)``,
        since then ``||h_t|| <= (t + 1) ||g||``). With ``scale="auto"`` this comes only after
        three restarts with doubled ``scale_``. Negative eigenvalues of ``H + damping I`` make
        the recursion grow geometrically whatever the scale.

    Warns
    -----
    ScaleRestartWarning
        For each restart of ``scale="auto"``.
    IndefiniteCurvatureWarning
        From :meth:`prepare` when the power iteration finds an eigenvalue ``w`` of ``H`` with
        ``w + damping < 0``.

    Notes
    -----
    ``scale="auto"`` rule: power iteration (30 iterations from a seeded random start) estimates
    the largest-magnitude eigenvalue of the full ``H`` and of 4 random minibatch curvatures
    ``H_B`` (of ``batch_size`` rows; skipped when ``batch_size == n_samples``), each estimate
    being the largest ``||H v||`` seen for unit ``v``; then
    ``scale_ = 1.5 * (max of the estimates + damping)``, which keeps the sampled spectra of
    ``(H_B + damping I) / scale`` inside ``(0, 2/3]`` and leaves margin for unsampled minibatches.

    Divergence with ``scale="auto"`` doubles ``scale_`` (kept for later solves) and restarts all
    chains of the current solve from scratch with the same seeds, at most three times. This is
    the one way a :meth:`solve` changes the solver (see :class:`BaseSolver`): each restart
    appends to ``restarts_`` and doubles ``scale_``, a refresh of the prepared state, so that
    later solves start from a scale that worked. Without a restart a solve changes no attribute.

    The divergence test is deliberately lenient (a factor 10 over the contraction bound) so that
    minibatches with some negative curvature, which make single steps mildly expansive while the
    recursion still converges on average, do not stop a chain. The flip side: a scale too small
    only for rare minibatches (e.g. ``batch_size=1`` with a few rows of much larger curvature) can
    produce an inaccurate estimate without an error. Compare ``n_repeats`` chains, or the trace,
    or pass a larger numeric ``scale`` when in doubt.

    Because the minibatch sequence depends only on ``random_state`` and the repeat, and columns
    are frozen individually, the estimate for one right-hand side does not depend on the other
    columns of the block: solving a block in parts gives the same result as solving it whole (up
    to floating-point rounding), as long as no restart is triggered.

    The ``trace`` holds, per step, the largest relative change over the active columns, the
    chains of the repeats concatenated (of the final run after restarts). ``n_hvp`` counts one
    product per active column per step over all runs (and the products of :meth:`prepare` when
    a solve had to prepare). ``converged`` is True when ``tol`` is None and the chains ran their
    ``depth``, or when every chain stopped early by ``tol``. ``n_iter`` is the number of
    recursion steps over the chains of the final run (the length of the trace), and ``info``
    holds the ``"scale"`` of the returned estimate, the ``"restarts"`` of this solve (a list
    of ``{"repeat", "step", "scale"}``, empty without restart) and ``"rayleigh"``, the smallest
    Rayleigh quotient of ``H_B + damping I`` along the iterates of the chains' second halves.

    Indefinite curvature. A negative eigenvalue of ``H + damping I`` makes the iterate grow
    along its eigenvector geometrically, but at ``1 + |w + damping| / scale`` per step, which
    for a small ``|w + damping|`` stays far below the divergence test. LiSSA therefore also
    accumulates, over the second half of each chain, ``hᵀ (H_B + damping I) h`` and ``hᵀ h``
    (free: the products are computed anyway) and warns with
    :class:`IndefiniteCurvatureWarning` when their ratio is negative for some column: the
    iterate is then dominated by negative curvature. Not detected: negative directions the
    right-hand side does not excite (they do not grow, and do not spoil the estimate), and
    ones whose growth over the chain stays below the positive part of the iterate (the
    estimate is then biased, but by less than that part). The recursion runs in
    ``op.dtype``.

    Examples
    --------
    >>> import torch
    >>> from sk_fastif.solvers import CurvatureOperator, LiSSA
    >>> H = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
    ...                        n_params=2, n_samples=1, dtype=torch.float64)
    >>> solver = LiSSA(damping=0.0, depth=200, batch_size=1, random_state=0).prepare(op)
    >>> round(solver.scale_, 3)
    3.311
    >>> res = solver.solve(op, torch.eye(2, dtype=torch.float64))
    >>> torch.allclose(res.solution, torch.linalg.inv(H))
    True
    """

    def __init__(
        self,
        *,
        damping: float = 1e-3,
        scale: float | str = "auto",
        depth: int | str = "auto",
        batch_size: int = 32,
        n_repeats: int = 1,
        tol: float | None = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.damping = damping
        self.scale = scale
        self.depth = depth
        self.batch_size = batch_size
        self.n_repeats = n_repeats
        self.tol = tol
        self.random_state = random_state

    _parameter_constraints: dict = {
        "damping": [Interval(Real, 0.0, None, closed="left"), StrOptions({"auto"})],
        "scale": [StrOptions({"auto"}), Interval(Real, 0.0, None, closed="neither")],
        "depth": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_repeats": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="neither"), None],
        "random_state": ["random_state"],
    }

    # ------------------------------------------------------------------------------------------

    def _auto(self) -> bool:
        return isinstance(self.scale, str) and self.scale == "auto"

    def _prepare_key(self) -> tuple:
        # The automatic scale depends on these; a numeric scale is itself the prepared state.
        if self._auto():
            return ("auto", self.damping, self.batch_size, self.random_state)
        return ("fixed", self.scale)

    def _check_params(self, op: CurvatureOperator) -> None:
        super()._check_params(op)
        if isinstance(self.depth, str) and not isinstance(self.damping, str) \
                and not self.damping > 0:
            auto_depth(1.0, float(self.damping))  # raises the ValueError that says why
        if self.batch_size > op.n_samples:
            raise ValueError(
                f"`batch_size`={self.batch_size} exceeds the number of training samples "
                f"n_samples={op.n_samples}; use batch_size <= {op.n_samples}."
            )

    def _settings(self) -> dict:
        """The validated parameters of the recursion, as Python numbers."""
        return {
            "damping": self._damping(),
            "depth": None if isinstance(self.depth, str) else int(self.depth),
            "batch_size": int(self.batch_size),
            "n_repeats": int(self.n_repeats),
            "tol": None if self.tol is None else float(self.tol),
        }

    def _prepare(self, op: CurvatureOperator) -> int:
        """Set ``scale_``: ``scale`` when numeric, else estimated by power iteration."""
        p = self._settings()
        self.restarts_ = []
        self.top_eigenvalue_ = None
        if not self._auto():
            self.scale_ = float(self.scale)
            self.depth_ = self._depth_at(self.scale_, p)
            return 0

        rng = check_random_state(self.random_state)
        n_hvp = 0

        def start() -> torch.Tensor:
            v = rng.standard_normal(op.n_params)
            return torch.as_tensor(v, dtype=op.dtype, device=op.device)

        top, rq = _power_iteration(op.matvec, start())
        n_hvp += _POWER_ITER
        estimates = [top]
        if p["batch_size"] < op.n_samples:
            for _ in range(_N_PROBE_BATCHES):
                idx = np.sort(rng.choice(op.n_samples, size=p["batch_size"], replace=False))
                est, _ = _power_iteration(lambda V, idx=idx: op.batch_matvec(V, idx), start())
                estimates.append(est)
                n_hvp += _POWER_ITER
        damping = p["damping"]
        scale = _SAFETY * (max(estimates) + damping)
        if not (np.isfinite(scale) and scale > 0):
            raise DivergenceError(
                f"Could not set scale='auto': the estimated largest eigenvalue of H plus "
                f"damping is {scale / _SAFETY:.4g}. H appears to be zero; with damping="
                f"{damping:g} H + damping*I is singular. Raise `damping`."
            )
        if rq + damping < 0:
            warnings.warn(
                f"H + damping*I is not positive definite: the power iteration found an "
                f"eigenvalue of H near {rq:.4g} with damping={damping:g}. LiSSA will diverge; "
                f'use damping > {-rq:.4g} or curvature="gauss_newton".',
                IndefiniteCurvatureWarning,
                stacklevel=3,
            )
        self.top_eigenvalue_ = rq
        self.scale_ = float(scale)
        self.depth_ = self._depth_at(self.scale_, p)
        return n_hvp

    def _depth_at(self, scale: float, p: dict) -> int:
        """The depth at ``scale``: ``depth`` when numeric, else :func:`auto_depth`."""
        return int(p["depth"]) if p["depth"] is not None else auto_depth(scale, p["damping"])

    def _check_depth(self, scale: float, p: dict) -> None:
        """Warn when a numeric depth truncates the series, or an automatic one is long."""
        damping, depth = p["damping"], self._depth_at(scale, p)
        if p["depth"] is None:
            if depth > _LONG:
                warnings.warn(
                    f'LiSSA(depth="auto") runs {depth:,} steps per chain (scale={scale:.4g}, '
                    f"damping={damping:g}): CG reaches the same answer in far fewer curvature "
                    "products. Use CG, or raise damping.", LiSSADepthWarning, stacklevel=5)
            return
        if 0 < damping < scale:
            tail = float(np.exp(depth * np.log1p(-damping / scale)))
            if tail > _TRUNCATED:
                warnings.warn(
                    f"LiSSA's depth={depth} truncates the series: along directions of little "
                    f"curvature the estimate holds only {1 - tail:.0%} of (H + damping*I)^-1 g, "
                    f"as if damping were about {scale / depth:.3g} instead of {damping:g} "
                    f"(scale={scale:.4g}). Use depth=\"auto\" ({auto_depth(scale, damping):,} "
                    "steps here) or raise damping.", LiSSADepthWarning, stacklevel=5)

    # ------------------------------------------------------------------------------------------

    # ------------------------------------------------------------------------ work units

    def work_units(self, n_rhs: int, block_size: int, n_workers: int = 1) -> list:
        """Blocks of right-hand sides or, with ``n_repeats > 1`` and several workers, (block,
        group of chains) pairs: FastIF's parallel variant, the chains of a block averaged.

        Examples
        --------
        >>> from sk_fastif.solvers import LiSSA
        >>> LiSSA(n_repeats=4).work_units(3, 128, n_workers=2)
        [(slice(0, 3, None), (0, 1), None), (slice(0, 3, None), (2, 3), None)]
        """
        n_repeats = int(self.n_repeats)
        if n_repeats <= 1 or n_workers <= 1:
            return super().work_units(n_rhs, block_size, n_workers)
        n_groups = min(n_repeats, int(n_workers))
        groups = [tuple(int(r) for r in g)
                  for g in np.array_split(np.arange(n_repeats), n_groups)]
        blocks = [slice(a, min(a + block_size, n_rhs)) for a in range(0, n_rhs, block_size)]
        return [(rows, g, None) for rows in blocks for g in groups]

    def solve_unit(self, op: CurvatureOperator, G: torch.Tensor, unit) -> SolveResult:
        """Solve a block, or run a group of chains of a block (at a given scale, if any)."""
        if isinstance(unit, slice):
            return self.solve(op, G[unit])
        rows, repeats, scale = unit
        return self.solve_chains(op, G[rows], repeats, scale=scale)

    def combine(self, units: list, results: list, G: torch.Tensor, rerun) -> SolveResult:
        """Put the units back together (see :meth:`BaseSolver.combine`).

        The chain groups of a block must end at one scale to be averaged: a group that an
        automatic-scale restart left behind is run again (by ``rerun``) at the scale the
        others reached, as a sequential solve would have done. A restart found by a worker's
        copy of the solver is adopted: ``scale_`` and ``restarts_`` end as after a sequential
        solve.
        """
        self._adopt_restarts(results)
        if not units or isinstance(units[0], slice):
            return super().combine(units, results, G, rerun)
        results = list(results)
        blocks = list(dict.fromkeys((u[0].start, u[0].stop) for u in units))
        n_groups = len(units) // len(blocks)
        while True:
            by_block = [results[i * n_groups:(i + 1) * n_groups] for i in range(len(blocks))]
            top = [max(float(r.info["scale"]) for r in rs) for rs in by_block]
            behind = [(b, j) for b, rs in enumerate(by_block) for j, r in enumerate(rs)
                      if float(r.info["scale"]) < top[b]]
            if not behind:
                break
            redo = [(units[b * n_groups + j][0], units[b * n_groups + j][1], top[b])
                    for b, j in behind]
            again = rerun(redo)
            self._adopt_restarts(again)
            for (b, j), r in zip(behind, again):
                results[b * n_groups + j] = r
        merged = []
        for rs in by_block:
            S = sum(r.solution.to(G.device) for r in rs[1:]) + rs[0].solution.to(G.device)
            block = merge_results(rs, S)
            block.n_hvp = sum(r.n_hvp for r in rs)
            merged.append(block)
        result = merge_results(merged, torch.cat([m.solution for m in merged]))
        result.info.pop("repeats", None)
        return result

    def _adopt_restarts(self, results: list) -> None:
        """Keep a scale that a restart in a worker's copy doubled (one in this very solver,
        which a sequential solve updates itself, is already here)."""
        reached = max((float(r.info.get("scale", 0.0)) for r in results), default=0.0)
        if not hasattr(self, "scale_") or reached <= float(self.scale_):
            return
        self.restarts_.extend(dict(r) for res in results for r in res.info.get("restarts", []))
        self.scale_ = reached
        self.depth_ = self._depth_at(reached, self._settings())

    def solve_chains(self, op: CurvatureOperator, G: torch.Tensor, repeats,
                     scale: float | None = None) -> SolveResult:
        """Run only the chains ``repeats`` of what :meth:`solve` runs, to spread them out.

        Chain ``r`` uses the same minibatches as in :meth:`solve`, and the solution is the sum
        of the chains' estimates divided by ``n_repeats``: for a partition of
        ``range(n_repeats)`` solved at one ``info["scale"]`` the solutions add up to
        :meth:`solve`'s. ``scale`` overrides ``scale_`` (to rerun a group at the scale another
        group's restart reached). Restarts of ``scale="auto"`` behave as in :meth:`solve`.

        Parameters
        ----------
        op : CurvatureOperator
            The operator.
        G : torch.Tensor of shape (m, n_params)
            Right-hand sides, one per row.
        repeats : sequence of int
            Chains to run, each in ``[0, n_repeats)``.
        scale : float or None, default=None
            The scale to start from; None uses ``scale_``.

        Returns
        -------
        SolveResult
            ``info["scale"]`` is the scale the chains ended at, ``info["repeats"]`` the chains.
        """
        repeats = [int(r) for r in repeats]
        if not repeats or any(not 0 <= r < int(self.n_repeats) for r in repeats):
            raise ValueError(f"repeats must be chains in [0, n_repeats={self.n_repeats}); "
                             f"got {repeats!r}.")
        return self._template_solve(op, G, repeats=repeats, scale=scale)

    def _solve(self, op: CurvatureOperator, G: torch.Tensor, repeats=None,
               scale: float | None = None) -> SolveResult:
        """Estimate ``(H + damping * I)^{-1} g`` for every row ``g`` of ``G``."""
        p = self._settings()
        G = G.detach()

        rng = check_random_state(self.random_state)
        seeds = [int(s) for s in rng.randint(0, np.iinfo(np.int32).max, size=p["n_repeats"])]
        chains = range(len(seeds)) if repeats is None else repeats

        n_hvp = 0
        restarts: list[dict] = []
        scale = self.scale_ if scale is None else float(scale)
        self._check_depth(scale, p)
        while True:
            p["depth"] = self._depth_at(scale, self._settings())
            total = torch.zeros_like(G)
            trace: list[float] = []
            converged = True
            try:
                rayleigh = np.inf
                for r in chains:
                    h, chain_trace, chain_hvp, chain_conv, rq = self._chain(op, G, seeds[r], r,
                                                                            scale, p)
                    rayleigh = min(rayleigh, rq)
                    n_hvp += chain_hvp
                    trace.extend(chain_trace)
                    converged = converged and chain_conv
                    total += h
            except _Diverged as exc:
                n_hvp += exc.n_hvp
                if not self._auto() or len(restarts) >= _MAX_RESTARTS:
                    msg = self._divergence_message(exc, scale, p["damping"], len(restarts))
                    raise DivergenceError(msg) from None
                restart = {"repeat": exc.repeat, "step": exc.step, "scale": scale}
                restarts.append(restart)
                # the documented exception to side-effect-free solves: keep the doubled scale
                self.restarts_.append(dict(restart))
                self.scale_ = scale = 2.0 * scale
                self.depth_ = self._depth_at(scale, self._settings())
                warnings.warn(
                    f"LiSSA diverged at step {exc.step} with scale={restart['scale']:.4g}; "
                    f"restarting with scale={scale:.4g} (restart {len(restarts)} of at most "
                    f"{_MAX_RESTARTS}).",
                    ScaleRestartWarning,
                    stacklevel=4,
                )
                continue
            break
        solution = total / (scale * len(seeds))
        if rayleigh < 0:
            warnings.warn(
                f"LiSSA's iterates grew along a direction of negative curvature: the Rayleigh "
                f"quotient of H + damping*I along the second half of a chain is {rayleigh:.3g} "
                f"< 0 (damping={p['damping']:g}), so H + damping*I is not positive definite and "
                f"the estimate is unreliable although the chain did not diverge. Use "
                f'curvature="gauss_newton", or damping > {p["damping"] - rayleigh:.3g}.',
                IndefiniteCurvatureWarning, stacklevel=4)
        info = {"scale": scale, "restarts": restarts, "rayleigh": rayleigh}
        if repeats is not None:
            info["repeats"] = list(repeats)
        return SolveResult(
            solution=solution,
            trace=trace,
            n_hvp=n_hvp,
            converged=converged,
            n_iter=len(trace),
            info=info,
        )

    def _nonfinite_message(self, op: CurvatureOperator) -> str:
        return (
            f"LiSSA produced non-finite values with scale={self.scale_:.4g} and "
            f"damping={self._damping():g}. Raise `scale` or `damping`."
        )

    def _chain(
        self, op: CurvatureOperator, G: torch.Tensor, seed: int, repeat: int, scale: float, p: dict
    ) -> tuple[torch.Tensor, list[float], int, bool, float]:
        """Run one chain; return ``(h_final, trace, n_hvp, stopped_by_tol, min_rayleigh)``."""
        rng = np.random.default_rng(seed)
        n, batch_size, damping, tol = op.n_samples, p["batch_size"], p["damping"], p["tol"]
        full = batch_size == n
        tiny = float(torch.finfo(G.dtype).tiny)
        gnorm = torch.linalg.vector_norm(G, dim=1)
        h = G.clone()
        active = gnorm > 0  # a zero right-hand side stays exactly zero
        idx_active = torch.nonzero(active).squeeze(1)
        all_active = bool(active.all())
        trace: list[float] = []
        n_hvp = 0
        # Rayleigh quotients of the damped minibatch curvature along the iterates of the second
        # half: negative only when h grows along a direction of negative curvature
        late = p["depth"] // 2
        quad = torch.zeros(G.shape[0], dtype=torch.float64, device=G.device)
        sq = torch.zeros_like(quad)
        for t in range(1, p["depth"] + 1):
            if idx_active.numel() == 0:
                break
            if full:
                rows = None
            else:
                rows = np.sort(rng.choice(n, size=batch_size, replace=False))
            if all_active:
                ha, ga, gn = h, G, gnorm
            else:
                ha, ga, gn = h[idx_active], G[idx_active], gnorm[idx_active]
            hv = op.matvec(ha) if full else op.batch_matvec(ha, rows)
            n_hvp += ha.shape[0]
            damped = hv + damping * ha
            if t > late:
                q, n2 = (ha * damped).sum(dim=1).double(), (ha * ha).sum(dim=1).double()
                if all_active:
                    quad += q
                    sq += n2
                else:
                    quad[idx_active] += q
                    sq[idx_active] += n2
            new = ga + ha - damped / scale
            new_norm = torch.linalg.vector_norm(new, dim=1)
            if not bool(torch.isfinite(new_norm).all()):
                raise _Diverged(t, repeat, True, n_hvp)
            if bool((new_norm > _GROWTH * (t + 1) * gn + tiny).any()):
                raise _Diverged(t, repeat, False, n_hvp)
            change = torch.linalg.vector_norm(new - ha, dim=1) / new_norm.clamp_min(tiny)
            trace.append(float(change.max()))
            if all_active:
                h = new
            else:
                h[idx_active] = new
            if tol is not None:
                done = change < tol
                if bool(done.any()):
                    active[idx_active[done]] = False
                    idx_active = torch.nonzero(active).squeeze(1)
                    all_active = False
        stopped = tol is None or idx_active.numel() == 0
        rayleigh = torch.where(sq > 0, quad / sq.clamp_min(tiny), torch.zeros_like(quad))
        return h, trace, n_hvp, stopped, float(rayleigh.min()) if len(rayleigh) else 0.0

    def _divergence_message(
        self, exc: _Diverged, scale: float, damping: float, n_restarts: int
    ) -> str:
        what = "became non-finite" if exc.nonfinite else "grew past 10 * (t + 1) * ||g||"
        msg = (
            f"LiSSA diverged: at step {exc.step} of repeat {exc.repeat} the iterate {what} "
            f"with scale={scale:.4g} and damping={damping:g}"
        )
        if n_restarts:
            msg += f", after {n_restarts} restarts doubling the automatic scale"
        msg += (
            ". Raise `scale` (it must exceed half the largest eigenvalue of the minibatch "
            "curvature plus damping; larger batch_size also helps), or raise `damping`, or use "
            'curvature="gauss_newton" when H has negative eigenvalues'
        )
        if self.top_eigenvalue_ is not None and self.top_eigenvalue_ + damping < 0:
            msg += f" (the power iteration found an eigenvalue near {self.top_eigenvalue_:.4g})"
        return msg + "."


def _power_iteration(
    matvec: object, v: torch.Tensor, n_iter: int = _POWER_ITER
) -> tuple[float, float]:
    """Estimate the largest-magnitude eigenvalue of a symmetric operator.

    Returns ``(max ||A v_k||, v^T A v)`` over unit iterates ``v_k``: the first is a lower bound
    of ``max |w|`` that converges to it, the second carries its sign.
    """
    norm = torch.linalg.vector_norm(v)
    if not bool(norm > 0):
        v = torch.ones_like(v)
        norm = torch.linalg.vector_norm(v)
    v = v / norm
    best, rq = 0.0, 0.0
    for _ in range(n_iter):
        w = matvec(v[None, :])[0]
        w_norm = float(torch.linalg.vector_norm(w))
        if not np.isfinite(w_norm):
            raise DivergenceError("The curvature products are not finite (NaN or inf).")
        rq = float((v * w).sum())
        best = max(best, w_norm)
        if w_norm == 0.0:
            break
        v = w / w_norm
    return best, rq
