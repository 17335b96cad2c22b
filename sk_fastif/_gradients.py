"""Per-sample loss gradients of a skorch net, with respect to a flat vector of parameters.

Every loss goes through the net's own ``infer`` and ``get_loss`` (``training=False``) with the
module in eval mode, so user overrides of either, and skorch's handling of ``NLLLoss`` on
probabilities, are honoured. Gradients and curvature products are taken with :mod:`torch.func`
with respect to a flat vector ``theta`` holding the selected parameters; the others are fixed.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import _batch as rows_of
from ._net import net_modes, output_type_message

__all__ = ["FORWARD_AD_LOCK", "FORWARD_MAX_VECTORS", "VMAP_ERRORS", "NetBridge", "chunks",
           "samples", "select_parameters"]

# what torch.func raises when it cannot batch an operation of the module
VMAP_ERRORS = (RuntimeError, NotImplementedError, ValueError)

# torch.func.jvp enters a process-wide forward-AD level: two threads computing forward-mode
# products at once break each other's (the threading backend of joblib runs workers as threads)
FORWARD_AD_LOCK = threading.Lock()

#: Products ``S @ G.T`` with at most this many rows of ``S`` are computed by forward mode
#: (:meth:`NetBridge.iter_products`): cheaper than forming the gradients below it (measured
#: in ``benchmarks/bench_scoring.py``: 1.6x faster at 20 rows on a
#: 28,426-parameter MLP, even at 64, slower above; on the 2,410-parameter digits MLP 0.8-1x).
FORWARD_MAX_VECTORS = 32


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` rows."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def samples(X) -> Iterator:
    """The samples of a batch of inputs (a tensor or a dict of tensors), one at a time."""
    if isinstance(X, dict):
        for i in range(rows_of.n_rows(X)):
            yield {k: v[i] for k, v in X.items()}
    else:
        yield from X


def select_parameters(
    module: torch.nn.Module, params: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """Split the module's trainable parameter names into (selected, frozen).

    ``params=None`` selects every parameter with ``requires_grad``. Otherwise each entry is a
    module name or a parameter-name prefix: ``"fc2"`` selects ``fc2.weight`` and ``fc2.bias``;
    ``"fc2.weight"`` selects that one tensor.
    """
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    if params is None:
        selected = names
    else:
        if isinstance(params, str):
            params = [params]
        selected = []
        unknown = []
        for prefix in params:
            hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if not hits:
                unknown.append(prefix)
            selected.extend(h for h in hits if h not in selected)
        if unknown:
            modules = sorted({n.rsplit(".", 1)[0] for n in names if "." in n})
            raise ValueError(
                f"params={list(params)!r}: {unknown!r} name no trainable parameter of the module. "
                f"Module names: {modules}; parameter names: {names}."
            )
        # keep the module's own order so results do not depend on the order of ``params``
        selected = [n for n in names if n in selected]
    if not selected:
        raise ValueError("params selects no trainable parameter (all have requires_grad=False).")
    frozen = [n for n, _ in module.named_parameters() if n not in selected]
    return selected, frozen


class _LossModule(torch.nn.Module):
    """Holds the net's module so :func:`functional_call` can reparametrise it inside ``infer``."""

    def __init__(self, net) -> None:
        super().__init__()
        self.inner = net.module_
        object.__setattr__(self, "_net", net)

    def forward(self, x) -> torch.Tensor:
        out = self._net.infer(x)
        if isinstance(out, Mapping):  # e.g. a Hugging Face ModelOutput
            raise TypeError(output_type_message(out))
        return out


