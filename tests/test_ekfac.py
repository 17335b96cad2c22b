"""EKFAC against exact answers: an explicit Gauss-Newton matrix where K-FAC is exact, and the
exact solver on a net where it is an approximation (agreement measured, not assumed)."""

import pickle

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from skorch import NeuralNetClassifier, NeuralNetRegressor

from sk_fastif import InfluenceExplainer
from sk_fastif.solvers import CG, EKFAC, CurvatureOperator, Exact
from sk_fastif.toy import train_digits_net


@pytest.fixture(scope="module")
def linear_regression():
    rng = np.random.RandomState(0)
    X = rng.randn(120, 4)
    y = X @ rng.randn(4, 1) + 0.1 * rng.randn(120, 1)
    net = NeuralNetRegressor(torch.nn.Linear(4, 1), max_epochs=20, lr=0.05, train_split=None,
                             verbose=0)
    net.initialize()
    net.module_.double()
    net.partial_fit(X, y)
    return net, X, y


def test_ekfac_is_exact_for_a_linear_least_squares_model(linear_regression):
    net, X, y = linear_regression
    lam = 0.01
    expl = InfluenceExplainer(net, solver=EKFAC(damping=lam)).fit(X, y)
    got = expl.influence_factors(X[:5], y[:5])
    # the Gauss-Newton matrix of the mean squared error: 2 E[ã ãᵀ] with ã = [x; 1]
    A = np.hstack([X, np.ones((len(X), 1))])
    GN = 2 * A.T @ A / len(X)
    w, b = (p.detach().numpy().ravel() for p in net.module_.parameters())
    residual = A[:5] @ np.r_[w, b] - y[:5, 0]
    G = 2 * residual[:, None] * A[:5]  # per-sample gradients of (f - y)^2
    want = np.linalg.solve(GN + lam * np.eye(5), G.T).T
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_ekfac_agrees_with_exact_on_the_digits_mlp_far_faster():
    net, X, Xte, y, yte = train_digits_net(0)
    approx = InfluenceExplainer(net, solver=EKFAC(damping=1e-2)).fit(X, y)
    exact = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    a, b = approx.influences(Xte[:10], yte[:10]), exact.influences(Xte[:10], yte[:10])
    # an approximation: measured Pearson 0.61 at damping 1e-3 and higher at 1e-2
    assert pearsonr(a.ravel(), b.ravel())[0] > 0.5
    assert approx.solver_.n_hvp_prepare_ < exact.solver_.n_hvp_prepare_
    # prepared once: pickled, it solves without preparing again
    again = pickle.loads(pickle.dumps(approx))
    assert again.engine_.is_prepared
    # the same scores, in float32: 2 test points are scored in a smaller batch than 10
    np.testing.assert_allclose(again.influences(Xte[:2], yte[:2]), a[:2], rtol=1e-5,
                               atol=1e-6 * np.abs(a).max())


def test_ekfac_refuses_what_it_cannot_factor():
    H = torch.eye(3, dtype=torch.float64)
    op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, i: V @ H, n_params=3,
                           n_samples=10, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs the net and training data"):
        EKFAC().prepare(op)

    class WithEmbedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 3)
            self.head = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.embed(x).mean(1))

    X = np.random.RandomState(0).randint(0, 10, size=(30, 4))
    y = (X[:, 0] > 4).astype(np.int64)
    net = NeuralNetClassifier(WithEmbedding, criterion=torch.nn.CrossEntropyLoss, max_epochs=2,
                              train_split=None, verbose=0).fit(X, y)
    with pytest.raises(ValueError, match=r"Linear layers only.*embed\.weight.*params="):
        InfluenceExplainer(net, solver=EKFAC()).fit(X, y)
    # the Linear head alone is factored
    InfluenceExplainer(net, solver=EKFAC(), params="head").fit(X, y).influences(X[:2], y[:2])


def test_ekfac_with_sampled_probes_is_deterministic_for_an_int_seed(linear_regression):
    net, X, y = linear_regression
    a = InfluenceExplainer(net, solver=EKFAC(mc_samples=2, random_state=3)).fit(X, y)
    b = InfluenceExplainer(net, solver=EKFAC(mc_samples=2, random_state=3)).fit(X, y)
    np.testing.assert_array_equal(a.influences(X[:3], y[:3]), b.influences(X[:3], y[:3]))


# ------------------------------------------------------------- EK-FAC as CG's preconditioner
def test_ekfac_preconditioned_cg_is_exact_in_one_iteration_where_ekfac_is_exact(
        linear_regression):
    # one Linear layer under squared loss: the preconditioner is (H + λI)^-1 itself, so
    # preconditioned CG lands on the exact answer after one product
    net, X, y = linear_regression
    lam = 0.01
    expl = InfluenceExplainer(net, solver=CG(damping=lam, preconditioner="ekfac", tol=1e-10))
    expl.fit(X, y)
    got = expl.influence_factors(X[:5], y[:5])
    A = np.hstack([X, np.ones((len(X), 1))])
    w, b = (p.detach().numpy().ravel() for p in net.module_.parameters())
    G = 2 * (A[:5] @ np.r_[w, b] - y[:5, 0])[:, None] * A[:5]
    want = np.linalg.solve(2 * A.T @ A / len(X) + lam * np.eye(5), G.T).T
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert expl.solve(X[:5], y[:5]).n_iter == 1
    assert [f.block.shape for f in expl.solver_.preconditioner_factors_] == [(1, 5)]


def test_ekfac_preconditioned_cg_solves_the_exact_hessian_system_in_fewer_iterations():
    net, X, Xte, y, yte = train_digits_net(0)
    lam = 0.011
    exact = InfluenceExplainer(net, solver=Exact(damping=lam), curvature="hessian").fit(X, y)
    want = exact.influence_factors(Xte[:8], yte[:8])
    iters = {}
    for pre in (None, "ekfac"):
        expl = InfluenceExplainer(net, solver=CG(damping=lam, tol=1e-5, preconditioner=pre),
                                  curvature="hessian").fit(X, y)
        got = expl.influence_factors(Xte[:8], yte[:8])
        # the same exact answer either way (float32 products): the preconditioner changes
        # the path, not the solution
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max())
        iters[pre] = expl.solve(Xte[:8], yte[:8]).n_iter
    assert iters["ekfac"] < iters[None]


def test_ekfac_preconditioner_refuses_what_it_cannot_factor():
    H = torch.eye(3, dtype=torch.float64)
    op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, i: V @ H, n_params=3,
                           n_samples=10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r'CG\(preconditioner="ekfac"\) needs the net'):
        CG(preconditioner="ekfac").prepare(op)
    with pytest.raises(ValueError, match="preconditioner"):
        CG(preconditioner="kfac").prepare(op)
    # plain CG on the same operator is fine
    res = CG(damping=1.0).solve(op, torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(res.solution, torch.full((1, 3), 0.5, dtype=torch.float64))
