"""The influence engine on its own: its scores, its copies and its pickles.

An engine fitted once must answer the same from a pickle or another device, without preparing
its solver again (counted in curvature products), and its score methods must agree with each
other and with the explicit formula.
"""

import pickle

import numpy as np
import pytest
import torch

from sk_fastif import InfluenceExplainer
from sk_fastif._curvature import CurvatureProducts
from sk_fastif._engine import InfluenceEngine
from sk_fastif.solvers import CG, Exact, LiSSA


@pytest.fixture(scope="module")
def fitted(digits, digits_mlp):
    Xtr, ytr, Xte, yte = digits
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.05), params=["output"],
                              curvature="gauss_newton", batch_size=64).fit(Xtr[:200], ytr[:200])
    return expl, Xte[:6], yte[:6]


def _count_products(monkeypatch):
    calls = {"n": 0}
    original = CurvatureProducts.product

    def counting(self, V, X, y, **kw):
        calls["n"] += V.shape[0]
        return original(self, V, X, y, **kw)

    monkeypatch.setattr(CurvatureProducts, "product", counting)
    return calls


def _factors(engine, expl, X, y):
    Xt, yt = expl.as_engine_input(X, y)
    return engine.factors(engine.gradients(Xt, yt)).solution


def test_explicit_formula(fitted):
    expl, X, y = fitted
    e = expl.engine_
    S = _factors(e, expl, X, y).double()
    G = e.gradients(e.X_train, e.y_train).double()
    Gte = e.gradients(*expl.as_engine_input(X, y)).double()
    # Exact: S solves (H + damping I) S = G_test, with H from the operator itself
    H = e.op.matvec(torch.eye(e.n_params, dtype=e.op.dtype)).double()
    np.testing.assert_allclose((S @ (H + 0.05 * torch.eye(e.n_params, dtype=H.dtype))).numpy(),
                               Gte.numpy(), rtol=1e-3, atol=1e-6 * float(Gte.abs().max()))
    np.testing.assert_allclose(e.score_rows(S.to(e.op.dtype)), (S @ G.T).numpy() / e.n_train,
                               rtol=1e-4, atol=1e-9)


def test_score_methods_agree(fitted):
    expl, X, y = fitted
    e = expl.engine_
    S = _factors(e, expl, X, y)
    dense = e.score_rows(S)
    tol = dict(rtol=1e-5, atol=1e-6 * np.abs(dense).max())  # float32 gradients, other chunks
    rows = np.array([3, 150, 7, 0, 199])
    np.testing.assert_allclose(e.score_rows(S, rows), dense[:, rows], **tol)
    rng = np.random.default_rng(0)
    C = np.sort(np.stack([rng.choice(e.n_train, 20, replace=False) for _ in range(len(S))]), 1)
    np.testing.assert_allclose(e.score_candidates(S, C), np.take_along_axis(dense, C, 1), **tol)
    # training points handed in as outside data score exactly as the training rows
    np.testing.assert_allclose(e.score_data(S, e.X_train[:30], e.y_train[:30]), dense[:, :30],
                               **tol)
    # self-influence: the diagonal of the training points' scores on themselves
    St = e.factors(e.gradients(e.X_train[:10], e.y_train[:10])).solution
    np.testing.assert_allclose(e.self_scores(np.arange(10)), np.diag(e.score_rows(St)[:, :10]),
                               rtol=1e-4)
    np.testing.assert_allclose(e.self_scores()[:10], e.self_scores(np.arange(10)), rtol=1e-6)


def test_fingerprint_depends_on_values_only(fitted, digits):
    expl, _, _ = fitted
    e = expl.engine_
    assert pickle.loads(pickle.dumps(e)).fingerprint == e.fingerprint
    assert e.to("cpu").fingerprint == e.fingerprint
    again = InfluenceExplainer(expl.net_, solver=CG(damping=0.05), params=["output"],
                               curvature="gauss_newton").fit(*digits[:2])
    other = InfluenceExplainer(expl.net_, solver=Exact(damping=0.05), params=["output"],
                               curvature="gauss_newton")
    Xtr, ytr = digits[:2]
    assert other.fit(Xtr[:200], ytr[:200]).engine_.fingerprint == e.fingerprint
    assert again.engine_.fingerprint != e.fingerprint  # more training data
    hess = InfluenceExplainer(expl.net_, solver=Exact(damping=0.05), params=["output"],
                              curvature="hessian")
    assert hess.fit(Xtr[:200], ytr[:200]).engine_.fingerprint != e.fingerprint


