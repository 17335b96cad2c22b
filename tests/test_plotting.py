"""The displays draw what the data say: artists are checked against the numbers behind them."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors
from skorch import NeuralNetClassifier

from sk_fastif import Explanation, InfluenceExplainer
from sk_fastif.metrics import candidate_recall, mislabel_detection_curve
from sk_fastif.neighbors import ExactCandidates, GradientSketchCandidates
from sk_fastif.solvers import CG, Exact, LiSSA, SolveResult

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from sk_fastif.plotting import (  # noqa: E402
    CandidateRecallDisplay,
    CorrectionDisplay,
    InfluenceDisplay,
    InfluenceGraphDisplay,
    SelfInfluenceDisplay,
    SolverTraceDisplay,
)

GREEN, RED = to_rgba("tab:green"), to_rgba("tab:red")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def linear():
    """A fitted logistic regression on 50 points in 4-D, with an exact explainer."""
    rng = np.random.RandomState(0)
    X = rng.randn(50, 4).astype("float32")
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype("int64")
    torch.manual_seed(0)
    net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
                              max_epochs=10, lr=0.5, train_split=None, verbose=0).fit(X, y)
    return net, X, y


def _explanation(n_test=3, k=4, n_train=20, seed=0):
    rng = np.random.RandomState(seed)
    h_idx = np.stack([rng.choice(n_train, k, replace=False) for _ in range(n_test)])
    x_idx = np.stack([rng.choice(n_train, k, replace=False) for _ in range(n_test)])
    h_sc = -np.sort(-rng.uniform(0.1, 1.0, (n_test, k)), axis=1)
    x_sc = np.sort(-rng.uniform(0.1, 1.0, (n_test, k)), axis=1)
    return Explanation(h_idx, h_sc, x_idx, x_sc, test_labels=np.arange(n_test) % 2,
                       train_labels=rng.randint(0, 3, n_train))


# ---------------------------------------------------------------------------- InfluenceDisplay
def test_bars_equal_the_scores_and_name_the_points():
    ex = _explanation()
    disp = InfluenceDisplay.from_explanation(ex, kind="bars")
    assert disp.ax_.shape == (3, 1) and disp.images_ is None
    for r, (helpful, harmful) in enumerate(disp.bars_):
        np.testing.assert_allclose([b.get_width() for b in helpful], ex.helpful_scores[r])
        np.testing.assert_allclose([b.get_width() for b in harmful], ex.harmful_scores[r])
        assert all(b.get_facecolor() == GREEN for b in helpful)
        assert all(b.get_facecolor() == RED for b in harmful)
        labels = [t.get_text() for t in disp.ax_[r, 0].get_yticklabels()]
        expected = [f"#{j} y={ex.train_labels[j]}"
                    for j in np.r_[ex.helpful_indices[r], ex.harmful_indices[r]]]
        assert labels == expected
        assert f"label {ex.test_labels[r]}" in disp.ax_[r, 0].get_title()


def test_bars_from_explainer_match_the_influence_matrix(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    full = expl.influences(X[:2], y[:2])
    disp = InfluenceDisplay.from_explainer(expl, X[:2], y[:2], k=3)
    for r, (helpful, harmful) in enumerate(disp.bars_):
        np.testing.assert_allclose([b.get_width() for b in helpful],
                                   np.sort(full[r])[::-1][:3], rtol=1e-6)
        np.testing.assert_allclose([b.get_width() for b in harmful], np.sort(full[r])[:3],
                                   rtol=1e-6)


def test_thumbnails_equal_the_images():
    ex = _explanation(n_test=2, k=3, n_train=20)
    rng = np.random.RandomState(1)
    X_train, X_test = rng.rand(20, 64), rng.rand(2, 64)
    disp = InfluenceDisplay.from_explanation(ex, X_train=X_train, X_test=X_test,
                                             image_shape=(8, 8))
    assert disp.ax_.shape == (2, 7) and disp.bars_ is None
    for r in range(2):
        np.testing.assert_array_equal(disp.images_[r, 0].get_array(), X_test[r].reshape(8, 8))
        for c in range(3):
            np.testing.assert_array_equal(disp.images_[r, 1 + c].get_array(),
                                          X_train[ex.helpful_indices[r, c]].reshape(8, 8))
            np.testing.assert_array_equal(disp.images_[r, 4 + c].get_array(),
                                          X_train[ex.harmful_indices[r, c]].reshape(8, 8))
            assert f"{ex.helpful_scores[r, c]:+.1e}" in disp.ax_[r, 1 + c].get_title()
    # one colour scale for every thumbnail, so brightness compares across images
    lo = min(X_train.min(), X_test.min())
    assert {im.norm.vmin for im in disp.images_.ravel()} == {lo}


def test_channel_first_images():
    ex = _explanation(n_test=1, k=2, n_train=6)
    rng = np.random.RandomState(2)
    rgb = rng.uniform(-1, 3, size=(6, 3, 4, 5))
    disp = InfluenceDisplay.from_explanation(ex, X_train=rgb)  # (C, H, W) found from the shape
    j = ex.helpful_indices[0, 0]
    shown = np.asarray(disp.images_[0, 1].get_array())
    picked = rgb[np.r_[ex.helpful_indices[0], ex.harmful_indices[0]]]
    expected = (np.moveaxis(rgb[j], 0, -1) - picked.min()) / (picked.max() - picked.min())
    np.testing.assert_allclose(shown, expected)
    gray = rng.rand(6, 1, 4, 5)
    disp = InfluenceDisplay.from_explanation(ex, X_train=gray)
    np.testing.assert_array_equal(disp.images_[0, 1].get_array(), gray[j, 0])


def test_text_inputs_show_their_tokens():
    ex = Explanation(np.array([[1]]), np.array([[0.3]]), np.array([[0]]), np.array([[-0.2]]),
                     train_labels=np.array([0, 1]))
    texts = [["bad", "movie"], "a great film"]
    disp = InfluenceDisplay.from_explanation(ex, X_train=texts, X_test=["great acting"])
    labels = [t.get_text() for t in disp.ax_[0, 0].get_yticklabels()]
    assert labels == ["#1 y=1 “a great film”", "#0 y=0 “bad movie”"]
    assert "great acting" in disp.ax_[0, 0].get_title()


def test_dataframes_are_read_by_position():
    pd = pytest.importorskip("pandas")
    ex = _explanation(n_test=1, k=2, n_train=20)
    X = np.random.RandomState(4).rand(20, 4)
    frame = pd.DataFrame(X, index=np.arange(100, 120), columns=list("abcd"))
    disp = InfluenceDisplay.from_explanation(ex, X_train=frame, image_shape=(2, 2))
    np.testing.assert_array_equal(disp.images_[0, 1].get_array(),
                                  X[ex.helpful_indices[0, 0]].reshape(2, 2))
    bars = InfluenceDisplay.from_explanation(ex, X_train=frame, kind="bars")
    labels = [t.get_text() for t in bars.ax_[0, 0].get_yticklabels()]
    assert labels[0] == f"#{ex.helpful_indices[0, 0]} y={ex.train_labels[ex.helpful_indices[0, 0]]}"


def test_influence_display_axes_and_errors():
    ex = _explanation(n_test=2, k=2)
    fig, ax = plt.subplots()
    disp = InfluenceDisplay.from_explanation(ex, ax=ax)  # one Axes: divided into the rows
    assert disp.figure_ is fig and not ax.axison and disp.ax_.shape == (2, 1)
    _, axes = plt.subplots(2, 1)
    assert list(InfluenceDisplay.from_explanation(ex, ax=axes).ax_.ravel()) == list(axes)
    with pytest.raises(ValueError, match="2 Axes"):
        InfluenceDisplay.from_explanation(ex, ax=plt.subplots(3)[1])
    with pytest.raises(ValueError, match="needs X_train"):
        InfluenceDisplay.from_explanation(ex, kind="images")
    with pytest.raises(ValueError, match="kind must be"):
        InfluenceDisplay.from_explanation(ex, kind="pie")
    with pytest.raises(ValueError, match="cannot be shown as an image"):
        InfluenceDisplay.from_explanation(ex, X_train=np.zeros((20, 10)), image_shape=(3, 3))
    with pytest.raises(ValueError, match="X_train has 5 rows"):
        InfluenceDisplay.from_explanation(ex, X_train=np.zeros((5, 4)))
    with pytest.raises(ValueError, match="one shape"):
        InfluenceDisplay(ex.helpful_indices, ex.helpful_scores[:, :1], ex.harmful_indices,
                         ex.harmful_scores).plot()


# ------------------------------------------------------------------------ InfluenceGraphDisplay
def test_graph_edges_match_the_signs_and_sizes():
    # 4 test points in two groups, 6 training points; train 5 acts on both groups
    scores = np.zeros((4, 6))
    scores[0, [0, 5]] = [0.8, -0.4]
    scores[1, [1, 5]] = [-0.2, 0.6]
    scores[2, [2, 5]] = [0.5, 0.1]
    scores[3, [3, 4]] = [-0.3, 0.9]
    groups = np.array(["a", "a", "b", "b"])
    disp = InfluenceGraphDisplay.from_scores(scores, k=2, groups=groups)
    t, j, s = np.nonzero(scores)[0], np.nonzero(scores)[1], scores[np.nonzero(scores)]
    edges = {(a, b): v for a, b, v in zip(disp.test_index, disp.train_index, disp.scores)}
    assert edges == {(a, b): v for a, b, v in zip(t, j, s)}
    segments = disp.edges_.get_segments()
    assert len(segments) == 8
    colors = disp.edges_.get_colors()
    for e, v in enumerate(disp.scores):
        np.testing.assert_allclose(colors[e][:3], (GREEN if v > 0 else RED)[:3])
        np.testing.assert_allclose(segments[e][0], disp.test_positions_[disp.test_index[e]])
        node = np.searchsorted(disp.train_nodes_, disp.train_index[e])
        np.testing.assert_allclose(segments[e][1], disp.train_positions_[node])
    np.testing.assert_allclose(disp.edges_.get_linewidths(),
                               0.3 + 2.7 * np.abs(disp.scores) / 0.9)
    assert disp.train_nodes_.tolist() == [0, 1, 2, 3, 4, 5]
    assert disp.shared_.tolist() == [False, False, False, False, False, True]
    # the shared point is pulled towards the centre, the others sit in front of their test point
    radius = np.linalg.norm(disp.train_positions_, axis=1)
    assert radius[5] < radius[:5].min()
    for node, test in [(0, 0), (1, 1), (2, 2), (3, 3), (4, 3)]:
        cos = disp.train_positions_[node] @ disp.test_positions_[test] / radius[node]
        assert cos > 0.99
    # test points of a group share a sector: group a in the upper half plane, b in the lower
    angles = np.arctan2(disp.test_positions_[:, 1], disp.test_positions_[:, 0])
    assert np.all(angles[:2] > 0) and np.all(angles[2:] < 0)


def test_graph_from_explanation_and_explainer(linear):
    ex = Explanation(np.array([[4, 1], [4, 2]]), np.array([[0.2, -0.01], [0.1, 0.05]]),
                     np.array([[1, 3], [2, 3]]), np.array([[-0.1, 0.02], [-0.3, -0.2]]),
                     test_labels=np.array([0, 1]))
    disp = InfluenceGraphDisplay.from_explanation(ex)
    # a "helpful" entry with a negative score and a "harmful" one with a positive are no edges
    assert sorted(zip(disp.test_index.tolist(), disp.train_index.tolist())) == [
        (0, 1), (0, 4), (1, 2), (1, 3), (1, 4)]
    assert disp.shared_.tolist() == [False, False, False, True]  # nodes 1, 2, 3, 4
    only = InfluenceGraphDisplay.from_explanation(ex, kind="harmful")
    assert np.all(only.scores < 0) and len(only.scores) == 3

    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    disp = InfluenceGraphDisplay.from_explainer(expl, X[:5], k=3)
    full = expl.influences(X[:5])
    for a, b, v in zip(disp.test_index, disp.train_index, disp.scores):
        assert v == pytest.approx(full[a, b], rel=1e-6)
    assert disp.test_positions_.shape == (5, 2)


def test_graph_errors():
    with pytest.raises(ValueError, match="nonzero"):
        InfluenceGraphDisplay([0], [1], [0.0], groups=[0]).plot()
    with pytest.raises(ValueError, match="test_index must lie"):
        InfluenceGraphDisplay([3], [1], [0.2], groups=[0]).plot()
    with pytest.raises(ValueError, match="kind must be"):
        InfluenceGraphDisplay.from_scores(np.ones((1, 3)), kind="both ways")
    with pytest.raises(ValueError, match="k must be"):
        InfluenceGraphDisplay.from_scores(np.ones((1, 3)), k=0)


# --------------------------------------------------------------------------- SolverTraceDisplay
def test_trace_lines_equal_the_recorded_traces(linear):
    net, X, y = linear
    lissa = InfluenceExplainer(net, solver=LiSSA(damping=0.1, depth=30, random_state=0),
                               curvature="gauss_newton").fit(X, y)
    disp = SolverTraceDisplay.from_explainer(lissa, X[:3])
    name = next(iter(disp.lines_))
    assert name.startswith("LiSSA(depth=30")
    # the solve of the explainer's public method, the same with its fixed seed
    np.testing.assert_allclose(disp.lines_[name].get_ydata(), lissa.solve(X[:3]).trace)
    np.testing.assert_array_equal(disp.lines_[name].get_xdata(), np.arange(1, 31))
    assert disp.ax_.get_yscale() == "log" and disp.tol_line_ is None

    cg = InfluenceExplainer(net, solver=CG(damping=0.1, tol=1e-8),
                            curvature="gauss_newton").fit(X, y)
    disp = SolverTraceDisplay.from_explainer(cg, X[:3], name="cg")
    assert disp.lines_["cg"].get_ydata()[-1] <= 1e-8
    assert disp.tol_line_.get_ydata()[0] == 1e-8
    assert "(converged)" in disp.lines_["cg"].get_label()

    # Exact solves directly: one point, the relative residual of its answer
    exact = InfluenceExplainer(net, solver=Exact(damping=0.1)).fit(X, y)
    disp = SolverTraceDisplay.from_explainer(exact, X[:3])
    (values,) = [line.get_ydata() for line in disp.lines_.values()]
    assert len(values) == 1 and values[0] < 1e-5  # float32 net


def test_trace_from_explainer_asks_solve_not_the_deprecated_attribute(linear, monkeypatch):
    net, X, y = linear
    cg = InfluenceExplainer(net, solver=CG(damping=0.1, tol=1e-8),
                            curvature="gauss_newton").fit(X, y)
    calls = []
    solve = cg.solve
    monkeypatch.setattr(cg, "solve", lambda *a, **k: calls.append(a) or solve(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # last_solve_ is never read
        disp = SolverTraceDisplay.from_explainer(cg, X[:3], y[:3], name="cg")
    assert len(calls) == 1
    np.testing.assert_allclose(disp.lines_["cg"].get_ydata(), cg.solve(X[:3], y[:3]).trace)


def test_trace_from_solve_results():
    a = SolveResult(torch.zeros(1, 1), trace=[1.0, 0.5, 0.25], n_hvp=3, converged=True)
    b = SolveResult(torch.zeros(1, 1), trace=[2.0, 3.0], n_hvp=2, converged=False)
    disp = SolverTraceDisplay.from_solve_results([a, b], tol=0.3)
    assert list(disp.lines_) == ["solve 0", "solve 1"]
    np.testing.assert_array_equal(disp.lines_["solve 1"].get_ydata(), [2.0, 3.0])
    assert disp.lines_["solve 1"].get_label() == "solve 1 (not converged)"
    with pytest.raises(TypeError, match="not a SolveResult"):
        SolverTraceDisplay.from_solve_results({"x": [1.0]})
    with pytest.raises(ValueError, match="finite"):
        SolverTraceDisplay({"x": [1.0, np.nan]}).plot()


# ----------------------------------------------------------------------- CandidateRecallDisplay
def test_recall_points_equal_a_direct_count(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2),
                              candidates=ExactCandidates(10, embedding="input")).fit(X, y)
    queries = X[:6]
    ks = [1, 5, 20, 50]
    disp = CandidateRecallDisplay.from_explainer(expl, queries, n_neighbors=ks, top=(3, 10))
    # the truth: exhaustive scores and an independent Euclidean neighbour search of the inputs
    scores = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y).influences(queries)
    neighbours = NearestNeighbors(n_neighbors=50).fit(X).kneighbors(queries)[1]
    for m in (3, 10):
        top = np.argsort(-scores, axis=1)[:, :m]
        expected = [np.mean([len(set(t) & set(c[:k])) / m for t, c in zip(top, neighbours)])
                    for k in ks]
        np.testing.assert_allclose(disp.lines_[m].get_ydata(), expected)
        np.testing.assert_array_equal(disp.lines_[m].get_xdata(), ks)
    assert disp.recall[3][-1] == 1.0  # all 50 training points are candidates
    np.testing.assert_allclose(disp.baseline_line_.get_ydata(), np.array(ks) / 50)
    with pytest.raises(ValueError, match="n_neighbors must hold"):
        CandidateRecallDisplay.from_explainer(expl, queries, n_neighbors=[0, 5])
    with pytest.raises(ValueError, match="no candidates"):
        CandidateRecallDisplay.from_explainer(
            InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y), queries)


def test_recall_from_explainer_with_gradient_sketches_is_candidate_recall(linear):
    # a gradient-space selector needs the queries' iHVPs: the pipeline hands them over
    net, X, y = linear
    sketch = GradientSketchCandidates(15, n_components=4, projection="gaussian",
                                      kind="helpful", random_state=0)
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2), candidates=sketch).fit(X, y)
    queries = X[:8]
    disp = CandidateRecallDisplay.from_explainer(expl, queries, n_neighbors=[5, 15, 40],
                                                 top=(3, 10))
    ref = candidate_recall(expl, queries, top=(3, 10))
    assert ref.n_neighbors == 15
    for m in (3, 10):
        assert disp.recall[m][1] == ref.recall[m]  # at the same m and shortlist size
        assert disp.lines_[m].get_ydata()[1] == ref.recall[m]
    assert 0.0 < ref.recall[10] < 1.0  # a lossy sketch: the comparison means something


def test_from_recall_draws_the_given_values_without_an_explainer():
    recall = {5: [0.2, 0.6, 1.0], 20: [0.05, 0.4, 1.0]}
    disp = CandidateRecallDisplay.from_recall([4, 30, 100], recall, n_train=100, name="emb")
    for m, values in recall.items():
        np.testing.assert_array_equal(disp.lines_[m].get_ydata(), values)
        np.testing.assert_array_equal(disp.lines_[m].get_xdata(), [4, 30, 100])
        assert disp.lines_[m].get_label() == f"emb: R@{m}"
    np.testing.assert_allclose(disp.baseline_line_.get_ydata(), [0.04, 0.3, 1.0])
    assert disp.n_train == 100 and disp.recall is recall
    _, ax = plt.subplots()
    again = CandidateRecallDisplay.from_recall([4, 30, 100], recall, n_train=100, ax=ax)
    assert again.ax_ is ax
    with pytest.raises(ValueError, match="must have 3 entries"):
        CandidateRecallDisplay.from_recall([4, 30, 100], {5: [0.1, 0.2]}, n_train=100)
    with pytest.raises(TypeError, match="non-empty mapping"):
        CandidateRecallDisplay.from_recall([4, 30, 100], {}, n_train=100)


# --------------------------------------------------------------------- the ax / figure_ helper
def _single_axes_displays():
    """One display of each kind that draws on a single Axes, with its data."""
    res = SolveResult(torch.zeros(1, 1), trace=[1.0, 0.1], n_hvp=2, converged=True)
    return {
        "recall": lambda ax: CandidateRecallDisplay.from_recall([1, 4], {1: [0.5, 1.0]},
                                                                n_train=4, ax=ax),
        "trace": lambda ax: SolverTraceDisplay.from_solve_results(res, ax=ax),
        "self-influence": lambda ax: SelfInfluenceDisplay.from_scores([0.2, 0.9, 0.1],
                                                                      [1], ax=ax),
        "correction": lambda ax: CorrectionDisplay.from_history(
            {"x": [{"step": 0, "val_accuracy": 0.5}, {"step": 1, "val_accuracy": 0.7}]}, ax=ax),
        "graph": lambda ax: InfluenceGraphDisplay.from_scores(np.array([[0.3, -0.1]]), k=1,
                                                              ax=ax),
    }


@pytest.mark.parametrize("name", list(_single_axes_displays()))
def test_every_display_keeps_the_given_axes_and_its_figure(name):
    draw = _single_axes_displays()[name]
    fig, ax = plt.subplots()
    disp = draw(ax)
    assert disp.ax_ is ax and disp.figure_ is fig
    assert ax.has_data() or ax.collections  # drawn there
    n_figures = len(plt.get_fignums())
    fresh = draw(None)  # no Axes: a new figure of its own
    assert len(plt.get_fignums()) == n_figures + 1
    assert fresh.ax_ is not ax and fresh.figure_ is fresh.ax_.figure is not fig
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes or None"):
        draw("axes")


def test_the_grid_display_keeps_its_axes_and_figure():
    ex = _explanation(n_test=2, k=2)
    _, axes = plt.subplots(2, 1)
    disp = InfluenceDisplay.from_explanation(ex, ax=axes)
    assert disp.ax_.shape == (2, 1) and list(disp.ax_.ravel()) == list(axes)
    assert disp.figure_ is axes[0].figure
    fresh = InfluenceDisplay.from_explanation(ex)
    assert fresh.figure_ is fresh.ax_[0, 0].figure is not disp.figure_


def test_the_axes_helper_sets_ax_and_figure_once_for_all():
    from sk_fastif.plotting._base import DisplayAxesMixin

    class Probe(DisplayAxesMixin):
        pass

    fig, ax = plt.subplots()
    probe = Probe()
    assert probe._plot_axes(ax) is ax
    assert probe.ax_ is ax and probe.figure_ is fig
    made = probe._plot_axes(None, figsize=(3.0, 2.0))
    assert probe.ax_ is made and probe.figure_ is made.figure is not fig
    np.testing.assert_allclose(probe.figure_.get_size_inches(), [3.0, 2.0])
    grid = probe._plot_axes(ax, grid=(2, 3), figsize=(4.0, 4.0))  # one Axes, divided
    assert grid.shape == (2, 3) and probe.ax_ is grid and probe.figure_ is fig
    assert not ax.axison
    grid = probe._plot_axes(None, grid=(1, 2), figsize=(4.0, 2.0))
    assert probe.figure_ is grid[0, 0].figure is grid[0, 1].figure is not fig
    with pytest.raises(ValueError, match="2 Axes"):
        probe._plot_axes(plt.subplots(3)[1], grid=(1, 2), figsize=(4.0, 2.0))
    assert all(issubclass(d, DisplayAxesMixin) for d in (
        CandidateRecallDisplay, CorrectionDisplay, InfluenceDisplay, InfluenceGraphDisplay,
        SelfInfluenceDisplay, SolverTraceDisplay))


# ------------------------------------------------------------------------- SelfInfluenceDisplay
def test_detection_curve_counts_the_flips():
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.7])
    flipped = np.array([1, 3])  # scores 0.9 and 0.8: the top two
    loss = np.array([0.9, 0.0, 0.8, 0.1, 0.7, 0.6])  # ranks the flipped points last
    disp = SelfInfluenceDisplay.from_scores(scores, flipped, baseline_scores={"loss": loss})
    np.testing.assert_allclose(disp.lines_["self-influence"].get_xdata(), np.arange(7) / 6)
    np.testing.assert_allclose(disp.lines_["self-influence"].get_ydata(),
                               [0, 0.5, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(disp.lines_["loss"].get_ydata(), [0, 0, 0, 0, 0, 0.5, 1])
    mask = np.zeros(6, dtype=bool)
    mask[flipped] = True
    same = SelfInfluenceDisplay.from_scores(scores, mask)
    np.testing.assert_array_equal(same.lines_["self-influence"].get_ydata(),
                                  disp.lines_["self-influence"].get_ydata())
    np.testing.assert_array_equal(disp.random_line_.get_ydata(), [0, 1])
    with pytest.raises(ValueError, match="nothing to find"):
        SelfInfluenceDisplay.from_scores(scores, np.zeros(6, dtype=bool))
    with pytest.raises(ValueError, match="must have 6 entries"):
        SelfInfluenceDisplay.from_scores(scores, mask[:4])
    with pytest.raises(ValueError, match=r"lie in \[0, 6\)"):
        SelfInfluenceDisplay.from_scores(scores, [7])


def test_detection_curve_is_the_metrics_and_crosses_ties_straight():
    scores = np.array([0.5, 0.5, 0.9, 0.5, 0.1])  # three tied points
    flipped = np.array([0, 4])
    disp = SelfInfluenceDisplay.from_scores(scores, flipped)
    mask = np.isin(np.arange(5), flipped)
    inspected, found, _ = mislabel_detection_curve(scores, mask)
    np.testing.assert_array_equal(disp.lines_["self-influence"].get_xdata(), inspected)
    np.testing.assert_array_equal(disp.lines_["self-influence"].get_ydata(), found)
    np.testing.assert_allclose(inspected, [0, 0.2, 0.8, 1.0])  # the tie inspected together
    np.testing.assert_allclose(found, [0, 0, 0.5, 1.0])


def test_self_influence_from_explainer_ranks_by_self_influence(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    flipped = np.array([0, 7, 9])
    disp = SelfInfluenceDisplay.from_explainer(expl, flipped)
    order = np.argsort(-expl.self_influence())
    found = np.cumsum(np.isin(order, flipped)) / 3
    np.testing.assert_allclose(disp.lines_["self-influence"].get_ydata()[1:], found)


def test_self_influence_from_explainer_draws_the_training_loss_baseline(linear):
    net, X, y = linear
    expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    flipped = np.array([0, 7, 9])
    mask = np.isin(np.arange(len(y)), flipped)
    disp = SelfInfluenceDisplay.from_explainer(expl, flipped, baseline_scores="loss")
    assert list(disp.lines_) == ["self-influence", "training loss"]
    # the cross-entropy of each training point at its own label, computed here independently
    loss = -np.log(net.predict_proba(X)[np.arange(len(y)), y])
    inspected, found, _ = mislabel_detection_curve(loss, mask)
    np.testing.assert_allclose(disp.lines_["training loss"].get_xdata(), inspected)
    np.testing.assert_allclose(disp.lines_["training loss"].get_ydata(), found)
    assert not np.allclose(disp.lines_["training loss"].get_ydata(),
                           disp.lines_["self-influence"].get_ydata())  # two rankings, not one
    # "loss" inside a mapping, beside given scores; on other points, at their given labels
    other = np.arange(len(y), dtype=float)
    both = SelfInfluenceDisplay.from_explainer(expl, flipped,
                                               baseline_scores={"loss": "loss", "index": other})
    np.testing.assert_allclose(both.lines_["loss"].get_ydata(), found)
    np.testing.assert_allclose(both.lines_["index"].get_ydata(),
                               mislabel_detection_curve(other, mask)[1])
    y_wrong = 1 - y[:10]
    part = SelfInfluenceDisplay.from_explainer(expl, [0, 1], X[:10], y_wrong,
                                               baseline_scores="loss")
    loss_wrong = -np.log(net.predict_proba(X[:10])[np.arange(10), y_wrong])
    np.testing.assert_allclose(part.lines_["training loss"].get_ydata(),
                               mislabel_detection_curve(loss_wrong, np.isin(np.arange(10),
                                                                            [0, 1]))[1])
    with pytest.raises(ValueError, match='must be "loss"'):
        SelfInfluenceDisplay.from_explainer(expl, flipped, baseline_scores="margin")
    with pytest.raises(ValueError, match='must be "loss"'):
        SelfInfluenceDisplay.from_explainer(expl, flipped, baseline_scores={"m": "margin"})


# ---------------------------------------------------------------------------- CorrectionDisplay
def _history(values, losses=None):
    return [{"step": s, "indices": np.arange(s), "val_accuracy": v,
             "val_loss": None if losses is None else losses[s]} for s, v in enumerate(values)]


def test_correction_curves_and_spread():
    runs = [_history([0.5, 0.6, 0.8]), _history([0.5, 0.7, 0.7]), _history([0.5, 0.8, 0.9])]
    histories = {"influence": runs, "random": _history([0.5, 0.5, None])}
    disp = CorrectionDisplay.from_history(histories)
    acc = np.array([[0.5, 0.6, 0.8], [0.5, 0.7, 0.7], [0.5, 0.8, 0.9]])
    np.testing.assert_allclose(disp.lines_["influence"].get_ydata(), acc.mean(axis=0))
    np.testing.assert_array_equal(disp.lines_["influence"].get_xdata(), [0, 1, 2])
    # the band spans mean +- standard deviation at every step
    band = disp.bands_["influence"].get_paths()[0].vertices
    for step, mean, sd in zip([0, 1, 2], acc.mean(axis=0), acc.std(axis=0)):
        ys = band[np.isclose(band[:, 0], step), 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [mean - sd, mean + sd], atol=1e-12)
    # a step without the metric is left out; a single run has no band
    np.testing.assert_array_equal(disp.lines_["random"].get_xdata(), [0, 1])
    assert "random" not in disp.bands_
    assert disp.ax_.get_ylabel() == "validation accuracy"

    loss = CorrectionDisplay.from_history({"x": _history([0.5, 0.6], losses=[0.9, 0.4])},
                                          metric="val_loss")
    np.testing.assert_array_equal(loss.lines_["x"].get_ydata(), [0.9, 0.4])


def test_correction_errors():
    with pytest.raises(ValueError, match="metric must be"):
        CorrectionDisplay.from_history({"x": _history([0.5])}, metric="accuracy")
    with pytest.raises(ValueError, match="records no 'val_loss'"):
        CorrectionDisplay.from_history({"x": _history([0.5])}, metric="val_loss")
    with pytest.raises(ValueError, match="different steps"):
        CorrectionDisplay.from_history({"x": [_history([0.5, 0.6]), _history([0.5])]})
    with pytest.raises(TypeError, match="list of per-step dicts"):
        CorrectionDisplay.from_history({"x": [0.5, 0.6]})


# ------------------------------------------------------------------------------ optional import
def test_plotting_imports_matplotlib_only_when_drawing():
    code = ("import sys; import sk_fastif.plotting as p; "
            "assert 'matplotlib' not in sys.modules, 'imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_matplotlib_names_the_extra():
    code = (
        "import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.pyplot'] = None\n"
        "from sk_fastif.plotting import SolverTraceDisplay\n"
        "try:\n    SolverTraceDisplay({'a': [1.0]}).plot()\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert "pip install 'sk_fastif[plot]'" in out


def test_demo_figure_is_an_influence_display(tmp_path):
    from sk_fastif.demo import save_figure

    ex = _explanation(n_test=2, k=2, n_train=20)
    X_train = np.random.RandomState(3).rand(20, 64)
    path = save_figure(ex, X_train, X_train[:2], ["a", "b"], tmp_path / "demo.png", dpi=40)
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # one row of 5 panels per digit
