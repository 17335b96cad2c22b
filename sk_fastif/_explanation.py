"""The result of :meth:`InfluenceExplainer.explain`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIGN_CONVENTION = (
    "score(z, z_j) = (1/n) g(z)^T (H + damping I)^{-1} g(z_j): the estimated rise of the loss on "
    "test point z if training point z_j were left out. Positive = helpful, negative = harmful. "
    "Koh & Liang's and FastIF's I_up,loss equals -n * score."
)


@dataclass
class Explanation:
    """Most helpful and most harmful training points for each explained test point.

    Scores follow the library's one convention: ``score(z, z_j) = (1/n) g(z)ᵀ (H + λI)⁻¹ g(z_j)``,
    the estimated rise of the loss on the test point ``z`` if training point ``z_j`` were left out
    of training. **Positive = helpful** (the point supports the prediction), **negative =
    harmful**. Koh & Liang's and FastIF's ``I_up,loss`` equals ``-n * score``.

    Attributes
    ----------
    helpful_indices : ndarray of shape (n_test, k)
        Training-set row indices of the ``k`` highest scores, best first.
    helpful_scores : ndarray of shape (n_test, k)
        Their scores (descending). If fewer than ``k`` points have a positive score, the last
        entries are not helpful in the strict sense: check the sign.
    harmful_indices : ndarray of shape (n_test, k)
        Training-set row indices of the ``k`` lowest scores, most harmful first.
    harmful_scores : ndarray of shape (n_test, k)
        Their scores (ascending).
    test_labels : ndarray of shape (n_test,)
        The label each test point was explained for (the predicted label when ``y=None``).
    train_labels : ndarray of shape (n_train,) or None
        Labels of the training set, used by :meth:`to_frame`.
    sign_convention : str
        The convention above, in words.
    """

    helpful_indices: np.ndarray
    helpful_scores: np.ndarray
    harmful_indices: np.ndarray
    harmful_scores: np.ndarray
    test_labels: np.ndarray | None = None
    train_labels: np.ndarray | None = field(default=None, repr=False)
    sign_convention: str = field(default=SIGN_CONVENTION, repr=False)

    @property
    def k(self) -> int:
        """Number of points listed per kind."""
        return int(self.helpful_indices.shape[1])

    def __len__(self) -> int:
        return int(self.helpful_indices.shape[0])

    def to_frame(self):
        """Return a tidy :class:`pandas.DataFrame`, one row per test point × kind × rank.

        Columns: ``test_index``, ``kind`` (``"helpful"`` or ``"harmful"``), ``rank`` (1 = most),
        ``train_index``, ``score`` and, when known, ``train_label`` and ``test_label``.

        Returns
        -------
        frame : pandas.DataFrame
        """
        import pandas as pd

        n_test, k = self.helpful_indices.shape
        parts = []
        for kind, idx, sc in (
            ("helpful", self.helpful_indices, self.helpful_scores),
            ("harmful", self.harmful_indices, self.harmful_scores),
        ):
            part = {
                "test_index": np.repeat(np.arange(n_test), k),
                "kind": np.full(n_test * k, kind),
                "rank": np.tile(np.arange(1, k + 1), n_test),
                "train_index": idx.reshape(-1),
                "score": sc.reshape(-1),
            }
            if self.train_labels is not None:
                part["train_label"] = np.asarray(self.train_labels)[idx.reshape(-1)]
            if self.test_labels is not None:
                part["test_label"] = np.repeat(np.asarray(self.test_labels), k)
            parts.append(pd.DataFrame(part))
        frame = pd.concat(parts, ignore_index=True)
        return frame.sort_values(["test_index", "kind", "rank"], kind="stable").reset_index(
            drop=True
        )
