"""Candidate selectors: shortlist the training points worth scoring for each test point.

FastIF's first speed-up: score only the ``k`` training points nearest to the test point in the
model's own feature space instead of all ``n``. A selector embeds the training inputs once
(:meth:`BaseCandidates.fit`), builds a nearest-neighbour index over the embeddings, and returns the
``k`` nearest training rows of any batch of test inputs (:meth:`BaseCandidates.kneighbors`).

Selectors know nothing of the explainer: they take the skorch net and the net's input (``X`` after
any pipeline preprocessing) at call time and never hold on to the net, so a fitted selector pickles
without it. :class:`~sk_fastif.InfluenceExplainer` uses one through its ``candidates`` parameter.

* :class:`NNDescentCandidates`: approximate search with pynndescent's ``NNDescent`` (the index is
  built and ``prepare()``-d in :meth:`~BaseCandidates.fit`). For large training sets.
* :class:`ExactCandidates`: exact search with scikit-learn's ``NearestNeighbors``: the reference
  for recall checks and the right choice for small training sets.
* :class:`GradientSketchCandidates`: search in **gradient space**. :meth:`~BaseCandidates.fit`
  stores a low-dimensional sketch (a projection) of every training point's loss gradient; a
  query projects the test points' iHVPs the same way and shortlists the training points with the
  highest sketched scores. It needs the influence engine at ``fit`` and the test points' factors
  at query time, both of which :class:`~sk_fastif.InfluenceExplainer` passes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from . import _batch as rows_of
from . import _sketch
from ._gradients import chunks
from ._net import eval_mode

__all__ = [
    "BaseCandidates",
    "ExactCandidates",
    "GradientSketchCandidates",
    "LowCandidateRecallWarning",
    "NNDescentCandidates",
    "warn_low_recall",
]

_QUERIES = ("each", "mean")


class LowCandidateRecallWarning(UserWarning):
    """Warned by :meth:`InfluenceExplainer.audit_candidates` when the shortlist misses too many
    of the truly most influential training points: raise the selector's ``n_neighbors``.

    Examples
    --------
    >>> import warnings
    >>> from sk_fastif.neighbors import LowCandidateRecallWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", LowCandidateRecallWarning)  # audits then raise
    ...     issubclass(LowCandidateRecallWarning, UserWarning)
    True
    """


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


def _as_tensor(net, X) -> torch.Tensor:
    """The net's input as a tensor on the device and in the dtype of the net's parameters."""
    param = next(net.module_.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else None
    if isinstance(X, rows_of.DatasetRows):
        return X  # read by chunks
    if isinstance(X, dict):
        return {k: _as_tensor(net, v) for k, v in X.items()}
    if isinstance(X, torch.Tensor):
        X = X.detach()
        if dtype is not None and X.dtype.is_floating_point:
            X = X.to(dtype)
        return X.to(device)
    X = np.asarray(X)
    if dtype is not None and X.dtype.kind == "f":
        return torch.as_tensor(X, dtype=dtype, device=device)
    return torch.as_tensor(X, device=device)


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"the hooked module returned a {type(out).__name__}, not a tensor; pass a callable "
        "embedding=(net, X) -> array instead."
    )


class BaseCandidates(BaseEstimator):
    """Base class of the candidate selectors: embedding, validation and the query protocol.

    Subclasses implement ``_build_index(E)`` (store what is needed to search the rows of the
    training embedding ``E``) and ``_query(E, k)`` (return the ``(indices, distances)`` of the
    ``k`` nearest indexed rows of each row of ``E``, nearest first).

    Parameters
    ----------
    n_neighbors : int
        Number of candidates per test point (``k``).
    embedding : {"penultimate", "input"}, str, or callable
        The feature space the neighbours are searched in:

        * ``"penultimate"``: the input of the net's last ``torch.nn.Linear`` layer (the last one
          run in a forward pass), i.e. the features the output layer reads. FastIF's choice (the
          pooled representation of the fine-tuned model) and the right default: points the model
          sees as alike are the ones whose gradients align.
        * ``"input"``: the net's input, i.e. ``X`` after any pipeline preprocessing, flattened.
          Useful for models without a linear output layer or when the raw features are already
          meaningful (tabular data after scaling).
        * the name of a submodule of ``net.module_`` (as in ``named_modules()``): its output,
          flattened; e.g. a hidden block's activations.
        * a callable ``embedding(net, X) -> array of shape (n, d)``: ``X`` is the net's input as a
          tensor on the net's device. Called in eval mode under ``torch.no_grad()``, in chunks of
          ``batch_size`` rows.
    metric : str or callable
        The distance, passed to the index (see the subclass).
    batch_size : int
        Rows per forward pass when embedding.

    Examples
    --------
    >>> from sk_fastif.neighbors import BaseCandidates, ExactCandidates, NNDescentCandidates
    >>> all(issubclass(c, BaseCandidates) for c in (ExactCandidates, NNDescentCandidates))
    True
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "embedding": [str, callable],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    # ------------------------------------------------------------------------------ embeddings
    def _resolve_embedding(self, net, Xt: torch.Tensor) -> str | None:
        """Check the embedding against the net; return the hooked module's name (or None)."""
        emb = self.embedding
        if callable(emb) or emb == "input":
            return None
        modules = dict(net.module_.named_modules())
        if emb == "penultimate":
            order: list[str] = []
            handles = [
                m.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
                for name, m in modules.items()
                if isinstance(m, torch.nn.Linear)
            ]
            try:
                with eval_mode(net.module_), torch.no_grad():
                    net.infer(rows_of.first(Xt, 2))
            finally:
                for h in handles:
                    h.remove()
            if not order:
                raise ValueError(
                    "embedding='penultimate' needs a torch.nn.Linear layer in the net's module, "
                    "and the forward pass ran none. Pass embedding='input', the name of a "
                    "submodule or a callable (net, X) -> array."
                )
            return order[-1]
        if emb not in modules or emb == "":
            names = [n for n in modules if n]
            raise ValueError(
                f"embedding={emb!r} is not 'penultimate', 'input', a callable, or the name of a "
                f"submodule of the net's module. Submodule names: {names}."
            )
        return emb

    def embed(self, net, X) -> np.ndarray:
        """Embed the net's inputs ``X`` in the selector's feature space.

        Parameters
        ----------
        net : skorch.NeuralNet
            The fitted net (left unchanged: its modules' train/eval modes are restored).
        X : array-like or torch.Tensor of shape (n, ...)
            The net's input (after any pipeline preprocessing).

        Returns
        -------
        E : ndarray of shape (n, d), float32
        """
        check_is_fitted(self, "n_samples_fit_")
        return self._embed(net, X, self.embedding_module_)

    def _embed(self, net, X, module_name: str | None) -> np.ndarray:
        Xt = _as_tensor(net, X)
        n = rows_of.n_rows(Xt)
        emb = self.embedding
        if emb == "input":
            if not isinstance(Xt, torch.Tensor):
                raise ValueError(
                    "embedding='input' needs the net's input as one array; for a dict or a "
                    "Dataset pass embedding='penultimate', a submodule's name or a callable."
                )
            E = Xt.reshape(n, -1).cpu().numpy()
        else:
            captured: list[torch.Tensor] = []
            handle = None
            if module_name is not None:
                module = dict(net.module_.named_modules())[module_name]
                if emb == "penultimate":

                    def hook(mod, inp, out):  # the input of the last linear layer
                        captured[:] = [inp[0]]
                else:

                    def hook(mod, inp, out):
                        captured[:] = [_first_tensor(out)]

                handle = module.register_forward_hook(hook)
            blocks = []
            try:
                with eval_mode(net.module_), torch.no_grad():
                    for start in range(0, n, self.batch_size):
                        chunk = rows_of.take(Xt, slice(start, start + self.batch_size))
                        m = rows_of.n_rows(chunk)
                        if callable(emb):
                            block = emb(net, chunk)
                            if isinstance(block, torch.Tensor):
                                block = block.detach().cpu().numpy()
                            block = np.asarray(block)
                        else:
                            captured.clear()
                            net.infer(chunk)
                            if not captured:
                                raise ValueError(
                                    f"embedding={emb!r}: module {module_name!r} did not run in "
                                    "the forward pass."
                                )
                            block = captured[0].detach().reshape(m, -1).cpu().numpy()
                        if block.ndim != 2 or block.shape[0] != m:
                            raise ValueError(
                                f"the embedding of {m} rows has shape {block.shape}; "
                                f"expected ({m}, d)."
                            )
                        blocks.append(block)
            finally:
                if handle is not None:
                    handle.remove()
            E = np.concatenate(blocks) if blocks else np.zeros((0, 0))
        E = check_array(E, dtype=np.float32, ensure_all_finite=True, input_name="embedding",
                        ensure_min_samples=1)
        return np.ascontiguousarray(E, dtype=np.float32)

    # -------------------------------------------------------------------------------- fitting
    def fit(self, net, X, *, engine=None) -> BaseCandidates:
        """Embed the training inputs and build the nearest-neighbour index over them.

        Parameters
        ----------
        net : skorch.NeuralNet
            The fitted net whose feature space is searched (never modified).
        X : array-like or torch.Tensor of shape (n_train, ...)
            The training inputs as the net sees them (after any pipeline preprocessing).
        engine : InfluenceEngine or None, default=None
            Not used by selectors in feature space, present for a common interface (the
            explainer passes its engine to every selector; selectors in gradient space such as
            :class:`GradientSketchCandidates` need it).

        Returns
        -------
        self
        """
        self._validate_params()
        Xt = _as_tensor(net, X)
        n = rows_of.n_rows(Xt)
        if self.n_neighbors > n:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} exceeds the number of training samples "
                f"{n}; use n_neighbors <= {n}."
            )
        self.embedding_module_ = self._resolve_embedding(net, Xt)
        E = self._embed(net, Xt, self.embedding_module_)
        self.n_samples_fit_ = n
        self.embedding_dim_ = int(E.shape[1])
        self._build_index(E)
        return self

    def _build_index(self, E: np.ndarray) -> None:
        raise NotImplementedError

    def _query(self, E: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -------------------------------------------------------------------------------- queries
    def _check_query(self, n_neighbors, query: str) -> int:
        """The number of neighbours of a query, checked against the fitted training set."""
        check_is_fitted(self, "n_samples_fit_")
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        if isinstance(k, bool) or not isinstance(k, Integral) or not 1 <= k <= self.n_samples_fit_:
            raise ValueError(
                f"n_neighbors must be an integer in [1, {self.n_samples_fit_}] (the number of "
                f"training samples); got {k!r}."
            )
        if query not in _QUERIES:
            raise ValueError(f"query must be 'each' or 'mean'; got {query!r}.")
        return int(k)

    def kneighbors(
        self, net, X, n_neighbors: int | None = None, *, query: str = "each", factors=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices and distances of the nearest training points of each test point.

        Parameters
        ----------
        net : skorch.NeuralNet
            The net the selector was fitted with.
        X : array-like or torch.Tensor of shape (n_test, ...)
            Test inputs as the net sees them.
        n_neighbors : int or None, default=None
            Number of neighbours; ``None`` uses the selector's ``n_neighbors``. At most the
            number of training samples.
        query : {"each", "mean"}, default="each"
            ``"each"``: one query per test point. ``"mean"``: one query for the whole group, from
            the mean of its embeddings (FastIF's mean-of-anchors query); the result has one row.
        factors : torch.Tensor, ndarray or None, default=None
            The test points' iHVPs. Not used by selectors in feature space, present for a common
            interface (see :class:`GradientSketchCandidates`, which needs them).

        Returns
        -------
        indices : ndarray of shape (n_queries, n_neighbors), int64
            Training-set row indices, nearest first, no repeats within a row.
        distances : ndarray of shape (n_queries, n_neighbors)
            Their distances under ``metric``.
        """
        k = self._check_query(n_neighbors, query)
        E = self._embed(net, X, self.embedding_module_)
        if E.shape[1] != self.embedding_dim_:
            raise ValueError(
                f"the test embedding has {E.shape[1]} dimensions but the training embedding "
                f"had {self.embedding_dim_}."
            )
        if query == "mean":
            E = E.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        indices, distances = self._query(E, int(k))
        return np.asarray(indices, dtype=np.int64), np.asarray(distances)


class NNDescentCandidates(BaseCandidates):
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
        The feature space; see :class:`BaseCandidates`. ``"penultimate"`` (the input of the last
        linear layer) is the right default for classifiers; ``"input"`` suits nets whose input
        features are already meaningful; a submodule name or a callable covers the rest.
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
    >>> from sk_fastif.neighbors import NNDescentCandidates
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(300, 5).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> module = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> net = NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss, max_epochs=3,
    ...                           train_split=None, verbose=0).fit(X, y)
    >>> sel = NNDescentCandidates(n_neighbors=20, random_state=0).fit(net, X)
    >>> sel.embedding_module_, sel.embedding_dim_
    ('2', 8)
    >>> indices, distances = sel.kneighbors(net, X[:3])
    >>> indices.shape
    (3, 20)
    """

    _parameter_constraints: dict = {
        **BaseCandidates._parameter_constraints,
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


class ExactCandidates(BaseCandidates):
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
        The feature space; see :class:`BaseCandidates`.
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
    >>> from sk_fastif.neighbors import ExactCandidates
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(100, 5).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(5, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=3, train_split=None, verbose=0).fit(X, y)
    >>> sel = ExactCandidates(n_neighbors=4, embedding="input").fit(net, X)
    >>> indices, _ = sel.kneighbors(net, X[:2])
    >>> indices[:, 0].tolist()  # each training point is its own nearest neighbour
    [0, 1]
    """

    _parameter_constraints: dict = {
        **BaseCandidates._parameter_constraints,
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



class GradientSketchCandidates(BaseCandidates):
    """Training points with the highest sketched influence scores: search in gradient space.

    The feature-space selectors bet that the most influential training points lie near the test
    point in the net's features; this one ranks by (an estimate of) the score itself. A score is
    the inner product ``(1/n) s · g_j`` of the test point's iHVP ``s = (H + λI)⁻¹ g(z)`` with
    the training gradient ``g_j``; with a projection ``P`` of shape ``(n_params, n_components)``
    it is estimated by ``(1/n) (Pᵀs) · (Pᵀg_j)``. :meth:`fit` computes ``Pᵀg_j`` for every
    training point in streaming passes over the training gradients (never all held at once) and
    stores these sketches; :meth:`kneighbors` projects the test points' factors and returns the
    ``n_neighbors`` training points of highest estimated score (exact top-k by chunked matrix
    products, ``n_train * n_components`` multiply-adds per query whatever the net's size). The
    explainer then scores the candidates exactly, as with every selector.

    Parameters
    ----------
    n_neighbors : int, default=100
        Number of candidates per test point.
    n_components : int, default=256
        Dimension of the sketch, at most the number of parameters differentiated (``fit`` says
        so otherwise). Memory: ``n_train * n_components`` float32 for the sketches and
        ``n_params * n_components`` for the projection, both kept by the fitted selector.
    projection : {"svd", "orthogonal", "gaussian"}, default="svd"
        ``"svd"``: the leading right singular vectors of the training-gradient matrix (a
        randomized range finder over the streamed gradients, ``2 + 2 * n_iter`` passes plus one
        for the sketches): the subspace where the training gradients have most of their energy,
        so the sketch keeps the inner products that matter with few components.
        ``"orthogonal"``: random orthonormal directions, scaled so that sketched inner products
        are unbiased; with ``n_components`` equal to the number of parameters every inner
        product, and so the shortlist, is exact. ``"gaussian"``: a Gaussian random projection.
        The random projections take one pass.
    kind : {"abs", "helpful", "harmful"}, default="abs"
        The training points shortlisted: the highest estimated scores (``"helpful"``), the
        lowest (``"harmful"``) or the largest magnitudes (``"abs"``, which serves both lists of
        :meth:`~sk_fastif.InfluenceExplainer.explain`).
    n_iter : int, default=1
        Power iterations of the ``"svd"`` range finder (each costs two passes over the training
        gradients and sharpens the subspace). Not used by the random projections.
    batch_size : int, default=256
        Training points per block of gradients in the passes of :meth:`fit`.
    random_state : int, RandomState instance or None, default=None
        Seeds the projection (and the range finder's test matrix). An int makes the sketch and
        every shortlist reproducible. :class:`~sk_fastif.InfluenceExplainer` seeds it from its
        own ``random_state`` when this is None.

    Attributes
    ----------
    components_ : ndarray of shape (n_params, n_components), float32
        The projection ``P``.
    sketch_ : ndarray of shape (n_samples_fit_, n_components), float32
        ``Pᵀg_j`` of every training point.
    captured_energy_ : float or None
        ``"svd"`` and ``"orthogonal"``: the fraction of the training gradients' squared norm
        (``‖G‖_F²``) in the span of ``P``; near 1 means the sketch keeps nearly all of the
        gradients. None for ``"gaussian"``.
    singular_values_ : ndarray of shape (n_components,) or None
        ``"svd"``: estimates of the training-gradient matrix's leading singular values.
    n_samples_fit_ : int
        Number of training points sketched.
    n_params_ : int
        Number of parameters of the gradients.

    See Also
    --------
    ExactCandidates, NNDescentCandidates : Shortlists in the net's feature space.

    Notes
    -----
    The shortlists need the engine's gradients at :meth:`fit` and the test points' factors at
    query time: :class:`~sk_fastif.InfluenceExplainer` passes both. The fitted selector holds
    no reference to the net or the engine, so it pickles on its own. For the difference between
    the projections, their recall and costs, see the Candidate pruning page of the user guide.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceEngine
    >>> from sk_fastif.neighbors import GradientSketchCandidates
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = torch.as_tensor(rng.randn(60, 4).astype("float32")); y = (X[:, 0] > 0).long()
    >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
    >>> engine = InfluenceEngine.from_net(net, X, y, solver=Exact(damping=0.01)).prepare()
    >>> sel = GradientSketchCandidates(n_neighbors=5, n_components=10, projection="orthogonal",
    ...                                kind="helpful", random_state=0).fit(net, X, engine=engine)
    >>> S = engine.factors(engine.gradients(X[:3], y[:3])).solution  # the test points' iHVPs
    >>> indices, estimates = sel.kneighbors(net, X[:3], factors=S)
    >>> indices.shape
    (3, 5)
    >>> # 10 components for 10 parameters, orthogonal: the true top 5 by exact scores
    >>> truth = np.argsort(-engine.score_rows(S), axis=1)[:, :5]
    >>> bool((np.sort(indices, axis=1) == np.sort(truth, axis=1)).all())
    True
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "projection": [StrOptions({"svd", "orthogonal", "gaussian"})],
        "kind": [StrOptions({"abs", "helpful", "harmful"})],
        "n_iter": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    _N_OVERSAMPLES = 10

    def __init__(
        self,
        n_neighbors: int = 100,
        *,
        n_components: int = 256,
        projection: str = "svd",
        kind: str = "abs",
        n_iter: int = 1,
        batch_size: int = 256,
        random_state=None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.n_components = n_components
        self.projection = projection
        self.kind = kind
        self.n_iter = n_iter
        self.batch_size = batch_size
        self.random_state = random_state

    def fit(self, net, X, *, engine=None) -> GradientSketchCandidates:
        """Sketch the loss gradient of every training point of ``engine``.

        Parameters
        ----------
        net : skorch.NeuralNet
            The fitted net: the one ``engine`` was built from (checked).
        X : array-like or torch.Tensor of shape (n_train, ...)
            The training inputs as the net sees them: the engine's training set, whose
            gradients (with the engine's targets) are sketched. Its length is checked.
        engine : InfluenceEngine
            The influence engine (:attr:`InfluenceExplainer.engine_
            <sk_fastif.InfluenceExplainer>`): the gradients with respect to its parameters.
            Required; the selector keeps no reference to it.

        Returns
        -------
        self
        """
        self._validate_params()
        if engine is None:
            raise ValueError(
                "GradientSketchCandidates searches in gradient space and needs the influence "
                "engine: fit(net, X, engine=engine). InfluenceExplainer(candidates=...) passes "
                "its own."
            )
        if engine.bridge.net is not net:
            raise ValueError("engine was built from another net than the one passed.")
        n, p = engine.n_train, engine.n_params
        if rows_of.n_rows(X) != n:
            raise ValueError(
                f"X has {rows_of.n_rows(X)} rows but the engine's training set has {n}: pass "
                "the engine's training inputs."
            )
        if self.n_neighbors > n:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} exceeds the number of training samples "
                f"{n}; use n_neighbors <= {n}."
            )
        if self.n_components > p:
            raise ValueError(
                f"n_components={self.n_components} exceeds the number of parameters {p} (the "
                f"dimension of the gradients); use n_components <= {p}."
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

        def stream():
            for sl in chunks(n, self.batch_size):
                yield sl, engine.gradients(rows_of.take(engine.X_train, sl),
                                           engine.y_train[sl], what="training point")

        self.singular_values_ = None
        if self.projection == "svd":
            basis, self.singular_values_ = _sketch.gradient_basis(
                stream, p, self.n_components, n_iter=self.n_iter,
                n_oversamples=self._N_OVERSAMPLES, seed=seed)
        else:
            basis = _sketch.random_basis(p, self.n_components, self.projection, seed)
        sketch, total = _sketch.project_stream(stream, basis, n)
        kept = float(np.square(sketch, dtype=np.float64).sum())
        scale = {"svd": 1.0, "orthogonal": self.n_components / p}.get(self.projection)
        self.captured_energy_ = None if scale is None else kept * scale / max(total, 1e-300)
        self.components_ = basis
        self.sketch_ = sketch
        self.n_params_ = p
        self.n_samples_fit_ = n
        return self

    def embed(self, net, X) -> np.ndarray:
        """Not available: this selector's space is that of the gradients, not of ``X``.

        Use :meth:`transform` on gradients or factors instead.
        """
        raise TypeError(
            "GradientSketchCandidates has no feature-space embedding; transform(factors) "
            "projects gradients or iHVPs into its sketch space."
        )

    def transform(self, V) -> np.ndarray:
        """Project rows of gradients or factors (shape ``(m, n_params_)``) into the sketch space.

        Returns an ndarray of shape ``(m, n_components)``, float32: ``V @ components_``.
        """
        check_is_fitted(self, "sketch_")
        if isinstance(V, torch.Tensor):
            V = V.detach().to("cpu", torch.float32).numpy()
        V = check_array(V, dtype=np.float32, input_name="factors")
        if V.shape[1] != self.n_params_:
            raise ValueError(
                f"factors have {V.shape[1]} columns but the sketch was fitted on gradients of "
                f"{self.n_params_} parameters."
            )
        return V @ self.components_

    def kneighbors(
        self, net, X, n_neighbors: int | None = None, *, query: str = "each", factors=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The training points of highest estimated score for each test point's factors.

        Parameters
        ----------
        net : skorch.NeuralNet
            The net the selector was fitted with (the factors are its).
        X : array-like or torch.Tensor of shape (n_test, ...)
            The test inputs; only their number is used, to check ``factors``.
        n_neighbors : int or None, default=None
            Number of candidates; ``None`` uses the selector's ``n_neighbors``.
        query : {"each", "mean"}, default="each"
            ``"mean"``: one shortlist for the group, from the mean of the factors (the factor of
            the group's mean loss); ``factors`` may then hold that one row.
        factors : torch.Tensor or ndarray of shape (n_test, n_params_)
            The test points' iHVPs ``(H + λI)⁻¹ g(z)`` (e.g. from
            :meth:`~sk_fastif.InfluenceExplainer.influence_factors`). Required. Plain gradients
            give the gradient-dot-product shortlist instead.

        Returns
        -------
        indices : ndarray of shape (n_queries, n_neighbors), int64
            Training-set row indices, best first (by ``kind``), no repeats within a row.
        estimates : ndarray of shape (n_queries, n_neighbors), float32
            Their sketched scores ``(1/n) (Pᵀs) · (Pᵀg_j)``, estimates of the influence scores.
        """
        k = self._check_query(n_neighbors, query)
        if factors is None:
            raise ValueError(
                "GradientSketchCandidates ranks by sketched scores and needs the test points' "
                "iHVPs: kneighbors(net, X, factors=...)."
            )
        Z = self.transform(factors)
        n_test = rows_of.n_rows(X)
        allowed = (n_test,) if query == "each" else (1, n_test)
        if len(Z) not in allowed:
            raise ValueError(f"factors have {len(Z)} rows for {n_test} test points.")
        if query == "mean":
            Z = Z.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        indices, values = _sketch.top_inner_products(Z, self.sketch_, k, self.kind)
        return indices, values / np.float32(self.n_samples_fit_)


def warn_low_recall(result, kind: str, min_recall: float, *, stacklevel: int = 2) -> None:
    """Warn :class:`LowCandidateRecallWarning` for each mean ``R@m`` below ``min_recall``.

    ``result`` is what :func:`sk_fastif.metrics.candidate_recall` returns.

    Examples
    --------
    >>> import warnings
    >>> from types import SimpleNamespace
    >>> from sk_fastif.neighbors import warn_low_recall
    >>> result = SimpleNamespace(n_neighbors=20, recall={10: 0.4}, sample_indices=range(5),
    ...                          random_baseline=0.02)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_low_recall(result, "helpful", min_recall=0.9)
    >>> str(caught[0].message)[:53]
    'The candidate shortlists hold only 40% of the true to'
    """
    k = result.n_neighbors
    for m, recall in result.recall.items():
        if recall < min_recall:
            warnings.warn(
                f"The candidate shortlists hold only {recall:.0%} of the true top-{m} {kind} "
                f"training points (mean R@{m} over {len(result.sample_indices)} queries; a "
                f"random shortlist of {k} would hold {result.random_baseline:.1%}). Raise the "
                f"selector's n_neighbors (now {k}) or try another embedding.",
                LowCandidateRecallWarning,
                stacklevel=stacklevel,
            )
