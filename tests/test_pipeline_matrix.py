"""Every selector x every scoring path x ndarray and DataFrame input, through the one pipeline.

Each path is checked against the exhaustive (dense) explainer of the same net, solver and data:
a shortlisted score must equal the dense score of the same (query, point) pair, the
shortlists of a pool must hold pool rows, and a DataFrame must give what its ndarray gives.
"""

import matplotlib
import numpy as np
import pytest
from scipy import sparse

from sk_fastif import InfluenceExplainer
from sk_fastif.metrics import candidate_recall, step_test
from sk_fastif.neighbors import ExactCandidates, GradientSketchCandidates, NNDescentCandidates
from sk_fastif.solvers import Exact

matplotlib.use("Agg")
pd = pytest.importorskip("pandas")

K = 20  # shortlist size
SELECTORS = {
    "none": None,
    "exact": ExactCandidates(K),
    "nndescent": NNDescentCandidates(K, random_state=0),
    "sketch": GradientSketchCandidates(K, n_components=32, projection="orthogonal",
                                       random_state=0),
}
KINDS = ("ndarray", "dataframe")
CELLS = [(s, k) for s in SELECTORS for k in KINDS]
IDS = [f"{s}-{k}" for s, k in CELLS]


def _as(kind, X):
    if kind == "ndarray":
        return X
    return pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])


@pytest.fixture(scope="module")
def problem(digits, digits_mlp):
    Xtr, ytr, Xte, yte = digits
    return digits_mlp, Xtr, ytr, Xte[:6], yte[:6], Xte[6:40], yte[6:40]


_FITTED: dict = {}


def _explainer(problem, selector: str, kind: str) -> InfluenceExplainer:
    """The fitted explainer of a cell (fitted once per module)."""
    if (selector, kind) not in _FITTED:
        net, Xtr, ytr, *_ = problem
        sel = SELECTORS[selector]
        expl = InfluenceExplainer(net, solver=Exact(damping=1e-2), params=["output"],
                                  candidates=None if sel is None else sel, random_state=0)
        _FITTED[selector, kind] = expl.fit(_as(kind, Xtr), ytr)
    return _FITTED[selector, kind]


@pytest.fixture(scope="module")
def dense(problem):
    """The exhaustive explainer and its scores: the reference of every cell."""
    e = _explainer(problem, "none", "ndarray")
    _, _, _, Xq, yq, Xp, yp = problem
    return {"explainer": e, "train": e.influences(Xq, yq),
            "pool": e.pool_influences(Xq, yq, X_pool=Xp, y_pool=yp)}


def _close(actual, desired, reference):
    """Equal in float32: the same pairs, scored by forward mode or by gradient blocks."""
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-5 * np.abs(reference).max())


def _check_against_dense(scores, reference, n_cols, selector):
    if selector == "none":
        assert isinstance(scores, np.ndarray) and scores.shape == reference.shape
        _close(scores, reference, reference)
        return
    assert sparse.issparse(scores) and scores.shape == (reference.shape[0], n_cols)
    csr = scores.tocsr()
    for i in range(csr.shape[0]):
        cols = csr.indices[csr.indptr[i]:csr.indptr[i + 1]]
        assert len(cols) == K and len(np.unique(cols)) == K
        _close(csr.data[csr.indptr[i]:csr.indptr[i + 1]], reference[i, cols], reference)


@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_influences(problem, dense, selector, kind):
    e = _explainer(problem, selector, kind)
    _, Xtr, _, Xq, yq, _, _ = problem
    _check_against_dense(e.influences(_as(kind, Xq), yq), dense["train"], len(Xtr), selector)


@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_explain(problem, dense, selector, kind):
    e = _explainer(problem, selector, kind)
    _, _, _, Xq, yq, _, _ = problem
    ex = e.explain(_as(kind, Xq), yq, k=5)
    ref = dense["train"]
    rows = np.arange(len(yq))[:, None]
    _close(ex.helpful_scores, ref[rows, ex.helpful_indices], ref)
    _close(ex.harmful_scores, ref[rows, ex.harmful_indices], ref)
    assert np.all(np.diff(ex.helpful_scores, axis=1) <= 0)
    if selector == "none":  # the true top 5
        _close(ex.helpful_scores, -np.sort(-ref, axis=1)[:, :5], ref)


@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_influence_factors_and_solve(problem, dense, selector, kind):
    e = _explainer(problem, selector, kind)
    _, _, _, Xq, yq, _, _ = problem
    want = dense["explainer"].influence_factors(Xq, yq)
    np.testing.assert_allclose(e.influence_factors(_as(kind, Xq), yq), want, rtol=1e-5,
                               atol=1e-9)
    result = e.solve(_as(kind, Xq), yq)
    np.testing.assert_allclose(result.solution.numpy(), want, rtol=1e-5, atol=1e-9)
    assert result.converged and result.n_hvp == 0  # Exact: no products per solve


@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_self_influence(problem, dense, selector, kind):
    e = _explainer(problem, selector, kind)
    _, _, _, Xq, yq, _, _ = problem
    ref = dense["explainer"]
    want = ref.self_influence()
    _close(e.self_influence(), want, want)
    got = e.self_influence(_as(kind, Xq), yq)
    # the self-score is the diagonal of the query set scored as a pool of itself
    diag = np.diag(ref.pool_influences(Xq, yq, X_pool=Xq, y_pool=yq))
    _close(got, diag, diag)


@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_pool_influences(problem, dense, selector, kind):
    e = _explainer(problem, selector, kind)
    _, _, _, Xq, yq, Xp, yp = problem
    got = e.pool_influences(_as(kind, Xq), yq, X_pool=_as(kind, Xp), y_pool=yp)
    _check_against_dense(got, dense["pool"], len(yp), selector)


