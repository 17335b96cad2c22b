"""Tests of the iHVP solvers against explicit matrices solved with numpy."""

from __future__ import annotations

import copy
import doctest
import pickle
import warnings
from dataclasses import replace
from numbers import Real

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    generate_invalid_param_val,
    make_constraint,
)

from sk_fastif.solvers import (
    CG,
    BaseSolver,
    CurvatureOperator,
    CurvatureTooLargeError,
    DivergenceError,
    Exact,
    IndefiniteCurvatureWarning,
    LiSSA,
    ScaleRestartWarning,
    SolveResult,
    _cg,
    _exact,
    _lissa,
)

# ----------------------------------------------------------------------------------------------
# Explicit operators
# ----------------------------------------------------------------------------------------------


class MatrixProblem:
    """``H = mean_j a_j a_j^T + shift * I`` with exact per-sample minibatch curvatures.

    ``batch_matvec(V, idx)`` is the exact curvature of the mean over rows ``idx``. Every call is
    logged (``calls``) so tests can check that products come in blocks.
    """

    def __init__(self, A: np.ndarray, shift: float = 0.0, dtype: torch.dtype = torch.float64):
        self.A_np = np.asarray(A, dtype=np.float64)
        n, P = self.A_np.shape
        self.shift = float(shift)
        self.H = self.A_np.T @ self.A_np / n + self.shift * np.eye(P)
        self._A = torch.as_tensor(self.A_np, dtype=dtype)
        self._H = torch.as_tensor(self.H, dtype=dtype)
        self.calls: list[tuple[str, int]] = []
        self.op = CurvatureOperator(
            matvec=self._matvec,
            batch_matvec=self._batch_matvec,
            n_params=P,
            n_samples=n,
            dtype=dtype,
        )

    def _matvec(self, V: torch.Tensor) -> torch.Tensor:
        assert V.ndim == 2 and V.shape[1] == self.op.n_params and V.dtype == self.op.dtype
        self.calls.append(("matvec", V.shape[0]))
        return V @ self._H

    def _batch_matvec(self, V: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        assert V.ndim == 2 and V.shape[1] == self.op.n_params and V.dtype == self.op.dtype
        idx = np.asarray(idx)
        assert idx.ndim == 1 and len(np.unique(idx)) == len(idx)
        assert idx.min() >= 0 and idx.max() < self.op.n_samples
        self.calls.append(("batch_matvec", V.shape[0]))
        Ab = self._A[torch.as_tensor(idx)]
        return (V @ Ab.T) @ Ab / len(idx) + self.shift * V

    def truth(self, G: torch.Tensor, damping: float) -> np.ndarray:
        """``(H + damping I)^{-1} g`` for every row, by numpy."""
        M = self.H + damping * np.eye(self.H.shape[0])
        return np.linalg.solve(M, G.detach().double().numpy().T).T


def spd_problem(P=10, n=60, shift=0.1, seed=0, dtype=torch.float64, outlier=None):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, P)) * np.linspace(0.5, 1.5, P)
    if outlier is not None:
        A[0] *= outlier
    return MatrixProblem(A, shift=shift, dtype=dtype)


