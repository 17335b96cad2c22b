"""SolverTraceDisplay: the convergence trace of the iterative solvers."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._base import BASELINE_COLOR, DisplayAxesMixin, check_1d, import_pyplot


def _solver_name(solver) -> str:
    params = solver.get_params(deep=False)
    shown = [f"{p}={params[p]:g}" if isinstance(params[p], float) else f"{p}={params[p]}"
             for p in ("depth", "batch_size", "scale", "max_iter", "damping") if p in params]
    return f"{type(solver).__name__}({', '.join(shown)})"


class SolverTraceDisplay(DisplayAxesMixin):
    """Convergence traces of iterative solves (LiSSA, CG), on a log scale.

    Each :class:`~sk_fastif.solvers.SolveResult` records a ``trace``, one number per
    iteration: for :class:`~sk_fastif.solvers.CG` the largest relative residual
    ``‖(H + λI)x - g‖ / ‖g‖`` over the block, for :class:`~sk_fastif.solvers.LiSSA` the
    largest relative change of the estimate between steps (its ``n_repeats`` chains one after
    another). A LiSSA trace that still falls at the last step asks for a larger ``depth``; one
    that grows asks for a larger ``scale`` or ``damping``.

    Parameters
    ----------
    traces : mapping of str to array-like of float
        One trace per name (the legend entry).
    converged : mapping of str to bool, default=None
        Whether each solve met its own stopping rule, shown in the legend.
    tol : float, default=None
        A stopping tolerance, drawn as a dashed horizontal line.

    Attributes
    ----------
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    lines_ : dict of str to matplotlib Line2D
        The drawn traces, by name; ``lines_[name].get_ydata()`` is the trace.
    tol_line_ : matplotlib Line2D or None

    Examples
    --------
    >>> from sk_fastif.plotting import SolverTraceDisplay
    >>> disp = SolverTraceDisplay({"CG": [1.0, 0.1, 0.01]}, tol=0.05).plot()
    >>> disp.lines_["CG"].get_ydata().tolist()
    [1.0, 0.1, 0.01]
    """

    def __init__(self, traces, *, converged=None, tol=None):
        self.traces = traces
        self.converged = converged
        self.tol = tol

    @classmethod
    def from_solve_results(cls, results, *, tol=None, ax=None) -> SolverTraceDisplay:
        """Draw the traces of :class:`~sk_fastif.solvers.SolveResult` objects.

        Parameters
        ----------
        results : SolveResult, sequence of SolveResult, or mapping of str to SolveResult
            The solves; a sequence is named ``solve 0, solve 1, ...``.
        tol : float, default=None
            A tolerance line to draw.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : SolverTraceDisplay

        Examples
        --------
        >>> import torch
        >>> from sk_fastif.plotting import SolverTraceDisplay
        >>> from sk_fastif.solvers import SolveResult
        >>> res = SolveResult(solution=torch.zeros(1, 2), trace=[0.5, 0.2], n_hvp=2,
        ...                   converged=True)
        >>> SolverTraceDisplay.from_solve_results({"mine": res}).converged
        {'mine': True}
        """
        if hasattr(results, "trace"):
            results = {"solve": results}
        elif not isinstance(results, Mapping):
            results = {f"solve {i}": r for i, r in enumerate(results)}
        for name, r in results.items():
            if not hasattr(r, "trace"):
                raise TypeError(f"{name!r} is not a SolveResult; got {type(r).__name__}.")
        disp = cls({name: list(r.trace) for name, r in results.items()},
                   converged={name: bool(r.converged) for name, r in results.items()}, tol=tol)
        return disp.plot(ax=ax)

    @classmethod
    def from_explainer(cls, explainer, X, y=None, *, name=None, ax=None) -> SolverTraceDisplay:
        """Solve for the factors of ``X`` with a fitted explainer and draw the solver's trace.

        Draws the :class:`~sk_fastif.solvers.SolveResult` that
        :meth:`InfluenceExplainer.solve` returns, with the solver's ``tol`` (when set), by
        :meth:`from_solve_results`.

        Parameters
        ----------
        explainer : InfluenceExplainer
            Fitted. An iterative solver (LiSSA, CG) records one value per iteration;
            ``Exact`` solves directly and records one, the relative residual of its answer.
        X : array-like of shape (n_test, ...)
        y : array-like of shape (n_test,), default=None
            Labels to explain; None explains the predicted labels.
        name : str, default=None
            Legend entry; None describes the solver and its settings.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : SolverTraceDisplay

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skorch import NeuralNetClassifier
        >>> from sk_fastif import InfluenceExplainer
        >>> from sk_fastif.plotting import SolverTraceDisplay
        >>> from sk_fastif.solvers import CG
        >>> rng = np.random.RandomState(0)
        >>> X = rng.randn(40, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
        >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
        ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
        >>> expl = InfluenceExplainer(net, solver=CG(damping=1e-2, tol=1e-6),
        ...                           curvature="gauss_newton").fit(X, y)
        >>> disp = SolverTraceDisplay.from_explainer(expl, X[:3], name="CG")
        >>> bool(disp.lines_["CG"].get_ydata()[-1] <= 1e-6)
        True
        """
        result = explainer.solve(X, y)
        if not result.trace:
            raise ValueError("the solve recorded no trace (X has no rows).")
        name = _solver_name(explainer.solver_) if name is None else str(name)
        tol = explainer.solver_.get_params(deep=False).get("tol")
        return cls.from_solve_results({name: result}, tol=tol, ax=ax)

    def plot(self, ax=None) -> SolverTraceDisplay:
        """Draw the traces.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.

        Returns
        -------
        display : SolverTraceDisplay
            ``self``, with ``ax_``, ``figure_``, ``lines_`` and ``tol_line_`` set.

        Examples
        --------
        >>> from sk_fastif.plotting import SolverTraceDisplay
        >>> disp = SolverTraceDisplay({"a": [1.0, 0.5], "b": [2.0, 0.1]}).plot()
        >>> sorted(disp.lines_)
        ['a', 'b']
        """
        import_pyplot()
        if not isinstance(self.traces, Mapping) or not self.traces:
            raise TypeError("traces must be a non-empty mapping of name to trace.")
        ax = self._plot_axes(ax)
        self.lines_ = {}
        for name, trace in self.traces.items():
            values = check_1d(f"trace {name!r}", trace)
            label = str(name)
            if self.converged is not None and name in self.converged:
                label += " (converged)" if self.converged[name] else " (not converged)"
            (self.lines_[name],) = ax.plot(np.arange(1, len(values) + 1), values, label=label,
                                           marker="o" if len(values) == 1 else None)
        self.tol_line_ = None
        if self.tol is not None:
            self.tol_line_ = ax.axhline(float(self.tol), color=BASELINE_COLOR, linestyle="--",
                                        linewidth=1, label=f"tol = {float(self.tol):g}")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("trace (CG: relative residual,\nLiSSA: relative change)")
        ax.legend(fontsize=8)
        return self
