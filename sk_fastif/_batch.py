"""Rows of the net's input, whatever its kind: a tensor, a dict of tensors, or a lazy Dataset.

skorch hands its module either one tensor (``module(X)``) or, for a dict, its values as keyword
arguments (``module(**X)``); every value has one row per sample. The influence computations
take rows of the training inputs (chunks for gradients and curvature products, random rows for
LiSSA, shortlists for candidates) without caring which kind they are: the functions here do it
for every kind, and :class:`DatasetRows` reads the rows of a ``torch.utils.data.Dataset`` only
when they are asked for, so a training set that lives on disk (or is built item by item) is
never held in memory, and data reaches the device one chunk at a time (:func:`to_device`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from . import _validation as val

__all__ = ["Convert", "DatasetRows", "as_user_input", "content_hash", "describe", "first",
           "from_numpy", "leaves", "n_rows", "take", "to_device", "to_numpy", "unsqueeze"]


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
            t = torch.from_numpy(val.check_net_array(a, name=name, ensure_2d=False))
        if t.is_floating_point() or self.ints_as_float:
            t = t.to(self.dtype)
        val.check_input_tensor(t, after_preprocessing=False, name=name)
        return t

    def __call__(self, X, name: str = "X"):
        if isinstance(X, Mapping):
            return {k: self.leaf(v, f"{name}[{k!r}]") for k, v in X.items()}
        return self.leaf(X, name)


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
    >>> from sk_fastif._batch import DatasetRows
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