def indefinite_problem(P=8, n=40, seed=0, dtype=torch.float64):
    """``H = A^T A / n - c I`` with two clearly negative eigenvalues."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, P))
    w = np.linalg.eigvalsh(A.T @ A / n)
    c = (w[1] + w[2]) / 2
    return MatrixProblem(A, shift=-c, dtype=dtype)


def rhs(m=8, P=10, seed=1, dtype=torch.float64):
    return torch.as_tensor(np.random.default_rng(seed).standard_normal((m, P)), dtype=dtype)


def rel_err(S, X):
    S = S.detach().double().numpy() if isinstance(S, torch.Tensor) else S
    return np.linalg.norm(S - X) / np.linalg.norm(X)


def min_cosine(S, X):
    S = S.detach().double().numpy()
    cos = (S * X).sum(1) / np.linalg.norm(S, axis=1) / np.linalg.norm(X, axis=1)
    return cos.min()


def assert_close(a, b, rtol=1e-7, atol=0.0):
    # (torch.testing.assert_close imports torch.distributed: a second per test run.)
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol, atol=atol)


def lissa_full(**kw):
    """A deterministic, converging LiSSA: full batch, large depth."""
    return LiSSA(batch_size=60, depth=3000, random_state=0, **kw)


# ----------------------------------------------------------------------------------------------
# Accuracy against numpy
# ----------------------------------------------------------------------------------------------


def test_exact_matches_numpy():
    prob = spd_problem()
    G = rhs()
    solver = Exact(damping=1e-2)
    assert solver.prepare(prob.op) is solver
    np.testing.assert_allclose(solver.eigenvalues_, np.linalg.eigvalsh(prob.H), rtol=1e-10)
    assert solver.n_negative_eigenvalues_ == 0
    res = solver.solve(prob.op, G)
    assert isinstance(res, SolveResult)
    assert rel_err(res.solution, prob.truth(G, 1e-2)) < 1e-10
    assert res.solution.shape == G.shape and res.solution.dtype == torch.float64
    assert res.converged and len(res.trace) == 1 and res.trace[0] < 1e-12
    assert res.n_hvp == 0  # already prepared
    # Prepared with blocks of identity columns, never one column at a time.
    assert prob.calls == [("matvec", 10)]


def test_exact_builds_in_blocks_for_many_params(monkeypatch):
    monkeypatch.setattr(_exact, "_BLOCK", 4)
    prob = spd_problem(P=10)
    Exact().prepare(prob.op)
    assert prob.calls == [("matvec", 4), ("matvec", 4), ("matvec", 2)]


def test_cg_matches_numpy():
    prob = spd_problem()
    G = rhs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = CG(damping=1e-2, tol=1e-10, max_iter=50).solve(prob.op, G)
    X = prob.truth(G, 1e-2)
    assert res.converged
    assert rel_err(res.solution, X) < 1e-8
    # The true residual of every column reaches the tolerance (up to rounding).
    S = res.solution.numpy()
    R = S @ (prob.H + 1e-2 * np.eye(10)) - G.numpy()
    assert (np.linalg.norm(R, axis=1) / np.linalg.norm(G.numpy(), axis=1)).max() < 1e-9
    assert res.trace[-1] <= 1e-10 and len(res.trace) <= 12
    # One block product per iteration with the still-active columns.
    assert prob.calls[0] == ("matvec", 8)
    assert all(kind == "matvec" and 1 <= k <= 8 for kind, k in prob.calls)
    assert res.n_hvp == sum(k for _, k in prob.calls)


def test_cg_default_tolerance():
    prob = spd_problem()
    G = rhs()
    res = CG().solve(prob.op, G)
    X = prob.truth(G, 1e-3)
    assert res.converged and res.trace[-1] <= 1e-6
    assert rel_err(res.solution, X) < 1e-5


def test_lissa_full_batch_matches_numpy():
    prob = spd_problem()
    G = rhs()
    solver = lissa_full(damping=1e-2)
    res = solver.solve(prob.op, G)
    X = prob.truth(G, 1e-2)
    assert res.converged and len(res.trace) == 3000
    assert rel_err(res.solution, X) < 1e-2
    assert min_cosine(res.solution, X) > 0.999
    assert res.n_hvp == 3000 * 8 + solver.n_hvp_prepare_
    # Full batch uses the full operator, always on the whole block.
    assert all(call == ("matvec", 8) for call in prob.calls if call[1] != 1)


def test_lissa_minibatch_matches_numpy():
    prob = spd_problem()
    G = rhs()
    res = LiSSA(damping=1e-2, batch_size=30, n_repeats=4, depth=1500, random_state=0).solve(
        prob.op, G
    )
    S, X = res.solution.numpy(), prob.truth(G, 1e-2)
    assert rel_err(S, X) < 0.1
    assert min_cosine(res.solution, X) > 0.99
    assert spearmanr(S.ravel(), X.ravel()).statistic > 0.99
    # Every step is one block product on the whole block.
    steps = [k for kind, k in prob.calls if kind == "batch_matvec" and k > 1]
    assert len(steps) == 4 * 1500 and set(steps) == {8}


def test_ridge_coefficients():
    """The iHVP of X^T y / n is the ridge solution: independent truth from scikit-learn."""
    rng = np.random.default_rng(3)
    n, P, lam = 80, 6, 0.05
    Xd = rng.standard_normal((n, P))
    y = Xd @ rng.standard_normal(P) + 0.1 * rng.standard_normal(n)
    prob = MatrixProblem(Xd)  # curvature of the mean squared-error loss / 2
    g = torch.as_tensor(Xd.T @ y / n)[None, :]
    coef = Ridge(alpha=n * lam, fit_intercept=False).fit(Xd, y).coef_
    np.testing.assert_allclose(Exact(damping=lam).solve(prob.op, g).solution[0], coef, rtol=1e-8)
    cg = CG(damping=lam, tol=1e-10).solve(prob.op, g).solution[0]
    np.testing.assert_allclose(cg, coef, rtol=1e-7)
    lissa = LiSSA(damping=lam, batch_size=n, depth=2000).solve(prob.op, g).solution[0]
    np.testing.assert_allclose(lissa, coef, rtol=1e-3)


def test_single_damping_meaning():
    """The same ``damping`` means the same ``(H + damping I)^{-1}`` for every solver."""
    prob = spd_problem(shift=0.0)
    G = rhs()
    lam = 0.3
    X = prob.truth(G, lam)
    assert rel_err(prob.truth(G, 0.0), X) > 0.2  # the damping matters here
    exact = Exact(damping=lam).solve(prob.op, G).solution
    cg = CG(damping=lam, tol=1e-10).solve(prob.op, G).solution
    lissa = LiSSA(damping=lam, batch_size=60, depth=800).solve(prob.op, G).solution
    assert rel_err(exact, X) < 1e-10
    assert rel_err(cg, X) < 1e-8
    assert rel_err(lissa, X) < 1e-6
    assert rel_err(lissa, exact.numpy()) < 1e-6


@settings(max_examples=25, deadline=None)
@given(
    P=st.integers(1, 12),
    m=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    damping=st.floats(1e-3, 10.0),
)
def test_exact_and_cg_property(P, m, seed, damping):
    prob = spd_problem(P=P, n=P + 5, shift=0.0, seed=seed)
    G = rhs(m=m, P=P, seed=seed + 1)
    X = prob.truth(G, damping)
    cond = np.linalg.cond(prob.H + damping * np.eye(P))
    assert rel_err(Exact(damping=damping).solve(prob.op, G).solution, X) < 1e-12 * cond + 1e-12
    res = CG(damping=damping, tol=1e-10, max_iter=10 * P + 10).solve(prob.op, G)
    assert res.converged
    assert rel_err(res.solution, X) < 1e-9 * cond + 1e-12


def test_float32_dtype_preserved():
    prob = spd_problem(dtype=torch.float32)
    G = rhs(dtype=torch.float32)
    X = prob.truth(G, 1e-2)
    for solver in (Exact(damping=1e-2), CG(damping=1e-2, tol=1e-5), lissa_full(damping=1e-2)):
        res = solver.solve(prob.op, G)
        assert res.solution.dtype == torch.float32, solver
        assert res.solution.device == G.device
        assert rel_err(res.solution, X) < 1e-4, solver
    # A float64 block given to a float32 operator is cast to the operator's dtype.
    assert CG().solve(prob.op, G.double()).solution.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# Zero right-hand sides, empty blocks, re-preparation, pickling
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver",
    [
        Exact(),
        CG(),
        LiSSA(batch_size=10, depth=200, random_state=0),
        LiSSA(batch_size=60, tol=1e-8),
    ],
    ids=["Exact", "CG", "LiSSA", "LiSSA-tol"],
)
def test_zero_right_hand_side(solver):
    prob = spd_problem()
    G = rhs(m=3)
    G[1] = 0
    res = solver.solve(prob.op, G)
    assert torch.isfinite(res.solution).all()
    assert torch.equal(res.solution[1], torch.zeros(10, dtype=torch.float64))
    assert res.solution[0].abs().sum() > 0 and res.solution[2].abs().sum() > 0
    assert all(np.isfinite(res.trace))
    # An all-zero block.
    res = solver.solve(prob.op, torch.zeros((2, 10), dtype=torch.float64))
    assert torch.equal(res.solution, torch.zeros((2, 10), dtype=torch.float64))
    assert all(np.isfinite(res.trace))


@pytest.mark.parametrize("solver", [Exact(), CG(), LiSSA(batch_size=10, depth=20)])
def test_empty_block(solver):
    prob = spd_problem()
    empty = torch.zeros((0, 10), dtype=torch.float64)
    solver = clone(solver)
    solver.prepare(prob.op)
    res = solver.solve(prob.op, empty)
    assert res.solution.shape == (0, 10) and res.solution.dtype == torch.float64
    assert res.n_hvp == 0  # prepared, and no right-hand side: not one curvature product
    assert res.converged and res.n_iter == 0
    # Exact's trace has one entry per solve (the largest residual: none, so 0); the iterative
    # solvers record one per iteration, and none ran
    assert res.trace == ([0.0] if isinstance(solver, Exact) else [])
    # unprepared, the solve spends only what preparing costs
    fresh = clone(solver)
    res = fresh.solve(prob.op, empty)
    assert res.n_hvp == fresh.n_hvp_prepare_
    assert res.solution.shape == (0, 10) and res.converged and res.n_iter == 0


@pytest.mark.parametrize("solver", [Exact(), CG(), LiSSA(batch_size=10, depth=20)])
def test_bad_right_hand_sides(solver):
    prob = spd_problem()
    with pytest.raises(ValueError, match="shape"):
        solver.solve(prob.op, torch.zeros(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        solver.solve(prob.op, torch.zeros((2, 9), dtype=torch.float64))
    G = rhs(m=2)
    G[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        solver.solve(prob.op, G)


def test_solve_prepares_a_new_operator():
    first, second = spd_problem(seed=0), spd_problem(seed=5)
    G = rhs()
    for solver in (Exact(damping=0.1), LiSSA(damping=0.1, batch_size=60, depth=1500)):
        solver.prepare(first.op)
        res = solver.solve(second.op, G)  # not prepared for `second`: prepares it
        assert rel_err(res.solution, second.truth(G, 0.1)) < 1e-6, solver
        assert res.n_hvp >= solver.n_hvp_prepare_ > 0
        res = solver.solve(second.op, G)
        assert res.n_hvp == (0 if isinstance(solver, Exact) else 1500 * 8)


def test_exact_damping_can_change_after_prepare():
    prob = spd_problem()
    G = rhs()
    solver = Exact(damping=1e-2).prepare(prob.op)
    n_calls = len(prob.calls)
    solver.set_params(damping=0.5)
    res = solver.solve(prob.op, G)
    assert rel_err(res.solution, prob.truth(G, 0.5)) < 1e-10
    assert len(prob.calls) == n_calls  # the eigendecomposition is reused


def test_lissa_numeric_scale_is_reread_at_solve():
    prob = spd_problem()
    solver = LiSSA(scale=10.0, batch_size=60, depth=10).prepare(prob.op)
    assert solver.scale_ == 10.0 and solver.n_hvp_prepare_ == 0
    solver.set_params(scale=20.0)
    # the numeric scale is prepared state: changing it makes the solver stale...
    assert not solver.is_prepared_for(prob.op)
    res = solver.solve(prob.op, rhs())
    # ...and the solve prepares again, at no cost in curvature products
    assert solver.scale_ == 20.0 and res.info["scale"] == 20.0
    assert solver.is_prepared_for(prob.op) and solver.n_hvp_prepare_ == 0
    assert res.n_hvp == 10 * 8 == sum(k for _, k in prob.calls)


@pytest.mark.parametrize("solver", [Exact(), CG(), LiSSA(batch_size=10, depth=50, random_state=0)])
def test_prepared_solver_pickles_without_operator(solver):
    prob = spd_problem()
    solver.prepare(prob.op)  # the operator holds lambdas: it must not be pickled
    clone_ = pickle.loads(pickle.dumps(solver))
    assert solver.is_prepared_for(prob.op)  # pickling leaves the live solver untouched
    assert not clone_.is_prepared_for(prob.op)
    # the former private name (still called by the explainer) is an alias
    assert solver.is_prepared_for(prob.op) and not clone_.is_prepared_for(prob.op)
    G = rhs()
    a = solver.solve(prob.op, G).solution
    b = clone_.solve(prob.op, G).solution  # prepares again: the operator was dropped
    assert_close(a, b, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# The solver contract: side-effect-free solves, fingerprints, diagnostics in SolveResult
# ----------------------------------------------------------------------------------------------


def fingerprinted(prob, fingerprint):
    """A new CurvatureOperator object with ``prob``'s (logged) products and a fingerprint."""
    return replace(prob.op, fingerprint=fingerprint)


