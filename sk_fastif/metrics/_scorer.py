"""Scorers for a search over explainers: the relative residual, agreement with a reference,
and agreement with retraining.

:func:`relative_residual_score` needs no reference (it is ``InfluenceExplainer.score``);
:func:`make_influence_scorer` rates an explainer's influences against those of a reference
solver (computed once through the explainer's scoring pipeline and cached), or against nets
trained again on subsets of the training data (``"lds"``, ``"loo"``: trained once per net,
training data, subsets and seed, and shared by every candidate of a search), so that
``GridSearchCV(explainer, grid, scoring=make_influence_scorer(...))`` tunes a solver, its
damping or a selector's ``n_neighbors``.
"""

from __future__ import annotations

from collections import OrderedDict
from numbers import Integral

import joblib
import numpy as np
from scipy import sparse
from sklearn.base import clone
from sklearn.utils import Bunch, check_random_state
from sklearn.utils.validation import check_is_fitted

from .. import _inputs as rows_of
from .._ranking import csr_to_candidates, top_k
from ..solvers import BaseSolver, Exact
from . import _retraining as retraining
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
_RETRAINING_METRICS = ("lds", "loo")


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
            cached = _as_memory(self.memory).cache(
                _cached_reference, ignore=["scorer", "explainer", "X", "y"])
            value = cached(key, self, explainer, Xe, y)
        return _remember(self._cache, key, value, self.cache_size)

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


def _as_memory(memory):
    return joblib.Memory(memory, verbose=0) if isinstance(memory, str) else memory


def _refit_token(refit) -> str:
    """What identifies ``refit`` in a cache key: its pickled content where joblib can hash it
    (a module-level function, a picklable callable), else its qualified name."""
    if refit is None:
        return "default"
    try:
        return joblib.hash(refit)
    except Exception:  # noqa: BLE001  (a closure or lambda that does not pickle)
        return f"{getattr(refit, '__module__', '')}.{getattr(refit, '__qualname__', repr(refit))}"


