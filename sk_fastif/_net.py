"""The skorch adapter: what the rest of the package needs to know about the user's estimator.

Splitting a ``Pipeline`` / ``FrozenEstimator`` into its preprocessing and its skorch net, whether
it is fitted, training a clone of an unfitted one, eval mode, the net's dtype and device, the
task kind (classifier, binary classifier or regressor) as one small :class:`Task` object, so that
no other module branches on skorch's classes, and :class:`NetBridge`: the net's own loss as a
function of a flat vector of the selected parameters, which the gradients
(:mod:`sk_fastif._gradients`) and the curvature (:mod:`sk_fastif._curvature`) differentiate.

It sits just above the input handling (:mod:`sk_fastif._inputs`): it answers the questions
only the net can answer for it through :class:`NetProbe`.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import _inputs as rows_of
from ._sklearn_compat import FrozenEstimator
from .exceptions import TrainSplitWarning  # noqa: F401  (re-exported)

__all__ = [
    "NetBridge",
    "NetProbe",
    "Task",
    "VMAP_ERRORS",
    "check_net_accepts",
    "eval_mode",
    "fit_clone",
    "fit_inputs",
    "is_fitted",
    "is_prefit",
    "net_modes",
    "param_dtype",
    "select_parameters",
    "split_estimator",
]

_CLASSIFICATION_LOSSES = (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)

# what torch.func raises when it cannot batch an operation of the module
VMAP_ERRORS = (RuntimeError, NotImplementedError, ValueError)


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


def net_modes(net):
    """Eval mode for a skorch net's module and criterion (restored on exit)."""
    return eval_mode(net.module_, getattr(net, "criterion_", None))


def _unwrap_frozen(est):
    if isinstance(est, FrozenEstimator):
        return est.estimator
    return est


def split_estimator(estimator):
    """Return ``(preprocessor or None, skorch net)`` of a net, a Pipeline or a FrozenEstimator."""
    est = _unwrap_frozen(estimator)
    pre = None
    if isinstance(est, Pipeline):
        if len(est.steps) > 1:
            pre = est[:-1]
        est = _unwrap_frozen(est.steps[-1][1])
    if not isinstance(est, NeuralNet):
        raise TypeError(
            "estimator must be a skorch net (NeuralNetClassifier, NeuralNetBinaryClassifier, "
            "NeuralNetRegressor or NeuralNet), a Pipeline ending in one, or a FrozenEstimator of "
            f"either; got {type(est).__name__}."
        )
    return pre, est


def is_fitted(estimator) -> bool:
    """Whether the net (and any preprocessing before it) is fitted; TypeError if not skorch."""
    pre, net = split_estimator(estimator)
    if not getattr(net, "initialized_", False):
        return False
    if pre is not None:
        try:
            check_is_fitted(pre)
        except NotFittedError:
            return False
    return True


def is_prefit(estimator) -> bool:
    """Whether ``estimator`` is a fitted skorch net / pipeline (False for anything else)."""
    try:
        return is_fitted(estimator)
    except TypeError:
        return False


def param_dtype(net) -> torch.dtype | None:
    """Floating dtype of a skorch net's parameters (None if it has no floating parameter)."""
    for p in net.module_.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def param_device(net) -> torch.device:
    """Device of a skorch net's parameters (CPU for a module without parameters)."""
    for p in net.module_.parameters():
        return p.device
    return torch.device("cpu")


def _is_classifier(net) -> bool:
    if isinstance(net, NeuralNetBinaryClassifier):
        return False
    return isinstance(net, NeuralNetClassifier) or isinstance(
        getattr(net, "criterion_", None), _CLASSIFICATION_LOSSES
    )


