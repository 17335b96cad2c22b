"""Reliability: bad input, numerical failure, nothing lost or changed, interruption, determinism.

Every bad input must give a ValueError, TypeError or NotFittedError whose message names the
argument; every numerical failure must be detected with a message naming the setting to change;
the user's net must come out of every call exactly as it went in, even when the call is
interrupted; and a fixed ``random_state`` must reproduce results whatever ``batch_size``.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetBinaryClassifier, NeuralNetRegressor

from sk_fastif import InfluenceExplainer, _engine, _gradients
from sk_fastif import _validation as validation
from sk_fastif._curvature import CurvatureProducts
from sk_fastif._net import NetBridge
from sk_fastif.datasets import make_classification_split
from sk_fastif.solvers import (
    CG,
    DivergenceError,
    Exact,
    IndefiniteCurvatureWarning,
    LiSSA,
    ScaleRestartWarning,
    _lissa,
)
from sk_fastif.toy import make_mlp_classifier, train_mlp_classifier

from .test_influence_truth import binary_closed_form, ridge_closed_form

# 6-8-4 tanh MLPs: four outputs, trained on three classes (label 3 is never seen)
SMALL_MLP = dict(n_out=4, n_hidden=8)


@pytest.fixture(scope="module")
def small():
    Xtr, Xte, ytr, yte = make_classification_split(120, 30, n_features=6, n_informative=4,
                                                   n_redundant=0, n_classes=3, random_state=0)
    net = train_mlp_classifier(Xtr, ytr, **SMALL_MLP, lr=0.05, max_epochs=20, batch_size=32,
                               random_state=0)
    return net, Xtr, ytr, Xte, yte


@pytest.fixture(scope="module")
def expl(small):
    net, Xtr, ytr, _, _ = small
    return InfluenceExplainer(net, solver=Exact(damping=0.05), curvature="gauss_newton").fit(
        Xtr, ytr)


def _with(X, value, row=0):
    X = np.array(X, dtype=np.float64)
    X[row, 1] = value
    return X


# ================================================================================ bad input
# Each case: (id, bad X, expected exception, message fragment naming the argument).
X_CASES = [
    ("nan", lambda X: _with(X, np.nan), ValueError, "X contains NaN"),
    ("inf", lambda X: _with(X, np.inf), ValueError, "X contains infinity"),
    ("overflows-float32", lambda X: _with(X, 1e39), ValueError, "X has values too large"),
    ("too-few-features", lambda X: X[:, :4], ValueError,
     "X has 4 features, but InfluenceExplainer is expecting 6 features as input"),
    ("too-many-features", lambda X: np.hstack([X, X]), ValueError, "X has 12 features"),
    ("1-D", lambda X: X[0], ValueError, "X must be 2-D"),
    ("scalar", lambda X: 1.5, ValueError, "X must be array-like"),
    ("empty", lambda X: X[:0], ValueError, "X is empty"),
    ("3-D", lambda X: X[None], ValueError, "X has samples of shape"),
    ("strings", lambda X: X.astype(str), ValueError, "Invalid X"),
    ("complex", lambda X: X + 1j, ValueError, "Invalid X"),
    ("ragged", lambda X: [[1.0] * 6, [1.0] * 5], ValueError, "X is ragged"),
    ("sparse", lambda X: sparse.csr_matrix(X), TypeError, "Sparse data was passed for X"),
    ("None", lambda X: None, ValueError, "X is required"),
]
X_METHODS = ["influences", "explain", "influence_factors", "self_influence", "score", "predict",
             "predict_proba"]


@pytest.mark.parametrize("method", X_METHODS)
@pytest.mark.parametrize("make_X, exc, match", [c[1:] for c in X_CASES],
                         ids=[c[0] for c in X_CASES])
def test_bad_X_gives_a_clear_error(small, expl, method, make_X, exc, match):
    _, _, _, Xte, _ = small
    X = make_X(Xte[:3])
    if X is None and method == "self_influence":  # valid: scores the training set
        assert expl.self_influence(X).shape == (expl.n_train_,)
        return
    with pytest.raises(exc, match=match):
        getattr(expl, method)(X)


Y_CASES = [
    ("wrong-length", [0, 1], ValueError, "y has 2 rows but X has 3"),
    ("strings", np.array(["a", "b", "c"]), TypeError, "y must be numeric.*LabelEncoder"),
    ("object", np.array([0, None, 1], dtype=object), TypeError, "y must be numeric"),
    ("nan", [0.0, np.nan, 1.0], ValueError, "y contains NaN"),
    ("inf", [0.0, np.inf, 1.0], ValueError, "y contains NaN or infinity"),
    ("outside-outputs", [0, 7, 1], ValueError, r"y holds labels outside 0\.\.3.*\[7\]"),
    ("negative", [0, -1, 1], ValueError, "y holds labels outside"),
    ("never-trained-on", [0, 3, 1], ValueError, r"labels the net was never trained on: \[3\]"),
    ("non-integer", [0.0, 0.5, 1.0], ValueError, "y must hold integer class indices"),
    ("2-D", [[0], [1], [2]], ValueError, "y must be 1-D class indices"),
    ("scalar", 1, ValueError, "y must be array-like.*scalar"),
    ("complex", [0j, 1j, 1 + 0j], ValueError, "Complex data not supported: y"),
]
Y_METHODS = ["influences", "explain", "influence_factors", "self_influence", "score"]


@pytest.mark.parametrize("method", Y_METHODS)
@pytest.mark.parametrize("y, exc, match", [c[1:] for c in Y_CASES], ids=[c[0] for c in Y_CASES])
def test_bad_y_gives_a_clear_error(small, expl, method, y, exc, match):
    _, _, _, Xte, _ = small
    with pytest.raises(exc, match=match):
        getattr(expl, method)(Xte[:3], y)


@pytest.mark.parametrize("method", Y_METHODS)
@pytest.mark.parametrize("case", ["regressor-y-none", "regressor-y-columns", "binary-y-not-0-1"])
def test_bad_y_for_regressors_and_binary_nets(ridge_net, binary_net, method, case):
    if case.startswith("regressor"):
        net, X, y = ridge_net
        e = InfluenceExplainer(net, solver=Exact()).fit(X, y)
        if case == "regressor-y-none":
            bad, match = None, "only defined for classifiers.*Pass the targets y"
        else:
            bad, match = np.hstack([y[:3], y[:3]]), "y has 2 columns but the net outputs 1"
    else:
        net, X, y = binary_net
        e = InfluenceExplainer(net, solver=Exact()).fit(X, y)
        bad, match = np.array([0.0, 2.0, 1.0]), "y must hold 0/1 labels"
    with pytest.raises(ValueError, match=match):
        getattr(e, method)(X[:3], bad)


def _frozen_bias_net(net):
    net = copy.deepcopy(net)
    net.module_.hidden.bias.requires_grad_(False)
    return net


def _unfitted():
    return make_mlp_classifier(6, **SMALL_MLP, max_epochs=1)


# (id, estimator builder, explainer kwargs, fit-data transform, exception, fragment)
FIT_CASES = [
    ("non-skorch-estimator", lambda n: StandardScaler(), {}, None, TypeError,
     "estimator must be a skorch net.*got StandardScaler"),
    ("estimator-none", lambda n: None, {}, None, TypeError, "estimator must be a skorch net"),
    ("pipeline-without-net", lambda n: make_pipeline(StandardScaler(), StandardScaler()), {},
     None, TypeError, "estimator must be a skorch net"),
    ("frozen-unfitted-net", lambda n: FrozenEstimator(_unfitted()), {}, None, NotFittedError,
     "FrozenEstimator wraps an unfitted net"),
    ("y-none", None, {}, lambda X, y: (X, None), ValueError,
     "requires y to be passed, but the target y is None"),
    ("X-none", None, {}, lambda X, y: (None, y), ValueError, "X is required"),
    ("length-mismatch", None, {}, lambda X, y: (X, y[:-1]), ValueError,
     "X and y have inconsistent numbers of samples: X has 120, y has 119"),
    ("length-mismatch-unfitted-net", lambda n: _unfitted(), {}, lambda X, y: (X, y[:-1]),
     ValueError, "inconsistent numbers of samples"),
    ("features-the-net-cannot-take", None, {}, lambda X, y: (X[:, :4], y), ValueError,
     r"The net cannot be applied to X of shape \(120, 4\)"),
    ("X-nan", None, {}, lambda X, y: (_with(X, np.nan), y), ValueError, "X contains NaN"),
    ("X-empty", None, {}, lambda X, y: (X[:0], y[:0]), ValueError, "X is empty"),
    ("X-1-D", None, {}, lambda X, y: (X[:, 0], y), ValueError, "X must be 2-D"),
    ("y-strings", None, {}, lambda X, y: (X, y.astype(str)), TypeError, "y must be numeric"),
    ("y-nan", None, {}, lambda X, y: (X, np.where(y == 0, np.nan, y)), ValueError,
     "y contains NaN"),
    ("y-outside-outputs", None, {}, lambda X, y: (X, y + 2), ValueError, "y holds labels outside"),
    ("y-scalar", None, {}, lambda X, y: (X, 3), ValueError, "y must be array-like"),
    ("params-unknown", None, {"params": ["nope"]}, None, ValueError,
     r"params=\['nope'\]: \['nope'\] name no trainable parameter.*Module names"),
    ("params-not-strings", None, {"params": [1]}, None, TypeError,
     "params must be None, a string or a list of strings"),
    ("params-frozen-parameter", _frozen_bias_net, {"params": ["hidden.bias"]}, None, ValueError,
     "name no trainable parameter"),
    ("params-empty", None, {"params": []}, None, ValueError, "params selects no trainable"),
    ("curvature", None, {"curvature": "fisher"}, None, ValueError, "'curvature' parameter"),
    ("batch-size-zero", None, {"batch_size": 0}, None, ValueError, "'batch_size' parameter"),
    ("batch-size-float", None, {"batch_size": 2.5}, None, ValueError, "'batch_size' parameter"),
    ("batch-size-bool", None, {"batch_size": True}, None, TypeError, "batch_size must be"),
    ("solver-string", None, {"solver": "lissa"}, None, ValueError, "'solver' parameter"),
    ("solver-class", None, {"solver": LiSSA}, None, ValueError, "'solver' parameter"),
    ("random-state", None, {"random_state": "seed"}, None, ValueError, "'random_state'"),
    ("verbose", None, {"verbose": -1}, None, ValueError, "'verbose' parameter"),
    ("lissa-depth-0", None, {"solver": LiSSA(depth=0)}, None, ValueError,
     r"solver=LiSSA\(depth=0\): `depth` must be >= 1, got 0"),
    ("lissa-scale-negative", None, {"solver": LiSSA(scale=-1.0)}, None, ValueError,
     "`scale` must be > 0"),
    ("lissa-scale-string", None, {"solver": LiSSA(scale="big")}, None, ValueError,
     "`scale` must be 'auto' or a positive number"),
    ("lissa-batch-size-above-n", None, {"solver": LiSSA(batch_size=500)}, None, ValueError,
     r"solver=LiSSA\(batch_size=500\): `batch_size`=500 exceeds"),
    ("lissa-n-repeats-0", None, {"solver": LiSSA(n_repeats=0)}, None, ValueError, "`n_repeats`"),
    ("lissa-tol-0", None, {"solver": LiSSA(tol=0.0)}, None, ValueError, "`tol` must be > 0"),
    ("lissa-damping-nan", None, {"solver": LiSSA(damping=np.nan)}, None, ValueError,
     "`damping` must be 'auto' or a finite real number"),
    ("cg-tol-negative", None, {"solver": CG(tol=-1)}, None, ValueError,
     r"solver=CG\(tol=-1\): `tol` must be > 0"),
    ("cg-max-iter-0", None, {"solver": CG(max_iter=0)}, None, ValueError, "`max_iter` must be"),
    ("exact-damping-negative", None, {"solver": Exact(damping=-1.0)}, None, ValueError,
     "`damping` must be >= 0"),
    ("nll-loss-on-logits", lambda n: make_mlp_classifier(  # NLLLoss expects probabilities
        6, **SMALL_MLP, criterion=torch.nn.NLLLoss).initialize(),
     {}, None, ValueError, "loss is not finite.*CrossEntropyLoss"),
]


@pytest.mark.parametrize("make_est, kwargs, data, exc, match", [c[1:] for c in FIT_CASES],
                         ids=[c[0] for c in FIT_CASES])
def test_bad_fit_input_gives_a_clear_error(small, make_est, kwargs, data, exc, match):
    net, Xtr, ytr, _, _ = small
    est = net if make_est is None else make_est(net)
    X, y = (Xtr, ytr) if data is None else data(Xtr, ytr)
    with pytest.raises(exc, match=match):
        InfluenceExplainer(est, **{"solver": Exact(), **kwargs}).fit(X, y)


def test_non_finite_loss_from_extreme_values_is_reported(ridge_net):
    net, X, y = ridge_net
    net32 = copy.deepcopy(net)
    net32.module_.float()
    with pytest.raises(ValueError, match=r"loss is not finite on 1 training sample\(s\).*\[0\]"):
        InfluenceExplainer(net32, solver=Exact()).fit(_with(X, 1e30), y)
    # past the first rows, where the check goes by the batch loss of each chunk
    with pytest.raises(ValueError, match=r"loss is not finite on 1 training sample\(s\).*\[37\]"):
        InfluenceExplainer(net32, solver=Exact()).fit(_with(X, 1e30, row=37), y)
    e = InfluenceExplainer(net32, solver=Exact()).fit(X, y)
    with pytest.raises(ValueError, match=r"loss gradient of 1 test point\(s\).*not finite"):
        e.influences(_with(X[:3], 1e25), y[:3])


@pytest.mark.parametrize("k", [0, -1, 121, True, 2.5, "3", None])
def test_bad_k(small, expl, k):
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, n_train_=120\]"):
        expl.explain(small[3][:2], k=k)


def test_numpy_integer_k_is_accepted(small, expl):
    assert expl.explain(small[3][:2], k=np.int64(3)).helpful_indices.shape == (2, 3)


def test_y_without_X_in_self_influence(small, expl):
    with pytest.raises(ValueError, match="y given without X"):
        expl.self_influence(y=small[2])


@pytest.mark.parametrize("method", X_METHODS + ["classes_"])
def test_every_method_before_fit_raises_not_fitted(small, method):
    e = InfluenceExplainer(small[0])
    with pytest.raises(NotFittedError, match="not fitted"):
        if method == "classes_":
            e.classes_  # noqa: B018
        else:
            getattr(e, method)(small[3][:2])


def test_unknown_solver_options(small):
    net, Xtr, ytr, _, _ = small
    with pytest.raises(TypeError, match="depht"):
        LiSSA(depht=3)
    with pytest.raises(ValueError, match="depht"):
        InfluenceExplainer(net, solver=LiSSA()).set_params(solver__depht=3)
    # a valid name with an invalid value is caught at fit, naming the solver and the option
    e = InfluenceExplainer(net, solver=LiSSA()).set_params(solver__depth=0)
    with pytest.raises(ValueError, match=r"solver=LiSSA\(depth=0\): `depth`"):
        e.fit(Xtr, ytr)


def test_wrong_features_for_a_pipeline_name_the_preprocessing(small):
    net, Xtr, ytr, _, _ = small
    pipe = make_pipeline(StandardScaler().fit(Xtr[:, :4]), net)
    with pytest.raises(ValueError, match=r"X \(after the pipeline's preprocessing\)"):
        InfluenceExplainer(pipe, solver=Exact()).fit(Xtr[:, :4], ytr)


# ----------------------------------------------------------------------- zero gradient points
@pytest.fixture(scope="module")
def ridge_zero(ridge_net):
    """The ridge net with targets equal to its own predictions on rows 0 and 2 (zero loss)."""
    net, X, y = ridge_net
    Xte = X[:4].copy()
    yte = y[:4].copy()
    pred = net.predict(Xte)
    yte[[0, 2]] = pred[[0, 2]]
    return net, X, y, Xte, yte


@pytest.mark.parametrize(
    "solver", [Exact(damping=1e-2), CG(damping=1e-2, tol=1e-10),
               LiSSA(damping=1e-2, batch_size=80, depth=1000, tol=1e-10, random_state=0)],
    ids=["exact", "cg", "lissa"])
def test_zero_gradient_points_get_exact_zeros_and_a_warning(ridge_zero, solver):
    net, X, y, Xte, yte = ridge_zero
    e = InfluenceExplainer(net, solver=solver, random_state=0).fit(X, y)
    truth = ridge_closed_form(net, X, y, Xte, yte, 1e-2)
    assert np.all(truth[[0, 2]] == 0)  # the closed form agrees: the loss gradient is exactly 0
    rtol = 1e-3 if isinstance(solver, LiSSA) else 1e-6
    with pytest.warns(UserWarning, match=r"2 point\(s\) have a loss gradient that is exactly "
                                         r"zero \(indices \[0, 2\]\).*influence scores are all 0"):
        scores = e.influences(Xte, yte)
    assert np.all(np.isfinite(scores)) and np.all(scores[[0, 2]] == 0)
    np.testing.assert_allclose(scores, truth, rtol=rtol, atol=rtol * np.abs(truth).max())
    with pytest.warns(UserWarning, match="influence factors are 0"):
        factors = e.influence_factors(Xte, yte)
    assert np.all(factors[[0, 2]] == 0) and np.all(np.isfinite(factors))
    with pytest.warns(UserWarning, match="self-influence is 0"):
        selfs = e.self_influence(Xte, yte)
    assert np.all(selfs[[0, 2]] == 0) and np.all(np.isfinite(selfs))
    with pytest.warns(UserWarning, match="exactly zero"):
        ex = e.explain(Xte, yte, k=3)
    assert np.all(ex.helpful_scores[[0, 2]] == 0) and np.all(ex.harmful_scores[[0, 2]] == 0)
    # score: zero-gradient points are left out, so it equals the score of the others alone
    with pytest.warns(UserWarning, match="left out of the score"):
        s = e.score(Xte, yte)
    assert np.isfinite(s)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert s == pytest.approx(e.score(Xte[[1, 3]], yte[[1, 3]]), rel=1e-6, abs=1e-12)
    with pytest.warns(UserWarning, match="exactly zero"):
        assert e.score(Xte[[0, 2]], yte[[0, 2]]) == 0.0


# ======================================================================== numerical failure
class Bilinear(torch.nn.Module):
    """out = b^T (A x): a two-layer linear net. Near zero weights its MSE loss is at a saddle."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 2, bias=False)
        self.b = torch.nn.Linear(2, 1, bias=False)

    def forward(self, X):
        return self.b(self.a(X))


