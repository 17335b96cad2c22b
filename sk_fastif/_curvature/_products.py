"""Curvature of the mean training loss: the operator contract and its products.

:class:`CurvatureOperator` is all an iHVP solver sees of the model: products of the curvature
(Hessian or Gauss-Newton) of the mean training loss with blocks of vectors, and, for an operator
built from a net, its Kronecker-factored view (:class:`~sk_fastif._curvature.FactoredCurvature`).
:class:`CurvatureProducts` computes the products of a net's curvature and builds the operator.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch.func import grad, jvp, vjp, vmap

from .._gradients import FORWARD_AD_LOCK
from .._inputs import samples
from .._net import AUTO_ROW_VECTORS, VMAP_ERRORS
from ._kfac_factors import FactoredCurvature

__all__ = ["CurvatureOperator", "CurvatureProducts"]

# Hessian products over the training set keep each chunk's first-order graph (its forward and
# first backward pass) for the next products, up to this many bytes per thread; chunks past it
# are rebuilt each time. Measured on benchmarks/speed.py's nets, the kept graphs make a block
# of products 15-25% cheaper (the graph of a 30-48-5 MLP on 2,000 rows is under 2 MiB).
GRAPH_CACHE_BYTES = 2**26
# Those chunks are NetBridge.pass_chunks (with batch_size="auto", AUTO_ROW_VECTORS // 32 rows,
# whatever the block's width), and a block goes through each AUTO_ROW_VECTORS // rows vectors
# at a time: at most AUTO_ROW_VECTORS (row, vector) pairs at once, as without the cache.


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
    factored : FactoredCurvature or None
        The Kronecker-factored view of the same curvature, computed from the net and the
        training data behind the products (None for an operator built from products only,
        e.g. from a matrix): what a solver that needs factors rather than products asks
        (``factored.factors(...)``, see :class:`~sk_fastif.solvers.EKFAC`). It gives
        factors, never the net.

    Examples
    --------
    >>> import torch
    >>> from sk_fastif.solvers import CurvatureOperator
    >>> H = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
    ...                        n_params=2, n_samples=1, dtype=torch.float64)
    >>> op.matvec(torch.eye(2, dtype=torch.float64)).tolist()
    [[2.0, 0.5], [0.5, 1.0]]
    """

    matvec: Callable[[torch.Tensor], torch.Tensor]
    batch_matvec: Callable[[torch.Tensor, np.ndarray], torch.Tensor]
    n_params: int
    n_samples: int
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fingerprint: str | None = None
    factored: FactoredCurvature | None = field(default=None, repr=False, compare=False)


