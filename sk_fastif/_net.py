"""The skorch adapter: what the rest of the package needs to know about the user's estimator.

Splitting a ``Pipeline`` / ``FrozenEstimator`` into its preprocessing and its skorch net, whether
it is fitted, training a clone of an unfitted one, eval mode, the net's dtype and device, and the
task kind (classifier, binary classifier or regressor) as one small :class:`Task` object, so that
no other module branches on skorch's classes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier

from . import _batch as rows_of
from . import _validation as val
from ._sklearn_compat import FrozenEstimator

__all__ = [
    "Task",
    "check_net_accepts",
    "eval_mode",
    "fit_clone",
    "is_fitted",
    "is_prefit",
    "net_modes",
    "numeric_target",
    "param_dtype",
    "split_estimator",
]

_CLASSIFICATION_LOSSES = (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)


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


def numeric_target(y) -> np.ndarray:
    """``y`` as an array: pandas converted, an object array made numeric if it can be."""
    y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") and hasattr(y, "index") else y)
    if y.dtype == object:
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                "Unknown label type: y must hold numbers (class indices for a classifier)."
            ) from None
    return y


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


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

    Runs the net on ``X`` (a tensor, a dict or :class:`~sk_fastif._batch.DatasetRows`) with a
    check on the input of every ``nn.Embedding`` / ``nn.EmbeddingBag``; only when ``X`` holds
    integer values and the module has an embedding.
    """
    embeddings = {name: m for name, m in net.module_.named_modules()
                  if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))}
    if not embeddings:
        return
    probe = rows_of.first(X)
    if not any(not t.is_floating_point() and t.dtype != torch.bool
               for t in rows_of.leaves(probe)):
        return
    found: list = []

    def hook(module, args, name):
        ids = args[0] if args else None
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
    if found:
        name, size, bad = found[0]
        raise ValueError(
            f"X holds token id {bad}, out of the range of embedding {name!r}: it has "
            f"{size} rows, so ids must be in 0..{size - 1} (the largest valid id is "
            f"{size - 1}). Encode X with the vocabulary the net was trained with."
        )


def bare_net_input(X, dtype: torch.dtype | None, net=None):
    """``X`` as handed to a bare skorch net: a validated array in ``dtype``.

    Integer values stay integer when ``net`` runs on them (token ids); a dict keeps its keys
    (each value converted alike); a Dataset is passed as it is.

    The influence computations feed the net ``X`` as a tensor in its parameters' dtype; the
    same conversion for ``fit``/``predict`` keeps both views of ``X`` identical (skorch itself
    would pass a DataFrame's columns as keyword arguments and does not cast), and invalid input
    (NaN, sparse, complex, 1-D, empty) is refused before the net is trained.
    """
    if isinstance(X, torch.utils.data.Dataset):
        return X
    if val.is_dict_input(X):
        val.check_dict_input(X)
        X = {k: val.check_net_array(v, name=f"X[{k!r}]", ensure_2d=False)
             for k, v in X.items()}
    else:
        X = val.check_net_array(X)
    if dtype is None:
        return X
    target = _numpy_dtype(dtype)

    def cast(X, ints: bool):
        if isinstance(X, dict):
            return {k: cast(v, ints) for k, v in X.items()}
        return X.astype(target) if X.dtype.kind == "f" or ints else X

    kept = cast(X, ints=False)  # floating values in the net's dtype, integers as they are
    has_ints = any(v.dtype.kind in "biu" for v in (kept.values() if isinstance(kept, dict)
                                                   else [kept]))
    if not has_ints or (net is not None and runs_on(net, rows_of.first(
            rows_of.from_numpy(kept)))):
        return kept
    return cast(X, ints=True)  # the net cannot take its integers: its floating dtype


def _bare_net_target(net, y, dtype: torch.dtype | None):
    """``y`` for training a clone of a bare net: class indices as int64, floats in ``dtype``."""
    y = numeric_target(y)
    if (_is_classifier(net) and y.dtype.kind == "f" and np.all(np.isfinite(y))
            and np.all(y == np.round(y))):
        return y.astype(np.int64)
    if dtype is not None and y.dtype.kind == "f":
        return y.astype(_numpy_dtype(dtype), copy=False)
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
            fitted.partial_fit(bare_net_input(X, dtype, fitted),
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
            self.train_labels = val.train_labels(net, y.cpu().numpy())
        return self

    def encode(self, y, n_rows: int) -> torch.Tensor:
        """Check ``y`` against the task and return it as the tensor the net's loss takes."""
        y = val.check_y_basic(y)
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
            val.check_labels_seen(y, self.train_labels)
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


class TrainSplitWarning(UserWarning):
    """Warned by :meth:`InfluenceExplainer.fit` when the net held out part of its training data.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceExplainer, TrainSplitWarning
    >>> X = np.random.RandomState(0).randn(50, 3).astype("float32")
    >>> y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(3, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=1, verbose=0).fit(X, y)  # skorch's ValidSplit(5)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = InfluenceExplainer(net).fit(X, y)
    >>> any(w.category is TrainSplitWarning for w in caught)
    True
    """


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