@pytest.fixture(scope="module")
def saddle():
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3)
    y = (X @ np.array([1.0, -2.0, 0.5]))[:, None] + 0.1 * rng.randn(40, 1)
    torch.manual_seed(0)
    net = NeuralNetRegressor(Bilinear, max_epochs=1, train_split=None, verbose=0).initialize()
    net.module_.double()
    with torch.no_grad():
        for p in net.module_.parameters():
            p.mul_(1e-2)
    # independent truth: the Hessian of the mean loss by torch.autograd.functional.hessian
    A0, b0 = net.module_.a.weight.detach(), net.module_.b.weight.detach()
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)

    def loss(flat):
        A, b = flat[:6].view(2, 3), flat[6:].view(1, 2)
        return (((Xt @ A.T) @ b.T - yt) ** 2).mean()

    H = torch.autograd.functional.hessian(loss, torch.cat([A0.reshape(-1), b0.reshape(-1)]))
    eig = np.linalg.eigvalsh(H.numpy())
    assert eig[0] < -4 and eig[-1] > 4  # strongly indefinite
    return net, X, y, eig


def test_indefinite_curvature_exact_warns_with_the_setting_to_change(saddle):
    net, X, y, eig = saddle
    with pytest.warns(IndefiniteCurvatureWarning, match="damping") as rec:
        e = InfluenceExplainer(net, solver=Exact(damping=1e-3), curvature="hessian").fit(X, y)
    msg = str(rec[0].message)
    assert f"use damping > {-eig[0]:.4g}" in msg and 'curvature="gauss_newton"' in msg
    np.testing.assert_allclose(e.solver_.eigenvalues_, eig, atol=1e-8)


