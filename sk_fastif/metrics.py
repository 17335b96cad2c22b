"""Metrics on influence scores: agreement between solvers, top-k overlap, solver residuals,
recall of candidate shortlists."""

from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau, pearsonr, spearmanr

__all__ = [
    "candidate_recall",
    "influence_agreement",
    "relative_residual_score",
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
    key = {"helpful": lambda s: -s, "harmful": lambda s: s, "abs": lambda s: -np.abs(s)}
    if kind not in key:
        raise ValueError(f"kind must be 'helpful', 'harmful' or 'abs'; got {kind!r}.")
    top_a = np.argsort(key[kind](a), axis=1, kind="stable")[:, :k]
    top_b = np.argsort(key[kind](b), axis=1, kind="stable")[:, :k]
    return float(np.mean([len(np.intersect1d(x, z)) / k for x, z in zip(top_a, top_b)]))


def relative_residual_score(explainer, X, y=None) -> float:
    """Minus the mean relative residual of the explainer's iHVPs on (X, y); 0 is exact.

    The same as ``explainer.score(X, y)``, usable as ``scoring=`` in a grid search.
    """
    return explainer.score(X, y)


def candidate_recall(explainer, X, y=None, *, top=(10, 100), kind: str = "helpful"):
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

    Returns
    -------
    result : sklearn.utils.Bunch
        ``recall``: dict ``m -> mean R@m`` over the queries (float);
        ``recall_per_query``: dict ``m -> ndarray of shape (n_test,)``;
        ``n_neighbors``: the shortlist size ``k``;
        ``random_baseline``: ``k / n_train``, the expected ``R@m`` of a random shortlist.

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

    key = {"helpful": lambda s: -s, "harmful": lambda s: s, "abs": lambda s: -np.abs(s)}
    if kind not in key:
        raise ValueError(f"kind must be 'helpful', 'harmful' or 'abs'; got {kind!r}.")
    tops = [top] if isinstance(top, (int, np.integer)) else list(top)
    n_train = getattr(explainer, "n_train_", None)
    for m in tops:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or (
            n_train is not None and not 1 <= m <= n_train
        ):
            raise ValueError(f"top must hold integers in [1, n_train={n_train}]; got {top!r}.")
    scores, shortlist = explainer._audit_scores(X, y)
    order = np.argsort(key[kind](scores), axis=1, kind="stable")
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
    )
