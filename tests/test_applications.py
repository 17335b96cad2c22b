"""The applications: correct, pool scoring, mislabel ranking and their datasets.

The step test and the mislabel curve's closed forms live in tests/metrics/.

Truth comes from closed forms (an explicit Hessian of a small linear model, one hand-made SGD
step), from the planted answer (flipped labels, the shortcut pixel) or from another path.
"""

import copy
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import (
    SHORTCUT_PIXELS,
    flip_labels,
    load_digits_split,
    make_group_shift,
    make_shortcut_digits,
)
from sk_fastif.metrics import mislabel_detection_curve
from sk_fastif.neighbors import ExactCandidates
from sk_fastif.solvers import Exact
from sk_fastif.toy import train_mlp_classifier

from .conftest import make_linear_problem

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# ============================================================================== fixtures
# ``linear`` (an SGD-trained softmax regression) is in conftest.py.


def _explicit_scores(net, X_train, y_train, X, y, Xc, yc, damping):
    """(1/n) g(x)ᵀ (H + λI)⁻¹ g(c) with H the explicit Hessian of the mean training loss."""
    module = net.module_
    names = [n for n, _ in module.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    shapes = [p.shape for p in module.parameters()]

    def loss(theta, Xa, ya):
        parts, start = {}, 0
        for name, shape in zip(names, shapes):
            size = int(np.prod(shape))
            parts[name] = theta[start:start + size].reshape(shape)
            start += size
        out = torch.func.functional_call(module, parts, (Xa,))
        return torch.nn.functional.cross_entropy(out, ya)

    t = torch.as_tensor
    H = torch.autograd.functional.hessian(lambda th: loss(th, t(X_train), t(y_train)), theta0)
    grad = torch.func.grad(loss)
    G = torch.stack([grad(theta0, t(X[i:i + 1]), t(y[i:i + 1])) for i in range(len(X))])
    Gc = torch.stack([grad(theta0, t(Xc[i:i + 1]), t(yc[i:i + 1])) for i in range(len(Xc))])
    S = torch.linalg.solve(H + damping * torch.eye(len(theta0), dtype=H.dtype), G.T).T
    return (S @ Gc.T).numpy() / len(X_train)


def _params(estimator):
    net = estimator[-1] if hasattr(estimator, "steps") else estimator
    return {k: v.detach().clone() for k, v in net.module_.state_dict().items()}


@pytest.fixture(scope="module")
def shortcut():
    """The shortcut digits, an SGD-trained MLP, and the challenge split in three parts."""
    X_tr, X_ch, y_tr, y_ch = make_shortcut_digits(n_train=600, n_challenge=600, agreement=0.95,
                                                  random_state=1)
    net = train_mlp_classifier(X_tr, y_tr, n_out=10, random_state=1, lr=0.2, max_epochs=15,
                               optimizer=torch.optim.SGD)
    parts = np.array_split(np.arange(len(X_ch)), 3)
    return net, X_tr, y_tr, [(X_ch[p], y_ch[p]) for p in parts]


# ============================================================================ pool scores
def test_pool_influences_match_the_explicit_hessian(linear):
    net, X, y = linear
    X_pool, y_pool = make_linear_problem(seed=1, n=25)
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    got = expl.pool_influences(X[:5], y[:5], X_pool=X_pool, y_pool=y_pool)
    want = _explicit_scores(net, X, y, X[:5], y[:5], X_pool, y_pool, 1e-2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    ex = expl.explain_pool(X[:5], y[:5], X_pool=X_pool, y_pool=y_pool, k=4)
    np.testing.assert_array_equal(ex.helpful_indices, np.argsort(-want, axis=1)[:, :4])
    np.testing.assert_array_equal(ex.harmful_indices, np.argsort(want, axis=1)[:, :4])
    np.testing.assert_array_equal(ex.train_labels, y_pool)


def test_pool_of_training_rows_scores_as_the_training_set(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    rows = np.array([3, 17, 40, 41])
    got = expl.pool_influences(X[:4], y[:4], X_pool=X[rows], y_pool=y[rows], query="mean")
    np.testing.assert_allclose(got, expl.influences(X[:4], y[:4], query="mean")[:, rows],
                               rtol=1e-9)


# ================================================================================ correct
def test_pool_shortlists_are_the_nearest_pool_points(linear):
    net, X, y = linear  # a linear module: the embedding (the last layer's input) is X itself
    X_pool, y_pool = make_linear_problem(seed=3, n=30)
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2),
                              candidates=ExactCandidates(n_neighbors=6)).fit(X, y)
    got = expl.pool_influences(X[:4], y[:4], X_pool=X_pool, y_pool=y_pool)
    assert got.shape == (4, 30)
    nearest = NearestNeighbors(n_neighbors=6).fit(X_pool).kneighbors(X[:4])[1]
    want = _explicit_scores(net, X, y, X[:4], y[:4], X_pool, y_pool, 1e-2)
    for i in range(4):
        row = got.getrow(i)
        assert sorted(row.indices.tolist()) == sorted(nearest[i].tolist())
        np.testing.assert_allclose(row.data, want[i, row.indices], rtol=1e-6, atol=1e-12)
    ex = expl.explain_pool(X[:4], y[:4], X_pool=X_pool, y_pool=y_pool, k=3)
    assert all(set(ex.helpful_indices[i]) <= set(nearest[i]) for i in range(4))


def test_correct_with_candidates_steps_on_the_anchors_shortlist(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2),
                              candidates=ExactCandidates(n_neighbors=8)).fit(X, y)
    fixed = expl.correct(X[:5], y[:5], n_steps=1, n_anchors=5, n_helpful=4, lr=0.1,
                         random_state=0)
    shortlist = NearestNeighbors(n_neighbors=8).fit(X).kneighbors(X[:5].mean(0, keepdims=True))
    chosen = fixed.correction_history_[1]["indices"]
    assert len(chosen) == 4 and set(chosen) <= set(shortlist[1][0])
    with pytest.raises(ValueError, match="n_neighbors"):
        expl.correct(X[:5], y[:5], n_helpful=9)


