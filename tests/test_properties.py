"""Property-based tests: any input gives a correct result or a clear error, never a crash.

For arbitrary shapes, dtypes and values of ``X`` and ``y``, and arbitrary parameter values of
the explainer and its solvers, every public method must either return a finite result of the
documented shape or raise one of the library's clear errors (ValueError, TypeError,
NotFittedError, or the solvers' DivergenceError) whose message names the offending argument.
An IndexError, a RuntimeError from torch or a NaN result fails the test.

The nets are tiny and built once at import (fixtures cannot be shared with ``@given``).
"""

import re
import warnings

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.exceptions import NotFittedError
from skorch import NeuralNetRegressor

from sk_fastif import Explanation, InfluenceExplainer
from sk_fastif.solvers import CG, DivergenceError, Exact, LiSSA
from sk_fastif.toy import make_mlp_classifier

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
CLEAR_ERRORS = (ValueError, TypeError, NotFittedError)


def _clf(**params):
    """A 4-5-3 tanh MLP classifier trained by plain SGD on minibatches of 128."""
    return make_mlp_classifier(4, 3, n_hidden=5, optimizer=torch.optim.SGD, batch_size=128,
                               **params)


def _build():
    rng = np.random.RandomState(0)
    X = rng.randn(40, 4)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    torch.manual_seed(0)
    clf = _clf(lr=0.2, max_epochs=10).fit(X.astype(np.float32), y)
    Xr = rng.randn(30, 3)
    yr = Xr @ np.array([1.0, -1.0, 0.5]) + 0.1 * rng.randn(30)
    reg = NeuralNetRegressor(torch.nn.Linear, module__in_features=3, module__out_features=1,
                             lr=0.1, max_epochs=20, train_split=None, verbose=0)
    reg.initialize()
    reg.module_.double()
    reg.partial_fit(Xr, yr.reshape(-1, 1))
    return clf, X, y, reg, Xr, yr


CLF, X_CLF, Y_CLF, REG, X_REG, Y_REG = _build()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    EXPL_CLF = InfluenceExplainer(CLF, solver=Exact(damping=0.1),
                                  curvature="gauss_newton").fit(X_CLF, Y_CLF)
    EXPL_REG = InfluenceExplainer(REG, solver=Exact(damping=0.1)).fit(X_REG, Y_REG)


def _assert_clear(exc: BaseException, names: tuple[str, ...]) -> None:
    """The error is one of ours and its message names one of the arguments."""
    assert isinstance(exc, CLEAR_ERRORS + (DivergenceError,)), repr(exc)
    msg = str(exc)
    event(f"error: {type(exc).__name__}: {msg[:25]}")
    if isinstance(exc, NotFittedError):
        return
    pattern = r"(?<![A-Za-z_])(" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z_])"
    assert re.search(pattern, msg), f"message does not name {names}: {msg!r}"


def _call(expl, method, X, y, k):
    if method == "explain":
        return expl.explain(X, y, k=k)
    if method in ("predict", "predict_proba"):
        return getattr(expl, method)(X)
    return getattr(expl, method)(X, y)


def _check_result(expl, method, out, n_test, k):
    if method == "explain":
        assert isinstance(out, Explanation)
        for a in (out.helpful_indices, out.harmful_indices):
            assert a.shape == (n_test, k) and np.all((a >= 0) & (a < expl.n_train_))
        for a in (out.helpful_scores, out.harmful_scores):
            assert a.shape == (n_test, k) and np.all(np.isfinite(a))
        return
    out = np.asarray(out)
    expected = {
        "influences": (n_test, expl.n_train_),
        "influence_factors": (n_test, expl.n_params_),
        "self_influence": (n_test,),
        "score": (),
        "predict": (n_test,) if expl is EXPL_CLF else (n_test, 1),
        "predict_proba": (n_test, 3),
    }[method]
    assert out.shape == expected
    assert np.all(np.isfinite(out.astype(np.float64)))


METHODS = ["influences", "explain", "influence_factors", "self_influence", "score", "predict",
           "predict_proba"]


@st.composite
def mostly(draw, valid, *invalid, p_valid=0.75):
    """Draw from ``valid`` with probability ``p_valid``, else from one of ``invalid``, so that
    the deep paths are exercised as well as the error paths (hypothesis's own choice between
    alternatives favours the rare ones)."""
    if draw(st.randoms(use_true_random=False)).random() < p_valid:
        return draw(valid)
    return draw(st.one_of(*invalid))


POISON = [np.nan, np.inf, -np.inf, 1e30, -1e39, 1e300]


