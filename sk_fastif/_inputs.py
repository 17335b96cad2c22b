"""Fitted input handling: from the user's ``X`` to the inputs the net takes.

:class:`InputTransformer` is fitted once in ``fit``: it records the pipeline's preprocessing (if
any), the kind of input (one array, a dict of arrays, a Dataset), the shape of one sample of
each value, whether integer values stay integer (token ids for ``nn.Embedding``) and the net's
floating dtype. Every later call checks ``X`` against that and converts it the same way.

The kinds, as skorch takes them:

* an array of any rank (tabular ``(n, d)``, images ``(n, C, H, W)``, token ids ``(n, L)``), a
  tensor or a pandas DataFrame (its values, as one array);
* a dict of arrays or tensors, one row per sample in each value (skorch passes its values to
  the module as keyword arguments: ``{"input_ids": ..., "attention_mask": ...}``);
* a ``torch.utils.data.Dataset`` (a ``skorch.dataset.Dataset`` among them) whose items are
  ``(x, y)`` pairs or ``x`` alone. Training data given as a Dataset is read lazily by rows
  (:class:`~sk_fastif._batch.DatasetRows`); test data is read at once.

Floating values take the net's dtype. Integer values keep theirs when the net runs on them
(an embedding), and take the net's floating dtype when it does not (a linear first layer fed
integer features), decided once at ``fit``. Nothing is moved to the net's device here: chunks
go there as they are used.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch

from . import _batch as rows_of
from . import _net
from . import _validation as val

__all__ = ["InputTransformer", "is_dataset"]


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
    net : skorch.NeuralNet or None
        The fitted net: whether integer inputs stay integer is probed on it, and token ids are
        checked against its embeddings' sizes. None: integers stay integer, unchecked.

    Attributes
    ----------
    input_shape : tuple of int, dict of tuple or None
        Shape of one sample (of each value, for a dict), recorded by :meth:`fit_transform`.
    """

    def __init__(self, preprocessor, dtype: torch.dtype, net=None) -> None:
        self.preprocessor = preprocessor
        self.dtype = dtype
        self.net = net
        self.input_shape: tuple | dict | None = None
        self.convert = rows_of.Convert(dtype, ints_as_float=False)

    @property
    def after_preprocessing(self) -> bool:
        """Whether the net's input is ``X`` after a pipeline's preprocessing."""
        return self.preprocessor is not None

    # ------------------------------------------------------------------------------ public
    def fit_transform(self, X):
        """Convert the training inputs, record their kind and shapes; ``(inputs, targets)``.

        ``targets`` are the Dataset's targets (None for other kinds, or a Dataset without).
        A Dataset's inputs come back as lazy :class:`~sk_fastif._batch.DatasetRows`.
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

    def _dataset_rows(self, dataset) -> tuple[rows_of.DatasetRows, np.ndarray | None]:
        n = len(dataset)
        known = _skorch_targets(dataset)
        if n == 0:
            return rows_of.DatasetRows(dataset, self.convert, has_targets=False), None
        if known is not None:
            has_targets, y = known
            rows = rows_of.DatasetRows(dataset, self.convert, has_targets=True)
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
        rows = rows_of.DatasetRows(dataset, self.convert, has_targets=has_targets)
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
        if val.n_samples(X, "X") == 0:
            raise ValueError("X is empty: at least one sample is required.")
        if val.is_dict_input(X):
            val.check_dict_input(X)
        elif not self.after_preprocessing:
            self._check_array_shape(X, reset)
        if check_features is not None:
            check_features(X)
        if not self.after_preprocessing:
            return X
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            Xt = self.preprocessor.transform(X)
        if val.is_dict_input(Xt):
            val.check_dict_input(Xt)
        else:
            self._check_array_shape(Xt, reset)
        return Xt

    def _check_array_shape(self, X, reset: bool) -> None:
        shape = val.shape_of(X)
        expected = None if reset or isinstance(self.input_shape, dict) else self.input_shape
        if expected is not None and self._integer_kept(X):
            expected = None  # token sequences: checked by rank in _check_shapes
        val.check_input_shape(shape, expected, after_preprocessing=self.after_preprocessing)

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
            self.convert = rows_of.Convert(self.dtype, ints_as_float=False)
            self._ints_decided = False
        if self.net is None or getattr(self, "_ints_decided", True):
            return
        sample = rows_of.first(X) if shape_of_rows else X
        if not any(_is_integer(t) for t in _leaves_raw(sample)):
            return
        kept = rows_of.Convert(self.dtype, ints_as_float=False)(sample)
        if _net.runs_on(self.net, kept):
            self._ints_decided = True
            return
        as_float = rows_of.Convert(self.dtype, ints_as_float=True)(sample)
        if _net.runs_on(self.net, as_float):
            self._ints_decided = True
            self.convert = rows_of.Convert(self.dtype, ints_as_float=True)
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
            raise ValueError(f"X must be {fitted}, as at fit; got {rows_of.describe(Xt)}.")
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
        if self.net is None or self.convert.ints_as_float:
            return
        _net.check_token_ids(self.net, Xt)


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
