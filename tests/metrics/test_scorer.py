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