@st.composite
def arbitrary_X(draw, n_features):
    ndim = draw(mostly(st.just(2), st.just(1), st.just(3), p_valid=0.85))
    n = draw(mostly(st.integers(1, 4), st.just(0)))
    f = draw(mostly(st.just(n_features), st.sampled_from([n_features - 1, n_features + 2])))
    shape = {1: (f,), 2: (n, f), 3: (n, f, 2)}[ndim]
    X = draw(hnp.arrays(np.float64, shape, elements=st.floats(-3, 3)))
    poison = draw(mostly(st.none(), st.sampled_from(POISON)))
    if poison is not None and X.size:
        X.flat[draw(st.integers(0, X.size - 1))] = poison
    dtype = draw(mostly(st.sampled_from([np.float32, np.float64]),
                        st.sampled_from([np.float16, np.int64, np.bool_]), p_valid=0.8))
    with np.errstate(all="ignore"):
        X = X.astype(dtype)
    container = draw(mostly(st.just("array"), st.sampled_from(["list", "str", "complex"]),
                            p_valid=0.9))
    if container == "list":
        return X.tolist()
    if container == "str":
        return X.astype(str)
    if container == "complex":
        return X + 1j
    return X


@st.composite
def arbitrary_y(draw, n_rows, regression):
    kind = draw(mostly(st.sampled_from(["none", "good"]),
                       st.sampled_from(["length", "poison", "str", "2d", "scalar", "labels",
                                        "fractional"]), p_valid=0.85))
    n = max(n_rows, 0)
    if kind == "none":
        return None
    if regression:
        y = draw(hnp.arrays(np.float64, (n,), elements=st.floats(-3, 3)))
    else:
        y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    if kind == "good":
        return y
    if kind == "length":
        return np.zeros(draw(st.sampled_from([n + 1, n + 2, max(n - 1, 0)])), dtype=y.dtype)
    if kind == "poison" and n:
        y = y.astype(np.float64)
        y[draw(st.integers(0, n - 1))] = draw(st.sampled_from(POISON))
        return y
    if kind == "str":
        return y.astype(str)
    if kind == "2d":
        return np.zeros((n, draw(st.integers(2, 3))))
    if kind == "scalar":
        return draw(st.sampled_from([0, 1.5, "a"]))
    if kind == "fractional":
        return y + 0.5
    return draw(hnp.arrays(np.int64, (n,), elements=st.integers(-3, 6)))


K = mostly(st.integers(1, 30), st.integers(-2, 0), st.integers(31, 45),
           st.sampled_from([True, 2.0, "3", None]))


def _n_rows(X):
    if isinstance(X, list):
        return len(X)
    return X.shape[0] if X.ndim >= 2 else -1


@SETTINGS
@given(data=st.data(), method=st.sampled_from(METHODS), regression=st.booleans(), k=K)
def test_any_input_gives_a_result_or_a_clear_error(data, method, regression, k):
    expl = EXPL_REG if regression else EXPL_CLF
    if regression and method == "predict_proba":
        method = "predict"
    X = data.draw(arbitrary_X(X_REG.shape[1] if regression else X_CLF.shape[1]), label="X")
    y = data.draw(arbitrary_y(_n_rows(X), regression), label="y")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = _call(expl, method, X, y, k)
    except BaseException as exc:  # noqa: BLE001 - the property is about what escapes
        _assert_clear(exc, ("X", "y", "k"))
        return
    event("result")
    _check_result(expl, method, out, _n_rows(X), k)


@settings(SETTINGS, max_examples=40)
@given(data=st.data(), method=st.sampled_from(METHODS), regression=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64, np.int64]))
def test_valid_input_always_succeeds(data, method, regression, dtype):
    """Finite, correctly shaped input of any numeric dtype must never be refused."""
    expl, Xtr = (EXPL_REG, X_REG) if regression else (EXPL_CLF, X_CLF)
    if regression and method == "predict_proba":
        method = "predict"
    n = data.draw(st.integers(1, 4), label="n")
    X = data.draw(hnp.arrays(np.float64, (n, Xtr.shape[1]), elements=st.floats(-3, 3)),
                  label="X").astype(dtype)
    if regression:
        y = data.draw(hnp.arrays(np.float64, (n,), elements=st.floats(-3, 3)), label="y")
    else:
        y = data.draw(st.one_of(st.none(), hnp.arrays(np.int64, (n,),
                                                      elements=st.integers(0, 2))), label="y")
    k = data.draw(st.integers(1, expl.n_train_), label="k")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-gradient points are reported by a warning
        out = _call(expl, method, X, y, k)
    _check_result(expl, method, out, n, k)
    if method == "influences" and n > 1:  # each row depends on its own test point only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one = expl.influences(X[-1:], None if y is None else y[-1:])
        # equal up to the rounding of differently sized batches (float32 nets: ~1e-7)
        np.testing.assert_allclose(out[-1], one[0], rtol=1e-5, atol=1e-6 * np.abs(out).max())


