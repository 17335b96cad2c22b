"""All input handling: from the user's ``X`` and ``y`` to the rows the net takes, and back.

The bottom of the package: it imports no other room. The two questions only the net can
answer (does it run on these inputs? are these token ids in its embeddings' range?) come in as
a ``probe`` (:class:`sk_fastif._net.NetProbe`), passed by the net adapter.

* **Checks** that name the argument at fault (:func:`check_fit_data`, :func:`n_samples`,
  :func:`check_dict_input`, :func:`check_y_basic`, :func:`check_input_shape`, ...), run before
  any array reaches torch, so that bad input never surfaces as a stack trace from deep inside
  a dependency or as a silent NaN.
* **Rows** of the net's input, whatever its kind: a tensor, a dict of tensors, or a lazy
  Dataset. skorch hands its module either one tensor (``module(X)``) or, for a dict, its values
  as keyword arguments (``module(**X)``); every value has one row per sample. The influence
  computations take rows of the training inputs (chunks for gradients and curvature products,
  random rows for LiSSA, shortlists for candidates) without caring which kind they are: the
  functions here (:func:`n_rows`, :func:`take`, :func:`chunks`, :func:`samples`,
  :func:`to_device`, :func:`content_hash`, ...) do it for every kind, and
  :class:`DatasetRows` reads the rows of a ``torch.utils.data.Dataset`` only when they are
  asked for, so a training set that lives on disk (or is built item by item) is never held in
  memory, and data reaches the device one chunk at a time.
* **The fitted transform** :class:`InputTransformer`, fitted once in ``fit``: it records the
  pipeline's preprocessing (if any), the kind of input (one array, a dict of arrays, a
  Dataset), the shape of one sample of each value, whether integer values stay integer (token
  ids for ``nn.Embedding``) and the net's floating dtype. Every later call checks ``X`` against
  that and converts it the same way.

The kinds, as skorch takes them:

* an array of any rank (tabular ``(n, d)``, images ``(n, C, H, W)``, token ids ``(n, L)``), a
  tensor or a pandas DataFrame (its values, as one array);
* a dict of arrays or tensors, one row per sample in each value (skorch passes its values to
  the module as keyword arguments: ``{"input_ids": ..., "attention_mask": ...}``);
* a ``torch.utils.data.Dataset`` (a ``skorch.dataset.Dataset`` among them) whose items are
  ``(x, y)`` pairs or ``x`` alone. Training data given as a Dataset is read lazily by rows
  (:class:`DatasetRows`); test data is read at once.

Floating values take the net's dtype. Integer values keep theirs when the net runs on them
(an embedding), and take the net's floating dtype when it does not (a linear first layer fed
integer features), decided once at ``fit``. Nothing is moved to the net's device here: chunks
go there as they are used.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from numbers import Real

import numpy as np
import torch
from scipy import sparse
from sklearn.utils import check_array

from ._sklearn_compat import num_samples

__all__ = [
    "Convert", "DatasetRows", "InputTransformer", "as_user_input", "bare_net_input",
    "check_dict_input", "check_fit_data", "check_input_shape", "check_input_tensor",
    "check_labels_seen", "check_net_array", "check_y_basic", "chunks", "content_hash",
    "dataset_targets", "describe", "first", "from_numpy", "is_dataset", "is_dict_input", "leaves",
    "n_rows", "n_samples", "numeric_target", "numpy_dtype", "samples", "shape_of", "take",
    "to_device", "to_numpy", "unsqueeze",
]


# ----------------------------------------------------------------------------------- checks
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
        return int(num_samples(a))
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


# ------------------------------------------------------------------------------- conversion
def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype."""
    return torch.empty((), dtype=dtype).numpy().dtype


class Convert:
    """A chunk of inputs (arrays, tensors or a dict of them) as the net takes it (picklable)."""

    def __init__(self, dtype: torch.dtype, ints_as_float: bool) -> None:
        self.dtype = dtype
        self.ints_as_float = ints_as_float

    def leaf(self, a, name: str) -> torch.Tensor:
        if isinstance(a, torch.Tensor):
            t = a.detach()
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or infinity.")
            if t.is_complex():
                raise ValueError(f"Complex data not supported: {name} has dtype {t.dtype}.")
        else:
            t = torch.from_numpy(check_net_array(a, name=name, ensure_2d=False))
        if t.is_floating_point() or self.ints_as_float:
            t = t.to(self.dtype)
        check_input_tensor(t, after_preprocessing=False, name=name)
        return t

    def __call__(self, X, name: str = "X"):
        if isinstance(X, Mapping):
            return {k: self.leaf(v, f"{name}[{k!r}]") for k, v in X.items()}
        return self.leaf(X, name)


