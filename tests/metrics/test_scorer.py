"""Scorers for a search: the reference influences come from the explainer's one pipeline."""

import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif.metrics import (
    influence_agreement,
    make_influence_scorer,
    relative_residual_score,
    top_k_overlap,
)
from sk_fastif.neighbors import ExactCandidates
from sk_fastif.solvers import CG, Exact

DAMPING = 1e-2


@pytest.fixture(scope="module")
def linear():
    rng = np.random.RandomState(1)
    X = rng.randn(50, 4).astype("float32")
    y = (X[:, 0] - 0.5 * X[:, 2] > 0).astype("int64")
    torch.manual_seed(0)
    net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
                              max_epochs=10, lr=0.5, train_split=None, verbose=0).fit(X, y)
    return net, X, y


@pytest.mark.filterwarnings("ignore:CG did not converge")  # three CG steps, on purpose
def test_the_reference_is_the_reference_solvers_influences(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=CG(damping=DAMPING, max_iter=3)).fit(X, y)
    scorer = make_influence_scorer(reference=Exact(damping=DAMPING))
    ref = scorer.reference_influences(expl, X[:5], y[:5])
    exact = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    np.testing.assert_allclose(ref, exact.influences(X[:5], y[:5]), rtol=1e-10, atol=0)
    assert scorer.reference_influences(expl, X[:5], y[:5]) is ref  # cached
    assert scorer.n_reference_computations_ == 1
    own = expl.influences(X[:5], y[:5])
    assert scorer(expl, X[:5], y[:5]) == influence_agreement(own, ref)
    overlap = make_influence_scorer("top_k_overlap", reference=Exact(damping=DAMPING), k=4)
    assert overlap(expl, X[:5], y[:5]) == top_k_overlap(own, ref, k=4)


