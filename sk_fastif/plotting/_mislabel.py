"""SelfInfluenceDisplay: how fast a ranking of the training set finds its flipped labels."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..metrics import mislabel_detection_curve
from ._base import BASELINE_COLOR, DisplayAxesMixin, check_1d, import_pyplot


def flip_mask(flipped, n: int) -> np.ndarray:
    """A boolean mask of length ``n`` from a mask or from the indices of the flipped points."""
    arr = np.asarray(flipped)
    if arr.ndim != 1:
        raise ValueError(f"flipped must be 1-D; got shape {arr.shape}.")
    if arr.dtype == bool:
        if len(arr) != n:
            raise ValueError(f"a boolean flipped mask must have {n} entries; got {len(arr)}.")
        return arr
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"flipped must be a boolean mask or integer indices; got {arr.dtype}.")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"flipped indices must lie in [0, {n}).")
    mask = np.zeros(n, dtype=bool)
    mask[arr.astype(np.int64)] = True
    return mask


def detection_curve(scores, flipped) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of flipped points found against fraction inspected, highest scores first.

    :func:`sk_fastif.metrics.mislabel_detection_curve` of the scores and the mask of
    ``flipped`` (a mask or indices): tied scores are inspected together. Both arrays start at 0.
    """
    scores = check_1d("scores", scores)
    flipped = flip_mask(flipped, len(scores))
    if not flipped.any():
        raise ValueError("flipped marks no point: there is nothing to find.")
    inspected, found, _ = mislabel_detection_curve(scores, flipped)
    return inspected, found


def point_losses(explainer, X=None, y=None) -> np.ndarray:
    """The fitted net's loss on each point, at the labels ``self_influence(X, y)`` uses.

    ``X=None``: the training set with its labels; ``y=None``: a classifier's predicted labels.
    """
    if X is None:
        if y is not None:
            raise ValueError("y given without X: pass both, or neither for the training set.")
        engine = explainer.engine_
        Xt, yt = engine.X_train, engine.y_train
    else:
        Xt, yt = explainer.as_engine_input(X, y)
    with torch.no_grad():
        losses = explainer.engine_.losses(Xt, yt)
    return losses.detach().double().cpu().numpy()