def test_indefinite_curvature_cg_raises_with_the_setting_to_change(saddle):
    net, X, y, _ = saddle
    e = InfluenceExplainer(net, solver=CG(damping=1e-3), curvature="hessian").fit(X, y)
    with pytest.raises(DivergenceError, match=r"not positive definite \(damping=0.001\). Raise "
                                              r"`damping`.*gauss_newton"):
        e.influences(X[:3], y[:3])


def test_indefinite_curvature_lissa_raises_after_restarts(saddle):
    net, X, y, _ = saddle
    e = InfluenceExplainer(net, solver=LiSSA(damping=1e-3, batch_size=40, depth=500),
                           curvature="hessian", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndefiniteCurvatureWarning)  # depends on the start
        e.fit(X, y)
    with pytest.warns(ScaleRestartWarning, match="restarting"):
        with pytest.raises(DivergenceError, match="after 3 restarts.*raise `damping`.*"
                                                  "gauss_newton"):
            e.influences(X[:3], y[:3])
    assert len(e.solver_.restarts_) == 3


def _bilinear_ggn_closed_form(net, X, y, Xte, yte, damping):
    """(1/n) g_te^T (G + damping I)^-1 g_tr with the Gauss-Newton matrix G, in numpy."""
    A = net.module_.a.weight.detach().numpy()
    b = net.module_.b.weight.detach().numpy().ravel()

    def jac(X):  # d out / d (A, b), one row per sample
        return np.hstack([np.einsum("i,nj->nij", b, X).reshape(len(X), -1), X @ A.T])

    J, Jte = jac(X), jac(Xte)
    r, rte = (X @ A.T @ b) - y.ravel(), (Xte @ A.T @ b) - yte.ravel()
    G = 2 * J.T @ J / len(X)
    return (2 * rte[:, None] * Jte) @ np.linalg.solve(G + damping * np.eye(8),
                                                       (2 * r[:, None] * J).T) / len(X)


