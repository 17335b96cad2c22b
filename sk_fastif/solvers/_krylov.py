"""The search directions block CG keeps from one solve to the next (``CG(recycle=...)``).

A solve on ``(H + λI) x = g`` explores a Krylov space; the next block of test gradients,
which resembles the last, needs much of the same space again. :class:`RecycledSpace` keeps an
orthonormal basis ``Q`` of the directions searched so far with their curvature products
``HQ`` (without damping, so that a change of damping keeps them valid), and gives a later
solve two things for no product at all: its Galerkin start on ``span(Q)`` and the projection
that keeps its new directions ``(H + λI)``-conjugate to ``span(Q)`` (deflated CG, Saad et al.
2000). Once ``Q`` spans every parameter the start is the exact solve.
"""

from __future__ import annotations

import threading

import torch

from ._base import DivergenceError

__all__ = ["RecycledSpace", "cholesky_or_raise"]


def cholesky_or_raise(A: torch.Tensor, where: str, damping: float) -> torch.Tensor:
    """The Cholesky factor of the Galerkin matrix ``A`` of ``H + damping * I``, or the
    :class:`DivergenceError` that says ``H + damping * I`` is not positive definite."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        smallest = float(torch.linalg.eigvalsh(A)[0])
        raise DivergenceError(
            f"CG met non-positive curvature p^T (H + damping*I) p = {smallest:.4g} <= 0 "
            f"{where}: H + damping*I is not positive definite (damping={damping:g}). Raise "
            "`damping` above minus the smallest eigenvalue of H, or use "
            'curvature="gauss_newton" (positive semi-definite).'
        )
    return L


class RecycledSpace:
    """An orthonormal basis ``Q`` (rows) with ``HQ`` and ``T = Q H Qᵀ``, grown by solves.

    Parameters
    ----------
    capacity : int
        The most directions kept (rows of ``Q``).

    Notes
    -----
    Thread-safe: a solve takes a snapshot (:meth:`snapshot`), and the directions handed over by
    :meth:`extend` replace the tensors under a lock rather than writing into them. Not pickled
    (see ``CG.__getstate__``).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._lock = threading.Lock()
        self._state: tuple | None = None  # (Q, HQ, T), float64
        # directions handed over by solves, orthonormalised only when a later solve (or
        # len()) needs them: a one-shot call never pays for keeping them
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __len__(self) -> int:
        self._absorb()
        state = self._state
        return 0 if state is None else int(state[0].shape[0])

    def has_room(self) -> bool:
        """Whether directions handed over now may still be kept (without absorbing them)."""
        state = self._state
        return (0 if state is None else state[0].shape[0]) < self.capacity

    def snapshot(self, damping: float, like: torch.Tensor) -> _Projection | None:
        """The projection onto the current space at ``damping`` (None while it is empty)."""
        self._absorb()
        state = self._state
        if state is None or state[0].device != like.device or state[0].dtype != like.dtype:
            return None
        return _Projection(*state, damping)

    def extend(self, N: torch.Tensor, HN: torch.Tensor) -> None:
        """Add the directions ``N`` (rows) with their products ``HN``, up to ``capacity``.

        They are orthonormalised against the kept ones when next needed, in the order given.
        """
        if N.shape[0] == 0:
            return
        with self._lock:
            self._pending.append((N, HN))
            if sum(p.shape[0] for p, _ in self._pending) > 2 * self.capacity:
                self._absorb_locked()

    def _absorb(self) -> None:
        if self._pending:
            with self._lock:
                self._absorb_locked()

    def _absorb_locked(self) -> None:
        pending, self._pending = self._pending, []
        for N, HN in pending:
            self._add(N, HN)

    def _add(self, N: torch.Tensor, HN: torch.Tensor) -> None:
        state = self._state
        room = self.capacity - (0 if state is None else state[0].shape[0])
        if room <= 0 or N.shape[0] == 0:
            return
        if state is not None:
            Q, HQ, T = state
            # one Gram-Schmidt pass: Q stays orthonormal to about eps * cond; a start
            # that is not quite Galerkin only costs iterations, never accuracy (the
            # residual is computed from X itself)
            C = N @ Q.T
            N, HN = N - C @ Q, HN - C @ HQ
        gram = N @ N.T
        e, V = torch.linalg.eigh(0.5 * (gram + gram.T))
        keep = e > e.max().clamp_min(0) * 1e-10
        order = torch.argsort(e[keep], descending=True)[:room]
        W = (V[:, keep] / e[keep].sqrt())[:, order]  # N' = Wᵀ N is orthonormal
        if W.shape[1] == 0:
            return
        N, HN = W.T @ N, W.T @ HN
        T22 = N @ HN.T
        T22 = 0.5 * (T22 + T22.T)
        if state is None:
            self._state = (N, HN, T22)
            return
        T12 = Q @ HN.T
        T = torch.cat([torch.cat([T, T12], 1), torch.cat([T12.T, T22], 1)])
        self._state = (torch.cat([Q, N]), torch.cat([HQ, HN]), T)


class _Projection:
    """Galerkin start and deflation on ``span(Q)`` for one damping (a solve's snapshot)."""

    def __init__(self, Q, HQ, T, damping: float) -> None:
        self.Q, self.HQ, self.damping = Q, HQ, float(damping)
        A = T + self.damping * torch.eye(T.shape[0], dtype=T.dtype, device=T.device)
        self.L = cholesky_or_raise(A, "on the recycled directions", damping)

    def _coefficients(self, B: torch.Tensor) -> torch.Tensor:
        """``(Q A Qᵀ)⁻¹ Q Bᵀ``: the Galerkin coefficients of the rows of ``B``."""
        return torch.cholesky_solve(self.Q @ B.T, self.L)

    def start(self, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X0, R0)``: the Galerkin solution on ``span(Q)`` and its residual ``B - X0 A``."""
        C = self._coefficients(B)
        X = C.T @ self.Q
        return X, B - C.T @ self.HQ - self.damping * X

    def deflate(self, D: torch.Tensor) -> torch.Tensor:
        """``D`` minus its component along ``span(Q)`` in the ``A`` inner product."""
        AD = D @ self.HQ.T + self.damping * (D @ self.Q.T)  # (Q A Dᵀ)ᵀ
        return D - torch.cholesky_solve(AD.T, self.L).T @ self.Q
