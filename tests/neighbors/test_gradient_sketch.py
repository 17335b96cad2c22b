"""The gradient-sketch selector: recall against exhaustive exact scores, exactness, errors.

Truth comes from outside the selector: exhaustive scores (every training gradient against the
same iHVPs, so only the shortlist is measured), numpy's SVD of the full training-gradient matrix,
and the penultimate-feature shortlists of ``ExactCandidates`` as the baseline to beat.
"""

import pickle

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from sk_fastif import InfluenceExplainer
from sk_fastif.neighbors import ExactCandidates, GradientSketchCandidates, SearchContext
from sk_fastif.solvers import Exact


def top(scores, k, kind="helpful"):
    key = {"helpful": -scores, "harmful": scores, "abs": -np.abs(scores)}[kind]
    return np.argsort(key, axis=1, kind="stable")[:, :k]


def recall_at_10(scores, shortlists):
    truth = top(scores, 10)
    return float(np.mean([np.isin(t, s).mean() for t, s in zip(truth, shortlists)]))


def _problem(expl, Xte, yte):
    Xt, yt = expl.as_engine_input(Xte, yte)
    S = expl.engine_.factors(expl.engine_.gradients(Xt, yt)).solution
    scores = expl.engine_.score_rows(S)  # exhaustive: every training point, exactly
    return expl, S, scores


def make_explainer(net, **params):
    return InfluenceExplainer(net, solver=Exact(damping=0.01), curvature="gauss_newton",
                              params=["output"], **params)


@pytest.fixture(scope="module")
def problem(digits, digits_mlp):
    """The digits MLP's output layer (170 parameters, Exact solver): the explainer, the test
    points' factors and their true scores on every training point."""
    Xtr, ytr, Xte, yte = digits
    return _problem(make_explainer(digits_mlp).fit(Xtr, ytr), Xte, yte)


def fit_sketch(expl, **params):
    sel = GradientSketchCandidates(**{"n_neighbors": 20, "random_state": 0, **params})
    return sel.fit(expl.engine_.search_context())


# --------------------------------------------------------------------------------- recall
def test_sketch_recall_is_far_above_the_penultimate_selectors(digits, problem):
    Xtr, _, Xte, _ = digits
    expl, S, scores = problem
    k = 20  # 5% of the 400 training points
    sketch = fit_sketch(expl, n_components=32, kind="helpful")
    short_sketch, _ = sketch.kneighbors(SearchContext(expl.net_, Xte, factors=S), n_neighbors=k)
    pen = ExactCandidates(n_neighbors=k).fit(SearchContext(expl.net_, Xtr))
    short_pen, _ = pen.kneighbors(SearchContext(expl.net_, Xte))
    r_sketch, r_pen = recall_at_10(scores, short_sketch), recall_at_10(scores, short_pen)
    assert r_sketch >= 0.9, (r_sketch, r_pen)
    assert r_sketch >= r_pen + 0.3, (r_sketch, r_pen)


def test_estimates_track_the_true_scores(digits, problem):
    _, _, Xte, _ = digits
    expl, S, scores = problem
    sketch = fit_sketch(expl, n_components=64, kind="abs")
    idx, est = sketch.kneighbors(SearchContext(expl.net_, Xte, factors=S))
    true = np.take_along_axis(scores, idx, axis=1)
    corr = np.corrcoef(est.ravel(), true.ravel())[0, 1]
    assert corr > 0.95, corr


@pytest.mark.parametrize("projection", ["orthogonal", "svd"])
@pytest.mark.parametrize("kind", ["helpful", "harmful", "abs"])
def test_full_dimension_returns_exactly_the_true_top_k(digits, problem, projection, kind):
    _, _, Xte, _ = digits
    expl, S, scores = problem
    sketch = fit_sketch(expl, n_components=expl.n_params_, projection=projection, kind=kind)
    idx, est = sketch.kneighbors(SearchContext(expl.net_, Xte, factors=S))
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(top(scores, 20, kind), axis=1))
    np.testing.assert_allclose(est, np.take_along_axis(scores, idx, axis=1),
                               rtol=1e-3, atol=1e-4 * np.abs(scores).max())
    assert sketch.captured_energy_ == pytest.approx(1.0, abs=1e-4)


