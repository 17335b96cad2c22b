"""scikit-learn integration: grid search over solver settings, scorers, pipelines, pandas."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif.metrics import (
    influence_agreement,
    make_influence_scorer,
    relative_residual_score,
    top_k_overlap,
)
from sk_fastif.solvers import CG, DivergenceError, Exact, LiSSA

from .conftest import MLP, make_digits

# Damping large enough that H + damping*I of the logistic regression is well conditioned: LiSSA
# then converges in a few dozen steps and the tests stay fast.
DAMPING = 0.5


@pytest.fixture(scope="module")
def problem(logreg):
    """The logreg fixture, held-out queries, the exact top eigenvalue and a query split."""
    net, X, y, _ = logreg
    _, _, Xq, yq = make_digits(n_train=300, n_test=12, seed=1)  # rows after the training rows
    Xq = Xq[:, ::4].astype(np.float64)
    top = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y).solver_.eigenvalues_[-1]
    X_all, y_all = np.vstack([X, Xq]), np.concatenate([y, yq])
    # fit every candidate on the net's training rows, score it on the held-out queries
    split = PredefinedSplit(np.r_[np.full(len(X), -1), np.zeros(len(Xq), dtype=int)])
    return net, X, y, Xq, yq, X_all, y_all, split, float(top) + DAMPING


@pytest.fixture(scope="module")
def exact_queries(problem):
    """Influences of the logistic regression on the queries by an independent Exact explainer."""
    net, X, y, Xq, yq, *_ = problem
    return InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y).influences(Xq, yq)


def _state(net):
    return {k: v.clone() for k, v in net.module_.state_dict().items()}


def _assert_state(net, state):
    for k, v in net.module_.state_dict().items():
        assert torch.equal(v, state[k]), k


# --------------------------------------------------------------------------- grid search
def test_default_score_ranks_a_diverging_scale_last_and_depth_one_below_convergence(problem):
    net, X, y, _, _, X_all, y_all, split, top = problem
    lissa = LiSSA(damping=DAMPING, batch_size=len(X), depth=25)  # full batch: deterministic
    grid = {"solver__scale": [0.3 * top, 1.2 * top], "solver__depth": [1, 25]}
    search = GridSearchCV(InfluenceExplainer(net, solver=lissa, batch_size=512), grid, cv=split,
                          refit=False)
    with pytest.warns(UserWarning, match="LiSSA diverged") as record:
        search.fit(X_all, y_all)
    assert any("Scoring failed" in str(w.message) for w in record)
    res = search.cv_results_
    params = [(p["solver__scale"] / top, p["solver__depth"]) for p in res["params"]]
    scores = dict(zip(params, res["mean_test_score"]))
    ranks = dict(zip(params, res["rank_test_score"]))
    # a scale below half the top eigenvalue diverges: the search sees NaN and ranks it last;
    # one step of it does not diverge yet but overshoots (|1 - top / scale| > 2)
    assert np.isnan(scores[(0.3, 25)]) and ranks[(0.3, 25)] == 4
    assert scores[(0.3, 1)] < -1 and ranks[(0.3, 1)] == 3
    # contraction factor <= 1 - DAMPING / (1.2 top) < 0.65: 25 steps converge, 1 step does not
    assert search.best_params_ == {"solver__scale": 1.2 * top, "solver__depth": 25}
    assert ranks[(1.2, 25)] == 1 and ranks[(1.2, 1)] == 2
    assert scores[(1.2, 25)] > -1e-3
    assert scores[(1.2, 1)] < -0.05
    # with error_score="raise" the divergence surfaces as the solver's own error
    search.set_params(error_score="raise")
    with pytest.raises(DivergenceError, match="scale"):
        search.fit(X_all, y_all)


def test_list_of_dicts_grid_mixing_cg_and_lissa(problem):
    net, X, y, _, _, X_all, y_all, split, top = problem
    grid = [
        {"solver": [CG(damping=DAMPING)], "solver__max_iter": [1, 100]},
        {"solver": [LiSSA(damping=DAMPING, scale=1.2 * top, batch_size=64, random_state=0)],
         "solver__depth": [2, 15], "solver__n_repeats": [1, 2]},
    ]
    search = GridSearchCV(InfluenceExplainer(net, batch_size=512), grid, cv=split, refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # CG(max_iter=1)
        search.fit(X_all, y_all)
    res = search.cv_results_
    assert len(res["params"]) == 2 + 4
    best = search.best_params_
    assert isinstance(best["solver"], CG) and best["solver__max_iter"] == 100
    assert search.best_score_ > -1e-5  # CG converges to its tolerance
    by = {(type(p["solver"]).__name__, p.get("solver__max_iter"), p.get("solver__depth"),
           p.get("solver__n_repeats")): s for p, s in zip(res["params"], res["mean_test_score"])}
    assert by[("CG", 1, None, None)] < -0.01
    # more steps help the stochastic solver
    for n_repeats in (1, 2):
        assert by[("LiSSA", None, 15, n_repeats)] > by[("LiSSA", None, 2, n_repeats)]


class CountingNet(NeuralNetClassifier):
    """Counts every call that (re)trains or re-initialises a net, over all clones."""

    calls = {"fit": 0, "partial_fit": 0, "initialize": 0}

    def fit(self, X, y=None, **kw):
        CountingNet.calls["fit"] += 1
        return super().fit(X, y, **kw)

    def partial_fit(self, X, y=None, classes=None, **kw):
        CountingNet.calls["partial_fit"] += 1
        return super().partial_fit(X, y, classes=classes, **kw)

    def initialize(self):
        CountingNet.calls["initialize"] += 1
        return super().initialize()


@pytest.fixture(scope="module")
def counted_net():
    Xtr, ytr, Xte, yte = make_digits(n_train=150, n_test=10, seed=3)
    torch.manual_seed(0)
    net = CountingNet(MLP, module__n_hidden=8, criterion=torch.nn.CrossEntropyLoss, max_epochs=3,
                      lr=0.1, train_split=None, verbose=0).fit(Xtr, ytr)
    return net, Xtr, ytr, Xte, yte


@pytest.mark.parametrize("wrap", ["net", "frozen", "pipeline"])
def test_grid_search_never_retrains_a_fitted_net(counted_net, wrap):
    net, Xtr, ytr, Xte, yte = counted_net
    if wrap == "net":
        estimator = net
    elif wrap == "frozen":
        estimator = FrozenEstimator(net)
    else:
        estimator = Pipeline([("identity", "passthrough"), ("net", net)])
    before, n_epochs = _state(net), len(net.history_)
    calls = dict(CountingNet.calls)
    X_all, y_all = np.vstack([Xtr, Xte]), np.concatenate([ytr, yte])
    split = [(np.arange(len(Xtr)), np.arange(len(Xtr), len(X_all)))]
    grid = {"solver__max_iter": [2, 20], "solver__damping": [0.1, 1.0]}
    search = GridSearchCV(InfluenceExplainer(estimator, solver=CG(), params=["output"],
                                             curvature="gauss_newton"), grid, cv=split)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X_all, y_all)  # refit=True: the best setting is fitted once more
    assert CountingNet.calls == calls  # no fit, partial_fit or initialize on any copy
    _assert_state(net, before)
    assert len(net.history_) == n_epochs
    assert search.best_estimator_.net_ is net
    assert search.best_params_["solver__max_iter"] == 20
    # the refitted best explainer is usable straight away
    assert search.best_estimator_.influences(Xte[:2]).shape == (2, len(X_all))


def test_clone_keeps_a_fitted_estimator_by_reference_and_clones_the_rest(counted_net):
    net = counted_net[0]
    solver = LiSSA(depth=7)
    expl = InfluenceExplainer(net, solver=solver, params=["output"])
    twin = clone(expl)
    assert twin.estimator is net
    assert twin.solver is not solver and twin.solver.get_params() == solver.get_params()
    assert twin.params == ["output"] and twin.params is not expl.params
    unfitted = NeuralNetClassifier(MLP, criterion=torch.nn.CrossEntropyLoss)
    fresh = clone(InfluenceExplainer(unfitted))
    assert fresh.estimator is not unfitted and not getattr(fresh.estimator, "initialized_", False)


def test_unknown_nested_parameter_suggests_the_closest_name(counted_net):
    expl = InfluenceExplainer(counted_net[0], solver=LiSSA())
    with pytest.raises(ValueError, match="[Dd]id you mean 'solver__depth'"):
        expl.set_params(solver__dpth=3)
    with pytest.raises(ValueError, match="Did you mean 'curvature'"):
        expl.set_params(curvatur="hessian")
    with pytest.raises(ValueError, match="solver is 'auto'.*Set solver to an estimator"):
        InfluenceExplainer(counted_net[0]).set_params(solver__depth=3)
    # solver and its nested parameter in one call (as a list-of-dicts grid does)
    expl.set_params(solver=CG(), solver__max_iter=5)
    assert expl.solver.max_iter == 5
    # a grid with a misspelt name fails at once with the suggestion
    search = GridSearchCV(expl, {"solver__max_itr": [1, 2]}, cv=[(np.arange(5), np.arange(5))])
    Xtr, ytr = counted_net[1], counted_net[2]
    with pytest.raises(ValueError, match="[Dd]id you mean 'solver__max_iter'"):
        search.fit(Xtr, ytr)


def test_nested_parameters_of_a_fitted_estimator_are_refused(counted_net):
    net = counted_net[0]
    lr = net.lr
    with pytest.raises(ValueError, match="never retrained"):
        InfluenceExplainer(net).set_params(estimator__lr=lr * 2)
    assert net.lr == lr
    # of an unfitted one they are what GridSearchCV tunes
    unfitted = NeuralNetClassifier(MLP, criterion=torch.nn.CrossEntropyLoss)
    expl = InfluenceExplainer(unfitted).set_params(estimator__max_epochs=2)
    assert expl.estimator.max_epochs == 2


# ------------------------------------------------------------------------------ scorers
@pytest.fixture
def count_exact_prepares(monkeypatch):
    counter = {"n": 0}
    original = Exact.prepare

    def counting(self, op):
        counter["n"] += 1
        return original(self, op)

    monkeypatch.setattr(Exact, "prepare", counting)
    return counter


def test_reference_scorer_picks_the_deepest_lissa_and_computes_the_reference_once(
        problem, exact_queries, count_exact_prepares):
    net, X, y, Xq, yq, X_all, y_all, split, top = problem
    scorer = make_influence_scorer("spearman", reference=Exact(damping=DAMPING))
    lissa = LiSSA(damping=DAMPING, scale=1.2 * top, batch_size=len(X))
    search = GridSearchCV(InfluenceExplainer(net, solver=lissa, batch_size=512),
                          {"solver__depth": [1, 3, 15]}, scoring=scorer, cv=split, refit=False)
    search.fit(X_all, y_all)
    assert count_exact_prepares["n"] == 1  # one reference for three candidates
    assert scorer.n_reference_computations_ == 1
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_ == {"solver__depth": 15}
    assert scores[2] > 0.999 and scores[0] < scores[2]
    assert np.all(search.cv_results_["mean_score_time"] > 0)
    # the score is the agreement with an independently fitted Exact explainer
    exact = exact_queries
    shallow = InfluenceExplainer(net, solver=clone(lissa).set_params(depth=1), batch_size=512)
    approx = shallow.fit(X, y).influences(Xq, yq)
    assert scores[0] == pytest.approx(influence_agreement(approx, exact), abs=1e-9)
    # a new fitted net (different parameters) gets its own reference
    other = clone(net).initialize()
    other.module_.double()
    n = count_exact_prepares["n"]
    scorer(InfluenceExplainer(other, solver=CG(damping=DAMPING)).fit(X, y), Xq, yq)
    assert scorer.n_reference_computations_ == 2 and count_exact_prepares["n"] == n + 1


@pytest.mark.parametrize("metric", ["pearson", "top_k_overlap"])
def test_scorer_metrics_match_the_plain_functions(problem, exact_queries, metric):
    net, X, y, Xq, yq, *_ = problem
    expl = InfluenceExplainer(net, solver=CG(damping=DAMPING, max_iter=2)).fit(X, y)
    with pytest.warns(ConvergenceWarning):
        approx = expl.influences(Xq, yq)
    exact = exact_queries
    scorer = make_influence_scorer(metric, reference=Exact(damping=DAMPING), k=7)
    with pytest.warns(ConvergenceWarning):
        got = scorer(expl, Xq, yq)
    if metric == "pearson":
        expected = influence_agreement(approx, exact, method="pearson")
    else:
        expected = top_k_overlap(approx, exact, k=7)
    assert got == pytest.approx(expected, abs=1e-9)
    np.testing.assert_allclose(scorer.reference_influences(expl, Xq, yq), exact, rtol=1e-9,
                               atol=1e-12)
    assert relative_residual_score(expl, Xq, yq) == pytest.approx(expl.score(Xq, yq))


def test_scorer_disk_cache_is_shared_between_copies(problem, tmp_path, count_exact_prepares):
    import pickle

    net, X, y, Xq, yq, *_ = problem
    expl = InfluenceExplainer(net, solver=CG(damping=DAMPING)).fit(X, y)
    scorer = make_influence_scorer(reference=Exact(damping=DAMPING), memory=str(tmp_path))
    first = scorer(expl, Xq, yq)
    copy = pickle.loads(pickle.dumps(make_influence_scorer(reference=Exact(damping=DAMPING),
                                                           memory=str(tmp_path))))
    assert copy(expl, Xq, yq) == first
    assert count_exact_prepares["n"] == 1 and copy.n_reference_computations_ == 0


def test_make_influence_scorer_validates_its_arguments():
    with pytest.raises(ValueError, match="metric"):
        make_influence_scorer("kendal")
    with pytest.raises(TypeError, match="reference"):
        make_influence_scorer(reference="exact")
    with pytest.raises(ValueError, match="k must"):
        make_influence_scorer(k=0)
    with pytest.raises(TypeError, match="InfluenceExplainer"):
        make_influence_scorer()(StandardScaler(), np.ones((2, 2)))


def test_scorer_needs_a_fitted_explainer(problem):
    net, _, _, Xq, yq, *_ = problem
    with pytest.raises(NotFittedError):
        make_influence_scorer()(InfluenceExplainer(net), Xq, yq)


# ---------------------------------------------------------------------------- pipelines
def test_explainer_as_last_step_trains_the_net_and_delegates(digits):
    Xtr, ytr, Xte, yte = digits
    Xtr, ytr = Xtr[:150], ytr[:150]
    Xtr64, Xte64 = Xtr.astype(np.float64), Xte.astype(np.float64)  # a float32 net, float64 data
    net = NeuralNetClassifier(MLP, module__n_hidden=8, criterion=torch.nn.CrossEntropyLoss,
                              max_epochs=3, lr=0.1, train_split=None, verbose=0)
    pipe = make_pipeline(StandardScaler(),
                         InfluenceExplainer(net, solver=Exact(damping=0.1), params=["output"]))
    torch.manual_seed(0)
    pipe.fit(Xtr64, ytr)
    step = pipe[-1]
    assert not getattr(net, "initialized_", False)  # the user's net stays unfitted
    # the trained net is the one skorch's own fit gives under the same seed
    torch.manual_seed(0)
    scaler = StandardScaler().fit(Xtr64)
    Xs, Xtes = scaler.transform(Xtr64), scaler.transform(Xte64)
    same = clone(net).fit(Xs.astype(np.float32), ytr)
    for k, v in same.module_.state_dict().items():
        torch.testing.assert_close(step.net_.module_.state_dict()[k], v)
    np.testing.assert_array_equal(pipe.predict(Xte64), same.predict(Xtes.astype(np.float32)))
    np.testing.assert_allclose(pipe.predict_proba(Xte64),
                               same.predict_proba(Xtes.astype(np.float32)), rtol=1e-6)
    # explain on the explainer step takes the transformed data
    ref = InfluenceExplainer(same, solver=Exact(damping=0.1), params=["output"]).fit(Xs, ytr)
    ex = step.explain(pipe[:-1].transform(Xte64[:3]), k=4)
    exr = ref.explain(Xtes[:3], k=4)
    np.testing.assert_array_equal(ex.helpful_indices, exr.helpful_indices)
    np.testing.assert_allclose(ex.helpful_scores, exr.helpful_scores, rtol=1e-5)
    # the pipeline's score is the explainer's residual score
    assert pipe.score(Xte64[:4], yte[:4]) == pytest.approx(step.score(Xtes[:4], yte[:4]))
    # and the influence scorer accepts the pipeline
    scorer = make_influence_scorer(reference=Exact(damping=0.1))
    assert scorer(pipe, Xte64[:4], yte[:4]) == pytest.approx(1.0)


def test_explainer_over_a_fitted_pipeline_in_a_grid_search(digits):
    Xtr, ytr, Xte, yte = digits
    torch.manual_seed(0)
    net = NeuralNetClassifier(MLP, criterion=torch.nn.CrossEntropyLoss, max_epochs=3, lr=0.1,
                              train_split=None, verbose=0)
    pipe = Pipeline([("scale", StandardScaler()), ("net", net)]).fit(Xtr, ytr)
    before = _state(pipe[-1])
    X_all, y_all = np.vstack([Xtr, Xte[:6]]), np.concatenate([ytr, yte[:6]])
    split = [(np.arange(len(Xtr)), np.arange(len(Xtr), len(X_all)))]
    search = GridSearchCV(
        InfluenceExplainer(pipe, solver=CG(damping=0.1), params=["output"]),
        {"solver__max_iter": [1, 50]}, cv=split, refit=False,
        scoring=make_influence_scorer("top_k_overlap", reference=Exact(damping=0.1), k=5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X_all, y_all)
    assert search.best_params_ == {"solver__max_iter": 50}
    assert search.best_score_ == pytest.approx(1.0)
    _assert_state(pipe[-1], before)


# ------------------------------------------------------------------------------- pandas
def test_dataframe_input_and_feature_names(digits, digits_mlp):
    Xtr, ytr, Xte, yte = digits
    cols = [f"px{i}" for i in range(Xtr.shape[1])]
    dtr, dte = pd.DataFrame(Xtr, columns=cols), pd.DataFrame(Xte, columns=cols)
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.1), params=["output"])
    expl.fit(dtr, pd.Series(ytr))
    np.testing.assert_array_equal(expl.feature_names_in_, cols)
    assert expl.n_features_in_ == 64
    plain = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.1), params=["output"])
    plain.fit(Xtr, ytr)
    assert not hasattr(plain, "feature_names_in_")
    np.testing.assert_allclose(expl.influences(dte[:3], yte[:3]),
                               plain.influences(Xte[:3], yte[:3]))
    np.testing.assert_array_equal(expl.predict(dte), digits_mlp.predict(Xte))
    np.testing.assert_allclose(expl.predict_proba(dte[:5]), digits_mlp.predict_proba(Xte[:5]))
    # the same checks as scikit-learn's estimators
    with pytest.raises(ValueError, match="feature names"):
        expl.influences(dte[cols[::-1]][:2])
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        expl.predict(Xte[:2])
    # refitting on an array forgets the names
    expl.fit(Xtr, ytr)
    assert not hasattr(expl, "feature_names_in_")


def test_to_frame_looks_up_training_rows(digits, digits_mlp):
    Xtr, ytr, Xte, _ = digits
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.1), params=["output"])
    ex = expl.fit(Xtr, ytr).explain(Xte[:2], k=3)
    frame = ex.to_frame(X=Xtr)
    assert len(frame) == 2 * 2 * 3
    np.testing.assert_array_equal(frame[[f"x{j}" for j in range(64)]].to_numpy(),
                                  Xtr[frame["train_index"].to_numpy()])
    np.testing.assert_array_equal(frame["train_label"], ytr[frame["train_index"]])
    row = frame[(frame.test_index == 1) & (frame.kind == "helpful") & (frame["rank"] == 1)]
    assert row["train_index"].item() == ex.helpful_indices[1, 0]
    named = ex.to_frame(X=pd.DataFrame(Xtr[:, :2], columns=["a", "b"]))
    np.testing.assert_array_equal(named["b"], Xtr[named["train_index"], 1])
    texts = [f"doc {i}" for i in range(len(Xtr))]
    assert list(ex.to_frame(X=texts)["train_x"]) == [texts[i] for i in frame["train_index"]]
    assert ex.to_frame().columns.tolist() == frame.columns[:7].tolist()
    with pytest.raises(ValueError, match="rows"):
        ex.to_frame(X=Xtr[:10])
    with pytest.raises(ValueError, match="score"):
        ex.to_frame(X=pd.DataFrame({"score": np.zeros(len(Xtr))}))


# ------------------------------------------------------------------------------ example
@pytest.mark.slow
def test_tune_lissa_example_runs_and_picks_a_deep_setting(monkeypatch):
    import runpy
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(__file__).resolve().parents[1] / "examples" / "plot_tune_lissa.py"
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    ns = runpy.run_path(str(path), run_name="__main__")
    try:
        table, search, scorer = ns["table"], ns["search"], ns["scorer"]
        assert len(table) == 12 and scorer.n_reference_computations_ == 1
        # the deepest recursion agrees best with Exact, and depth helps every (batch, repeats)
        assert search.best_params_["solver__depth"] == 80
        assert search.best_score_ > 0.95
        for _, group in table.groupby(["batch_size", "n_repeats"]):
            by_depth = group.set_index("depth")["agreement"]
            assert by_depth[80] > by_depth[5]
        assert ns["tuned"].solver_.depth == ns["pick"]["depth"]
        assert len(ns["fig"].axes[0].lines) == 4
    finally:
        plt.close("all")


def test_random_state_seeds_the_training_of_an_unfitted_net(digits):
    Xtr, ytr, _, _ = digits
    net = NeuralNetClassifier(MLP, criterion=torch.nn.CrossEntropyLoss, max_epochs=2, lr=0.1,
                              batch_size=32, train_split=None, verbose=0)

    def weights(random_state):
        expl = InfluenceExplainer(net, solver=CG(damping=0.1), params=["output"],
                                  random_state=random_state).fit(Xtr[:100], ytr[:100])
        return torch.cat([p.detach().ravel() for p in expl.net_.module_.parameters()])

    state = torch.get_rng_state()
    a, b, c = weights(0), weights(0), weights(1)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_grid_over_candidates_n_neighbors_never_retrains_and_scores_recall(counted_net):
    """A grid over the shortlist size: the fitted net is shared, and a recall scorer ranks the
    largest shortlist (which holds every true top-10 point) first."""
    from sk_fastif.metrics import candidate_recall
    from sk_fastif.neighbors import ExactCandidates

    net, Xtr, ytr, Xte, yte = counted_net
    before, calls = _state(net), dict(CountingNet.calls)
    X_all, y_all = np.vstack([Xtr, Xte]), np.concatenate([ytr, yte])
    split = [(np.arange(len(Xtr)), np.arange(len(Xtr), len(X_all)))]

    def recall_at_10(explainer, X, y=None):
        return candidate_recall(explainer, X, y, top=10).recall[10]

    explainer = InfluenceExplainer(net, solver=Exact(damping=0.1), params=["output"],
                                   curvature="gauss_newton", candidates=ExactCandidates(5))
    search = GridSearchCV(explainer, {"candidates__n_neighbors": [5, 40, len(Xtr)]}, cv=split,
                          scoring=recall_at_10, refit=False)
    search.fit(X_all, y_all)
    assert CountingNet.calls == calls
    _assert_state(net, before)
    assert search.best_params_ == {"candidates__n_neighbors": len(Xtr)}
    scores = search.cv_results_["mean_test_score"]
    assert scores[2] == pytest.approx(1.0) and scores[0] <= scores[1] <= scores[2]
