"""Agreement on arrays: influence matrices against each other, rankings against flips."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from sk_fastif.metrics import influence_agreement, mislabel_detection_curve, top_k_overlap


def test_agreement_matches_scipy_row_by_row():
    rng = np.random.RandomState(0)
    a, b = rng.randn(4, 30), rng.randn(4, 30)
    expected = np.mean([spearmanr(x, z)[0] for x, z in zip(a, b)])
    assert influence_agreement(a, b) == pytest.approx(expected)
    assert influence_agreement(a, a, method="pearson") == pytest.approx(1.0)
    assert influence_agreement(a, -a, method="kendall") == pytest.approx(-1.0)


def test_top_k_overlap_counts_shared_indices():
    ref = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    got = np.array([[5.0, 1.0, 3.0, 2.0, 4.0]])  # top-3 {0,4,2} vs {0,1,2}
    assert top_k_overlap(got, ref, k=3) == pytest.approx(2 / 3)
    assert top_k_overlap(got, ref, k=2, kind="harmful") == pytest.approx(0.5)  # {1,3} vs {4,3}
    assert top_k_overlap(-ref, ref, k=2, kind="abs") == pytest.approx(1.0)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        influence_agreement(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="method"):
        influence_agreement(np.ones((1, 3)), np.ones((1, 3)), method="cosine")
    with pytest.raises(ValueError, match="k must"):
        top_k_overlap(np.ones((1, 3)), np.ones((1, 3)), k=4)
    with pytest.raises(ValueError, match="finite"):
        top_k_overlap(np.array([[np.nan, 1.0]]), np.ones((1, 2)), k=1)


def test_mislabel_curve_closed_forms():
    flipped = np.array([True, False, False, True, False])
    fi, ff, auc = mislabel_detection_curve([5, 1, 2, 4, 3], flipped)  # flips first
    np.testing.assert_allclose(fi, [0, .2, .4, .6, .8, 1])
    np.testing.assert_allclose(ff, [0, .5, 1, 1, 1, 1])
    assert auc == pytest.approx(1 - 0.4 / 2)
    _, ff, auc = mislabel_detection_curve([1, 5, 4, 2, 3], flipped)  # flips last
    np.testing.assert_allclose(ff, [0, 0, 0, 0, .5, 1])
    assert auc == pytest.approx(0.4 / 2)
    fi, ff, auc = mislabel_detection_curve(np.zeros(5), flipped)  # one tie: the diagonal
    np.testing.assert_allclose(fi, [0, 1]) and np.testing.assert_allclose(ff, [0, 1])
    assert auc == pytest.approx(0.5)
    with pytest.raises(ValueError, match="mask"):
        mislabel_detection_curve([1.0, 2.0, 3.0], [0, 2, 0])
    with pytest.raises(ValueError, match="no point"):
        mislabel_detection_curve([1.0, 2.0], [False, False])