def output_type_message(out) -> str:
    """The error for a module whose output the net's loss cannot take."""
    return (
        f"The module returns {type(out).__name__}, not a tensor: influence needs the net's "
        "loss on its output. Wrap the module so that forward returns the logits, e.g. "
        "`def forward(self, **kw): return self.model(**kw).logits` for a Hugging Face model, "
        "or `[0]` of a tuple (see the user guide, 'Text and other inputs')."
    )


def runs_on(net, X) -> bool:
    """Whether the net's module runs on the inputs ``X`` (a few rows), in eval mode."""
    try:
        with net_modes(net), torch.no_grad():
            net.infer(X)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return False
    return True


class _TokenRangeError(Exception):
    pass


def check_token_ids(net, X, batch_size: int = 256) -> None:
    """Token ids out of an embedding's range are a clear error (before any gradient).

    Runs the net on ``X`` (a tensor, a dict or :class:`~sk_fastif._inputs.DatasetRows`) with a
    check on the input of every ``nn.Embedding`` / ``nn.EmbeddingBag`` (only when the module has
    one). Floating-point values reaching an embedding are a ``TypeError`` that names the layers
    taking integer inputs.
    """
    embeddings = {name: m for name, m in net.module_.named_modules()
                  if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))}
    if not embeddings:
        return
    found: list = []
    floats: list = []

    def hook(module, args, name):
        ids = args[0] if args else None
        if isinstance(ids, torch.Tensor) and ids.is_floating_point():
            floats.append((name, ids.dtype))  # torch would raise its own RuntimeError
            raise _TokenRangeError
        if isinstance(ids, torch.Tensor) and ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= module.num_embeddings:
                found.append((name, module.num_embeddings, lo if lo < 0 else hi))
                raise _TokenRangeError

    handles = [m.register_forward_pre_hook(
        lambda mod, args, name=name: hook(mod, args, name)) for name, m in embeddings.items()]
    try:
        with net_modes(net), torch.no_grad():
            for start in range(0, rows_of.n_rows(X), batch_size):
                try:
                    net.infer(rows_of.take(X, slice(start, start + batch_size)))
                except _TokenRangeError:
                    break
                except (RuntimeError, TypeError, ValueError, IndexError):
                    return  # another failure: reported by the checks that run the net
    finally:
        for h in handles:
            h.remove()
    if floats:
        names = sorted({name for name, _ in floats})
        raise TypeError(
            f"The net's embedding layer(s) {names} take integer token ids, but X reaches them "
            f"as floating-point values ({floats[0][1]}). Pass X as integers (e.g. "
            "X.astype('int64')): integer inputs are kept integer for the net."
        )
    if found:
        name, size, bad = found[0]
        raise ValueError(
            f"X holds token id {bad}, out of the range of embedding {name!r}: it has "
            f"{size} rows, so ids must be in 0..{size - 1} (the largest valid id is "
            f"{size - 1}). Encode X with the vocabulary the net was trained with."
        )


@dataclass(frozen=True)
class NetProbe:
    """What the input handling may ask of a fitted net, picklable.

    :class:`~sk_fastif._inputs.InputTransformer` and :func:`~sk_fastif._inputs.bare_net_input`
    take it as their ``probe``: the input room cannot run the net itself.

    Parameters
    ----------
    net : skorch.NeuralNet
        The fitted net (pickled with the transformer that holds the probe).
    """

    net: object

    def runs_on(self, X) -> bool:
        """Whether the net's module runs on the inputs ``X`` (a few rows), in eval mode."""
        return runs_on(self.net, X)

    def check_token_ids(self, X) -> None:
        """Token ids out of an embedding's range are a clear error, see :func:`check_token_ids`."""
        check_token_ids(self.net, X)


def _bare_net_target(net, y, dtype: torch.dtype | None):
    """``y`` for training a clone of a bare net: class indices as int64, floats in ``dtype``."""
    y = rows_of.numeric_target(y)
    if (_is_classifier(net) and y.dtype.kind == "f" and np.all(np.isfinite(y))
            and np.all(y == np.round(y))):
        return y.astype(np.int64)
    if dtype is not None and y.dtype.kind == "f":
        return y.astype(rows_of.numpy_dtype(dtype), copy=False)
    return y


