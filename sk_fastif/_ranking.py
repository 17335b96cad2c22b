"""The one top-k ranking of influence scores, and the sparse form of candidate scores.

Scores arrive either dense, one column per training point, or as candidate blocks: ``values``
of shape ``(m, kc)`` with ``pool`` holding the training-set index of each column. Every ranking in
the package (explanations, metrics, scorers) goes through :func:`top_k`; the CSR matrix a user
sees is built only at the public edge by :func:`candidates_to_csr`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _validation as val
from ._explanation import Explanation

__all__ = ["candidates_to_csr", "csr_to_candidates", "explanation", "top_k"]


def _sort_key(scores: np.ndarray, kind: str) -> np.ndarray:
    val.check_kind(kind)
    if kind == "helpful":
        return -scores
    if kind == "harmful":
        return scores
    return -np.abs(scores)


def top_k(scores, k: int, kind: str = "helpful", pool=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` top entries of each row, best first.

    Parameters
    ----------
    scores : ndarray of shape (m, n_cols)
        Influence scores.
    k : int
        How many per row (at most ``n_cols``).
    kind : {"helpful", "harmful", "abs"}, default="helpful"
        Highest scores, lowest scores, or largest magnitudes. Ties keep the column order.
    pool : ndarray of shape (m, n_cols) or None, default=None
        The training-set index of each column (candidate scores); None: column ``j`` is
        training point ``j``.

    Returns
    -------
    indices : ndarray of shape (m, k), int64
        Training-set indices.
    values : ndarray of shape (m, k)
        Their scores.
    """
    scores = np.asarray(scores)
    order = np.argsort(_sort_key(scores, kind), axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(scores, order, axis=1)
    if pool is not None:
        order = np.take_along_axis(np.asarray(pool), order, axis=1)
    return order.astype(np.int64, copy=False), values


def explanation(scores, k: int, *, pool=None, test_labels=None, train_labels=None
                ) -> Explanation:
    """The :class:`Explanation` of the ``k`` most helpful and most harmful points per row."""
    helpful, helpful_scores = top_k(scores, k, "helpful", pool)
    harmful, harmful_scores = top_k(scores, k, "harmful", pool)
    return Explanation(
        helpful_indices=helpful,
        helpful_scores=helpful_scores,
        harmful_indices=harmful,
        harmful_scores=harmful_scores,
        test_labels=test_labels,
        train_labels=train_labels,
    )


def candidates_to_csr(values: np.ndarray, pool: np.ndarray, n_train: int) -> sp.csr_matrix:
    """CSR matrix of candidate scores; ``pool`` rows must be sorted (explicit zeros are kept)."""
    m, kc = pool.shape
    return sp.csr_matrix(
        (values.ravel(), pool.ravel(), np.arange(0, m * kc + 1, kc)), shape=(m, n_train)
    )


def csr_to_candidates(scores) -> tuple[np.ndarray, np.ndarray]:
    """``(values, pool)`` of a CSR matrix holding the same number of candidates in every row."""
    scores = sp.csr_matrix(scores)
    m = scores.shape[0]
    kc = scores.indptr[1] - scores.indptr[0] if m else 0
    if kc == 0 or np.any(np.diff(scores.indptr) != kc):
        raise ValueError("expected the same number of candidates in every row of the scores.")
    return scores.data.reshape(m, kc), scores.indices.reshape(m, kc).astype(np.int64)


def as_matrix(scores):
    """The matrix of a :class:`~sk_fastif.InfluenceEngine.scores` result: the dense array, or a
    CSR matrix holding exactly each row's candidates (sorted, explicit zeros kept)."""
    if scores.candidates is None:
        return scores.values
    return candidates_to_csr(scores.values, scores.candidates, scores.n_data)