class SelfInfluenceDisplay(DisplayAxesMixin):
    """Mislabel detection: the fraction of flipped labels found against the fraction inspected.

    Inspecting the training points in decreasing order of a score (self-influence: points the
    rest of the data cannot explain score high), a curve rises fast when the flipped labels come
    first. The diagonal is what inspecting in random order finds on average; baselines such as
    the training loss can be drawn beside.

    Parameters
    ----------
    curves : mapping of str to tuple of (array-like, array-like)
        For each ranking, ``(fraction_inspected, fraction_found)``.

    Attributes
    ----------
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    lines_ : dict of str to matplotlib Line2D
        One curve per ranking.
    random_line_ : matplotlib Line2D
        The diagonal of a random order.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.plotting import SelfInfluenceDisplay
    >>> disp = SelfInfluenceDisplay.from_scores([0.9, 0.1, 0.5, 0.2], [True, False, True, False])
    >>> disp.lines_["self-influence"].get_ydata().tolist()
    [0.0, 0.5, 1.0, 1.0, 1.0]
    """

    def __init__(self, curves):
        self.curves = curves

    @classmethod
    def from_scores(cls, scores, flipped, *, baseline_scores=None, name: str = "self-influence",
                    ax=None) -> SelfInfluenceDisplay:
        """Rank by ``scores`` (highest first) and draw the detection curve.

        The curve is :func:`sk_fastif.metrics.mislabel_detection_curve`'s: tied scores are
        inspected together (the curve goes straight across a tie).

        Parameters
        ----------
        scores : array-like of shape (n,)
            Score of each training point, e.g. :meth:`InfluenceExplainer.self_influence`.
        flipped : array-like of bool of shape (n,), or of int
            Which labels are wrong: a boolean mask, or the indices of the flipped points (as
            :func:`sk_fastif.datasets.flip_labels` returns them).
        baseline_scores : array-like of shape (n,) or mapping of str to array-like, default=None
            Other rankings to compare with (highest first), e.g. ``{"loss": losses}``.
        name : str, default="self-influence"
            Legend entry of ``scores``.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : SelfInfluenceDisplay

        Examples
        --------
        >>> import numpy as np
        >>> from sk_fastif.plotting import SelfInfluenceDisplay
        >>> disp = SelfInfluenceDisplay.from_scores(
        ...     [3.0, 0.0, 1.0], [True, False, False], baseline_scores={"loss": [0.0, 2.0, 1.0]})
        >>> disp.lines_["loss"].get_ydata().tolist()  # the flipped point comes last
        [0.0, 0.0, 0.0, 1.0]
        """
        curves = {str(name): detection_curve(scores, flipped)}
        if baseline_scores is not None:
            if not isinstance(baseline_scores, Mapping):
                baseline_scores = {"baseline": baseline_scores}
            for other, values in baseline_scores.items():
                if str(other) in curves:
                    raise ValueError(f"baseline name {other!r} is used twice.")
                curves[str(other)] = detection_curve(values, flipped)
        return cls(curves).plot(ax=ax)

    @classmethod
    def from_explainer(cls, explainer, flipped, X=None, y=None, *, baseline_scores=None,
                       ax=None) -> SelfInfluenceDisplay:
        """Rank the training set by the explainer's self-influence and draw the curve.

        ``baseline_scores="loss"`` draws the ranking by the training loss beside it (the net's
        criterion on each point, highest first), the strong baseline of mislabel detection.

        Parameters
        ----------
        explainer : InfluenceExplainer
            Fitted (on the labels that may be wrong).
        flipped : array-like of bool of shape (n,), or of int
            Which labels are wrong: a boolean mask or the indices of the flipped points.
        X, y : array-like, default=None
            Points to score, as in :meth:`InfluenceExplainer.self_influence` (None: the training
            set).
        baseline_scores : "loss", array-like or mapping of str to array-like, default=None
            Other rankings to compare with (highest first). ``"loss"``: the per-point loss of
            the fitted net (its criterion, at the labels self-influence is computed with),
            drawn as ``"training loss"``; a mapping may also give ``"loss"`` as a value.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : SelfInfluenceDisplay

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skorch import NeuralNetClassifier
        >>> from sk_fastif import InfluenceExplainer
        >>> from sk_fastif.datasets import flip_labels
        >>> from sk_fastif.plotting import SelfInfluenceDisplay
        >>> from sk_fastif.solvers import Exact
        >>> rng = np.random.RandomState(0)
        >>> X = rng.randn(60, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
        >>> y_noisy, flipped = flip_labels(y, 0.1, random_state=0)
        >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
        ...                           max_epochs=20, lr=0.5, train_split=None, verbose=0)
        >>> expl = InfluenceExplainer(net.fit(X, y_noisy), solver=Exact(damping=1e-2))
        >>> disp = SelfInfluenceDisplay.from_explainer(expl.fit(X, y_noisy), flipped)
        >>> found = disp.lines_["self-influence"].get_ydata()
        >>> float(found[12])  # the flipped labels found in the top 20% (random order: 0.2)
        0.8333333333333334
        >>> disp = SelfInfluenceDisplay.from_explainer(expl, flipped, baseline_scores="loss")
        >>> sorted(disp.lines_)
        ['self-influence', 'training loss']
        """
        scores = explainer.self_influence(X, y)
        if isinstance(baseline_scores, str):
            if baseline_scores != "loss":
                raise ValueError(f'baseline_scores must be "loss", scores or a mapping of them; '
                                 f"got {baseline_scores!r}.")
            baseline_scores = {"training loss": "loss"}
        if isinstance(baseline_scores, Mapping) and any(
                isinstance(v, str) for v in baseline_scores.values()):
            losses = None
            resolved = {}
            for other, values in baseline_scores.items():
                if isinstance(values, str):
                    if values != "loss":
                        raise ValueError(f'a baseline given by name must be "loss"; got '
                                         f"{values!r} for {other!r}.")
                    if losses is None:
                        losses = point_losses(explainer, X, y)
                    values = losses
                resolved[other] = values
            baseline_scores = resolved
        return cls.from_scores(scores, flipped, baseline_scores=baseline_scores, ax=ax)

    def plot(self, ax=None) -> SelfInfluenceDisplay:
        """Draw the curves and the diagonal of a random order.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        display : SelfInfluenceDisplay
            ``self``, with ``ax_``, ``figure_``, ``lines_`` and ``random_line_`` set.

        Examples
        --------
        >>> from sk_fastif.plotting import SelfInfluenceDisplay
        >>> disp = SelfInfluenceDisplay({"mine": ([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])}).plot()
        >>> disp.random_line_.get_ydata().tolist()
        [0.0, 1.0]
        """
        import_pyplot()
        if not isinstance(self.curves, Mapping) or not self.curves:
            raise TypeError("curves must be a non-empty mapping of name to (inspected, found).")
        ax = self._plot_axes(ax)
        self.lines_ = {}
        for name, (inspected, found) in self.curves.items():
            x = check_1d(f"{name!r} fraction inspected", inspected)
            y = check_1d(f"{name!r} fraction found", found, length=len(x))
            (self.lines_[name],) = ax.plot(x, y, label=str(name))
        self.random_line_, = ax.plot([0.0, 1.0], [0.0, 1.0], color=BASELINE_COLOR,
                                     linestyle="--", label="random order")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("fraction of the training set inspected")
        ax.set_ylabel("fraction of the flipped labels found")
        ax.legend(fontsize=8, loc="lower right")
        return self
