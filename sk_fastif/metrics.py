"""Metrics on influence scores: agreement between solvers and with retraining, top-k overlap,
solver residuals."""

from __future__ import annotations

from collections import OrderedDict
from numbers import Integral

import joblib
import numpy as np
import torch
from scipy import sparse
from scipy.stats import kendalltau, pearsonr, spearmanr
from sklearn.base import clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _batch as rows_of
from . import _validation as val
from ._app_metrics import mislabel_detection_curve, step_test
from ._ranking import csr_to_candidates, top_k
from ._retraining import leave_one_out_correlation, linear_datamodeling_score
from .solvers import BaseSolver, Exact

__all__ = [
    "candidate_recall",
    "influence_agreement",
    "leave_one_out_correlation",
    "linear_datamodeling_score",
    "make_influence_scorer",
    "mislabel_detection_curve",
    "relative_residual_score",
    "step_test",
    "top_k_overlap",
]

_CORRELATIONS = {"pearson": pearsonr, "spearman": spearmanr, "kendall": kendalltau}


def _check_pair(scores, reference) -> tuple[np.ndarray, np.ndarray]:
    a = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    b = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"scores {a.shape} and reference {b.shape} must have the same shape.")
    if a.size == 0:
        raise ValueError("scores are empty.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores and reference must be finite.")
    return a, b


def influence_agreement(scores, reference, *, method: str = "spearman") -> float:
    """Mean per-test-point correlation between two influence matrices.

    Parameters
    ----------
    scores, reference : array-like of shape (n_test, n_train)
        Influence matrices for the same test and training points (e.g. LiSSA and Exact).
    method : {"spearman", "pearson", "kendall"}, default="spearman"

    Returns
    -------
    agreement : float
        The correlation of each row with the matching reference row, averaged over rows
        (a constant row counts as 0).

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.metrics import influence_agreement
    >>> a = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    >>> float(influence_agreement(a, 2 * a + 1))
    1.0
    """
    if method not in _CORRELATIONS:
        raise ValueError(f"method must be one of {sorted(_CORRELATIONS)}; got {method!r}.")
    a, b = _check_pair(scores, reference)
    values = []
    for x, z in zip(a, b):
        if np.ptp(x) == 0 or np.ptp(z) == 0:
            values.append(0.0)
        else:
            values.append(float(_CORRELATIONS[method](x, z)[0]))
    return float(np.mean(values))


def top_k_overlap(scores, reference, *, k: int = 10, kind: str = "helpful") -> float:
    """Mean fraction of the reference's top-``k`` training points also top-``k`` in ``scores``.

    Parameters
    ----------
    scores, reference : array-like of shape (n_test, n_train)
    k : int, default=10
    kind : {"helpful", "harmful", "abs"}, default="helpful"
        Rank by the highest scores, the lowest scores, or the largest magnitudes.

    Returns
    -------
    overlap : float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.metrics import top_k_overlap
    >>> top_k_overlap(np.array([[3.0, 2.0, 1.0]]), np.array([[3.0, 1.0, 2.0]]), k=2)
    0.5
    """
    a, b = _check_pair(scores, reference)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= a.shape[1]:
        raise ValueError(f"k must be an integer in [1, {a.shape[1]}]; got {k!r}.")
    val.check_kind(kind)
    return _overlap(top_k(a, k, kind)[0], top_k(b, k, kind)[0])


def _overlap(top_a: np.ndarray, top_b: np.ndarray) -> float:
    """Mean fraction of each row of ``top_b`` found in the same row of ``top_a``."""
    k = top_b.shape[1]
    return float(np.mean([len(np.intersect1d(x, z)) / k for x, z in zip(top_a, top_b)]))


def relative_residual_score(explainer, X, y=None) -> float:
    """Minus the mean relative residual of the explainer's iHVPs on (X, y); 0 is exact.

    The same as ``explainer.score(X, y)``, usable as ``scoring=`` in a grid search.

    Parameters
    ----------
    explainer : InfluenceExplainer
        Fitted.
    X : array-like of shape (n_test, ...)
        Test inputs.
    y : array-like of shape (n_test,), default=None
        Their targets; None uses the predicted labels.

    Returns
    -------
    score : float
        ``-mean ‖(H + λI)s − g‖ / ‖g‖`` over the test points: 0 for exact iHVPs.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.metrics import relative_residual_score
    >>> from sk_fastif.solvers import CG
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(60, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
    >>> rough = InfluenceExplainer(net, solver=CG(damping=1e-2, max_iter=1),
    ...                            curvature="gauss_newton").fit(X, y)
    >>> fine = InfluenceExplainer(net, solver=CG(damping=1e-2, tol=1e-6),
    ...                           curvature="gauss_newton").fit(X, y)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # one CG step does not converge, and says so
    ...     coarse = relative_residual_score(rough, X[:5])
    >>> bool(coarse < relative_residual_score(fine, X[:5]) <= 0)
    True
    """
    return explainer.score(X, y)


