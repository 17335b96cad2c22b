"""Exact nearest neighbours in the net's feature space, with scikit-learn."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral

import numpy as np

from .._sklearn_compat import StrOptions
from ._embedding import FeatureSpaceCandidates

__all__ = ["ExactCandidates"]


class ExactCandidates(FeatureSpaceCandidates):
    """Exact nearest training points in the net's feature space, with scikit-learn.

    The exact twin of :class:`NNDescentCandidates` (same interface, no approximation): a
    :class:`sklearn.neighbors.NearestNeighbors` over the training embeddings. Use it for small
    training sets, for shortlists that are a large fraction of the training set, and as the
    reference when measuring an approximate index's recall.

    Parameters
    ----------
    n_neighbors : int, default=100
        Number of candidates per test point.
    embedding : {"penultimate", "input"}, str or callable, default="penultimate"
        The feature space; see :class:`FeatureSpaceCandidates`.
    metric : str or callable, default="euclidean"
        Any metric ``NearestNeighbors`` accepts.
    algorithm : {"auto", "ball_tree", "kd_tree", "brute"}, default="auto"
        ``NearestNeighbors``' search algorithm (all are exact).
    batch_size : int, default=1024
        Rows per forward pass when embedding.
    n_jobs : int or None, default=None
        ``NearestNeighbors``' ``n_jobs`` for queries (``None`` means 1).

    Attributes
    ----------
    index_ : sklearn.neighbors.NearestNeighbors
        The fitted search structure.
    n_samples_fit_ : int
        Number of indexed training points.
    embedding_dim_ : int
        Dimension of the embedding.
    embedding_module_ : str or None
        Name of the hooked submodule, None for ``"input"`` and callables.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif.neighbors import ExactCandidates, SearchContext
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(100, 5).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(5, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=3, train_split=None, verbose=0).fit(X, y)
    >>> sel = ExactCandidates(n_neighbors=4, embedding="input").fit(SearchContext(net, X))
    >>> indices, _ = sel.kneighbors(SearchContext(net, X[:2]))
    >>> indices[:, 0].tolist()  # each training point is its own nearest neighbour
    [0, 1]
    """

    _parameter_constraints: dict = {
        **FeatureSpaceCandidates._parameter_constraints,
        "metric": [str, callable],
        "algorithm": [StrOptions({"auto", "ball_tree", "kd_tree", "brute"})],
        "n_jobs": [Integral, None],
    }

    def __init__(
        self,
        n_neighbors: int = 100,
        *,
        embedding: str | Callable = "penultimate",
        metric: str | Callable = "euclidean",
        algorithm: str = "auto",
        batch_size: int = 1024,
        n_jobs: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.embedding = embedding
        self.metric = metric
        self.algorithm = algorithm
        self.batch_size = batch_size
        self.n_jobs = n_jobs

    def _build_index(self, E: np.ndarray) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.index_ = NearestNeighbors(
            n_neighbors=self.n_neighbors, metric=self.metric, algorithm=self.algorithm,
            n_jobs=self.n_jobs,
        ).fit(E)

    def _query(self, E: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, indices = self.index_.kneighbors(E, n_neighbors=k)
        return indices, distances