def solver_state(solver):
    """Deep copies of the parameters and of the instance dict (the operator by identity)."""
    state = {k: copy.deepcopy(v) for k, v in vars(solver).items() if k != "_prepared_op"}
    return copy.deepcopy(solver.get_params(deep=False)), state, vars(solver).get("_prepared_op")


def assert_same(a, b, where="state"):
    """Exact equality of nested containers of tensors, arrays and plain values."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    else:
        assert a == b, where


SIDE_EFFECT_FREE = [
    Exact(damping=1e-2),
    CG(damping=1e-2, tol=1e-8),
    CG(damping=1e-3, max_iter=2),  # stops unconverged (warns)
    LiSSA(damping=1e-2, batch_size=10, depth=50, n_repeats=2, random_state=0),
    LiSSA(damping=1e-2, scale=20.0, batch_size=10, depth=50, random_state=0),
    LiSSA(damping=1e-2, batch_size=60, depth=3000, tol=1e-6, random_state=0),
]
SIDE_EFFECT_FREE_IDS = ["Exact", "CG", "CG-unconverged", "LiSSA", "LiSSA-scale", "LiSSA-tol"]


@pytest.mark.parametrize("solver", SIDE_EFFECT_FREE, ids=SIDE_EFFECT_FREE_IDS)
def test_solve_leaves_prepared_solver_unchanged(solver):
    prob = spd_problem()
    solver = clone(solver).prepare(prob.op)
    fitted = [k for k in vars(solver) if k.endswith("_") and not k.startswith("_")]
    assert "n_hvp_prepare_" in fitted
    before = solver_state(solver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        first = solver.solve(prob.op, rhs())
        assert_same(solver_state(solver), before)
        second = solver.solve(prob.op, rhs(m=3, seed=4))
    params, state, op = solver_state(solver)
    assert_same(params, before[0], "params")
    assert_same({k: state[k] for k in fitted}, {k: before[1][k] for k in fitted}, "fitted")
    assert_same(state, before[1])
    assert op is before[2] is prob.op
    assert first.solution.shape == (8, 10) and second.solution.shape == (3, 10)


def test_exact_solve_at_a_new_damping_leaves_solver_unchanged():
    prob = indefinite_problem()
    G = rhs(P=8)
    with pytest.warns(IndefiniteCurvatureWarning):
        solver = Exact(damping=1e-3).prepare(prob.op)
    solver.set_params(damping=2e-3)  # still indefinite, not the damping prepare checked
    before = solver_state(solver)
    for _ in range(2):  # nothing is recorded: every solve at this damping warns
        with pytest.warns(IndefiniteCurvatureWarning, match="damping=0.002"):
            res = solver.solve(prob.op, G)
        assert_same(solver_state(solver), before)
    assert rel_err(res.solution, prob.truth(G, 2e-3)) < 1e-10


@pytest.mark.parametrize(
    "solver",
    [
        Exact(damping=1e-2),
        CG(damping=1e-2, tol=1e-10),
        LiSSA(batch_size=10, depth=40, random_state=0),
    ],
    ids=["Exact", "CG", "LiSSA"],
)
def test_prepared_state_is_keyed_on_the_fingerprint(solver):
    prob = spd_problem()
    G = rhs()
    op_a, op_b = fingerprinted(prob, "net-1"), fingerprinted(prob, "net-1")
    assert op_a is not op_b and op_a == op_b
    solver = clone(solver).prepare(op_a)
    assert solver.is_prepared_for(op_b)
    n_prepare = sum(k for _, k in prob.calls)
    assert n_prepare == solver.n_hvp_prepare_
    if not isinstance(solver, CG):
        assert n_prepare > 0
    res_b = solver.solve(op_b, G)  # another object, same values: no preparation
    assert sum(k for _, k in prob.calls) == n_prepare + res_b.n_hvp
    res_a = solver.solve(op_a, G)
    assert torch.equal(res_a.solution, res_b.solution) and res_a.n_hvp == res_b.n_hvp
    # a different fingerprint prepares again, so does an operator without one
    op_c = fingerprinted(prob, "net-2")
    assert not solver.is_prepared_for(op_c) and not solver.is_prepared_for(prob.op)
    n_calls = sum(k for _, k in prob.calls)
    res_c = solver.solve(op_c, G)
    assert res_c.n_hvp == res_b.n_hvp + n_prepare
    assert sum(k for _, k in prob.calls) == n_calls + res_c.n_hvp
    assert solver.is_prepared_for(op_c) and not solver.is_prepared_for(op_a)


def test_fingerprint_does_not_bypass_the_prepare_key():
    prob = spd_problem()
    op_a, op_b = fingerprinted(prob, "net-1"), fingerprinted(prob, "net-1")
    solver = LiSSA(damping=1e-2, batch_size=10, depth=20, random_state=0).prepare(op_a)
    solver.set_params(damping=0.5)  # the automatic scale depends on it
    assert not solver.is_prepared_for(op_b)
    res = solver.solve(op_b, rhs())
    assert res.n_hvp == 20 * 8 + solver.n_hvp_prepare_ and solver.n_hvp_prepare_ > 0
    np.testing.assert_allclose(
        solver.scale_, LiSSA(damping=0.5, batch_size=10, random_state=0).prepare(op_a).scale_
    )


@pytest.mark.parametrize(
    "solver",
    [Exact(damping=1e-2), CG(damping=1e-2), LiSSA(batch_size=10, depth=50, random_state=0)],
    ids=["Exact", "CG", "LiSSA"],
)
def test_prepared_solver_with_fingerprint_survives_pickling(solver):
    prob = spd_problem()
    G = rhs()
    solver = clone(solver).prepare(fingerprinted(prob, "net-1"))
    expected = solver.solve(fingerprinted(prob, "net-1"), G)
    loaded = pickle.loads(pickle.dumps(solver))
    # the operator of another process: same values and fingerprint, products counted anew
    other = spd_problem()
    op = fingerprinted(other, "net-1")
    assert loaded.is_prepared_for(op)
    res = loaded.solve(op, G)
    assert sum(k for _, k in other.calls) == res.n_hvp == expected.n_hvp  # no preparation
    assert torch.equal(res.solution, expected.solution) and res.trace == expected.trace
    fitted = [k for k in vars(solver) if k.endswith("_") and not k.startswith("_")]
    assert_same({k: vars(loaded)[k] for k in fitted}, {k: vars(solver)[k] for k in fitted})
    # the pickle holds no operator (it holds lambdas): only the fingerprint
    assert "_prepared_op" not in pickle.loads(pickle.dumps(solver)).__dict__


def test_solve_result_diagnostics():
    prob = spd_problem()
    G = rhs()
    res = CG(damping=1e-2, tol=1e-10).solve(prob.op, G)
    assert res.n_iter == len(prob.calls) == len(res.trace) > 1  # one block product each
    with pytest.warns(ConvergenceWarning):
        res = CG(damping=1e-3, max_iter=3).solve(prob.op, G)
    assert res.n_iter == 3 and not res.converged
    # an all-zero block needs no iteration
    assert CG().solve(prob.op, torch.zeros((2, 10), dtype=torch.float64)).n_iter == 0
    assert not hasattr(CG().prepare(prob.op), "n_iter_")  # diagnostics are not attributes
    res = Exact(damping=1e-2).solve(prob.op, G)
    assert res.n_iter == 0 and res.info == {}
    solver = LiSSA(batch_size=10, depth=30, n_repeats=2, random_state=0)
    res = solver.solve(prob.op, G)
    rayleigh = res.info.pop("rayleigh")
    assert res.info == {"scale": solver.scale_, "restarts": []}
    # every minibatch curvature is A_Bᵀ A_B / |B| + 0.1 I >= 0.1 I, so its Rayleigh quotients are
    assert rayleigh >= 0.1 + 1e-3 - 1e-9
    assert res.n_iter == len(res.trace) == 60
    res = LiSSA(scale=7.5, batch_size=60, depth=30).solve(prob.op, G)
    assert res.info["scale"] == 7.5
    # the fields added last have defaults, and the info dicts are not shared
    a = SolveResult(solution=G, trace=[], n_hvp=0, converged=True)
    b = SolveResult(solution=G, trace=[], n_hvp=0, converged=True)
    assert a.n_iter == 0 and a.info == {} and a.info is not b.info


def test_cg_cast_overflow_raises_instead_of_returning_inf():
    # H = 1e-36 I in float32: CG's float64 solution 1e39 overflows the float32 of the result.
    H = torch.full((3,), 1e-36, dtype=torch.float32)
    op = CurvatureOperator(
        matvec=lambda V: V * H,
        batch_matvec=lambda V, idx: V * H,
        n_params=3,
        n_samples=1,
        dtype=torch.float32,
    )
    G = torch.full((1, 3), 1e3, dtype=torch.float32)
    with pytest.raises(DivergenceError, match="`damping`"):
        CG(damping=0.0).solve(op, G)
    assert torch.isfinite(CG(damping=1e-2).solve(op, G).solution).all()


class CountingSolver(BaseSolver):
    """A minimal solver through the template: counts its hooks, may return a NaN."""

    _parameter_constraints: dict = {"damping": [Interval(Real, 0.0, None, closed="left")]}

    def __init__(self, *, damping=0.0):
        self.damping = damping

    def _prepare(self, op):
        self.n_prepared_ = getattr(self, "n_prepared_", 0) + 1
        return 5

    def _solve(self, op, G):
        S = G / (1.0 + self.damping)
        if self.damping == 0.0:
            S[0, 0] = float("nan")
        return SolveResult(solution=S, trace=[0.0], n_hvp=1, converged=True)


def test_template_prepares_validates_and_refuses_nan():
    prob = spd_problem()
    solver = CountingSolver(damping=1.0)
    res = solver.solve(prob.op, rhs(m=2))
    assert solver.n_prepared_ == 1 and res.n_hvp == 1 + 5  # prepared first, products added
    assert solver.solve(prob.op, rhs(m=2)).n_hvp == 1 and solver.n_prepared_ == 1
    assert solver.prepare(prob.op) is solver and solver.n_prepared_ == 2  # always does the work
    with pytest.raises(ValueError, match="shape"):
        solver.solve(prob.op, rhs(m=2, P=9))
    solver.set_params(damping=-1.0)
    with pytest.raises(InvalidParameterError, match="`damping`"):
        solver.solve(prob.op, rhs(m=2))
    solver.set_params(damping=0.0)
    with pytest.raises(DivergenceError, match="CountingSolver.*non-finite.*`damping`"):
        solver.solve(prob.op, rhs(m=2))
    assert solver.n_prepared_ == 2
    with pytest.raises(TypeError, match="CurvatureOperator"):
        solver.solve(object(), rhs(m=2))


@pytest.mark.parametrize(
    "solver", [Exact(), CG(), LiSSA(batch_size=10)], ids=["Exact", "CG", "LiSSA"]
)
def test_parameter_constraints(solver):
    """Every parameter is declared and enforced, in scikit-learn's words and with its `name`."""
    prob = spd_problem()
    name_of = type(solver).__name__
    assert set(solver._parameter_constraints) == set(solver.get_params(deep=False))
    bad_type = type("BadType", (), {})()
    for name, constraints in solver._parameter_constraints.items():
        bad_values = [bad_type]
        for constraint in map(make_constraint, constraints):
            try:
                bad_values.append(generate_invalid_param_val(constraint))
            except NotImplementedError:
                pass
        if any(isinstance(c, Interval) for c in constraints):
            bad_values.append(True)  # a bool is not a number here
        for value in bad_values:
            est = clone(solver).set_params(**{name: value})
            match = rf"`{name}`.*The '{name}' parameter of {name_of} must be .* Got .* instead"
            with pytest.raises(InvalidParameterError, match=match):
                est.prepare(prob.op)
            with pytest.raises(InvalidParameterError, match=match):
                clone(est).solve(prob.op, rhs())
    assert prob.calls == []


