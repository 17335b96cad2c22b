"""Shared helpers of the displays: the lazy matplotlib import and the axes they draw on.

:class:`DisplayAxesMixin` is the one place where a display resolves its ``ax`` argument and
sets ``ax_`` and ``figure_`` (as scikit-learn's ``_validate_plot_params`` does for its curve
displays): a single Axes, or a grid of them (:func:`axes_grid`).
"""

from __future__ import annotations

import numpy as np

HELPFUL_COLOR = "tab:green"
HARMFUL_COLOR = "tab:red"
BASELINE_COLOR = "0.45"


def import_pyplot():
    """Return :mod:`matplotlib.pyplot`, or raise an ImportError that names the ``plot`` extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "sk_fastif.plotting needs matplotlib, which is not installed: "
            "pip install 'sk_fastif[plot]' (or pip install matplotlib)."
        ) from exc
    return plt


def new_or_given_ax(ax, figsize=(6.0, 4.0)):
    """The Axes ``ax``, or a new figure's single Axes when ``ax`` is None.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from sk_fastif.plotting._base import new_or_given_ax
    >>> fig, ax = plt.subplots()
    >>> new_or_given_ax(ax) is ax, new_or_given_ax(None) is ax
    (True, False)
    """
    plt = import_pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
        return ax
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None; got {type(ax).__name__}.")
    return ax


class DisplayAxesMixin:
    """Where a display draws: its ``plot`` asks :meth:`_plot_axes` and gets ``ax_``, ``figure_``.

    Every display of :mod:`sk_fastif.plotting` inherits it, so ``ax=None`` (a new figure),
    a given Axes, or a grid of Axes are handled, and ``ax_`` and ``figure_`` set, the same way.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from sk_fastif.plotting._base import DisplayAxesMixin
    >>> class Dots(DisplayAxesMixin):
    ...     def plot(self, ax=None):
    ...         self._plot_axes(ax).plot([0, 1], "o")
    ...         return self
    >>> fig, ax = plt.subplots()
    >>> disp = Dots().plot(ax=ax)
    >>> disp.ax_ is ax and disp.figure_ is fig
    True
    >>> disp = Dots().plot()  # a new figure
    >>> disp.ax_.figure is disp.figure_ is not fig
    True
    """

    def _plot_axes(self, ax=None, *, figsize=(6.0, 4.0), grid: tuple[int, int] | None = None,
                   **grid_kw):
        """The Axes to draw on (an array of them for a ``grid``); sets ``ax_`` and ``figure_``.

        Parameters
        ----------
        ax : matplotlib Axes, array-like of Axes or None
            Without ``grid``: an Axes, or None for a new figure of ``figsize``. With
            ``grid=(n_rows, n_cols)``: None, one Axes (divided into the grid) or exactly
            ``n_rows * n_cols`` Axes, as :func:`axes_grid` takes them.
        figsize : tuple of float, default=(6.0, 4.0)
            Size of a new figure.
        grid : (int, int) or None, default=None
            The shape of a grid of Axes.
        **grid_kw
            Passed to :func:`axes_grid` (e.g. ``gridspec_kw``).

        Returns
        -------
        ax : matplotlib Axes, or ndarray of Axes of shape ``grid``
        """
        if grid is None:
            self.ax_ = new_or_given_ax(ax, figsize=figsize)
            self.figure_ = self.ax_.figure
        else:
            self.ax_, self.figure_ = axes_grid(ax, *grid, figsize=figsize, **grid_kw)
        return self.ax_


def axes_grid(ax, n_rows: int, n_cols: int, *, figsize, squeeze_rows: bool = False, **grid_kw):
    """An ``(n_rows, n_cols)`` array of Axes and their figure.

    ``ax`` is None (a new figure), a single Axes (its area is divided into the grid and the Axes
    itself hidden, as scikit-learn's ``PartialDependenceDisplay`` does) or an array-like of
    exactly ``n_rows * n_cols`` Axes.
    """
    plt = import_pyplot()
    from matplotlib.axes import Axes

    if ax is None:
        fig, axes = plt.subplots(n_rows, n_cols, figsize=figsize, squeeze=False, **grid_kw)
        return np.asarray(axes), fig
    if isinstance(ax, Axes):
        fig = ax.figure
        spec = ax.get_subplotspec()
        if spec is None:
            raise ValueError("ax must be a subplot Axes (made by plt.subplots or add_subplot).")
        ax.set_axis_off()
        grid = spec.subgridspec(n_rows, n_cols, **grid_kw)
        axes = np.empty((n_rows, n_cols), dtype=object)
        for r in range(n_rows):
            for c in range(n_cols):
                axes[r, c] = fig.add_subplot(grid[r, c])
        return axes, fig
    axes = np.asarray(ax, dtype=object)
    if axes.size != n_rows * n_cols:
        raise ValueError(
            f"ax must be None, one Axes or {n_rows * n_cols} Axes ({n_rows} x {n_cols}); "
            f"got {axes.size}."
        )
    return axes.reshape(n_rows, n_cols), axes.flat[0].figure


def check_1d(name: str, values, *, length: int | None = None, dtype=np.float64) -> np.ndarray:
    """``values`` as a finite 1-D array (of ``length`` entries when given)."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}.")
    if length is not None and len(arr) != length:
        raise ValueError(f"{name} must have {length} entries; got {len(arr)}.")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite.")
    return arr