def test_correct_takes_sgd_steps_on_the_pool_points_only(linear):
    net, X, y = linear
    X_pool, y_pool = make_linear_problem(seed=2, n=30)
    before = _params(net)
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    fixed = expl.correct(X[:8], y[:8], n_steps=1, n_anchors=8, n_helpful=5, lr=0.3,
                         X_pool=X_pool, y_pool=y_pool, random_state=0)
    assert type(fixed) is type(net) and fixed is not net
    for k, v in _params(net).items():  # the user's net is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    chosen = fixed.correction_history_[1]["indices"]
    want_idx = np.argsort(-expl.pool_influences(X[:8], y[:8], X_pool=X_pool, y_pool=y_pool,
                                                query="mean")[0])[:5]
    assert sorted(chosen.tolist()) == sorted(want_idx.tolist())
    # the step is one SGD step on the mean loss of those pool points, nothing else
    _assert_one_sgd_step(net, fixed, X_pool[chosen], y_pool[chosen], lr=0.3)


def _assert_one_sgd_step(net, fixed, inputs, targets, lr):
    """``fixed``'s module is ``net``'s after one SGD step on the mean loss of the points."""
    manual = copy.deepcopy(net.module_)
    torch.nn.functional.cross_entropy(manual(torch.as_tensor(inputs)),
                                      torch.as_tensor(targets)).backward()
    with torch.no_grad():
        for p in manual.parameters():
            p -= lr * p.grad
    for v, p in zip(fixed.module_.state_dict().values(), manual.state_dict().values()):
        torch.testing.assert_close(v, p, rtol=1e-10, atol=1e-12)


def test_correct_steps_on_the_replay_too(linear):
    net, X, y = linear
    X_pool, y_pool = make_linear_problem(seed=2, n=30)
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    fixed = expl.correct(X[:8], y[:8], n_steps=1, n_anchors=8, n_helpful=5, n_replay=7,
                         lr=0.3, X_pool=X_pool, y_pool=y_pool, random_state=0)
    entry = fixed.correction_history_[1]
    chosen, replay = entry["indices"], entry["replay"]
    assert len(replay) == 7 and len(set(replay.tolist())) == 7 and replay.max() < len(y)
    # one SGD step on the mean loss of the pool points and the replayed training rows
    _assert_one_sgd_step(net, fixed, np.concatenate([X_pool[chosen], X[replay]]),
                         np.concatenate([y_pool[chosen], y[replay]]), lr=0.3)