# ----------------------------------------------------------------------------------------------
# Exact: indefinite, singular and too large curvature
# ----------------------------------------------------------------------------------------------


def test_exact_indefinite_warns_and_returns_exact_inverse():
    prob = indefinite_problem()
    G = rhs(P=8)
    solver = Exact(damping=1e-3)
    with pytest.warns(IndefiniteCurvatureWarning, match="gauss_newton") as record:
        solver.prepare(prob.op)
    wmin = np.linalg.eigvalsh(prob.H)[0]
    assert f"{wmin:.4g}" in str(record[0].message)
    assert solver.n_negative_eigenvalues_ == 2
    assert solver.eigenvalues_[0] < 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already warned for this damping
        res = solver.solve(prob.op, G)
    assert rel_err(res.solution, prob.truth(G, 1e-3)) < 1e-10
    # A damping above -min eigenvalue makes it positive definite: no warning.
    solver.set_params(damping=-wmin + 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solver.solve(prob.op, G)
    assert rel_err(res.solution, prob.truth(G, -wmin + 0.1)) < 1e-10


def test_exact_singular_raises():
    A = np.random.default_rng(0).standard_normal((3, 6))  # rank 3 < 6
    prob = MatrixProblem(A)
    with pytest.raises(DivergenceError, match="singular"):
        Exact(damping=0.0).solve(prob.op, rhs(P=6))
    res = Exact(damping=1e-2).solve(prob.op, rhs(P=6))
    assert rel_err(res.solution, prob.truth(rhs(P=6), 1e-2)) < 1e-9


def test_exact_refuses_huge_curvature_without_any_product():
    def boom(*args):
        raise AssertionError("matvec must not be called")

    op = CurvatureOperator(matvec=boom, batch_matvec=boom, n_params=10**7, n_samples=100)
    with pytest.raises(CurvatureTooLargeError) as info:
        Exact().prepare(op)
    assert isinstance(info.value, MemoryError)
    msg = str(info.value)
    assert "10,000,000" in msg and "2.1 PiB" in msg  # 3 * 8 * 1e14 bytes
    assert "CG" in msg and "LiSSA" in msg and "params" in msg


def test_exact_memory_threshold(monkeypatch):
    """Refused exactly when 3 float64 P x P matrices exceed half the physical memory."""
    monkeypatch.setattr(_exact, "_physical_memory", lambda: 2 * 3 * 8 * 10**2)
    Exact().prepare(spd_problem(P=10).op)
    with pytest.raises(CurvatureTooLargeError, match="n_params=11"):
        Exact().prepare(spd_problem(P=11).op)
    monkeypatch.setattr(_exact, "_physical_memory", lambda: None)  # unknown: no refusal
    Exact().prepare(spd_problem(P=11).op)


# ----------------------------------------------------------------------------------------------
# CG: negative curvature, non-convergence
# ----------------------------------------------------------------------------------------------


def test_cg_negative_curvature_raises():
    prob = indefinite_problem()
    G = torch.as_tensor(np.linalg.eigh(prob.H)[1][:, :1].T.copy())  # most negative direction
    with pytest.raises(DivergenceError, match="damping") as info:
        CG(damping=1e-3).solve(prob.op, torch.cat([rhs(m=2, P=8), G]))
    assert "gauss_newton" in str(info.value)


def test_cg_max_iter_warns_convergence():
    prob = spd_problem(P=30, n=40, shift=0.0)
    G = rhs(P=30)
    with pytest.warns(ConvergenceWarning, match="max_iter") as record:
        res = CG(damping=1e-3, max_iter=3).solve(prob.op, G)
    assert "residual" in str(record[0].message)
    assert not res.converged and len(res.trace) == 3 and res.n_hvp == 3 * 8
    assert f"{res.trace[-1]:.3g}" in str(record[0].message)
    assert torch.isfinite(res.solution).all()


def test_cg_freezes_converged_columns():
    prob = spd_problem()
    # Column 0 is an eigenvector: CG solves it in one iteration and then stops using it.
    v = np.linalg.eigh(prob.H)[1][:, 0]
    G = torch.cat([torch.as_tensor(v)[None, :], rhs(m=3)])
    res = CG(damping=0.0, tol=1e-10).solve(prob.op, G)
    assert prob.calls[0] == ("matvec", 4) and prob.calls[1] == ("matvec", 3)
    assert rel_err(res.solution, prob.truth(G, 0.0)) < 1e-8


# ----------------------------------------------------------------------------------------------
# LiSSA: divergence, automatic scale, determinism, early stopping
# ----------------------------------------------------------------------------------------------


def test_lissa_too_small_scale_raises():
    prob = spd_problem()
    top = np.linalg.eigvalsh(prob.H)[-1]
    with pytest.raises(DivergenceError, match="scale") as info:
        LiSSA(scale=top / 4, batch_size=60, depth=500).solve(prob.op, rhs())
    assert "step" in str(info.value) and f"{top / 4:.4g}" in str(info.value)
    # The same problem with a large enough numeric scale is fine.
    res = LiSSA(scale=top, batch_size=60, depth=500).solve(prob.op, rhs())
    assert torch.isfinite(res.solution).all()


def test_lissa_indefinite_raises_numeric_scale():
    prob = indefinite_problem()
    with pytest.raises(DivergenceError, match="damping") as info:
        LiSSA(damping=1e-4, scale=10.0, batch_size=40, depth=3000).solve(prob.op, rhs(P=8))
    assert "gauss_newton" in str(info.value)


def test_lissa_indefinite_raises_after_restarts_with_auto_scale():
    # The negative eigenvalues dominate in magnitude: the power iteration sees them.
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 6))
    prob = MatrixProblem(A, shift=-5.0)
    solver = LiSSA(damping=1e-4, batch_size=40, depth=400, random_state=0)
    with pytest.warns(IndefiniteCurvatureWarning):
        solver.prepare(prob.op)
    assert solver.top_eigenvalue_ < 0
    with pytest.warns(ScaleRestartWarning) as restart_warnings:
        with pytest.raises(DivergenceError, match="gauss_newton") as info:
            solver.solve(prob.op, rhs(P=6))
    assert sum(issubclass(w.category, ScaleRestartWarning) for w in restart_warnings) == 3
    assert "damping" in str(info.value) and "3 restarts" in str(info.value)
    assert len(solver.restarts_) == 3
    scales = [r["scale"] for r in solver.restarts_]
    assert scales[1] == 2 * scales[0] and scales[2] == 2 * scales[1]


