"""The main job: explain a digits classifier's mistakes by its most influential training images.

Run with ``python -m sk_fastif.demo`` (or ``make demo``). It trains a small skorch MLP on
scikit-learn's ``load_digits``, fits an :class:`~sk_fastif.InfluenceExplainer`, and for a few
misclassified test digits prints the most helpful and the most harmful training images with their
labels and scores. With matplotlib installed it also draws them, through
:class:`~sk_fastif.plotting.InfluenceDisplay`, to a PNG file and prints its path.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from . import InfluenceExplainer
from .solvers import CG
from .toy import TanhMLP, train_digits_net

# The digits net and its training live in sk_fastif.toy; the old names stay importable here.
DigitsMLP = TanhMLP


def _row(kind: str, indices, scores, labels) -> str:
    cells = [f"#{i:<4d} y={labels[i]} {s:+.2e}" for i, s in zip(indices, scores)]
    return f"  {kind:<8s} " + " | ".join(cells)


def save_figure(explanation, X_train, X_test, names, path: Path, *, dpi: int = 110) -> Path:
    """Draw the explained digits with :class:`~sk_fastif.plotting.InfluenceDisplay`; save a PNG.

    Raises ImportError (naming the ``plot`` extra) when matplotlib is missing.
    """
    from .plotting import InfluenceDisplay

    display = InfluenceDisplay.from_explanation(
        explanation, X_train=X_train, X_test=X_test, image_shape=(8, 8), test_indices=names
    )
    fig = display.figure_
    fig.suptitle("Misclassified test digits (explained for the predicted label) and their most "
                 "helpful (green) and harmful (red) training images", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-explain", type=int, default=4, help="misclassified digits to explain")
    parser.add_argument("-k", type=int, default=5, help="training images listed per kind")
    parser.add_argument("--output", default="sk_fastif_demo.png", help="figure path")
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    t0 = time.perf_counter()
    net, X_train, X_test, y_train, y_test = train_digits_net(args.random_state)
    pred = net.predict(X_test)
    print(f"Trained a 64-32-10 MLP on {len(X_train)} digits in {time.perf_counter() - t0:.1f} s; "
          f"test accuracy {np.mean(pred == y_test):.3f}.")

    explainer = InfluenceExplainer(
        net, solver=CG(damping=1e-2, max_iter=300, tol=1e-4), curvature="gauss_newton"
    )
    t0 = time.perf_counter()
    explainer.fit(X_train, y_train)
    wrong = np.flatnonzero(pred != y_test)[: args.n_explain]
    if len(wrong) == 0:
        wrong = np.arange(args.n_explain)
    explanation = explainer.explain(X_test[wrong], k=args.k)
    print(f"Explained {len(wrong)} misclassified test digits against all {len(X_train)} training "
          f"images ({explainer.n_params_} parameters, CG on the Gauss-Newton curvature) in "
          f"{time.perf_counter() - t0:.2f} s.")
    print("Score = estimated rise of the test loss if the training image were removed "
          "(positive = helpful, negative = harmful), for the predicted label.\n")
    for r, t in enumerate(wrong):
        print(f"test digit {t}: true {y_test[t]}, predicted {pred[t]}")
        print(_row("helpful", explanation.helpful_indices[r], explanation.helpful_scores[r],
                   y_train))
        print(_row("harmful", explanation.harmful_indices[r], explanation.harmful_scores[r],
                   y_train))
    names = [f"{t} (true {y_test[t]})" for t in wrong]
    try:
        import matplotlib

        matplotlib.use("Agg")
        path = save_figure(explanation, X_train, X_test[wrong], names, Path(args.output))
    except ImportError:
        print("\nmatplotlib is not installed: no figure (pip install 'sk_fastif[plot]').")
    else:
        print(f"\nWrote a figure of these images to {path.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