def bare_net_input(X, dtype: torch.dtype | None, probe=None):
    """``X`` as handed to a bare skorch net: a validated array in ``dtype``.

    Integer values stay integer when the net runs on them (``probe.runs_on``, see
    :class:`InputTransformer`; without a probe they take ``dtype``); a dict keeps its keys
    (each value converted alike); a Dataset is passed as it is.

    The influence computations feed the net ``X`` as a tensor in its parameters' dtype; the
    same conversion for ``fit``/``predict`` keeps both views of ``X`` identical (skorch itself
    would pass a DataFrame's columns as keyword arguments and does not cast), and invalid input
    (NaN, sparse, complex, 1-D, empty) is refused before the net is trained.
    """
    if isinstance(X, torch.utils.data.Dataset):
        return X
    if is_dict_input(X):
        check_dict_input(X)
        X = {k: check_net_array(v, name=f"X[{k!r}]", ensure_2d=False)
             for k, v in X.items()}
    else:
        X = check_net_array(X)
    if dtype is None:
        return X
    target = numpy_dtype(dtype)

    def cast(X, ints: bool):
        if isinstance(X, dict):
            return {k: cast(v, ints) for k, v in X.items()}
        return X.astype(target) if X.dtype.kind == "f" or ints else X

    kept = cast(X, ints=False)  # floating values in the net's dtype, integers as they are
    has_ints = any(v.dtype.kind in "biu" for v in (kept.values() if isinstance(kept, dict)
                                                   else [kept]))
    if not has_ints or (probe is not None and probe.runs_on(first(from_numpy(kept)))):
        return kept
    return cast(X, ints=True)  # the net cannot take its integers: its floating dtype


# ------------------------------------------------------------------------------------- rows
class DatasetRows:
    """The inputs of a ``torch.utils.data.Dataset``, read lazily by rows.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Items are ``(x, y)`` pairs (or ``x`` alone); ``x`` a tensor, an array or a dict of them.
    convert : callable
        Applied to each collated chunk of inputs (the net's dtype for floating values).
    has_targets : bool
        Whether the items are ``(x, y)`` pairs (else ``x`` alone, or a 1-tuple ``(x,)``).

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from sk_fastif._inputs import DatasetRows
    >>> ds = TensorDataset(torch.arange(12.0).reshape(6, 2), torch.arange(6))
    >>> rows = DatasetRows(ds, convert=lambda x: x, has_targets=True)
    >>> len(rows), rows.take([4, 1]).tolist()
    (6, [[8.0, 9.0], [2.0, 3.0]])
    """

    def __init__(self, dataset, convert: Callable, has_targets: bool) -> None:
        self.dataset = dataset
        self.convert = convert
        self.has_targets = has_targets

    def __len__(self) -> int:
        return len(self.dataset)

    def _inputs_of(self, i: int):
        item = self.dataset[int(i)]
        return item[0] if isinstance(item, (tuple, list)) else item

    def take(self, index):
        """The inputs of rows ``index`` (a slice or integer indices), collated and converted."""
        if isinstance(index, slice):
            index = range(*index.indices(len(self)))
        elif isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        items = [self._inputs_of(i) for i in np.asarray(index, dtype=np.int64).reshape(-1)]
        return self.convert(torch.utils.data.default_collate(items))

    def iter_chunks(self, size: int) -> Iterator[tuple[slice, object]]:
        """``(rows, inputs)`` of consecutive chunks of at most ``size`` rows."""
        for start in range(0, len(self), size):
            sl = slice(start, min(start + size, len(self)))
            yield sl, self.take(sl)


def n_rows(X) -> int:
    """Number of samples of a tensor, a dict of tensors or :class:`DatasetRows`."""
    if isinstance(X, Mapping):
        return n_rows(next(iter(X.values())))
    return len(X)


def take(X, index):
    """Rows ``index`` (a slice, an integer array or a long tensor) of the inputs ``X``."""
    if isinstance(X, DatasetRows):
        return X.take(index)
    if isinstance(X, Mapping):
        return {k: take(v, index) for k, v in X.items()}
    if isinstance(index, slice):
        return X[index]
    if isinstance(X, np.ndarray):
        return X[np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)]
    if not isinstance(index, torch.Tensor):
        index = torch.as_tensor(np.asarray(index, dtype=np.int64))
    return X[index.to(X.device)]


