"""Influence scores against independent truth: closed forms and leave-one-out retraining."""

import copy

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from sk_fastif import InfluenceExplainer
from sk_fastif.solvers import CG, Exact, LiSSA

from .conftest import fit_full_batch


def _augment(X):
    return np.hstack([X, np.ones((len(X), 1))])


def ridge_closed_form(net, X, y, Xte, yte, damping):
    """(1/n) g_test^T (H + damping I)^-1 g_train for a linear model with squared error, in numpy."""
    w = np.concatenate([net.module_.weight.detach().numpy().ravel(),
                        net.module_.bias.detach().numpy().ravel()])
    A, Ate = _augment(X), _augment(Xte)
    r, rte = A @ w - y.ravel(), Ate @ w - yte.ravel()
    G, Gte = 2 * r[:, None] * A, 2 * rte[:, None] * Ate
    H = 2 * A.T @ A / len(X)
    return Gte @ np.linalg.solve(H + damping * np.eye(len(w)), G.T) / len(X)


def binary_closed_form(net, X, y, Xte, yte, damping):
    w = np.concatenate([net.module_.lin.weight.detach().numpy().ravel(),
                        net.module_.lin.bias.detach().numpy().ravel()])
    A, Ate = _augment(X), _augment(Xte)
    p, pte = 1 / (1 + np.exp(-A @ w)), 1 / (1 + np.exp(-Ate @ w))
    G, Gte = (p - y)[:, None] * A, (pte - yte)[:, None] * Ate
    H = (A * (p * (1 - p))[:, None]).T @ A / len(X)
    return Gte @ np.linalg.solve(H + damping * np.eye(len(w)), G.T) / len(X)


@pytest.mark.parametrize(
    "solver",
    [Exact(damping=1e-2), CG(damping=1e-2, tol=1e-10, max_iter=200),
     LiSSA(damping=1e-2, depth=3000, batch_size=80, scale="auto", random_state=0)],
    ids=["exact", "cg", "lissa"],
)
def test_every_solver_matches_ridge_closed_form(ridge_net, solver):
    net, X, y = ridge_net
    truth = ridge_closed_form(net, X, y, X[:10], y[:10], 1e-2)
    scores = InfluenceExplainer(net, solver=solver).fit(X, y).influences(X[:10], y[:10])
    rtol = 1e-3 if isinstance(solver, LiSSA) else 1e-6
    np.testing.assert_allclose(scores, truth, rtol=rtol, atol=rtol * np.abs(truth).max())


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_binary_classifier_matches_closed_form(binary_net, curvature):
    # For a linear model with a convex loss the Gauss-Newton matrix equals the Hessian.
    net, X, y = binary_net
    truth = binary_closed_form(net, X, y, X[:15], y[:15], 1e-3)
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-3), curvature=curvature).fit(X, y)
    np.testing.assert_allclose(expl.influences(X[:15], y[:15]), truth, rtol=1e-6,
                               atol=1e-9 * np.abs(truth).max())


def test_exact_influence_predicts_leave_one_out_retraining(logreg):
    """Pearson >= 0.95 between predicted and actual test-loss change over 60 removals."""
    net, X, y, wd = logreg
    test = slice(0, 4)  # a few training points double as test points
    expl = InfluenceExplainer(net, solver=Exact(damping=wd)).fit(X, y)
    predicted = expl.influences(X[test], y[test])  # (4, n)

    def test_losses(model_net):
        Xt = torch.as_tensor(X[test])
        with torch.no_grad():
            out = model_net.module_(Xt)
            return torch.nn.functional.cross_entropy(out, torch.as_tensor(y[test]),
                                                     reduction="none").numpy()

    base = test_losses(net)
    rng = np.random.RandomState(0)
    # the most influential points by magnitude plus random ones, as in Koh & Liang
    top = np.argsort(-np.abs(predicted[0]))[:30]
    removed = np.unique(np.concatenate([top, rng.choice(len(X), 30, replace=False)]))[:60]
    actual = np.empty((len(removed), 4))
    for i, j in enumerate(removed):
        keep = np.arange(len(X)) != j
        loo = copy.deepcopy(net)
        fit_full_batch(loo, X[keep], y[keep], wd)
        actual[i] = test_losses(loo) - base
    # removing point j changes the optimum of (1/(n-1)) sum: predicted change is score*n/(n-1)
    pred = predicted[:, removed].T * len(X) / (len(X) - 1)
    r = pearsonr(pred.ravel(), actual.ravel())[0]
    assert len(removed) >= 50
    assert r >= 0.95, r
    # the sign convention: positive score = the loss rises when the point is removed
    big = np.abs(pred) > np.quantile(np.abs(pred), 0.5)
    assert np.mean(np.sign(pred[big]) == np.sign(actual[big])) > 0.9