def test_lissa_auto_scale_recovers_where_fixed_scale_diverges():
    # One training row has a far larger curvature than the others. With batch_size=1 the probes
    # of prepare() miss it, so the automatic scale is too small for the minibatch that holds it.
    prob = spd_problem(n=40, outlier=6)
    G = rhs()
    X = prob.truth(G, 1e-2)
    kw = dict(damping=1e-2, batch_size=1, n_repeats=2, depth=1500, random_state=0)
    solver = LiSSA(**kw).prepare(prob.op)
    first_scale = solver.scale_
    assert solver.restarts_ == []
    # The rule: 1.5 * (largest estimated eigenvalue + damping), at least the full-H value.
    assert first_scale >= 1.5 * (0.99 * np.linalg.eigvalsh(prob.H)[-1] + 1e-2)
    with pytest.raises(DivergenceError, match="scale"):
        LiSSA(**{**kw, "scale": first_scale}).solve(prob.op, G)
    with pytest.warns(ScaleRestartWarning, match="restarting"):
        res = solver.solve(prob.op, G)
    assert 1 <= len(solver.restarts_) <= 3
    assert solver.scale_ == first_scale * 2 ** len(solver.restarts_)
    assert solver.restarts_[0]["scale"] == first_scale
    # the result reports the restarts of this solve and the scale of its estimate
    assert res.info["restarts"] == solver.restarts_
    assert res.info["scale"] == solver.scale_
    assert res.n_iter == len(res.trace) == 2 * 1500
    assert torch.isfinite(res.solution).all()
    assert min_cosine(res.solution, X) > 0.95
    # The doubled scale is kept: the next solve needs no restart and gives the same result.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleRestartWarning)
        again = solver.solve(prob.op, G)
    assert_close(again.solution, res.solution)
    assert again.info["scale"] == solver.scale_ and again.info["restarts"] == []