def fit_clone(estimator, X, y, seed: int | None):
    """Train a clone of the unfitted ``estimator`` on ``(X, y)``; return the fitted clone.

    With an integer ``seed``, torch's random number generator is seeded for this training only
    (initialisation, shuffling, dropout), within :func:`torch.random.fork_rng`.
    """
    if isinstance(estimator, FrozenEstimator):
        raise NotFittedError(
            "The FrozenEstimator wraps an unfitted net: fit the net before freezing it."
        )
    fitted = clone(estimator)
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(torch.random.fork_rng())
            torch.manual_seed(int(seed))
        if isinstance(fitted, NeuralNet):
            # initialize + partial_fit is skorch's fit; initializing first gives the dtype
            fitted.initialize()
            dtype = param_dtype(fitted)
            fitted.partial_fit(rows_of.bare_net_input(X, dtype, NetProbe(fitted)),
                               None if y is None else _bare_net_target(fitted, y, dtype))
        else:
            fitted.fit(X, y)
    return fitted


def _n_outputs(net, Xt) -> int:
    with net_modes(net), torch.no_grad():
        out = net.infer(rows_of.first(Xt))
    if isinstance(out, tuple):
        out = out[0]
    return 1 if out.dim() == 1 else int(out.shape[1])


@dataclass
class Task:
    """What kind of prediction the net makes, and how its targets are encoded.

    Parameters
    ----------
    kind : {"classifier", "binary", "regressor"}
        ``"classifier"``: class indices (CrossEntropyLoss / NLLLoss, or a
        ``NeuralNetClassifier``); ``"binary"``: a ``NeuralNetBinaryClassifier`` (0/1 labels);
        ``"regressor"``: anything else (floating targets).
    n_outputs : int
        Width of the net's output (number of classes for a classifier).
    dtype : torch.dtype
        Dtype of the net's parameters (floating targets take it).
    device : torch.device
        Device the encoded targets go to.
    threshold : float
        A binary classifier's decision threshold.
    train_labels : ndarray or None
        The class labels the net was trained on (classifiers): explaining another is refused.
    """

    kind: str
    n_outputs: int
    dtype: torch.dtype
    device: torch.device
    threshold: float = 0.5
    train_labels: np.ndarray | None = None

    @classmethod
    def from_net(cls, net, Xt: torch.Tensor) -> Task:
        """The task of a fitted net, probed with one row of its input ``Xt``."""
        if _is_classifier(net):
            kind = "classifier"
        elif isinstance(net, NeuralNetBinaryClassifier):
            kind = "binary"
        else:
            kind = "regressor"
        return cls(kind=kind, n_outputs=_n_outputs(net, Xt), dtype=param_dtype(net) or
                   torch.float32, device=param_device(net),
                   threshold=float(getattr(net, "threshold", 0.5)))

    def with_train_labels(self, net, y: torch.Tensor) -> Task:
        """Record the training labels of a classifier (from the encoded training ``y``)."""
        if self.kind == "classifier":
            self.train_labels = train_labels(net, y.cpu().numpy())
        return self

    def encode(self, y, n_rows: int) -> torch.Tensor:
        """Check ``y`` against the task and return it as the tensor the net's loss takes."""
        y = rows_of.check_y_basic(y)
        if y.shape[0] != n_rows:
            raise ValueError(f"y has {y.shape[0]} rows but X has {n_rows}.")
        if self.kind == "classifier":
            if y.ndim != 1:
                raise ValueError(f"y must be 1-D class indices for a classifier; got {y.shape}.")
            if y.dtype.kind == "f" and not np.all(y == np.round(y)):
                raise ValueError("y must hold integer class indices for a classifier.")
            if y.size and (y.min() < 0 or y.max() >= self.n_outputs):
                raise ValueError(
                    f"y holds labels outside 0..{self.n_outputs - 1}, the classes the net "
                    f"outputs: {sorted(set(np.unique(y).tolist()) - set(range(self.n_outputs)))}."
                )
            rows_of.check_labels_seen(y, self.train_labels)
            return torch.as_tensor(y.astype(np.int64), device=self.device)
        if self.kind == "binary":
            if not np.all(np.isin(y, (0, 1))):
                raise ValueError("y must hold 0/1 labels for a NeuralNetBinaryClassifier.")
            return torch.as_tensor(y.reshape(-1), dtype=self.dtype, device=self.device)
        if y.ndim == 1 and self.n_outputs == 1:
            y = y.reshape(-1, 1)
        if y.ndim == 2 and y.shape[1] != self.n_outputs:
            raise ValueError(f"y has {y.shape[1]} columns but the net outputs {self.n_outputs}.")
        return torch.as_tensor(y, dtype=self.dtype, device=self.device)

    def predicted_labels(self, proba: torch.Tensor) -> torch.Tensor:
        """The labels a classifier predicts from its probabilities (``y=None`` explains them)."""
        if self.kind == "regressor":
            raise ValueError(
                "y=None (explain the prediction) is only defined for classifiers: for a regressor "
                "the loss at its own prediction is zero. Pass the targets y."
            )
        if self.kind == "binary":
            p1 = proba[:, 1] if proba.dim() == 2 else proba
            return (p1 > self.threshold).to(self.dtype)
        return proba.argmax(dim=1)