VALID_SOLVER_VALUES = {
    "damping": st.sampled_from([0.0, 1e-3, 0.1, 2.0]),
    "max_iter": st.integers(1, 30),
    "tol": st.sampled_from([1e-8, 1e-3, 0.5]),
    "scale": st.sampled_from([5.0, 20.0, 1e3]),
    "depth": st.integers(1, 5),
    "batch_size": st.integers(1, 30),
    "n_repeats": st.integers(1, 2),
}
INVALID_VALUES = st.sampled_from([-1, 0, -0.5, np.nan, np.inf, None, True, "x", 2.5, 10**6])


@st.composite
def solvers(draw):
    kind = draw(st.sampled_from(["exact", "cg", "lissa"]))
    if kind == "exact":
        names, cls = ["damping"], Exact
    elif kind == "cg":
        names, cls = ["damping", "max_iter", "tol"], CG
    else:
        names, cls = ["damping", "scale", "depth", "batch_size", "n_repeats", "tol"], LiSSA
    kwargs = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=3)):
        kwargs[name] = draw(mostly(VALID_SOLVER_VALUES[name], INVALID_VALUES))
    if kind == "lissa":  # keep the solves short (a numeric scale skips the power iteration)
        kwargs.setdefault("scale", 20.0)
        kwargs.setdefault("depth", 5)
        if kwargs["depth"] == 10**6:
            kwargs["depth"] = 5
        kwargs.setdefault("batch_size", 8)
    if kind == "cg" and kwargs.get("max_iter") == 10**6:
        kwargs["max_iter"] = 30
    return cls(**kwargs), sorted(kwargs)


@SETTINGS
@given(solver=solvers(),
       params=mostly(st.sampled_from([None, "weight", ["bias"], ["weight", "bias"]]),
                     st.sampled_from(["nope", "", [], [3], ["weight", "nope"]]), p_valid=0.9),
       batch_size=mostly(st.integers(1, 40), st.sampled_from([0, -1, True, 2.5, "8"]),
                         p_valid=0.9),
       curvature=mostly(st.sampled_from(["hessian", "gauss_newton"]), st.just("fisher"),
                        p_valid=0.9),
       random_state=mostly(st.sampled_from([None, 0, 5]), st.just("seed"), p_valid=0.9))
def test_any_parameter_values_give_a_result_or_a_clear_error(solver, params, batch_size,
                                                             curvature, random_state):
    solver, solver_names = solver
    expl = InfluenceExplainer(REG, solver=solver, params=params, batch_size=batch_size,
                              curvature=curvature, random_state=random_state)
    names = ("solver", "params", "batch_size", "curvature", "random_state", "damping", "scale",
             *solver_names)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expl.fit(X_REG, Y_REG)
            out = expl.influences(X_REG[:2], Y_REG[:2])
    except BaseException as exc:  # noqa: BLE001
        _assert_clear(exc, names)
        return
    event("result")
    assert out.shape == (2, len(X_REG)) and np.all(np.isfinite(out))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(n=st.integers(1, 12), dtype=st.sampled_from([torch.float32, torch.float64]),
       kind=st.sampled_from(["classifier", "regressor"]))
def test_any_training_size_and_net_dtype_fit(n, dtype, kind):
    """Fit on the first n rows (even one) with a float32 or float64 net: scores are finite."""
    if kind == "classifier":
        net = _clf(max_epochs=1).initialize()
        net.module_.load_state_dict(CLF.module_.state_dict())
        X, y = X_CLF[:n], Y_CLF[:n]
    else:
        net = NeuralNetRegressor(torch.nn.Linear, module__in_features=3, module__out_features=1,
                                 train_split=None, verbose=0).initialize()
        net.module_.load_state_dict(REG.module_.state_dict())
        X, y = X_REG[:n], Y_REG[:n]
    net.module_.to(dtype)
    expl = InfluenceExplainer(net, solver=Exact(damping=0.1), curvature="gauss_newton")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = expl.fit(X, y).influences(X[:2], y[:2])
        assert out.shape == (min(n, 2), n) and np.all(np.isfinite(out))
        assert expl.self_influence().shape == (n,)
