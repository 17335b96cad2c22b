"""InfluenceExplainer API behaviour: explain/influences consistency, pipelines, no side effects."""

import copy

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier

from sk_fastif import Explanation, InfluenceExplainer
from sk_fastif.solvers import CG, Exact

from .conftest import MLP


@pytest.fixture(scope="module")
def exact_expl(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    return InfluenceExplainer(digits_mlp, solver=Exact(damping=1e-2),
                              curvature="gauss_newton").fit(Xtr, ytr)


def test_explain_is_consistent_with_influences(digits, exact_expl):
    _, _, Xte, yte = digits
    scores = exact_expl.influences(Xte[:6], yte[:6])
    ex = exact_expl.explain(Xte[:6], yte[:6], k=7)
    assert isinstance(ex, Explanation)
    assert ex.helpful_indices.shape == ex.harmful_indices.shape == (6, 7)
    for i in range(6):
        order = np.argsort(scores[i])
        np.testing.assert_array_equal(ex.harmful_indices[i], order[:7])
        np.testing.assert_array_equal(ex.helpful_indices[i], order[::-1][:7])
        np.testing.assert_allclose(ex.helpful_scores[i], scores[i, order[::-1][:7]])
        np.testing.assert_allclose(ex.harmful_scores[i], scores[i, order[:7]])
    assert np.all(np.diff(ex.helpful_scores, axis=1) <= 0)
    assert np.all(np.diff(ex.harmful_scores, axis=1) >= 0)


def test_y_none_explains_the_predicted_label(digits, digits_mlp, exact_expl):
    _, _, Xte, yte = digits
    pred = digits_mlp.predict(Xte[:8])
    np.testing.assert_allclose(exact_expl.influences(Xte[:8]),
                               exact_expl.influences(Xte[:8], pred))
    ex = exact_expl.explain(Xte[:8], k=3)
    np.testing.assert_array_equal(ex.test_labels, pred)


def test_explaining_a_wrong_label_differs_from_the_predicted_one(digits, exact_expl):
    _, _, Xte, _ = digits
    pred = exact_expl.predict(Xte[:4])
    other = (pred + 1) % 10
    assert not np.allclose(exact_expl.influences(Xte[:4], other), exact_expl.influences(Xte[:4]))


def test_self_influence_is_the_diagonal(digits, exact_expl):
    Xtr, ytr, _, _ = digits
    full = exact_expl.influences(Xtr[:12], ytr[:12])
    np.testing.assert_allclose(exact_expl.self_influence()[:12], np.diag(full[:, :12]),
                               rtol=1e-4)
    np.testing.assert_allclose(exact_expl.self_influence(Xtr[:12], ytr[:12]),
                               np.diag(full[:, :12]), rtol=1e-4)
    # with a positive definite curvature, self-influence is non-negative
    assert np.all(exact_expl.self_influence() >= 0)


def test_influence_factors_reproduce_scores(digits, exact_expl):
    Xtr, ytr, Xte, yte = digits
    F = exact_expl.influence_factors(Xte[:3], yte[:3])
    assert F.shape == (3, exact_expl.n_params_)
    G = exact_expl.engine_.gradients(exact_expl.engine_.X_train,
                                            exact_expl.engine_.y_train).numpy()
    want = F @ G.T / len(Xtr)  # float32 products, summed in another order than the scores
    np.testing.assert_allclose(exact_expl.influences(Xte[:3], yte[:3]), want, rtol=1e-4,
                               atol=1e-5 * np.abs(want).max())


def test_score_is_zero_for_exact_and_negative_for_a_truncated_cg(digits, digits_mlp, exact_expl):
    Xtr, ytr, Xte, yte = digits
    assert exact_expl.score(Xte[:5], yte[:5]) > -1e-3
    with pytest.warns(Warning):
        rough = InfluenceExplainer(digits_mlp, solver=CG(damping=1e-2, max_iter=2),
                                   curvature="gauss_newton").fit(Xtr, ytr)
        assert rough.score(Xte[:5], yte[:5]) < -0.05


def test_pipeline_with_scaler_equals_net_on_scaled_data(digits):
    Xtr, ytr, Xte, yte = digits
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        MLP, criterion=torch.nn.CrossEntropyLoss, max_epochs=5, lr=0.1, train_split=None, verbose=0)
    pipe = make_pipeline(StandardScaler(), net).fit(Xtr, ytr)
    sc = pipe[0]
    a = InfluenceExplainer(pipe, solver=Exact(damping=1e-2), curvature="gauss_newton")
    b = InfluenceExplainer(pipe[-1], solver=Exact(damping=1e-2), curvature="gauss_newton")
    sa = a.fit(Xtr, ytr).influences(Xte[:4], yte[:4])
    sb = b.fit(sc.transform(Xtr), ytr).influences(sc.transform(Xte[:4]), yte[:4])
    np.testing.assert_allclose(sa, sb, rtol=1e-5)
    np.testing.assert_array_equal(a.predict(Xte[:4]), pipe.predict(Xte[:4]))
    np.testing.assert_allclose(a.predict_proba(Xte[:4]), pipe.predict_proba(Xte[:4]))