def test_svd_basis_matches_numpys_svd_of_the_gradients(problem):
    expl, _, _ = problem
    G = expl.engine_.gradients(expl.engine_.X_train, expl.engine_.y_train,
                               what="training point").double().numpy()
    sv = np.linalg.svd(G, compute_uv=False)
    sketch = fit_sketch(expl, n_components=16, n_iter=2)
    np.testing.assert_allclose(sketch.singular_values_[:8], sv[:8], rtol=1e-2)
    assert sketch.captured_energy_ == pytest.approx((sv[:16] ** 2).sum() / (sv**2).sum(),
                                                    rel=1e-2)
    # orthonormal columns
    P = sketch.components_.astype(np.float64)
    np.testing.assert_allclose(P.T @ P, np.eye(16), atol=1e-5)


def test_mean_query_ranks_the_groups_mean_factor(digits, problem):
    _, _, Xte, _ = digits
    expl, S, scores = problem
    sketch = fit_sketch(expl, n_components=expl.n_params_, projection="orthogonal",
                        kind="helpful")
    idx, _ = sketch.kneighbors(SearchContext(expl.net_, Xte[:8], factors=S[:8]), query="mean")
    assert idx.shape == (1, 20)
    truth = top(scores[:8].mean(axis=0, keepdims=True), 20)
    np.testing.assert_array_equal(np.sort(idx), np.sort(truth))
    one, _ = sketch.kneighbors(SearchContext(expl.net_, Xte[:8],
                                             factors=S[:8].mean(0, keepdim=True)), query="mean")
    np.testing.assert_array_equal(one, idx)


# ------------------------------------------------------------------------------- explainer
def test_explainer_scores_the_sketch_candidates_exactly(digits, digits_mlp, problem):
    Xtr, ytr, Xte, yte = digits
    _, _, scores = problem
    expl = make_explainer(digits_mlp, candidates=GradientSketchCandidates(
        n_neighbors=20, n_components=64, random_state=0)).fit(Xtr, ytr)
    sparse = expl.influences(Xte, yte)
    for i in range(len(Xte)):
        row = sparse[i]
        np.testing.assert_allclose(row.data, scores[i, row.indices], rtol=1e-5,
                                   atol=1e-7 * np.abs(scores).max())
    audit = expl.audit_candidates(Xte, yte, top=10, kind="abs", max_samples=None,
                                  min_recall=0.5)
    truth_abs = top(scores, 10, "abs")
    expected = np.mean([np.isin(t, r.indices).mean() for t, r in zip(truth_abs, sparse)])
    assert audit.recall[10] == pytest.approx(expected)
    assert audit.recall[10] >= 0.9
    ex = expl.explain(Xte[:3], yte[:3], k=5)
    assert set(ex.helpful_indices[0]) <= set(sparse[0].indices)


# --------------------------------------------------------------------- determinism, pickling
def test_random_state_makes_the_sketch_reproducible(digits, problem):
    _, _, Xte, _ = digits
    expl, S, _ = problem
    for projection in ("svd", "orthogonal", "gaussian"):
        a = fit_sketch(expl, n_components=32, projection=projection)
        b = fit_sketch(expl, n_components=32, projection=projection)
        np.testing.assert_array_equal(a.components_, b.components_)
        np.testing.assert_array_equal(a.sketch_, b.sketch_)
        np.testing.assert_array_equal(a.kneighbors(SearchContext(expl.net_, Xte, factors=S))[0],
                                      b.kneighbors(SearchContext(expl.net_, Xte, factors=S))[0])
        c = fit_sketch(expl, n_components=32, projection=projection, random_state=1)
        assert not np.allclose(a.components_, c.components_)


