"""The training set's per-sample gradients, kept for scoring: factored over Linear layers, or dense.

For a ``torch.nn.Linear`` layer ``s = W a + b`` applied once per sample, the gradient of the
loss ``l_i`` of training point ``i`` with respect to ``[W | b]`` is the outer product
``δ_i [a_iᵀ, 1]`` of the gradient ``δ_i = ∂l_i/∂s_i`` at the layer's output and the layer's input
``a_i``. Keeping ``a_i`` and ``δ_i`` (``n_in + n_out`` numbers per row and layer instead of
``n_out * (n_in + 1)``) is exact, not a projection, and the score of a vector ``v`` (per layer
``V = [V_W | v_b]``) is ``Σ_layers δ_iᵀ (V_W a_i + v_b)``: batched matrix products, with no
per-sample gradient formed. One forward and one backward pass over a chunk give the factors of
all its rows, where per-sample gradients need a vectorised backward pass per row.

:func:`keep_gradients` builds :class:`LinearFactors` when every selected parameter is the weight
or bias of a Linear layer that sees one input row per sample (inputs of shape
``(batch, n_in)``), and checks on the first rows that the outer products equal the per-sample
gradients (a weight also used outside its layer, or a net whose rows interact, fails the check);
otherwise it keeps :class:`DenseGradients`. Both answer the same two questions: ``dot(S, rows)``
(``S @ G[rows]ᵀ``) and ``gradients(rows)`` (dense rows, for shortlists). Both are plain tensors
row-aligned with the training set, the layout an on-disk gradient store keeps too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import vmap

from . import _gradients as grads
from . import _inputs as rows_of
from . import _validation as val
from ._curvature import LayerRecorder, LinearBlock, linear_blocks
from ._net import VMAP_ERRORS

__all__ = ["DenseGradients", "LinearFactor", "LinearFactors", "keep_gradients"]

# A product with the kept gradients forms at most this many intermediate entries at a time.
_MAX_ENTRIES = 1 << 22


def _index(rows, n: int, device) -> torch.Tensor | slice:
    if rows is None:
        return slice(0, n)
    return torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)


class DenseGradients:
    """Per-sample gradients as one ``(n_rows, n_params)`` tensor ``G``."""

    kind = "dense"

    def __init__(self, G: torch.Tensor) -> None:
        self.G = G

    @property
    def n_rows(self) -> int:
        return int(self.G.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.G.nbytes)

    def dot(self, S: torch.Tensor, rows=None) -> torch.Tensor:
        """``S @ G[rows]ᵀ`` (None: every row), shape ``(len(S), n)``, in the gradients' dtype."""
        G = self.G[_index(rows, self.n_rows, self.G.device)]
        return S.to(G) @ G.T

    def gradients(self, rows) -> torch.Tensor:
        """The gradients of ``rows``, shape ``(len(rows), n_params)``."""
        return self.G[_index(rows, self.n_rows, self.G.device)]


@dataclass
class LinearFactor:
    """One Linear layer's factors over the kept rows.

    Attributes
    ----------
    block : LinearBlock
        The layer and where its selected weight and bias lie in ``theta``.
    inputs : torch.Tensor of shape (n_rows, n_in) or None
        The layer's input of each row (None when its weight is not selected).
    output_grads : torch.Tensor of shape (n_rows, n_out)
        The gradient of each row's loss at the layer's output.
    """

    block: LinearBlock
    inputs: torch.Tensor | None
    output_grads: torch.Tensor


