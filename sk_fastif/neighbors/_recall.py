"""The recall audit's warning: a shortlist that misses the truly most influential points.

The recall itself is measured by :func:`sk_fastif.metrics.candidate_recall`.
"""

from __future__ import annotations

import warnings

from ..exceptions import LowCandidateRecallWarning

__all__ = ["LowCandidateRecallWarning", "warn_low_recall"]


def warn_low_recall(result, kind: str, min_recall: float, *, stacklevel: int = 2) -> None:
    """Warn :class:`LowCandidateRecallWarning` for each mean ``R@m`` below ``min_recall``.

    ``result`` is what :func:`sk_fastif.metrics.candidate_recall` returns.

    Examples
    --------
    >>> import warnings
    >>> from types import SimpleNamespace
    >>> from sk_fastif.neighbors import warn_low_recall
    >>> result = SimpleNamespace(n_neighbors=20, recall={10: 0.4}, sample_indices=range(5),
    ...                          random_baseline=0.02)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_low_recall(result, "helpful", min_recall=0.9)
    >>> str(caught[0].message)[:53]
    'The candidate shortlists hold only 40% of the true to'
    """
    k = result.n_neighbors
    for m, recall in result.recall.items():
        if recall < min_recall:
            warnings.warn(
                f"The candidate shortlists hold only {recall:.0%} of the true top-{m} {kind} "
                f"training points (mean R@{m} over {len(result.sample_indices)} queries; a "
                f"random shortlist of {k} would hold {result.random_baseline:.1%}). Raise the "
                f"selector's n_neighbors (now {k}) or try another embedding.",
                LowCandidateRecallWarning,
                stacklevel=stacklevel,
            )