@pytest.mark.parametrize("solver", [Exact(damping=0.05),
                                    LiSSA(damping=0.05, depth=20, batch_size=16, random_state=0)],
                         ids=["Exact", "LiSSA-auto-scale"])
def test_pickled_engine_answers_the_same_without_preparing_again(fitted, solver, monkeypatch):
    expl, X, y = fitted
    engine = expl.engine_.with_solver(solver)
    S = _factors(engine, expl, X, y)
    expected = engine.score_rows(S)
    blob = pickle.dumps(engine)
    assert b"<lambda>" not in blob  # no closure travels
    loaded = pickle.loads(blob)
    assert loaded.is_prepared
    calls = _count_products(monkeypatch)
    res = loaded.factors(loaded.gradients(*expl.as_engine_input(X, y)))
    # only the solve's own products: no eigendecomposition, no power iteration
    assert calls["n"] == (0 if isinstance(solver, Exact) else 20 * len(X))
    assert res.n_hvp == calls["n"]
    np.testing.assert_array_equal(res.solution.numpy(), S.numpy())
    np.testing.assert_array_equal(loaded.score_rows(res.solution), expected)


def test_engine_pickles_small(fitted):
    expl, _, _ = fitted
    e = expl.engine_
    blob = len(pickle.dumps(e))
    data = e.X_train.numel() * e.X_train.element_size() + e.y_train.numel() * 8
    net = len(pickle.dumps(expl.net_))
    eig = 2 * e.n_params**2 * 8  # Exact's eigenvectors and whatever it keeps beside them
    assert blob < data + net + eig + 200_000


def _devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


@pytest.mark.parametrize("device", _devices())
def test_moved_engine_answers_the_same_without_preparing_again(fitted, device, monkeypatch):
    expl, X, y = fitted
    e = expl.engine_
    S = _factors(e, expl, X, y)
    expected = e.score_rows(S)
    moved = e.to(device)
    assert moved.device.type == device and moved.is_prepared
    assert moved.bridge.net is not e.bridge.net  # the user's net is never moved
    assert next(expl.net_.module_.parameters()).device.type == "cpu"
    calls = _count_products(monkeypatch)
    Xt, yt = expl.as_engine_input(X, y)
    Sm = moved.factors(moved.gradients(Xt.to(device), yt.to(device))).solution
    assert calls["n"] == 0  # Exact: no product after prepare
    np.testing.assert_allclose(moved.score_rows(Sm), expected, rtol=1e-5,
                               atol=1e-7 * np.abs(expected).max())


def test_with_solver_shares_everything_but_the_solver(fitted):
    expl, X, y = fitted
    e = expl.engine_
    cg = e.with_solver(CG(damping=0.05, tol=1e-10, max_iter=500))
    assert cg.bridge is e.bridge and cg.op is e.op and cg.solver is not e.solver
    np.testing.assert_allclose(cg.score_rows(_factors(cg, expl, X, y)),
                               e.score_rows(_factors(e, expl, X, y)), rtol=1e-3, atol=1e-9)


def test_engine_built_directly_from_a_net(digits, digits_mlp):
    Xtr, ytr, Xte, yte = digits
    X = torch.as_tensor(Xtr[:100])
    yt = torch.as_tensor(ytr[:100])
    engine = InfluenceEngine.from_net(digits_mlp, X, yt, params=["output"],
                                      curvature="gauss_newton", solver=Exact(damping=0.05))
    engine.prepare()
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.05), params=["output"],
                              curvature="gauss_newton").fit(Xtr[:100], ytr[:100])
    assert engine.fingerprint == expl.engine_.fingerprint
    G = engine.gradients(torch.as_tensor(Xte[:3]), torch.as_tensor(yte[:3]))
    np.testing.assert_allclose(engine.score_rows(engine.factors(G).solution),
                               expl.influences(Xte[:3], yte[:3]), rtol=1e-6)


def test_fit_shows_the_progress_of_the_curvature_build(digits, digits_mlp, capsys):
    Xtr, ytr, _, _ = digits
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.05), params=["output"],
                              verbose=1).fit(Xtr[:100], ytr[:100])
    err = capsys.readouterr().err
    assert "fit: curvature products" in err
    assert expl.engine_.is_prepared  # the counted operator had the same fingerprint


