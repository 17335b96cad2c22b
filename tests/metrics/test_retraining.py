"""Agreement with retraining: leave-one-out correlation and LDS against real refits."""

import copy

import numpy as np
import pytest
import torch

from sk_fastif import InfluenceExplainer
from sk_fastif.metrics import leave_one_out_correlation, linear_datamodeling_score
from sk_fastif.solvers import Exact

from ..conftest import fit_full_batch


@pytest.fixture(scope="module")
def convex(logreg):
    net, X, y, wd = logreg

    def refit(Xs, ys):  # the exact optimum of the penalised loss on the subset
        return fit_full_batch(copy.deepcopy(net), Xs, ys, wd)

    expl = InfluenceExplainer(net, solver=Exact(damping=wd)).fit(X, y)
    return expl, X, y, refit


def test_leave_one_out_correlation_on_a_convex_model(convex):
    expl, X, y, refit = convex
    res = leave_one_out_correlation(expl, X, y, X[:4], y[:4], indices=range(0, 60, 3),
                                    refit=refit)
    assert res.predicted.shape == res.actual.shape == (20, 4)
    assert res.score >= 0.95
    # the actual changes are real refits: one of them recomputed by hand
    keep = np.arange(len(X)) != 3
    again = refit(X[keep], y[keep])
    with torch.no_grad():
        def loss(n):
            return torch.nn.functional.cross_entropy(
                n.module_(torch.as_tensor(X[:4])), torch.as_tensor(y[:4]), reduction="none")
        np.testing.assert_allclose(res.actual[1], (loss(again) - loss(expl.net_)).numpy(),
                                   rtol=1e-6, atol=1e-9)


def test_lds_on_a_convex_model_is_high_and_falls_with_wrong_scores(convex, monkeypatch):
    expl, X, y, refit = convex
    res = linear_datamodeling_score(expl, X, y, X[:6], y[:6], n_subsets=30, refit=refit,
                                    random_state=0)
    assert res.per_test.shape == (6,) and res.subsets.shape == (30, 150)
    assert res.score >= 0.7
    # scores of unrelated points predict nothing
    rng = np.random.default_rng(0)
    true_influences = expl.influences
    monkeypatch.setattr(expl, "influences",
                        lambda *a, **k: rng.permutation(true_influences(*a, **k), axis=1))
    wrong = linear_datamodeling_score(expl, X, y, X[:6], y[:6], n_subsets=30, refit=refit,
                                      random_state=0)
    assert wrong.score < res.score - 0.4
    np.testing.assert_allclose(wrong.actual, res.actual)  # the same refits


def test_default_refit_trains_seeded_clones(digits_mlp, digits):
    Xtr, ytr, Xte, yte = digits
    Xtr, ytr = Xtr[:120], ytr[:120]
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.01), params=["output"])
    expl.fit(Xtr, ytr)
    a = linear_datamodeling_score(expl, Xtr, ytr, Xte[:3], yte[:3], n_subsets=3,
                                  random_state=1)
    b = linear_datamodeling_score(expl, Xtr, ytr, Xte[:3], yte[:3], n_subsets=3,
                                  random_state=1)
    np.testing.assert_array_equal(a.actual, b.actual)
    assert np.isfinite(a.actual).all()


def test_bad_input_is_refused(convex):
    expl, X, y, refit = convex
    with pytest.raises(ValueError, match="training data the explainer was fitted on"):
        linear_datamodeling_score(expl, X[:10], y[:10], X[:2], y[:2], refit=refit)
    with pytest.raises(ValueError, match="fraction"):
        linear_datamodeling_score(expl, X, y, X[:2], y[:2], fraction=1.0, refit=refit)
    with pytest.raises(ValueError, match="n_subsets"):
        linear_datamodeling_score(expl, X, y, X[:2], y[:2], n_subsets=2, refit=refit)
    with pytest.raises(ValueError, match="indices"):
        leave_one_out_correlation(expl, X, y, X[:2], y[:2], indices=[5], refit=refit)
    with pytest.raises(ValueError, match="method"):
        leave_one_out_correlation(expl, X, y, X[:2], y[:2], indices=[1, 2], method="kendall",
                                  refit=refit)


def test_precomputed_scores_are_evaluated_against_the_same_refits(convex):
    expl, X, y, refit = convex
    own = expl.influences(X[:4], y[:4])
    kw = dict(indices=range(0, 30, 3), refit=refit)
    base = leave_one_out_correlation(expl, X, y, X[:4], y[:4], **kw)
    flipped = leave_one_out_correlation(expl, X, y, X[:4], y[:4], scores=-own, **kw)
    np.testing.assert_allclose(flipped.actual, base.actual)
    assert flipped.score == pytest.approx(-base.score)  # Pearson of the negated predictions
    # a method that knows nothing: gradient-free scores predict no LDS
    noise = np.random.default_rng(0).normal(size=own.shape) * np.abs(own).mean()
    lds = linear_datamodeling_score(expl, X, y, X[:4], y[:4], n_subsets=20, refit=refit,
                                    random_state=0, scores=noise)
    good = linear_datamodeling_score(expl, X, y, X[:4], y[:4], n_subsets=20, refit=refit,
                                     random_state=0, scores=own)
    assert good.score > lds.score + 0.4
    with pytest.raises(ValueError, match=r"shape \(n_test, n_train\)"):
        leave_one_out_correlation(expl, X, y, X[:4], y[:4], scores=own[:, :5], **kw)
    with pytest.raises(ValueError, match="NaN"):
        leave_one_out_correlation(expl, X, y, X[:4], y[:4], scores=own * np.nan, **kw)
