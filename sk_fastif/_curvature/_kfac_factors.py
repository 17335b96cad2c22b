"""Kronecker factors of the Gauss-Newton curvature of a net's linear layers.

For a ``torch.nn.Linear`` layer ``s = W a + b`` and a training point ``i``, the Gauss-Newton
matrix of the loss ``l_i`` restricted to ``[W | b]`` is ``sum_k vec(g_ik ã_iᵀ) vec(g_ik ã_iᵀ)ᵀ``
where ``ã_i = [a_i; 1]`` is the layer's input with a 1 appended for the bias and
``g_ik = J_iᵀ u_ik`` the back-propagation to ``s`` of the ``k``-th column ``u_ik`` of a square
root ``L_i`` of the loss's Hessian with respect to the net's output (``L_i L_iᵀ = ∂²l_i/∂f²``).
In the row-major layout of the parameters (``W[o, j]`` at ``o * n_in + j``) that block is
``sum_k (g_ik g_ikᵀ) ⊗ (ã_i ã_iᵀ)``. K-FAC replaces its mean over the training points by
``S ⊗ A`` with ``S = mean_i sum_k g_ik g_ikᵀ`` and ``A = mean_i ã_i ã_iᵀ``; EK-FAC keeps the
eigenbasis ``Q_S ⊗ Q_A`` of that product and replaces its eigenvalues by the exact second
moments of the (probe) gradients in that basis, ``mean_i sum_k ((Q_Sᵀ g_ik)(Q_Aᵀ ã_i)ᵀ)²``,
which is the diagonal of the layer's Gauss-Newton block in the basis.

The factors are computed here, in the curvature layer, from the net and the training data:
:class:`FactoredCurvature` holds both and is what a :class:`~sk_fastif.solvers.CurvatureOperator`
built from a net carries as ``op.factored``. A solver asks it for the factors
(:meth:`FactoredCurvature.factors`) and applies them (:func:`apply_inverse`); it never sees the
net. The net is read only through its :class:`~sk_fastif._net.NetBridge`: the parameter snapshot
``theta`` and selection, ``batch_output`` (the net's ``infer`` at ``theta``),
``loss_of_output`` (the net's own loss of one output) and ``modes()`` (eval mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import hessian, vmap

from .._net import VMAP_ERRORS

__all__ = ["FactoredCurvature", "KroneckerFactors", "LayerRecorder", "LinearBlock",
           "apply_inverse", "compute_factors", "linear_blocks"]

# Squared-gradient products of layers whose inputs have positions are formed by at most this
# many entries at a time (samples x outputs x inputs).
_MAX_ENTRIES = 1 << 24


@dataclass(frozen=True)
class LinearBlock:
    """Where one ``torch.nn.Linear`` layer's selected parameters lie in the flat ``theta``.

    Attributes
    ----------
    layer : str
        The module's name in the net's module (``""`` when the module itself is the layer).
    n_out, n_in : int
        The layer's output and input features.
    weight, bias : tuple of int or None
        ``(start, stop)`` of the weight (``n_out * n_in`` entries, row-major) and of the bias
        in ``theta``, or None when that tensor is not selected.
    """

    layer: str
    n_out: int
    n_in: int
    weight: tuple[int, int] | None
    bias: tuple[int, int] | None

    @property
    def n_cols(self) -> int:
        """Columns of the factored matrix ``[W | b]``: inputs, plus one for a selected bias."""
        return (self.n_in if self.weight is not None else 0) + (self.bias is not None)

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(n_out, n_cols)`` of the factored matrix."""
        return (self.n_out, self.n_cols)


@dataclass(frozen=True)
class KroneckerFactors:
    """The eigen-decomposed Kronecker factors of one linear layer (float64, on the CPU).

    The layer's curvature block is approximated by
    ``(Q_S ⊗ Q_A) diag(vec(eigenvalues)) (Q_S ⊗ Q_A)ᵀ`` in the row-major layout of
    ``[W | b]``; plain K-FAC would use ``outer(S_eigenvalues, A_eigenvalues)`` instead.

    Attributes
    ----------
    block : LinearBlock
        The layer and where its parameters lie in ``theta``.
    A_eigenvalues, A_eigenvectors : torch.Tensor
        Of the input covariance ``A`` (``n_cols`` and ``n_cols x n_cols``), ascending.
    S_eigenvalues, S_eigenvectors : torch.Tensor
        Of the output-gradient covariance ``S`` (``n_out`` and ``n_out x n_out``), ascending.
    eigenvalues : torch.Tensor of shape (n_out, n_cols)
        The corrected eigenvalues: the mean squared (probe) gradients in the eigenbasis.
    """

    block: LinearBlock
    A_eigenvalues: torch.Tensor
    A_eigenvectors: torch.Tensor
    S_eigenvalues: torch.Tensor
    S_eigenvectors: torch.Tensor
    eigenvalues: torch.Tensor


