"""The gallery examples that draw with sk_fastif.plotting run end to end and show what they say."""

import runpy
import warnings
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def run_example(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    monkeypatch.chdir(EXAMPLES)
    yield lambda name: runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    plt.close("all")


def test_influence_graph_example(run_example):
    ns = run_example("plot_influence_graph.py")
    disp, y_train, y_test, rows = ns["display"], ns["y_train"], ns["y_test"], ns["rows"]
    # helpful edges point mostly to training digits of the test digit's own class
    helpful = disp.scores > 0
    same = y_train[disp.train_index[helpful]] == y_test[rows][disp.test_index[helpful]]
    assert same.mean() > 0.6
    # a training digit is drawn as shared exactly when its edges reach two classes
    for node, shared in zip(disp.train_nodes_, disp.shared_):
        classes = set(y_test[rows][disp.test_index[disp.train_index == node]])
        assert shared == (len(classes) > 1)


def test_solver_trace_example(run_example):
    ns = run_example("plot_solver_trace.py")
    assert ns["results"]["CG"].trace[-1] <= 1e-6
    assert min(ns["agreement"].values()) > 0.95
    lines = ns["display"].lines_
    assert set(lines) == set(ns["results"])


def test_candidate_recall_example(run_example):
    ns = run_example("plot_candidate_recall.py")
    ax = ns["ax"]
    recall = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    penultimate, pixels = recall["penultimate: R@10"], recall["input: R@10"]
    baseline = np.asarray(ns["n_neighbors"]) / len(ns["X_train"])
    assert np.all(np.diff(penultimate) >= 0) and penultimate[-1] == 1.0
    assert np.all(penultimate[:-1] > baseline[:-1])  # far better than a random shortlist
    k100 = ns["n_neighbors"].index(100)
    assert penultimate[k100] > pixels[k100]  # the net's features beat the raw pixels


def test_tabular_example(run_example):
    ns = run_example("plot_explain_tabular.py")
    disp, ex = ns["display"], ns["explanation"]
    for r, (helpful, harmful) in enumerate(disp.bars_):
        np.testing.assert_allclose([b.get_width() for b in helpful], ex.helpful_scores[r])
        np.testing.assert_allclose([b.get_width() for b in harmful], ex.harmful_scores[r])
    assert np.all(ex.helpful_scores > 0) and np.all(ex.harmful_scores < 0)


@pytest.mark.slow
def test_text_example(run_example):
    ns = run_example("plot_explain_text.py")
    shares = ns["shares"]
    # the most helpful pairs of the challenge errors break the shortcut more often than chance
    assert shares["helpful (all pairs scored)"] > 2 * shares["all training pairs"]
    assert ns["explainer"].n_params_ < sum(p.numel() for p in ns["net"].module_.parameters())


@pytest.mark.slow
@pytest.mark.xfail(reason="open: with transformers 5.25 the example's helpful pairs break the "
                          "shortcut 13.5% of the time against the 1.5 x 10% asked (it passed on "
                          "the transformers of the last landing; failing on main before the "
                          "pipeline change too)", strict=False)
def test_bert_example(run_example):
    pytest.importorskip("transformers")
    with warnings.catch_warnings():
        # the 4-D mask keeps every per-sample gradient in vmap: no fallback to per-sample loops
        warnings.filterwarnings("error", message=".*falling back to slower per-sample loops")
        ns = run_example("plot_explain_bert.py")
    shares = ns["shares"]
    assert shares["helpful (all pairs scored)"] > 1.5 * shares["all training pairs"]
    assert ns["explainer"].n_params_ < sum(p.numel() for p in ns["net"].module_.parameters())
