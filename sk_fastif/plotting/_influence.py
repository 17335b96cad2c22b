"""InfluenceDisplay: each test point's most helpful and most harmful training examples."""

from __future__ import annotations

import numpy as np

from ._base import HARMFUL_COLOR, HELPFUL_COLOR, DisplayAxesMixin, import_pyplot

_KINDS = ("auto", "bars", "images")


def _check_pairs(name: str, indices, scores) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(indices)
    sc = np.asarray(scores, dtype=np.float64)
    if idx.ndim != 2 or sc.shape != idx.shape:
        raise ValueError(
            f"{name}_indices and {name}_scores must be 2-D arrays of one shape (n_test, k); "
            f"got {idx.shape} and {sc.shape}."
        )
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{name}_indices must hold integers; got dtype {idx.dtype}.")
    return idx.astype(np.int64), sc


def _as_image(x, image_shape) -> np.ndarray:
    """One input as an array ``imshow`` draws: (H, W) or (H, W, C) for C in {3, 4}."""
    arr = np.asarray(x, dtype=np.float64)
    if image_shape is not None:
        if arr.size != int(np.prod(image_shape)):
            raise ValueError(
                f"an input of {arr.size} values cannot be shown as an image of shape "
                f"{tuple(image_shape)}."
            )
        arr = arr.reshape(image_shape)
    if arr.ndim == 3:  # (C, H, W), the layout of torch's image modules
        if arr.shape[0] == 1:
            return arr[0]
        if arr.shape[0] in (3, 4):
            return np.moveaxis(arr, 0, -1)
        raise ValueError(f"an image of shape (C, H, W) needs C in (1, 3, 4); got {arr.shape}.")
    if arr.ndim != 2:
        raise ValueError(
            f"an input of shape {arr.shape} is not an image: pass image_shape=(H, W) or (C, H, W)."
        )
    return arr


def _row(X, i: int):
    """Row ``i`` of ``X`` by position (a DataFrame or Series by ``iloc``)."""
    return X.iloc[int(i)] if hasattr(X, "iloc") else X[int(i)]


def _text(x, width: int = 28) -> str | None:
    """A short rendering of a text input (a string or a sequence of tokens), else None."""
    if isinstance(x, str):
        s = x
    elif isinstance(x, (list, tuple)) and x and all(isinstance(t, str) for t in x):
        s = " ".join(x)
    else:
        return None
    return s if len(s) <= width else s[: width - 1] + "…"


