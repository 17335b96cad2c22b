"""Curvature of the mean training loss: what the iHVP solvers see of the net.

* :mod:`._products`: :class:`CurvatureOperator`, the contract (products of the Hessian or
  Gauss-Newton matrix with blocks of vectors), and :class:`CurvatureProducts`, which computes
  those products for a net and builds its operator;
* :mod:`._kfac_factors`: the Kronecker factors of the Gauss-Newton curvature of the net's
  Linear layers (:class:`KroneckerFactors`), computed from the net and the training data by
  :class:`FactoredCurvature` (an operator's ``factored``) and applied by
  :func:`apply_inverse`.

A solver gets products and factors from here; it never touches the net.
"""

from ._kfac_factors import (
    FactoredCurvature,
    KroneckerFactors,
    LayerRecorder,
    LinearBlock,
    apply_inverse,
    compute_factors,
    linear_blocks,
)
from ._products import CurvatureOperator, CurvatureProducts

__all__ = [
    "CurvatureOperator",
    "CurvatureProducts",
    "FactoredCurvature",
    "KroneckerFactors",
    "LayerRecorder",
    "LinearBlock",
    "apply_inverse",
    "compute_factors",
    "linear_blocks",
]
