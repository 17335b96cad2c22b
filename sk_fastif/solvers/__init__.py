"""Solvers of inverse-Hessian-vector products ``(H + damping * I)^{-1} g``.

All solvers share one meaning of ``damping`` and solve a whole block of right-hand sides at once
through a :class:`CurvatureOperator`.
"""

from ._auto import auto_solver
from ._base import (
    BaseSolver,
    CurvatureOperator,
    CurvatureTooLargeError,
    DivergenceError,
    IndefiniteCurvatureWarning,
    ScaleRestartWarning,
    SolveResult,
    auto_damping,
    merge_results,
)
from ._cg import CG
from ._ekfac import EKFAC
from ._exact import Exact
from ._lissa import LiSSA, LiSSADepthWarning

__all__ = [
    "BaseSolver",
    "CG",
    "CurvatureOperator",
    "CurvatureTooLargeError",
    "DivergenceError",
    "EKFAC",
    "Exact",
    "IndefiniteCurvatureWarning",
    "LiSSA",
    "LiSSADepthWarning",
    "ScaleRestartWarning",
    "SolveResult",
    "auto_damping",
    "auto_solver",
    "merge_results",
]
