"""The kept training gradients: Linear factors where they are exact, dense rows otherwise.

Every form is checked against per-sample gradients taken by ``torch.func`` on the module itself,
and the scores made from it against the streamed ones.
"""

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif._net import NetBridge
from sk_fastif._store import DenseGradients, LinearFactors, keep_gradients
from sk_fastif.neighbors import ExactCandidates
from sk_fastif.solvers import Exact

N, D, C = 60, 5, 3


def _data(seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(N, D).astype("float32")
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype("int64") + (X[:, 2] > 1).astype("int64")
    return torch.as_tensor(X), torch.as_tensor(y)


class MLP(torch.nn.Module):
    def __init__(self, bias_last=True):
        super().__init__()
        self.hidden = torch.nn.Linear(D, 7)
        self.out = torch.nn.Linear(7, C, bias=bias_last)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


class Twice(torch.nn.Module):  # one Linear layer applied twice: shared weights
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(D, 4)
        self.mix = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, C)

    def forward(self, X):
        return self.out(torch.tanh(self.mix(torch.tanh(self.mix(torch.tanh(self.inp(X)))))))


class Tied(torch.nn.Module):  # a Linear weight also used outside its layer
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(D, D)
        self.out = torch.nn.Linear(D, C)

    def forward(self, X):
        h = torch.tanh(self.inp(X))
        return self.out(h + torch.nn.functional.linear(X, self.inp.weight))


class Normed(torch.nn.Module):  # a LayerNorm: not a Linear parameter
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(D, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.out = torch.nn.Linear(6, C)

    def forward(self, X):
        return self.out(torch.tanh(self.norm(self.inp(X))))


class Positions(torch.nn.Module):  # a Linear layer over positions: a sum of outer products
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(1, 4)
        self.out = torch.nn.Linear(4, C)

    def forward(self, X):
        return self.out(torch.tanh(self.inp(X[:, :, None])).mean(1))


def _net(module, seed=0):
    torch.manual_seed(seed)
    X, y = _data(seed)
    return NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss, max_epochs=5,
                               lr=0.3, train_split=None, verbose=0).fit(X, y)


def _truth(net, X, y, params=None):
    module = net.module_
    named = {k: v.detach() for k, v in module.named_parameters()}
    names = list(named) if params is None else params

    def loss(p, x, t):
        out = torch.func.functional_call(module, {**named, **p}, (x[None],))
        return torch.nn.functional.cross_entropy(out, t[None])

    per = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(
        {k: named[k] for k in names}, X, y)
    return torch.cat([per[k].reshape(len(y), -1) for k in names], dim=1)


def _kept(net, params=None, max_bytes=2**30):
    X, y = _data()
    bridge = NetBridge(net, params=params)
    bridge.check_batch_loss_is_mean(X, y)
    return keep_gradients(bridge, X, y, max_bytes=max_bytes), _truth(net, X, y, params)


@pytest.mark.parametrize("params", [None, ["hidden.weight", "out.weight"], ["hidden.bias"],
                                    ["out.weight"]])
@pytest.mark.parametrize("bias_last", [True, False])
def test_linear_factors_are_the_per_sample_gradients(params, bias_last):
    store, truth = _kept(_net(MLP(bias_last)), params)
    assert isinstance(store, LinearFactors)
    assert store.n_rows == N and store.nbytes <= truth.nbytes
    torch.testing.assert_close(store.gradients(np.arange(N)), truth, rtol=1e-4, atol=1e-6)
    S = torch.randn(9, truth.shape[1], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(store.dot(S), S @ truth.T, rtol=1e-4, atol=1e-5)
    rows = [7, 0, 59, 7]
    torch.testing.assert_close(store.dot(S, rows), S @ truth[rows].T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(store.gradients(rows), truth[rows], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("module", [Twice, Tied, Normed, Positions])
def test_gradients_that_are_not_one_outer_product_are_kept_dense(module):
    store, truth = _kept(_net(module()))
    assert isinstance(store, DenseGradients)
    torch.testing.assert_close(store.gradients(np.arange(N)), truth, rtol=1e-4, atol=1e-6)


def test_the_budget_picks_the_form_or_keeps_nothing():
    net = _net(MLP())
    factor_bytes = N * ((D + 7) + (7 + C)) * 4
    store, _ = _kept(net, max_bytes=factor_bytes)
    assert isinstance(store, LinearFactors) and store.nbytes == factor_bytes
    assert _kept(net, max_bytes=factor_bytes - 1)[0] is None
    # a net that needs the dense form is held to the budget of the dense form
    dense_net = _net(Normed())
    n_params = sum(p.numel() for p in dense_net.module_.parameters())
    assert _kept(dense_net, max_bytes=N * n_params * 4 - 1)[0] is None


def test_a_non_finite_training_row_is_named():
    net = _net(MLP())
    X, y = _data()
    X[17, 1] = float("inf")
    with pytest.raises(ValueError, match=r"indices \[17\]"):
        keep_gradients(NetBridge(net), X, y, max_bytes=2**30)


@pytest.mark.parametrize("module", [MLP, Normed])
def test_scores_from_the_kept_gradients_equal_the_streamed_ones(module, monkeypatch):
    from sk_fastif import _engine

    net = _net(module())
    X, y = _data()
    Xq, yq = _data(seed=3)
    kw = dict(solver=Exact(damping=0.1))
    kept = InfluenceExplainer(net, **kw).fit(X.numpy(), y.numpy())
    first = kept.influences(Xq[:4].numpy(), yq[:4].numpy())  # builds the store
    assert kept.engine_._kept.store is not None
    again = kept.influences(Xq[4:8].numpy(), yq[4:8].numpy())  # scores from it
    short = InfluenceExplainer(net, candidates=ExactCandidates(n_neighbors=10), **kw)
    short.fit(X.numpy(), y.numpy())
    store = short.engine_._kept.store = kept.engine_._kept.store  # shortlists read it
    read = []
    original = type(store).gradients

    def spy(self, rows):
        read.append(rows)
        return original(self, rows)

    monkeypatch.setattr(type(store), "gradients", spy)
    from_store = short.explain(Xq[4:8].numpy(), yq[4:8].numpy(), k=5)
    assert read  # the candidates' gradients came from the kept store
    monkeypatch.setattr(_engine, "TRAIN_GRADIENT_BYTES", 0)
    streamed = InfluenceExplainer(net, **kw).fit(X.numpy(), y.numpy())
    ref = streamed.influences(Xq[:8].numpy(), yq[:8].numpy())
    assert streamed.engine_._kept.store is None
    scale = np.abs(ref).max()
    np.testing.assert_allclose(np.vstack([first, again]), ref, rtol=1e-5, atol=1e-6 * scale)
    short_ref = InfluenceExplainer(net, candidates=ExactCandidates(n_neighbors=10), **kw)
    ref_expl = short_ref.fit(X.numpy(), y.numpy()).explain(Xq[4:8].numpy(), yq[4:8].numpy(),
                                                           k=5)
    assert short_ref.engine_._kept.store is None
    np.testing.assert_array_equal(from_store.helpful_indices, ref_expl.helpful_indices)
    np.testing.assert_allclose(from_store.helpful_scores, ref_expl.helpful_scores, rtol=1e-5,
                               atol=1e-6 * scale)
