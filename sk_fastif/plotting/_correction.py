"""CorrectionDisplay: a validation metric along the steps of error correction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ._base import DisplayAxesMixin, check_1d, import_pyplot

_METRICS = ("val_accuracy", "val_loss")


def _one_run(name: str, history, metric: str) -> tuple[np.ndarray, np.ndarray]:
    steps, values = [], []
    for entry in history:
        if not isinstance(entry, Mapping) or "step" not in entry:
            raise TypeError(
                f"history {name!r} must be a list of dicts with a 'step' key; got {entry!r}."
            )
        value = entry.get(metric)
        if value is not None:
            steps.append(int(entry["step"]))
            values.append(float(value))
    if not steps:
        raise ValueError(f"history {name!r} records no {metric!r}.")
    order = np.argsort(steps, kind="stable")
    return np.asarray(steps)[order], np.asarray(values)[order]


def _is_run(history) -> bool:
    return isinstance(history, Sequence) and bool(history) and isinstance(history[0], Mapping)


class CorrectionDisplay(DisplayAxesMixin):
    """A validation metric after each correction step, one curve per strategy.

    Step 0 is the model before any correction. With several runs per strategy (e.g. seeds), the
    curve is their mean at each step and the band their standard deviation.

    Parameters
    ----------
    steps : mapping of str to array-like of int
        The steps of each strategy.
    values : mapping of str to array-like of float
        The metric at those steps (the mean over runs).
    spread : mapping of str to array-like of float, default=None
        The standard deviation over runs at those steps, drawn as a band.
    metric : str, default="val_accuracy"
        The axis label.

    Attributes
    ----------
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    lines_ : dict of str to matplotlib Line2D
        One curve per strategy.
    bands_ : dict of str to matplotlib PolyCollection
        The bands of the strategies that have a spread.

    Examples
    --------
    >>> from sk_fastif.plotting import CorrectionDisplay
    >>> history = [{"step": 0, "indices": [], "val_loss": 0.7, "val_accuracy": 0.6},
    ...            {"step": 1, "indices": [3, 8], "val_loss": 0.5, "val_accuracy": 0.8}]
    >>> disp = CorrectionDisplay.from_history({"influence": history})
    >>> disp.lines_["influence"].get_ydata().tolist()
    [0.6, 0.8]
    """

    def __init__(self, steps, values, *, spread=None, metric: str = "val_accuracy"):
        self.steps = steps
        self.values = values
        self.spread = spread
        self.metric = metric

    @classmethod
    def from_history(cls, histories, *, metric: str = "val_accuracy",
                     ax=None) -> CorrectionDisplay:
        """Draw correction histories, such as ``correction_history_``, per strategy.

        Parameters
        ----------
        histories : mapping of str to list of dict, or to list of such lists
            For each strategy (e.g. ``"influence"``, ``"random"``, ``"loss"``) a list of
            per-step dicts ``{"step": int, "indices": ndarray, "val_loss": float or None,
            "val_accuracy": float or None}`` (step 0 = before any step), or a list of such
            lists, one per run, whose mean and standard deviation are drawn.
        metric : {"val_accuracy", "val_loss"}, default="val_accuracy"
            The entry to draw; steps where it is None are left out.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : CorrectionDisplay

        Examples
        --------
        >>> from sk_fastif.plotting import CorrectionDisplay
        >>> runs = [[{"step": 0, "val_accuracy": 0.5}, {"step": 1, "val_accuracy": 0.7}],
        ...         [{"step": 0, "val_accuracy": 0.5}, {"step": 1, "val_accuracy": 0.9}]]
        >>> disp = CorrectionDisplay.from_history({"random": runs})
        >>> disp.values["random"].round(3).tolist(), disp.spread["random"].round(3).tolist()
        ([0.5, 0.8], [0.0, 0.1])
        """
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}; got {metric!r}.")
        if not isinstance(histories, Mapping) or not histories:
            raise TypeError("histories must be a non-empty mapping of strategy name to history.")
        steps, values, spread = {}, {}, {}
        for name, history in histories.items():
            if _is_run(history):
                steps[name], values[name] = _one_run(name, history, metric)
                continue
            if not isinstance(history, Sequence) or not history or not all(
                    _is_run(run) for run in history):
                raise TypeError(
                    f"history {name!r} must be a list of per-step dicts or a list of such lists."
                )
            runs = [_one_run(name, run, metric) for run in history]
            if any(not np.array_equal(s, runs[0][0]) for s, _ in runs):
                raise ValueError(f"the runs of {name!r} record {metric!r} at different steps.")
            stacked = np.stack([v for _, v in runs])
            steps[name], values[name] = runs[0][0], stacked.mean(axis=0)
            spread[name] = stacked.std(axis=0)
        return cls(steps, values, spread=spread, metric=metric).plot(ax=ax)

    def plot(self, ax=None) -> CorrectionDisplay:
        """Draw the curves (and bands).

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        display : CorrectionDisplay
            ``self``, with ``ax_``, ``figure_``, ``lines_`` and ``bands_`` set.

        Examples
        --------
        >>> from sk_fastif.plotting import CorrectionDisplay
        >>> disp = CorrectionDisplay({"loss": [0, 1]}, {"loss": [0.6, 0.65]}).plot()
        >>> disp.lines_["loss"].get_xdata().tolist()
        [0.0, 1.0]
        """
        import_pyplot()
        if not isinstance(self.values, Mapping) or not self.values:
            raise TypeError("values must be a non-empty mapping of strategy name to values.")
        ax = self._plot_axes(ax)
        self.lines_, self.bands_ = {}, {}
        spread = self.spread or {}
        for name, vals in self.values.items():
            x = check_1d(f"steps of {name!r}", self.steps[name])
            y = check_1d(f"values of {name!r}", vals, length=len(x))
            (line,) = ax.plot(x, y, marker="o", label=str(name))
            self.lines_[name] = line
            if name in spread:
                sd = check_1d(f"spread of {name!r}", spread[name], length=len(x))
                self.bands_[name] = ax.fill_between(x, y - sd, y + sd, color=line.get_color(),
                                                    alpha=0.2, linewidth=0)
        ax.set_xlabel("correction step (0 = before)")
        ax.set_ylabel({"val_accuracy": "validation accuracy",
                       "val_loss": "validation loss"}.get(self.metric, str(self.metric)))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
        return self
