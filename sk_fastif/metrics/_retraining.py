"""Agreement with retraining: leave-one-out correlation and the linear datamodeling score.

Both compare influence scores with what actually happens when the net is trained again without
some training points, the check that matters beyond agreement with the exact formula.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import sparse
from scipy.stats import pearsonr, spearmanr
from sklearn.utils import Bunch, check_random_state
from sklearn.utils.parallel import Parallel, delayed
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from .. import _net
from .._inputs import n_samples
from .._net import NetBridge


def dense_scores(explainer, X_test, y_test, scores=None) -> np.ndarray:
    given = scores is not None
    scores = scores if given else explainer.influences(X_test, y_test)
    scores = scores.toarray() if sparse.issparse(scores) else np.asarray(scores, np.float64)
    if not given:
        return scores
    shape = (n_samples(X_test, "X_test"), explainer.n_train_)
    if scores.shape != shape:
        raise ValueError(f"scores must have shape (n_test, n_train) = {shape}; "
                         f"got {scores.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values.")
    return scores


def check_inputs(explainer, X, y) -> int:
    check_is_fitted(explainer, ["engine_"])
    pre, _ = _net.split_estimator(explainer.fitted_estimator_)
    if pre is not None:
        raise ValueError(
            "Retraining metrics need the explainer to wrap a bare skorch net, not a Pipeline: "
            "the test losses of each retrained net are computed on the net's own input."
        )
    n = len(X)
    if n != explainer.n_train_ or len(y) != n:
        raise ValueError(
            f"X and y must be the training data the explainer was fitted on "
            f"({explainer.n_train_} rows); got {n} rows of X and {len(y)} of y."
        )
    return n


def draw_seeds(rng, count: int) -> np.ndarray:
    """One training seed per retraining, drawn before any is dispatched (so the nets do not
    depend on ``n_jobs``)."""
    return np.array([int(rng.randint(np.iinfo(np.int32).max)) for _ in range(count)],
                    dtype=np.int64)


def draw_subsets(rng, n: int, n_subsets: int, m: int) -> np.ndarray:
    """``n_subsets`` sorted random subsets of ``m`` of the ``n`` training rows."""
    return np.stack([np.sort(rng.permutation(n)[:m]) for _ in range(n_subsets)])


def _retrain_one(net, X, y, keep: np.ndarray, seed: int, refit: Callable | None):
    """The net trained again on the rows ``keep``: ``refit`` or a seeded clone of ``net``."""
    if refit is None:
        return _net.fit_clone(net, X[keep], y[keep], int(seed))
    return refit(X[keep], y[keep])


def retrain(net, X, y, rows: Sequence[np.ndarray], seeds: np.ndarray, *,
            refit: Callable | None = None, n_jobs: int | None = None,
            verbose: int = 0) -> list:
    """Nets trained again on each set of training rows, in parallel, with a progress bar.

    Parameters
    ----------
    net : skorch net
        The net whose clones are trained when ``refit`` is None (its settings, not its
        weights).
    X, y : ndarray
        The training data, as the net takes it.
    rows : sequence of ndarray of int
        The training rows of each retraining.
    seeds : ndarray of int
        One seed per retraining (for the default refit; drawn by the caller before dispatch).
    refit : callable or None, default=None
        ``refit(X_sub, y_sub)`` returns a fitted net; None trains a seeded clone of ``net``.
    n_jobs : int or None, default=None
        Retrainings run at once (:class:`joblib.Parallel`; None is 1 unless in a
        :func:`joblib.parallel_backend` context).
    verbose : int, default=0
        ``> 0`` shows a progress bar over the retrainings.

    Returns
    -------
    nets : list
        The fitted nets, in the order of ``rows``.
    """
    jobs = (delayed(_retrain_one)(net, X, y, keep, seed, refit)
            for keep, seed in zip(rows, seeds))
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    return list(tqdm(results, total=len(rows), desc="retraining", leave=False,
                     disable=not verbose))


def _test_losses(net, Xt: torch.Tensor, yt: torch.Tensor) -> np.ndarray:
    _, net = _net.split_estimator(net)
    with torch.no_grad():
        return NetBridge(net).losses(Xt, yt).detach().double().cpu().numpy()


def leave_one_out_correlation(explainer, X, y, X_test, y_test=None, *, indices=None,
                              refit: Callable | None = None, method: str = "pearson",
                              random_state=None, scores=None, n_jobs: int | None = None,
                              verbose: int = 0) -> Bunch:
    """Correlation of predicted and actual test-loss changes when single points are left out.

    For each training index ``j`` in ``indices`` the net is trained again on the other rows
    (``refit(X_without_j, y_without_j)``), and the change of each test point's loss is compared
    with its score times ``n / (n - 1)`` (the left-out point's weight in the mean loss).

    Parameters
    ----------
    explainer : InfluenceExplainer
        Fitted on ``(X, y)``, wrapping a bare skorch net.
    X, y : array-like
        The training data the explainer was fitted on.
    X_test, y_test : array-like
        Test points; ``y_test=None`` uses the net's predictions, as :meth:`influences` does.
    indices : array-like of int or None, default=None
        Training points to leave out; None takes 20 at random.
    refit : callable or None, default=None
        ``refit(X_sub, y_sub)`` returns a fitted net trained on the subset. None trains a clone
        of the explainer's net with its own settings, seeded from ``random_state``. For a convex
        model, pass a refit that reaches the optimum (the closest to the formula's assumption).
    method : {"pearson", "spearman"}, default="pearson"
        The correlation over all (left-out point, test point) pairs.
    random_state : int, RandomState instance or None, default=None
        Draws ``indices`` when None and seeds the default ``refit``.
    scores : array-like of shape (n_test, n_train) or None, default=None
        Precomputed scores to evaluate (another method's, in this library's sign convention:
        positive = helpful, with the ``1/n`` factor); None computes the explainer's own
        :meth:`influences`. The explainer still provides the net, the loss and the checks.
    n_jobs : int or None, default=None
        Retrainings run in parallel (:class:`joblib.Parallel`); the seeds are drawn before
        dispatch, so the result does not depend on ``n_jobs``.
    verbose : int, default=0
        ``> 0`` shows a progress bar over the retrainings.

    Returns
    -------
    Bunch
        ``score`` (the correlation), ``predicted`` and ``actual`` of shape
        ``(len(indices), n_test)``, and ``indices``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetRegressor
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.metrics import leave_one_out_correlation
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(40, 3).astype("float64"); y = (X @ [1.0, -2.0, 0.5])[:, None]
    >>> y = y + 0.3 * rng.randn(40, 1)
    >>> def ridge(Xs, ys, lam=0.1):  # the exact optimum of mean squared error + lam/2 |w|^2
    ...     net = NeuralNetRegressor(torch.nn.Linear(3, 1, bias=False).double(), max_epochs=0,
    ...                              train_split=None, verbose=0).initialize()
    ...     w = np.linalg.solve(2 * Xs.T @ Xs / len(Xs) + lam * np.eye(3), 2 * Xs.T @ ys / len(Xs))
    ...     net.module_.weight.data = torch.as_tensor(w.T)
    ...     return net
    >>> net = ridge(X, y)
    >>> expl = InfluenceExplainer(net, solver=Exact(damping=0.1)).fit(X, y)
    >>> res = leave_one_out_correlation(expl, X, y, X[:5], y[:5], indices=range(10), refit=ridge)
    >>> bool(res.score > 0.95)
    True
    """
    n = check_inputs(explainer, X, y)
    rng = check_random_state(random_state)
    indices = (rng.choice(n, size=min(20, n), replace=False) if indices is None
               else np.asarray(list(indices), dtype=np.intp))
    if len(indices) < 2 or indices.min() < 0 or indices.max() >= n:
        raise ValueError(f"indices must hold at least 2 training rows in [0, {n}); "
                         f"got {indices!r}.")
    if method not in ("pearson", "spearman"):
        raise ValueError(f'method must be "pearson" or "spearman"; got {method!r}.')
    scores = dense_scores(explainer, X_test, y_test, scores)
    rows = [np.flatnonzero(np.arange(n) != j) for j in indices]
    nets = retrain(explainer.net_, np.asarray(X), np.asarray(y), rows,
                   draw_seeds(rng, len(rows)), refit=refit, n_jobs=n_jobs, verbose=verbose)
    return loo_from_nets(explainer, nets, indices, X_test, y_test, scores, method=method)


def loo_from_nets(explainer, nets: Sequence, indices: np.ndarray, X_test, y_test,
                  scores: np.ndarray, *, method: str = "pearson") -> Bunch:
    """The leave-one-out correlation of ``scores`` given the nets retrained without each of
    ``indices`` (``nets[i]`` without row ``indices[i]``); see
    :func:`leave_one_out_correlation`."""
    n = explainer.n_train_
    Xt, yt = explainer.as_engine_input(X_test, y_test)
    base = _test_losses(explainer.net_, Xt, yt)
    actual = np.stack([_test_losses(net, Xt, yt) - base for net in nets])
    predicted = scores[:, indices].T * n / (n - 1)
    corr = pearsonr if method == "pearson" else spearmanr
    return Bunch(score=float(corr(predicted.ravel(), actual.ravel())[0]), predicted=predicted,
                 actual=actual, indices=np.asarray(indices))


def linear_datamodeling_score(explainer, X, y, X_test, y_test=None, *, n_subsets: int = 50,
                              fraction: float = 0.5, refit: Callable | None = None,
                              random_state=None, scores=None, n_jobs: int | None = None,
                              verbose: int = 0) -> Bunch:
    """The linear datamodeling score (LDS) of an explainer's scores.

    Draws ``n_subsets`` random subsets of ``fraction * n`` training rows, trains the net again
    on each (``refit``), and, for each test point, takes the Spearman correlation over the
    subsets between the actual test loss and the one the scores predict (the full model's loss
    plus the scores of the rows left out). The LDS is the mean over the test points: the metric
    TRAK and dattri report.

    Parameters
    ----------
    explainer : InfluenceExplainer
        Fitted on ``(X, y)``, wrapping a bare skorch net.
    X, y : array-like
        The training data the explainer was fitted on.
    X_test, y_test : array-like
        Test points; ``y_test=None`` uses the net's predictions.
    n_subsets : int, default=50
        Subsets drawn (and nets trained).
    fraction : float, default=0.5
        Share of the training rows in each subset.
    refit : callable or None, default=None
        ``refit(X_sub, y_sub)`` returns a fitted net; None trains a seeded clone of the
        explainer's net.
    random_state : int, RandomState instance or None, default=None
        Draws the subsets and seeds the default ``refit``.
    scores : array-like of shape (n_test, n_train) or None, default=None
        Precomputed scores to evaluate (another method's, in this library's sign convention:
        positive = helpful, with the ``1/n`` factor); None computes the explainer's own
        :meth:`influences`. The explainer still provides the net, the loss and the checks.
    n_jobs : int or None, default=None
        Retrainings run in parallel (:class:`joblib.Parallel`); the seeds are drawn before
        dispatch, so the result does not depend on ``n_jobs``.
    verbose : int, default=0
        ``> 0`` shows a progress bar over the retrainings.

    Returns
    -------
    Bunch
        ``score`` (the LDS), ``per_test`` (Spearman per test point), ``predicted`` and
        ``actual`` test losses of shape ``(n_subsets, n_test)``, and ``subsets`` (the rows kept).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetRegressor
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.metrics import linear_datamodeling_score
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(60, 3); y = (X @ [1.0, -2.0, 0.5])[:, None] + 0.5 * rng.randn(60, 1)
    >>> def ridge(Xs, ys, lam=0.1):
    ...     net = NeuralNetRegressor(torch.nn.Linear(3, 1, bias=False).double(), max_epochs=0,
    ...                              train_split=None, verbose=0).initialize()
    ...     w = np.linalg.solve(2 * Xs.T @ Xs / len(Xs) + lam * np.eye(3), 2 * Xs.T @ ys / len(Xs))
    ...     net.module_.weight.data = torch.as_tensor(w.T)
    ...     return net
    >>> expl = InfluenceExplainer(ridge(X, y), solver=Exact(damping=0.1)).fit(X, y)
    >>> res = linear_datamodeling_score(expl, X, y, X[:4], y[:4], n_subsets=30,
    ...                                 refit=ridge, random_state=0)
    >>> bool(res.score > 0.5)
    True
    """
    n = check_inputs(explainer, X, y)
    if not (isinstance(n_subsets, (int, np.integer)) and n_subsets >= 3):
        raise ValueError(f"n_subsets must be an int >= 3; got {n_subsets!r}.")
    m = int(round(float(fraction) * n))
    if not 1 <= m < n:
        raise ValueError(f"fraction must keep between 1 and {n - 1} of the {n} training rows; "
                         f"got fraction={fraction!r} ({m} rows).")
    rng = check_random_state(random_state)
    scores = dense_scores(explainer, X_test, y_test, scores)
    subsets = draw_subsets(rng, n, n_subsets, m)
    nets = retrain(explainer.net_, np.asarray(X), np.asarray(y), subsets,
                   draw_seeds(rng, n_subsets), refit=refit, n_jobs=n_jobs, verbose=verbose)
    return lds_from_nets(explainer, nets, subsets, X_test, y_test, scores)


def lds_from_nets(explainer, nets: Sequence, subsets: np.ndarray, X_test, y_test,
                  scores: np.ndarray) -> Bunch:
    """The LDS of ``scores`` given the nets retrained on each subset (``nets[s]`` on the rows
    ``subsets[s]``); see :func:`linear_datamodeling_score`."""
    n = explainer.n_train_
    Xt, yt = explainer.as_engine_input(X_test, y_test)
    base = _test_losses(explainer.net_, Xt, yt)
    predicted = np.empty((len(subsets), scores.shape[0]))
    actual = np.empty_like(predicted)
    for s, (keep, net) in enumerate(zip(subsets, nets)):
        left_out = np.ones(n, dtype=bool)
        left_out[keep] = False
        predicted[s] = base + scores[:, left_out].sum(axis=1)
        actual[s] = _test_losses(net, Xt, yt)
    per_test = np.array([_spearman(predicted[:, i], actual[:, i])
                         for i in range(scores.shape[0])])
    if np.all(np.isnan(per_test)):
        raise ValueError("the LDS is undefined: every test point's loss is constant over the "
                         "subsets (or its predicted loss is).")
    return Bunch(score=float(np.nanmean(per_test)), per_test=per_test, predicted=predicted,
                 actual=actual, subsets=subsets)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's correlation, NaN (not a warning) when either side is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])