def train_labels(net, y: np.ndarray) -> np.ndarray:
    """The class labels the net was trained on: its ``classes_inferred_`` when it is a subset of
    the output indices, else the labels of the training ``y`` passed to ``fit``."""
    labels = np.unique(y)
    inferred = getattr(net, "classes_inferred_", None)
    if inferred is not None:
        inferred = np.asarray(inferred)
        if inferred.dtype.kind in "iu" and set(labels.tolist()) <= set(inferred.tolist()):
            return inferred
    return labels


def predict_proba_tensor(net, Xt, batch_size: int) -> torch.Tensor:
    """The net's probabilities (its own predict nonlinearity) for ``Xt``, in eval mode."""
    with eval_mode(net.module_), torch.no_grad():
        out = torch.cat([net.infer(rows_of.take(Xt, slice(s, s + batch_size)))
                         for s in range(0, rows_of.n_rows(Xt), batch_size)])
        return net._get_predict_nonlinearity()(out)


def check_net_accepts(net, Xt, *, after_preprocessing: bool) -> None:
    """Run the net on one sample to turn a shape mismatch into a clear error at ``fit``."""
    try:
        with net_modes(net), torch.no_grad():
            out = net.infer(rows_of.first(Xt))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        what = "X (after the pipeline's preprocessing)" if after_preprocessing else "X"
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ValueError(
            f"The net cannot be applied to {what} of shape {rows_of.describe(Xt)}: {first}. "
            f"Pass the training data the net learned from (same number of features)."
        ) from exc
    if isinstance(out, dict):  # e.g. a Hugging Face ModelOutput
        raise TypeError(output_type_message(out))


def check_train_split(net) -> None:
    """Warn when ``net`` trained with a validation split (its history has validation batches).

    Influence is defined for the rows the net trained on: with skorch's default
    ``train_split=ValidSplit(5)`` the net learned from 80% of ``X``, and the other rows would be
    scored as if it had learned from them.
    """
    if getattr(net, "train_split", None) is None:
        return
    history = getattr(net, "history", None) or []
    if not any("valid_loss" in epoch or epoch.get("valid_batch_count")
               for epoch in history):
        return
    warnings.warn(
        f"The net was trained with train_split={net.train_split!r}: it learned from only part "
        f"of the X it was fitted on (its history has validation batches), yet every row of the "
        f"X given to fit is treated as a training point. Influence is defined for the rows the "
        f"net trained on: train the net with train_split=None on exactly the rows to explain, "
        f"or pass fit only the rows of its training split.",
        TrainSplitWarning, stacklevel=3)


