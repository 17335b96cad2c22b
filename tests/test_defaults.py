"""Defaults a newcomer can trust: solver="auto", damping="auto", LiSSA's depth and its warnings.

Every expectation comes from an independent computation: explicit matrices built in the test,
closed forms, or torch.func applied to the module directly.
"""

import copy
import logging
import sys
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skorch import NeuralNetClassifier

from sk_fastif import Explanation, InfluenceExplainer, TrainSplitWarning
from sk_fastif.solvers import (
    CG,
    CurvatureOperator,
    Exact,
    IndefiniteCurvatureWarning,
    LiSSA,
    LiSSADepthWarning,
    auto_damping,
    auto_solver,
)
from sk_fastif.toy import TanhMLP


def matrix_op(H: np.ndarray, n_samples: int = 1) -> CurvatureOperator:
    Ht = torch.as_tensor(H, dtype=torch.float64)
    return CurvatureOperator(matvec=lambda V: V @ Ht, batch_matvec=lambda V, idx: V @ Ht,
                             n_params=len(H), n_samples=n_samples, dtype=torch.float64)


def spd(p=30, seed=0, low=0.0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((2 * p, p))
    return A.T @ A / (2 * p) + low * np.eye(p)


# ------------------------------------------------------------------------ damping="auto"
def test_auto_damping_is_the_mean_eigenvalue_over_min_n_p():
    H = np.diag(np.r_[4.0, np.linspace(0.0, 2.0, 24)])  # trace 28; a gap: power steps converge
    # a diagonal H: every Rademacher probe gives the trace exactly
    for n, divisor in ((1, 1), (10, 10), (25, 25), (1000, 25)):
        damping, top = auto_damping(matrix_op(H, n_samples=n))
        assert top == pytest.approx(4.0, rel=1e-6)
        assert damping == pytest.approx(28.0 / divisor, rel=1e-9)
    # without a gap the top estimate is a lower bound that is still close after 30 steps
    damping, top = auto_damping(matrix_op(np.diag(np.linspace(0.0, 4.0, 25))))
    assert 0.98 * 4.0 <= top <= 4.0
    # a dense H: the trace is estimated from 30 probes (relative error about 3% here)
    H = spd(p=40)
    damping, _ = auto_damping(matrix_op(H, n_samples=1000))
    assert damping == pytest.approx(np.trace(H) / 40, rel=0.1)
    assert damping != pytest.approx(np.trace(H) / 40, rel=1e-6)  # an estimate, not the trace


def test_auto_damping_caps_the_condition_number_and_handles_indefinite_curvature():
    # one curved direction among 3,000, 10,000 rows: the mean eigenvalue 5 / 3000 is below
    # top / 1000, which then sets the damping
    H = np.zeros((3000, 3000))
    H[0, 0] = 5.0
    damping, top = auto_damping(matrix_op(H, n_samples=10_000))
    assert top == pytest.approx(5.0, rel=1e-9)
    assert damping == pytest.approx(5.0 / 1000, rel=1e-9)
    assert 5.0 / 3000 < damping
    # the largest magnitude, for an indefinite Hessian too; a negative trace gives the cap
    damping, top = auto_damping(matrix_op(np.diag([1.0, -5.0, 0.5])))
    assert top == pytest.approx(5.0, rel=1e-3)
    assert damping == pytest.approx(top / 1000, rel=1e-12)
    # no curvature at all: the floor
    assert auto_damping(matrix_op(np.zeros((4, 4))))[0] == 1e-8


def test_auto_damping_spends_the_products_prepare_reports():
    H = spd(p=12)
    calls = []
    Ht = torch.as_tensor(H)

    def matvec(V):
        calls.append(len(V))
        return V @ Ht

    op = CurvatureOperator(matvec=matvec, batch_matvec=lambda V, idx: V @ Ht, n_params=12,
                           n_samples=100, dtype=torch.float64)
    solver = CG(damping="auto").prepare(op)
    assert solver.n_hvp_prepare_ == sum(calls) == 60  # 30 power steps, a block of 30 probes


def test_every_solver_chooses_the_same_auto_damping_and_uses_it():
    H = spd(p=12, low=0.05)
    op, G = matrix_op(H), torch.eye(12, dtype=torch.float64)[:3]
    solvers = [Exact(damping="auto"), CG(damping="auto", tol=1e-12, max_iter=200),
               LiSSA(damping="auto", batch_size=1, depth="auto", random_state=0)]
    for s in solvers:
        s.prepare(op)
    lam = solvers[0].damping_
    assert all(s.damping_ == lam for s in solvers)
    assert Exact(damping=0.3).prepare(op).damping_ == 0.3
    truth = np.linalg.solve(H + lam * np.eye(12), G.numpy().T).T
    np.testing.assert_allclose(solvers[0].solve(op, G).solution.numpy(), truth, rtol=1e-9)
    np.testing.assert_allclose(solvers[1].solve(op, G).solution.numpy(), truth, rtol=1e-7)
    # LiSSA's automatic depth leaves at most 1% of the series along any direction
    np.testing.assert_allclose(solvers[2].solve(op, G).solution.numpy(), truth,
                               atol=0.011 * np.abs(truth).max())


def test_the_condition_cap_bounds_lissas_automatic_depth():
    # one curved direction (eigenvalue 5) among 3,000, 10,000 rows: the mean eigenvalue is
    # 5 / 3000 < 5 / 1000, so the cap sets the damping at 0.005, and every minibatch sees the
    # same spectrum, so LiSSA's scale is 1.5 * (5 + 0.005)
    H = np.zeros((3000, 3000))
    H[0, 0] = 5.0
    solver = LiSSA(damping="auto", depth="auto", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no LiSSADepthWarning: the depth is under 20,000
        solver.prepare(matrix_op(H, n_samples=10_000))
    assert solver.damping_ == pytest.approx(0.005, rel=1e-9)
    assert solver.scale_ == pytest.approx(1.5 * 5.005, rel=1e-9)
    # the smallest t with (1 - 0.005 / 7.5075)^t <= 0.01: log(0.01) / log(1 - 1 / 1501.5)
    assert solver.depth_ == 6913


def test_auto_damping_needs_prepare_and_is_refreshed_by_it():
    solver = CG(damping="auto")
    with pytest.raises(AttributeError, match="before prepare"):
        _ = solver.damping_
    solver.prepare(matrix_op(np.diag([1.0, 3.0]), n_samples=2))
    assert solver.damping_ == pytest.approx(2.0, rel=1e-9)  # tr(H) / min(n, P)
    solver.prepare(matrix_op(np.diag([10.0, 30.0]), n_samples=2))
    assert solver.damping_ == pytest.approx(20.0, rel=1e-9)
    solver.set_params(damping=0.5)  # numeric again: used as given, no new preparation needed
    assert solver.damping_ == 0.5


# ------------------------------------------------------------------------ LiSSA's depth
def test_lissa_auto_depth_follows_scale_and_damping():
    H = np.diag([1.0, 0.5, 0.0])
    solver = LiSSA(damping=0.01, scale=2.0, batch_size=1).prepare(matrix_op(H))
    # the smallest t with (1 - 0.01 / 2)^t <= 0.01
    t = int(np.ceil(np.log(0.01) / np.log(1 - 0.005)))
    assert solver.depth_ == t
    assert (1 - 0.005) ** t <= 0.01 < (1 - 0.005) ** (t - 1)
    G = torch.ones((1, 3), dtype=torch.float64)
    got = solver.solve(matrix_op(H), G).solution.numpy()[0]
    truth = 1 / (np.diag(H) + 0.01)
    # the flattest direction keeps 99% of its series, the others converge fully
    assert got[2] == pytest.approx(0.99 * truth[2], rel=2e-3)
    np.testing.assert_allclose(got[:2], truth[:2], rtol=1e-6)


def test_a_truncating_depth_is_warned_with_its_effective_damping():
    H = np.diag([1.0, 0.5, 0.0])
    solver = LiSSA(damping=0.01, scale=2.0, depth=100, batch_size=1)
    with pytest.warns(LiSSADepthWarning, match=r"as if damping were about 0\.02 instead of 0\.01"):
        solver.solve(matrix_op(H), torch.ones((1, 3), dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LiSSADepthWarning)
        LiSSA(damping=0.01, scale=2.0, depth=1000, batch_size=1).solve(
            matrix_op(H), torch.ones((1, 3), dtype=torch.float64))


def test_a_long_automatic_depth_is_warned_and_zero_damping_refused():
    H = np.diag([1.0, 0.0])
    with pytest.warns(LiSSADepthWarning, match="CG reaches the same answer"):
        LiSSA(damping=1e-4, scale=2.0, batch_size=1, tol=1e-3).solve(
            matrix_op(H), torch.ones((1, 2), dtype=torch.float64))
    with pytest.raises(ValueError, match="needs damping > 0"):
        LiSSA(damping=0.0, batch_size=1).prepare(matrix_op(H))


# ------------------------------------------------------------------------ indefinite curvature
def test_lissa_says_so_when_it_grows_slowly_along_negative_curvature():
    # eigenvalue -0.01 with damping 1e-3: the iterate grows by 1.006 per step, far below the
    # divergence test over 400 steps, yet the estimate is meaningless along that direction
    H = np.diag([1.0, 0.5, -0.01])
    solver = LiSSA(damping=1e-3, scale=1.5, depth=400, batch_size=1)
    with pytest.warns(IndefiniteCurvatureWarning, match=r'damping > 0\.0|gauss_newton'):
        res = solver.solve(matrix_op(H), torch.ones((2, 3), dtype=torch.float64))
    assert res.info["rayleigh"] < 0
    assert res.info["rayleigh"] == pytest.approx(-0.009, rel=0.05)  # dominated by -0.01 + 1e-3


def test_no_indefinite_warning_on_positive_definite_curvature():
    H = spd(p=10, low=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndefiniteCurvatureWarning)
        res = LiSSA(damping=1e-2, batch_size=1, random_state=0).solve(
            matrix_op(H), torch.ones((2, 10), dtype=torch.float64))
    assert res.info["rayleigh"] >= np.linalg.eigvalsh(H)[0] + 1e-2 - 1e-9


# ------------------------------------------------------------------------ solver="auto"
def test_auto_solver_rule():
    assert isinstance(auto_solver(512), Exact) and isinstance(auto_solver(513), CG)
    assert auto_solver(513).get_params() == CG(damping="auto", tol=2e-2, block=True,
                                               recycle=513).get_params()
    # the kept directions take at most 64 MiB (two float64 numbers per parameter and direction)
    assert auto_solver(100_000).recycle == 2**26 // (16 * 100_000) == 41
    assert auto_solver(10).damping == "auto" and auto_solver(10**6).damping == "auto"


def _explicit_gauss_newton_scores(net, Xtr, ytr, Xte, yte, damping):
    """(1/n) g_testᵀ (GN + λI)⁻¹ g_train in float64 by torch.func on the module directly."""
    module = copy.deepcopy(net.module_).double()  # the session's net stays as it is
    params = {k: v.detach() for k, v in module.named_parameters()}
    names = list(params)
    shapes = [params[k].shape for k in names]
    theta = torch.cat([params[k].reshape(-1) for k in names])
    sizes = [int(np.prod(s)) for s in shapes]

    def unflat(t):
        return {k: c.view(s) for k, c, s in zip(names, torch.split(t, sizes), shapes)}

    def logits(t, X):
        return torch.func.functional_call(module, unflat(t), (X,))

    Xtr64 = torch.as_tensor(Xtr, dtype=torch.float64)
    Xte64 = torch.as_tensor(Xte, dtype=torch.float64)
    J = torch.func.jacrev(logits)(theta, Xtr64)  # (n, c, p)
    prob = torch.softmax(logits(theta, Xtr64), dim=1)
    Hout = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    GN = torch.einsum("ncp,ncd,ndq->pq", J, Hout, J) / len(Xtr)

    def losses(t, X, y):
        return torch.nn.functional.cross_entropy(logits(t, X), torch.as_tensor(y), reduction="none")

    Gtr = torch.func.jacrev(losses)(theta, Xtr64, ytr)
    Gte = torch.func.jacrev(losses)(theta, Xte64, yte)
    S = torch.linalg.solve(GN + damping * torch.eye(len(theta), dtype=GN.dtype), Gte.T).T
    return (S @ Gtr.T / len(Xtr)).numpy()


def test_the_default_explainer_is_block_cg_gauss_newton_with_auto_damping(digits, digits_mlp,
                                                                          caplog):
    Xtr, ytr, Xte, yte = digits
    Xtr, ytr = Xtr[:200], ytr[:200]
    with caplog.at_level(logging.INFO, logger="sk_fastif"):
        expl = InfluenceExplainer(digits_mlp).fit(Xtr, ytr)
    assert isinstance(expl.solver_, CG) and expl.solver_.damping == "auto"  # 1,210 parameters
    assert expl.solver_.block and expl.curvature == "gauss_newton"
    assert any('solver="auto"' in r.getMessage() for r in caplog.records)
    lam = expl.solver_.damping_
    # λ is the trace of the curvature (as Exact finds it) over min(n, P) = 200 rows, estimated
    # from 30 probes (8% low here)
    exact = InfluenceExplainer(digits_mlp, solver=Exact(damping="auto")).fit(Xtr, ytr)
    assert exact.solver_.damping_ == lam
    w = exact.solver_.eigenvalues_
    assert lam == pytest.approx(w.sum() / 200, rel=0.15)
    assert lam > w.max() / 1000  # the cap on the condition number is not what sets it
    truth = _explicit_gauss_newton_scores(digits_mlp, Xtr, ytr, Xte, yte, lam)
    # the agreement the default promises, per row: Pearson and Spearman of at least 0.99, for
    # every block of queries after the first as well (they start from the kept directions)
    spent = []
    for rows in (slice(0, 14), slice(14, 27), slice(27, 40)):
        got = expl.influences(Xte[rows], yte[rows])
        spent.append(expl._last_solve.n_hvp)
        for g, t in zip(got, truth[rows]):
            assert np.corrcoef(g, t)[0, 1] >= 0.99 and spearmanr(g, t)[0] >= 0.99
    assert spent[2] < spent[0] and expl.solver_.n_recycled_ > 0


def test_a_small_net_gets_exact(logreg):
    net, X, y, _ = logreg  # 170 parameters
    assert isinstance(InfluenceExplainer(net).fit(X, y).solver_, Exact)


def test_a_large_net_gets_cg():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 64)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    net = NeuralNetClassifier(TanhMLP, module__n_in=64, module__n_hidden=80, module__n_out=2,
                              criterion=torch.nn.CrossEntropyLoss, max_epochs=1,
                              train_split=None, verbose=0).fit(X, y)
    expl = InfluenceExplainer(net).fit(X, y)
    assert expl.n_params_ > 4096 and isinstance(expl.solver_, CG)
    assert expl.solver_.damping_ > 0


# ------------------------------------------------------------------------ training split
def test_fit_warns_when_the_net_held_out_a_validation_split():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    kw = dict(module=torch.nn.Linear, module__in_features=4, module__out_features=2,
              criterion=torch.nn.CrossEntropyLoss, max_epochs=2, verbose=0)
    held_out = NeuralNetClassifier(**kw).fit(X, y)  # skorch's default ValidSplit(5)
    with pytest.warns(TrainSplitWarning, match="train_split=None"):
        InfluenceExplainer(held_out, solver=Exact(damping=0.01)).fit(X, y)
    whole = NeuralNetClassifier(train_split=None, **kw).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainSplitWarning)
        InfluenceExplainer(whole, solver=Exact(damping=0.01)).fit(X, y)


# ------------------------------------------------------------------------ pandas
def test_to_frame_without_pandas_names_what_to_install(monkeypatch):
    ex = Explanation(np.array([[0]]), np.array([[1.0]]), np.array([[1]]), np.array([[-1.0]]))
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        ex.to_frame()
