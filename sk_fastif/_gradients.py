"""The skorch/torch bridge: parameter selection, per-sample gradients and curvature products.

Every loss goes through the net's own ``infer`` and ``get_loss`` (``training=False``) with the
module in eval mode, so user overrides of either, and skorch's handling of ``NLLLoss`` on
probabilities, are honoured. Gradients and curvature products are taken with :mod:`torch.func`
with respect to a flat vector ``theta`` holding the selected parameters; the others are fixed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from functools import partial

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vjp, vmap

from ._curvature import CurvatureOperator

__all__ = ["NetBridge", "eval_mode", "select_parameters"]

# what torch.func raises when it cannot batch an operation of the module
_VMAP_ERRORS = (RuntimeError, NotImplementedError, ValueError)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Put modules in eval mode and restore every submodule's own ``training`` flag afterwards."""
    saved = []
    for module in modules:
        if isinstance(module, torch.nn.Module):
            saved.extend((m, m.training) for m in module.modules())
            module.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net.infer(x)


class NetBridge:
    """Per-sample gradients and curvature products of a fitted skorch net's loss.

    Parameters
    ----------
    net : skorch.NeuralNet
        A fitted (initialized) net. It is never modified: parameters are snapshotted.
    params : list of str or None
        Parameter selection, see :func:`select_parameters`.
    curvature : {"hessian", "gauss_newton"}
        Which curvature the operator multiplies with.
    batch_size : int
        Number of samples per vectorised chunk (memory knob).
    """

    def __init__(self, net, params=None, curvature="hessian", batch_size=256) -> None:
        self.net = net
        self.curvature = curvature
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
        self.batch_loss_is_mean = False

    def __getstate__(self) -> dict:
        # skorch pickles ``net.module_`` on its own, so an unpickled wrapper would hold a copy
        # of the module that ``net.infer`` no longer runs: rebuild it from the unpickled net.
        state = self.__dict__.copy()
        state.pop("_wrapper", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
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

    def _output(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Net output for one sample ``x`` (no batch dimension), as a batch of one."""
        return functional_call(self._wrapper, self._as_dict(theta), (x.unsqueeze(0),))

    def _loss_of_output(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.net.get_loss(out, y.unsqueeze(0), X=x.unsqueeze(0), training=False)
        return loss.reshape(())

    def _sample_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._loss_of_output(self._output(theta, x), x, y)

    def _batch_loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The net's own loss on a whole batch (equal to the mean loss when reduction is mean)."""
        out = functional_call(self._wrapper, self._as_dict(theta), (X,))
        return self.net.get_loss(out, y, X=X, training=False).reshape(())

    def _check_batch_loss_is_mean(self, X: torch.Tensor, y: torch.Tensor) -> None:
        """Use the (faster) batch loss when it equals the mean of per-sample losses here."""
        self.batch_loss_is_mean = False
        if len(X) < 2:
            return
        rows = slice(0, min(len(X), 16))
        with self._modes(), torch.no_grad():
            try:
                whole = self._batch_loss(self.theta, X[rows], y[rows])
                per_sample = self._mean_loss(self.theta, X[rows], y[rows])
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

    def _mean_loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if getattr(self, "batch_loss_is_mean", False):
            return self._batch_loss(theta, X, y)
        if self.use_vmap:
            try:
                return vmap(self._sample_loss, in_dims=(None, 0, 0))(theta, X, y).mean()
            except _VMAP_ERRORS as exc:
                self._disable_vmap(exc)
        return torch.stack([self._sample_loss(theta, xi, yi) for xi, yi in zip(X, y)]).mean()

    def _disable_vmap(self, exc: BaseException) -> None:
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

    def _chunks(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    def _modes(self):
        return eval_mode(self.net.module_, getattr(self.net, "criterion_", None))

    # ----------------------------------------------------------------------------- gradients
    def losses(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses, shape (n,)."""
        out = []
        with self._modes(), torch.no_grad():
            for sl in self._chunks(len(X)):
                out.append(self._per_sample(self._sample_loss, X[sl], y[sl]))
        return torch.cat(out) if out else torch.zeros(0, dtype=self.dtype)

    def _per_sample(self, fn, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.use_vmap:
            try:
                return vmap(fn, in_dims=(None, 0, 0))(self.theta, X, y)
            except _VMAP_ERRORS as exc:
                self._disable_vmap(exc)
        return torch.stack([fn(self.theta, xi, yi) for xi, yi in zip(X, y)])

    def _sample_grad_loop(self, theta, x, y):
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._sample_loss(t, x, y), t)
        return g

    def iter_gradients(
        self, X: torch.Tensor, y: torch.Tensor
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(rows, G)`` with ``G`` the (len(rows), n_params) per-sample loss gradients.

        The net's modes are switched for each chunk and restored before the chunk is yielded,
        never held across a ``yield``: an exception or KeyboardInterrupt in the consumer, or a
        generator that is never finished, cannot leave the user's net in eval mode.
        """
        for sl in self._chunks(len(X)):
            with self._modes():
                if self.use_vmap:
                    G = self._per_sample(grad(self._sample_loss), X[sl], y[sl])
                else:
                    G = torch.stack(
                        [self._sample_grad_loop(self.theta, xi, yi) for xi, yi in zip(X[sl], y[sl])]
                    )
            yield sl, G.detach()

    def gradients(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """All per-sample gradients at once, shape (n, n_params). Use for test points only."""
        blocks = [G for _, G in self.iter_gradients(X, y)]
        if not blocks:
            return torch.zeros(0, self.n_params, dtype=self.dtype, device=self.device)
        return torch.cat(blocks)

    # ----------------------------------------------------------------------------- curvature
    def _batch_hvp(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Products of the Hessian of the mean loss over (X, y) with each row of V."""
        if self.use_vmap:
            # reverse-over-reverse: one forward/backward, then the pullback batched over V
            # (H is symmetric, so the vector-Jacobian product of the gradient is H v)
            try:
                _, pullback = vjp(lambda t: grad(self._mean_loss)(t, X, y), self.theta)
                return vmap(pullback)(V)[0]
            except _VMAP_ERRORS as exc:
                self._disable_vmap(exc)
        out = []
        with torch.enable_grad():
            t = self.theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._mean_loss(t, X, y), t, create_graph=True)
            for v in V:
                (hv,) = torch.autograd.grad(g, t, grad_outputs=v, retain_graph=True)
                out.append(hv)
        return torch.stack(out)

    def _batch_ggn(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Products of the Gauss-Newton matrix J^T (d2 loss / d out2) J of the mean loss."""
        if self.use_vmap:
            try:
                return self._batch_ggn_vmap(V, X, y)
            except _VMAP_ERRORS as exc:
                self._disable_vmap(exc)
        return self._batch_ggn_loop(V, X, y)

    def _batch_ggn_loop(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The same products, one sample and one vector at a time (fallback without vmap)."""
        total = torch.zeros_like(V)
        for xi, yi in zip(X, y):

            def output(t, xi=xi):
                return self._output(t, xi)

            def loss_of(o, xi=xi, yi=yi):
                return self._loss_of_output(o, xi, yi)

            out, pullback = vjp(output, self.theta)
            for r, v in enumerate(V):
                _, jv = jvp(output, (self.theta,), (v,))
                _, hjv = jvp(grad(loss_of), (out,), (jv,))
                total[r] += pullback(hjv)[0]
        return total / max(len(X), 1)

    def _batch_ggn_vmap(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:

        def outputs(t):
            out = vmap(self._output, in_dims=(None, 0))(t, X)
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    "curvature='gauss_newton' needs a module returning one tensor; "
                    f"got {type(out).__name__}. Use curvature='hessian'."
                )
            return out

        def mean_loss_of_outputs(out):
            return vmap(self._loss_of_output)(out, X, y).mean()

        out, pullback = vjp(outputs, self.theta)

        def one(v):
            _, jv = jvp(outputs, (self.theta,), (v,))
            _, hjv = jvp(grad(mean_loss_of_outputs), (out,), (jv,))
            return pullback(hjv)[0]

        return vmap(one)(V)

    def curvature_product(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Curvature of the mean loss over (X, y), chunked over samples, times each row of V."""
        fn = self._batch_ggn if self.curvature == "gauss_newton" else self._batch_hvp
        n = len(X)
        total = torch.zeros_like(V)
        with self._modes():
            for sl in self._chunks(n):
                w = (sl.stop - sl.start) / n
                total += w * fn(V, X[sl], y[sl]).detach()
        return total

    def _indexed_product(self, V: torch.Tensor, idx, X: torch.Tensor, y: torch.Tensor):
        index = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=X.device)
        return self.curvature_product(V, X[index], y[index])

    def operator(self, X: torch.Tensor, y: torch.Tensor) -> CurvatureOperator:
        """The :class:`CurvatureOperator` of the mean training loss over (X, y)."""
        self._check_batch_loss_is_mean(X, y)

        # partials of bound methods (not closures) keep a fitted explainer picklable
        return CurvatureOperator(
            matvec=partial(self.curvature_product, X=X, y=y),
            batch_matvec=partial(self._indexed_product, X=X, y=y),
            n_params=self.n_params,
            n_samples=len(X),
            dtype=self.dtype,
            device=self.device,
        )