def test_correct_strategies_see_the_same_anchors_and_replay(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    runs = {(strategy, seed): expl.correct(X[:20], y[:20], n_steps=4, n_anchors=5,
                                           n_helpful=5, n_replay=3, lr=0.1, refresh=None,
                                           strategy=strategy, random_state=seed)
            for strategy in ("helpful", "random", "anchors") for seed in (0, 1)}

    def drawn(key, field):
        return [h[field].tolist() for h in runs[key].correction_history_[1:]]

    for seed in (0, 1):
        for field in ("anchors", "replay"):
            want = drawn(("helpful", seed), field)
            assert drawn(("random", seed), field) == want
            assert drawn(("anchors", seed), field) == want
        # the anchors strategy steps on exactly the anchors drawn
        assert drawn(("anchors", seed), "indices") == drawn(("anchors", seed), "anchors")
    assert drawn(("helpful", 0), "anchors") != drawn(("helpful", 1), "anchors")
    # a RandomState instance in the same state draws the same anchors
    again = expl.correct(X[:20], y[:20], n_steps=4, n_anchors=5, n_helpful=5, lr=0.1,
                         refresh=None, strategy="random",
                         random_state=np.random.RandomState(0))
    assert [h["anchors"].tolist() for h in again.correction_history_[1:]] == drawn(
        ("helpful", 0), "anchors")


@pytest.fixture(scope="module")
def two_layer():
    """A 7-16-2 tanh MLP trained by SGD on the spurious-feature task, and its splits."""
    X, Xq, y, yq, _, gq = make_group_shift("spurious", n_train=300, n_test=600,
                                           random_state=0)
    net = train_mlp_classifier(X, y, n_out=2, n_hidden=16, random_state=0, lr=0.1,
                               max_epochs=40, optimizer=torch.optim.SGD)
    return net, X, y, (Xq[:200], yq[:200]), (Xq[200:], yq[200:], gq[200:])


def test_correct_steps_only_the_explainer_params(two_layer):
    net, X, y, (Xe, ye), _ = two_layer
    before = _params(net)
    expl = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3)).fit(X, y)
    for strategy in ("helpful", "random", "anchors"):
        fixed = expl.correct(Xe, ye, n_steps=3, lr=0.5, n_replay=10, strategy=strategy,
                             random_state=0)
        after = _params(fixed)
        for name in ("hidden.weight", "hidden.bias"):
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
        assert not torch.equal(after["output.weight"], before["output.weight"])
        assert all(p.grad is None for p in fixed.module_.parameters())
    # every parameter moves when the explainer differentiates them all
    everything = InfluenceExplainer(net, solver=Exact(damping=1e-3)).fit(X, y)
    after = _params(everything.correct(Xe, ye, n_steps=1, lr=0.5, random_state=0))
    assert all(not torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("refresh, refits", [(None, 0), (1, 3), (2, 1)])
def test_correct_refits_only_when_refreshing(two_layer, monkeypatch, refresh, refits):
    net, X, y, (Xe, ye), _ = two_layer
    expl = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3)).fit(X, y)
    fits = []
    original = InfluenceExplainer.fit

    def counted(self, *args, **kwargs):
        fits.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InfluenceExplainer, "fit", counted)
    expl.correct(Xe, ye, n_steps=4, lr=0.1, refresh=refresh, random_state=0)
    # step 1 scores with the explainer itself (the copy still equals its net); refresh=m
    # refits before steps m + 1, 2m + 1, ...
    assert len(fits) == refits


def test_correct_keeps_a_step_that_respects_the_rest(two_layer):
    net, X, y, (Xe, ye), (Xv, yv, gv) = two_layer
    wrong = net.predict(Xe) != ye
    expl = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3)).fit(X, y)
    common = {"n_steps": 15, "lr": 0.5, "refresh": None, "X_val": Xv[gv], "y_val": yv[gv],
              "X_rest": Xv[~gv], "y_rest": yv[~gv], "random_state": 0}
    free = expl.correct(Xe[wrong], ye[wrong], max_rest_drop=1.0, **common)
    bound = expl.correct(Xe[wrong], ye[wrong], max_rest_drop=0.01, **common)
    history = bound.correction_history_
    assert [h["rest_accuracy"] for h in history] == [
        h["rest_accuracy"] for h in free.correction_history_]  # the same path
    start = history[0]["rest_accuracy"]
    allowed = [h for h in history if h["rest_accuracy"] >= start - 0.01 - 1e-12]
    kept = history[bound.correction_step_]
    assert kept in allowed
    assert kept["val_accuracy"] == max(h["val_accuracy"] for h in allowed)
    assert kept["rest_accuracy"] == pytest.approx(
        float(np.mean(bound.predict(Xv[~gv]) == yv[~gv])))
    # unconstrained, the best target step overshoots: it costs the rest more than allowed
    overshoot = free.correction_history_[free.correction_step_]
    assert overshoot["rest_accuracy"] < start - 0.01
    assert overshoot["val_accuracy"] > kept["val_accuracy"]


