"""Defects found by trying the library as a new user would, each with its fix."""

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif.solvers import Exact


@pytest.fixture(scope="module")
def linear():
    rng = np.random.RandomState(0)
    X = rng.randn(60, 4).astype(np.float32)
    y = (X[:, 0] + 0.3 * rng.randn(60) > 0).astype(np.int64)
    torch.manual_seed(0)
    net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
                              max_epochs=20, lr=0.5, train_split=None, verbose=0).fit(X, y)
    return net, X, y


@pytest.fixture(scope="module")
def expl(linear):
    net, X, y = linear
    return InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)


@pytest.mark.parametrize("scale", [3e18, 1e20])
def test_self_influence_of_huge_inputs_is_finite_and_exact(expl, linear, scale):
    """The loss, gradients and factors are finite: so is the self-score, summed in float64
    (in float32 it was inf at 1e18 and NaN at 1e20)."""
    _, X, y = linear
    Xq, yq = X[:3] * np.float32(scale), 1 - y[:3]  # the wrong labels: saturated, huge gradients
    Xt, yt = expl.as_engine_input(Xq, yq)
    G = expl.engine_.gradients(Xt, yt).double().numpy()
    F = expl.influence_factors(Xq, yq).astype(np.float64)
    assert np.isfinite(G).all() and np.isfinite(F).all() and np.abs(G).max() > scale / 10
    assert not np.isfinite((F.astype(np.float32) * G.astype(np.float32)).sum(axis=1)).all()
    got = expl.self_influence(Xq, yq)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, (F * G).sum(axis=1) / expl.n_train_, rtol=1e-5)


def test_scores_that_overflow_raise_the_librarys_error(expl, linear):
    """A product that overflows float32 is an error naming the cause, never an inf score."""
    _, X, y = linear
    Xq, yq = X[:2] * np.float32(1e20), 1 - y[:2]
    with pytest.raises(ValueError, match="not finite.*overflow"):
        expl.pool_influences(Xq, yq, X_pool=Xq, y_pool=yq)


def test_pool_errors_name_the_pool_arguments(expl, linear):
    _, X, y = linear
    bad = X[:5].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="X_pool") as info:
        expl.pool_influences(X[:2], y[:2], X_pool=bad, y_pool=y[:5])
    assert "Input X " not in str(info.value)
    with pytest.raises(ValueError, match=r"X_pool has 5 features"):
        expl.explain_pool(X[:2], y[:2], X_pool=np.hstack([X[:5], X[:5, :1]]), y_pool=y[:5],
                          k=2)
    y_bad = y[:5].astype(np.float64)
    y_bad[1] = np.nan
    with pytest.raises(ValueError, match=r"y_pool contains NaN"):
        expl.pool_influences(X[:2], y[:2], X_pool=X[:5], y_pool=y_bad)
    with pytest.raises(ValueError, match="X_pool"):
        expl.correct(X[:2], y[:2], n_steps=1, lr=0.1, X_pool=bad, y_pool=y[:5])
    # the queries' own errors still name X
    with pytest.raises(ValueError, match=r"\bX has 5 features"):
        expl.pool_influences(np.hstack([X[:2], X[:2, :1]]), y[:2], X_pool=X[:5], y_pool=y[:5])


def test_n_jobs_is_validated_at_fit_and_at_call_time(linear):
    net, X, y = linear
    with pytest.raises(ValueError, match="n_jobs"):
        InfluenceExplainer(net, solver=Exact(), n_jobs=0).fit(X, y)
    e = InfluenceExplainer(net, solver=Exact()).fit(X, y)
    for bad in ("x", 0, 1.5):
        e.set_params(n_jobs=bad)
        with pytest.raises(ValueError, match="n_jobs"):
            e.influences(X[:2], y[:2])
    e.set_params(n_jobs=-1)
    assert np.isfinite(e.influences(X[:2], y[:2])).all()


class _Bag(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(12, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, X):
        return self.head(self.embed(X).mean(dim=1))


def test_float_token_ids_are_a_type_error_naming_the_integer_inputs():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 12, size=(40, 5))
    y = (X[:, 0] > 5).astype(np.int64)
    torch.manual_seed(0)
    net = NeuralNetClassifier(_Bag, criterion=torch.nn.CrossEntropyLoss, max_epochs=2,
                              train_split=None, verbose=0).fit(X, y)
    e = InfluenceExplainer(net, solver=Exact()).fit(X, y)
    Xf = X.astype(np.float32)
    for call in (lambda: e.predict(Xf), lambda: e.influences(Xf, y),
                 lambda: e.explain(Xf[:3], y[:3], k=2), lambda: e.self_influence(Xf, y),
                 lambda: InfluenceExplainer(net, solver=Exact()).fit(Xf, y)):
        with pytest.raises(TypeError, match=r"\['embed'\] take integer token ids.*int64"):
            call()
    assert e.predict(X[:3]).shape == (3,)  # integer ids still work