@pytest.mark.parametrize("solver", [CG(damping=1e-2, tol=1e-10, max_iter=200),
                                    LiSSA(damping=1e-2, batch_size=40, depth=1000, tol=1e-10)],
                         ids=["cg", "lissa"])
def test_the_suggested_remedy_gauss_newton_works(saddle, solver):
    net, X, y, _ = saddle
    truth = _bilinear_ggn_closed_form(net, X, y, X[:4], y[:4], 1e-2)
    e = InfluenceExplainer(net, solver=solver, curvature="gauss_newton", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no restart, no warning
        scores = e.fit(X, y).influences(X[:4], y[:4])
    np.testing.assert_allclose(scores, truth, rtol=1e-3, atol=1e-3 * np.abs(truth).max())


def _ridge_top_eigenvalue(X):
    A = np.hstack([X, np.ones((len(X), 1))])
    return np.linalg.eigvalsh(2 * A.T @ A / len(X))[-1]


def test_lissa_divergence_names_scale(ridge_net):
    net, X, y = ridge_net
    scale = _ridge_top_eigenvalue(X) / 4  # every step expands the top eigen-direction
    e = InfluenceExplainer(net, solver=LiSSA(scale=scale, batch_size=80, depth=500)).fit(X, y)
    with pytest.raises(DivergenceError, match=f"with scale={scale:.4g}.*Raise `scale`"):
        e.influences(X[:3], y[:3])


def test_cg_non_convergence_is_reported(ridge_net):
    net, X, y = ridge_net
    e = InfluenceExplainer(net, solver=CG(damping=1e-2, max_iter=1, tol=1e-12)).fit(X, y)
    with pytest.warns(ConvergenceWarning, match=r"did not converge in max_iter=1.*Raise "
                                                r"`max_iter` or `damping`"):
        scores = e.influences(X[:3], y[:3])
    assert np.all(np.isfinite(scores))
    with pytest.warns(ConvergenceWarning):
        assert e.solve(X[:3], y[:3]).converged is False
    with pytest.warns(FutureWarning, match="last_solve_ is deprecated"):
        assert e.last_solve_.converged is False  # the deprecated attribute, for one release


def test_auto_scale_recovers_by_restarting_end_to_end(ridge_net, monkeypatch):
    # Simulate an underestimated top eigenvalue: the automatic scale starts at 0.3 * (top +
    # damping), below the (top + damping) / 2 that LiSSA needs, so the first run diverges.
    net, X, y = ridge_net
    monkeypatch.setattr(_lissa, "_SAFETY", 0.3)
    kw = dict(damping=1e-2, batch_size=80, depth=1000, tol=1e-10)
    e = InfluenceExplainer(net, solver=LiSSA(**kw), random_state=0).fit(X, y)
    first = e.solver_.scale_
    assert first < (_ridge_top_eigenvalue(X) + 1e-2) / 2
    fixed = InfluenceExplainer(net, solver=LiSSA(**kw, scale=first)).fit(X, y)
    with pytest.raises(DivergenceError, match="Raise `scale`"):
        fixed.influences(X[:5], y[:5])
    with pytest.warns(ScaleRestartWarning, match=f"scale={first:.4g}; restarting with scale="
                                                 f"{2 * first:.4g}"):
        scores = e.influences(X[:5], y[:5])
    assert len(e.solver_.restarts_) == 1 and e.solver_.scale_ == 2 * first
    truth = ridge_closed_form(net, X, y, X[:5], y[:5], 1e-2)
    np.testing.assert_allclose(scores, truth, rtol=1e-3, atol=1e-3 * np.abs(truth).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "solver", [Exact(damping=1e-2), CG(damping=1e-2, tol=1e-8, max_iter=200),
               LiSSA(damping=1e-2, batch_size=80, depth=500, random_state=0)],
    ids=["exact", "cg", "lissa"])
def test_float32_and_float64_nets_match_a_float64_closed_form(ridge_net, dtype, solver):
    net, X, y = ridge_net
    if isinstance(solver, LiSSA):  # full batch: stop once the relative change is at rounding
        solver = solver.set_params(tol=1e-6 if dtype == torch.float32 else 1e-10)
    net = copy.deepcopy(net)
    net.module_.to(dtype)
    # the truth uses the same (possibly rounded) weights, in float64
    truth = ridge_closed_form(net, X, y, X[:6], y[:6], 1e-2)
    e = InfluenceExplainer(net, solver=solver).fit(X, y)  # float64 data into either net
    scores = e.influences(X[:6], y[:6])
    assert scores.dtype == np.float64
    assert e.influence_factors(X[:6], y[:6]).dtype == (np.float32 if dtype == torch.float32
                                                       else np.float64)
    if dtype == torch.float32:
        rtol = 5e-3 if isinstance(solver, LiSSA) else 1e-4
    else:
        rtol = 1e-3 if isinstance(solver, LiSSA) else 1e-7
    np.testing.assert_allclose(scores, truth, rtol=rtol, atol=rtol * np.abs(truth).max())
    np.testing.assert_allclose(e.predict(X[:6]), net.module_(torch.as_tensor(X[:6], dtype=dtype))
                               .detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_binary_net_in_both_dtypes(binary_net, dtype):
    net0, X, y = binary_net
    net = NeuralNetBinaryClassifier(type(net0.module_), train_split=None, verbose=0).initialize()
    net.module_.load_state_dict(net0.module_.state_dict())
    net.module_.to(dtype)
    truth = binary_closed_form(net, X, y, X[:8], y[:8], 1e-3)
    scores = InfluenceExplainer(net, solver=Exact(damping=1e-3)).fit(X, y).influences(X[:8], y[:8])
    rtol = 1e-3 if dtype == torch.float32 else 1e-7
    np.testing.assert_allclose(scores, truth, rtol=rtol, atol=rtol * np.abs(truth).max())


# ===================================================================== nothing lost or changed
def _prepare_users_net(net, train_mode):
    net = copy.deepcopy(net)
    net.module_.train(train_mode)
    net.criterion_.train(train_mode)
    net.module_.hidden.bias.requires_grad_(False)  # a frozen parameter
    net.module_.output.weight.grad = torch.full_like(net.module_.output.weight, 0.25)
    return net


def _snapshot(net):
    return {
        "state": {k: v.clone() for k, v in net.module_.state_dict().items()},
        "optimizer": repr(copy.deepcopy(net.optimizer_.state_dict())),
        "modes": [m.training for m in net.module_.modules()]
        + [m.training for m in net.criterion_.modules()],
        "grads": {n: None if p.grad is None else p.grad.clone()
                  for n, p in net.module_.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in net.module_.named_parameters()},
        "history": repr(net.history.to_list()),
        "grad_enabled": torch.is_grad_enabled(),
        "torch_rng": torch.random.get_rng_state().clone(),
        "numpy_rng": repr(np.random.get_state()),  # noqa: NPY002
    }


def _assert_unchanged(net, snap, when, *, torch_rng=True):
    now = _snapshot(net)
    for k, v in snap["state"].items():
        assert torch.equal(now["state"][k], v), (when, k)
    for name, g in snap["grads"].items():
        assert (now["grads"][name] is None) == (g is None), (when, name)
        assert g is None or torch.equal(now["grads"][name], g), (when, name)
    if torch_rng:
        assert torch.equal(now["torch_rng"], snap["torch_rng"]), when
    for key in ("optimizer", "modes", "requires_grad", "history", "grad_enabled", "numpy_rng"):
        assert now[key] == snap[key], (when, key)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # CG max_iter=3
@pytest.mark.parametrize("train_mode", [True, False], ids=["train-mode", "eval-mode"])
@pytest.mark.parametrize(
    "solver", [Exact(damping=0.05), CG(damping=0.05, max_iter=3),
               LiSSA(damping=0.05, scale=5.0, depth=5, batch_size=16)],
    ids=["exact", "cg", "lissa"])
def test_users_net_is_untouched_by_every_method(small, train_mode, solver):
    net0, Xtr, ytr, Xte, yte = small
    net = _prepare_users_net(net0, train_mode)
    snap = _snapshot(net)
    e = InfluenceExplainer(net, solver=solver, curvature="gauss_newton", batch_size=64,
                           random_state=0)
    calls = {
        "fit": lambda: e.fit(Xtr, ytr),
        "explain": lambda: e.explain(Xte[:3], k=2),
        "explain-y": lambda: e.explain(Xte[:3], yte[:3], k=2),
        "influences": lambda: e.influences(Xte[:3], yte[:3]),
        "influence_factors": lambda: e.influence_factors(Xte[:3]),
        "self_influence": lambda: e.self_influence(),
        "self_influence-X": lambda: e.self_influence(Xte[:3], yte[:3]),
        "score": lambda: e.score(Xte[:3], yte[:3]),
        "predict": lambda: e.predict(Xte[:3]),
        "predict_proba": lambda: e.predict_proba(Xte[:3]),
        "classes_": lambda: e.classes_,
    }
    for when, call in calls.items():
        call()
        # skorch's predict draws a DataLoader seed from torch's global generator, as
        # net.predict does; every influence computation leaves the generator alone
        _assert_unchanged(net, snap, when, torch_rng=not when.startswith("predict"))
        snap["torch_rng"] = torch.random.get_rng_state().clone()
    assert e.param_names_ == ["hidden.weight", "output.weight", "output.bias"]


# ============================================================================= interruption
def _interrupt_on_call(monkeypatch, owner, name, n):
    """Make ``owner.name`` raise KeyboardInterrupt on its n-th call."""
    original = getattr(owner, name)
    count = {"calls": 0}

    def wrapper(*args, **kwargs):
        count["calls"] += 1
        if count["calls"] == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return count


def _modes(net):
    return [m.training for m in net.module_.modules()] + [net.criterion_.training]


@pytest.mark.parametrize(
    "method, owner, name, n, solver, batch_size",
    [
        ("influences", NetBridge, "per_sample", 4, Exact(damping=0.05), 16),  # gradient chunk
        ("influences", validation, "check_finite_products", 3, Exact(damping=0.05), 16),
        ("influences", _gradients, "forward_products", 2, Exact(damping=0.05), 16),
        ("influences", CurvatureProducts, "_batch_ggn", 5, CG(damping=0.05, max_iter=6), 60),
        ("influences", CurvatureProducts, "_batch_ggn", 7,
         LiSSA(damping=0.05, scale=5.0, depth=10, batch_size=16), 60),
        # the solve of the second chunk, while the chunks' generator is suspended
        ("self_influence", CurvatureProducts, "_batch_ggn", 9, CG(damping=0.05, max_iter=3), 60),
        ("explain", NetBridge, "per_sample", 3, Exact(damping=0.05), 16),
        ("influence_factors", CurvatureProducts, "_batch_ggn", 2, CG(damping=0.05, max_iter=6), 60),
        ("score", CurvatureProducts, "_batch_ggn", 4, CG(damping=0.05, max_iter=3), 60),
    ],
    ids=["gradient-chunk", "between-chunks", "forward-mode-chunk", "cg-curvature-product",
         "lissa-curvature-product", "self-influence-solve", "explain", "influence-factors",
         "score"],
)
def test_interrupted_call_leaves_explainer_usable(small, monkeypatch, method, owner, name, n,
                                                  solver, batch_size):
    with pytest.MonkeyPatch.context() as limit:
        # the streaming passes (kept training gradients are tested below)
        limit.setattr(_engine, "TRAIN_GRADIENT_BYTES", 0)
        if name in ("per_sample", "check_finite_products"):
            # interrupt the scoring pass over gradient blocks (few test points are scored by
            # forward mode: the "forward-mode-chunk" case)
            limit.setattr(_gradients, "FORWARD_MAX_VECTORS", 0)
        _interrupt_and_rerun(small, monkeypatch, method, owner, name, n, solver, batch_size)


def _interrupt_and_rerun(small, monkeypatch, method, owner, name, n, solver, batch_size):
    net0, Xtr, ytr, Xte, yte = small
    net = _prepare_users_net(net0, True)
    snap = _snapshot(net)
    e = InfluenceExplainer(net, solver=solver, curvature="gauss_newton", batch_size=batch_size,
                           random_state=0).fit(Xtr, ytr)

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if method == "self_influence":
                return e.self_influence()
            if method == "explain":
                ex = e.explain(Xte[:5], yte[:5], k=3)
                return np.hstack([ex.helpful_scores, ex.harmful_scores])
            return getattr(e, method)(Xte[:5], yte[:5])

    before = call()
    count = _interrupt_on_call(monkeypatch, owner, name, n)
    with pytest.raises(KeyboardInterrupt) as info:
        call()
    assert count["calls"] == n
    # the traceback is still alive (as in an interactive session): the net is already restored
    assert info.traceback is not None
    _assert_unchanged(net, snap, "after interrupt")
    monkeypatch.undo()
    np.testing.assert_array_equal(call(), before)
    _assert_unchanged(net, snap, "after rerun")


@pytest.mark.parametrize("form", ["linear_factors", "dense"])
def test_interrupted_pass_keeps_no_training_gradients(small, monkeypatch, form):
    from sk_fastif import _store

    net0, Xtr, ytr, Xte, yte = small
    net = _prepare_users_net(net0, True)
    snap = _snapshot(net)
    if form == "dense":  # as for a net with other layers than Linear ones
        def not_linear(bridge):
            raise ValueError("not Linear")
        monkeypatch.setattr(_store, "linear_blocks", not_linear)
    e = InfluenceExplainer(net, solver=Exact(damping=0.05), curvature="gauss_newton",
                           batch_size=16).fit(Xtr, ytr)
    reference = InfluenceExplainer(net, solver=Exact(damping=0.05), curvature="gauss_newton",
                                   batch_size=16).fit(Xtr, ytr).influences(Xte[:5], yte[:5])
    # interrupted in the first scoring pass, which would keep the training gradients (the
    # factors' pass runs the net once per chunk; the dense pass vmaps per-sample gradients)
    with monkeypatch.context() as m:
        _interrupt_on_call(m, NetBridge, "batch_output" if form != "dense" else "per_sample", 3)
        with pytest.raises(KeyboardInterrupt):
            e.influences(Xte[:5], yte[:5])
    assert e.engine_._kept.store is None  # a partial block is never kept
    _assert_unchanged(net, snap, "after interrupt")
    assert not any(mod._forward_hooks for mod in net.module_.modules())  # no hook left
    np.testing.assert_array_equal(e.influences(Xte[:5], yte[:5]), reference)
    assert e.engine_._kept.store.kind == form


def test_interrupted_fit_leaves_a_consistent_explainer(small, monkeypatch):
    net0, Xtr, ytr, Xte, yte = small
    net = _prepare_users_net(net0, True)
    snap = _snapshot(net)
    e = InfluenceExplainer(net, solver=Exact(damping=0.05), curvature="gauss_newton",
                           batch_size=16)
    reference = e.fit(Xtr, ytr).influences(Xte[:4], yte[:4])
    # refit on other data, interrupted while Exact builds the curvature matrix
    _interrupt_on_call(monkeypatch, CurvatureProducts, "_batch_ggn", 3)
    with pytest.raises(KeyboardInterrupt):
        e.fit(Xtr[:60], ytr[:60])
    _assert_unchanged(net, snap, "after interrupted fit")
    monkeypatch.undo()
    # nothing of the first fit survives, and the interrupted one marks nothing as fitted
    with pytest.raises(NotFittedError):
        e.influences(Xte[:4], yte[:4])
    assert not hasattr(e, "n_train_") or e.n_train_ == 60
    np.testing.assert_allclose(e.fit(Xtr, ytr).influences(Xte[:4], yte[:4]), reference)


def test_interrupted_first_fit_is_not_fitted(small, monkeypatch):
    net, Xtr, ytr, Xte, _ = small
    e = InfluenceExplainer(net, solver=Exact(damping=0.05))
    _interrupt_on_call(monkeypatch, NetBridge, "check_batch_loss_is_mean", 1)  # before the solver
    with pytest.raises(KeyboardInterrupt):
        e.fit(Xtr, ytr)
    with pytest.raises(NotFittedError):
        e.influences(Xte[:2])


# ============================================================================== determinism
def _lissa_expl(net, scale=5.0, **kw):
    # a numeric scale keeps these tests cheap; test_same_random_state_... covers "auto"
    return InfluenceExplainer(net, solver=LiSSA(damping=0.05, scale=scale, depth=10,
                                                batch_size=16),
                              curvature="gauss_newton", **kw)


def test_same_random_state_gives_identical_results(small, monkeypatch):
    net, Xtr, ytr, Xte, yte = small
    monkeypatch.setattr(_lissa, "_POWER_ITER", 8)  # a cheaper scale="auto"; same seeding
    a = _lissa_expl(net, "auto", random_state=3).fit(Xtr, ytr)
    b = _lissa_expl(net, "auto", random_state=3).fit(Xtr, ytr)
    assert a.solver_.scale_ == b.solver_.scale_  # the seeded power iteration
    np.testing.assert_array_equal(a.influences(Xte[:6], yte[:6]), b.influences(Xte[:6], yte[:6]))
    c = _lissa_expl(net, random_state=3).fit(Xtr, ytr).influences(Xte[:6], yte[:6])
    d = _lissa_expl(net, random_state=4).fit(Xtr, ytr).influences(Xte[:6], yte[:6])
    assert not np.allclose(c, d, rtol=1e-3)  # the seed matters: the test can fail


@pytest.mark.parametrize("random_state", [3, np.random.RandomState(3)], ids=["int", "instance"])
def test_results_do_not_depend_on_batch_size(small, random_state):
    net, Xtr, ytr, Xte, yte = small
    results = []
    for batch_size in (8, 32, 1000):
        rs = copy.deepcopy(random_state)  # the same starting state for each
        e = _lissa_expl(net, random_state=rs, batch_size=batch_size).fit(Xtr, ytr)
        results.append(e.influences(Xte[:10], yte[:10]))
        # a fitted explainer repeats itself exactly
        np.testing.assert_array_equal(e.influences(Xte[:10], yte[:10]), results[-1])
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-4, atol=1e-6 * np.abs(
            results[0]).max())


def test_a_points_result_does_not_depend_on_the_others_or_their_order(small):
    # what parallel dispatch of test-point blocks to workers needs: seeds never depend on the
    # block, its size or when it is solved
    net, Xtr, ytr, Xte, yte = small
    whole = _lissa_expl(net, random_state=5, batch_size=4).fit(Xtr, ytr).influences(Xte[:6],
                                                                                     yte[:6])
    e = _lissa_expl(net, random_state=5, batch_size=4).fit(Xtr, ytr)
    late = e.influences(Xte[3:6], yte[3:6])
    early = e.influences(Xte[:3], yte[:3])
    np.testing.assert_allclose(np.vstack([early, late]), whole, rtol=1e-5,
                               atol=1e-7 * np.abs(whole).max())


def test_default_random_state_is_drawn_once_at_fit(small):
    net, Xtr, ytr, Xte, yte = small
    e = _lissa_expl(net).fit(Xtr, ytr)  # random_state=None: one seed from numpy's global RNG
    assert isinstance(e.solver_.random_state, int)
    np.testing.assert_array_equal(e.influences(Xte[:4], yte[:4]), e.influences(Xte[:4], yte[:4]))
    np.random.seed(11)  # noqa: NPY002 - the global generator is what None means
    a = _lissa_expl(net).fit(Xtr, ytr).influences(Xte[:4], yte[:4])
    np.random.seed(11)  # noqa: NPY002 - the global generator is what None means
    b = _lissa_expl(net, batch_size=4).fit(Xtr, ytr).influences(Xte[:4], yte[:4])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(a).max())
    c = _lissa_expl(net).fit(Xtr, ytr).influences(Xte[:4], yte[:4])  # the global RNG moved on
    assert not np.allclose(a, c, rtol=1e-3)
    # the user's solver object is left alone (its clone gets the seed)
    solver = LiSSA(depth=5)
    InfluenceExplainer(net, solver=solver).fit(Xtr, ytr)
    assert solver.random_state is None


