"""InfluenceExplainer with candidate pruning: pruned scores against exhaustive scoring, sharing of
training gradients, the mean query, pickling with an index, and the recall audit.

The reference throughout is the exhaustive path (every training point scored), itself checked
against exact influence in test_influence_truth.py. The nets differentiate the output layer only
(170 parameters), which keeps ``Exact`` cheap; pruning does not depend on the parameter count.
"""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from skorch import NeuralNetClassifier

from sk_fastif import Explanation, InfluenceExplainer, _gradients
from sk_fastif.metrics import candidate_recall
from sk_fastif.neighbors import (
    ExactCandidates,
    LowCandidateRecallWarning,
    NNDescentCandidates,
    SearchContext,
)
from sk_fastif.solvers import Exact

K = 40


def make(net, candidates=None, **kw):
    return InfluenceExplainer(net, solver=Exact(damping=1e-2), params=["output"],
                              candidates=candidates, **kw)


@pytest.fixture(scope="module")
def full(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    return make(digits_mlp).fit(Xtr, ytr)


@pytest.fixture(scope="module")
def pruned(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    return make(digits_mlp, ExactCandidates(n_neighbors=K)).fit(Xtr, ytr)


@pytest.fixture(scope="module")
def pruned_nnd(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    return make(digits_mlp, NNDescentCandidates(n_neighbors=K), random_state=0).fit(Xtr, ytr)


def penultimate(net, X):
    with torch.no_grad():
        return torch.tanh(net.module_.hidden(torch.as_tensor(X))).numpy()


def nearest(E_train, E_query, k):
    d = ((E_query[:, None, :].astype(np.float64) - E_train[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


# ------------------------------------------------------------------ pruned scores are exact ones
@pytest.mark.parametrize("which", ["pruned", "pruned_nnd"])
def test_candidate_scores_equal_exhaustive_scores_on_the_candidates(digits, full, which, request):
    _, _, Xte, yte = digits
    expl = request.getfixturevalue(which)
    dense = full.influences(Xte, yte)
    scores = expl.influences(Xte, yte)
    assert isinstance(scores, sp.csr_matrix)
    assert scores.shape == (len(Xte), 400)
    assert np.all(np.diff(scores.indptr) == K) and scores.has_sorted_indices
    shortlists, _ = expl.candidates_.kneighbors(SearchContext(expl.net_, Xte))
    tol = 1e-5 * np.abs(dense).max()
    for i in range(len(Xte)):
        row = scores[i]
        np.testing.assert_array_equal(row.indices, np.sort(shortlists[i]))
        np.testing.assert_allclose(row.data, dense[i, row.indices], rtol=1e-4, atol=tol)


def test_candidates_are_the_nearest_points_in_the_penultimate_space(digits, digits_mlp, pruned):
    Xtr, _, Xte, yte = digits
    scores = pruned.influences(Xte[:10], yte[:10])
    truth = nearest(penultimate(digits_mlp, Xtr), penultimate(digits_mlp, Xte[:10]), K)
    for i in range(10):
        assert set(scores[i].indices) == set(truth[i])


def test_explain_ranks_within_the_candidates(digits, full, pruned):
    _, _, Xte, yte = digits
    dense = full.influences(Xte, yte)
    ex = pruned.explain(Xte, yte, k=7)
    assert isinstance(ex, Explanation) and ex.helpful_indices.shape == (len(Xte), 7)
    assert ex.helpful_indices.dtype == np.int64
    shortlists, _ = pruned.candidates_.kneighbors(SearchContext(pruned.net_, Xte))
    for i in range(len(Xte)):
        pool = shortlists[i]
        order = pool[np.argsort(-dense[i, pool], kind="stable")]
        np.testing.assert_array_equal(ex.helpful_indices[i], order[:7])
        np.testing.assert_array_equal(ex.harmful_indices[i], order[::-1][:7])
        np.testing.assert_allclose(ex.helpful_scores[i], dense[i, order[:7]], rtol=1e-4,
                                   atol=1e-6 * np.abs(dense[i]).max())
    np.testing.assert_array_equal(ex.test_labels, yte)


def test_training_gradients_only_for_the_union_of_candidates(digits, pruned, monkeypatch):
    """No pass over the training set: one gradient per distinct candidate of the call."""
    _, _, Xte, yte = digits
    Xq = np.concatenate([Xte[:6], Xte[:6], Xte[6:9]])  # repeated queries share all candidates
    yq = np.concatenate([yte[:6], yte[:6], yte[6:9]])
    seen = []
    original = _gradients.iter_gradients

    def spy(bridge, X, y, **kwargs):
        seen.append(len(X))
        yield from original(bridge, X, y, **kwargs)

    monkeypatch.setattr(_gradients, "iter_gradients", spy)
    scores = pruned.influences(Xq, yq)
    union = np.unique(scores.indices)
    # the first call embeds nothing: it is the test points' own gradients
    assert seen == [len(Xq), len(union)]
    assert len(union) < len(Xq) * K and len(union) < pruned.n_train_
    monkeypatch.undo()
    np.testing.assert_allclose(scores[:6].toarray(), scores[6:12].toarray())


def test_pairwise_and_block_reductions_agree(digits, digits_mlp, full):
    """Distinct queries take the pair-by-pair reduction, repeated queries the block product."""
    Xtr, ytr, Xte, yte = digits
    dense = full.influences(Xte, yte)
    small = make(digits_mlp, ExactCandidates(n_neighbors=K), batch_size=16).fit(Xtr, ytr)
    tol = 1e-6 * np.abs(dense).max()
    for rows in (np.arange(len(Xte)), np.tile(np.arange(5), 8)):
        scores = small.influences(Xte[rows], yte[rows])
        for i, r in enumerate(rows):
            row = scores[i]
            np.testing.assert_allclose(row.data, dense[r, row.indices], rtol=1e-4, atol=tol)


# ------------------------------------------------------------------------------- mean query
def test_mean_query_scores_the_group_mean_loss(digits, digits_mlp, full, pruned):
    Xtr, _, Xte, yte = digits
    group, labels = Xte[:8], yte[:8]
    dense = full.influences(group, labels)
    whole = full.influences(group, labels, query="mean")
    assert whole.shape == (1, 400)
    np.testing.assert_allclose(whole[0], dense.mean(axis=0), rtol=1e-4,
                               atol=1e-6 * np.abs(dense).max())

    scores = pruned.influences(group, labels, query="mean")
    assert isinstance(scores, sp.csr_matrix) and scores.shape == (1, 400)
    centre = penultimate(digits_mlp, group).mean(axis=0, keepdims=True)
    pool = nearest(penultimate(digits_mlp, Xtr), centre, K)[0]
    assert set(scores.indices) == set(pool)
    np.testing.assert_allclose(scores.data, dense.mean(axis=0)[scores.indices], rtol=1e-4,
                               atol=1e-6 * np.abs(dense).max())

    ex = pruned.explain(group, labels, k=5, query="mean")
    assert ex.helpful_indices.shape == (1, 5) and ex.test_labels is None
    assert set(ex.helpful_indices[0]) <= set(pool)
    assert len(ex.to_frame()) == 10


# ------------------------------------------------------------------------ pickling, parameters
def test_pickled_explainer_with_an_index_gives_identical_explanations(digits, pruned_nnd):
    _, _, Xte, yte = digits
    before = pruned_nnd.explain(Xte, yte, k=5)
    restored = pickle.loads(pickle.dumps(pruned_nnd))
    after = restored.explain(Xte, yte, k=5)
    np.testing.assert_array_equal(after.helpful_indices, before.helpful_indices)
    np.testing.assert_array_equal(after.harmful_indices, before.harmful_indices)
    np.testing.assert_allclose(after.helpful_scores, before.helpful_scores, rtol=1e-6)
    np.testing.assert_allclose(after.harmful_scores, before.harmful_scores, rtol=1e-6)
    assert np.abs(after.helpful_scores).max() > 0


def test_explainer_seeds_the_selector_and_leaves_the_users_unchanged(digits, pruned_nnd):
    assert pruned_nnd.candidates.random_state is None
    assert isinstance(pruned_nnd.candidates_.random_state, int)
    assert pruned_nnd.get_params()["candidates__n_neighbors"] == K
    assert not hasattr(pruned_nnd.candidates, "index_")


def test_self_influence_needs_no_candidates(digits, full, pruned):
    Xtr, ytr, _, _ = digits
    np.testing.assert_allclose(pruned.self_influence(Xtr[:20], ytr[:20]),
                               full.self_influence(Xtr[:20], ytr[:20]), rtol=1e-6)


def test_candidate_errors(digits, digits_mlp, pruned, full):
    Xtr, ytr, Xte, _ = digits
    with pytest.raises(ValueError, match=f"k=41 exceeds the {K} candidates"):
        pruned.explain(Xte[:2], k=41)
    with pytest.raises(ValueError, match="query must be 'each' or 'mean'"):
        pruned.influences(Xte[:2], query="all")
    with pytest.raises(ValueError, match="n_neighbors=500 exceeds the number of training"):
        make(digits_mlp, ExactCandidates(n_neighbors=500)).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="candidates"):
        make(digits_mlp, candidates="knn").fit(Xtr, ytr)
    with pytest.raises(ValueError, match="no candidates"):
        full.audit_candidates(Xte)
    with pytest.raises(ValueError, match=f"at most n_neighbors={K}"):
        pruned.audit_candidates(Xte, top=50)


# ------------------------------------------------------------------------------------- recall
def test_candidate_recall_is_one_for_a_full_shortlist(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    everyone = make(digits_mlp, ExactCandidates(n_neighbors=400)).fit(Xtr, ytr)
    res = candidate_recall(everyone, Xte[:5], top=(1, 10, 400), kind="abs")
    assert res.recall == {1: 1.0, 10: 1.0, 400: 1.0}
    assert res.random_baseline == 1.0 and res.n_neighbors == 400


def test_candidate_recall_counts_the_true_top_points(digits, full, pruned):
    _, _, Xte, yte = digits
    dense = full.influences(Xte, yte)
    shortlists, _ = pruned.candidates_.kneighbors(SearchContext(pruned.net_, Xte))
    for kind, key in (("helpful", -dense), ("harmful", dense), ("abs", -np.abs(dense))):
        res = candidate_recall(pruned, Xte, yte, top=(10, 100), kind=kind)
        for m in (10, 100):
            top_m = np.argsort(key, axis=1, kind="stable")[:, :m]
            expected = np.array([np.isin(t, s).sum() for t, s in zip(top_m, shortlists)]) / m
            np.testing.assert_allclose(res.recall_per_query[m], expected)
            assert res.recall[m] == pytest.approx(expected.mean())
        assert res.recall[100] <= K / 100
        # the shortlists of neighbours beat a random shortlist (K / n = 0.1) by far
        assert res.recall[10] > 3 * res.random_baseline


def test_random_shortlists_have_the_random_baseline_recall(digits, digits_mlp):
    """A feature space of pure noise gives shortlists unrelated to influence: R@m ~ k / n."""
    Xtr, ytr, Xte, yte = digits
    noise = {}

    def random_embedding(net, X):
        key = len(noise)
        noise[key] = np.random.RandomState(key).randn(len(X), 8)
        return noise[key]

    expl = make(digits_mlp, ExactCandidates(n_neighbors=100, embedding=random_embedding,
                                            batch_size=1000)).fit(Xtr, ytr)
    res = candidate_recall(expl, Xte, yte, top=(10, 50))
    assert res.random_baseline == 0.25
    for m in (10, 50):
        assert abs(res.recall[m] - 0.25) < 0.1


def test_audit_warns_when_recall_is_low_and_samples_queries(digits, digits_mlp):
    Xtr, ytr, Xte, yte = digits
    small = make(digits_mlp, ExactCandidates(n_neighbors=10), random_state=0).fit(Xtr, ytr)
    with pytest.warns(LowCandidateRecallWarning, match=r"R@10 over 15 queries.*n_neighbors "
                                                        r"\(now 10\)"):
        res = small.audit_candidates(Xte, yte, top=10, max_samples=15)
    assert len(res.sample_indices) == 15 and len(np.unique(res.sample_indices)) == 15
    assert res.recall[10] < 0.9
    expected = candidate_recall(small, Xte[res.sample_indices], yte[res.sample_indices], top=10)
    assert res.recall == expected.recall

    everyone = make(digits_mlp, ExactCandidates(n_neighbors=400)).fit(Xtr, ytr)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowCandidateRecallWarning)
        res = everyone.audit_candidates(Xte, yte, top=(10, 100), max_samples=None)
    assert res.recall == {10: 1.0, 100: 1.0}
    assert len(res.sample_indices) == len(Xte)


def test_pipeline_input_embedding_uses_the_transformed_features(digits):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sk_fastif.toy import TanhMLP

    Xtr, ytr, Xte, yte = digits
    torch.manual_seed(0)
    pipe = make_pipeline(StandardScaler(), NeuralNetClassifier(
        TanhMLP, module__n_hidden=16, criterion=torch.nn.CrossEntropyLoss, max_epochs=3,
        train_split=None, verbose=0,
    )).fit(Xtr, ytr)
    expl = InfluenceExplainer(pipe, solver=Exact(damping=1e-2), params=["output"],
                              candidates=ExactCandidates(n_neighbors=15, embedding="input"))
    expl.fit(Xtr, ytr)
    scaler = pipe[0]
    truth = nearest(scaler.transform(Xtr), scaler.transform(Xte[:6]), 15)
    scores = expl.influences(Xte[:6], yte[:6])
    for i in range(6):
        assert set(scores[i].indices) == set(truth[i])


# ------------------------------------------------------------------- scoring against a reference
def test_influence_scorer_rates_shortlists_against_exhaustive_reference(digits, full, pruned):
    from scipy.stats import spearmanr

    from sk_fastif.metrics import make_influence_scorer
    from sk_fastif.solvers import CG

    _, _, Xte, yte = digits
    dense = full.influences(Xte[:12], yte[:12])  # the truth: Exact over every training point
    spearman = make_influence_scorer("spearman", reference=Exact(damping=1e-2))
    overlap = make_influence_scorer("top_k_overlap", reference=Exact(damping=1e-2), k=10)
    # the same solver as the reference: exact over each shortlist
    assert spearman(pruned, Xte[:12], yte[:12]) == pytest.approx(1.0)
    np.testing.assert_allclose(spearman.reference_influences(pruned, Xte[:12], yte[:12]), dense,
                               rtol=1e-10, atol=1e-12)
    # with exact scores among the candidates, the top-10 overlap is the shortlist's R@10
    recall = candidate_recall(pruned, Xte[:12], yte[:12], top=10).recall[10]
    assert overlap(pruned, Xte[:12], yte[:12]) == pytest.approx(recall)
    assert recall < 1.0  # the comparison is over all training points, not the shortlist

    # an approximate solver: the mean Spearman correlation over each row's candidates
    rough = make(pruned.net_, ExactCandidates(n_neighbors=K)).set_params(
        solver=CG(damping=1e-2, max_iter=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rough.fit(*digits[:2])
        S = rough.influences(Xte[:12], yte[:12])
        got = spearman(rough, Xte[:12], yte[:12])
    expected = np.mean([spearmanr(S[i].data, dense[i, S[i].indices])[0] for i in range(12)])
    assert got == pytest.approx(expected) and got < 0.999


def test_grid_search_over_n_neighbors_with_the_overlap_scorer(digits, digits_mlp):
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    from sk_fastif.metrics import make_influence_scorer

    Xtr, ytr, Xte, yte = digits
    X_all, y_all = np.vstack([Xtr, Xte[:10]]), np.concatenate([ytr, yte[:10]])
    split = PredefinedSplit([-1] * len(Xtr) + [0] * 10)
    scorer = make_influence_scorer("top_k_overlap", reference=Exact(damping=1e-2), k=10)
    search = GridSearchCV(make(digits_mlp, ExactCandidates(n_neighbors=5)),
                          {"candidates__n_neighbors": [10, 100, len(Xtr)]}, cv=split,
                          scoring=scorer, refit=False).fit(X_all, y_all)
    scores = search.cv_results_["mean_test_score"]
    assert scores[2] == pytest.approx(1.0) and scores[0] <= scores[1] < 1.0
    assert search.best_params_ == {"candidates__n_neighbors": len(Xtr)}
    assert scorer.n_reference_computations_ == 1  # the shortlist size does not change the truth