def _snapshot(net):
    return ({k: v.clone() for k, v in net.module_.state_dict().items()},
            [m.training for m in net.module_.modules()],
            copy.deepcopy(net.optimizer_.state_dict()))


def _assert_same(net, snap):
    state, modes, opt = snap
    for k, v in net.module_.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in net.module_.modules()] == modes
    assert all(p.grad is None for p in net.module_.parameters())
    assert str(net.optimizer_.state_dict()) == str(opt)


@pytest.mark.filterwarnings("ignore:CG did not converge")  # truncated on purpose: fast
@pytest.mark.parametrize("train_mode", [True, False])
def test_users_net_is_unchanged_by_every_method(digits, digits_mlp, train_mode):
    Xtr, ytr, Xte, yte = digits
    net = copy.deepcopy(digits_mlp)
    net.module_.train(train_mode)
    snap = _snapshot(net)
    expl = InfluenceExplainer(net, solver=CG(damping=1e-2, max_iter=20),
                              curvature="gauss_newton")
    expl.fit(Xtr[:200], ytr[:200])  # a part of the data: self_influence solves every row
    _assert_same(net, snap)
    for call in (lambda: expl.influences(Xte[:3]), lambda: expl.explain(Xte[:3], k=2),
                 lambda: expl.influence_factors(Xte[:3]), lambda: expl.self_influence(),
                 lambda: expl.score(Xte[:3]), lambda: expl.predict(Xte[:3]),
                 lambda: expl.predict_proba(Xte[:3])):
        call()
        _assert_same(net, snap)


def test_unfitted_net_is_cloned_and_fitted(digits):
    Xtr, ytr, Xte, _ = digits
    net = NeuralNetClassifier(
        MLP, criterion=torch.nn.CrossEntropyLoss, max_epochs=3, lr=0.1, train_split=None, verbose=0)
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-1), curvature="gauss_newton")
    expl.fit(Xtr, ytr)
    assert not getattr(net, "initialized_", False)  # the user's object stays unfitted
    assert expl.fitted_estimator_ is not net and expl.net_.initialized_
    assert expl.influences(Xte[:2]).shape == (2, len(Xtr))


def test_fitted_net_is_used_as_is(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=1e-1)).fit(Xtr, ytr)
    assert expl.fitted_estimator_ is digits_mlp


def test_regressor_requires_y(ridge_net):
    net, X, y = ridge_net
    expl = InfluenceExplainer(net, solver=Exact()).fit(X, y)
    with pytest.raises(ValueError, match="regressor"):
        expl.influences(X[:2])
    assert expl.influences(X[:2], y[:2]).shape == (2, len(X))
    # 1-D targets are accepted for a single-output regressor
    np.testing.assert_allclose(expl.influences(X[:2], y[:2].ravel()), expl.influences(X[:2], y[:2]))


def test_methods_before_fit_raise_not_fitted(digits_mlp, digits):
    _, _, Xte, _ = digits
    expl = InfluenceExplainer(digits_mlp)
    for call in (expl.influences, expl.explain, expl.influence_factors, expl.score,
                 expl.predict):
        with pytest.raises(NotFittedError):
            call(Xte[:2])
    with pytest.raises(NotFittedError):
        expl.self_influence()


def test_bad_input_gives_clear_errors(digits, digits_mlp, exact_expl):
    Xtr, ytr, Xte, yte = digits
    with pytest.raises(TypeError, match="skorch"):
        InfluenceExplainer(StandardScaler()).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="params"):
        InfluenceExplainer(digits_mlp, params=["nope"]).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="curvature"):
        InfluenceExplainer(digits_mlp, curvature="fisher").fit(Xtr, ytr)
    with pytest.raises(ValueError, match="features"):
        exact_expl.influences(Xte[:2, :10])
    with pytest.raises(ValueError, match="NaN|infinity"):
        bad = Xte[:2].copy()
        bad[0, 0] = np.nan
        exact_expl.influences(bad)
    with pytest.raises(ValueError, match="labels outside"):
        exact_expl.influences(Xte[:2], np.array([3, 12]))
    with pytest.raises(ValueError, match="rows"):
        exact_expl.influences(Xte[:2], yte[:3])
    with pytest.raises(ValueError, match="k must be"):
        exact_expl.explain(Xte[:2], k=0)
    with pytest.raises(ValueError, match="k must be"):
        exact_expl.explain(Xte[:2], k=len(Xtr) + 1)


