"""Displays of influence results, in scikit-learn's Display pattern.

Each display's constructor stores the data; its ``from_*`` class methods compute (from an
explainer, an :class:`~sk_fastif.Explanation`, scores or solve results) and draw; ``plot(ax=None)``
draws and keeps ``ax_`` and ``figure_``. matplotlib is imported only when something is drawn
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