@pytest.mark.parametrize("forward", [True, False])
def test_scoring_products_equal_the_explicit_ones_either_way(fitted, forward, monkeypatch):
    # forward mode (few rows of S: no gradient block is formed) and the gradient block give
    # the explicit S @ G.T, and the path taken is the one the limit says
    from sk_fastif import _engine, _gradients

    expl, _, _ = fitted
    e = expl.engine_
    calls = {"n": 0}
    original = _gradients.forward_products

    def counting(self, S, X, y):
        calls["n"] += 1
        return original(self, S, X, y)

    monkeypatch.setattr(_gradients, "forward_products", counting)
    # the streaming pass: no gradients kept by earlier tests on this engine, none kept now
    monkeypatch.setattr(e, "_kept", _engine._KeptGradients())
    monkeypatch.setattr(_engine, "TRAIN_GRADIENT_BYTES", 0)
    m = 5 if forward else _gradients.FORWARD_MAX_VECTORS + 1
    S = torch.randn(m, e.n_params, generator=torch.Generator().manual_seed(0))
    G = e.gradients(e.X_train, e.y_train).double()
    expected = (S.double() @ G.T).numpy() / e.n_train
    got = e.score_rows(S)
    assert (calls["n"] > 0) == forward
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    rows = np.array([5, 0, 199, 42])
    np.testing.assert_allclose(e.score_rows(S, rows), expected[:, rows], rtol=1e-4,
                               atol=1e-6 * np.abs(expected).max())


