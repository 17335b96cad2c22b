"""Persistence: a fitted explainer survives pickle / joblib and explains new points identically."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif.solvers import CG, Exact, LiSSA
from sk_fastif.toy import TanhMLP


def _pickle(obj, tmp_path):
    return pickle.loads(pickle.dumps(obj))


def _joblib(obj, tmp_path):
    path = tmp_path / "explainer.joblib"
    joblib.dump(obj, path)
    return joblib.load(path)


def _assert_same_explanations(a, b, X):
    ea, eb = a.explain(X, k=5), b.explain(X, k=5)
    for name in ("helpful_indices", "helpful_scores", "harmful_indices", "harmful_scores",
                 "test_labels"):
        np.testing.assert_array_equal(getattr(ea, name), getattr(eb, name), err_msg=name)
    assert ea.to_frame().equals(eb.to_frame())


@pytest.fixture(scope="module")
def small_digits(digits):
    Xtr, ytr, Xte, yte = digits
    return Xtr[:200], ytr[:200], Xte, yte


@pytest.fixture(scope="module")
def net(small_digits):
    Xtr, ytr, _, _ = small_digits
    torch.manual_seed(0)
    return NeuralNetClassifier(TanhMLP, module__n_hidden=8, criterion=torch.nn.CrossEntropyLoss,
                               max_epochs=5, lr=0.1, train_split=None, verbose=0).fit(Xtr, ytr)


@pytest.mark.parametrize("roundtrip", [_pickle, _joblib], ids=["pickle", "joblib"])
@pytest.mark.parametrize(
    "solver",
    [Exact(damping=0.1), CG(damping=0.1, max_iter=30),
     LiSSA(damping=0.1, scale=10.0, depth=10, batch_size=32, random_state=0)],
    ids=["Exact", "CG", "LiSSA"],
)
def test_round_trip_explains_new_points_identically(small_digits, net, solver, roundtrip,
                                                    tmp_path, monkeypatch):
    Xtr, ytr, Xte, yte = small_digits
    # the last layer only: its cross-entropy Hessian is positive semi-definite, and small
    expl = InfluenceExplainer(net, solver=solver, params=["output"]).fit(Xtr, ytr)
    expl.explain(Xte[:2], k=3)  # used before saving
    loaded = roundtrip(expl, tmp_path)
    assert loaded.net_ is not net and loaded.net_ is loaded.fitted_estimator_

    # reused without refitting: the prepared solver (e.g. Exact's factorisation) is kept, so
    # loading does not recompute it (LiSSA's automatic scale: see the next tests)
    def no_prepare(self, op):
        raise AssertionError("the loaded solver was prepared again")

    monkeypatch.setattr(type(solver), "prepare", no_prepare)
    _assert_same_explanations(expl, loaded, Xte[5:15])  # points neither saw before
    np.testing.assert_array_equal(expl.self_influence(Xtr[:5], ytr[:5]),
                                  loaded.self_influence(Xtr[:5], ytr[:5]))
    np.testing.assert_array_equal(expl.predict(Xte), loaded.predict(Xte))
    assert loaded.score(Xte[:4], yte[:4]) == expl.score(Xte[:4], yte[:4])


def test_loaded_explainer_matches_a_fresh_fit(small_digits, net, tmp_path):
    """Independent check: the loaded explainer equals one fitted anew on the loaded net."""
    Xtr, ytr, Xte, _ = small_digits
    expl = InfluenceExplainer(net, solver=Exact(damping=0.1), params=["output"])
    loaded = _joblib(expl.fit(Xtr, ytr), tmp_path)
    fresh = InfluenceExplainer(loaded.net_, solver=Exact(damping=0.1), params=["output"])
    np.testing.assert_allclose(loaded.influences(Xte[:4]), fresh.fit(Xtr, ytr).influences(Xte[:4]),
                               rtol=1e-6, atol=1e-12)
    # the loaded net is a working copy: its gradients are wired to its own parameters
    assert np.abs(loaded.influence_factors(Xte[:2])).max() > 0


def test_lissa_automatic_scale_and_restarts_survive(small_digits, net):
    Xtr, ytr, Xte, _ = small_digits
    # no random_state on the solver: the explainer's seeds it, and the scale comes from prepare
    expl = InfluenceExplainer(net, solver=LiSSA(damping=0.1, depth=10), random_state=3,
                              params=["output"]).fit(Xtr, ytr)
    expl.solver_.scale_ *= 1.5  # as a restart would have left it
    loaded = _pickle(expl, None)
    # a second estimate (prepare) would reset it to the power-iteration value
    assert loaded.solver_.scale_ == expl.solver_.scale_
    np.testing.assert_array_equal(loaded.influences(Xte[:3]), expl.influences(Xte[:3]))


def test_pipelines_round_trip(small_digits, tmp_path):
    Xtr, ytr, Xte, _ = small_digits
    X64, Xte64 = Xtr.astype(np.float64), Xte.astype(np.float64)
    net = NeuralNetClassifier(TanhMLP, module__n_hidden=8, criterion=torch.nn.CrossEntropyLoss,
                              max_epochs=3, lr=0.1, train_split=None, verbose=0)
    torch.manual_seed(0)
    # an explainer ending a pipeline (its net trained by fit)...
    pipe = make_pipeline(StandardScaler(), InfluenceExplainer(net, solver=Exact(damping=0.1),
                                                              params=["output"])).fit(X64, ytr)
    loaded = _joblib(pipe, tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(Xte64), pipe.predict_proba(Xte64))
    Z = pipe[:-1].transform(Xte64[:4])
    _assert_same_explanations(pipe[-1], loaded[-1], Z)
    # ... and an explainer over a fitted pipeline
    fitted = make_pipeline(StandardScaler(), pipe[-1].net_)
    fitted[0].fit(X64)
    expl = InfluenceExplainer(fitted, solver=CG(damping=0.1), params=["output"]).fit(X64, ytr)
    _assert_same_explanations(expl, _pickle(expl, tmp_path), Xte64[:4])


def test_unfitted_explainer_round_trips(net):
    expl = InfluenceExplainer(net, solver=LiSSA(depth=3))
    loaded = _pickle(expl, None)
    assert loaded.get_params()["solver"].depth == 3
    assert not hasattr(loaded, "solver_")