def _agreement(a, b):
    return pearsonr(a.ravel(), b.ravel())[0], spearmanr(a.ravel(), b.ravel())[0]


def _top_overlap(a, b, k=10):
    return np.mean([len(set(np.argsort(-x)[:k]) & set(np.argsort(-z)[:k])) / k
                    for x, z in zip(a, b)])


@pytest.fixture(scope="module")
def mlp_exact(digits, digits_mlp):
    Xtr, ytr, Xte, yte = digits
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=1e-2),
                              curvature="gauss_newton").fit(Xtr, ytr)
    return expl, expl.influences(Xte[:20], yte[:20])


def test_cg_agrees_with_exact_on_mlp(digits, digits_mlp, mlp_exact):
    Xtr, ytr, Xte, yte = digits
    _, ref = mlp_exact
    cg = InfluenceExplainer(digits_mlp, solver=CG(damping=1e-2, tol=1e-8, max_iter=500),
                            curvature="gauss_newton").fit(Xtr, ytr)
    scores = cg.influences(Xte[:20], yte[:20])
    p, s = _agreement(scores, ref)
    assert p > 0.999 and s > 0.999
    assert _top_overlap(scores, ref) >= 0.95


def test_lissa_converging_setting_agrees_with_exact(digits, digits_mlp, mlp_exact):
    Xtr, ytr, Xte, yte = digits
    _, ref = mlp_exact
    lissa = InfluenceExplainer(
        digits_mlp, curvature="gauss_newton",
        solver=LiSSA(damping=1e-2, depth=600, batch_size=100, random_state=0),
    ).fit(Xtr, ytr)
    scores = lissa.influences(Xte[:20], yte[:20])
    p, s = _agreement(scores, ref)
    assert s >= 0.95 and p >= 0.95, (p, s)
    assert _top_overlap(scores, ref) >= 0.6


def test_lissa_diverging_setting_raises(digits, digits_mlp):
    from sk_fastif.solvers import DivergenceError

    Xtr, ytr, Xte, yte = digits
    expl = InfluenceExplainer(
        digits_mlp, solver=LiSSA(damping=1e-2, scale=1e-3, depth=200, random_state=0)
    ).fit(Xtr, ytr)
    with pytest.raises(DivergenceError, match="scale"):
        expl.influences(Xte[:3], yte[:3])


def test_hessian_exact_matches_explicit_torch_hessian(digits, digits_mlp):
    """The Hessian path against torch.func.hessian of the mean loss, restricted to `params`."""
    Xtr, ytr, Xte, yte = digits
    Xtr, ytr = Xtr[:150], ytr[:150]
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.05), params=["output"])
    expl.fit(Xtr, ytr)
    module = digits_mlp.module_
    W, b = module.output.weight.detach(), module.output.bias.detach()
    with torch.no_grad():
        Ztr = torch.tanh(module.hidden(torch.as_tensor(Xtr)))
        Zte = torch.tanh(module.hidden(torch.as_tensor(Xte[:5])))

    def loss(theta, Z, yy):
        Wt, bt = theta[: W.numel()].view_as(W), theta[W.numel():]
        return torch.nn.functional.cross_entropy(Z @ Wt.T + bt, torch.as_tensor(yy),
                                                 reduction="none")

    theta = torch.cat([W.reshape(-1), b]).double()
    Ztr, Zte = Ztr.double(), Zte.double()
    H = torch.func.hessian(lambda t: loss(t, Ztr, ytr).mean())(theta)
    Gtr = torch.func.jacrev(lambda t: loss(t, Ztr, ytr))(theta)
    Gte = torch.func.jacrev(lambda t: loss(t, Zte, yte[:5]))(theta)
    truth = Gte @ torch.linalg.solve(H + 0.05 * torch.eye(len(theta), dtype=H.dtype), Gtr.T)
    truth = (truth / len(Xtr)).numpy()
    got = expl.influences(Xte[:5], yte[:5])
    np.testing.assert_allclose(got, truth, rtol=2e-3, atol=2e-3 * np.abs(truth).max())
    assert expl.n_params_ == theta.numel()
    assert expl.param_names_ == ["output.weight", "output.bias"]