# ============================================================== the candidates (pruned) path
@pytest.fixture(scope="module")
def pruned(small):
    from sk_fastif.neighbors import NNDescentCandidates

    net, Xtr, ytr, _, _ = small
    return InfluenceExplainer(net, solver=Exact(damping=0.05), curvature="gauss_newton",
                              candidates=NNDescentCandidates(n_neighbors=20, random_state=0),
                              batch_size=16).fit(Xtr, ytr)


@pytest.mark.parametrize("make_X, exc, match", [c[1:] for c in X_CASES if c[0] != "None"],
                         ids=[c[0] for c in X_CASES if c[0] != "None"])
def test_bad_X_to_a_pruned_explainer_gives_a_clear_error(small, pruned, make_X, exc, match):
    _, _, _, Xte, yte = small
    with pytest.raises(exc, match=match):
        pruned.explain(make_X(Xte[:3]), k=3)
    with pytest.raises(exc, match=match):
        pruned.influences(make_X(Xte[:3]))


def test_non_finite_candidate_gradients_are_reported_with_their_training_index(small, pruned,
                                                                            monkeypatch):
    # a training point whose gradient overflows must be named (by its index in the training
    # set, not its position among the candidates), never scored as NaN
    _, _, _, Xte, yte = small
    Xq, _ = pruned.as_engine_input(Xte[:1], yte[:1])
    shortlist = np.sort(pruned.candidates_.kneighbors(pruned.net_, Xq)[0][0])
    bad = int(shortlist[7])
    original = _gradients.iter_gradients

    def poisoned(self, X, y):
        for sl, G in original(self, X, y):
            G = G.clone()
            hit = torch.nonzero((X[sl] == pruned.engine_.X_train[bad]).all(dim=1)).flatten()
            G[hit] = float("nan")
            yield sl, G

    monkeypatch.setattr(_gradients, "iter_gradients", poisoned)
    with pytest.raises(ValueError, match=rf"training point\(s\) \(indices \[{bad}\]\) is not "
                                         r"finite"):
        pruned.influences(Xte[:1], yte[:1])


