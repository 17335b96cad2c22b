"""Candidate recall in one place: at the selector's size and along a curve of sizes."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif.metrics import candidate_recall, candidate_recall_curve
from sk_fastif.neighbors import ExactCandidates, GradientSketchCandidates
from sk_fastif.solvers import Exact

SELECTORS = {
    "exact-input": ExactCandidates(15, embedding="input"),
    # 4 of 10 gradient dimensions: a lossy sketch, so the recall is neither 0 nor 1
    "sketch": GradientSketchCandidates(15, n_components=4, projection="gaussian",
                                       kind="helpful", random_state=0),
}


@pytest.fixture(scope="module")
def linear():
    """A fitted logistic regression on 60 points in 4-D (10 parameters)."""
    rng = np.random.RandomState(0)
    X = rng.randn(60, 4).astype("float32")
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype("int64")
    torch.manual_seed(0)
    net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
                              max_epochs=10, lr=0.5, train_split=None, verbose=0).fit(X, y)
    return net, X, y


def _explainer(net, X, y, candidates=None):
    return InfluenceExplainer(net, solver=Exact(damping=1e-2), candidates=candidates).fit(X, y)


@pytest.mark.parametrize("selector", SELECTORS.values(), ids=SELECTORS.keys())
def test_the_curve_at_the_selectors_size_is_candidate_recall(linear, selector):
    net, X, y = linear
    expl = _explainer(net, X, y, selector)
    queries = X[:8]
    curve = candidate_recall_curve(expl, queries, n_neighbors=[5, 15, 40], top=(3, 10))
    ref = candidate_recall(expl, queries, top=(3, 10))
    assert ref.n_neighbors == 15
    for m in (3, 10):
        np.testing.assert_array_equal(curve.recall_per_query[m][:, 1], ref.recall_per_query[m])
        assert curve.recall[m][1] == ref.recall[m]
        assert curve.recall_per_query[m].shape == (8, 3)
        np.testing.assert_allclose(curve.recall[m], curve.recall_per_query[m].mean(axis=0))
        # a longer shortlist holds every point of a shorter one: recall never falls
        assert np.all(np.diff(curve.recall_per_query[m], axis=1) >= 0)
    np.testing.assert_array_equal(curve.n_neighbors, [5, 15, 40])
    np.testing.assert_allclose(curve.random_baseline, np.array([5, 15, 40]) / 60)
    assert curve.n_train == 60


def test_a_lossy_sketch_misses_some_points(linear):
    net, X, y = linear
    expl = _explainer(net, X, y, SELECTORS["sketch"])
    recall = candidate_recall(expl, X[:8], top=10).recall[10]
    assert 0.0 < recall < 1.0  # so the equality above compares something


@pytest.mark.parametrize("kind, key", [("helpful", lambda s: -s), ("harmful", lambda s: s),
                                       ("abs", lambda s: -np.abs(s))])
def test_the_curve_counts_the_true_top_points(linear, kind, key):
    net, X, y = linear
    expl = _explainer(net, X, y, ExactCandidates(10, embedding="input"))
    queries, ks = X[:6], [1, 5, 20, 60]
    curve = candidate_recall_curve(expl, queries, n_neighbors=ks, top=(3, 10), kind=kind)
    # the truth: exhaustive scores and an independent Euclidean neighbour search of the inputs
    scores = _explainer(net, X, y).influences(queries)
    neighbours = NearestNeighbors(n_neighbors=60).fit(X).kneighbors(queries)[1]
    for m in (3, 10):
        top = np.argsort(key(scores), axis=1, kind="stable")[:, :m]
        expected = [[len(set(t) & set(c[:k])) / m for k in ks] for t, c in zip(top, neighbours)]
        np.testing.assert_allclose(curve.recall_per_query[m], expected)
        assert curve.recall[m][-1] == 1.0  # all 60 training points are candidates


def test_the_default_sizes_run_from_one_to_n_train(linear):
    net, X, y = linear
    expl = _explainer(net, X, y, ExactCandidates(10, embedding="input"))
    curve = candidate_recall_curve(expl, X[:4], top=5)
    ks = curve.n_neighbors
    assert ks[0] == 1 and ks[-1] == 60 and np.all(np.diff(ks) > 0)
    assert list(curve.recall) == [5] and curve.recall[5][-1] == 1.0
    assert curve.recall[5][0] <= 1 / 5  # one candidate holds at most one of the top 5


def test_the_curve_refuses_bad_arguments(linear):
    net, X, y = linear
    expl = _explainer(net, X, y, ExactCandidates(10, embedding="input"))
    with pytest.raises(ValueError, match="no candidates"):
        candidate_recall_curve(_explainer(net, X, y), X[:2])
    with pytest.raises(ValueError, match=r"n_neighbors must hold integers in \[1, n_train=60\]"):
        candidate_recall_curve(expl, X[:2], n_neighbors=[0, 5])
    with pytest.raises(ValueError, match="n_neighbors must hold"):
        candidate_recall_curve(expl, X[:2], n_neighbors=[61])
    with pytest.raises(ValueError, match="n_neighbors must hold"):
        candidate_recall_curve(expl, X[:2], n_neighbors=[2.5])
    with pytest.raises(ValueError, match="n_neighbors must hold"):
        candidate_recall_curve(expl, X[:2], n_neighbors=[])
    with pytest.raises(ValueError, match="top must hold"):
        candidate_recall_curve(expl, X[:2], top=(0, 3))
    with pytest.raises(ValueError, match="top must hold"):
        candidate_recall_curve(expl, X[:2], top=True)
    with pytest.raises(ValueError, match="kind must be"):
        candidate_recall_curve(expl, X[:2], kind="best")


def test_candidate_recall_refuses_bad_arguments(linear):
    net, X, y = linear
    expl = _explainer(net, X, y, ExactCandidates(10, embedding="input"))
    with pytest.raises(ValueError, match="no candidates"):
        candidate_recall(_explainer(net, X, y), X[:2], top=5)
    with pytest.raises(ValueError, match=r"top must hold integers in \[1, n_train=60\]"):
        candidate_recall(expl, X[:2], top=(1, 61))
    with pytest.raises(ValueError, match="kind must be"):
        candidate_recall(expl, X[:2], kind="best")


def test_candidate_recall_samples_queries_reproducibly(linear):
    net, X, y = linear
    expl = _explainer(net, X, y, ExactCandidates(10, embedding="input"))
    a = candidate_recall(expl, X[:20], top=5, max_samples=6, random_state=0)
    b = candidate_recall(expl, X[:20], top=5, max_samples=6, random_state=0)
    np.testing.assert_array_equal(a.sample_indices, b.sample_indices)
    assert len(a.sample_indices) == 6 and np.all(np.diff(a.sample_indices) > 0)
    on_sample = candidate_recall(expl, X[a.sample_indices], top=5)
    np.testing.assert_array_equal(a.recall_per_query[5], on_sample.recall_per_query[5])
    assert a.random_baseline == 10 / 60