def _name(layer: str) -> str:
    return repr(layer) if layer else "the root module"


def linear_blocks(bridge) -> list[LinearBlock]:
    """The selected parameters of ``bridge``, grouped by ``torch.nn.Linear`` layer.

    Raises a ValueError naming the selected parameters that are not the weight or bias of a
    ``torch.nn.Linear`` module.
    """
    module = bridge.net.module_
    found: dict[str, dict[str, tuple[int, int]]] = {}
    unsupported = []
    start = 0
    for name, numel in zip(bridge.selected, bridge.numels):
        stop = start + int(numel)
        owner, _, attr = name.rpartition(".")
        sub = module.get_submodule(owner)
        if isinstance(sub, torch.nn.Linear) and attr in ("weight", "bias"):
            found.setdefault(owner, {})[attr] = (start, stop)
        else:
            unsupported.append(name)
        start = stop
    if unsupported:
        linear = sorted(n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear))
        raise ValueError(
            f"EKFAC factors the curvature of torch.nn.Linear layers only; the selected "
            f"parameters {unsupported} are not the weight or bias of a Linear layer. Select "
            f"only Linear layers with `params=` (e.g. the last layers: params={linear[-1:]!r}; "
            f"the Linear layers of this module: {linear}), or use Exact, CG or LiSSA."
        )
    blocks = []
    for owner, where in found.items():
        sub = module.get_submodule(owner)
        blocks.append(LinearBlock(owner, int(sub.out_features), int(sub.in_features),
                                  where.get("weight"), where.get("bias")))
    return blocks


class LayerRecorder:
    """Forward hooks that keep each Linear layer's input and output for one forward pass.

    A layer applied twice in one pass (shared weights) raises a ValueError.
    """

    def __init__(self, module: torch.nn.Module, blocks: list[LinearBlock]) -> None:
        self.blocks = blocks
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for b in blocks:
            hook = self._hook(b.layer)
            self.handles.append(module.get_submodule(b.layer).register_forward_hook(hook))

    def _hook(self, layer: str):
        def record(mod, args, out):
            if layer in self.outputs:
                raise ValueError(
                    f"EKFAC: the Linear layer {_name(layer)} is applied more than once per "
                    "forward pass (shared weights), which K-FAC's factors do not describe. "
                    "Leave it out of `params=`, or use Exact, CG or LiSSA.")
            if not args:
                raise ValueError(f"EKFAC: the Linear layer {_name(layer)} was called without "
                                 "a positional input.")
            self.inputs[layer] = args[0].detach()
            self.outputs[layer] = out
        return record

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _output_hessians(bridge, F: torch.Tensor, X, y, oshape) -> torch.Tensor:
    """``∂²l_i/∂f_i²`` of the net's loss of each output row, shape (B, C, C), float64."""

    def loss(o, x, t):
        return bridge.loss_of_output(o.reshape((1, *oshape)), x, t)

    F = F.detach()
    if bridge.use_vmap:
        try:
            return vmap(hessian(loss))(F, X, y).to(torch.float64)
        except VMAP_ERRORS as exc:
            bridge.disable_vmap(exc)
    return torch.stack([hessian(loss)(f, x, t) for f, x, t in zip(F, X, y)]).to(torch.float64)


def _probes(Lam: torch.Tensor, mc_samples: int | None, gen: torch.Generator | None):
    """Vectors ``u_ik`` with ``sum_k u_ik u_ikᵀ = Λ_i`` (exactly, or in expectation).

    ``mc_samples=None``: the columns of ``Q_i diag(sqrt(max(w_i, 0)))`` (``Λ_i = Q_i diag(w_i)
    Q_iᵀ``, negative parts of a non-convex loss dropped). An integer ``k``: ``k`` Gaussian
    combinations of those columns divided by ``sqrt(k)``. Shape (K, B, C).
    """
    w, Q = torch.linalg.eigh(0.5 * (Lam + Lam.transpose(1, 2)))
    L = Q * w.clamp_min(0).sqrt()[:, None, :]
    if mc_samples is None:
        return L.permute(2, 0, 1)
    B, C = Lam.shape[0], Lam.shape[1]
    z = torch.randn((B, C, mc_samples), generator=gen, dtype=torch.float64)
    return (L @ z.to(L.device)).permute(2, 0, 1) / np.sqrt(mc_samples)