class NetBridge:
    """The loss of a fitted skorch net as a function of a flat parameter vector ``theta``.

    Every loss goes through the net's own ``infer`` and ``get_loss`` (``training=False``) with the
    module in eval mode. The selected parameters are snapshotted into ``theta`` and the others
    (and the buffers) into ``fixed``, so the net is never modified. The per-sample pieces
    (:meth:`output`, :meth:`loss_of_output`, :meth:`sample_loss`, :meth:`mean_loss`) are what
    :mod:`sk_fastif._curvature` differentiates twice.

    Parameters
    ----------
    net : skorch.NeuralNet
        A fitted (initialized) net.
    params : list of str or None
        Parameter selection, see :func:`select_parameters`.
    batch_size : int
        Number of samples per vectorised chunk (memory knob).

    Attributes
    ----------
    use_vmap : bool
        False once :func:`torch.func.vmap` failed on the module: per-sample loops from then on.
    use_forward_scoring : bool
        False once forward mode failed on the module in :meth:`iter_products`: scores from
        gradient blocks from then on.
    batch_loss_is_mean : bool
        Whether the net's batch loss equals the mean of its per-sample losses (checked on the
        training data by :meth:`check_batch_loss_is_mean`); curvature products then use it.
    """

    def __init__(self, net, params=None, batch_size=128) -> None:
        self.net = net
        self.batch_size = int(batch_size)
        module = net.module_
        self.selected, frozen = select_parameters(module, params)
        named = dict(module.named_parameters())
        self.shapes = [named[n].shape for n in self.selected]
        self.numels = [named[n].numel() for n in self.selected]
        self.theta = torch.cat([named[n].detach().reshape(-1) for n in self.selected]).clone()
        self.dtype = self.theta.dtype
        self.device = self.theta.device
        self.fixed = {"inner." + n: named[n].detach().clone() for n in frozen}
        self.fixed.update({"inner." + n: b.detach() for n, b in module.named_buffers()})
        self._wrapper = _LossModule(net)
        self.use_vmap = True
        self.use_forward_scoring = True
        self.batch_loss_is_mean = False

    def __getstate__(self) -> dict:
        # skorch pickles ``net.module_`` on its own, so an unpickled wrapper would hold a copy
        # of the module that ``net.infer`` no longer runs: rebuild it from the unpickled net.
        state = self.__dict__.copy()
        state.pop("_wrapper", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"use_forward_scoring": True, **state})  # older pickles lack it
        self._wrapper = _LossModule(self.net)

    # ----------------------------------------------------------------------------- basic pieces
    @property
    def n_params(self) -> int:
        return int(self.theta.numel())

    def _as_dict(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(theta, self.numels)
        out = {"inner." + n: p.view(s) for n, p, s in zip(self.selected, pieces, self.shapes)}
        out.update(self.fixed)
        return out

    def output(self, theta: torch.Tensor, x) -> torch.Tensor:
        """Net output for one sample ``x`` (no batch dimension), as a batch of one."""
        return functional_call(self._wrapper, self._as_dict(theta), (rows_of.unsqueeze(x),))

    def loss_of_output(self, out: torch.Tensor, x, y: torch.Tensor) -> torch.Tensor:
        loss = self.net.get_loss(out, y.unsqueeze(0), X=rows_of.unsqueeze(x), training=False)
        return loss.reshape(())

    def sample_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_of_output(self.output(theta, x), x, y)

    def batch_loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The net's own loss on a whole batch (equal to the mean loss when reduction is mean)."""
        out = functional_call(self._wrapper, self._as_dict(theta), (X,))
        return self.net.get_loss(out, y, X=X, training=False).reshape(())

    def check_batch_loss_is_mean(self, X: torch.Tensor, y: torch.Tensor) -> None:
        """Use the (faster) batch loss when it equals the mean of per-sample losses here."""
        self.batch_loss_is_mean = False
        if len(y) < 2:
            return
        X, y = self.on_device(X, y, slice(0, min(len(y), 16)))
        with self.modes(), torch.no_grad():
            try:
                whole = self.batch_loss(self.theta, X, y)
                per_sample = self.mean_loss(self.theta, X, y)
            except (RuntimeError, ValueError, TypeError):
                return
        if not bool(torch.isfinite(per_sample)):
            raise ValueError(
                "The net's loss is not finite on the training data (first rows). A common cause "
                "is NeuralNetClassifier's default NLLLoss on a module that returns logits: use "
                "criterion=torch.nn.CrossEntropyLoss or end the module with a softmax."
            )
        self.batch_loss_is_mean = bool(
            torch.allclose(whole, per_sample, rtol=1e-5, atol=1e-7 * float(per_sample.abs()))
        )

    def mean_loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if getattr(self, "batch_loss_is_mean", False):
            return self.batch_loss(theta, X, y)
        if self.use_vmap:
            try:
                return vmap(self.sample_loss, in_dims=(None, 0, 0))(theta, X, y).mean()
            except VMAP_ERRORS as exc:
                self.disable_vmap(exc)
        return torch.stack([self.sample_loss(theta, xi, yi)
                            for xi, yi in zip(samples(X), y)]).mean()

    def disable_vmap(self, exc: BaseException) -> None:
        """Switch to the per-sample loops for good, and say so once."""
        if self.use_vmap:
            first_line = (str(exc).splitlines() or [""])[0][:200]
            warnings.warn(
                f"torch.func.vmap cannot run this module ({type(exc).__name__}: {first_line}); "
                "falling back to slower per-sample loops (same results).",
                RuntimeWarning,
                stacklevel=5,
            )
        self.use_vmap = False

    def chunks(self, n: int) -> Iterator[slice]:
        """Slices of ``range(n)`` of ``batch_size`` rows."""
        return chunks(n, self.batch_size)

    def on_device(self, X, y: torch.Tensor, rows) -> tuple:
        """Rows ``rows`` (a slice or indices) of ``(X, y)``, on the net's device."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long)
            y = y[rows.to(y.device)]
        else:
            y = y[rows]
        return rows_of.to_device(rows_of.take(X, rows), self.device), y.to(self.device)

    @contextlib.contextmanager
    def modes(self):
        """Eval mode for the net's module and criterion, restored on exit.

        Attention runs on PyTorch's reference ("math") kernel meanwhile, and the fused
        inference path of ``nn.TransformerEncoderLayer`` / ``nn.MultiheadAttention`` is off:
        neither has second derivatives, forward-mode AD or a batching rule, which Hessian and
        Gauss-Newton products and vmapped gradients need (the values are the same).
        """
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with net_modes(self.net), sdpa_kernel([SDPBackend.MATH]):
                yield
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)

    # ----------------------------------------------------------------------------- gradients
    def losses(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses, shape (n,)."""
        out = []
        with self.modes(), torch.no_grad():
            for sl in self.chunks(len(y)):
                out.append(self._per_sample(self.sample_loss, *self.on_device(X, y, sl)))
        return torch.cat(out) if out else torch.zeros(0, dtype=self.dtype)

    def _per_sample(self, fn, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.use_vmap:
            try:
                return vmap(fn, in_dims=(None, 0, 0))(self.theta, X, y)
            except VMAP_ERRORS as exc:
                self.disable_vmap(exc)
        return torch.stack([fn(self.theta, xi, yi) for xi, yi in zip(samples(X), y)])

    def _sample_grad_loop(self, theta, x, y):
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.sample_loss(t, x, y), t)
        return g

    def iter_gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, start: int = 0
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(rows, G)`` with ``G`` the (len(rows), n_params) per-sample loss gradients.

        Chunks of ``batch_size`` rows, from the one holding row ``start`` on.

        The net's modes are switched for each chunk and restored before the chunk is yielded,
        never held across a ``yield``: an exception or KeyboardInterrupt in the consumer, or a
        generator that is never finished, cannot leave the user's net in eval mode.
        """
        for sl in self.chunks(len(y)):
            if sl.stop <= start:
                continue
            Xb, yb = self.on_device(X, y, sl)
            with self.modes():
                if self.use_vmap:
                    G = self._per_sample(grad(self.sample_loss), Xb, yb)
                else:
                    G = torch.stack([self._sample_grad_loop(self.theta, xi, yi)
                                     for xi, yi in zip(samples(Xb), yb)])
            yield sl, G.detach()

    def iter_products(
        self, S: torch.Tensor, X, y: torch.Tensor
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(rows, S @ G.T)`` with ``G`` the per-sample gradients of ``rows``.

        With at most :data:`FORWARD_MAX_VECTORS` rows in ``S`` (and vmap working), each
        product ``S[i] · g_j`` is the derivative of the per-sample loss ``l_j`` along
        ``S[i]``, computed by forward mode (one ``jvp`` per row of ``S``, batched, one thread
        at a time) and no ``(rows, n_params)`` gradient block is formed; otherwise from that
        block. When the
        module cannot run forward mode under vmap (an operation without a forward-AD formula
        or batching rule), the products come from the gradient block from that chunk on, and
        for the rest of the bridge's life (``use_forward_scoring`` turns False; the values are
        the same). A chunk whose products are not finite is yielded as computed: the caller
        checks it (its gradients then say which row is not finite).
        """
        # in every thread alike (under FORWARD_AD_LOCK), so that the threading backend and
        # Dask's threads compute the same numbers as a sequential run
        forward = self.use_vmap and self.use_forward_scoring and len(S) <= FORWARD_MAX_VECTORS
        if forward:
            S = S.to(dtype=self.dtype, device=self.device)
            for sl in self.chunks(len(y)):
                Xb, yb = self.on_device(X, y, sl)
                with self.modes(), FORWARD_AD_LOCK:
                    try:
                        P = self._forward_products(S, Xb, yb)
                    except VMAP_ERRORS:
                        self.use_forward_scoring = False
                        break
                yield sl, P.detach()
            else:
                return
            start = sl.start  # vmap failed on this chunk: the gradient path from here on
        else:
            start = 0
        for sl, G in self.iter_gradients(X, y, start=start):
            yield sl, S @ G.T

    def _forward_products(self, S: torch.Tensor, X, y: torch.Tensor) -> torch.Tensor:
        def losses(t):
            return vmap(self.sample_loss, in_dims=(None, 0, 0))(t, X, y)

        def along(s):
            return jvp(losses, (self.theta,), (s,))[1]

        return vmap(along)(S)

    def gradients(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """All per-sample gradients at once, shape (n, n_params). Use for test points only."""
        blocks = [G for _, G in self.iter_gradients(X, y)]
        if not blocks:
            return torch.zeros(0, self.n_params, dtype=self.dtype, device=self.device)
        return torch.cat(blocks)

    # ----------------------------------------------------------------------------- devices
    def to(self, device: str | torch.device) -> NetBridge:
        """A copy of this bridge on ``device``, over a deep copy of the net moved there.

        The user's net is never moved: the copy owns its own net. The parameter snapshot, the
        selection and the flags found on the way (``use_vmap``, ``batch_loss_is_mean``) are
        kept, so the copy computes the same functions.
        """
        device = torch.device(device)
        net = copy.deepcopy(self.net)
        net.module_.to(device)
        criterion = getattr(net, "criterion_", None)
        if isinstance(criterion, torch.nn.Module):
            criterion.to(device)
        net.device = str(device)  # skorch's ``infer`` moves its input to ``net.device``
        new = copy.copy(self)
        new.net = net
        new.theta = self.theta.to(device)
        new.fixed = {k: v.to(device) for k, v in self.fixed.items()}
        new.device = device
        new._wrapper = _LossModule(net)
        return new
