"""Stateless checks of arguments and arrays, shared by the modules of the package.

Every check raises ``ValueError`` or ``TypeError`` with a message that names the argument and
says what was expected, before any array reaches torch, so that bad input never surfaces as a
stack trace from deep inside a dependency or as a silent NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import torch
from scipy import sparse
from sklearn.utils import check_array
from sklearn.utils.validation import _num_samples


def check_constructor_args(explainer) -> None:
    """Checks of constructor arguments that ``_parameter_constraints`` cannot express."""
    if isinstance(explainer.batch_size, bool):
        raise TypeError(f"batch_size must be a positive integer; got {explainer.batch_size!r}.")
    params = explainer.params
    if params is not None and not isinstance(params, str):
        bad = [p for p in params if not isinstance(p, str)]
        if bad:
            raise TypeError(
                f"params must be None, a string or a list of strings naming modules or "
                f"parameters; got non-string entries {bad!r}."
            )


def shape_of(X, *, strict: bool = True, name: str = "X") -> tuple:
    """Shape of an array-like without converting it.

    A ragged nested list raises ValueError when ``strict``, else gives ``()`` (raw input of a
    pipeline may legitimately be ragged, e.g. token lists).
    """
    shape = getattr(X, "shape", None)
    if shape is None:
        try:
            shape = np.shape(X)
        except (ValueError, TypeError):
            if not strict:
                return ()
            raise ValueError(
                f"{name} is ragged: every sample must have the same shape. Sequences (token "
                f"ids) must be padded to one length, with an attention mask as another input "
                f"(a dict), e.g. a tokenizer's padding=True."
            ) from None
    return tuple(int(s) for s in shape)


def check_fit_data(X, y, *, has_preprocessor: bool) -> None:
    """Cheap checks of the training data, before a clone is fitted or any gradient is taken."""
    if X is None:
        raise ValueError("X is required: pass the training inputs the net learned from.")
    if isinstance(X, torch.utils.data.Dataset) and hasattr(X, "__len__"):
        if y is not None:
            check_y_basic(y, name="y")
            if len(X) != n_samples(y, "y"):
                raise ValueError(f"X and y have inconsistent numbers of samples: X has "
                                 f"{len(X)}, y has {n_samples(y, 'y')}.")
        if len(X) == 0:
            raise ValueError("X is empty: fit needs at least one training sample.")
        return
    if y is None:
        raise ValueError(  # scikit-learn's wording for estimators that require y
            "InfluenceExplainer requires y to be passed, but the target y is None: influence "
            "needs the training labels."
        )
    check_y_basic(y, name="y")
    n_x, n_y = n_samples(X, "X"), n_samples(y, "y")
    if n_x != n_y:
        raise ValueError(f"X and y have inconsistent numbers of samples: X has {n_x}, y has {n_y}.")
    if n_x == 0:
        raise ValueError("X is empty: fit needs at least one training sample.")
    if not has_preprocessor and not is_dict_input(X):
        check_input_shape(shape_of(X), None)


def is_dict_input(X) -> bool:
    """Whether ``X`` is a dict input (skorch's keyword arguments), not a sparse DOK matrix."""
    return isinstance(X, Mapping) and not sparse.issparse(X)


def n_samples(a, name: str) -> int:
    if is_dict_input(a):
        check_dict_input(a, name=name)
        return n_samples(next(iter(a.values())), f"{name}[{next(iter(a))!r}]")
    if isinstance(a, torch.utils.data.Dataset) and hasattr(a, "__len__"):
        return len(a)
    if isinstance(a, torch.Tensor):
        if a.dim() == 0:
            raise ValueError(f"{name} must be array-like with one row per sample; got a scalar.")
        return int(a.shape[0])
    try:
        return int(_num_samples(a))
    except TypeError as exc:
        raise ValueError(
            f"{name} must be array-like with one row per sample; got {type(a).__name__} "
            f"({exc})."
        ) from None


def check_dict_input(X: Mapping, *, name: str = "X") -> None:
    """A dict input: string keys, and one row per sample in every value (the same count)."""
    if not X:
        raise ValueError(f"{name} is an empty dict: it must map input names to arrays.")
    bad = [k for k in X if not isinstance(k, str)]
    if bad:
        raise TypeError(f"{name}'s keys must be strings (the module's argument names); got "
                        f"{bad!r}.")
    lengths = {}
    for k, v in X.items():
        if isinstance(v, Mapping):
            raise TypeError(f"{name}[{k!r}] is a dict: nested dicts are not supported.")
        shape = shape_of(v, name=f"{name}[{k!r}]")
        if not shape:
            raise ValueError(f"{name}[{k!r}] must have one row per sample; got a scalar.")
        lengths[k] = shape[0]
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"The values of {name} disagree in length (one row per sample in each): "
            + ", ".join(f"{k!r} has {n}" for k, n in lengths.items()) + "."
        )


