"""Metrics of influence scores, laid out by need.

* Agreement on arrays (:func:`influence_agreement`, :func:`top_k_overlap`,
  :func:`mislabel_detection_curve`): compare numbers already computed.
* Candidate recall (:func:`candidate_recall`, :func:`candidate_recall_curve`): how much of
  the truly most influential training points a selector's shortlists hold.
* Agreement with retraining (:func:`leave_one_out_correlation`,
  :func:`linear_datamodeling_score`): scores against nets trained again without some points.
* Scorers for a search (:func:`make_influence_scorer`, :func:`relative_residual_score`).
* The step test (:func:`step_test`): one small gradient step on the points an explanation names.

The metrics that take an explainer reach it only through its public methods and its scoring
pipeline (:meth:`~sk_fastif.InfluenceExplainer.parallel_engine`).
"""

from ._agreement import influence_agreement, mislabel_detection_curve, top_k_overlap
from ._candidates import candidate_recall, candidate_recall_curve
from ._retraining import leave_one_out_correlation, linear_datamodeling_score
from ._scorer import make_influence_scorer, relative_residual_score
from ._step import step_test

__all__ = [
    "candidate_recall",
    "candidate_recall_curve",
    "influence_agreement",
    "leave_one_out_correlation",
    "linear_datamodeling_score",
    "make_influence_scorer",
    "mislabel_detection_curve",
    "relative_residual_score",
    "step_test",
    "top_k_overlap",
]