class LinearFactors:
    """Per-sample gradients of Linear layers as their input and output-gradient factors.

    Parameters
    ----------
    layers : list of LinearFactor
        One per layer; together they cover every selected parameter.
    n_params : int
        The number of selected parameters.
    """

    kind = "linear_factors"

    def __init__(self, layers: list[LinearFactor], n_params: int) -> None:
        self.layers = layers
        self.n_params = int(n_params)

    @property
    def n_rows(self) -> int:
        return int(self.layers[0].output_grads.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(int(f.output_grads.nbytes) + (0 if f.inputs is None else int(f.inputs.nbytes))
                   for f in self.layers)

    def _selection(self, rows) -> tuple[torch.Tensor | slice, int, torch.Tensor]:
        """The index of ``rows`` (None: all), how many rows it selects, and a factor tensor
        (whose dtype and device every result takes)."""
        first = self.layers[0].output_grads
        index = _index(rows, self.n_rows, first.device)
        return index, self.n_rows if rows is None else len(index), first

    def dot(self, S: torch.Tensor, rows=None) -> torch.Tensor:
        """``S @ G[rows]ᵀ`` (None: every row), shape ``(len(S), n)``, without forming ``G``."""
        index, n, first = self._selection(rows)
        S = S.to(first)
        m = S.shape[0]
        out = torch.zeros(m, n, dtype=first.dtype, device=first.device)
        for f in self.layers:
            b = f.block
            D = f.output_grads[index]
            bias = None if b.bias is None else S[:, b.bias[0]:b.bias[1]]  # (m, n_out)
            if b.weight is None:
                out += bias @ D.T
                continue
            A = f.inputs[index]
            W = S[:, b.weight[0]:b.weight[1]].reshape(m, b.n_out, b.n_in)
            inputs_first = b.n_out <= b.n_in  # the smaller intermediate: (rows, m, min(...))
            if inputs_first:
                M = W.reshape(m * b.n_out, b.n_in).T
            else:
                M = W.permute(1, 0, 2).reshape(b.n_out, m * b.n_in)
            step = max(1, _MAX_ENTRIES // max(1, m * min(b.n_out, b.n_in)))
            for lo in range(0, n, step):
                Ac, Dc = A[lo:lo + step], D[lo:lo + step]
                if inputs_first:  # Σ_o δ_o (W a)_o
                    T = (Ac @ M).view(-1, m, b.n_out)
                    part = torch.bmm(T, Dc[:, :, None])[..., 0]
                else:  # Σ_j a_j (Wᵀ δ)_j
                    T = (Dc @ M).view(-1, m, b.n_in)
                    part = torch.bmm(T, Ac[:, :, None])[..., 0]
                if bias is not None:
                    part = part + Dc @ bias.T
                out[:, lo:lo + step] += part.T
        return out

    def gradients(self, rows) -> torch.Tensor:
        """The dense gradients of ``rows``, shape ``(len(rows), n_params)`` (outer products)."""
        index, n, first = self._selection(rows)
        G = torch.empty(n, self.n_params, dtype=first.dtype, device=first.device)
        for f in self.layers:
            b = f.block
            D = f.output_grads[index]
            if b.weight is not None:
                G[:, b.weight[0]:b.weight[1]] = (D[:, :, None] * f.inputs[index][:, None, :]
                                                 ).reshape(n, -1)
            if b.bias is not None:
                G[:, b.bias[0]:b.bias[1]] = D
        return G


class _NotFactorable(Exception):
    """The net's gradients are not the outer products of its Linear layers' factors."""


def _summed_losses(bridge, F: torch.Tensor, X, y: torch.Tensor) -> torch.Tensor:
    """The sum of the per-sample losses of the outputs ``F`` of a chunk."""
    if bridge.batch_loss_is_mean:
        return bridge.net.get_loss(F, y, X=X, training=False).reshape(()) * len(y)

    def one(o, x, t):
        return bridge.loss_of_output(o[None], x, t)

    if bridge.use_vmap:
        try:
            return vmap(one)(F, X, y).sum()
        except VMAP_ERRORS:
            pass
    return torch.stack([one(o, x, t) for o, x, t in zip(F, rows_of.samples(X), y)]).sum()


def _chunk_factors(bridge, blocks: list[LinearBlock], X, y
                   ) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
    """``(inputs, output_grads)`` of each layer for one chunk on the device.

    The layers' hooks are on the net only meanwhile: nothing else (the check against
    per-sample gradients, another thread's work) runs through them.
    """
    B = len(y)
    recorder = LayerRecorder(bridge.net.module_, blocks)
    try:
        with bridge.modes(), torch.enable_grad():
            theta = bridge.theta.detach().requires_grad_(True)
            recorder.clear()
            F = bridge.batch_output(theta, X)
            if not isinstance(F, torch.Tensor) or any(b.layer not in recorder.outputs
                                                      for b in blocks):
                raise _NotFactorable
            outs = [recorder.outputs[b.layer] for b in blocks]
            ins = [recorder.inputs[b.layer] for b in blocks]
            for b, a, o in zip(blocks, ins, outs):
                if tuple(o.shape) != (B, b.n_out) or tuple(a.shape) != (B, b.n_in):
                    raise _NotFactorable  # positions (sequences, images): a sum of products
            D = torch.autograd.grad(_summed_losses(bridge, F, X, y), outs, allow_unused=True)
    except ValueError as exc:  # a layer applied twice in one pass (the recorder says so)
        raise _NotFactorable from exc
    finally:
        recorder.remove()
    return [(a.detach() if b.weight is not None else None,
             torch.zeros(B, b.n_out, dtype=bridge.dtype, device=bridge.device) if d is None
             else d.detach())
            for b, a, d in zip(blocks, ins, D)]


def _matches(factors: LinearFactors, G: torch.Tensor) -> bool:
    """Whether the factors' outer products are the per-sample gradients ``G`` of their rows."""
    approx = factors.gradients(np.arange(len(G)))
    scale = float(G.abs().max()) if G.numel() else 0.0
    return bool(torch.allclose(approx, G, rtol=1e-4, atol=1e-5 * scale + 1e-12))


def _factor_pass(bridge, X, y: torch.Tensor, progress: Callable[[Iterator], Iterator],
                 blocks: list[LinearBlock]) -> LinearFactors:
    n = len(y)
    inputs = [torch.empty(n, b.n_in, dtype=bridge.dtype, device=bridge.device)
              if b.weight is not None else None for b in blocks]
    outgrads = [torch.empty(n, b.n_out, dtype=bridge.dtype, device=bridge.device)
                for b in blocks]
    kept = LinearFactors([LinearFactor(b, a, d) for b, a, d in zip(blocks, inputs, outgrads)],
                         bridge.n_params)
    for sl in progress(bridge.pass_chunks(n)):
        Xb, yb = bridge.on_device(X, y, sl)
        parts = []
        for i, (a, d) in enumerate(_chunk_factors(bridge, blocks, Xb, yb)):
            if inputs[i] is not None:
                inputs[i][sl] = a
                parts.append(a)
            outgrads[i][sl] = d
            parts.append(d)
        val.check_finite_gradients(torch.cat(parts, dim=1), what="training point",
                                   offset=sl.start)
        if sl.start == 0:
            k = min(len(yb), 4)
            G = grads.gradients(bridge, rows_of.take(Xb, slice(0, k)), yb[:k])
            if not _matches(kept, G):
                raise _NotFactorable
    return kept


def keep_gradients(bridge, X, y: torch.Tensor, *, max_bytes: int,
                   progress: Callable[[Iterator], Iterator] = iter
                   ) -> LinearFactors | DenseGradients | None:
    """The per-sample gradients of the training set ``(X, y)``, as factors where exact.

    Parameters
    ----------
    bridge : NetBridge
        The net's loss as a function of the selected parameters.
    X, y
        The training inputs (as the net takes them) and encoded targets.
    max_bytes : int
        The most memory the kept form may take; None is returned when it would take more.
    progress : callable
        Wraps the iterator over chunks of rows (a progress bar).

    Returns
    -------
    LinearFactors, DenseGradients or None
        Factors when every selected parameter belongs to a Linear layer that sees one input
        row per sample (checked), else dense gradients; None when the form needs more than
        ``max_bytes``. A row whose gradient is not finite raises a ValueError naming it.
    """
    n = len(y)
    itemsize = torch.empty((), dtype=bridge.dtype).element_size()
    try:
        blocks = linear_blocks(bridge)
    except ValueError:
        blocks = None
    if blocks:
        per_row = sum((b.n_in if b.weight is not None else 0) + b.n_out for b in blocks)
        if n * per_row * itemsize <= max_bytes:
            try:
                return _factor_pass(bridge, X, y, progress, blocks)
            except _NotFactorable:
                pass
    if n * bridge.n_params * itemsize > max_bytes:
        return None
    G = torch.empty(n, bridge.n_params, dtype=bridge.dtype, device=bridge.device)
    for sl in progress(bridge.chunks(n)):
        block = grads.gradients(bridge, rows_of.take(X, sl), y[sl])
        val.check_finite_gradients(block, what="training point", offset=sl.start)
        G[sl] = block
    return DenseGradients(G)
