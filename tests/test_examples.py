"""The gallery's core example runs end to end (with a non-interactive matplotlib backend)."""

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
