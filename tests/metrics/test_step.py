"""The step test against one hand-made SGD step (moved from tests/test_applications.py)."""

import copy

import numpy as np
import pytest
import torch

from sk_fastif import InfluenceExplainer
from sk_fastif.metrics import step_test
from sk_fastif.solvers import Exact


def test_step_test_matches_a_hand_made_step(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    res = step_test(expl, X[:6], y[:6], k=5, lr=0.05, random_state=0)
    ex = expl.explain(X[:6], y[:6], k=5)
    for i in range(6):
        manual = copy.deepcopy(net.module_)
        rows = ex.helpful_indices[i]
        ce = torch.nn.functional.cross_entropy
        ce(manual(torch.as_tensor(X[rows])), torch.as_tensor(y[rows])).backward()
        xi, yi = torch.as_tensor(X[i:i + 1]), torch.as_tensor(y[i:i + 1])
        with torch.no_grad():
            before = ce(manual(xi), yi)
            for p in manual.parameters():
                p -= 0.05 * p.grad
            after = ce(manual(xi), yi)
        assert res.helpful[i] == pytest.approx(float(after - before), rel=1e-8, abs=1e-12)
    assert res.helpful.mean() < res.random.mean() < res.harmful.mean()
    assert res.helpful_lowers >= 0.8 and res.harmful_raises >= 0.8


def test_step_test_leaves_the_net_as_it_was(linear):
    net, X, y = linear
    before = {k: v.clone() for k, v in net.module_.state_dict().items()}
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    res = step_test(expl, X[:3], y[:3], k=4, lr=0.05, random_state=0)
    for name, value in net.module_.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    again = step_test(expl, X[:3], y[:3], k=4, lr=0.05, random_state=0)
    for key in ("helpful", "harmful", "random", "loss_before"):
        np.testing.assert_array_equal(res[key], again[key])
    assert res.k == 4 and res.lr == 0.05


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"lr": 0.0}, {"lr": -1.0}])
def test_step_test_refuses_bad_arguments(linear, kwargs):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    with pytest.raises(ValueError, match="k|lr"):
        step_test(expl, X[:2], y[:2], **kwargs)