def fit_inputs(preprocessor, net, X, y):
    """The training inputs of an explainer: transformer, inputs, targets and task.

    Returns ``(transformer, Xt, yt, task, y)``: the fitted
    :class:`~sk_fastif._inputs.InputTransformer`, the net's input, the encoded targets, the
    net's :class:`Task` (with the training
    labels recorded) and the raw targets as an ndarray (a Dataset's own when ``y`` is None).
    """
    transformer = rows_of.InputTransformer(preprocessor, param_dtype(net) or torch.float32,
                                           NetProbe(net))
    Xt, y_items = transformer.fit_transform(X)
    y = rows_of.dataset_targets(y, y_items)
    check_net_accepts(net, Xt, after_preprocessing=preprocessor is not None)
    task = Task.from_net(net, Xt)
    yt = task.encode(y, rows_of.n_rows(Xt))
    return transformer, Xt, yt, task.with_train_labels(net, yt), np.asarray(y)


# ------------------------------------------------------------------------- the loss bridge
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


# batch_size="auto": rows per chunk of per-sample work, and (row, vector) pairs per chunk of a
# block of curvature products (2**15: 655 rows for 50 vectors). Measured on a 30-48-5 tanh MLP
# over 2,000 rows (benchmarks/speed.py's 2k workload): a one-shot call's peak memory grew by
# 312 MiB at 2**17, 77 MiB at 2**15 and 56 MiB at 2**13, for 0.45, 0.48 and 0.69 s (busy machine).
AUTO_BATCH_SIZE = 128
AUTO_ROW_VECTORS = 2**15