def test_lissa_auto_scale_rule_full_batch():
    prob = spd_problem()
    solver = LiSSA(damping=0.2, batch_size=60, random_state=0).prepare(prob.op)
    top = np.linalg.eigvalsh(prob.H)[-1]
    # 30 power iterations approach the top eigenvalue from below.
    assert 1.5 * (0.98 * top + 0.2) <= solver.scale_ <= 1.5 * (top + 0.2) * (1 + 1e-12)
    np.testing.assert_allclose(solver.top_eigenvalue_, top, rtol=2e-2)
    assert solver.n_hvp_prepare_ == _lissa._POWER_ITER  # no minibatch probes at full batch
    small = LiSSA(damping=0.2, batch_size=5, random_state=0).prepare(prob.op)
    assert small.n_hvp_prepare_ == (1 + _lissa._N_PROBE_BATCHES) * _lissa._POWER_ITER
    assert small.scale_ >= solver.scale_ * 0.99  # small minibatches have a larger spectrum


def test_lissa_determinism_and_block_split_invariance():
    prob = spd_problem()
    G = rhs(m=8)
    kw = dict(damping=1e-2, batch_size=4, n_repeats=2, depth=300)
    a = LiSSA(random_state=7, **kw).solve(prob.op, G)
    b = LiSSA(random_state=7, **kw).solve(prob.op, G)
    assert torch.equal(a.solution, b.solution) and a.trace == b.trace
    solver = LiSSA(random_state=7, **kw)
    assert torch.equal(solver.solve(prob.op, G).solution, solver.solve(prob.op, G).solution)
    # Solving in two halves, or one column alone, equals solving the whole block.
    halves = torch.cat(
        [solver.solve(prob.op, G[:5]).solution, solver.solve(prob.op, G[5:]).solution]
    )
    assert_close(halves, a.solution, rtol=1e-10, atol=1e-12)
    single = solver.solve(prob.op, G[3:4]).solution
    assert_close(single[0], a.solution[3], rtol=1e-10, atol=1e-12)
    # A different random_state draws different minibatches.
    c = LiSSA(random_state=8, **kw).solve(prob.op, G)
    assert rel_err(c.solution, a.solution.numpy()) > 1e-3
    # A RandomState instance advances between calls, as in scikit-learn.
    rs_solver = LiSSA(random_state=np.random.RandomState(0), **kw)
    d1, d2 = rs_solver.solve(prob.op, G), rs_solver.solve(prob.op, G)
    assert not torch.equal(d1.solution, d2.solution)


def test_lissa_block_split_invariance_with_tol():
    prob = spd_problem()
    G = rhs(m=6)
    solver = LiSSA(damping=1e-2, batch_size=60, depth=3000, tol=1e-5, random_state=0)
    whole = solver.solve(prob.op, G)
    parts = torch.cat([solver.solve(prob.op, G[i : i + 1]).solution for i in range(6)])
    assert_close(parts, whole.solution, rtol=1e-10, atol=1e-12)