def _probe_gradients(F, outputs: list[torch.Tensor], U: torch.Tensor) -> list[torch.Tensor]:
    """``J_{s_l}ᵀ u_k`` for every layer output ``s_l`` and probe ``k``: shapes (K, *s_l.shape)."""
    U = U.to(F.dtype)
    try:
        return list(torch.autograd.grad(F, outputs, grad_outputs=U, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True))
    except RuntimeError:  # an operation without a batching rule: one backward pass per probe
        per_probe = [torch.autograd.grad(F, outputs, grad_outputs=u, retain_graph=True,
                                         allow_unused=True) for u in U]
        return [None if g[0] is None else torch.stack(g) for g in zip(*per_probe)]


def _layer_inputs(block: LinearBlock, a: torch.Tensor, B: int) -> torch.Tensor:
    """The layer's input ``ã`` as (B, positions, n_cols), float64 (a 1 appended for the bias)."""
    if a.shape[0] != B or a.shape[-1] != block.n_in:
        raise ValueError(
            f"EKFAC: the Linear layer {_name(block.layer)} received an input of shape "
            f"{tuple(a.shape)} for a batch of {B} rows; it needs the batch first.")
    a = a.reshape(B, -1, block.n_in).to(torch.float64)
    parts = [a] if block.weight is not None else []
    if block.bias is not None:
        parts.append(torch.ones(a.shape[:-1] + (1,), dtype=a.dtype, device=a.device))
    return torch.cat(parts, dim=-1)