class NetBridge:
    """The loss of a fitted skorch net as a function of a flat parameter vector ``theta``.

    Every loss goes through the net's own ``infer`` and ``get_loss`` (``training=False``) with the
    module in eval mode. The selected parameters are snapshotted into ``theta`` and the others
    (and the buffers) into ``fixed``, so the net is never modified. The per-sample pieces
    (:meth:`output`, :meth:`loss_of_output`, :meth:`sample_loss`, :meth:`mean_loss`) are what
    :mod:`sk_fastif._gradients` differentiates once and :mod:`sk_fastif._curvature` twice.

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
        False once forward mode failed on the module (in
        :func:`sk_fastif._gradients.iter_products`): scores from gradient blocks from then on.
    batch_loss_is_mean : bool
        Whether the net's batch loss equals the mean of its per-sample losses (checked on the
        training data by :meth:`check_batch_loss_is_mean`); curvature products then use it.

    Examples
    --------
    >>> import torch
    >>> from skorch import NeuralNetRegressor
    >>> from sk_fastif._net import NetBridge
    >>> net = NeuralNetRegressor(torch.nn.Linear, module__in_features=3,
    ...                          module__out_features=1).initialize()
    >>> bridge = NetBridge(net, params=["weight"])
    >>> bridge.selected, bridge.n_params
    (['weight'], 3)
    >>> bridge.losses(torch.zeros(4, 3), torch.zeros(4, 1)).shape
    torch.Size([4])
    """

    def __init__(self, net, params=None, batch_size="auto") -> None:
        self.net = net
        self.auto_chunks = batch_size == "auto"
        self.batch_size = AUTO_BATCH_SIZE if self.auto_chunks else int(batch_size)
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
        # older pickles lack these
        self.__dict__.update({"use_forward_scoring": True, "auto_chunks": False, **state})
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
        return self.batch_output(theta, rows_of.unsqueeze(x))

    def batch_output(self, theta: torch.Tensor, X) -> torch.Tensor:
        """Net output (``net.infer``) for a batch ``X``, with the selected parameters ``theta``."""
        return functional_call(self._wrapper, self._as_dict(theta), (X,))

    def loss_of_output(self, out: torch.Tensor, x, y: torch.Tensor) -> torch.Tensor:
        """The net's loss of the output ``out`` of one sample ``x`` with target ``y``."""
        loss = self.net.get_loss(out, y.unsqueeze(0), X=rows_of.unsqueeze(x), training=False)
        return loss.reshape(())

    def sample_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The net's loss of one sample ``(x, y)`` (no batch dimension) at ``theta``."""
        return self.loss_of_output(self.output(theta, x), x, y)

    def batch_loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The net's own loss on a whole batch (equal to the mean loss when reduction is mean)."""
        out = self.batch_output(theta, X)
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
            return  # check_finite_training_loss names the rows
        self.batch_loss_is_mean = bool(
            torch.allclose(whole, per_sample, rtol=1e-5, atol=1e-7 * float(per_sample.abs()))
        )

    def mean_loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean per-sample loss over the batch ``(X, y)`` at ``theta``."""
        if getattr(self, "batch_loss_is_mean", False):
            return self.batch_loss(theta, X, y)
        if self.use_vmap:
            try:
                return vmap(self.sample_loss, in_dims=(None, 0, 0))(theta, X, y).mean()
            except VMAP_ERRORS as exc:
                self.disable_vmap(exc)
        return torch.stack([self.sample_loss(theta, xi, yi)
                            for xi, yi in zip(rows_of.samples(X), y)]).mean()

    def per_sample(self, fn, X, y: torch.Tensor) -> torch.Tensor:
        """``fn(theta, x_i, y_i)`` for every sample of the batch, stacked (vmapped if it can)."""
        if self.use_vmap:
            try:
                return vmap(fn, in_dims=(None, 0, 0))(self.theta, X, y)
            except VMAP_ERRORS as exc:
                self.disable_vmap(exc)
        return torch.stack([fn(self.theta, xi, yi) for xi, yi in zip(rows_of.samples(X), y)])

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

    def disable_forward_scoring(self) -> None:
        """Forward mode failed on the module: score from gradient blocks for good (silently)."""
        self.use_forward_scoring = False

    def chunks(self, n: int, width: int | None = None) -> Iterator[slice]:
        """Slices of ``range(n)`` of ``batch_size`` rows.

        ``width``: the number of vectors each row is pushed through together (a block of
        curvature products); with ``batch_size="auto"`` a chunk then holds
        ``max(batch_size, AUTO_ROW_VECTORS // width)`` rows.
        """
        size = self.batch_size
        if self.auto_chunks and width is not None:
            size = max(size, AUTO_ROW_VECTORS // max(1, int(width)))
        return rows_of.chunks(n, size)

    def pass_chunks(self, n: int) -> Iterator[slice]:
        """Slices of ``range(n)`` for one forward (and backward) pass with no per-sample work:
        ``batch_size`` rows, or ``AUTO_ROW_VECTORS // 32`` with ``batch_size="auto"``."""
        return self.chunks(n, width=32)

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

    def losses(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses, shape (n,)."""
        out = []
        with self.modes(), torch.no_grad():
            for sl in self.chunks(len(y)):
                out.append(self.per_sample(self.sample_loss, *self.on_device(X, y, sl)))
        return torch.cat(out) if out else torch.zeros(0, dtype=self.dtype)

    # ----------------------------------------------------------------------------- devices
    def to(self, device: str | torch.device) -> NetBridge:
        """A copy of this bridge on ``device``, over a deep copy of the net moved there.

        The user's net is never moved: the copy owns its own net. The parameter snapshot, the
        selection and the flags found on the way (``use_vmap``, ``use_forward_scoring``,
        ``batch_loss_is_mean``) are kept, so the copy computes the same functions.
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