def first(X, n: int = 1):
    """The first ``n`` rows."""
    return take(X, slice(0, n))


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` rows."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def samples(X) -> Iterator:
    """The samples of a batch of inputs (a tensor or a dict of tensors), one at a time."""
    if isinstance(X, dict):
        for i in range(n_rows(X)):
            yield {k: v[i] for k, v in X.items()}
    else:
        yield from X


def to_device(X, device: torch.device):
    """The inputs on ``device`` (a :class:`DatasetRows` stays lazy: its chunks are moved)."""
    if isinstance(X, Mapping):
        return {k: to_device(v, device) for k, v in X.items()}
    if isinstance(X, torch.Tensor):
        return X.to(device)
    return X


def unsqueeze(x):
    """One sample (no batch dimension) as a batch of one."""
    if isinstance(x, Mapping):
        return {k: v.unsqueeze(0) for k, v in x.items()}
    return x.unsqueeze(0)


def leaves(X) -> list[torch.Tensor]:
    """The tensors of the inputs."""
    if isinstance(X, Mapping):
        return [t for v in X.values() for t in leaves(v)]
    return [X]


def describe(X) -> str:
    """The shapes and dtypes, for error messages."""
    if isinstance(X, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in X.items()) + "}"
    if isinstance(X, DatasetRows):
        return f"a Dataset of {len(X)} items"
    return f"{tuple(X.shape)} {str(X.dtype).replace('torch.', '')}"


def to_numpy(X):
    """CPU tensors as numpy arrays (joblib memory-maps large ones when sending to workers)."""
    if isinstance(X, Mapping):
        return {k: to_numpy(v) for k, v in X.items()}
    if isinstance(X, torch.Tensor) and X.device.type == "cpu":
        return X.numpy()
    return X


def from_numpy(X):
    """The inverse of :func:`to_numpy`."""
    if isinstance(X, Mapping):
        return {k: from_numpy(v) for k, v in X.items()}
    if isinstance(X, np.ndarray):
        return torch.from_numpy(X)
    return X


def as_user_input(X):
    """The inputs as ``fit`` takes them again: numpy arrays (a dict of them), or the Dataset."""
    if isinstance(X, DatasetRows):
        return X.dataset
    if isinstance(X, Mapping):
        return {k: as_user_input(v) for k, v in X.items()}
    return X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X


def content_hash(X, chunk: int = 4096) -> str:
    """A hash of the values and dtypes of the inputs, read chunk by chunk (any kind)."""
    h = hashlib.sha256()
    if isinstance(X, DatasetRows):
        for _, part in X.iter_chunks(chunk):
            h.update(content_hash(part).encode())
        return h.hexdigest()
    if isinstance(X, Mapping):
        for k in sorted(X):
            h.update(repr(k).encode())
            h.update(content_hash(X[k]).encode())
        return h.hexdigest()
    t = X.detach().cpu().contiguous()
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# -------------------------------------------------------------------------- fitted transform
def is_dataset(X) -> bool:
    """Whether ``X`` is a map-style ``torch.utils.data.Dataset``."""
    return isinstance(X, torch.utils.data.Dataset) and hasattr(X, "__len__")


def _skorch_targets(dataset):
    """``(has_targets, y)`` of a ``skorch.dataset.Dataset`` without reading its items."""
    try:
        from skorch.dataset import Dataset as SkorchDataset
    except ImportError:  # pragma: no cover - skorch is a dependency
        return None
    if type(dataset).__getitem__ is not SkorchDataset.__getitem__ or not isinstance(
            dataset, SkorchDataset):
        return None
    return dataset.y is not None, dataset.y


class InputTransformer:
    """The net's input for any ``X``: preprocessing, kind and shape checks, conversion.

    Parameters
    ----------
    preprocessor : transformer or None
        The fitted steps of a pipeline before its net (``pipeline[:-1]``), or None.
    dtype : torch.dtype
        The floating dtype of the net's parameters (floating values are converted to it).
    probe : object or None
        What the transformer may ask of the fitted net (:class:`sk_fastif._net.NetProbe`):
        ``probe.runs_on(X)``, whether the net runs on some inputs, decides whether integer
        inputs stay integer, and ``probe.check_token_ids(X)`` checks token ids against its
        embeddings' sizes. None: integers stay integer, unchecked.

    Attributes
    ----------
    input_shape : tuple of int, dict of tuple or None
        Shape of one sample (of each value, for a dict), recorded by :meth:`fit_transform`.
    """

    def __init__(self, preprocessor, dtype: torch.dtype, probe=None) -> None:
        self.preprocessor = preprocessor
        self.dtype = dtype
        self.probe = probe
        self.input_shape: tuple | dict | None = None
        self.convert = Convert(dtype, ints_as_float=False)

    @property
    def after_preprocessing(self) -> bool:
        """Whether the net's input is ``X`` after a pipeline's preprocessing."""
        return self.preprocessor is not None

    # ------------------------------------------------------------------------------ public
    def fit_transform(self, X):
        """Convert the training inputs, record their kind and shapes; ``(inputs, targets)``.

        ``targets`` are the Dataset's targets (None for other kinds, or a Dataset without).
        A Dataset's inputs come back as lazy :class:`DatasetRows`.
        """
        if is_dataset(X):
            self._refuse_preprocessed_dataset()
            rows, y = self._dataset_rows(X)
            self._fit_kind(rows.take(slice(0, 1)), shape_of_rows=False)
            rows.convert = self.convert
            self._check_shapes(rows.take(slice(0, 1)), reset=True)
            self._check_token_ids(rows)
            return rows, y
        Xt = self._raw(X, reset=True, check_features=None)
        self._fit_kind(Xt, shape_of_rows=True)
        Xt = self.convert(Xt)
        self._check_shapes(Xt, reset=True)
        self._check_token_ids(Xt)
        return Xt, None

    def transform(self, X, check_features: Callable[[object], None] | None = None):
        """Check and convert ``X`` as at ``fit``; ``(inputs, targets)`` (targets: a Dataset's).

        For a bare net the shape is checked first (a 1-D ``X`` gets "Reshape your data"), then
        the features (``check_features(X)``: names, count); for a pipeline the raw features
        first, then the shape after preprocessing.
        """
        y = None
        if is_dataset(X):
            self._refuse_preprocessed_dataset()
            rows, y = self._dataset_rows(X)
            if len(rows) == 0:
                raise ValueError("X is empty: at least one sample is required.")
            Xt = rows.take(slice(0, len(rows)))
        else:
            Xt = self._raw(X, reset=False, check_features=check_features)
            self._fit_kind(Xt, shape_of_rows=True, reset=False)
            Xt = self.convert(Xt)
        self._check_shapes(Xt, reset=False)
        self._check_token_ids(Xt)
        return Xt, y

    # ------------------------------------------------------------------------------ kinds
    def _refuse_preprocessed_dataset(self) -> None:
        if self.after_preprocessing:
            raise TypeError(
                "A Dataset goes to a bare skorch net: a pipeline's preprocessing cannot be "
                "applied to it. Pass arrays (or a dict of arrays) to a pipeline."
            )

    def _dataset_rows(self, dataset) -> tuple[DatasetRows, np.ndarray | None]:
        n = len(dataset)
        known = _skorch_targets(dataset)
        if n == 0:
            return DatasetRows(dataset, self.convert, has_targets=False), None
        if known is not None:
            has_targets, y = known
            rows = DatasetRows(dataset, self.convert, has_targets=True)
            if has_targets:
                y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
            return rows, y if has_targets else None
        item = dataset[0]
        has_targets = isinstance(item, (tuple, list)) and len(item) == 2
        if isinstance(item, (tuple, list)) and len(item) > 2:
            raise ValueError(
                f"The Dataset's items are {type(item).__name__}s of {len(item)} values: they "
                "must be (x, y) pairs, or x alone (a tensor, an array or a dict)."
            )
        rows = DatasetRows(dataset, self.convert, has_targets=has_targets)
        if not has_targets:
            return rows, None
        ys = [dataset[i][1] for i in range(n)]
        y = torch.utils.data.default_collate(ys)
        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        return rows, y

    def _raw(self, X, *, reset: bool, check_features):
        """``X`` (after preprocessing) as arrays or a dict of arrays, counts and shapes checked."""
        if X is None:
            raise ValueError("X is required.")
        if n_samples(X, "X") == 0:
            raise ValueError("X is empty: at least one sample is required.")
        if is_dict_input(X):
            check_dict_input(X)
        elif not self.after_preprocessing:
            self._check_array_shape(X, reset)
        if check_features is not None:
            check_features(X)
        if not self.after_preprocessing:
            return X
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            Xt = self.preprocessor.transform(X)
        if is_dict_input(Xt):
            check_dict_input(Xt)
        else:
            self._check_array_shape(Xt, reset)
        return Xt

    def _check_array_shape(self, X, reset: bool) -> None:
        shape = shape_of(X)
        expected = None if reset or isinstance(self.input_shape, dict) else self.input_shape
        if expected is not None and self._integer_kept(X):
            expected = None  # token sequences: checked by rank in _check_shapes
        check_input_shape(shape, expected, after_preprocessing=self.after_preprocessing)

    def _integer_kept(self, X) -> bool:
        """Whether ``X`` is integer input that the net was found to take as it is."""
        return (_is_integer(X) and getattr(self, "_ints_decided", False)
                and not self.convert.ints_as_float)

    def _fit_kind(self, X, *, shape_of_rows, reset: bool = True) -> None:
        """Decide whether integer values stay integer: they do when the net runs on them.

        Decided on the first integer input seen (at ``fit``, or later for a net fitted on
        floating inputs), then kept.
        """
        if reset:
            self.convert = Convert(self.dtype, ints_as_float=False)
            self._ints_decided = False
        if self.probe is None or getattr(self, "_ints_decided", True):
            return
        sample = first(X) if shape_of_rows else X
        if not any(_is_integer(t) for t in _leaves_raw(sample)):
            return
        kept = Convert(self.dtype, ints_as_float=False)(sample)
        if self.probe.runs_on(kept):
            self._ints_decided = True
            return
        as_float = Convert(self.dtype, ints_as_float=True)(sample)
        if self.probe.runs_on(as_float):
            self._ints_decided = True
            self.convert = Convert(self.dtype, ints_as_float=True)
        # neither runs (e.g. a wrong shape): undecided, the usual checks report the input

    def _check_shapes(self, Xt, *, reset: bool) -> None:
        """Each value's sample shape as at ``fit`` (integer values kept integer: the rank only,
        as sequences of another length are valid input of a sequence model)."""
        def sample_shape(t):
            return tuple(t.shape[1:])

        shapes = ({k: sample_shape(v) for k, v in Xt.items()} if isinstance(Xt, Mapping)
                  else sample_shape(Xt))
        if reset:
            self.input_shape = shapes
            return
        expected = self.input_shape
        if isinstance(expected, dict) != isinstance(shapes, dict):
            fitted = "a dict of arrays" if isinstance(expected, dict) else "one array"
            raise ValueError(f"X must be {fitted}, as at fit; got {describe(Xt)}.")
        if isinstance(expected, dict):
            if set(expected) != set(shapes):
                raise ValueError(
                    f"X has keys {sorted(shapes)}, but the explainer was fitted with keys "
                    f"{sorted(expected)}."
                )
            for k in expected:
                _check_sample_shape(shapes[k], expected[k], Xt[k], f"X[{k!r}]")
        else:
            _check_sample_shape(shapes, expected, Xt, "X")

    def _check_token_ids(self, Xt) -> None:
        if self.probe is None or self.convert.ints_as_float:
            return
        self.probe.check_token_ids(Xt)


def _is_integer(t) -> bool:
    """Integer or boolean values (kept as they are when the net runs on them)."""
    dtype = getattr(t, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return not dtype.is_floating_point and not dtype.is_complex
    return isinstance(dtype, np.dtype) and dtype.kind in "biu"


def _leaves_raw(X) -> list:
    if isinstance(X, Mapping):
        return list(X.values())
    if not hasattr(X, "dtype"):
        try:
            X = np.asarray(X)
        except (ValueError, TypeError):
            return []
    return [X]


def _check_sample_shape(shape: tuple, expected: tuple | None, t, what: str) -> None:
    if expected is None or tuple(shape) == tuple(expected):
        return
    if _is_integer(t) and len(shape) == len(expected):
        return
    if len(shape) == 1 and len(expected) == 1:
        raise ValueError(
            f"{what} has {shape[0]} features, but InfluenceExplainer is expecting "
            f"{expected[0]} features as input."
        )
    raise ValueError(
        f"{what} has samples of shape {tuple(shape)}, but the explainer was fitted with "
        f"samples of shape {tuple(expected)}."
    )