def _passes(bridge, batches: Callable[[], Iterator], blocks: list[LinearBlock],
            mc_samples: int | None,
            seed: int | None) -> Iterator[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """One pass over the training data: per batch, ``(B, [(ã, g) per layer])``.

    ``ã`` is (B, positions, n_cols) and ``g`` (K, B, positions, n_out), both float64. The same
    ``seed`` gives the same probes in every pass.
    """
    gen = None if seed is None else torch.Generator().manual_seed(int(seed))
    recorder = LayerRecorder(bridge.net.module_, blocks)
    try:
        for X, y in batches():
            B = len(X)
            with bridge.modes(), torch.enable_grad():
                theta = bridge.theta.detach().requires_grad_(True)
                recorder.clear()
                F = bridge.batch_output(theta, X)
                if not isinstance(F, torch.Tensor):
                    raise TypeError("EKFAC needs a module returning one tensor; got "
                                    f"{type(F).__name__}.")
                missing = [b.layer for b in blocks if b.layer not in recorder.outputs]
                if missing:
                    raise ValueError(f"EKFAC: the Linear layers {missing} were not called by "
                                     "the net's forward pass.")
                oshape = tuple(F.shape[1:])
                Lam = _output_hessians(bridge, F.reshape(B, -1), X, y, oshape)
                U = _probes(Lam, mc_samples, gen).reshape((-1, B, *oshape))
                outs = [recorder.outputs[b.layer] for b in blocks]
                grads = _probe_gradients(F, outs, U)
            rows = []
            for b, g in zip(blocks, grads):
                A = _layer_inputs(b, recorder.inputs[b.layer], B)
                if g is None:
                    g = torch.zeros(U.shape[0], B, A.shape[1], b.n_out, dtype=torch.float64,
                                    device=A.device)
                rows.append((A, g.detach().reshape(U.shape[0], B, -1, b.n_out).double()))
            recorder.clear()
            yield B, rows
    finally:
        recorder.remove()


# The layer inputs and output gradients of the first pass over the training data are kept for
# the second (the eigenvalue correction) while they take at most this many bytes; beyond it the
# second pass recomputes them. The same probes either way, so the factors are the same.
KEEP_PASS_BYTES = 256 * 2**20
# with batch_size="auto", the rows of a chunk of those passes are counted as this many vectors
# (one backward pass per output of the net)
KFAC_PASS_WIDTH = 16


def compute_factors(bridge, batches: Callable[[], Iterator], mc_samples: int | None = None,
                    seed: int | None = None) -> list[KroneckerFactors]:
    """EK-FAC factors of the selected Linear layers of ``bridge`` over ``batches()``.

    Two passes over the training data: the covariances ``A`` and ``S`` and their
    eigendecompositions, then the corrected eigenvalues. The second reuses the first's layer
    inputs and output gradients while they fit in ``KEEP_PASS_BYTES`` (256 MiB), so that on
    small problems the net runs once.

    Parameters
    ----------
    bridge : NetBridge
        The net's loss as a function of the selected parameters.
    batches : callable
        ``batches()`` iterates over the training data in chunks ``(X, y)`` on the net's
        device (called once per pass).
    mc_samples : int or None, default=None
        None: the output-space Hessian of each point is factored exactly (one backward pass
        per output). An int: that many random probes per point (seeded by ``seed``).
    seed : int or None
        Seed of the probes (used only with an integer ``mc_samples``).

    Returns
    -------
    list of KroneckerFactors
        One per layer, in the order of the parameters in ``theta``.
    """
    blocks = linear_blocks(bridge)
    n = 0
    A_sum = [torch.zeros(b.n_cols, b.n_cols, dtype=torch.float64) for b in blocks]
    S_sum = [torch.zeros(b.n_out, b.n_out, dtype=torch.float64) for b in blocks]
    kept: list | None = []  # the first pass's rows, reused by the second while they fit
    kept_bytes = 0
    for B, rows in _passes(bridge, batches, blocks, mc_samples, seed):
        n += B
        for i, (A, g) in enumerate(rows):
            A_sum[i] += torch.einsum("bpi,bpj->ij", A, A).cpu()
            S_sum[i] += torch.einsum("kbpo,kbpq->oq", g, g).cpu()
        if kept is not None:
            kept_bytes += sum(A.nbytes + g.nbytes for A, g in rows)
            kept = kept + [rows] if kept_bytes <= KEEP_PASS_BYTES else None
    if n == 0:
        raise ValueError("EKFAC: the training data is empty.")
    eig_A = [torch.linalg.eigh(0.5 * (M + M.T) / n) for M in A_sum]
    eig_S = [torch.linalg.eigh(0.5 * (M + M.T) / n) for M in S_sum]

    corrected = [torch.zeros(b.shape, dtype=torch.float64) for b in blocks]
    second = kept if kept is not None else (r for _, r in _passes(bridge, batches, blocks,
                                                                  mc_samples, seed))
    for rows in second:
        for i, (A, g) in enumerate(rows):
            QA = eig_A[i][1].to(A.device)
            QS = eig_S[i][1].to(A.device)
            a_rot = A @ QA  # (B, P, n_cols)
            g_rot = g @ QS  # (K, B, P, n_out)
            if A.shape[1] == 1:  # one position: the squared product factorises per point
                corrected[i] += ((g_rot[:, :, 0] ** 2).sum(0).T @ a_rot[:, 0] ** 2).cpu()
            else:
                corrected[i] += _positions_squared(a_rot, g_rot).cpu()
    return [
        KroneckerFactors(block=b, A_eigenvalues=ea[0].clamp_min(0), A_eigenvectors=ea[1],
                         S_eigenvalues=es[0].clamp_min(0), S_eigenvectors=es[1],
                         eigenvalues=c / n)
        for b, ea, es, c in zip(blocks, eig_A, eig_S, corrected)
    ]


def _positions_squared(a_rot: torch.Tensor, g_rot: torch.Tensor) -> torch.Tensor:
    """``sum_{k,b} (sum_p g_rot[k, b, p] a_rot[b, p]ᵀ)²`` in chunks of points."""
    K, B, _, n_out = g_rot.shape
    n_cols = a_rot.shape[-1]
    step = max(1, _MAX_ENTRIES // max(1, n_out * n_cols))
    total = torch.zeros(n_out, n_cols, dtype=torch.float64, device=a_rot.device)
    for k in range(K):
        for s in range(0, B, step):
            M = torch.einsum("bpo,bpi->boi", g_rot[k, s:s + step], a_rot[s:s + step])
            total += (M * M).sum(0)
    return total


def apply_inverse(factors: list[KroneckerFactors], G: torch.Tensor, damping: float,
                  *, n_params: int) -> torch.Tensor:
    """``(K + damping I)^{-1}`` applied to each row of ``G`` (float64 in, float64 out).

    ``K`` is the block-diagonal EK-FAC curvature of ``factors``: per layer, rotate the block of
    the right-hand side into the eigenbasis, divide by ``eigenvalues + damping``, rotate back.
    """
    m = G.shape[0]
    out = torch.empty((m, n_params), dtype=G.dtype, device=G.device)
    for f in factors:
        b = f.block
        parts = []
        if b.weight is not None:
            parts.append(G[:, b.weight[0]:b.weight[1]].reshape(m, b.n_out, b.n_in))
        if b.bias is not None:
            parts.append(G[:, b.bias[0]:b.bias[1]].reshape(m, b.n_out, 1))
        V = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        QA = f.A_eigenvectors.to(device=G.device, dtype=G.dtype)
        QS = f.S_eigenvectors.to(device=G.device, dtype=G.dtype)
        lam = f.eigenvalues.to(device=G.device, dtype=G.dtype)
        R = (QS.T @ V @ QA) / (lam + damping)
        V = QS @ R @ QA.T
        col = 0
        if b.weight is not None:
            out[:, b.weight[0]:b.weight[1]] = V[:, :, :b.n_in].reshape(m, -1)
            col = b.n_in
        if b.bias is not None:
            out[:, b.bias[0]:b.bias[1]] = V[:, :, col]
    return out


class FactoredCurvature:
    """The Kronecker-factored view of a net's curvature, as a solver receives it.

    Built by the curvature layer (:meth:`~sk_fastif._curvature.CurvatureProducts.operator`)
    from the net and the training data, and carried by the operator as
    ``CurvatureOperator.factored``. A solver that needs factors rather than products
    (:class:`~sk_fastif.solvers.EKFAC`, ``CG(preconditioner="ekfac")``) asks for them with
    :meth:`factors` and gets per-layer Kronecker factors and their eigendecompositions
    (:class:`KroneckerFactors`, applied with :func:`apply_inverse`); the net and the data stay
    in here.

    Parameters
    ----------
    bridge : NetBridge
        The net's loss as a function of the selected parameters.
    X : torch.Tensor, dict of torch.Tensor or DatasetRows
        The training inputs as the net takes them (read by rows, see :mod:`sk_fastif._inputs`).
    y : torch.Tensor
        The encoded training targets.

    Attributes
    ----------
    n_params : int
        Number of selected parameters (the length of the vectors the factors act on).
    n_samples : int
        Number of training points the factors average over.
    memo : object or None
        Where computed factors are kept for later fits (the gradient store's
        ``load(key)`` / ``save(key, factors)``), or None.

    Examples
    --------
    >>> import torch
    >>> from skorch import NeuralNetRegressor
    >>> from sk_fastif._curvature import CurvatureProducts
    >>> from sk_fastif._net import NetBridge
    >>> X = torch.randn(20, 3); y = X.sum(1, keepdim=True)
    >>> net = NeuralNetRegressor(torch.nn.Linear, module__in_features=3,
    ...                          module__out_features=1).initialize()
    >>> op = CurvatureProducts(NetBridge(net), "gauss_newton").operator(X, y)
    >>> op.factored
    FactoredCurvature(n_params=4, n_samples=20)
    >>> [(f.block.layer, f.block.shape) for f in op.factored.factors()]
    [('', (1, 4))]
    """

    def __init__(self, bridge, X, y: torch.Tensor) -> None:
        self._bridge = bridge
        self._X = X
        self._y = y
        self.memo = None

    def __repr__(self) -> str:
        return f"FactoredCurvature(n_params={self.n_params}, n_samples={self.n_samples})"

    @property
    def n_params(self) -> int:
        return int(self._bridge.n_params)

    @property
    def n_samples(self) -> int:
        return len(self._y)

    def _batches(self) -> Iterator[tuple[object, torch.Tensor]]:
        """The training data in chunks of ``bridge.batch_size`` rows, on the net's device."""
        for sl in self._bridge.chunks(len(self._y), width=KFAC_PASS_WIDTH):
            yield self._bridge.on_device(self._X, self._y, sl)

    def factors(self, mc_samples: int | None = None,
                seed: int | None = None) -> list[KroneckerFactors]:
        """The EK-FAC factors of the selected Linear layers (two passes over the data).

        Parameters
        ----------
        mc_samples : int or None, default=None
            None: the output-space Hessian of each point is factored exactly. An int: that
            many random probes per point (seeded by ``seed``).
        seed : int or None
            Seed of the probes (used only with an integer ``mc_samples``).

        Returns
        -------
        list of KroneckerFactors
            One per layer, in the order of the parameters in ``theta`` (float64, on the CPU).

        Raises
        ------
        ValueError
            When a selected parameter is not the weight or bias of a ``torch.nn.Linear``
            layer, or a layer is applied more than once per forward pass.
        """
        key = "exact" if mc_samples is None else f"mc{int(mc_samples)}-seed{seed}"
        kept = None if self.memo is None else self.memo.load(key)
        if kept is not None:
            return kept
        factors = compute_factors(self._bridge, self._batches, mc_samples, seed)
        if self.memo is not None:
            self.memo.save(key, factors)
        return factors
