"""CandidateRecallDisplay: recall of the candidate shortlists against their size."""

from __future__ import annotations

from collections.abc import Mapping

from ..metrics import candidate_recall_curve
from ._base import BASELINE_COLOR, DisplayAxesMixin, check_1d, import_pyplot


class CandidateRecallDisplay(DisplayAxesMixin):
    """FastIF's recall plot: how much of the true top-``m`` a shortlist of ``k`` points holds.

    For each shortlist size ``k`` (the selector's ``n_neighbors``), the mean over the queries of
    ``R@m = |shortlist_k(z) ∩ top_m(z)| / m``, against the random baseline ``k / n_train`` (the
    expected recall of a shortlist drawn at random). ``R@m`` cannot exceed ``min(1, k / m)``.

    Parameters
    ----------
    n_neighbors : array-like of int of shape (n_sizes,)
        The shortlist sizes ``k``.
    recall : mapping of int to array-like of shape (n_sizes,)
        For each ``m``, the mean ``R@m`` at each ``k``.
    n_train : int
        Number of training points (for the random baseline).
    name : str, default=None
        Legend prefix (e.g. the embedding).

    Attributes
    ----------
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    lines_ : dict of int to matplotlib Line2D
        One curve per ``m``.
    baseline_line_ : matplotlib Line2D
        The random baseline ``k / n_train``.

    Examples
    --------
    >>> from sk_fastif.plotting import CandidateRecallDisplay
    >>> disp = CandidateRecallDisplay([10, 50, 100], {10: [0.4, 0.8, 0.9]}, n_train=1000).plot()
    >>> disp.baseline_line_.get_ydata().tolist()
    [0.01, 0.05, 0.1]
    """

    def __init__(self, n_neighbors, recall, *, n_train, name=None):
        self.n_neighbors = n_neighbors
        self.recall = recall
        self.n_train = n_train
        self.name = name

    @classmethod
    def from_explainer(cls, explainer, X, y=None, *, n_neighbors=None, top=10,
                       kind: str = "helpful", name=None, ax=None) -> CandidateRecallDisplay:
        """Measure the recall of a fitted explainer's selector at several shortlist sizes.

        The recall is :func:`sk_fastif.metrics.candidate_recall_curve`'s (every training point
        scored for each query, with the same iHVPs as the shortlists, so only the pruning is
        measured; the fitted selector queried once for the largest ``k``, the shortlist of size
        ``k`` the first ``k`` of that one); :meth:`from_recall` draws it. Costs one pass over
        the training gradients.

        Parameters
        ----------
        explainer : InfluenceExplainer
            Fitted, with ``candidates`` set.
        X : array-like of shape (n_test, ...)
            The queries.
        y : array-like of shape (n_test,), default=None
            Their labels; None uses the predicted labels.
        n_neighbors : array-like of int, default=None
            Shortlist sizes, each in ``[1, n_train]``; None uses a log-spaced grid from 1 to
            ``n_train``.
        top : int or sequence of int, default=10
            The values of ``m``.
        kind : {"helpful", "harmful", "abs"}, default="helpful"
            Which top-``m`` to recall: highest scores, lowest scores or largest magnitudes.
        name : str, default=None
            Legend prefix.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : CandidateRecallDisplay

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skorch import NeuralNetClassifier
        >>> from sk_fastif import InfluenceExplainer
        >>> from sk_fastif.neighbors import ExactCandidates
        >>> from sk_fastif.plotting import CandidateRecallDisplay
        >>> from sk_fastif.solvers import Exact
        >>> rng = np.random.RandomState(0)
        >>> X = rng.randn(60, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
        >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
        ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
        >>> expl = InfluenceExplainer(net, solver=Exact(damping=1e-2),
        ...                           candidates=ExactCandidates(20, embedding="input")).fit(X, y)
        >>> disp = CandidateRecallDisplay.from_explainer(expl, X[:5], n_neighbors=[5, 60], top=5)
        >>> float(disp.recall[5][-1])  # a shortlist of all 60 points holds the whole top 5
        1.0
        """
        result = candidate_recall_curve(explainer, X, y, n_neighbors=n_neighbors, top=top,
                                        kind=kind)
        return cls.from_recall(result.n_neighbors, result.recall, n_train=result.n_train,
                               name=name, ax=ax)

    @classmethod
    def from_recall(cls, n_neighbors, recall, *, n_train, name=None,
                    ax=None) -> CandidateRecallDisplay:
        """Draw recall already computed, e.g. by :func:`~sk_fastif.metrics.candidate_recall_curve`.

        Parameters
        ----------
        n_neighbors : array-like of int of shape (n_sizes,)
            The shortlist sizes ``k``.
        recall : mapping of int to array-like of shape (n_sizes,)
            For each ``m``, the mean ``R@m`` at each ``k``.
        n_train : int
            Number of training points (for the random baseline ``k / n_train``).
        name : str, default=None
            Legend prefix.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : CandidateRecallDisplay

        Examples
        --------
        >>> from sk_fastif.plotting import CandidateRecallDisplay
        >>> disp = CandidateRecallDisplay.from_recall([10, 100], {10: [0.5, 0.9]}, n_train=200,
        ...                                           name="input")
        >>> disp.lines_[10].get_label(), disp.baseline_line_.get_ydata().tolist()
        ('input: R@10', [0.05, 0.5])
        """
        return cls(n_neighbors, recall, n_train=n_train, name=name).plot(ax=ax)

    def plot(self, ax=None) -> CandidateRecallDisplay:
        """Draw the recall curves and the random baseline.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        display : CandidateRecallDisplay
            ``self``, with ``ax_``, ``figure_``, ``lines_`` and ``baseline_line_`` set.

        Examples
        --------
        >>> from sk_fastif.plotting import CandidateRecallDisplay
        >>> disp = CandidateRecallDisplay([1, 4], {1: [0.5, 1.0]}, n_train=4).plot()
        >>> disp.lines_[1].get_ydata().tolist()
        [0.5, 1.0]
        """
        import_pyplot()
        ks = check_1d("n_neighbors", self.n_neighbors)
        if not isinstance(self.recall, Mapping) or not self.recall:
            raise TypeError("recall must be a non-empty mapping of m to recall values.")
        ax = self._plot_axes(ax)
        prefix = "" if self.name is None else f"{self.name}: "
        self.lines_ = {}
        for m, values in self.recall.items():
            values = check_1d(f"recall[{m}]", values, length=len(ks))
            (self.lines_[m],) = ax.plot(ks, values, marker="o", label=f"{prefix}R@{m}")
        label = "random shortlist (k / n)"
        if any(line.get_label() == label for line in ax.get_lines()):
            label = "_" + label  # drawn once already on this Axes: one legend entry
        self.baseline_line_, = ax.plot(ks, ks / float(self.n_train), color=BASELINE_COLOR,
                                       linestyle="--", label=label)
        ax.set_xscale("log")
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel("n_neighbors (shortlist size k)")
        ax.set_ylabel("recall of the true top m")
        ax.legend(fontsize=8)
        return self
