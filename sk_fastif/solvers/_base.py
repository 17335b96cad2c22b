"""The contract between the influence engine and the iHVP solvers.

A solver sees only a :class:`CurvatureOperator` (products of the curvature of the mean training loss
with blocks of vectors) and a block of right-hand sides. It never sees the network.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator

from .._curvature import CurvatureOperator


class DivergenceError(ArithmeticError):
    """Raised when an iterative solver diverges or produces non-finite values.

    The message names the setting to change (``scale``, ``damping`` or ``curvature``).
    """


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
        Number of curvature-vector products spent (a block product of ``m`` vectors counts ``m``).
    converged : bool
        Whether the solver's own stopping criterion was met.
    """

    solution: torch.Tensor
    trace: list[float]
    n_hvp: int
    converged: bool
    n_iter: int = 0
    info: dict = field(default_factory=dict)


class BaseSolver(BaseEstimator):
    """Base class of the iHVP solvers: ``prepare`` once per operator, then ``solve`` blocks."""

    def prepare(self, op: CurvatureOperator) -> BaseSolver:
        """Do the work that does not depend on the right-hand sides (factorise, estimate scale).

        Called once by :meth:`InfluenceExplainer.fit`; returns self.
        """
        return self

    def solve(self, op: CurvatureOperator, G: torch.Tensor) -> SolveResult:
        """Return approximations of ``(H + damping * I)^{-1} g`` for each row ``g`` of ``G``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------
    # Helpers shared by the solvers (private).
    # ------------------------------------------------------------------------------------------

    def _prepare_key(self) -> tuple:
        """Parameters whose change makes the work done by :meth:`prepare` stale."""
        return ()

    def _mark_prepared(self, op: CurvatureOperator) -> None:
        self._op = op
        self._key = self._prepare_key()

    def is_prepared_for(self, op: CurvatureOperator) -> bool:
        return self._is_prepared_for(op)

    def _is_prepared_for(self, op: CurvatureOperator) -> bool:
        return getattr(self, "_op", None) is op and getattr(self, "_key", None) == (
            self._prepare_key()
        )

    def __getstate__(self) -> dict:
        # The operator holds closures over a network: never pickle it. An unpickled solver
        # prepares itself again on its next ``solve``.
        state = dict(super().__getstate__())  # a copy: the live solver keeps its operator
        state.pop("_op", None)
        state.pop("_key", None)
        return state


class IndefiniteCurvatureWarning(UserWarning):
    """Warned when ``H + damping * I`` is not positive definite (influences are then unreliable)."""


class ScaleRestartWarning(UserWarning):
    """Warned when LiSSA with ``scale="auto"`` diverged and restarts with a doubled scale."""


class CurvatureTooLargeError(MemoryError):
    """Raised by :class:`Exact` when the explicit ``P x P`` curvature would not fit in memory."""


def _check_real(name: str, value: object, *, low: float, strict: bool) -> float:
    """Validate a finite real parameter ``value >= low`` (``> low`` if ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"`{name}` must be a finite real number, got {value!r}.")
    if value < low or (strict and value == low):
        op = ">" if strict else ">="
        raise ValueError(f"`{name}` must be {op} {low}, got {value!r}.")
    return float(value)


def _check_int(name: str, value: object, *, low: int) -> int:
    """Validate an integer parameter ``value >= low``."""
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
