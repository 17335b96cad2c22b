"""Doctests of the displays draw with the non-interactive Agg backend and close their figures."""

import pytest


@pytest.fixture(autouse=True)
def _agg_backend():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield
    plt.close("all")
