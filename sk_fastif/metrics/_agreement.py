"""Agreement metrics on arrays only: two influence matrices, or a ranking and planted flips.

:func:`influence_agreement` and :func:`top_k_overlap` compare two influence matrices of the same
queries and training points (e.g. an approximate solver's and an exact one's);
:func:`mislabel_detection_curve` rates a ranking of the training points by how fast it finds
planted label flips. None of them needs an explainer: they take the numbers it produced.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau, pearsonr, spearmanr
from sklearn.metrics import auc as area_under

from .. import _validation as val
from .._ranking import top_k

__all__ = ["influence_agreement", "mislabel_detection_curve", "top_k_overlap"]

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
    return mean_overlap(top_k(a, k, kind)[0], top_k(b, k, kind)[0])


def mean_overlap(top_a: np.ndarray, top_b: np.ndarray) -> float:
    """Mean fraction of each row of ``top_b`` found in the same row of ``top_a``.

    The overlap of two top lists already ranked (by :func:`top_k_overlap`, or by a scorer
    that ranks candidates among a shortlist).

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.metrics._agreement import mean_overlap
    >>> mean_overlap(np.array([[0, 1], [2, 3]]), np.array([[1, 5], [3, 2]]))
    0.75
    """
    k = top_b.shape[1]
    return float(np.mean([len(np.intersect1d(x, z)) / k for x, z in zip(top_a, top_b)]))


def mislabel_detection_curve(scores, is_flipped) -> tuple[np.ndarray, np.ndarray, float]:
    """Fraction of the flipped labels found against the fraction of the data inspected.

    The points are inspected in decreasing order of ``scores`` (highest first: for
    :meth:`~sk_fastif.InfluenceExplainer.self_influence`, or a training loss, the most
    suspicious first). Tied scores are inspected together: the curve goes straight across a
    tie, so no order among them is favoured.

    Parameters
    ----------
    scores : array-like of shape (n_samples,)
        Finite suspicion scores, higher = inspected earlier.
    is_flipped : array-like of shape (n_samples,), bool
        True for the points whose label was flipped (at least one). For the indices
        :func:`sk_fastif.datasets.flip_labels` returns, ``np.isin(np.arange(n), flipped)``.

    Returns
    -------
    fraction_inspected : ndarray of shape (n_thresholds + 1,)
        Fraction of the points inspected, from 0 to 1, increasing.
    fraction_found : ndarray of shape (n_thresholds + 1,)
        Fraction of the flipped points among them, from 0 to 1.
    auc : float
        Area under the curve: about 0.5 for a random order; ``1 - p / 2`` (its largest value)
        when the fraction ``p`` of flipped points all come first.
        ``np.interp(0.2, fraction_inspected, fraction_found)`` is the fraction found in the
        top 20%.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.metrics import mislabel_detection_curve
    >>> inspected, found, auc = mislabel_detection_curve(
    ...     [0.9, 0.1, 0.8, 0.2], [True, False, True, False])
    >>> inspected.tolist(), found.tolist(), auc
    ([0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.5, 1.0, 1.0, 1.0], 0.75)
    """
    scores = np.asarray(scores, dtype=np.float64)
    flipped = np.asarray(is_flipped)
    if scores.ndim != 1 or flipped.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} and is_flipped {flipped.shape} must be 1-D "
                         "arrays of the same length.")
    if flipped.dtype != bool:
        if not np.all(np.isin(flipped, (0, 1))):
            raise ValueError("is_flipped must be a boolean mask (one entry per point), not "
                             "indices: build it from them, e.g. np.isin(np.arange(n), flipped).")
        flipped = flipped.astype(bool)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite.")
    if not flipped.any():
        raise ValueError("is_flipped marks no point: there is nothing to find.")
    order = np.argsort(-scores, kind="stable")
    s, f = scores[order], flipped[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last point of each tie group
    found = np.cumsum(f)[ends]
    fraction_inspected = np.r_[0.0, (ends + 1) / len(s)]
    fraction_found = np.r_[0.0, found / found[-1]]
    return fraction_inspected, fraction_found, float(area_under(fraction_inspected,
                                                                fraction_found))