@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_explain_pool(problem, dense, selector, kind):
    e = _explainer(problem, selector, kind)
    _, _, _, Xq, yq, Xp, yp = problem
    ex = e.explain_pool(_as(kind, Xq), yq, X_pool=_as(kind, Xp), y_pool=yp, k=5)
    rows = np.arange(len(yq))[:, None]
    assert ex.helpful_indices.max() < len(yp)
    _close(ex.helpful_scores, dense["pool"][rows, ex.helpful_indices], dense["pool"])
    np.testing.assert_array_equal(ex.train_labels, yp)


def _expected_first_step(e, Xq, yq, pool, n_helpful):
    """The points step 1 of correct() steps on, when every error example is an anchor."""
    if pool is None:
        scores = e.influences(Xq, yq, query="mean")
    else:
        scores = e.pool_influences(Xq, yq, X_pool=pool[0], y_pool=pool[1], query="mean")
    if sparse.issparse(scores):
        row = scores.tocsr()
        cols, vals = row.indices, row.data
    else:
        cols, vals = np.arange(scores.shape[1]), scores[0]
    return np.sort(cols[np.argsort(-vals, kind="stable")[:n_helpful]])


@pytest.mark.parametrize("in_pool", [False, True], ids=["train", "pool"])
@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_correct(problem, selector, kind, in_pool):
    e = _explainer(problem, selector, kind)
    net, _, _, Xq, yq, Xp, yp = problem
    before = {k: v.clone() for k, v in net.module_.state_dict().items()}
    pool = (_as(kind, Xp), yp) if in_pool else None
    kw = {"X_pool": pool[0], "y_pool": pool[1]} if in_pool else {}
    fixed = e.correct(_as(kind, Xq), yq, n_steps=2, n_anchors=len(yq), n_helpful=5, lr=0.05,
                      refresh=None, random_state=0, **kw)
    history = fixed.correction_history_
    assert [h["step"] for h in history] == [0, 1, 2]
    chosen = history[1]["indices"]
    assert len(chosen) == 5 and chosen.max() < (len(yp) if in_pool else e.n_train_)
    if selector in ("none", "exact"):  # deterministic shortlists: the refit sees the same
        np.testing.assert_array_equal(np.sort(chosen),
                                      _expected_first_step(e, _as(kind, Xq), yq, pool, 5))
    changed = any(not np.array_equal(v.numpy(), before[k].numpy())
                  for k, v in fixed.module_.state_dict().items())
    assert changed  # the copy moved ...
    for k, v in net.module_.state_dict().items():  # ... and the user's net did not
        np.testing.assert_array_equal(v.numpy(), before[k].numpy())


@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_audit_and_candidate_recall(problem, dense, selector, kind):
    e = _explainer(problem, selector, kind)
    _, _, _, Xq, yq, _, _ = problem
    if selector == "none":
        with pytest.raises(ValueError, match="no candidates"):
            e.audit_candidates(_as(kind, Xq), yq)
        return
    audit = e.audit_candidates(_as(kind, Xq), yq, top=(1, 5), max_samples=None,
                               min_recall=0.0)
    direct = candidate_recall(e, _as(kind, Xq), yq, top=(1, 5))
    assert audit.recall == direct.recall
    # the truth: the shortlists' overlap with the dense top-5
    csr = e.influences(_as(kind, Xq), yq).tocsr()
    truth = np.argsort(-dense["train"], axis=1, kind="stable")[:, :5]
    hits = [len(np.intersect1d(truth[i], csr.indices[csr.indptr[i]:csr.indptr[i + 1]])) / 5
            for i in range(len(yq))]
    assert direct.recall[5] == pytest.approx(np.mean(hits))


@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_candidate_recall_display(problem, selector, kind):
    from sk_fastif.plotting import CandidateRecallDisplay

    e = _explainer(problem, selector, kind)
    _, _, _, Xq, yq, _, _ = problem
    if selector == "none":
        with pytest.raises(ValueError):
            CandidateRecallDisplay.from_explainer(e, _as(kind, Xq), yq)
        return
    disp = CandidateRecallDisplay.from_explainer(e, _as(kind, Xq), yq, n_neighbors=[5, K],
                                                 top=5)
    want = candidate_recall(e, _as(kind, Xq), yq, top=5).recall[5]
    got = dict(zip(np.asarray(disp.n_neighbors).tolist(), disp.recall[5]))[K]
    assert got == pytest.approx(want)
    matplotlib.pyplot.close("all")


@pytest.mark.parametrize(("selector", "kind"), CELLS, ids=IDS)
def test_step_test(problem, dense, selector, kind):
    e = _explainer(problem, selector, kind)
    _, _, _, Xq, yq, _, _ = problem
    res = step_test(e, _as(kind, Xq), yq, k=5, lr=1e-3, random_state=0)
    assert res.helpful.shape == res.harmful.shape == (len(yq),)
    # to first order the change is -lr * g(z) . mean_j g(z_j) over the k helpful points
    ex = e.explain(_as(kind, Xq), yq, k=5)
    engine = e.engine_
    Xt, yt = e.as_engine_input(_as(kind, Xq), yq)
    Gq = engine.gradients(Xt, yt).double()
    rows = ex.helpful_indices.ravel()
    Gh = engine.gradients(engine.X_train[rows], engine.y_train[rows]).double()
    first_order = -1e-3 * (Gq * Gh.reshape(len(yq), 5, -1).mean(dim=1)).sum(dim=1).numpy()
    np.testing.assert_allclose(res.helpful, first_order, rtol=0.05,
                               atol=0.05 * np.abs(first_order).max())
    assert res.helpful.mean() < res.harmful.mean()
