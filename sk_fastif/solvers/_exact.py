"""Exact iHVPs from the eigendecomposition of the explicit curvature matrix."""

from __future__ import annotations

import os
import warnings
from numbers import Real

import torch

from .._sklearn_compat import Interval, StrOptions
from ._base import (
    BaseSolver,
    CurvatureOperator,
    CurvatureTooLargeError,
    DivergenceError,
    IndefiniteCurvatureWarning,
    SolveResult,
)

# Identity columns pushed through ``op.matvec`` per call while building the matrix.
_BLOCK = 256
# Number of P x P float64 matrices alive at once (the matrix, the eigenvectors, LAPACK workspace).
_N_COPIES = 3
# ``|w + damping|`` below this fraction of the spectrum's scale counts as singular.
_SINGULAR_RTOL = 1e-10


def _physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None when the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


class Exact(BaseSolver):
    """Solve with the explicit curvature matrix and its eigendecomposition.

    :meth:`prepare` materialises the ``P x P`` matrix ``H`` column block by column block with
    ``op.matvec`` (``P`` curvature-vector products), symmetrises it in float64 and computes
    ``H = Q diag(w) Q^T`` with :func:`torch.linalg.eigh`. :meth:`solve` then applies
    ``Q diag(1 / (w + damping)) Q^T`` to the whole block of right-hand sides, without further
    curvature products. Suited to small models or to influence restricted to a few parameters
    (a last layer); it is the reference the iterative solvers are checked against.

    Parameters
    ----------
    damping : float, default=1e-3
        The ``lambda >= 0`` of ``(H + lambda I)^{-1}``, the same meaning for every solver.

    Attributes
    ----------
    eigenvalues_ : ndarray of shape (n_params,)
        Eigenvalues ``w`` of the undamped curvature ``H``, ascending (float64).
    n_negative_eigenvalues_ : int
        Number of eigenvalues below ``-P * eps * max|w|`` (``eps`` of ``op.dtype``), so that the
        rounding noise of a positive semi-definite ``H`` does not count as negative curvature.
    n_hvp_prepare_ : int
        Curvature-vector products spent by :meth:`prepare` (``n_params``).

    Raises
    ------
    CurvatureTooLargeError
        (a :class:`MemoryError`) from :meth:`prepare`, before any product is computed, when about
        three float64 ``P x P`` matrices would need more than half of the physical memory.
    DivergenceError
        From :meth:`prepare` and :meth:`solve` when ``H + damping * I`` is numerically singular
        (``|w + damping| <= 1e-10 * max(max|w|, damping)`` for some eigenvalue). When
        :meth:`prepare` raises it, the eigendecomposition is kept: after a change of
        ``damping``, :meth:`solve` uses it without new curvature products.

    Warns
    -----
    IndefiniteCurvatureWarning
        When some ``w + damping < 0``: the result is still the exact inverse of the indefinite
        matrix, but such influences are unreliable. Warned by :meth:`prepare`, and by each
        :meth:`solve` whose ``damping`` differs from the one :meth:`prepare` checked.

    Notes
    -----
    The matrix lives on the CPU in float64 whatever ``op.device``; the solution is returned on
    ``op.device`` in ``op.dtype``. The ``trace`` of a solve has one entry: the largest relative
    residual ``||(H + damping I) s - g|| / ||g||`` over the block, computed with the explicit
    matrix for the returned (cast) solution ``s``; ``n_iter`` is 0 (a direct solve). ``n_hvp``
    of a solve is 0 unless the solve had to prepare the operator first (it prepares
    automatically when not prepared for the operator it is given), in which case it is
    ``n_params``. ``damping`` is not part of the prepared state: changing it after
    :meth:`prepare` reuses the eigendecomposition, and a solve changes no attribute.

    Examples
    --------
    >>> import torch
    >>> from sk_fastif.solvers import CurvatureOperator, Exact
    >>> H = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
    ...                        n_params=2, n_samples=1, dtype=torch.float64)
    >>> solver = Exact(damping=0.0).prepare(op)
    >>> solver.eigenvalues_.round(3)
    array([0.793, 2.207])
    >>> res = solver.solve(op, torch.eye(2, dtype=torch.float64))
    >>> torch.allclose(res.solution, torch.linalg.inv(H))
    True
    """

    _parameter_constraints: dict = {
        "damping": [Interval(Real, 0.0, None, closed="left"), StrOptions({"auto"})],
    }

    def __init__(self, *, damping: float = 1e-3) -> None:
        self.damping = damping

    def _prepare(self, op: CurvatureOperator) -> int:
        """Build the explicit curvature matrix of ``op`` and eigendecompose it."""
        P = int(op.n_params)
        need = _N_COPIES * P * P * 8
        phys = _physical_memory()
        if phys is not None and need > phys // 2:
            raise CurvatureTooLargeError(
                f"Exact needs the explicit n_params x n_params curvature matrix: with "
                f"n_params={P:,} that is about {_fmt_bytes(need)} ({_N_COPIES} float64 copies), "
                f"more than half of this machine's {_fmt_bytes(phys)} of physical memory. "
                f"Use solver=CG(...) or LiSSA(...), or restrict `params` to fewer parameters."
            )

        H = torch.empty((P, P), dtype=torch.float64)
        for start in range(0, P, _BLOCK):
            stop = min(start + _BLOCK, P)
            E = torch.zeros((stop - start, P), dtype=op.dtype, device=op.device)
            E[torch.arange(stop - start), torch.arange(start, stop)] = 1
            block = op.matvec(E)
            if tuple(block.shape) != (stop - start, P):
                raise ValueError(
                    f"op.matvec returned shape {tuple(block.shape)} for an input of shape "
                    f"{(stop - start, P)}."
                )
            H[start:stop] = block.detach().to(device="cpu", dtype=torch.float64)
            del E, block
        if not bool(torch.isfinite(H).all()):
            raise DivergenceError("The curvature products are not finite (NaN or inf).")
        H = H + H.T  # symmetrise; at most two P x P copies alive before eigh
        H.mul_(0.5)
        w, Q = torch.linalg.eigh(H)

        self._H = H
        self._Q = Q
        self._w = w
        self.eigenvalues_ = w.numpy().copy()
        scale = float(w.abs().max())
        eps = float(torch.finfo(op.dtype).eps)
        self.n_negative_eigenvalues_ = int((self.eigenvalues_ < -P * eps * scale).sum())
        self._prepare_damping = self._damping()
        return P

    def _check_prepared(self, op: CurvatureOperator) -> None:
        """Check the spectrum at the damping of :meth:`prepare` (raises if singular, warns)."""
        self._damped_spectrum(self._prepare_damping, warn=True)

    def _damped_spectrum(self, damping: float, *, warn: bool) -> torch.Tensor:
        """Return ``w + damping`` after checking it for singularity (and, if ``warn``, sign)."""
        d = self._w + damping
        scale = max(float(self._w.abs().max()), damping)
        if bool((d.abs() <= _SINGULAR_RTOL * scale).any()):
            raise DivergenceError(
                f"H + damping*I is singular: with damping={damping:g} some eigenvalue of "
                f"H + damping*I is zero to working precision (smallest eigenvalue of H: "
                f"{float(self._w[0]):.4g}). Use damping > {max(-float(self._w[0]), 0.0):.4g} "
                f'or curvature="gauss_newton".'
            )
        if warn and bool((d < 0).any()):
            wmin = float(self._w[0])
            warnings.warn(
                f"H + damping*I is not positive definite: the smallest eigenvalue of H is "
                f"{wmin:.4g} and damping={damping:g}, so {int((d < 0).sum())} eigenvalue(s) of "
                f"H + damping*I are negative. Exact returns the exact inverse of this indefinite "
                f"matrix, but influence scores computed from it are unreliable; use "
                f'damping > {-wmin:.4g} or curvature="gauss_newton".',
                IndefiniteCurvatureWarning,
                stacklevel=4,
            )
        return d

    def _solve(self, op: CurvatureOperator, G: torch.Tensor) -> SolveResult:
        """Apply ``Q diag(1 / (w + damping)) Q^T`` to the block (no curvature product)."""
        damping = self._damping()
        # prepare() warned for its own damping; a different one is checked (and warned) here
        d = self._damped_spectrum(damping, warn=damping != self._prepare_damping)

        G64 = G.detach().to(device="cpu", dtype=torch.float64)
        S64 = ((G64 @ self._Q) / d) @ self._Q.T
        S = S64.to(device=op.device, dtype=op.dtype)
        if not bool(torch.isfinite(S).all()):
            raise DivergenceError(self._nonfinite_message(op))

        S_back = S.to(device="cpu", dtype=torch.float64)
        R = S_back @ self._H + damping * S_back - G64
        gnorm = torch.linalg.vector_norm(G64, dim=1)
        rnorm = torch.linalg.vector_norm(R, dim=1)
        rel = torch.where(gnorm > 0, rnorm / torch.where(gnorm > 0, gnorm, 1.0), rnorm)
        trace = [float(rel.max())] if rel.numel() else [0.0]
        return SolveResult(solution=S, trace=trace, n_hvp=0, converged=True, n_iter=0)

    def _nonfinite_message(self, op: CurvatureOperator) -> str:
        return (
            f"Exact produced non-finite values; H + damping*I is too ill-conditioned in "
            f"{op.dtype} (damping={self._damping():g}). Raise `damping`."
        )