# ------------------------------------------------------------------------------ scorer factory
_SCORER_METRICS = ("spearman", "pearson", "top_k_overlap")


def _explainer_and_input(estimator, X):
    """The explainer and its input: a Pipeline ending in an explainer transforms X first."""
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        if len(estimator.steps) > 1:
            X = estimator[:-1].transform(X)
        estimator = estimator.steps[-1][1]
    if not (hasattr(estimator, "parallel_engine") and hasattr(estimator, "influences")):
        raise TypeError(
            "an influence scorer scores a fitted InfluenceExplainer (or a Pipeline ending in "
            f"one); got {type(estimator).__name__}."
        )
    check_is_fitted(estimator, "engine_")
    return estimator, X


def _fingerprint(explainer, reference, X, y) -> str:
    """A hash of everything the reference influences depend on.

    The engine's fingerprint (the fitted net's classes and parameter values, the parameter
    selection, the curvature and the training data), the reference solver's parameters and the
    query data: two explainers that differ only in their solver (as the candidates of a grid
    search do) share it.
    """
    return joblib.hash((explainer.engine_.fingerprint, type(reference).__qualname__,
                        reference.get_params(deep=True), X, y))


def _reference_influences(explainer, reference, X, y) -> np.ndarray:
    """Exhaustive influences of the explainer's fitted net and data with the reference solver."""
    engine = explainer.parallel_engine().with_solver(clone(reference))
    Xt, yt = explainer.as_engine_input(X, y)
    # every training point: the truth a shortlist is judged against
    return engine.score_rows(engine.factors(engine.gradients(Xt, yt)).solution)


def _score_candidates(scores, reference, metric: str, k: int) -> float:
    """Rate sparse candidate scores (each row stores its shortlist) against dense references.

    Correlations are taken over each row's candidates (the solver's accuracy there);
    ``top_k_overlap`` compares the top ``k`` among the candidates with the reference's top
    ``k`` over all training points (pruning and solver together, what an explanation shows).
    """
    values, cols = csr_to_candidates(scores)
    if metric == "top_k_overlap":
        kk = min(k, cols.shape[1])
        return _overlap(top_k(values, kk, pool=cols)[0], top_k(reference, kk)[0])
    return influence_agreement(values, np.take_along_axis(reference, cols, axis=1),
                               method=metric)


class _InfluenceScorer:
    """Scores an explainer's influences against a cached reference; see make_influence_scorer."""

    def __init__(self, metric: str, reference, k: int, memory, cache_size: int) -> None:
        self.metric = metric
        self.reference = reference
        self.k = k
        self.memory = memory
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.n_reference_computations_ = 0

    def __repr__(self) -> str:
        return (
            f"make_influence_scorer(metric={self.metric!r}, reference={self.reference!r}, "
            f"k={self.k})"
        )

    def compute_reference(self, explainer, X, y) -> np.ndarray:
        self.n_reference_computations_ += 1
        return _reference_influences(explainer, self.reference, X, y)

    def reference_influences(self, estimator, X, y=None) -> np.ndarray:
        """The reference influences for ``estimator``'s fitted net and data (cached).

        Parameters
        ----------
        estimator : InfluenceExplainer or Pipeline ending in one
            A fitted explainer.
        X : array-like of shape (n_test, n_features)
        y : array-like of shape (n_test,) or None

        Returns
        -------
        reference : ndarray of shape (n_test, n_train)
        """
        explainer, Xe = _explainer_and_input(estimator, X)
        key = _fingerprint(explainer, self.reference, Xe, y)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self.memory is None:
            value = self.compute_reference(explainer, Xe, y)
        else:
            memory = joblib.Memory(self.memory, verbose=0) if isinstance(
                self.memory, str) else self.memory
            cached = memory.cache(_cached_reference, ignore=["scorer", "explainer", "X", "y"])
            value = cached(key, self, explainer, Xe, y)
        self._cache[key] = value
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return value

    def __call__(self, estimator, X, y=None) -> float:
        explainer, Xe = _explainer_and_input(estimator, X)
        reference = self.reference_influences(estimator, X, y)
        scores = explainer.influences(Xe, y)
        if sparse.issparse(scores):  # an explainer with candidates: its shortlists only
            return _score_candidates(scores, reference, self.metric, self.k)
        scores = np.asarray(scores)
        if self.metric == "top_k_overlap":
            return top_k_overlap(scores, reference, k=min(self.k, scores.shape[1]))
        return influence_agreement(scores, reference, method=self.metric)