class CurvatureProducts:
    """Products of the curvature of a net's mean loss with blocks of vectors.

    Parameters
    ----------
    bridge : NetBridge
        The net's loss as a function of the flat parameters (:class:`sk_fastif._net.NetBridge`).
    kind : {"hessian", "gauss_newton"}
        ``"hessian"``: the exact Hessian (reverse-over-reverse). ``"gauss_newton"``: the
        generalised Gauss-Newton matrix ``Jᵀ (∂²loss/∂out²) J``, positive semi-definite for
        losses convex in the net's output.
    """

    def __init__(self, bridge, kind: str = "hessian") -> None:
        self.bridge = bridge
        self.kind = kind

    def _batch_hvp(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Products of the Hessian of the mean loss over (X, y) with each row of V."""
        with FORWARD_AD_LOCK:  # torch.func's transform levels are shared by all threads
            return self._batch_hvp_locked(V, X, y)

    def _batch_hvp_locked(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor
                          ) -> torch.Tensor:
        b = self.bridge
        if b.use_vmap:
            # reverse-over-reverse: one forward/backward, then the pullback batched over V
            # (H is symmetric, so the vector-Jacobian product of the gradient is H v)
            try:
                _, pullback = vjp(lambda t: grad(b.mean_loss)(t, X, y), b.theta)
                return vmap(pullback)(V)[0]
            except VMAP_ERRORS as exc:
                b.disable_vmap(exc)
        out = []
        with torch.enable_grad():
            t = b.theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(b.mean_loss(t, X, y), t, create_graph=True)
            for v in V:
                (hv,) = torch.autograd.grad(g, t, grad_outputs=v, retain_graph=True)
                out.append(hv)
        return torch.stack(out)

    def _batch_ggn(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Products of the Gauss-Newton matrix of the mean loss over (X, y) with each row of V."""
        with FORWARD_AD_LOCK:  # torch's forward-mode AD levels are shared by all threads
            if self.bridge.use_vmap:
                try:
                    return self._batch_ggn_vmap(V, X, y)
                except VMAP_ERRORS as exc:
                    self.bridge.disable_vmap(exc)
            return self._batch_ggn_loop(V, X, y)

    def _batch_ggn_loop(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The same products, one sample and one vector at a time (fallback without vmap)."""
        b = self.bridge
        total = torch.zeros_like(V)
        for xi, yi in zip(samples(X), y):

            def output(t, xi=xi):
                return b.output(t, xi)

            def loss_of(o, xi=xi, yi=yi):
                return b.loss_of_output(o, xi, yi)

            out, pullback = vjp(output, b.theta)
            for r, v in enumerate(V):
                _, jv = jvp(output, (b.theta,), (v,))
                _, hjv = jvp(grad(loss_of), (out,), (jv,))
                total[r] += pullback(hjv)[0]
        return total / max(len(y), 1)

    def _batch_ggn_vmap(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b = self.bridge

        def outputs(t):
            out = vmap(b.output, in_dims=(None, 0))(t, X)
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    "curvature='gauss_newton' needs a module returning one tensor; "
                    f"got {type(out).__name__}. Use curvature='hessian'."
                )
            return out

        def mean_loss_of_outputs(out):
            return vmap(b.loss_of_output)(out, X, y).mean()

        out, pullback = vjp(outputs, b.theta)

        def one(v):
            _, jv = jvp(outputs, (b.theta,), (v,))
            _, hjv = jvp(grad(mean_loss_of_outputs), (out,), (jv,))
            return pullback(hjv)[0]

        return vmap(one)(V)

    def product(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                graphs: _GraphCache | None = None) -> torch.Tensor:
        """Curvature of the mean loss over (X, y), chunked over samples, times each row of V.

        ``graphs``: where Hessian products keep each chunk's first-order graph for the next
        products with the same (X, y) (see :class:`_GraphCache`).
        """
        if graphs is not None and self.kind == "hessian" and self.bridge.use_vmap:
            try:
                with self.bridge.modes():
                    return self._kept_graph_product(V, X, y, graphs)
            except VMAP_ERRORS as exc:
                self.bridge.disable_vmap(exc)
        fn = self._batch_ggn if self.kind == "gauss_newton" else self._batch_hvp
        n = len(y)
        total = torch.zeros_like(V)
        with self.bridge.modes():
            for sl in self.bridge.chunks(n, width=V.shape[0]):
                w = (sl.stop - sl.start) / n
                total += w * fn(V, *self.bridge.on_device(X, y, sl)).detach()
        return total

    def _kept_graph_product(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                            graphs: _GraphCache) -> torch.Tensor:
        """Hessian products over (X, y) from each chunk's kept pullback (built on first use)."""
        b = self.bridge
        n = len(y)
        chunks = list(b.pass_chunks(n))
        group = V.shape[0]
        if b.auto_chunks:
            group = max(1, AUTO_ROW_VECTORS // max(1, chunks[0].stop - chunks[0].start))
        total = torch.zeros_like(V)
        for k, sl in enumerate(chunks):
            # torch.func's transform levels are shared by all threads: one chunk at a time
            with FORWARD_AD_LOCK:
                pullback = graphs.get(k)
                if pullback is None:
                    Xc, yc = b.on_device(X, y, sl)
                    _, pullback = vjp(lambda t, Xc=Xc, yc=yc: grad(b.mean_loss)(t, Xc, yc),
                                      b.theta)
                    graphs.keep(k, pullback, sl.stop - sl.start, lambda: self._graph_bytes(X, y))
                w = (sl.stop - sl.start) / n
                for j in range(0, V.shape[0], group):
                    total[j:j + group] += w * vmap(pullback)(V[j:j + group])[0].detach()
        return total

    def _graph_bytes(self, X: torch.Tensor, y: torch.Tensor) -> float:
        """Bytes per row that the first-order graph of the mean loss saves, measured with
        autograd's saved-tensor hooks on the first 16 rows (``inf`` when that fails)."""
        b = self.bridge
        Xc, yc = b.on_device(X, y, slice(0, min(len(y), 16)))
        saved: dict = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
            return t

        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
                t = b.theta.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(b.batch_loss(t, Xc, yc), t, create_graph=True)
        except (RuntimeError, TypeError, ValueError):
            return float("inf")
        return sum(saved.values()) / max(1, len(yc))

    def _indexed_product(self, V: torch.Tensor, idx, X: torch.Tensor, y: torch.Tensor):
        index = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return self.product(V, *self.bridge.on_device(X, y, index))

    def operator(self, X: torch.Tensor, y: torch.Tensor,
                 fingerprint: str | None = None) -> CurvatureOperator:
        """The :class:`CurvatureOperator` of the mean loss over the training data (X, y)."""
        b = self.bridge
        # partials of bound methods (not closures) keep the operator picklable
        return CurvatureOperator(
            matvec=partial(self.product, X=X, y=y, graphs=_GraphCache()),
            batch_matvec=partial(self._indexed_product, X=X, y=y),
            n_params=b.n_params,
            n_samples=len(y),
            dtype=b.dtype,
            device=b.device,
            fingerprint=fingerprint,
            factored=FactoredCurvature(b, X, y),
        )


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


class _GraphCache:
    """Per-thread store of the chunks' first-order graphs behind an operator's products.

    Each thread keeps its own (a pullback is not shared between threads), at most
    :data:`GRAPH_CACHE_BYTES` of them, by the saved bytes per row measured once; a pickled copy
    starts empty, so no graph travels to another process.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._per_row: float | None = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _graphs(self) -> dict:
        if not hasattr(self._local, "graphs"):
            self._local.graphs, self._local.bytes = {}, 0.0
        return self._local.graphs

    def get(self, key):
        """The kept pullback of chunk ``key``, or None."""
        return self._graphs().get(key)

    def keep(self, key, pullback, n_rows: int, per_row: Callable[[], float]) -> None:
        """Keep chunk ``key``'s pullback if it fits the budget (``per_row()`` measures once)."""
        graphs = self._graphs()
        if self._per_row is None:
            self._per_row = float(per_row())
        size = self._per_row * n_rows
        if self._local.bytes + size <= GRAPH_CACHE_BYTES:
            graphs[key] = pullback
            self._local.bytes += size
