"""The contract between the influence engine and the iHVP solvers.

A solver sees only a :class:`CurvatureOperator` (products of the curvature of the mean training loss
with blocks of vectors) and a block of right-hand sides. It never sees the network.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator

from .._curvature import CurvatureOperator
from .._sklearn_compat import (
    Interval,
    InvalidParameterError,
    StrOptions,
    make_constraint,
    validate_parameter_constraints,
)
from ..exceptions import (  # noqa: F401  (re-exported)
    CurvatureTooLargeError,
    DivergenceError,
    IndefiniteCurvatureWarning,
    ScaleRestartWarning,
)

# ``damping="auto"``: the mean eigenvalue of H over min(n_samples, n_params) directions, its
# trace estimated from this many Rademacher probes; never below the largest eigenvalue magnitude
# (from this many power steps) over this condition number.
AUTO_DAMPING_PROBES = 30
AUTO_DAMPING_MAX_CONDITION = 1000.0
_AUTO_DAMPING_POWER_STEPS = 30
_AUTO_DAMPING_FLOOR = 1e-8
# The curvature products auto_damping spends (what ``prepare`` adds for ``damping="auto"``).
_N_POWER_STEPS = _AUTO_DAMPING_POWER_STEPS + AUTO_DAMPING_PROBES


def _is_auto(value: object) -> bool:
    return isinstance(value, str) and value == "auto"


def auto_damping(op: CurvatureOperator) -> tuple[float, float]:
    """The damping ``damping="auto"`` chooses for ``op``, and the top eigenvalue it came from.

    ``λ = max(tr(H) / min(n, P), max|eig(H)| / 1000)``, with ``n`` the training rows
    (``op.n_samples``) and ``P`` the parameters: the mean eigenvalue of ``H`` over the at most
    ``min(n, P)`` directions its ``n`` per-sample terms can span (for ``P < n``, over all ``P``
    eigenvalues). Directions curved more than the average direction the data determines are
    barely damped; the flat rest, along which a trained net's curvature is mostly zero, is
    damped at that average. The trace is estimated by Hutchinson's estimator with 30 Rademacher
    probes (one block of 30 products; relative error about ``sqrt(2 / 30) ‖H‖_F / tr(H)``), the
    largest eigenvalue magnitude by 30 steps of power iteration, both from a fixed seed: 60
    products in all. The second term caps the condition number of ``H + λI`` at about 1,001
    (for a positive semi-definite curvature, ``curvature="gauss_newton"``), so that ``CG`` and
    ``LiSSA(depth="auto")`` stay cheap when ``min(n, P)`` is large; it also sets ``λ`` when the
    trace is not positive (an indefinite Hessian). A function of the operator only, so every
    solver (and every grid-search candidate) fitted on the same curvature chooses the same
    ``λ``. A Hessian with negative eigenvalues below ``-λ`` is reported by the solvers as
    usual.

    Judged by retraining (``benchmarks/lds_damping.py``, linear datamodeling score), the rule is
    within 0.05 of the best of 21 fixed dampings on the problems there save one (a memorising
    binary MLP whose best damping is 0.4 times the top eigenvalue); ``0.01 * max|eig(H)|``, the
    rule before, was 0.065 below on one more.

    Parameters
    ----------
    op : CurvatureOperator
        The curvature of the mean training loss over ``op.n_samples`` rows.

    Returns
    -------
    damping : float
        The chosen ``λ`` (at least 1e-8).
    top_eigenvalue : float
        The estimate of the largest eigenvalue magnitude of ``H``.

    Examples
    --------
    >>> import torch
    >>> from sk_fastif.solvers import CurvatureOperator, auto_damping
    >>> H = torch.diag(torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    >>> op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
    ...                        n_params=4, n_samples=2, dtype=torch.float64)
    >>> damping, top = auto_damping(op)  # tr(H) / min(2, 4); a diagonal H: the estimate is exact
    >>> round(top, 6), round(damping, 8)
    (3.0, 2.0)
    """
    n_params = int(op.n_params)
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(n_params, generator=gen, dtype=torch.float64)
    v = (v / torch.linalg.vector_norm(v)).to(dtype=op.dtype, device=op.device)
    top = 0.0
    for _ in range(_AUTO_DAMPING_POWER_STEPS):
        w = op.matvec(v[None, :])[0]
        norm = float(torch.linalg.vector_norm(w))
        if not np.isfinite(norm):
            raise DivergenceError("The curvature products are not finite (NaN or inf).")
        top = max(top, norm)
        if norm == 0.0:
            break
        v = w / norm
    probes = torch.randint(0, 2, (AUTO_DAMPING_PROBES, n_params), generator=gen,
                           dtype=torch.float64).mul_(2.0).sub_(1.0)
    probes = probes.to(dtype=op.dtype, device=op.device)
    trace = float((probes * op.matvec(probes)).sum(dtype=torch.float64)) / AUTO_DAMPING_PROBES
    if not np.isfinite(trace):
        raise DivergenceError("The curvature products are not finite (NaN or inf).")
    mean_eigenvalue = max(trace, 0.0) / max(min(int(op.n_samples), n_params), 1)
    return max(mean_eigenvalue, top / AUTO_DAMPING_MAX_CONDITION, _AUTO_DAMPING_FLOOR), top


@dataclass
class SolveResult:
    """The outcome of one block solve.

    Attributes
    ----------
    solution : torch.Tensor of shape (m, n_params)
        Approximations of ``(H + damping * I)^{-1} g`` for each right-hand side ``g``.
    trace : list of float
        One number per iteration (the largest relative residual or relative change over the
        block, as the solver documents), so convergence can be inspected or plotted.
    n_hvp : int
        Number of curvature-vector products spent (a block product of ``m`` vectors counts ``m``),
        including those of :meth:`BaseSolver.prepare` when the solve had to prepare.
    converged : bool
        Whether the solver's own stopping criterion was met.
    n_iter : int, default=0
        Iterations run: CG iterations, LiSSA recursion steps summed over the chains of the final
        run; 0 for :class:`Exact`, which solves directly.
    info : dict, default={}
        Solver-specific diagnostics of this solve (LiSSA: the ``"scale"`` used and the
        ``"restarts"`` it made), empty when the solver has none.

    Examples
    --------
    >>> import torch
    >>> from sk_fastif.solvers import CurvatureOperator
    >>> H = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))  # an explicit curvature
    >>> op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
    ...                        n_params=2, n_samples=100, dtype=torch.float64)
    >>> from sk_fastif.solvers import CG
    >>> result = CG(damping=0.0).solve(op, torch.ones(1, 2, dtype=torch.float64))
    >>> result.solution  # H^{-1} g
    tensor([[0.5000, 2.0000]], dtype=torch.float64)
    >>> result.converged, result.n_iter == len(result.trace)
    (True, True)
    """

    solution: torch.Tensor
    trace: list[float]
    n_hvp: int
    converged: bool
    n_iter: int = 0
    info: dict[str, Any] = field(default_factory=dict)


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
    >>> from sk_fastif.solvers import merge_results
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


class BaseSolver(BaseEstimator):
    """Base class of the iHVP solvers: ``prepare`` once per operator, then ``solve`` blocks.

    The public methods are template methods shared by every solver; a solver implements the
    private hooks :meth:`_prepare` (the work that does not depend on the right-hand sides, e.g.
    a factorisation or a scale estimate) and :meth:`_solve` (one block solve), and may override
    :meth:`_prepare_key`, :meth:`_check_params`, :meth:`_check_prepared` and
    :meth:`_nonfinite_message`. Parameters are
    declared in ``_parameter_constraints`` and validated at every :meth:`prepare` and
    :meth:`solve`, before any curvature product.

    Prepared state is keyed on the operator's value and on :meth:`_prepare_key`: when
    ``op.fingerprint`` is a string the solver stores that string (not the operator), so it is
    prepared for any operator with the same fingerprint, also after pickling; when it is
    ``None`` the solver holds the operator itself, is prepared only for that object, and drops
    it when pickled (an unpickled solver prepares again). :meth:`solve` prepares first whenever
    :meth:`is_prepared_for` is False.

    After :meth:`prepare`, a :meth:`solve` leaves :meth:`get_params` and the fitted attributes
    (names ending in ``_``) as they were and returns its diagnostics in :class:`SolveResult`;
    it changes them only when it has to prepare (the operator or a parameter of
    :meth:`_prepare_key` changed). The one exception is :class:`LiSSA` with ``scale="auto"``:
    a divergence doubles ``scale_`` and appends to ``restarts_``, and the doubled scale is kept
    for later solves (a refresh of the prepared state, not a diagnostic). A ``random_state``
    given as a ``RandomState`` instance advances at each solve, as in scikit-learn (the
    parameter is the same object; pass an int for repeatable solves).

    Examples
    --------
    >>> import torch
    >>> from sk_fastif.solvers import BaseSolver, CurvatureOperator, Exact
    >>> H = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
    ...                        n_params=2, n_samples=100, dtype=torch.float64)
    >>> solver = Exact(damping=1.0).prepare(op)  # every solver is a BaseSolver
    >>> isinstance(solver, BaseSolver), solver.is_prepared_for(op)
    (True, True)
    >>> s = solver.solve(op, torch.tensor([[4.0, 4.0]], dtype=torch.float64)).solution
    >>> torch.allclose(s, torch.ones(1, 2, dtype=torch.float64))  # (H + I)^-1 g
    True
    """

    _parameter_constraints: dict = {}

    # ------------------------------------------------------------------------------------------
    # Public template methods.
    # ------------------------------------------------------------------------------------------

    def prepare(self, op: CurvatureOperator) -> BaseSolver:
        """Do the work that does not depend on the right-hand sides (factorise, estimate scale).

        Validates the operator and the parameters first (before any curvature product), and
        always does the work, even when already prepared for ``op``. Called once by
        :meth:`InfluenceExplainer.fit`.

        Parameters
        ----------
        op : CurvatureOperator
            The curvature of the mean training loss.

        Returns
        -------
        self : BaseSolver
            The solver, with its fitted attributes set (``n_hvp_prepare_`` and the solver's own).
        """
        _check_operator(op)
        self._check_params(op)
        self._forget_preparation()
        n_hvp = self._resolve_damping(op)
        self.n_hvp_prepare_ = n_hvp + int(self._prepare(op))
        self._mark_prepared(op)
        self._check_prepared(op)
        return self

    def is_prepared_for(self, op: CurvatureOperator) -> bool:
        """Whether :meth:`solve` can use the work of the last :meth:`prepare` for ``op``.

        Parameters
        ----------
        op : CurvatureOperator
            An operator.

        Returns
        -------
        bool
            True when the solver was prepared for an operator with the same (string)
            ``op.fingerprint``, or for this very object when ``op.fingerprint`` is None, and no
            parameter of :meth:`_prepare_key` changed since.
        """
        if not hasattr(self, "_prepared_key") or self._prepared_key != self._full_key():
            return False
        fingerprint = getattr(op, "fingerprint", None)
        if fingerprint is not None:
            return getattr(self, "_prepared_fingerprint", None) == fingerprint
        return getattr(self, "_prepared_op", None) is op

    def solve(self, op: CurvatureOperator, G: torch.Tensor) -> SolveResult:
        """Return approximations of ``(H + damping * I)^{-1} g`` for each row ``g`` of ``G``.

        Prepares first when :meth:`is_prepared_for` is False, then validates the operator, the
        parameters and ``G``, runs the solver and checks that the solution is finite.

        Parameters
        ----------
        op : CurvatureOperator
            The operator; it is prepared first if the solver is not prepared for it.
        G : torch.Tensor or array-like of shape (m, n_params)
            Right-hand sides, one per row; cast to ``op.dtype`` on ``op.device``.

        Returns
        -------
        SolveResult
            The solution in ``op.dtype`` on ``op.device`` and the diagnostics of this solve;
            ``n_hvp`` includes the products of :meth:`prepare` when the solve had to prepare.

        Raises
        ------
        ValueError
            When a parameter, the operator or ``G`` is invalid (before any curvature product).
        DivergenceError
            When the solver diverges, or its solution would contain non-finite values; the
            message names the setting to change.
        """
        return self._template_solve(op, G)

    # ------------------------------------------------------------------------------------------
    # Work units: how a block of right-hand sides is spread over workers, and put back.
    # ------------------------------------------------------------------------------------------

    def work_units(self, n_rhs: int, block_size: int, n_workers: int = 1) -> list:
        """Split ``n_rhs`` right-hand sides into the units of work of one solve.

        The default: consecutive blocks of at most ``block_size`` rows, smaller when that
        leaves a worker idle (a solution never depends on the block it is solved in). With one
        worker they are the blocks of a sequential solve.

        Parameters
        ----------
        n_rhs : int
            Number of right-hand sides.
        block_size : int
            The most rows solved together (the memory knob, ``batch_size``).
        n_workers : int, default=1
            Workers the units are spread over.

        Returns
        -------
        units : list
            Opaque units for :meth:`solve_unit` and :meth:`combine` (here: slices of rows).

        Examples
        --------
        >>> from sk_fastif.solvers import CG
        >>> CG().work_units(10, 4)
        [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
        >>> CG().work_units(10, 128, n_workers=2)
        [slice(0, 5, None), slice(5, 10, None)]
        """
        size = max(1, min(int(block_size), -(-int(n_rhs) // max(1, int(n_workers)))))
        return [slice(a, min(a + size, n_rhs)) for a in range(0, n_rhs, size)]

    def solve_unit(self, op: CurvatureOperator, G: torch.Tensor, unit) -> SolveResult:
        """Solve one unit of :meth:`work_units` (``G`` holds all right-hand sides)."""
        return self.solve(op, G[unit])

    def combine(self, units: list, results: list, G: torch.Tensor, rerun) -> SolveResult:
        """One :class:`SolveResult` for all of ``G`` from the results of its units, in order.

        ``rerun(units) -> results`` solves more units (where a solver needs a second round);
        the default needs none. A solver whose solves refresh its prepared state (LiSSA's
        restarts) adopts here what workers' copies found.
        """
        S = torch.cat([r.solution.to(G.device) for r in results]) if results else G[:0]
        if not results:
            return SolveResult(solution=S, trace=[], n_hvp=0, converged=True)
        return merge_results(results, S)

    def _template_solve(self, op: CurvatureOperator, G: torch.Tensor, **options) -> SolveResult:
        """The body of :meth:`solve`; ``options`` go to :meth:`_solve` (partial solves)."""
        n_hvp_prepare = 0
        if self.is_prepared_for(op):
            _check_operator(op)
            self._check_params(op)
        else:
            self.prepare(op)
            n_hvp_prepare = self.n_hvp_prepare_
        G = _check_rhs(op, G)
        result = self._solve(op, G, **options)
        if not bool(torch.isfinite(result.solution).all()):
            raise DivergenceError(self._nonfinite_message(op))
        result.n_hvp += n_hvp_prepare
        return result

    # ------------------------------------------------------------------------------------------
    # Hooks of the solvers (private).
    # ------------------------------------------------------------------------------------------

    def _prepare(self, op: CurvatureOperator) -> int:
        """Set the prepared state for ``op`` (already validated); return the products spent.

        The default has nothing to precompute and spends nothing.
        """
        return 0

    def _check_prepared(self, op: CurvatureOperator) -> None:
        """Check the new prepared state against the parameters; may warn or raise.

        Run by :meth:`prepare` after the state is recorded as prepared for ``op``, so that the
        work is kept when the check fails on a parameter that may change without preparing
        again (:class:`Exact`: a singular ``H + damping * I``). The default checks nothing.
        """

    def _solve(self, op: CurvatureOperator, G: torch.Tensor) -> SolveResult:
        """Solve the block ``G`` (validated, on ``op.device`` in ``op.dtype``), prepared for op.

        Must not change the parameters or the fitted attributes (see the class docstring).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement _solve.")

    def _prepare_key(self) -> tuple:
        """Parameters whose change makes the work done by :meth:`prepare` stale."""
        return ()

    def _resolve_damping(self, op: CurvatureOperator) -> int:
        """With ``damping="auto"``, set ``auto_damping_`` for ``op``; return the products spent."""
        if not _is_auto(self.get_params(deep=False).get("damping")):
            return 0
        self.auto_damping_, self.top_eigenvalue_estimate_ = auto_damping(op)
        return _N_POWER_STEPS

    def _damping(self) -> float:
        """The damping in use: ``damping``, or the value :meth:`prepare` chose for ``"auto"``."""
        damping = self.get_params(deep=False).get("damping", 0.0)
        if not _is_auto(damping):
            return float(damping)
        if not hasattr(self, "auto_damping_"):
            raise AttributeError(
                f'{type(self).__name__}(damping="auto") has no damping value before prepare().')
        return float(self.auto_damping_)

    @property
    def damping_(self) -> float:
        """The damping ``λ`` in use: ``damping`` when numeric, else the value :meth:`prepare`
        chose for ``"auto"`` (see :func:`auto_damping`)."""
        return self._damping()

    def _check_params(self, op: CurvatureOperator) -> None:
        """Validate the parameters against ``_parameter_constraints`` (and ``op``, if needed).

        Raises :class:`~sklearn.utils._param_validation.InvalidParameterError` (a ValueError and
        a TypeError) whose message says what is wrong in short (e.g. "`depth` must be >= 1, got
        0.") and then in scikit-learn's wording ("The 'depth' parameter of LiSSA must be an int
        in the range [1, inf). Got 0 instead."). A bool is refused where a number is expected.
        Subclasses extend this with checks the constraints cannot express.
        """
        params = self.get_params(deep=False)
        caller = type(self).__name__
        for name, constraints in self._parameter_constraints.items():
            value = params[name]
            try:
                validate_parameter_constraints({name: constraints}, {name: value}, caller)
                if isinstance(value, bool) and _numeric_only(constraints):
                    raise InvalidParameterError(
                        f"The {name!r} parameter of {caller} must be "
                        f"{_describe(constraints)}, not a bool. Got {value!r} instead."
                    )
            except InvalidParameterError as exc:
                short = _requirement(constraints, value)
                head = f"`{name}` {short}, got {value!r}." if short else f"Invalid `{name}`."
                raise InvalidParameterError(f"{head} {exc}") from None

    def _nonfinite_message(self, op: CurvatureOperator) -> str:
        """Message of the DivergenceError raised when a solution is not finite."""
        return (
            f"{type(self).__name__} produced non-finite values (NaN or inf) in {op.dtype}. "
            f"Raise `damping` or check the model's loss."
        )

    # ------------------------------------------------------------------------------------------
    # Bookkeeping of the prepared state (private).
    # ------------------------------------------------------------------------------------------

    def _mark_prepared(self, op: CurvatureOperator) -> None:
        """Record that the current prepared state belongs to ``op`` and the current key."""
        fingerprint = getattr(op, "fingerprint", None)
        if fingerprint is None:
            self._prepared_op = op
            self._prepared_fingerprint = None
        else:
            self._prepared_op = None  # keyed on the value: never hold the operator
            self._prepared_fingerprint = fingerprint
        self._prepared_key = self._full_key()

    def _full_key(self) -> tuple:
        """:meth:`_prepare_key`, and whether ``damping`` is resolved by :meth:`prepare`."""
        return (self._prepare_key(), _is_auto(self.get_params(deep=False).get("damping")))

    def _forget_preparation(self) -> None:
        """Mark the solver as prepared for no operator (a failed prepare leaves it so)."""
        for name in ("_prepared_op", "_prepared_fingerprint", "_prepared_key"):
            self.__dict__.pop(name, None)

    def __getstate__(self) -> dict:
        # The operator holds closures over a network: never pickle it. A solver prepared for an
        # operator without fingerprint prepares itself again on its next ``solve``; one keyed on
        # a fingerprint keeps it, and with it the prepared state.
        state = dict(super().__getstate__())  # a copy: the live solver keeps its operator
        state.pop("_prepared_op", None)
        if state.get("_prepared_fingerprint") is None:
            state.pop("_prepared_fingerprint", None)
            state.pop("_prepared_key", None)
        return state


def _numeric_only(constraints: list) -> bool:
    """Whether a parameter's constraints accept numbers through intervals, but not booleans."""
    made = [make_constraint(c) for c in constraints]
    has_interval = any(isinstance(c, Interval) for c in made)
    has_bool = any(c == "boolean" or c is bool for c in constraints)
    return has_interval and not has_bool


def _requirement(constraints: list, value: object) -> str | None:
    """What ``value`` misses, in short ("must be >= 1"); None if the constraints are not a range.

    For constraints made of one :class:`Interval` and other options (strings, None): the bound
    it violates when ``value`` is a finite number of the interval's type (not a bool), else the
    kinds of value accepted ("must be 'auto' or a positive number").
    """
    made = [make_constraint(c) for c in constraints]
    intervals = [c for c in made if isinstance(c, Interval)]
    if len(intervals) != 1:
        return None
    iv = intervals[0]
    integral = iv.type is numbers.Integral
    kind = numbers.Integral if integral else numbers.Real
    number_of_kind = isinstance(value, kind) and not isinstance(value, bool)
    if number_of_kind and (integral or bool(np.isfinite(value))):
        if iv.left is not None and (
            value < iv.left or (value == iv.left and iv.closed in ("right", "neither"))
        ):
            return f"must be {'>=' if iv.closed in ('left', 'both') else '>'} {iv.left}"
        if iv.right is not None and (
            value > iv.right or (value == iv.right and iv.closed in ("left", "neither"))
        ):
            return f"must be {'<=' if iv.closed in ('right', 'both') else '<'} {iv.right}"
    if integral:
        number = "an integer"
    elif iv.left == 0 and iv.closed in ("right", "neither") and iv.right is None:
        number = "a positive number"
    else:
        number = "a finite real number"
    others = []
    for c in constraints:
        if c is None:
            others.append("None")
        elif isinstance(c, StrOptions):
            others.extend(repr(o) for o in sorted(c.options))
    return f"must be {' or '.join([*others, number])}"


def _describe(constraints: list) -> str:
    """The description of ``constraints`` in scikit-learn's words ("a float in the range ...")."""
    shown = [str(c) for c in (make_constraint(c) for c in constraints) if not c.hidden]
    if len(shown) == 1:
        return shown[0]
    return f"{', '.join(shown[:-1])} or {shown[-1]}"


def _check_int(name: str, value: object, *, low: int) -> int:
    """Validate an integer field ``value >= low`` (of the operator; parameters use constraints)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer, got {value!r}.")
    if value < low:
        raise ValueError(f"`{name}` must be >= {low}, got {value!r}.")
    return int(value)


def _check_operator(op: CurvatureOperator) -> None:
    """Validate the shape fields of a :class:`CurvatureOperator`."""
    if not isinstance(op, CurvatureOperator):
        raise TypeError(f"expected a CurvatureOperator, got {type(op).__name__}.")
    _check_int("op.n_params", op.n_params, low=1)
    _check_int("op.n_samples", op.n_samples, low=1)
    if not op.dtype.is_floating_point:
        raise ValueError(f"`op.dtype` must be a floating dtype, got {op.dtype}.")


def _check_rhs(op: CurvatureOperator, G: torch.Tensor) -> torch.Tensor:
    """Validate a block of right-hand sides; return it on ``op.device`` in ``op.dtype``."""
    if not isinstance(G, torch.Tensor):
        G = torch.as_tensor(np.asarray(G))
    if G.ndim != 2 or G.shape[1] != op.n_params:
        raise ValueError(
            f"`G` must have shape (m, n_params) = (m, {op.n_params}), got {tuple(G.shape)}."
        )
    G = G.to(device=op.device, dtype=op.dtype)
    if not bool(torch.isfinite(G).all()):
        raise ValueError("`G` contains non-finite values (NaN or inf).")
    return G


def _work_dtype(op: CurvatureOperator) -> torch.dtype:
    """float64 for the solvers' own arithmetic, unless the device lacks it (Apple MPS)."""
    return op.dtype if op.device.type == "mps" else torch.float64
