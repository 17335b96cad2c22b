"""CandidateRecallDisplay: recall of the candidate shortlists against their size."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._base import BASELINE_COLOR, check_1d, import_pyplot, new_or_given_ax

_RANK_KINDS = ("helpful", "harmful", "abs")


def _true_top(scores: np.ndarray, m: int, kind: str) -> np.ndarray:
    key = {"helpful": -scores, "harmful": scores, "abs": -np.abs(scores)}[kind]
    return np.argsort(key, axis=1, kind="stable")[:, :m]


class CandidateRecallDisplay:
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

        Scores every training point for each query (with the explainer's own iHVPs, as
        :func:`sk_fastif.metrics.candidate_recall` does, so only the pruning is measured) and
        queries the fitted selector once for the largest ``k``; the shortlist of size ``k`` is
        the ``k`` nearest of those (nearest first). Costs one pass over the training gradients.

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
        >>> disp.recall[5][-1]  # a shortlist of all 60 points holds the whole top 5
        1.0
        """
        if kind not in _RANK_KINDS:
            raise ValueError(f"kind must be one of {_RANK_KINDS}; got {kind!r}.")
        selector = getattr(explainer, "candidates_", None)
        if selector is None:
            raise ValueError(
                "the explainer has no candidates: there is no shortlist to measure. Set "
                "candidates=NNDescentCandidates(...) and fit again."
            )
        n_train = int(explainer.n_train_)
        if n_neighbors is None:
            n_neighbors = np.unique(np.geomspace(1, n_train, 12).round().astype(np.int64))
        ks = check_1d("n_neighbors", n_neighbors, dtype=np.int64)
        tops = [top] if np.ndim(top) == 0 else list(top)
        for value, what in [(k, "n_neighbors") for k in ks] + [(m, "top") for m in tops]:
            if not 1 <= int(value) <= n_train:
                raise ValueError(f"{what} must hold integers in [1, n_train={n_train}]; got "
                                 f"{value!r}.")
        Xt, yt = explainer.as_engine_input(X, y)
        engine = explainer.parallel_engine()
        scores = engine.score_rows(engine.factors(engine.gradients(Xt, yt)).solution)
        shortlist, _ = selector.kneighbors(explainer.net_, Xt, n_neighbors=int(ks.max()))
        recall = {}
        for m in tops:
            truth = _true_top(scores, int(m), kind)
            recall[int(m)] = [
                float(np.mean([len(np.intersect1d(t, c[:k])) / int(m)
                               for t, c in zip(truth, shortlist)]))
                for k in ks
            ]
        return cls(ks, recall, n_train=n_train, name=name).plot(ax=ax)

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
        ax = new_or_given_ax(ax)
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
        self.ax_, self.figure_ = ax, ax.figure
        return self
