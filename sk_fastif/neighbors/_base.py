"""The selectors' one protocol: ``fit(context)`` and ``kneighbors(context)``.

A :class:`SearchContext` is everything a selector may read about the rows it indexes (at
``fit``) or the queries it answers (at ``kneighbors``): the fitted net and the rows as the net
takes them, for selectors in the net's feature space; the rows' loss-gradient stream and the
queries' iHVPs, for selectors in gradient space. The scoring pipeline
(:meth:`sk_fastif.InfluenceEngine.scores`) builds it the same way for the training set and for
an outside pool, so every selector works on both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from .. import _inputs as rows_of

__all__ = ["BaseCandidates", "SearchContext"]

_QUERIES = ("each", "mean")

# a stream of gradient blocks: ``stream()`` starts one pass (what the sketch functions read)
GradientStream = Callable[[], Iterable[tuple[slice, torch.Tensor]]]


@dataclass(frozen=True)
class SearchContext:
    """What a selector reads: the rows it indexes, or the queries it answers.

    Parameters
    ----------
    net : skorch.NeuralNet
        The fitted net (never modified).
    X : torch.Tensor, dict of torch.Tensor or DatasetRows
        The rows as the net takes them (after any pipeline preprocessing).
    gradients : callable or None, default=None
        ``gradients(batch_size)`` yields ``(rows, G)`` blocks of ``batch_size`` rows' loss
        gradients, checked finite; each call starts a new pass. Given at ``fit``.
    n_params : int or None, default=None
        The dimension of the gradients.
    factors : torch.Tensor or None, default=None
        The queries' iHVPs ``(H + λI)⁻¹ g(z)``, one row per query (or one row for a group's
        mean). Given at ``kneighbors``.
    what : str, default="training samples"
        What the rows are, for messages ("pool points" for an outside pool).

    Examples
    --------
    >>> import torch
    >>> from sk_fastif.neighbors import SearchContext
    >>> SearchContext(net=None, X=torch.zeros(5, 3)).n_rows
    5
    """

    net: object
    X: object
    gradients: Callable[[int], Iterable[tuple[slice, torch.Tensor]]] | None = None
    n_params: int | None = None
    factors: torch.Tensor | None = None
    what: str = "training samples"

    @property
    def n_rows(self) -> int:
        """Number of rows of ``X``."""
        return rows_of.n_rows(self.X)


def _legacy_context(context, X, *, engine=None, factors=None) -> SearchContext:
    """A :class:`SearchContext` from the deprecated ``(net, X, engine=, factors=)`` form."""
    if isinstance(context, SearchContext):
        if X is not None or engine is not None or factors is not None:
            raise TypeError("pass a SearchContext alone, or the deprecated (net, X) form.")
        return context
    warnings.warn(
        "Calling a selector with (net, X[, engine=..., factors=...]) is deprecated and will "
        "stop working in the next release: pass one SearchContext (InfluenceExplainer builds "
        "it; by hand: InfluenceEngine.search_context()).",
        FutureWarning,
        stacklevel=3,
    )
    if engine is not None:
        if X is not None and rows_of.n_rows(X) != engine.n_train:
            raise ValueError(
                f"X has {rows_of.n_rows(X)} rows but the engine's training set has "
                f"{engine.n_train}: pass the engine's training inputs."
            )
        return engine.search_context()
    return SearchContext(net=context, X=X, factors=factors)


class BaseCandidates(BaseEstimator):
    """Base class of the candidate selectors: the protocol, its validation and its checks.

    A selector is fitted on the rows it shortlists from (:meth:`fit`, one
    :class:`SearchContext`) and answers queries (:meth:`kneighbors`, another). Subclasses
    implement ``_fit(context)`` and ``_kneighbors(context, k, query)``; they never override
    the public methods, so every selector is called, validated and refitted the same way.

    Parameters
    ----------
    n_neighbors : int
        Number of candidates per query (``k``).

    Examples
    --------
    >>> from sk_fastif.neighbors import (BaseCandidates, ExactCandidates,
    ...                                  GradientSketchCandidates, NNDescentCandidates)
    >>> all(issubclass(c, BaseCandidates)
    ...     for c in (ExactCandidates, NNDescentCandidates, GradientSketchCandidates))
    True
    """

    # ------------------------------------------------------------------------------ protocol
    def fit(self, context, X=None, *, engine=None) -> BaseCandidates:
        """Index the rows of ``context`` (the training set, or an outside pool).

        Parameters
        ----------
        context : SearchContext
            The rows to index (what each selector reads of it is in its docstring).
        X, engine : deprecated
            The old form ``fit(net, X, engine=None)``, for one release (FutureWarning).

        Returns
        -------
        self
        """
        context = _legacy_context(context, X, engine=engine)
        self._validate_params()
        n = context.n_rows
        if self.n_neighbors > n:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} exceeds the number of {context.what} {n}; "
                f"use n_neighbors <= {n}."
            )
        self._fit(context)
        self.n_samples_fit_ = n
        return self

    def fit_like(self, context: SearchContext) -> BaseCandidates:
        """An unfitted copy with the same settings, fitted on ``context`` (e.g. a pool)."""
        return clone(self).fit(context)

    def kneighbors(self, context, X=None, n_neighbors: int | None = None, *,
                   query: str = "each", factors=None) -> tuple[np.ndarray, np.ndarray]:
        """The indexed rows shortlisted for each query of ``context``.

        Parameters
        ----------
        context : SearchContext
            The queries.
        X, factors : deprecated
            The old form ``kneighbors(net, X, n_neighbors=None, *, query, factors=None)``.
        n_neighbors : int or None, default=None
            Number of candidates; ``None`` uses the selector's ``n_neighbors``. At most the
            number of indexed rows.
        query : {"each", "mean"}, default="each"
            ``"each"``: one shortlist per query. ``"mean"``: one for the whole group (FastIF's
            mean-of-anchors query); the result has one row.

        Returns
        -------
        indices : ndarray of shape (n_queries, n_neighbors), int64
            Indexed row indices, best first, no repeats within a row.
        distances : ndarray of shape (n_queries, n_neighbors)
            Their distances (or, in gradient space, their estimated scores).
        """
        context = _legacy_context(context, X, factors=factors)
        k = self._check_query(n_neighbors, query)
        indices, distances = self._kneighbors(context, k, query)
        return np.asarray(indices, dtype=np.int64), np.asarray(distances)

    # ----------------------------------------------------------------------------- the hooks
    def _fit(self, context: SearchContext) -> None:
        raise NotImplementedError

    def _kneighbors(self, context: SearchContext, k: int, query: str
                    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # --------------------------------------------------------------------------------- checks
    def _check_query(self, n_neighbors, query: str) -> int:
        """The number of neighbours of a query, checked against the fitted rows."""
        check_is_fitted(self, "n_samples_fit_")
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        if isinstance(k, bool) or not isinstance(k, Integral) or not 1 <= k <= self.n_samples_fit_:
            raise ValueError(
                f"n_neighbors must be an integer in [1, {self.n_samples_fit_}] (the number of "
                f"indexed rows); got {k!r}."
            )
        if query not in _QUERIES:
            raise ValueError(f"query must be 'each' or 'mean'; got {query!r}.")
        return int(k)