def test_explainer_seeds_the_selector(digits, digits_mlp):
    Xtr, ytr, Xte, yte = digits
    make = lambda: make_explainer(  # noqa: E731
        digits_mlp, random_state=3,
        candidates=GradientSketchCandidates(n_neighbors=10, n_components=16,
                                            projection="gaussian"),
    ).fit(Xtr, ytr)
    a, b = make(), make()
    assert isinstance(a.candidates_.random_state, int)
    np.testing.assert_array_equal(a.candidates_.components_, b.candidates_.components_)
    np.testing.assert_array_equal(a.explain(Xte[:4], yte[:4], k=5).helpful_indices,
                                  b.explain(Xte[:4], yte[:4], k=5).helpful_indices)


@pytest.mark.parametrize("n_components, projection", [(None, "orthogonal"), (32, "svd")])
def test_unpickled_selector_shortlists_as_well_as_the_fitted_one(digits, problem,
                                                                 n_components, projection):
    _, _, Xte, _ = digits
    expl, S, scores = problem
    sel = fit_sketch(expl, n_components=n_components or expl.n_params_, projection=projection,
                     kind="helpful")
    restored = pickle.loads(pickle.dumps(sel))
    idx, est = restored.kneighbors(SearchContext(expl.net_, Xte, factors=S))
    i1, v1 = sel.kneighbors(SearchContext(expl.net_, Xte, factors=S))
    np.testing.assert_array_equal(idx, i1)
    np.testing.assert_array_equal(est, v1)
    if n_components is None:  # full dimension: exactly the exhaustive top 20 and their scores
        np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(top(scores, 20), axis=1))
        np.testing.assert_allclose(est, np.take_along_axis(scores, idx, axis=1),
                                   rtol=1e-3, atol=1e-4 * np.abs(scores).max())
    else:  # a 32-dimensional sketch still finds the true top 10 among its 20 candidates
        assert recall_at_10(scores, idx) >= 0.9, recall_at_10(scores, idx)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("params, match", [
    ({"n_components": 0}, "n_components"),
    ({"n_neighbors": 0}, "n_neighbors"),
    ({"projection": "sparse"}, "projection"),
    ({"kind": "largest"}, "kind"),
    ({"n_iter": -1}, "n_iter"),
])
def test_bad_parameters_are_refused(problem, params, match):
    expl, _, _ = problem
    with pytest.raises(InvalidParameterError, match=match):
        fit_sketch(expl, **params)


def test_errors_say_what_is_wrong(digits, digits_mlp, problem):
    Xtr, _, Xte, _ = digits
    expl, S, _ = problem
    p = expl.n_params_
    with pytest.raises(ValueError, match=f"exceeds the number of parameters {p}"):
        fit_sketch(expl, n_components=p + 1)
    with pytest.raises(ValueError, match="exceeds the number of training samples"):
        fit_sketch(expl, n_neighbors=401)
    with pytest.raises(ValueError, match="needs the rows' gradient stream"):
        GradientSketchCandidates(n_components=8).fit(SearchContext(digits_mlp, Xtr))
    with pytest.warns(FutureWarning), pytest.raises(ValueError,
                                                   match="rows but the engine's training set"):
        GradientSketchCandidates(n_components=8).fit(digits_mlp, Xtr[:10], engine=expl.engine_)
    with pytest.raises(NotFittedError):
        GradientSketchCandidates().kneighbors(SearchContext(digits_mlp, Xte, factors=S))
    sel = fit_sketch(expl, n_components=8)
    with pytest.raises(ValueError, match="needs the queries' iHVPs"):
        sel.kneighbors(SearchContext(digits_mlp, Xte))
    with pytest.raises(ValueError, match=f"fitted on gradients of {p} parameters"):
        sel.kneighbors(SearchContext(digits_mlp, Xte, factors=S[:, :10]))
    with pytest.raises(ValueError, match="rows for 3 test points"):
        sel.kneighbors(SearchContext(digits_mlp, Xte[:3], factors=S))
    with pytest.raises(ValueError, match="n_neighbors must be an integer"):
        sel.kneighbors(SearchContext(digits_mlp, Xte, factors=S), n_neighbors=401)
    assert not hasattr(sel, "embed")  # its space is the gradients'; transform() projects