def test_forward_scoring_falls_back_to_gradients_when_forward_mode_fails(fitted, monkeypatch):
    import copy

    from sk_fastif import _gradients

    expl, _, _ = fitted
    bridge = copy.copy(expl.engine_.bridge)  # disable_vmap changes the copy only
    S = torch.randn(4, bridge.n_params, generator=torch.Generator().manual_seed(1))
    X, y = expl.engine_.X_train[:150], expl.engine_.y_train[:150]
    expected = torch.cat([S @ G.T for _, G in _gradients.iter_gradients(bridge, X, y)], dim=1)
    seen = {"n": 0}

    def second_chunk_fails(self, S, X, y):
        seen["n"] += 1
        if seen["n"] == 2:
            raise RuntimeError("vmap: no batching rule for this operation")
        return original(self, S, X, y)

    original = _gradients.forward_products
    monkeypatch.setattr(_gradients, "forward_products", second_chunk_fails)
    parts = list(_gradients.iter_products(bridge, S, X, y))
    assert [sl.start for sl, _ in parts] == [0, 64, 128]  # every chunk once, in order
    # only forward mode is given up: per-sample gradients keep vmap
    assert bridge.use_vmap and not bridge.use_forward_scoring
    assert expl.engine_.bridge.use_forward_scoring
    got = torch.cat([P for _, P in parts], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_a_non_finite_training_gradient_is_named_by_forward_scoring(fitted):
    expl, _, _ = fitted
    e = expl.engine_
    X = e.X_train[:100].clone()
    X[70, 0] = float("nan")
    S = torch.randn(3, e.n_params, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match=r"indices \[70\]"):
        e.score_data(S, X, e.y_train[:100])


def test_training_gradients_are_kept_after_the_first_scoring_pass(digits, digits_mlp,
                                                                   monkeypatch):
    from sk_fastif import _engine

    Xtr, ytr, Xte, yte = digits
    Xtr, ytr = Xtr[:150], ytr[:150]
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.05)).fit(Xtr, ytr)
    engine = expl.engine_
    assert engine._kept.store is None  # nothing before the first query
    first = expl.influences(Xte[:3], yte[:3])
    store = engine._kept.store
    assert store.kind == "linear_factors"  # an MLP of Linear layers: kept as factors
    assert store.nbytes < 0.1 * len(ytr) * engine.n_params * 4
    G = store.gradients(np.arange(len(ytr)))
    # the kept rows are the per-sample loss gradients, against torch.func on the module
    module = digits_mlp.module_
    params = {k: v.detach() for k, v in module.named_parameters()}

    def loss(p, x, y):
        out = torch.func.functional_call(module, p, (x[None],))
        return torch.nn.functional.cross_entropy(out, y[None])

    per = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(
        params, torch.as_tensor(Xtr), torch.as_tensor(ytr))
    truth = torch.cat([per[k].reshape(len(ytr), -1) for k in params], dim=1)
    torch.testing.assert_close(G, truth, rtol=1e-4, atol=1e-6)
    # later queries score by one product with them, as the streaming pass would
    second = expl.influences(Xte[3:6], yte[3:6])
    sub = engine.score_rows(expl.solve(Xte[3:6], yte[3:6]).solution, rows=[4, 0, 149])
    monkeypatch.setattr(_engine, "TRAIN_GRADIENT_BYTES", 0)
    streamed = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.05)).fit(Xtr, ytr)
    ref = streamed.influences(Xte[:6], yte[:6])
    assert streamed.engine_._kept.store is None  # over the budget: never kept
    scale = np.abs(ref).max()
    np.testing.assert_allclose(np.vstack([first, second]), ref, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(sub, ref[3:6][:, [4, 0, 149]], rtol=1e-5, atol=1e-6 * scale)
    # a pickled engine (what a worker receives) carries no kept gradients
    assert pickle.loads(pickle.dumps(engine))._kept.store is None


# ============================================================ kept first-order graphs (Hessian)
def _explicit_hessian(bridge, X, y):
    from torch.func import hessian

    with bridge.modes():
        return hessian(lambda t: bridge.mean_loss(t, X, y))(bridge.theta.detach())


@pytest.fixture(scope="module")
def hessian_engine(digits, digits_mlp):
    Xtr, ytr, _, _ = digits
    # 7 rows per chunk: 9 chunks of the 60 training rows
    expl = InfluenceExplainer(digits_mlp, solver=Exact(damping=0.05), params=["output"],
                              curvature="hessian", batch_size=7).fit(Xtr[:60], ytr[:60])
    e = expl.engine_
    return e, _explicit_hessian(e.bridge, e.X_train, e.y_train)


def _graphs(op):
    return op.matvec.keywords["graphs"]._graphs()


def test_kept_graphs_give_the_explicit_hessian_products(hessian_engine):
    e, H = hessian_engine
    op = e.products.operator(e.X_train, e.y_train)
    V = torch.randn(5, e.n_params, generator=torch.Generator().manual_seed(0), dtype=op.dtype)
    first = op.matvec(V)  # builds and keeps each chunk's graph
    assert len(_graphs(op)) == 9
    second = op.matvec(V[:3])  # from the kept graphs, another width
    for got, rows in ((first, V), (second, V[:3])):
        np.testing.assert_allclose(got.numpy(), (rows @ H.T).numpy(), rtol=1e-4,
                                   atol=1e-6 * float(H.abs().max()))


def test_kept_graphs_stay_within_their_budget(hessian_engine, monkeypatch):
    from sk_fastif._curvature import _products

    e, H = hessian_engine
    op = e.products.operator(e.X_train, e.y_train)
    per_row = e.products._graph_bytes(e.X_train, e.y_train)
    assert 0 < per_row < float("inf")
    monkeypatch.setattr(_products, "GRAPH_CACHE_BYTES", int(per_row * 7 * 3.5))
    V = torch.eye(e.n_params, dtype=op.dtype)[:4]
    for _ in range(2):  # kept for the first 3 chunks, rebuilt for the others each time
        np.testing.assert_allclose(op.matvec(V).numpy(), H[:4].numpy(), rtol=1e-4,
                                   atol=1e-6 * float(H.abs().max()))
        assert sorted(_graphs(op)) == [0, 1, 2]


def test_kept_graphs_are_per_thread_and_never_pickled(hessian_engine):
    from concurrent.futures import ThreadPoolExecutor

    e, H = hessian_engine
    op = e.products.operator(e.X_train, e.y_train)
    V = torch.eye(e.n_params, dtype=op.dtype)[:6]
    op.matvec(V[:1])
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: (op.matvec(V[2 * i:2 * i + 2]), len(_graphs(op))),
                                range(3)))
    for i, (got, n_kept) in enumerate(results):
        assert n_kept == 9  # each thread built its own
        np.testing.assert_allclose(got.numpy(), H[2 * i:2 * i + 2].numpy(), rtol=1e-4,
                                   atol=1e-6 * float(H.abs().max()))
    copy = pickle.loads(pickle.dumps(op.matvec.keywords["graphs"]))
    assert copy._graphs() == {}