def dataset_targets(y, y_items):
    """``y``, else the targets a Dataset's items carry; an error when neither is there."""
    if y is not None:
        return y
    if y_items is None:
        raise ValueError(
            "y is None and the Dataset's items carry no target (they are not (x, y) pairs, or "
            "a skorch Dataset built with y=None): pass y, the training labels."
        )
    return y_items


def check_y_basic(y, *, name: str = "y") -> np.ndarray:
    """Return ``y`` as an ndarray after checking it is non-scalar, numeric and finite."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    try:
        y = np.asarray(y)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be an array-like of targets; {exc}") from None
    if y.ndim == 0:
        raise ValueError(
            f"{name} must be array-like of shape (n_samples,) or (n_samples, n_outputs); got a "
            f"scalar {y!r}. Wrap a single target in a list."
        )
    if y.dtype.kind == "c":  # scikit-learn's wording
        raise ValueError(f"Complex data not supported: {name} has dtype {y.dtype}.")
    if y.dtype.kind == "O" and all(isinstance(v, Real) for v in y.ravel()):
        y = y.astype(np.float64)  # e.g. a pandas object column of numbers
    if y.dtype.kind not in "biuf":
        hint = (
            " Encode class labels as the integer indices the net outputs (e.g. with "
            "sklearn.preprocessing.LabelEncoder)."
            if y.dtype.kind in "USO"
            else ""
        )
        raise TypeError(  # "Unknown label type" is scikit-learn's wording
            f"Unknown label type: {name} must be numeric; got dtype {y.dtype}.{hint}"
        )
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or infinity.")
    return y


def check_input_shape(shape: tuple, expected: tuple | None, *,
                      after_preprocessing: bool = False) -> None:
    """Check the shape of the net's input: at least 2-D, non-empty, the fitted feature shape."""
    what = "X (after the pipeline's preprocessing)" if after_preprocessing else "X"
    if len(shape) < 2:
        got = "a scalar" if not shape else f"a 1-D array of shape {shape}"
        raise ValueError(
            f"{what} must be 2-D, shape (n_samples, n_features); got {got}. Reshape your data: "
            f"X.reshape(1, -1) for a single sample, X.reshape(-1, 1) for a single feature."
        )
    if shape[0] == 0:
        raise ValueError(f"{what} is empty: at least one sample is required.")
    if expected is not None and tuple(shape[1:]) != tuple(expected):
        if len(shape) == 2 and len(expected) == 1:  # scikit-learn's wording
            raise ValueError(
                f"{what} has {shape[1]} features, but InfluenceExplainer is expecting "
                f"{expected[0]} features as input."
            )
        raise ValueError(
            f"{what} has samples of shape {tuple(shape[1:])}, but the explainer was fitted "
            f"with samples of shape {tuple(expected)}."
        )


def check_input_tensor(Xt: torch.Tensor, *, after_preprocessing: bool, name: str = "X") -> None:
    """The net's input after conversion to its dtype must still be finite (no overflow).

    The input was checked finite before the cast, so only an overflow to +-inf is possible:
    the extremes tell, without the temporaries of an element-wise ``isfinite`` (which would
    double the memory held for the training data in ``fit``).
    """
    if Xt.numel() == 0 or not Xt.dtype.is_floating_point:
        return
    if not (bool(torch.isfinite(Xt.amax())) and bool(torch.isfinite(Xt.amin()))):
        what = f"{name} (after the pipeline's preprocessing)" if after_preprocessing else name
        limit = float(torch.finfo(Xt.dtype).max) if Xt.dtype.is_floating_point else None
        raise ValueError(
            f"{what} has values too large for the net's dtype {Xt.dtype} "
            f"(largest finite value {limit:.3g}): they overflow to infinity. Rescale X."
        )


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


def check_labels_seen(y: np.ndarray, seen: np.ndarray | None) -> None:
    """Explaining a label the net never saw in training is not meaningful: say so."""
    if seen is None or y.size == 0:
        return
    unseen = sorted(set(np.unique(y).tolist()) - set(np.asarray(seen).tolist()))
    if unseen:
        raise ValueError(
            f"y holds labels the net was never trained on: {unseen[:10]}; the training labels "
            f"are {np.asarray(seen).tolist()[:20]}."
        )