def test_interrupted_pruned_explain_leaves_explainer_usable(small, pruned, monkeypatch):
    net, _, _, Xte, yte = small
    snap = _snapshot(net)
    before = pruned.explain(Xte[:5], yte[:5], k=3)
    # interrupted in the middle of the candidates' gradient pass
    _interrupt_on_call(monkeypatch, NetBridge, "per_sample", 2)
    with pytest.raises(KeyboardInterrupt):
        pruned.explain(Xte[:5], yte[:5], k=3)
    _assert_unchanged(net, snap, "after interrupt")
    monkeypatch.undo()
    after = pruned.explain(Xte[:5], yte[:5], k=3)
    np.testing.assert_array_equal(after.helpful_indices, before.helpful_indices)
    np.testing.assert_array_equal(after.helpful_scores, before.helpful_scores)


def test_pruned_results_do_not_depend_on_batch_size(small):
    from sk_fastif.neighbors import NNDescentCandidates

    net, Xtr, ytr, Xte, yte = small
    results = []
    for batch_size in (4, 16, 1000):
        e = InfluenceExplainer(net, solver=LiSSA(damping=0.05, scale=5.0, depth=10,
                                                 batch_size=16),
                               curvature="gauss_newton", batch_size=batch_size, random_state=2,
                               candidates=NNDescentCandidates(n_neighbors=20)).fit(Xtr, ytr)
        results.append(e.influences(Xte[:6], yte[:6]))
    for other in results[1:]:
        np.testing.assert_array_equal(other.indices, results[0].indices)  # same shortlists
        np.testing.assert_allclose(other.data, results[0].data, rtol=1e-4,
                                   atol=1e-6 * np.abs(results[0].data).max())
