"""Fitted input handling: from the user's ``X`` to the tensor the net takes.

:class:`InputTransformer` is fitted once in ``fit``: it records the pipeline's preprocessing (if
any), the shape of one sample as the net sees it, and the net's dtype and device. Every later
call checks ``X`` against that (shape first for a bare net, after the preprocessing for a
pipeline), converts it and refuses values that overflow the net's dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from . import _validation as val

__all__ = ["InputTransformer"]


class InputTransformer:
    """The net's input for any ``X``: preprocessing, shape checks and tensor conversion.

    Parameters
    ----------
    preprocessor : transformer or None
        The fitted steps of a pipeline before its net (``pipeline[:-1]``), or None.
    dtype : torch.dtype
        The floating dtype of the net's parameters (``X`` is converted to it).
    device : torch.device
        Where the tensors go.

    Attributes
    ----------
    input_shape : tuple of int or None
        Shape of one sample as the net sees it, recorded by :meth:`fit_transform`.
    """

    def __init__(self, preprocessor, dtype: torch.dtype, device: torch.device) -> None:
        self.preprocessor = preprocessor
        self.dtype = dtype
        self.device = device
        self.input_shape: tuple | None = None

    @property
    def after_preprocessing(self) -> bool:
        """Whether the net's input is ``X`` after a pipeline's preprocessing."""
        return self.preprocessor is not None

    def fit_transform(self, X) -> torch.Tensor:
        """Convert the training inputs and record the shape of one sample."""
        return self._transform(X, reset=True, check_features=None)

    def transform(self, X, check_features: Callable[[object], None] | None = None
                  ) -> torch.Tensor:
        """Check and convert ``X``; ``check_features(X)`` checks the raw features (names, count).

        For a bare net the shape is checked first (a 1-D ``X`` gets "Reshape your data"), then
        the features; for a pipeline the raw features first, then the shape after preprocessing.
        """
        return self._transform(X, reset=False, check_features=check_features)

    def _check_shape(self, X, reset: bool) -> None:
        shape = val.shape_of(X)
        val.check_input_shape(shape, None if reset else self.input_shape,
                              after_preprocessing=self.after_preprocessing)
        if reset:
            self.input_shape = shape[1:]

    def _transform(self, X, *, reset: bool, check_features) -> torch.Tensor:
        if X is None:
            raise ValueError("X is required.")
        if val.n_samples(X, "X") == 0:
            raise ValueError("X is empty: at least one sample is required.")
        if not self.after_preprocessing:
            self._check_shape(X, reset)
        if check_features is not None:
            check_features(X)
        Xt = X
        if self.after_preprocessing:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                Xt = self.preprocessor.transform(X)
            self._check_shape(Xt, reset)
        if isinstance(Xt, torch.Tensor):
            Xt = Xt.detach().cpu().numpy()
        Xt = torch.as_tensor(val.check_net_array(Xt), dtype=self.dtype, device=self.device)
        val.check_input_tensor(Xt, after_preprocessing=self.after_preprocessing)
        return Xt