def test_to_frame_is_tidy(digits, exact_expl):
    pytest.importorskip("pandas")
    _, ytr, Xte, _ = digits
    ex = exact_expl.explain(Xte[:3], k=4)
    df = ex.to_frame()
    assert len(df) == 3 * 2 * 4
    assert set(df.columns) >= {"test_index", "kind", "rank", "train_index", "score", "train_label"}
    row = df[(df.test_index == 1) & (df.kind == "harmful") & (df["rank"] == 2)].iloc[0]
    assert row.train_index == ex.harmful_indices[1, 1]
    assert row.train_label == ytr[ex.harmful_indices[1, 1]]
    assert row.score == pytest.approx(ex.harmful_scores[1, 1])


def test_sum_reduction_criterion_gives_per_sample_losses(digits, digits_mlp, exact_expl):
    """The loss of one point is the same whatever the criterion's reduction: scores agree."""
    Xtr, ytr, Xte, yte = digits
    net = copy.deepcopy(digits_mlp)
    net.set_params(criterion__reduction="sum")
    net.initialize_criterion()
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2), curvature="gauss_newton")
    expl.fit(Xtr, ytr)
    assert not expl.engine_.bridge.batch_loss_is_mean
    assert exact_expl.engine_.bridge.batch_loss_is_mean
    np.testing.assert_allclose(expl.influences(Xte[:3], yte[:3]),
                               exact_expl.influences(Xte[:3], yte[:3]), rtol=1e-4, atol=1e-10)


def test_non_finite_training_loss_is_reported(digits):
    # NeuralNetClassifier's default NLLLoss expects probabilities: on logits its loss is NaN
    Xtr, ytr, _, _ = digits
    net = NeuralNetClassifier(MLP, train_split=None, verbose=0).initialize()
    with pytest.raises(ValueError, match="CrossEntropyLoss"):
        InfluenceExplainer(net, solver=Exact()).fit(Xtr, ytr)


class ItemMLP(MLP):
    """The same MLP, but its forward calls ``.item()``, which ``torch.func.vmap`` cannot batch."""

    def forward(self, X):
        if float(X.abs().sum().item()) < 0:  # never true; forces the per-sample loop fallback
            X = -X
        return super().forward(X)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_loop_fallback_gives_the_vmap_results(digits, digits_mlp, curvature):
    Xtr, ytr, Xte, yte = digits
    Xtr, ytr = Xtr[:30], ytr[:30]
    twin = copy.deepcopy(digits_mlp)
    state = twin.module_.state_dict()
    twin.module_ = ItemMLP()
    twin.module_.load_state_dict(state)
    kw = dict(solver=Exact(damping=0.1), curvature=curvature, params=["output"])
    fast = InfluenceExplainer(digits_mlp, **kw).fit(Xtr, ytr)
    with pytest.warns(RuntimeWarning, match="vmap"):
        slow = InfluenceExplainer(twin, **kw).fit(Xtr, ytr)
        got = slow.influences(Xte[:2], yte[:2])
    assert not slow.engine_.bridge.use_vmap
    np.testing.assert_allclose(got, fast.influences(Xte[:2], yte[:2]), rtol=1e-4,
                               atol=1e-6 * np.abs(got).max())


def test_auto_batch_size_chunks_products_by_the_block_and_gives_the_same_scores(digits,
                                                                               digits_mlp):
    from sk_fastif._net import AUTO_ROW_VECTORS, NetBridge

    Xtr, ytr, Xte, yte = digits
    auto = InfluenceExplainer(digits_mlp, solver=CG(damping=1e-2, tol=1e-8)).fit(Xtr, ytr)
    fixed = InfluenceExplainer(digits_mlp, solver=CG(damping=1e-2, tol=1e-8),
                               batch_size=128).fit(Xtr, ytr)
    ref = fixed.influences(Xte[:4], yte[:4])
    np.testing.assert_allclose(auto.influences(Xte[:4], yte[:4]), ref, rtol=1e-4,
                               atol=1e-5 * np.abs(ref).max())
    # "auto": per-sample work in 128 rows, a block of m products over 2**15 // m rows at once;
    # an int is the size of every chunk
    bridge, ints = NetBridge(digits_mlp), NetBridge(digits_mlp, batch_size=50)
    assert [s.stop - s.start for s in bridge.chunks(400)][0] == 128
    assert [s.stop - s.start for s in bridge.chunks(5000, width=50)][0] == AUTO_ROW_VECTORS // 50
    assert {s.stop - s.start for s in ints.chunks(400, width=50)} == {50}