def test_correct_beats_random_on_the_shortcut_challenge(shortcut):
    net, X_tr, y_tr, ((X_a, y_a), (X_v, y_v), (X_t, y_t)) = shortcut
    before = _params(net)
    wrong = net.predict(X_a) != y_a
    breaks_shortcut = np.argmax(X_tr[:, SHORTCUT_PIXELS], axis=1) != y_tr  # the planted answer
    expl = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3)).fit(X_tr, y_tr)
    accuracy, chosen = {}, {}
    for strategy in ("helpful", "random"):
        fixed = expl.correct(X_a[wrong], y_a[wrong], n_steps=8, lr=0.1, n_helpful=10,
                             strategy=strategy, refresh=None, X_val=X_v, y_val=y_v,
                             random_state=0)
        assert type(fixed) is type(net)
        accuracy[strategy] = float(np.mean(fixed.predict(X_t) == y_t))
        history = fixed.correction_history_
        chosen[strategy] = np.concatenate([h["indices"] for h in history])
        assert [h["step"] for h in history] == list(range(9))
        assert set(history[0]) == {"step", "indices", "anchors", "replay", "val_loss",
                                   "val_accuracy", "rest_loss", "rest_accuracy"}
        kept = history[fixed.correction_step_]
        assert kept["val_accuracy"] == max(h["val_accuracy"] for h in history)
        assert kept["val_accuracy"] == pytest.approx(float(np.mean(fixed.predict(X_v) == y_v)))
    for k, v in _params(net).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # influence finds the training images that contradict the shortcut (5% of them)
    assert breaks_shortcut[chosen["helpful"]].mean() >= 0.3 > 0.15 >= breaks_shortcut[
        chosen["random"]].mean()
    # one seed on 200 challenge images says nothing about accuracy: benchmarks/correct.py
    # measures it over seeds
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())


def test_correct_beats_random_on_the_spurious_group(two_layer):
    net, X, y, (Xe, ye), (Xq, yq, gq) = two_layer
    (Xv, yv, gv), (Xt, yt, gt) = (Xq[:200], yq[:200], gq[:200]), (Xq[200:], yq[200:], gq[200:])
    wrong = net.predict(Xe) != ye
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-3)).fit(X, y)

    def accuracy(estimator, rows):
        return float(np.mean(estimator.predict(Xt[rows]) == yt[rows]))

    got = {}
    for strategy in ("helpful", "random"):
        fixed = expl.correct(Xe[wrong], ye[wrong], n_steps=20, lr=0.1, n_replay=30,
                             refresh=None, strategy=strategy, X_val=Xv[gv], y_val=yv[gv],
                             X_rest=Xv[~gv], y_rest=yv[~gv], random_state=0)
        got[strategy] = accuracy(fixed, gt), accuracy(fixed, ~gt)
    before = accuracy(net, gt), accuracy(net, ~gt)
    # the misled group gains on the random baseline; the rest keeps its accuracy
    assert got["helpful"][0] >= got["random"][0] + 0.03, (before, got)
    assert got["helpful"][1] >= before[1] - 0.02, (before, got)


def test_correct_on_a_pipeline_returns_a_pipeline_and_keeps_the_user_one(linear):
    net, X, y = linear
    pipe = make_pipeline(FunctionTransformer(lambda a: a * 2.0), copy.deepcopy(net))
    pipe[:-1].fit(X)
    before = _params(pipe)
    expl = InfluenceExplainer(pipe, solver=Exact(damping=1e-2)).fit(X / 2.0, y)
    fixed = expl.correct(X[:6] / 2.0, y[:6], n_steps=2, lr=0.1, random_state=0)
    assert type(fixed) is type(pipe) and fixed is not pipe
    assert [h["val_loss"] for h in fixed.correction_history_] == [None, None, None]
    assert fixed.correction_step_ == 2
    for k, v in _params(pipe).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert any(not torch.equal(v, before[k]) for k, v in _params(fixed).items())


