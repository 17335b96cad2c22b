"""Curvature of the mean training loss: the operator contract and its products.

:class:`CurvatureOperator` is all an iHVP solver sees of the model: products of the curvature
(Hessian or Gauss-Newton) of the mean training loss with blocks of vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["CurvatureOperator"]


@dataclass(frozen=True)
class CurvatureOperator:
    """Products with the curvature ``H`` of the mean training loss, without damping.

    Parameters
    ----------
    matvec : callable
        ``matvec(V)`` with ``V`` a tensor of shape ``(m, n_params)`` returns ``H @ V.T``
        transposed, i.e. the ``(m, n_params)`` block of products with the curvature of the
        **mean** loss over all ``n_samples`` training points.
    batch_matvec : callable
        ``batch_matvec(V, idx)`` with ``idx`` an integer ndarray of training rows returns the same
        product for the curvature of the mean loss over those rows only (a stochastic estimate of
        ``H``, used by LiSSA).
    n_params : int
        Number of parameters ``P``.
    n_samples : int
        Number of training points ``n``.
    dtype : torch.dtype
        Floating dtype of the vectors ``matvec`` accepts and returns.
    device : torch.device
        Device of those vectors.
    fingerprint : str or None
        A hash of the values the curvature depends on (the net's parameters, the training data,
        the curvature kind), independent of the device. Solvers key their prepared state on it,
        so that a copy of an operator (unpickled in another process, or moved to another
        device) reuses the work of :meth:`~sk_fastif.solvers.BaseSolver.prepare`. ``None``:
        the operator object's identity is used instead.
    """

    matvec: Callable[[torch.Tensor], torch.Tensor]
    batch_matvec: Callable[[torch.Tensor, np.ndarray], torch.Tensor]
    n_params: int
    n_samples: int
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fingerprint: str | None = None
