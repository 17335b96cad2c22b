"""Approximate nearest neighbours in the net's feature space, with pynndescent."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from numbers import Integral, Real

import numpy as np
import torch

from .._sklearn_compat import Interval
from ._embedding import FeatureSpaceCandidates

__all__ = ["NNDescentCandidates"]


@contextlib.contextmanager
def _keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count after pynndescent.

    numba's OpenMP layer and torch share the OpenMP runtime: pynndescent's
    ``numba.set_num_threads`` calls change the thread count torch then uses (measured: a
    one-thread torch process ran its influence computations on two threads, 15 times slower on a
    busy two-core machine, after an index build).
    """
    n_threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)


class NNDescentCandidates(FeatureSpaceCandidates):
    """Approximate nearest training points in the net's feature space, with pynndescent.

    :meth:`fit` embeds the training inputs (see ``embedding``), builds a
    :class:`pynndescent.NNDescent` index over them and calls its ``prepare()``, so the first query
    pays no build cost. :meth:`kneighbors` returns the ``n_neighbors`` approximate nearest training
    rows of each test point (or of a group's mean embedding).

    Parameters
    ----------
    n_neighbors : int, default=100
        Number of candidates per test point (FastIF used 1,000 of 393k MNLI points). Measure the
        recall with :func:`sk_fastif.metrics.candidate_recall` and raise it when the truly most
        influential points are missed.
    embedding : {"penultimate", "input"}, str or callable, default="penultimate"
        The feature space; see :class:`FeatureSpaceCandidates`. ``"penultimate"`` (the input
        of the last linear layer) is the right default for classifiers; ``"input"`` suits nets
        whose input features are already meaningful; a submodule name or a callable covers
        the rest.
    metric : str, default="euclidean"
        Any metric name ``NNDescent`` accepts (``"euclidean"``, ``"cosine"``, ``"manhattan"``,
        ...). FastIF used the squared L2 distance, which ranks like ``"euclidean"``.
    epsilon : float, default=0.1
        Search effort of a query (pynndescent's ``epsilon``): larger is more accurate and slower;
        0.1 to 0.3 is the useful range.
    index_params : dict or None, default=None
        Further keyword arguments of ``NNDescent`` for the index build (e.g.
        ``{"n_neighbors": 60}`` for a denser search graph, which raises recall at large
        ``n_neighbors``; ``"n_trees"``, ``"diversify_prob"``, ...). ``data``, ``metric``,
        ``random_state`` and ``n_jobs`` are set from this selector and may not appear here. The
        graph's ``n_neighbors`` (default 30) is capped at the number of training points minus 1.
    batch_size : int, default=1024
        Rows per forward pass when embedding.
    n_jobs : int or None, default=None
        Threads for the index build. ``None`` means 1, the scikit-learn convention; ``-1`` means
        all of numba's threads. The index (and therefore the shortlists) depends on the number of
        threads, and bit-for-bit reproducibility for a fixed ``random_state`` is only guaranteed
        with one thread (several threads race inside the build). Queries are single-threaded.
    random_state : int, RandomState instance or None, default=None
        Seeds the index build (random-projection trees, neighbour-descent sampling). With an int
        and ``n_jobs=None`` or ``1`` the index and every shortlist are reproducible.
        :class:`~sk_fastif.InfluenceExplainer` seeds it from its own ``random_state`` when this is
        None.

    Attributes
    ----------
    index_ : pynndescent.NNDescent
        The prepared index (it pickles with the selector).
    n_samples_fit_ : int
        Number of indexed training points.
    embedding_dim_ : int
        Dimension of the embedding.
    embedding_module_ : str or None
        Name of the hooked submodule (the last linear layer for ``"penultimate"``), None for
        ``"input"`` and callables.

    Notes
    -----
    pynndescent compiles its build kernels with numba the first time an index is built in a
    process (tens of seconds on a small machine); later builds in the same process are fast.

    A query for nearly as many neighbours as there are training points is unreliable with an
    approximate index (pynndescent may return repeats); :meth:`kneighbors` raises then. Use
    :class:`ExactCandidates` when ``n_neighbors`` is a large fraction of the training set.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif.neighbors import NNDescentCandidates, SearchContext
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(300, 5).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> module = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> net = NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss, max_epochs=3,
    ...                           train_split=None, verbose=0).fit(X, y)
    >>> sel = NNDescentCandidates(n_neighbors=20, random_state=0).fit(SearchContext(net, X))
    >>> sel.embedding_module_, sel.embedding_dim_
    ('2', 8)
    >>> indices, distances = sel.kneighbors(SearchContext(net, X[:3]))
    >>> indices.shape
    (3, 20)
    """

    _parameter_constraints: dict = {
        **FeatureSpaceCandidates._parameter_constraints,
        "metric": [str, callable],
        "epsilon": [Interval(Real, 0, None, closed="left")],
        "index_params": [dict, None],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    }

    _RESERVED = ("data", "metric", "random_state", "n_jobs")

    def __init__(
        self,
        n_neighbors: int = 100,
        *,
        embedding: str | Callable = "penultimate",
        metric: str | Callable = "euclidean",
        epsilon: float = 0.1,
        index_params: dict | None = None,
        batch_size: int = 1024,
        n_jobs: int | None = None,
        random_state=None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.embedding = embedding
        self.metric = metric
        self.epsilon = epsilon
        self.index_params = index_params
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _build_index(self, E: np.ndarray) -> None:
        from pynndescent import NNDescent

        params = dict(self.index_params or {})
        reserved = sorted(set(params) & set(self._RESERVED))
        if reserved:
            raise ValueError(
                f"index_params may not set {reserved}: use the selector's own parameters."
            )
        n_jobs = 1 if self.n_jobs is None else self.n_jobs
        if n_jobs == 0 or n_jobs < -1:
            raise ValueError(f"n_jobs must be None, -1 or a positive integer; got {self.n_jobs}.")
        # a small training set cannot support the default search-graph degree of 30
        params.setdefault("n_neighbors", min(30, len(E) - 1))
        params["n_neighbors"] = max(1, min(params["n_neighbors"], len(E) - 1))
        random_state = self.random_state
        if isinstance(random_state, np.random.RandomState):
            random_state = random_state.randint(np.iinfo(np.int32).max)
        with _keep_torch_threads():
            index = NNDescent(
                E, metric=self.metric, random_state=random_state, n_jobs=n_jobs, **params
            )
            index.prepare()
        self.index_ = index

    def _query(self, E: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with _keep_torch_threads():
            indices, distances = self.index_.query(E, k=k, epsilon=self.epsilon)
        bad = (indices < 0).any(axis=1)
        if k > 1:
            s = np.sort(indices, axis=1)
            bad |= (s[:, 1:] == s[:, :-1]).any(axis=1)
        if bad.any():
            raise RuntimeError(
                f"pynndescent returned fewer than n_neighbors={k} distinct training points for "
                f"{int(bad.sum())} of {len(E)} queries (n_neighbors is "
                f"{k / self.n_samples_fit_:.0%} of the training set). Use "
                "ExactCandidates for shortlists this large, or lower n_neighbors, or raise "
                "epsilon."
            )
        return indices, distances