@pytest.mark.parametrize("kwargs, match", [
    ({"X": np.zeros((0, 4))}, "empty"),
    ({"y": np.full(8, 7)}, "outside|never trained"),
    ({"X_pool": np.zeros((5, 4))}, "without labels"),
    ({"n_helpful": 61}, "exceeds the 60 points of the training set"),
    ({"X_pool": np.zeros((5, 4)), "y_pool": np.zeros(5, dtype=np.int64), "n_helpful": 6},
     "exceeds the 5 points of the pool"),
    ({"X_val": np.zeros((3, 4))}, "X_val and y_val"),
    ({"X_rest": np.zeros((3, 4))}, "X_rest and y_rest"),
    ({"X_rest": np.zeros((3, 4)), "y_rest": np.zeros(3, dtype=np.int64)}, "pass X_val"),
    ({"n_replay": 61}, "n_replay=61 exceeds the 60 points"),
    ({"max_rest_drop": -0.1}, "max_rest_drop"),
    ({"strategy": "anchors", "X_pool": np.zeros((5, 4)), "y_pool": np.zeros(5, dtype=int)},
     "anchors"),
    ({"strategy": "nearest"}, "strategy"),
    ({"n_steps": 0}, "n_steps"),
])
def test_correct_refuses_bad_input(linear, kwargs, match):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    args = {"X": X[:8], "y": y[:8], **kwargs}
    with pytest.raises(ValueError, match=match):
        expl.correct(args.pop("X"), args.pop("y"), **args)


def test_pool_scoring_refuses_a_pool_without_labels(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    with pytest.raises(ValueError, match="without labels"):
        expl.explain_pool(X[:2], y[:2], X_pool=X, y_pool=None)
    with pytest.raises(ValueError, match="k"):
        expl.explain_pool(X[:2], y[:2], X_pool=X[:3], y_pool=y[:3], k=4)


# ============================================================================= mislabels
def test_self_influence_finds_planted_flipped_labels():
    X, _, y, _ = load_digits_split(split="permutation", n_train=500, n_test=0, random_state=3)
    y_noisy, flipped = flip_labels(y, 0.1, random_state=3)
    is_flipped = np.isin(np.arange(len(y)), flipped)
    net = train_mlp_classifier(X, y_noisy, n_out=10, random_state=3, max_epochs=30)
    expl = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3)).fit(X, y_noisy)
    fi, ff, auc = mislabel_detection_curve(expl.self_influence(), is_flipped)
    found_20 = float(np.interp(0.2, fi, ff))
    assert found_20 >= 0.6 and auc >= 0.8, (found_20, auc)  # chance: 0.2 and 0.5


# =============================================================================== datasets
def test_shortcut_digits_plant_the_shortcut():
    X_tr, X_ch, y_tr, y_ch = make_shortcut_digits(n_train=400, n_challenge=100, agreement=0.8,
                                                  random_state=1)
    for X in (X_tr, X_ch):
        assert np.all(X[:, SHORTCUT_PIXELS].sum(axis=1) == 1.0)
    marker = lambda X: np.argmax(X[:, SHORTCUT_PIXELS], axis=1)  # noqa: E731
    assert np.mean(marker(X_tr) == y_tr) == 0.8
    assert not np.any(marker(X_ch) == y_ch)
    again = make_shortcut_digits(n_train=400, n_challenge=100, agreement=0.8, random_state=1)
    np.testing.assert_array_equal(again[0], X_tr)
    with pytest.raises(ValueError, match="agreement"):
        make_shortcut_digits(agreement=1.5)


# =============================================================================== examples
@pytest.mark.parametrize("name, check", [
    ("plot_correct_shortcut.py",
     lambda ns: ns["from_group"]["helpful"] > 3 * ns["from_group"]["random"]
     and ns["accuracy"]["helpful"][0] > ns["accuracy"]["random"][0]),
    ("plot_mislabels.py", lambda ns: ns["found_in_top"]["self-influence"][0.2] > 0.5),
    ("plot_step_test.py", lambda ns: ns["result"].helpful.mean() < ns["result"].harmful.mean()),
])
def test_gallery_examples_run(monkeypatch, name, check):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    ns = runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert check(ns)
    assert plt.get_fignums()
    plt.close("all")