def test_lissa_tol_stops_early():
    prob = spd_problem()
    G = rhs()
    depth = 5000
    solver = LiSSA(damping=1e-2, batch_size=60, depth=depth, tol=1e-9, random_state=0)
    res = solver.solve(prob.op, G)
    assert res.converged
    spent = res.n_hvp - solver.n_hvp_prepare_
    assert spent < depth * 8 / 3
    assert len(res.trace) < depth / 3
    assert res.trace[-1] < 1e-9
    assert rel_err(res.solution, prob.truth(G, 1e-2)) < 1e-6
    # Without tol the full depth is used.
    res = LiSSA(damping=1e-2, batch_size=60, depth=300, random_state=0).solve(prob.op, G)
    assert len(res.trace) == 300 and res.converged
    # A tol that minibatch noise never reaches: runs to depth, converged=False, no error.
    res = LiSSA(damping=1e-2, batch_size=2, depth=200, tol=1e-12, random_state=0).solve(prob.op, G)
    assert not res.converged and len(res.trace) == 200


def test_lissa_repeats_trace_concatenated():
    prob = spd_problem()
    solver = LiSSA(batch_size=10, depth=50, n_repeats=3, random_state=0)
    res = solver.solve(prob.op, rhs())
    assert len(res.trace) == 150
    assert res.n_hvp == 3 * 50 * 8 + solver.n_hvp_prepare_


# ----------------------------------------------------------------------------------------------
# scikit-learn conventions and parameter validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver",
    [
        Exact(damping=0.5),
        CG(damping=0.5, max_iter=7, tol=1e-4),
        LiSSA(
            damping=0.5, scale=3.0, depth=11, batch_size=3, n_repeats=2, tol=1e-3, random_state=4
        ),
    ],
)
def test_clone_and_params(solver):
    assert isinstance(solver, BaseSolver)
    params = solver.get_params()
    assert params["damping"] == 0.5
    cloned = clone(solver)
    assert cloned is not solver and cloned.get_params() == params
    if isinstance(solver, LiSSA):
        assert cloned.set_params(depth=99) is cloned and cloned.depth == 99
        assert solver.depth == 11
    with pytest.raises(TypeError):
        type(solver)(0.5)  # keyword-only
    # Fitted attributes do not survive clone.
    solver.prepare(spd_problem().op)
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(clone(solver)))


def test_default_parameters():
    assert Exact().get_params() == {"damping": 1e-3}
    assert CG().get_params() == {"damping": 1e-3, "max_iter": 100, "tol": 1e-6,
                                 "preconditioner": None, "block": False, "recycle": 0}
    assert LiSSA().get_params() == {
        "damping": 1e-3,
        "scale": "auto",
        "depth": "auto",
        "batch_size": 32,
        "n_repeats": 1,
        "tol": None,
        "random_state": None,
    }


@pytest.mark.parametrize(
    ("solver", "name"),
    [
        (Exact(damping=-1.0), "damping"),
        (Exact(damping=float("nan")), "damping"),
        (CG(damping=-1e-3), "damping"),
        (CG(max_iter=0), "max_iter"),
        (CG(max_iter=2.5), "max_iter"),
        (CG(tol=0.0), "tol"),
        (LiSSA(damping=-1.0), "damping"),
        (LiSSA(scale=0.0), "scale"),
        (LiSSA(scale=-2.0), "scale"),
        (LiSSA(scale="big"), "scale"),
        (LiSSA(depth=0), "depth"),
        (LiSSA(batch_size=0), "batch_size"),
        (LiSSA(batch_size=61), "batch_size"),
        (LiSSA(n_repeats=0), "n_repeats"),
        (LiSSA(tol=0.0), "tol"),
        (LiSSA(tol="small"), "tol"),
    ],
)
def test_bad_parameters_raise(solver, name):
    prob = spd_problem()
    with pytest.raises(ValueError, match=f"`{name}`"):
        solver.prepare(prob.op)
    with pytest.raises(ValueError, match=f"`{name}`"):
        clone(solver).solve(prob.op, rhs())
    assert prob.calls == []  # validated before any product


@pytest.mark.parametrize(
    ("solver", "message"),
    [
        (Exact(damping=-1.0), "`damping` must be >= 0.0, got -1.0. The 'damping' parameter"),
        (Exact(damping=float("nan")), "`damping` must be 'auto' or a finite real number, got nan."),
        (CG(damping=True), "`damping` must be 'auto' or a finite real number, got True."),
        (CG(max_iter=2.5), "`max_iter` must be an integer, got 2.5."),
        (CG(tol=-1), "`tol` must be > 0.0, got -1."),
        (LiSSA(depth=0), "`depth` must be >= 1, got 0."),
        (LiSSA(scale="big"), "`scale` must be 'auto' or a positive number, got 'big'."),
        (LiSSA(tol="small"), "`tol` must be None or a positive number, got 'small'."),
        (LiSSA(random_state="seed"), "Invalid `random_state`. The 'random_state' parameter"),
    ],
)
def test_parameter_messages_say_what_is_wrong_first(solver, message):
    with pytest.raises(InvalidParameterError) as info:
        solver.prepare(spd_problem().op)
    assert str(info.value).startswith(message)
    assert str(info.value).endswith(" instead.")


def test_docstring_examples():
    for module in (_exact, _cg, _lissa):
        result = doctest.testmod(module, raise_on_error=False)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_public_api():
    import sk_fastif.solvers as solvers

    for name in (
        "Exact",
        "CG",
        "LiSSA",
        "BaseSolver",
        "CurvatureOperator",
        "SolveResult",
        "DivergenceError",
    ):
        assert name in solvers.__all__
    assert issubclass(DivergenceError, ArithmeticError)
    assert issubclass(CurvatureTooLargeError, MemoryError)
    assert issubclass(IndefiniteCurvatureWarning, UserWarning)
    assert issubclass(ScaleRestartWarning, UserWarning)


# ------------------------------------------------------------------------------- block CG
def _spd_operator(P=40, seed=0, shift=0.01):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(P, P, generator=g, dtype=torch.float64)
    H = Q @ Q.T / P + shift * torch.eye(P, dtype=torch.float64)
    op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
                           n_params=P, n_samples=1, dtype=torch.float64)
    return H, op