def test_a_pipeline_ending_in_the_explainer_is_scored_on_transformed_input(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    pipe = make_pipeline(FunctionTransformer(lambda a: a[:, ::-1].copy()), expl)
    scorer = make_influence_scorer(reference=Exact(damping=DAMPING))
    np.testing.assert_allclose(scorer.reference_influences(pipe, X[:3, ::-1], y[:3]),
                               expl.influences(X[:3], y[:3]), rtol=1e-10, atol=0)
    assert scorer(pipe, X[:3, ::-1], y[:3]) == pytest.approx(1.0)


def test_a_pruned_explainer_is_rated_over_its_shortlists(linear):
    net, X, y = linear
    pruned = InfluenceExplainer(net, solver=Exact(damping=DAMPING),
                                candidates=ExactCandidates(20, embedding="input")).fit(X, y)
    spearman = make_influence_scorer(reference=Exact(damping=DAMPING))
    overlap = make_influence_scorer("top_k_overlap", reference=Exact(damping=DAMPING), k=5)
    ref = spearman.reference_influences(pruned, X[:4], y[:4])
    assert ref.shape == (4, 50)  # exhaustive, whatever the explainer prunes
    sparse = pruned.influences(X[:4], y[:4])
    # the same solver: over each shortlist the scores are the reference's
    assert spearman(pruned, X[:4], y[:4]) == pytest.approx(1.0)
    expected = []
    for i in range(4):
        cols = sparse[i].indices
        top_pruned = cols[np.argsort(-sparse[i].data, kind="stable")[:5]]
        top_ref = np.argsort(-ref[i], kind="stable")[:5]
        expected.append(len(np.intersect1d(top_pruned, top_ref)) / 5)
    assert overlap(pruned, X[:4], y[:4]) == pytest.approx(np.mean(expected))


def test_relative_residual_score_is_the_explainers_score(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=CG(damping=DAMPING, tol=1e-8)).fit(X, y)
    assert relative_residual_score(expl, X[:4], y[:4]) == expl.score(X[:4], y[:4])
    assert -1e-4 < relative_residual_score(expl, X[:4], y[:4]) <= 0


def test_the_scorer_refuses_what_is_no_explainer(linear):
    net, X, y = linear
    with pytest.raises(TypeError, match="InfluenceExplainer"):
        make_influence_scorer()(net, X[:2], y[:2])
    with pytest.raises(ValueError, match="metric must be"):
        make_influence_scorer("kendall")


# ------------------------------------------------------------------- retraining scorers (LDS)
def _lds_problem():
    from sklearn.model_selection import PredefinedSplit

    rng = np.random.RandomState(0)
    X = rng.randn(80, 4)
    y = (X[:, 0] + 0.5 * rng.randn(80) > 0).astype("int64")

    def make():
        torch.manual_seed(0)
        return NeuralNetClassifier(torch.nn.Linear(4, 2).double(),
                                   criterion=torch.nn.CrossEntropyLoss, max_epochs=20, lr=0.5,
                                   train_split=None, verbose=0)

    calls = []

    def refit(Xs, ys):  # deterministic, and counted
        calls.append(len(ys))
        torch.manual_seed(0)
        return make().fit(Xs, ys)

    return make().fit(X[:60], y[:60]), X, y, refit, calls, PredefinedSplit([-1] * 60 + [0] * 20)


def test_an_lds_search_trains_n_subsets_nets_and_picks_the_best_direct_lds(tmp_path):
    from scipy.stats import spearmanr
    from sklearn.model_selection import GridSearchCV

    net, X, y, refit, calls, split = _lds_problem()
    scorer = make_influence_scorer("lds", n_subsets=8, refit=refit, random_state=0)
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    search = GridSearchCV(InfluenceExplainer(net, solver=Exact(damping=1e-3)),
                          {"solver__damping": grid}, scoring=scorer, cv=split,
                          refit=False).fit(X, y)
    assert len(calls) == 8 and scorer.n_retrainings_ == 8  # not 5 x 8
    Xtr, ytr, Xte, yte = X[:60], y[:60], X[60:], y[60:]
    best = InfluenceExplainer(net, solver=Exact(damping=search.best_params_["solver__damping"]))
    best = best.fit(Xtr, ytr)  # the search's split: the net's own 60 training rows
    done = scorer.retrained(best)

    def loss(n, X_, y_):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(
                n.module_(torch.as_tensor(X_)), torch.as_tensor(y_), reduction="none").numpy()

    actual = np.stack([loss(refit(Xtr[keep], ytr[keep]), Xte, yte) for keep in done.left_out])
    direct = []
    for d in grid:  # the LDS by hand from nets retrained here, on the scorer's subsets
        S = InfluenceExplainer(net, solver=Exact(damping=d)).fit(Xtr, ytr).influences(Xte, yte)
        out = np.ones((len(done.left_out), 60), bool)
        for s, keep in enumerate(done.left_out):
            out[s, keep] = False
        predicted = loss(net, Xte, yte)[None] + out.astype(float) @ S.T
        direct.append(np.nanmean([spearmanr(predicted[:, i], actual[:, i])[0]
                                  for i in range(len(yte))]))
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], direct, atol=1e-9)
    assert search.best_params_["solver__damping"] == grid[int(np.argmax(direct))]
    # another scorer (as in another process) with memory= reuses the nets on disk
    first = make_influence_scorer("lds", n_subsets=8, refit=refit, random_state=0,
                                  memory=str(tmp_path))
    first(best, Xte, yte)
    again = make_influence_scorer("lds", n_subsets=8, refit=refit, random_state=0,
                                  memory=str(tmp_path))
    before = len(calls)
    assert again(best, Xte, yte) == pytest.approx(search.best_score_)
    assert len(calls) == before and again.n_retrainings_ == 0


def test_retraining_scorers_refuse_what_they_would_ignore():
    with pytest.raises(ValueError, match="reference"):
        make_influence_scorer("lds", reference=Exact())
    with pytest.raises(ValueError, match="fraction"):
        make_influence_scorer("loo", fraction=0.3)
    with pytest.raises(ValueError, match="n_subsets"):
        make_influence_scorer("spearman", n_subsets=5)
