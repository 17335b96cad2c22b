"""Gallery examples run end to end (with a non-interactive matplotlib backend)."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_plot_explain_digits_runs(monkeypatch, capsys):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    ns = runpy.run_path(str(EXAMPLES / "plot_explain_digits.py"), run_name="__main__")
    assert "test accuracy" in capsys.readouterr().out
    ex = ns["explanation"]
    # the most helpful images for a prediction mostly carry the predicted label
    labels = ns["y_train"][ex.helpful_indices]
    predicted = ns["pred"][ns["wrong"]][:, None]
    assert (labels == predicted).mean() >= 0.5
    plt.close("all")


@pytest.fixture
def run_tuning_example(monkeypatch):
    """Run a tuning example (matplotlib without a window, pandas) and return its namespace."""
    matplotlib = pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    yield lambda name: runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    plt.close("all")


@pytest.mark.slow
def test_plot_tune_lissa_runs(run_tuning_example, capsys):
    ns = run_tuning_example("plot_tune_lissa.py")
    assert "best agreement" in capsys.readouterr().out
    table = ns["table"]
    assert len(table) == 12  # every setting of the grid was scored
    # deeper recursions agree better with Exact (the truncated series is a larger damping)
    by_depth = table.groupby("depth")["agreement"].mean()
    assert by_depth[80] > by_depth[5]


@pytest.mark.slow
def test_plot_tune_damping_lds_runs(run_tuning_example, capsys):
    import numpy as np

    ns = run_tuning_example("plot_tune_damping_lds.py")
    assert "chosen damping" in capsys.readouterr().out
    search, scorer = ns["search"], ns["scorer"]
    lds = search.cv_results_["mean_test_score"]
    # 40 nets for 5 candidates and the default; the choice is the candidate of largest LDS
    assert scorer.n_retrainings_ == 40
    assert search.best_params_["solver__damping"] == ns["dampings"][int(np.argmax(lds))]
    # the scores predict retraining (LDS well above 0) and damping matters (not flat)
    assert lds.max() > 0.3 and lds.max() - lds.min() > 0.1 and np.isfinite(ns["auto_lds"])
