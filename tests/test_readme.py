"""The README's Python code runs as written, block after block, in one namespace."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
def test_the_readme_code_runs(monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import spearmanr

    from sk_fastif.solvers import CG

    blocks = python_blocks()
    assert len(blocks) >= 3
    ns: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
    plt.close("all")
    # the first example, with the defaults, agrees with an independent exact solver (CG, never
    # forming the matrix) at the damping the defaults chose, and the grid search found a setting
    net, X_train, X_test = ns["net"], ns["X_train"], ns["X_test"]
    explainer = ns["InfluenceExplainer"](net).fit(X_train, ns["y_train"])
    lam = explainer.solver_.damping_
    reference = ns["InfluenceExplainer"](net, solver=CG(damping=lam, tol=1e-8, max_iter=1000))
    reference.fit(X_train, ns["y_train"])
    got, ref = explainer.influences(X_test[:5]), reference.influences(X_test[:5])
    assert np.isfinite(got).all()
    assert spearmanr(got.ravel(), ref.ravel())[0] >= 0.95
    assert ns["explanation"].helpful_indices.shape == (5, 10)
    assert ns["search"].best_params_["solver__depth"] in (50, 200)


def rst_python_blocks(name: str) -> list[str]:
    """The ``.. code-block:: python`` blocks of a docs page, dedented."""
    import textwrap

    text = (README.parent / "docs" / name).read_text(encoding="utf-8")
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", text)
    return [textwrap.dedent(b) for b in blocks]


def test_the_getting_started_and_user_guide_code_runs():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = rst_python_blocks("getting_started.rst") + rst_python_blocks("user_guide.rst")
    assert len(blocks) >= 2
    ns: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs python block {i + 1}", "exec"), ns)
    plt.close("all")
    ex = ns["ex"]  # the user guide's explanation of five test points
    assert ex.helpful_indices.shape == (5, 10)
    assert (np.diff(ex.helpful_scores, axis=1) <= 0).all()  # highest scores first
