"""InfluenceGraphDisplay: FastIF's picture of which training points influence which test points."""

from __future__ import annotations

import numpy as np

from .. import _ranking as ranking
from ._base import (
    HARMFUL_COLOR,
    HELPFUL_COLOR,
    DisplayAxesMixin,
    check_1d,
    import_pyplot,
)

_EDGE_KINDS = ("both", "helpful", "harmful")
SHARED_COLOR = "black"


def _edges_from_lists(pairs, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``(test, train, score)`` from ``[(indices, scores, sign)]`` lists, one per pair."""
    if kind not in _EDGE_KINDS:
        raise ValueError(f"kind must be one of {_EDGE_KINDS}; got {kind!r}.")
    rows, cols, vals = [], [], []
    for name, idx, sc in pairs:
        if kind not in ("both", name):
            continue
        idx, sc = np.asarray(idx), np.asarray(sc, dtype=np.float64)
        keep = sc > 0 if name == "helpful" else sc < 0
        r, c = np.nonzero(keep)
        rows.append(r)
        cols.append(idx[r, c])
        vals.append(sc[r, c])
    t = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    j = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    s = np.concatenate(vals) if vals else np.zeros(0)
    _, first = np.unique(np.stack([t, j]), axis=1, return_index=True)  # each pair once
    first = np.sort(first)
    return t[first].astype(np.int64), j[first].astype(np.int64), s[first]


class InfluenceGraphDisplay(DisplayAxesMixin):
    """FastIF's influence-interaction graph: which training points act on which test points.

    Test points sit on a circle, in one sector per group (their class, or a grouping of your
    own). Each training point that is among the most helpful or harmful of some test point is
    placed inside the circle at the ``|score|``-weighted mean direction of the test points it
    influences: a training point that acts on one group sits in front of its sector, one shared
    across groups is pulled towards the centre and drawn black. Edges join test and training
    points, green for helpful (score > 0) and red for harmful (score < 0), with widths
    proportional to ``|score|``.

    Parameters
    ----------
    test_index : array-like of int of shape (n_edges,)
        For each edge, the test point (a row ``0 .. n_test - 1`` of ``groups``).
    train_index : array-like of int of shape (n_edges,)
        For each edge, the training point's index.
    scores : array-like of shape (n_edges,)
        The edge's influence score (nonzero).
    groups : array-like of shape (n_test,)
        The group of each test point; each group gets a sector.

    Attributes
    ----------
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    edges_ : matplotlib LineCollection
        One segment per edge, in the order of ``scores``.
    test_points_, train_points_ : matplotlib PathCollection
        The markers of the test and the training points.
    test_positions_ : ndarray of shape (n_test, 2)
    train_nodes_ : ndarray of shape (n_nodes,)
        The distinct training indices drawn (sorted); ``train_positions_`` and ``shared_``
        follow this order.
    train_positions_ : ndarray of shape (n_nodes, 2)
    shared_ : ndarray of bool of shape (n_nodes,)
        Whether the training point influences test points of more than one group.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.plotting import InfluenceGraphDisplay
    >>> scores = np.array([[0.5, -0.2, 0.0], [0.0, 0.3, -0.1]])  # 2 test x 3 training points
    >>> disp = InfluenceGraphDisplay.from_scores(scores, k=1, groups=["cat", "dog"])
    >>> len(disp.edges_.get_segments()), disp.shared_.tolist()
    (4, [False, True, False])
    """

    def __init__(self, test_index, train_index, scores, groups):
        self.test_index = test_index
        self.train_index = train_index
        self.scores = scores
        self.groups = groups

    @classmethod
    def from_explanation(cls, explanation, *, groups=None, kind: str = "both",
                         ax=None) -> InfluenceGraphDisplay:
        """Draw the graph of an :class:`~sk_fastif.Explanation`'s listed points.

        Parameters
        ----------
        explanation : Explanation
            Its helpful points with a positive score and harmful points with a negative one
            become edges.
        groups : array-like of shape (n_test,), default=None
            Sector of each test point; None uses the explained labels (one sector if unknown).
        kind : {"both", "helpful", "harmful"}, default="both"
            Which edges to draw.
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        display : InfluenceGraphDisplay

        Examples
        --------
        >>> import numpy as np
        >>> from sk_fastif import Explanation
        >>> from sk_fastif.plotting import InfluenceGraphDisplay
        >>> ex = Explanation(np.array([[4], [4]]), np.array([[0.2], [0.1]]),
        ...                  np.array([[1], [2]]), np.array([[-0.1], [-0.3]]),
        ...                  test_labels=np.array([0, 1]))
        >>> disp = InfluenceGraphDisplay.from_explanation(ex)
        >>> disp.train_nodes_.tolist(), disp.shared_.tolist()
        ([1, 2, 4], [False, False, True])
        """
        t, j, s = _edges_from_lists(
            [("helpful", explanation.helpful_indices, explanation.helpful_scores),
             ("harmful", explanation.harmful_indices, explanation.harmful_scores)], kind)
        n_test = len(explanation)
        if groups is None:
            groups = (np.zeros(n_test, dtype=np.int64) if explanation.test_labels is None
                      else explanation.test_labels)
        return cls(t, j, s, groups).plot(ax=ax)

    @classmethod
    def from_scores(cls, scores, *, k: int = 5, groups=None, kind: str = "both",
                    ax=None) -> InfluenceGraphDisplay:
        """Draw the graph of each test point's ``k`` most helpful and harmful training points.

        They are ranked as :meth:`InfluenceExplainer.explain` ranks them (ties keep the column
        order), and drawn by :meth:`from_explanation`.

        Parameters
        ----------
        scores : array-like or sparse matrix of shape (n_test, n_train)
            Influence scores, e.g. :meth:`InfluenceExplainer.influences`. Only positive scores
            count as helpful and negative ones as harmful (zeros, such as the entries a sparse
            matrix of candidates leaves out, are never edges).
        k : int, default=5
            Edges per test point and kind.
        groups : array-like of shape (n_test,), default=None
            Sector of each test point; None puts all of them in one.
        kind : {"both", "helpful", "harmful"}, default="both"
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : InfluenceGraphDisplay

        Examples
        --------
        >>> import numpy as np
        >>> from sk_fastif.plotting import InfluenceGraphDisplay
        >>> disp = InfluenceGraphDisplay.from_scores(np.array([[0.3, 0.2, -0.1]]), k=2)
        >>> disp.scores.tolist()  # two helpful edges, then the only harmful one
        [0.3, 0.2, -0.1]
        """
        if hasattr(scores, "toarray"):
            scores = scores.toarray()
        S = np.asarray(scores, dtype=np.float64)
        if S.ndim != 2:
            raise ValueError(f"scores must be 2-D (n_test, n_train); got shape {S.shape}.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        explanation = ranking.explanation(S, min(int(k), S.shape[1]))  # the one top-k
        if groups is None:
            groups = np.zeros(S.shape[0], dtype=np.int64)
        return cls.from_explanation(explanation, groups=groups, kind=kind, ax=ax)

    @classmethod
    def from_explainer(cls, explainer, X, y=None, *, k: int = 5, groups=None,
                       kind: str = "both", ax=None) -> InfluenceGraphDisplay:
        """Explain ``X`` and draw the graph of its ``k`` most helpful and harmful points.

        Parameters
        ----------
        explainer : InfluenceExplainer
            Fitted.
        X : array-like of shape (n_test, ...)
        y : array-like of shape (n_test,), default=None
            Labels to explain; None explains the predicted labels.
        k : int, default=5
        groups : array-like of shape (n_test,), default=None
            Sector of each test point; None uses the explained labels.
        kind : {"both", "helpful", "harmful"}, default="both"
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : InfluenceGraphDisplay

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skorch import NeuralNetClassifier
        >>> from sk_fastif import InfluenceExplainer
        >>> from sk_fastif.plotting import InfluenceGraphDisplay
        >>> from sk_fastif.solvers import Exact
        >>> rng = np.random.RandomState(0)
        >>> X = rng.randn(40, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
        >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
        ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
        >>> expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
        >>> disp = InfluenceGraphDisplay.from_explainer(expl, X[:6], k=3)
        >>> disp.test_positions_.shape
        (6, 2)
        """
        explanation = explainer.explain(X, y, k=k)
        return cls.from_explanation(explanation, groups=groups, kind=kind, ax=ax)

    # ------------------------------------------------------------------------------- drawing
    def _layout(self, t, j, s, group_codes, n_groups):
        n_test = len(group_codes)
        angles = np.empty(n_test)
        gap = 0.25 * 2 * np.pi / n_groups if n_groups > 1 else 0.0
        width = 2 * np.pi / n_groups - gap
        for g in range(n_groups):
            members = np.flatnonzero(group_codes == g)
            start = g * 2 * np.pi / n_groups + gap / 2
            angles[members] = start + width * (np.arange(len(members)) + 0.5) / len(members)
        test_pos = np.c_[np.cos(angles), np.sin(angles)]
        nodes, inverse = np.unique(j, return_inverse=True)
        w = np.abs(s)
        resultant = np.zeros((len(nodes), 2))
        np.add.at(resultant, inverse, w[:, None] * test_pos[t])
        total = np.bincount(inverse, weights=w, minlength=len(nodes))
        mean = resultant / total[:, None]
        length = np.linalg.norm(mean, axis=1)
        direction = np.arctan2(mean[:, 1], mean[:, 0])
        # points acting on one test point sit at 0.7, points pulled apart by shared use inwards;
        # a fixed small offset keeps points with the same neighbours from hiding each other
        offset = np.random.RandomState(0).uniform(-0.04, 0.04, size=len(nodes))
        radius = 0.15 + 0.55 * length + offset
        train_pos = np.c_[radius * np.cos(direction), radius * np.sin(direction)]
        node_groups = [set() for _ in nodes]
        for e, node in enumerate(inverse):
            node_groups[node].add(group_codes[t[e]])
        shared = np.array([len(gs) > 1 for gs in node_groups], dtype=bool)
        first_group = np.array([min(gs) for gs in node_groups], dtype=np.int64)
        return test_pos, nodes, inverse, train_pos, shared, first_group

    def plot(self, ax=None, *, node_size: float = 30.0, min_linewidth: float = 0.3,
             max_linewidth: float = 3.0, legend: bool = True) -> InfluenceGraphDisplay:
        """Draw the graph.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.
        node_size : float, default=30
            Marker area of the points.
        min_linewidth, max_linewidth : float, default=0.3 and 3
            Edge widths grow linearly with ``|score|``, from ``min_linewidth`` (a score of
            zero) to ``max_linewidth`` (the largest ``|score|``), so weak edges stay visible.
        legend : bool, default=True
            Whether to draw the legend of groups and edge colours.

        Returns
        -------
        display : InfluenceGraphDisplay
            ``self``, with the attributes set.

        Examples
        --------
        >>> from sk_fastif.plotting import InfluenceGraphDisplay
        >>> disp = InfluenceGraphDisplay([0, 1], [7, 7], [0.2, -0.4], groups=[0, 1]).plot()
        >>> [round(float(w), 6) for w in disp.edges_.get_linewidths()]  # 0.3 + 2.7 |s| / 0.4
        [1.65, 3.0]
        """
        import_pyplot()
        from matplotlib.collections import LineCollection
        from matplotlib.colors import to_rgba
        from matplotlib.lines import Line2D

        s = check_1d("scores", self.scores)
        t = check_1d("test_index", self.test_index, length=len(s), dtype=np.int64)
        j = check_1d("train_index", self.train_index, length=len(s), dtype=np.int64)
        groups = np.asarray(self.groups)
        if groups.ndim != 1 or len(groups) == 0:
            raise ValueError("groups must be a non-empty 1-D array, one entry per test point.")
        if np.any(s == 0):
            raise ValueError("edges must have nonzero scores (positive helpful, negative harmful).")
        if len(t) and (t.min() < 0 or t.max() >= len(groups)):
            raise ValueError(f"test_index must lie in [0, {len(groups)}) (the rows of groups).")
        names, codes = np.unique(groups, return_inverse=True)
        test_pos, nodes, inverse, train_pos, shared, node_group = self._layout(
            t, j, s, codes, len(names))

        ax = self._plot_axes(ax, figsize=(6.0, 6.8))
        palette = [to_rgba(f"C{g % 10}") for g in range(len(names))]
        peak = np.abs(s).max() if len(s) else 1.0
        segments = np.stack([test_pos[t], train_pos[inverse]], axis=1) if len(s) else []
        colors = [to_rgba(HELPFUL_COLOR if v > 0 else HARMFUL_COLOR, 0.7) for v in s]
        widths = min_linewidth + (max_linewidth - min_linewidth) * (np.abs(s) / peak)
        self.edges_ = LineCollection(segments, colors=colors, linewidths=widths, zorder=1)
        ax.add_collection(self.edges_)
        self.test_points_ = ax.scatter(test_pos[:, 0], test_pos[:, 1], s=node_size * 1.6,
                                       c=[palette[c] for c in codes], marker="s", zorder=3,
                                       edgecolors="white", linewidths=0.5)
        train_colors = [SHARED_COLOR if sh else palette[g] for sh, g in zip(shared, node_group)]
        self.train_points_ = ax.scatter(train_pos[:, 0], train_pos[:, 1], s=node_size,
                                        c=train_colors, marker="o", zorder=2,
                                        edgecolors="white", linewidths=0.5)
        ax.set_xlim(-1.15, 1.15)
        ax.set_ylim(-1.5 if legend else -1.15, 1.15)
        ax.set_aspect("equal")
        ax.set_axis_off()
        if legend:
            handles = [Line2D([], [], marker="s", linestyle="", color=palette[g],
                              label=f"test: {names[g]}") for g in range(len(names))]
            handles += [
                Line2D([], [], marker="o", linestyle="", color=SHARED_COLOR,
                       label="training point shared by groups"),
                Line2D([], [], color=HELPFUL_COLOR, label="helpful"),
                Line2D([], [], color=HARMFUL_COLOR, label="harmful"),
            ]
            ax.legend(handles=handles, fontsize=7, loc="lower center", ncol=3, frameon=False)
        self.test_positions_ = test_pos
        self.train_nodes_ = nodes
        self.train_positions_ = train_pos
        self.shared_ = shared
        return self
