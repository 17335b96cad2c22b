"""Per-sample loss gradients of a skorch net, and their products with blocks of vectors.

Functions over a :class:`~sk_fastif._net.NetBridge` (the net's own loss as a function of a
flat vector ``theta`` of the selected parameters; the others are fixed): the gradients are
taken with :func:`torch.func.grad` under :func:`torch.func.vmap`, chunk by chunk of
``bridge.batch_size`` rows (per-sample loops when vmap cannot run the module), and the scoring
products ``S @ G.T`` by forward mode when ``S`` has few rows, so that no gradient block is
formed. The bridge records what the module allows (``use_vmap``, ``use_forward_scoring``), so
that the functions here hold no state.

Examples
--------
>>> import torch
>>> from skorch import NeuralNetRegressor
>>> from sk_fastif import _gradients
>>> from sk_fastif._net import NetBridge
>>> net = NeuralNetRegressor(torch.nn.Linear, module__in_features=3,
...                          module__out_features=1).initialize()
>>> bridge = NetBridge(net)
>>> X, y = torch.randn(5, 3), torch.randn(5, 1)
>>> G = _gradients.gradients(bridge, X, y)
>>> G.shape
torch.Size([5, 4])
>>> S = torch.randn(2, 4)
>>> P = torch.cat([P for _, P in _gradients.iter_products(bridge, S, X, y)], dim=1)
>>> torch.allclose(P, S @ G.T, atol=1e-5)
True
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
from torch.func import grad, jvp, vmap

from . import _inputs as rows_of
from ._net import VMAP_ERRORS, NetBridge

__all__ = ["FORWARD_AD_LOCK", "FORWARD_MAX_VECTORS", "forward_products", "gradients",
           "iter_gradients", "iter_products"]

# torch.func.jvp enters a process-wide forward-AD level, and the transforms' levels are shared:
# two threads computing forward-mode products, or Hessian products (vjp of grad under vmap), at
# once break each other's (the threading backend of joblib runs workers as threads)
FORWARD_AD_LOCK = threading.Lock()

#: Products ``S @ G.T`` with at most this many rows of ``S`` are computed by forward mode
#: (:func:`iter_products`): cheaper than forming the gradients below it (measured
#: in ``benchmarks/bench_scoring.py``: 1.6x faster at 20 rows on a
#: 28,426-parameter MLP, even at 64, slower above; on the 2,410-parameter digits MLP 0.8-1x).
FORWARD_MAX_VECTORS = 32


def _sample_grad_loop(bridge: NetBridge, theta, x, y):
    with torch.enable_grad():
        t = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(bridge.sample_loss(t, x, y), t)
    return g


def iter_gradients(
    bridge: NetBridge, X, y: torch.Tensor, *, start: int = 0
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, G)`` with ``G`` the (len(rows), n_params) per-sample loss gradients.

    Chunks of ``bridge.batch_size`` rows, from the one holding row ``start`` on.

    The net's modes are switched for each chunk and restored before the chunk is yielded,
    never held across a ``yield``: an exception or KeyboardInterrupt in the consumer, or a
    generator that is never finished, cannot leave the user's net in eval mode.
    """
    for sl in bridge.chunks(len(y)):
        if sl.stop <= start:
            continue
        Xb, yb = bridge.on_device(X, y, sl)
        with bridge.modes():
            if bridge.use_vmap:
                G = bridge.per_sample(grad(bridge.sample_loss), Xb, yb)
            else:
                G = torch.stack([_sample_grad_loop(bridge, bridge.theta, xi, yi)
                                 for xi, yi in zip(rows_of.samples(Xb), yb)])
        yield sl, G.detach()


def iter_products(
    bridge: NetBridge, S: torch.Tensor, X, y: torch.Tensor
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, S @ G.T)`` with ``G`` the per-sample gradients of ``rows``.

    With at most :data:`FORWARD_MAX_VECTORS` rows in ``S`` (and vmap working), each
    product ``S[i] · g_j`` is the derivative of the per-sample loss ``l_j`` along
    ``S[i]``, computed by forward mode (one ``jvp`` per row of ``S``, batched, one thread
    at a time, :func:`forward_products`) and no ``(rows, n_params)`` gradient block is formed;
    otherwise from that block. When the module cannot run forward mode under vmap (an
    operation without a forward-AD formula or batching rule), the products come from the
    gradient block from that chunk on, and for the rest of the bridge's life
    (``bridge.use_forward_scoring`` turns False; the values are the same). A chunk whose
    products are not finite is yielded as computed: the caller checks it (its gradients then
    say which row is not finite).
    """
    # in every thread alike (under FORWARD_AD_LOCK), so that the threading backend and
    # Dask's threads compute the same numbers as a sequential run
    forward = (bridge.use_vmap and bridge.use_forward_scoring
               and len(S) <= FORWARD_MAX_VECTORS)
    if forward:
        S = S.to(dtype=bridge.dtype, device=bridge.device)
        for sl in bridge.chunks(len(y)):
            Xb, yb = bridge.on_device(X, y, sl)
            with bridge.modes(), FORWARD_AD_LOCK:
                try:
                    P = forward_products(bridge, S, Xb, yb)
                except VMAP_ERRORS:
                    bridge.disable_forward_scoring()
                    break
            yield sl, P.detach()
        else:
            return
        start = sl.start  # vmap failed on this chunk: the gradient path from here on
    else:
        start = 0
    for sl, G in iter_gradients(bridge, X, y, start=start):
        yield sl, S @ G.T


def forward_products(bridge: NetBridge, S: torch.Tensor, X, y: torch.Tensor) -> torch.Tensor:
    """``S @ G.T`` for one chunk ``(X, y)`` on the device, by forward mode (in the net's modes).

    Raises one of :data:`~sk_fastif._net.VMAP_ERRORS` when the module cannot run forward mode
    under vmap.
    """
    def losses(t):
        return vmap(bridge.sample_loss, in_dims=(None, 0, 0))(t, X, y)

    def along(s):
        return jvp(losses, (bridge.theta,), (s,))[1]

    return vmap(along)(S)


def gradients(bridge: NetBridge, X, y: torch.Tensor) -> torch.Tensor:
    """All per-sample gradients at once, shape (n, n_params). Use for test points only."""
    blocks = [G for _, G in iter_gradients(bridge, X, y)]
    if not blocks:
        return torch.zeros(0, bridge.n_params, dtype=bridge.dtype, device=bridge.device)
    return torch.cat(blocks)