def _cached_reference(key, scorer, explainer, X, y):  # ``key`` alone is hashed by joblib.Memory
    return scorer.compute_reference(explainer, X, y)


def make_influence_scorer(
    metric: str = "spearman",
    *,
    reference: BaseSolver = Exact(),  # noqa: B008  (cloned, never modified)
    k: int = 10,
    memory=None,
    cache_size: int = 8,
):
    """Make a scorer that rates an explainer's influences against a reference solver's.

    Use it as ``scoring=`` in :class:`~sklearn.model_selection.GridSearchCV` over an
    :class:`~sk_fastif.InfluenceExplainer` to tune an approximate solver (``LiSSA``, ``CG``)
    against an accurate one. ``cv_results_["mean_score_time"]`` then shows what each setting
    costs: the time of one call is the candidate's influence computation (plus, for the first
    candidate only, the reference's).

    Parameters
    ----------
    metric : {"spearman", "pearson", "top_k_overlap"}, default="spearman"
        ``"spearman"``/``"pearson"``: :func:`influence_agreement`, the mean per-test-point
        correlation of the influence rows with the reference rows. ``"top_k_overlap"``:
        :func:`top_k_overlap`, the mean fraction of the reference's ``k`` most helpful training
        points also found by the candidate. For an explainer with ``candidates``, whose
        ``influences`` scores each test point's shortlist only, the reference is still
        exhaustive: the correlations are taken over each shortlist (the solver's accuracy
        there), and ``"top_k_overlap"`` compares the ``k`` best candidates with the reference's
        ``k`` best over all training points (pruning and solver together: use it to tune
        ``candidates__n_neighbors``).
    reference : solver, default=Exact()
        The solver whose influences are taken as the truth (it is cloned). Its ``damping`` is
        the one compared against: match it to the candidates' damping unless you mean to tune
        damping towards a fixed reference. The curvature, ``params`` and training data are the
        explainer's.
    k : int, default=10
        The ``k`` of ``"top_k_overlap"`` (capped at the number of training points).
    memory : str, joblib.Memory or None, default=None
        Also cache the reference on disk (a directory or a :class:`joblib.Memory`), so that
        parallel searches (``n_jobs > 1``, where every worker holds its own copy of the scorer)
        compute it once.
    cache_size : int, default=8
        Reference matrices kept in memory (one per fitted net, training data, query data and
        reference; a search with ``n_splits`` splits needs ``n_splits``).

    Returns
    -------
    scorer : callable
        ``scorer(explainer, X, y=None) -> float``, higher is better. The reference influences
        are computed once per fitted net, training data and query data ``(X, y)`` and reused
        for every candidate; ``scorer.reference_influences(explainer, X, y)`` returns them.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sklearn.model_selection import GridSearchCV, PredefinedSplit
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.metrics import make_influence_scorer
    >>> from sk_fastif.solvers import CG, Exact
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(80, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0)
    >>> net = net.fit(X[:60], y[:60])  # trained on the first 60 rows; 20 held-out queries
    >>> split = PredefinedSplit([-1] * 60 + [0] * 20)  # fit on the training rows only
    >>> search = GridSearchCV(
    ...     InfluenceExplainer(net, solver=CG(damping=1e-2)), {"solver__max_iter": [1, 50]},
    ...     scoring=make_influence_scorer("spearman", reference=Exact(damping=1e-2)), cv=split,
    ... )
    >>> import warnings
    >>> from sklearn.exceptions import ConvergenceWarning
    >>> with warnings.catch_warnings():  # CG(max_iter=1) does not converge, and says so
    ...     warnings.simplefilter("ignore", ConvergenceWarning)
    ...     search = search.fit(X, y)
    >>> search.best_params_
    {'solver__max_iter': 50}
    >>> bool(search.cv_results_["mean_test_score"][1] > 0.99)
    True
    """
    if metric not in _SCORER_METRICS:
        raise ValueError(f"metric must be one of {list(_SCORER_METRICS)}; got {metric!r}.")
    if not isinstance(reference, BaseSolver):
        raise TypeError(
            f"reference must be a solver (Exact, CG or LiSSA); got {type(reference).__name__}."
        )
    if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    if memory is not None and not isinstance(memory, (str, joblib.Memory)):
        raise TypeError(f"memory must be None, a directory or a joblib.Memory; got {memory!r}.")
    if not isinstance(cache_size, Integral) or isinstance(cache_size, bool) or cache_size < 1:
        raise ValueError(f"cache_size must be a positive integer; got {cache_size!r}.")
    return _InfluenceScorer(metric, clone(reference), int(k), memory, int(cache_size))