def check_finite_gradients(
    G: torch.Tensor, *, what: str, offset: int = 0, rows: np.ndarray | None = None
) -> None:
    """Raise when per-sample loss gradients are NaN or infinite (never score with them).

    Row ``i`` of ``G`` is reported as index ``rows[i]`` when given, else ``offset + i``.
    """
    bad = ~torch.isfinite(G).all(dim=1)
    if bool(bad.any()):
        local = torch.nonzero(bad).flatten().cpu().numpy()
        rows = (local + offset if rows is None else np.asarray(rows)[local]).tolist()
        raise ValueError(
            f"The loss gradient of {len(rows)} {what}(s) (indices {rows[:10]}"
            f"{'...' if len(rows) > 10 else ''}) is not finite (NaN or inf): the net's loss "
            f"overflows there. Check X and y for extreme values, or use a float64 net."
        )


def check_finite_products(P: torch.Tensor, gradients, *, what: str, offset: int = 0,
                          rows: np.ndarray | None = None) -> None:
    """Raise when scoring products ``S @ G.T`` of a chunk are not finite because of ``G``.

    ``gradients()`` computes the chunk's per-sample gradients, only when ``P`` is not finite
    (forward-mode scoring forms no gradients): :func:`check_finite_gradients` then names the
    rows whose gradient is not finite.
    """
    if not bool(torch.isfinite(P).all()):
        check_finite_gradients(gradients(), what=what, offset=offset, rows=rows)


def check_finite_training_loss(bridge, Xt: torch.Tensor, yt: torch.Tensor) -> None:
    """One forward pass over the training set at ``fit``: every per-sample loss must be finite."""
    losses = bridge.losses(Xt, yt)
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise ValueError(
            f"The net's loss is not finite on {len(rows)} training sample(s) (indices "
            f"{rows[:10]}{'...' if len(rows) > 10 else ''}). Check X and y for extreme values; "
            f"for a classifier with NLLLoss, the module must output probabilities (or use "
            f"criterion=torch.nn.CrossEntropyLoss on logits)."
        )


def warn_zero_gradients(G: torch.Tensor, consequence: str, *, stacklevel: int = 3) -> None:
    """Warn about points whose loss gradient is exactly zero (they get exact zeros, never 0/0)."""
    zero = torch.nonzero(G.abs().amax(dim=1) == 0).flatten().tolist()
    if zero:
        warnings.warn(
            f"{len(zero)} point(s) have a loss gradient that is exactly zero (indices "
            f"{zero[:10]}{'...' if len(zero) > 10 else ''}); {consequence}.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def check_net_array(X, *, name: str = "X", ensure_2d: bool = True) -> np.ndarray:
    """A numeric, finite, dense array (any rank >= 2 is left to the shape checks), writable."""
    try:
        X = check_array(X, accept_sparse=False, dtype="numeric", ensure_all_finite=True,
                        allow_nd=True, ensure_2d=ensure_2d, input_name=name)
    except ValueError as exc:  # name the argument in scikit-learn's messages that do not
        if name in str(exc):
            raise
        raise ValueError(f"Invalid {name}: {exc}") from exc
    if not X.flags.writeable:  # e.g. a pandas copy-on-write view: torch wants writable arrays
        X = X.copy()
    return X


def check_query(query: str) -> None:
    """``query`` of :meth:`influences` / :meth:`explain`."""
    if query not in ("each", "mean"):
        raise ValueError(f"query must be 'each' or 'mean'; got {query!r}.")


def check_kind(kind: str) -> None:
    """Which top list: helpful (highest scores), harmful (lowest) or abs (largest magnitude)."""
    if kind not in ("helpful", "harmful", "abs"):
        raise ValueError(f"kind must be 'helpful', 'harmful' or 'abs'; got {kind!r}.")


def check_k(k, n_pool: int, *, pruned: bool) -> int:
    """``k`` of :meth:`explain`: an integer in ``[1, n_pool]`` (the candidates, when pruned)."""
    if not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= n_pool:
        if pruned and isinstance(k, Integral) and k > n_pool:
            raise ValueError(
                f"k={k} exceeds the {n_pool} candidates scored per test point: lower k or "
                "raise the selector's n_neighbors."
            )
        bound = "n_neighbors" if pruned else "n_train_"
        raise ValueError(f"k must be an integer in [1, {bound}={n_pool}]; got {k!r}.")
    return int(k)


def check_audit_args(top, max_samples, n_neighbors: int) -> list[int]:
    """``top`` and ``max_samples`` of :meth:`audit_candidates`; return ``top`` as a list."""
    tops = [top] if isinstance(top, Integral) else list(top)
    if any(isinstance(m, bool) or not isinstance(m, Integral) or m > n_neighbors for m in tops):
        raise ValueError(
            f"top must hold integers of at most n_neighbors={n_neighbors}: a shortlist of "
            f"{n_neighbors} cannot hold a longer top list; got {top!r}."
        )
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, Integral) or max_samples < 1
    ):
        raise ValueError(f"max_samples must be None or a positive integer; got {max_samples!r}.")
    return tops
