"""Scorers for a search over explainers: the relative residual, and agreement with a reference.

:func:`relative_residual_score` needs no reference (it is ``InfluenceExplainer.score``);
:func:`make_influence_scorer` rates an explainer's influences against those of a reference
solver, computed once through the explainer's scoring pipeline and cached, so that
``GridSearchCV(explainer, grid, scoring=make_influence_scorer(...))`` tunes a solver (or a
selector's ``n_neighbors``) against an accurate one.
"""

from __future__ import annotations

from collections import OrderedDict
from numbers import Integral

import joblib
import numpy as np
from scipy import sparse
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from .._ranking import csr_to_candidates, top_k
from ..solvers import BaseSolver, Exact
from ._agreement import influence_agreement, mean_overlap, top_k_overlap

__all__ = ["make_influence_scorer", "relative_residual_score"]


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
    # every training point (no selector): the truth a shortlist is judged against
    return engine.scores(Xt, yt).values


def _score_candidates(scores, reference, metric: str, k: int) -> float:
    """Rate sparse candidate scores (each row stores its shortlist) against dense references.

    Correlations are taken over each row's candidates (the solver's accuracy there);
    ``top_k_overlap`` compares the top ``k`` among the candidates with the reference's top
    ``k`` over all training points (pruning and solver together, what an explanation shows).
    """
    values, cols = csr_to_candidates(scores)
    if metric == "top_k_overlap":
        kk = min(k, cols.shape[1])
        return mean_overlap(top_k(values, kk, pool=cols)[0], top_k(reference, kk)[0])
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