def candidate_recall(explainer, X, y=None, *, top=(10, 100), kind: str = "helpful",
                     max_samples: int | None = None, random_state=None):
    """Recall of an explainer's candidate shortlists against exhaustive scoring.

    For each query ``z`` of ``X``, scores every training point (the same iHVPs as the pruned
    path, so only the pruning is measured) and computes FastIF's
    ``R@m = |shortlist(z) ∩ top_m(z)| / m``, where ``shortlist(z)`` holds the selector's
    ``n_neighbors = k`` candidates and ``top_m(z)`` the ``m`` truly most influential training
    points of the chosen ``kind``. A random shortlist scores ``k / n`` on average; ``R@m`` cannot
    exceed ``min(1, k / m)``.

    Parameters
    ----------
    explainer : InfluenceExplainer
        Fitted, with ``candidates`` set.
    X : array-like of shape (n_test, n_features)
        The queries.
    y : array-like of shape (n_test,) or None, default=None
        Their targets; ``None`` uses the predicted labels.
    top : int or sequence of int, default=(10, 100)
        The values of ``m``, each in ``[1, n_train]``.
    kind : {"helpful", "harmful", "abs"}, default="helpful"
        Rank by the highest scores, the lowest scores or the largest magnitudes.
    max_samples : int or None, default=None
        Measure on at most this many queries, drawn at random without replacement; None uses
        all of ``X``.
    random_state : int, RandomState instance or None, default=None
        Seeds that draw.

    Returns
    -------
    result : sklearn.utils.Bunch
        ``recall``: dict ``m -> mean R@m`` over the queries (float);
        ``recall_per_query``: dict ``m -> ndarray of shape (n_queries,)``;
        ``n_neighbors``: the shortlist size ``k``;
        ``random_baseline``: ``k / n_train``, the expected ``R@m`` of a random shortlist;
        ``sample_indices``: the rows of ``X`` measured (sorted).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.metrics import candidate_recall
    >>> from sk_fastif.neighbors import ExactCandidates
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(80, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
    >>> expl = InfluenceExplainer(net, solver=Exact(damping=1e-2),
    ...                           candidates=ExactCandidates(80, embedding="input")).fit(X, y)
    >>> candidate_recall(expl, X[:5], top=(1, 10)).recall  # a shortlist of all 80 points
    {1: 1.0, 10: 1.0}
    """
    from sklearn.utils import Bunch

    val.check_kind(kind)
    tops = [top] if isinstance(top, (int, np.integer)) else list(top)
    n_train = getattr(explainer, "n_train_", None)
    for m in tops:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or (
            n_train is not None and not 1 <= m <= n_train
        ):
            raise ValueError(f"top must hold integers in [1, n_train={n_train}]; got {top!r}.")
    if getattr(explainer, "candidates_", None) is None:
        raise ValueError(
            "the explainer has no candidates: there is no shortlist to audit. Set "
            "candidates=NNDescentCandidates(...) and fit again."
        )
    Xt, yt = explainer.as_engine_input(X, y)
    sample = np.arange(len(yt))
    if max_samples is not None and len(yt) > max_samples:
        rng = check_random_state(random_state)
        sample = np.sort(rng.choice(len(yt), size=max_samples, replace=False))
        Xt, yt = rows_of.take(Xt, sample), yt[torch.as_tensor(sample, device=yt.device)]
    engine = explainer.parallel_engine()
    # the same iHVPs for the exhaustive scores and the shortlists: only the pruning is measured
    S = engine.factors(engine.gradients(Xt, yt)).solution
    scores = engine.score_rows(S)
    shortlist, _ = explainer.candidates_.kneighbors(explainer.net_, Xt, factors=S)
    order, _ = top_k(scores, max(tops), kind)
    per_query = {}
    for m in tops:
        hits = [len(np.intersect1d(o[:m], c, assume_unique=True)) for o, c in zip(order, shortlist)]
        per_query[int(m)] = np.asarray(hits, dtype=np.float64) / m
    k = shortlist.shape[1]
    return Bunch(
        recall={m: float(v.mean()) for m, v in per_query.items()},
        recall_per_query=per_query,
        n_neighbors=int(k),
        random_baseline=k / scores.shape[1],
        sample_indices=sample,
    )