class InfluenceDisplay(DisplayAxesMixin):
    """The most helpful and most harmful training examples of each explained test point.

    One row per test point. As bars (``kind="bars"``): the ``k`` most helpful training points
    (green, positive scores) and the ``k`` most harmful ones (red, negative scores), each bar
    labelled with the training index, its label and, for text inputs (strings or token lists),
    its words. As images (``kind="images"``): the test image, then the helpful and the harmful
    training images as thumbnails titled with label and score.

    Scores follow the library's convention: the estimated rise of the test loss if the training
    point were left out; positive = helpful, negative = harmful.

    Build it with :meth:`from_explanation` or :meth:`from_explainer`, or from arrays with the
    constructor and then :meth:`plot`.

    Parameters
    ----------
    helpful_indices, helpful_scores : ndarray of shape (n_test, k)
        Training indices of the most helpful points and their scores, best first.
    harmful_indices, harmful_scores : ndarray of shape (n_test, k)
        Training indices of the most harmful points and their scores, most harmful first.
    test_labels : array-like of shape (n_test,), default=None
        The label each test point was explained for.
    train_labels : array-like of shape (n_train,), default=None
        Labels of the training points.
    X_train : array-like of shape (n_train, ...), default=None
        Training inputs, needed for thumbnails and for the words of text inputs.
    X_test : array-like of shape (n_test, ...), default=None
        The explained test inputs (the first column of thumbnails).
    image_shape : tuple of int, default=None
        Shape of one input as an image: ``(H, W)`` or ``(C, H, W)`` with ``C`` in 1, 3, 4
        (e.g. ``(8, 8)`` for the flattened digits). None: inputs already of that shape.
    test_indices : array-like of shape (n_test,), default=None
        Names of the test points in titles (default ``0 .. n_test - 1``).

    Attributes
    ----------
    ax_ : ndarray of matplotlib Axes
        Shape ``(n_test, 1)`` for bars, ``(n_test, 2 k + 1)`` for images.
    figure_ : matplotlib Figure
        The figure holding them.
    bars_ : list of tuple of BarContainer or None
        Per test point, the helpful and the harmful bars (``kind="bars"``).
    images_ : ndarray of AxesImage or None
        The thumbnails (``kind="images"``), laid out like ``ax_`` (``None`` where no test
        image was given).

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif import Explanation
    >>> from sk_fastif.plotting import InfluenceDisplay
    >>> ex = Explanation(helpful_indices=np.array([[3, 1]]),
    ...                  helpful_scores=np.array([[0.4, 0.1]]),
    ...                  harmful_indices=np.array([[0, 2]]),
    ...                  harmful_scores=np.array([[-0.3, -0.2]]),
    ...                  test_labels=np.array([1]), train_labels=np.array([0, 1, 0, 1]))
    >>> disp = InfluenceDisplay.from_explanation(ex)
    >>> [float(bar.get_width()) for bar in disp.bars_[0][0]]
    [0.4, 0.1]
    """

    def __init__(self, helpful_indices, helpful_scores, harmful_indices, harmful_scores, *,
                 test_labels=None, train_labels=None, X_train=None, X_test=None,
                 image_shape=None, test_indices=None):
        self.helpful_indices = helpful_indices
        self.helpful_scores = helpful_scores
        self.harmful_indices = harmful_indices
        self.harmful_scores = harmful_scores
        self.test_labels = test_labels
        self.train_labels = train_labels
        self.X_train = X_train
        self.X_test = X_test
        self.image_shape = image_shape
        self.test_indices = test_indices

    @classmethod
    def from_explanation(cls, explanation, *, X_train=None, X_test=None, image_shape=None,
                         test_indices=None, kind: str = "auto", ax=None) -> InfluenceDisplay:
        """Draw an :class:`~sk_fastif.Explanation`.

        Parameters
        ----------
        explanation : Explanation
            The result of :meth:`InfluenceExplainer.explain`.
        X_train, X_test, image_shape, test_indices
            As in the constructor.
        kind : {"auto", "bars", "images"}, default="auto"
            ``"auto"`` draws images when ``image_shape`` is given or the inputs are 2-D or 3-D
            per sample, bars otherwise.
        ax : matplotlib Axes or array of Axes, default=None
            Where to draw: None for a new figure, one Axes (divided into the grid) or exactly as
            many Axes as the grid has.

        Returns
        -------
        display : InfluenceDisplay

        Examples
        --------
        >>> import numpy as np
        >>> from sk_fastif import Explanation
        >>> from sk_fastif.plotting import InfluenceDisplay
        >>> X_train = np.arange(3 * 4.0).reshape(3, 4)
        >>> ex = Explanation(np.array([[2]]), np.array([[0.5]]), np.array([[0]]),
        ...                  np.array([[-0.5]]))
        >>> disp = InfluenceDisplay.from_explanation(ex, X_train=X_train, image_shape=(2, 2))
        >>> disp.images_[0, 1].get_array().tolist()  # the most helpful image: row 2
        [[8.0, 9.0], [10.0, 11.0]]
        """
        disp = cls(explanation.helpful_indices, explanation.helpful_scores,
                   explanation.harmful_indices, explanation.harmful_scores,
                   test_labels=explanation.test_labels, train_labels=explanation.train_labels,
                   X_train=X_train, X_test=X_test, image_shape=image_shape,
                   test_indices=test_indices)
        return disp.plot(ax=ax, kind=kind)

    @classmethod
    def from_explainer(cls, explainer, X, y=None, *, k: int = 5, X_train=None,
                       image_shape=None, test_indices=None, kind: str = "auto",
                       ax=None) -> InfluenceDisplay:
        """Explain ``X`` with a fitted explainer and draw the result.

        Parameters
        ----------
        explainer : InfluenceExplainer
            Fitted.
        X : array-like of shape (n_test, ...)
            Test inputs; also the first column of thumbnails.
        y : array-like of shape (n_test,), default=None
            Labels to explain; None explains the predicted labels.
        k : int, default=5
            Training points shown per kind.
        X_train, image_shape, test_indices, kind, ax
            As in :meth:`from_explanation`; ``X_train`` is the data the explainer was fitted
            on, needed for thumbnails and words.

        Returns
        -------
        display : InfluenceDisplay

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skorch import NeuralNetClassifier
        >>> from sk_fastif import InfluenceExplainer
        >>> from sk_fastif.plotting import InfluenceDisplay
        >>> from sk_fastif.solvers import Exact
        >>> rng = np.random.RandomState(0)
        >>> X = rng.randn(40, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
        >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
        ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
        >>> expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
        >>> disp = InfluenceDisplay.from_explainer(expl, X[:2], k=3)
        >>> disp.ax_.shape
        (2, 1)
        """
        explanation = explainer.explain(X, y, k=k)
        return cls.from_explanation(explanation, X_train=X_train, X_test=X,
                                    image_shape=image_shape, test_indices=test_indices,
                                    kind=kind, ax=ax)

    # ------------------------------------------------------------------------------- drawing
    def _resolve_kind(self, kind: str) -> str:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}; got {kind!r}.")
        if kind != "auto":
            return kind
        if self.image_shape is not None:
            return "images"
        if self.X_train is not None and not isinstance(self.X_train, (list, tuple)):
            ndim = getattr(self.X_train, "ndim", np.ndim(self.X_train))
            if ndim in (3, 4):
                return "images"
        return "bars"

    def plot(self, ax=None, *, kind: str = "auto", cmap: str = "gray_r",
             fontsize: float = 7) -> InfluenceDisplay:
        """Draw the display.

        Parameters
        ----------
        ax : matplotlib Axes or array of Axes, default=None
            None for a new figure, one Axes (divided into the grid) or exactly as many Axes as
            the grid has (``n_test`` for bars, ``n_test * (2 k + 1)`` for images).
        kind : {"auto", "bars", "images"}, default="auto"
            See :meth:`from_explanation`.
        cmap : str, default="gray_r"
            Colormap of single-channel thumbnails.
        fontsize : float, default=7
            Size of the labels and titles.

        Returns
        -------
        display : InfluenceDisplay
            ``self``, with ``ax_``, ``figure_`` and ``bars_`` or ``images_`` set.

        Examples
        --------
        >>> import numpy as np
        >>> from sk_fastif.plotting import InfluenceDisplay
        >>> disp = InfluenceDisplay(np.array([[1]]), np.array([[0.2]]), np.array([[0]]),
        ...                         np.array([[-0.1]])).plot()
        >>> [float(bar.get_width()) for bar in disp.bars_[0][1]]
        [-0.1]
        """
        import_pyplot()
        h_idx, h_sc = _check_pairs("helpful", self.helpful_indices, self.helpful_scores)
        x_idx, x_sc = _check_pairs("harmful", self.harmful_indices, self.harmful_scores)
        if h_idx.shape[0] != x_idx.shape[0]:
            raise ValueError("helpful and harmful arrays must have one row per test point each.")
        n_test = h_idx.shape[0]
        names = (np.arange(n_test) if self.test_indices is None
                 else np.asarray(self.test_indices))
        if len(names) != n_test:
            raise ValueError(f"test_indices must have {n_test} entries; got {len(names)}.")
        if self.test_labels is not None and len(self.test_labels) != n_test:
            raise ValueError(f"test_labels must have {n_test} entries; got "
                             f"{len(self.test_labels)}.")
        n_train = None if self.X_train is None else len(self.X_train)
        if n_train is not None and max(h_idx.max(initial=-1), x_idx.max(initial=-1)) >= n_train:
            raise ValueError(
                f"X_train has {n_train} rows but the explanation lists a larger training index: "
                "pass the data the explainer was fitted on."
            )
        if self.X_test is not None and len(self.X_test) != n_test:
            raise ValueError(f"X_test must have {n_test} rows; got {len(self.X_test)}.")
        kind = self._resolve_kind(kind)
        self.bars_, self.images_ = None, None
        if kind == "bars":
            self._plot_bars(ax, names, h_idx, h_sc, x_idx, x_sc, fontsize)
        else:
            if self.X_train is None:
                raise ValueError("kind='images' needs X_train, the training inputs.")
            self._plot_images(ax, names, h_idx, h_sc, x_idx, x_sc, cmap, fontsize)
        return self

    def _label(self, j: int) -> str:
        text = f"#{j}"
        if self.train_labels is not None:
            text += f" y={np.asarray(self.train_labels)[j]}"
        if self.X_train is not None:
            words = _text(_row(self.X_train, j))
            if words is not None:
                text += f" “{words}”"
        return text

    def _title(self, name, r: int) -> str:
        title = f"test {name}"
        if self.test_labels is not None:
            title += f", explained for label {np.asarray(self.test_labels)[r]}"
        if self.X_test is not None:
            words = _text(_row(self.X_test, r), width=60)
            if words is not None:
                title += f": “{words}”"
        return title

    def _plot_bars(self, ax, names, h_idx, h_sc, x_idx, x_sc, fontsize) -> None:
        n_test, k = h_idx.shape
        axes = self._plot_axes(ax, grid=(n_test, 1),
                               figsize=(6.4, 0.35 * 2 * k * n_test + 0.6 * n_test))
        self.bars_ = []
        for r in range(n_test):
            a = axes[r, 0]
            pos_h = np.arange(k)
            pos_x = k + np.arange(k)
            helpful = a.barh(pos_h, h_sc[r], color=HELPFUL_COLOR, label="helpful")
            harmful = a.barh(pos_x, x_sc[r], color=HARMFUL_COLOR, label="harmful")
            self.bars_.append((helpful, harmful))
            a.set_yticks(np.r_[pos_h, pos_x],
                         [self._label(j) for j in np.r_[h_idx[r], x_idx[r]]], fontsize=fontsize)
            a.invert_yaxis()
            a.axvline(0.0, color="0.2", linewidth=0.8)
            a.tick_params(axis="x", labelsize=fontsize)
            a.set_title(self._title(names[r], r), fontsize=fontsize + 1)
        axes[-1, 0].set_xlabel("influence score (rise of the test loss if left out)",
                               fontsize=fontsize)
        axes[0, 0].legend(fontsize=fontsize, loc="best")

    def _plot_images(self, ax, names, h_idx, h_sc, x_idx, x_sc, cmap, fontsize) -> None:
        n_test, k = h_idx.shape
        shown = [_as_image(_row(self.X_train, j), self.image_shape) for j in np.r_[h_idx.ravel(),
                                                                               x_idx.ravel()]]
        tests = ([] if self.X_test is None
                 else [_as_image(_row(self.X_test, r), self.image_shape)
                       for r in range(len(self.X_test))])
        pixels = np.concatenate([im.ravel() for im in shown + tests])
        vmin, vmax = float(pixels.min()), float(pixels.max())
        axes = self._plot_axes(ax, grid=(n_test, 2 * k + 1),
                               figsize=(1.05 * (2 * k + 1), 1.45 * n_test))
        images = np.full(axes.shape, None, dtype=object)

        def draw(a, image):
            if image.ndim == 3:  # colour: shown scaled to [0, 1] over all the images drawn
                span = vmax - vmin if vmax > vmin else 1.0
                return a.imshow((image - vmin) / span)
            return a.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax)

        for r in range(n_test):
            if tests:
                images[r, 0] = draw(axes[r, 0], tests[r])
            title = f"test {names[r]}"
            if self.test_labels is not None:
                title += f"\nfor label {np.asarray(self.test_labels)[r]}"
            axes[r, 0].set_title(title, fontsize=fontsize)
            for c in range(k):
                for col, idx, sc, color in ((1 + c, h_idx, h_sc, HELPFUL_COLOR),
                                            (1 + k + c, x_idx, x_sc, HARMFUL_COLOR)):
                    j = idx[r, c]
                    a = axes[r, col]
                    images[r, col] = draw(a, _as_image(_row(self.X_train, j), self.image_shape))
                    head = f"#{j}" if self.train_labels is None else (
                        f"y={np.asarray(self.train_labels)[j]}")
                    a.set_title(f"{head}\n{sc[r, c]:+.1e}", fontsize=fontsize - 1, color=color)
                    for spine in a.spines.values():
                        spine.set_edgecolor(color)
                        spine.set_linewidth(1.5)
        for a in axes.ravel():
            a.set_xticks([])
            a.set_yticks([])
        self.images_ = images
