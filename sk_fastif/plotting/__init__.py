"""Displays of influence results, in scikit-learn's Display pattern.

Each display's constructor stores the data; ``from_explainer`` asks the explainer (its public
methods) or :mod:`sk_fastif.metrics` for the numbers and hands them to a ``from_<computed>``
class method (``from_explanation``, ``from_scores``, ``from_recall``, ``from_solve_results``,
``from_history``), which draws them without any explainer; ``plot(ax=None)`` draws and keeps
``ax_`` and ``figure_`` (set in one place, :class:`~sk_fastif.plotting._base.DisplayAxesMixin`).
A display never computes its metric. matplotlib is imported only when something is drawn
(``pip install 'sk_fastif[plot]'``).
"""

from ._correction import CorrectionDisplay
from ._graph import InfluenceGraphDisplay
from ._influence import InfluenceDisplay
from ._mislabel import SelfInfluenceDisplay
from ._recall import CandidateRecallDisplay
from ._trace import SolverTraceDisplay

__all__ = [
    "CandidateRecallDisplay",
    "CorrectionDisplay",
    "InfluenceDisplay",
    "InfluenceGraphDisplay",
    "SelfInfluenceDisplay",
    "SolverTraceDisplay",
]
