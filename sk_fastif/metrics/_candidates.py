"""Recall of candidate shortlists against exhaustive scoring, in one place.

FastIF's ``R@m = |shortlist(z) ∩ top_m(z)| / m``: the share of a query's ``m`` truly most
influential training points that its shortlist holds. :func:`candidate_recall` measures it at
the selector's own shortlist size (what :meth:`~sk_fastif.InfluenceExplainer.audit_candidates`
reports); :func:`candidate_recall_curve` at several sizes (what
:class:`~sk_fastif.plotting.CandidateRecallDisplay` draws). Both score every training point and
shortlist with the same iHVPs, through the explainer's scoring pipeline, so only the pruning
is measured.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.utils import Bunch, check_random_state

from .. import _inputs as rows_of
from .. import _validation as val
from .._ranking import top_k

__all__ = ["candidate_recall", "candidate_recall_curve"]

_NO_CANDIDATES = (
    "the explainer has no candidates: there is no shortlist to {what}. Set "
    "candidates=NNDescentCandidates(...) and fit again."
)


def _check_selector(explainer, what: str):
    selector = getattr(explainer, "candidates_", None)
    if selector is None:
        raise ValueError(_NO_CANDIDATES.format(what=what))
    return selector


def _check_sizes(name: str, values: list, n_train: int | None, given) -> None:
    """Each value an integer in ``[1, n_train]`` (any integer when ``n_train`` is None)."""
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or (
            n_train is not None and not 1 <= v <= n_train
        ):
            raise ValueError(f"{name} must hold integers in [1, n_train={n_train}]; got "
                             f"{given!r}.")


def _scores_and_shortlists(explainer, Xt, yt, n_neighbors: int | None = None):
    """Exhaustive scores of the queries and their shortlists, from one solve of their iHVPs."""
    engine = explainer.parallel_engine()
    dense = engine.scores(Xt, yt)
    shortlist = engine.shortlist(explainer.candidates_, Xt, dense.solve.solution,
                                 n_neighbors=n_neighbors)
    return dense.values, shortlist


def _recall_at(order: np.ndarray, shortlist: np.ndarray, m: int, k: int) -> np.ndarray:
    """``R@m`` of each query for the first ``k`` of its shortlist, shape ``(n_queries,)``.

    ``order`` holds each query's true ranking (at least ``m`` columns, best first).
    """
    hits = [len(np.intersect1d(o[:m], c[:k], assume_unique=True))
            for o, c in zip(order, shortlist)]
    return np.asarray(hits, dtype=np.float64) / m


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
    val.check_kind(kind)
    tops = [top] if isinstance(top, (int, np.integer)) else list(top)
    _check_sizes("top", tops, getattr(explainer, "n_train_", None), top)
    _check_selector(explainer, "audit")
    Xt, yt = explainer.as_engine_input(X, y)
    sample = np.arange(len(yt))
    if max_samples is not None and len(yt) > max_samples:
        rng = check_random_state(random_state)
        sample = np.sort(rng.choice(len(yt), size=max_samples, replace=False))
        Xt, yt = rows_of.take(Xt, sample), yt[torch.as_tensor(sample, device=yt.device)]
    scores, shortlist = _scores_and_shortlists(explainer, Xt, yt)
    order, _ = top_k(scores, max(tops), kind)
    k = shortlist.shape[1]
    per_query = {int(m): _recall_at(order, shortlist, int(m), k) for m in tops}
    return Bunch(
        recall={m: float(v.mean()) for m, v in per_query.items()},
        recall_per_query=per_query,
        n_neighbors=int(k),
        random_baseline=k / scores.shape[1],
        sample_indices=sample,
    )


def candidate_recall_curve(explainer, X, y=None, *, n_neighbors=None, top=10,
                           kind: str = "helpful"):
    """Recall of an explainer's selector at several shortlist sizes.

    Scores every training point for each query of ``X`` and asks the fitted selector once for
    the largest size ``k`` (the same iHVPs for both, as :func:`candidate_recall` does, so only
    the pruning is measured); the shortlist of size ``k`` is the first ``k`` of that one, best
    first. For each ``m`` of ``top`` and each ``k``, the mean over the queries of
    ``R@m = |shortlist_k(z) ∩ top_m(z)| / m``. At the selector's own ``n_neighbors`` it is
    :func:`candidate_recall`'s ``recall[m]`` (for a selector whose shorter shortlists are the
    first rows of its longer ones: exact search, gradient sketches). Costs one pass over the
    training gradients.

    Parameters
    ----------
    explainer : InfluenceExplainer
        Fitted, with ``candidates`` set.
    X : array-like of shape (n_test, n_features)
        The queries.
    y : array-like of shape (n_test,) or None, default=None
        Their targets; ``None`` uses the predicted labels.
    n_neighbors : array-like of int of shape (n_sizes,), default=None
        The shortlist sizes ``k``, each in ``[1, n_train]``, in the order to report them;
        None uses a log-spaced grid from 1 to ``n_train``.
    top : int or sequence of int, default=10
        The values of ``m``, each in ``[1, n_train]``.
    kind : {"helpful", "harmful", "abs"}, default="helpful"
        Which top-``m`` to recall: highest scores, lowest scores or largest magnitudes.

    Returns
    -------
    result : sklearn.utils.Bunch
        ``n_neighbors``: ndarray of shape (n_sizes,), the sizes ``k``;
        ``recall``: dict ``m -> ndarray of shape (n_sizes,)``, the mean ``R@m`` at each ``k``;
        ``recall_per_query``: dict ``m -> ndarray of shape (n_queries, n_sizes)``;
        ``n_train``: the number of training points;
        ``random_baseline``: ndarray ``k / n_train``, the expected ``R@m`` of a random
        shortlist of each size.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.metrics import candidate_recall_curve
    >>> from sk_fastif.neighbors import ExactCandidates
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(60, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
    >>> expl = InfluenceExplainer(net, solver=Exact(damping=1e-2),
    ...                           candidates=ExactCandidates(20, embedding="input")).fit(X, y)
    >>> curve = candidate_recall_curve(expl, X[:5], n_neighbors=[5, 60], top=5)
    >>> curve.random_baseline.tolist()
    [0.08333333333333333, 1.0]
    >>> float(curve.recall[5][-1])  # a shortlist of all 60 points holds the whole top 5
    1.0
    """
    val.check_kind(kind)
    _check_selector(explainer, "measure")
    n_train = int(explainer.n_train_)
    if n_neighbors is None:
        n_neighbors = np.unique(np.geomspace(1, n_train, 12).round().astype(np.int64))
    ks = np.asarray(n_neighbors)
    if ks.ndim != 1 or ks.size == 0 or not np.issubdtype(ks.dtype, np.integer):
        raise ValueError(f"n_neighbors must hold integers in [1, n_train={n_train}] (a "
                         f"non-empty 1-D array); got {n_neighbors!r}.")
    ks = ks.astype(np.int64)
    _check_sizes("n_neighbors", ks.tolist(), n_train, n_neighbors)
    tops = [top] if isinstance(top, Integral) else list(top)
    _check_sizes("top", tops, n_train, top)
    Xt, yt = explainer.as_engine_input(X, y)
    scores, shortlist = _scores_and_shortlists(explainer, Xt, yt, n_neighbors=int(ks.max()))
    order, _ = top_k(scores, max(tops), kind)
    per_query = {
        int(m): np.stack([_recall_at(order, shortlist, int(m), int(k)) for k in ks], axis=1)
        for m in tops
    }
    return Bunch(
        n_neighbors=ks,
        # column by column, as candidate_recall averages: the same float at the same k
        recall={m: np.array([np.ascontiguousarray(c).mean() for c in v.T])
                for m, v in per_query.items()},
        recall_per_query=per_query,
        n_train=n_train,
        random_baseline=ks / float(n_train),
    )
