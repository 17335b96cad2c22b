"""Candidate selectors: shortlist the training points worth scoring for each test point.

FastIF's first speed-up: score only the ``k`` training points nearest to the test point in the
model's own feature space instead of all ``n``. A selector embeds the training inputs once
(``fit``), builds a nearest-neighbour index over the embeddings, and returns the
``k`` nearest training rows of any batch of test inputs (``kneighbors``).

Every selector follows one protocol (:class:`BaseCandidates`): ``fit(context)`` indexes the rows
of a :class:`SearchContext` (the training set or an outside pool) and ``kneighbors(context)``
shortlists them for the queries of another. Selectors know nothing of the explainer and never
hold on to the net, so a fitted selector pickles without it.
:class:`~sk_fastif.InfluenceExplainer` uses one through its ``candidates`` parameter; its
scoring pipeline builds the contexts.

* :class:`NNDescentCandidates`: approximate search with pynndescent's ``NNDescent`` (the index is
  built and ``prepare()``-d in ``fit``). For large training sets.
* :class:`ExactCandidates`: exact search with scikit-learn's ``NearestNeighbors``: the reference
  for recall checks and the right choice for small training sets.
* :class:`GradientSketchCandidates`: search in **gradient space**. ``fit``
  stores a low-dimensional sketch (a projection) of every training point's loss gradient; a
  query projects the test points' iHVPs the same way and shortlists the training points with the
  highest sketched scores. It reads the rows' gradient stream at ``fit`` and the queries'
  factors at ``kneighbors``, both in the context.
"""

from ._base import BaseCandidates, SearchContext
from ._embedding import FeatureSpaceCandidates
from ._exact import ExactCandidates
from ._gradient_sketch import GradientSketchCandidates
from ._nndescent import NNDescentCandidates
from ._recall import LowCandidateRecallWarning, warn_low_recall

__all__ = [
    "BaseCandidates",
    "ExactCandidates",
    "FeatureSpaceCandidates",
    "GradientSketchCandidates",
    "LowCandidateRecallWarning",
    "NNDescentCandidates",
    "SearchContext",
    "warn_low_recall",
]
