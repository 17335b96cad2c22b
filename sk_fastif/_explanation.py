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

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(60, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
    >>> ex = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y).explain(X[:2], k=3)
    >>> len(ex), ex.k, ex.helpful_indices.shape
    (2, 3, (2, 3))
    >>> bool((ex.helpful_scores[:, 0] > 0).all() and (ex.harmful_scores[:, 0] < 0).all())
    True
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
        """Number of points listed per kind.

        Examples
        --------
        >>> import numpy as np
        >>> from sk_fastif import Explanation
        >>> Explanation(np.zeros((1, 4), int), np.zeros((1, 4)), np.zeros((1, 4), int),
        ...             np.zeros((1, 4))).k
        4
        """
        return int(self.helpful_indices.shape[1])

    def __len__(self) -> int:
        return int(self.helpful_indices.shape[0])

    def to_frame(self, X=None):
        """Return a tidy :class:`pandas.DataFrame`, one row per test point × kind × rank.

        Columns: ``test_index``, ``kind`` (``"helpful"`` or ``"harmful"``), ``rank`` (1 = most),
        ``train_index``, ``score`` and, when known, ``train_label`` and ``test_label``.

        Parameters
        ----------
        X : array-like, dict of arrays or None, default=None
            The training inputs (as passed to ``fit``), to show each listed training point's
            features next to its score: a DataFrame's columns keep their names, a 2-D array's
            columns are named ``x0, x1, ...``, and a 1-D sequence (e.g. texts) becomes one
            column ``train_x``. Samples of higher rank (images ``(C, H, W)``, token
            sequences in a 3-D array) are not spread over one column per pixel: column
            ``train_x`` holds each sample's own array, ready for plotting
            (:class:`~sk_fastif.plotting.InfluenceDisplay` draws image thumbnails). A dict
            gives one column per key, each cell the row's value (e.g. its token ids).

        Returns
        -------
        frame : pandas.DataFrame

        Examples
        --------
        >>> import numpy as np
        >>> from sk_fastif import Explanation
        >>> ex = Explanation(helpful_indices=np.array([[2]]), helpful_scores=np.array([[0.5]]),
        ...                  harmful_indices=np.array([[0]]), harmful_scores=np.array([[-0.1]]))
        >>> ex.to_frame(X=np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]))
           test_index     kind  rank  train_index  score   x0    x1
        0           0  harmful     1            0   -0.1  1.0  10.0
        1           0  helpful     1            2    0.5  3.0  30.0
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "Explanation.to_frame needs pandas, which sk_fastif does not require: "
                "pip install pandas (or the extra: pip install 'sk_fastif[pandas]')."
            ) from None

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
        frame = frame.sort_values(["test_index", "kind", "rank"], kind="stable").reset_index(
            drop=True
        )
        if X is None:
            return frame
        return pd.concat([frame, self._train_rows(X, frame["train_index"].to_numpy())], axis=1)

    def _train_rows(self, X, rows: np.ndarray):
        """The rows ``rows`` of the training inputs ``X`` as a DataFrame indexed 0..len(rows)."""
        import pandas as pd

        if isinstance(X, dict):  # one column per input, a row's value in each cell
            n = len(next(iter(X.values())))
        else:
            n = len(X)
        if self.train_labels is not None and n != len(self.train_labels):
            raise ValueError(
                f"X has {n} rows but the explanation's training set has "
                f"{len(self.train_labels)}: pass the training inputs the explainer was fitted on."
            )
        if rows.size and rows.max() >= n:
            raise ValueError(
                f"X has {n} rows but the explanation lists training index {int(rows.max())}: "
                "pass the training inputs the explainer was fitted on."
            )
        if isinstance(X, dict):
            out = pd.DataFrame({str(k): _cells(np.asarray(v), rows) for k, v in X.items()})
        elif isinstance(X, pd.DataFrame):
            out = X.iloc[rows].reset_index(drop=True)
            out.columns = [str(c) for c in out.columns]
        elif isinstance(X, pd.Series):
            out = pd.DataFrame({"train_x": X.iloc[rows].to_numpy()})
        else:
            try:
                arr = np.asarray(X)
            except ValueError:  # a ragged sequence (e.g. token lists): one object per row
                arr = np.empty(n, dtype=object)
                arr[:] = list(X)
            if arr.ndim == 1:
                out = pd.DataFrame({"train_x": arr[rows]})
            elif arr.ndim == 2:
                out = pd.DataFrame(arr[rows], columns=[f"x{j}" for j in range(arr.shape[1])])
            else:  # images and other samples of rank >= 2: the sample itself in one cell
                out = pd.DataFrame({"train_x": _cells(arr, rows)})
        clash = sorted(set(out.columns) & {"test_index", "kind", "rank", "train_index", "score",
                                           "train_label", "test_label"})
        if clash:
            raise ValueError(
                f"X has columns named like the explanation's own columns: {clash}; rename them."
            )
        return out


def _cells(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``arr[rows]`` with one cell per row: a scalar, or the row's array (an object column)."""
    if arr.ndim == 1:
        return arr[rows]
    cells = np.empty(len(rows), dtype=object)
    cells[:] = [arr[r] for r in rows]
    return cells