def test_block_cg_solves_the_explicit_system_in_fewer_products():
    H, op = _spd_operator()
    G = torch.randn(6, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    G[2] = 0.0  # a zero right-hand side stays zero
    exact = torch.linalg.solve(H + 0.1 * torch.eye(40, dtype=torch.float64), G.T).T
    block = CG(damping=0.1, tol=1e-10, max_iter=500, block=True).solve(op, G)
    columns = CG(damping=0.1, tol=1e-10, max_iter=500).solve(op, G)
    assert block.converged and columns.converged
    torch.testing.assert_close(block.solution, exact, rtol=1e-8, atol=1e-10)
    assert torch.count_nonzero(block.solution[2]) == 0
    assert block.n_iter < columns.n_iter and block.n_hvp < columns.n_hvp
    assert len(block.trace) == block.n_iter and block.trace[-1] <= 1e-10
    # the relative residual it reports is the true one
    true = torch.linalg.vector_norm(
        (H + 0.1 * torch.eye(40, dtype=torch.float64)) @ block.solution.T - G.T, dim=0)
    assert float((true / torch.linalg.vector_norm(G, dim=1).clamp_min(1e-300)).max()) <= 1e-9


def test_block_cg_with_more_right_hand_sides_than_parameters_takes_one_iteration():
    H, op = _spd_operator(P=10)
    G = torch.randn(25, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = CG(damping=0.05, tol=1e-10, block=True).solve(op, G)
    exact = torch.linalg.solve(H + 0.05 * torch.eye(10, dtype=torch.float64), G.T).T
    assert res.n_iter == 1 and res.n_hvp == 10  # the whole space in one block of directions
    torch.testing.assert_close(res.solution, exact, rtol=1e-9, atol=1e-11)


def test_block_cg_refuses_an_indefinite_system_and_warns_when_truncated():
    H, _ = _spd_operator(P=20)
    H = H - 0.5 * torch.eye(20, dtype=torch.float64)
    op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
                           n_params=20, n_samples=1, dtype=torch.float64)
    G = torch.randn(3, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(DivergenceError, match="not positive definite"):
        CG(damping=0.0, block=True).solve(op, G)
    _, op = _spd_operator(P=20)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        res = CG(damping=1e-3, tol=1e-12, max_iter=2, block=True).solve(op, G)
    assert not res.converged and res.n_iter == 2


def test_block_cg_on_a_net_agrees_with_exact(digits, digits_mlp):
    from sk_fastif import InfluenceExplainer

    Xtr, ytr, Xte, yte = digits
    exact = InfluenceExplainer(digits_mlp, solver=Exact(damping=1e-2)).fit(Xtr, ytr)
    ref = exact.influences(Xte[:8], yte[:8])
    for pre in (None, "ekfac"):
        block = InfluenceExplainer(digits_mlp, solver=CG(damping=1e-2, tol=1e-7, block=True,
                                                         preconditioner=pre)).fit(Xtr, ytr)
        np.testing.assert_allclose(block.influences(Xte[:8], yte[:8]), ref, rtol=1e-3,
                                   atol=1e-4 * np.abs(ref).max())


# ------------------------------------------------------------------- recycled block CG
def _true_residual(H, damping, X, G):
    A = H + damping * torch.eye(H.shape[0], dtype=H.dtype)
    return float((torch.linalg.vector_norm(X @ A - G, dim=1)
                  / torch.linalg.vector_norm(G, dim=1)).max())


def _correlated_blocks(P=60, n_blocks=4, m=5, seed=4):
    # right-hand sides that share a subspace, as the gradients of test points do
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(12, P, generator=g, dtype=torch.float64)
    return [torch.randn(m, 12, generator=g, dtype=torch.float64) @ basis
            + 0.05 * torch.randn(m, P, generator=g, dtype=torch.float64)
            for _ in range(n_blocks)]


def test_recycled_cg_meets_the_tolerance_in_fewer_products():
    H, op = _spd_operator(P=60, shift=0.02)
    blocks = _correlated_blocks()
    fresh = CG(damping=0.05, tol=1e-3, max_iter=500, block=True).prepare(op)
    kept = CG(damping=0.05, tol=1e-3, max_iter=500, block=True, recycle=60).prepare(op)
    spent_fresh = spent_kept = 0
    for G in blocks:
        a, b = fresh.solve(op, G), kept.solve(op, G)
        assert a.converged and b.converged
        assert _true_residual(H, 0.05, b.solution, G) <= 1e-3  # the same promise
        spent_fresh += a.n_hvp
        spent_kept += b.n_hvp
    assert spent_kept < 0.8 * spent_fresh
    assert 0 < kept.n_recycled_ <= 60 and fresh.n_recycled_ == 0


def test_recycled_cg_is_exact_and_free_once_it_spans_every_parameter():
    H, op = _spd_operator(P=15)
    solver = CG(damping=0.1, tol=1e-12, block=True, recycle=15).prepare(op)
    G = torch.randn(20, 15, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    solver.solve(op, G)  # 20 right-hand sides in 15 dimensions: the whole space
    assert solver.n_recycled_ == 15
    B = torch.randn(4, 15, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    res = solver.solve(op, B)
    assert res.n_hvp == 0 and res.converged
    exact = torch.linalg.solve(H + 0.1 * torch.eye(15, dtype=torch.float64), B.T).T
    torch.testing.assert_close(res.solution, exact, rtol=1e-9, atol=1e-11)
    # the kept products are of H alone: another damping still gets the exact answer for free
    solver.set_params(damping=1.0)
    res = solver.solve(op, B)
    exact = torch.linalg.solve(H + torch.eye(15, dtype=torch.float64), B.T).T
    assert res.n_hvp == 0
    torch.testing.assert_close(res.solution, exact, rtol=1e-9, atol=1e-11)


def test_recycled_cg_keeps_at_most_recycle_directions_and_forgets_them_on_prepare():
    H, op = _spd_operator(P=60, shift=0.02)
    solver = CG(damping=0.05, tol=1e-8, max_iter=500, block=True, recycle=7)
    for G in _correlated_blocks():
        res = solver.solve(op, G)
        assert _true_residual(H, 0.05, res.solution, G) <= 1e-8
    assert solver.n_recycled_ == 7
    solver.prepare(op)
    assert solver.n_recycled_ == 0
    # a pickled solver (as a worker receives it) drops the directions and still solves
    solver.solve(op, _correlated_blocks()[0])
    clone = pickle.loads(pickle.dumps(solver))
    assert clone.n_recycled_ == 0 and solver.n_recycled_ > 0
    G = _correlated_blocks(seed=9)[0]
    assert _true_residual(H, 0.05, clone.solve(op, G).solution, G) <= 1e-8


def test_recycle_needs_block_cg_and_refuses_an_indefinite_kept_space():
    H, op = _spd_operator(P=20)
    G = torch.randn(3, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with pytest.raises(ValueError, match="needs block=True"):
        CG(damping=0.1, recycle=5).solve(op, G)
    with pytest.raises(ValueError, match="recycle"):
        CG(damping=0.1, block=True, recycle=-1).solve(op, G)
    # an indefinite H: PD at damping 1, not at 0.1; the kept directions say so at once
    H = H - 0.5 * torch.eye(20, dtype=torch.float64)
    op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
                           n_params=20, n_samples=1, dtype=torch.float64)
    solver = CG(damping=1.0, tol=1e-10, block=True, recycle=20)
    solver.solve(op, torch.randn(25, 20, generator=torch.Generator().manual_seed(7),
                                 dtype=torch.float64))
    assert solver.n_recycled_ == 20
    solver.set_params(damping=0.1)
    with pytest.raises(DivergenceError, match="recycled directions"):
        solver.solve(op, G)