class _RetrainingScorer:
    """Scores an explainer's influences against nets trained again; see make_influence_scorer."""

    def __init__(self, metric: str, n_subsets: int, fraction: float, refit, n_jobs,
                 verbose: int, memory, cache_size: int, seed: int) -> None:
        self.metric = metric
        self.n_subsets = n_subsets
        self.fraction = fraction
        self.refit = refit
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.memory = memory
        self.cache_size = cache_size
        self.seed = seed
        self._cache: OrderedDict[str, Bunch] = OrderedDict()
        self.n_retrainings_ = 0

    def __repr__(self) -> str:
        extra = f", fraction={self.fraction}" if self.metric == "lds" else ""
        return (f"make_influence_scorer(metric={self.metric!r}, n_subsets={self.n_subsets}"
                f"{extra}, random_state={self.seed})")

    def __getstate__(self) -> dict:  # a copy sent to a worker leaves the nets behind
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def _draw(self, n: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """The retrainings' rows and seeds, the same draws as :func:`linear_datamodeling_score`
        (or :func:`leave_one_out_correlation` with those indices) at ``random_state=seed``."""
        rng = check_random_state(self.seed)
        if self.metric == "lds":
            m = int(round(self.fraction * n))
            if not 1 <= m < n:
                raise ValueError(f"fraction must keep between 1 and {n - 1} of the {n} training "
                                 f"rows; got fraction={self.fraction!r} ({m} rows).")
            subsets = retraining.draw_subsets(rng, n, self.n_subsets, m)
            return subsets, list(subsets), retraining.draw_seeds(rng, self.n_subsets)
        if self.n_subsets > n:
            raise ValueError(f"n_subsets={self.n_subsets} exceeds the {n} training rows: the "
                             '"loo" scorer leaves out n_subsets distinct rows, one at a time.')
        indices = rng.choice(n, size=self.n_subsets, replace=False)
        rows = [np.flatnonzero(np.arange(n) != j) for j in indices]
        return indices, rows, retraining.draw_seeds(rng, self.n_subsets)

    def compute(self, explainer, X, y, rows, seeds) -> list:
        """Train the nets (counted in ``n_retrainings_``)."""
        self.n_retrainings_ += len(rows)
        return retraining.retrain(explainer.net_, X, y, rows, seeds, refit=self.refit,
                                  n_jobs=self.n_jobs, verbose=self.verbose)

    def retrained(self, estimator) -> Bunch:
        """The nets trained again for ``estimator``'s net and training data (cached).

        Parameters
        ----------
        estimator : InfluenceExplainer
            A fitted explainer wrapping a bare skorch net.

        Returns
        -------
        Bunch
            ``left_out``: for ``"lds"`` the subsets of rows kept, shape ``(n_subsets,
            subset_size)``; for ``"loo"`` the row left out by each net, shape
            ``(n_subsets,)``. ``seeds``: the seed of each retraining. ``nets``: the nets.
            ``key``: the cache key.
        """
        explainer, _ = _explainer_and_input(estimator, None)
        X = np.asarray(rows_of.as_user_input(explainer.engine_.X_train))
        y = np.asarray(explainer.y_train_)
        retraining.check_inputs(explainer, X, y)
        what, rows, seeds = self._draw(len(y))
        net = explainer.net_
        state = [(k, v.detach().cpu().numpy()) for k, v in net.module_.state_dict().items()]
        key = joblib.hash((self.metric, type(net).__qualname__, type(net.module_).__qualname__,
                           state, rows_of.content_hash(explainer.engine_.X_train), y, what,
                           seeds, _refit_token(self.refit)))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self.memory is None:
            nets = self.compute(explainer, X, y, rows, seeds)
        else:
            cached = _as_memory(self.memory).cache(
                _cached_retrain, ignore=["scorer", "explainer", "X", "y", "rows", "seeds"])
            nets = cached(key, self, explainer, X, y, rows, seeds)
        value = Bunch(left_out=what, seeds=seeds, nets=nets, key=key)
        return _remember(self._cache, key, value, self.cache_size)

    def __call__(self, estimator, X, y=None) -> float:
        explainer, Xe = _explainer_and_input(estimator, X)
        done = self.retrained(explainer)
        scores = retraining.dense_scores(explainer, Xe, y)
        if self.metric == "lds":
            return retraining.lds_from_nets(explainer, done.nets, done.left_out, Xe, y,
                                            scores).score
        return retraining.loo_from_nets(explainer, done.nets, done.left_out, Xe, y,
                                        scores).score


def _cached_retrain(key, scorer, explainer, X, y, rows, seeds):  # ``key`` alone is hashed
    return scorer.compute(explainer, X, y, rows, seeds)


def make_influence_scorer(
    metric: str = "spearman",
    *,
    reference: BaseSolver | None = None,
    k: int | None = None,
    n_subsets: int | None = None,
    fraction: float | None = None,
    refit=None,
    n_jobs: int | None = None,
    verbose: int | None = None,
    memory=None,
    cache_size: int = 8,
    random_state=None,
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
    reference : solver or None, default=None
        Agreement metrics only; None is ``Exact()``.
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
    n_subsets : int or None, default=None
        ``"lds"``: the random subsets drawn, one net trained on each (None: 50). ``"loo"``:
        the training rows left out, one net trained without each (None: 20).
    fraction : float or None, default=None
        ``"lds"`` only: the share of the training rows in each subset (None: 0.5).
    refit : callable or None, default=None
        Retraining metrics: ``refit(X_sub, y_sub)`` returns a fitted net; None trains a
        clone of the explainer's net, seeded per retraining.
    n_jobs : int or None, default=None
        Retraining metrics: retrainings run in parallel (:class:`joblib.Parallel`).
    verbose : int or None, default=None
        Retraining metrics: ``> 0`` shows a progress bar over the retrainings.
    random_state : int, RandomState instance or None, default=None
        Retraining metrics: the subsets and the training seeds. A RandomState or None is
        drawn from once, when the scorer is made, so every candidate of a search sees the
        same subsets; an int ``s`` draws what ``linear_datamodeling_score(...,
        random_state=s)`` draws. The retrained nets are cached per (net, training data,
        subsets, seeds, refit) and shared by every candidate; ``scorer.n_retrainings_``
        counts the nets this scorer trained, ``scorer.retrained(explainer)`` returns them.
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
    metrics = _SCORER_METRICS + _RETRAINING_METRICS
    if metric not in metrics:
        raise ValueError(f"metric must be one of {list(metrics)}; got {metric!r}.")
    if memory is not None and not isinstance(memory, (str, joblib.Memory)):
        raise TypeError(f"memory must be None, a directory or a joblib.Memory; got {memory!r}.")
    if not isinstance(cache_size, Integral) or isinstance(cache_size, bool) or cache_size < 1:
        raise ValueError(f"cache_size must be a positive integer; got {cache_size!r}.")
    if metric in _RETRAINING_METRICS:
        given = [name for name, value in (("reference", reference), ("k", k)) if value is not None]
        if given or (metric == "loo" and fraction is not None):
            given += ["fraction"] if metric == "loo" and fraction is not None else []
            raise ValueError(f"{', '.join(given)} has no use with metric={metric!r}.")
        n_subsets = (50 if metric == "lds" else 20) if n_subsets is None else n_subsets
        if not isinstance(n_subsets, Integral) or isinstance(n_subsets, bool) or n_subsets < 3:
            raise ValueError(f"n_subsets must be an int >= 3; got {n_subsets!r}.")
        fraction = 0.5 if fraction is None else float(fraction)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1); got {fraction!r}.")
        if refit is not None and not callable(refit):
            raise TypeError(f"refit must be None or a callable; got {refit!r}.")
        seed = (int(random_state) if isinstance(random_state, Integral)
                else int(check_random_state(random_state).randint(np.iinfo(np.int32).max)))
        return _RetrainingScorer(metric, int(n_subsets), fraction, refit, n_jobs,
                                 int(verbose or 0), memory, int(cache_size), seed)
    given = [name for name, value in (("n_subsets", n_subsets), ("fraction", fraction),
                                      ("refit", refit), ("n_jobs", n_jobs),
                                      ("verbose", verbose), ("random_state", random_state))
             if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply to the retraining metrics "
                         f'("lds", "loo") only; got metric={metric!r}.')
    reference = Exact() if reference is None else reference
    k = 10 if k is None else k
    if not isinstance(reference, BaseSolver):
        raise TypeError(
            f"reference must be a solver (Exact, CG or LiSSA); got {type(reference).__name__}."
        )
    if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    return _InfluenceScorer(metric, clone(reference), int(k), memory, int(cache_size))


def _remember(cache: OrderedDict, key, value, size: int):
    """Store ``value`` under ``key``, dropping the oldest entries beyond ``size``; return it."""
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)
    return value
