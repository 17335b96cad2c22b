"""Mislabel detection: self-influence beside the training-loss ranking and a random order.

On each data set, for each of ``SEEDS`` (5) seeds, 10% of the training labels are flipped with
:func:`sk_fastif.datasets.flip_labels` (seeded like the split), a net is trained on the noisy
labels, and the training points are ranked, most suspicious first, by

* ``self-influence``: :meth:`sk_fastif.InfluenceExplainer.self_influence`, the last layer's
  parameters (``params=["output"]``), Gauss-Newton curvature, ``Exact(damping=1e-3)``;
* ``training loss``: the net's cross-entropy on each point's (noisy) label, the strong baseline;
* ``random``: a random order (seeded), which finds on average the fraction it inspects.

Each ranking is scored by :func:`sk_fastif.metrics.mislabel_detection_curve`: the fraction of
the flipped labels found in the top 10% and the top 20% of the ranking, and the area under the
curve (about 0.5 for a random order, at most ``1 - 0.1 / 2 = 0.95`` here).

Data sets (every net a one-hidden-layer tanh MLP of :func:`sk_fastif.toy.train_mlp_classifier`,
Adam, minibatches of 64):

* ``digits``: 1,000 digits images (64 pixels, 10 classes), 32 hidden units, ``lr=0.01``, 30
  epochs; the net does not fit most flipped labels.
* ``make_classification``: 1,000 rows of ``make_classification`` (20 features, 10
  informative, 3 classes, ``class_sep=1.5``, standardized), 32 hidden units, ``lr=0.01``, 40
  epochs.
* ``digits, memorised``: the digits again with 256 hidden units, ``lr=0.01`` and 300 epochs,
  so that the net fits (memorises) the flipped labels too: training accuracy on the noisy labels
  near 1.

Run: ``OMP_NUM_THREADS=1 python benchmarks/mislabels.py`` (a few minutes on one core); it
prints the table and writes it to ``benchmarks/results/mislabels.rst``. ``--seeds 2`` is a
smoke run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmark this checkout, not an installed sk_fastif

from sk_fastif import InfluenceExplainer  # noqa: E402
from sk_fastif.datasets import (  # noqa: E402
    flip_labels,
    load_digits_split,
    make_classification_split,
)
from sk_fastif.metrics import mislabel_detection_curve  # noqa: E402
from sk_fastif.solvers import Exact  # noqa: E402
from sk_fastif.toy import train_mlp_classifier  # noqa: E402

FRACTION_FLIPPED = 0.1
N_TRAIN = 1000
SEEDS = 5
DAMPING = 1e-3
TOPS = (0.1, 0.2)


def digits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    X, _, y, _ = load_digits_split(split="permutation", n_train=N_TRAIN, n_test=0,
                                   random_state=seed)
    return X, y


def classification(seed: int) -> tuple[np.ndarray, np.ndarray]:
    X, _, y, _ = make_classification_split(
        N_TRAIN, 0, n_features=20, n_informative=10, n_redundant=0, n_classes=3,
        class_sep=1.5, standardize=True, random_state=seed)
    return X, y


# name: (data, options of train_mlp_classifier)
DATASETS: dict[str, tuple[Callable[[int], tuple[np.ndarray, np.ndarray]], dict]] = {
    "digits": (digits, dict(n_hidden=32, max_epochs=30)),
    "make_classification": (classification, dict(n_hidden=32, max_epochs=40)),
    "digits, memorised": (digits, dict(n_hidden=256, max_epochs=300)),
}


def rankings(X: np.ndarray, y_noisy: np.ndarray, seed: int, options: dict
             ) -> tuple[dict[str, np.ndarray], float]:
    """The three rankings of the training points, and the training accuracy on ``y_noisy``."""
    net = train_mlp_classifier(X, y_noisy, random_state=seed, **options)
    proba = net.predict_proba(X)
    explainer = InfluenceExplainer(net, params=["output"], solver=Exact(damping=DAMPING))
    scores = {
        "self-influence": explainer.fit(X, y_noisy).self_influence(),
        "training loss": -np.log(np.clip(proba[np.arange(len(X)), y_noisy], 1e-30, None)),
        "random": np.random.RandomState(seed).permutation(len(X)).astype(float),
    }
    return scores, float(np.mean(proba.argmax(1) == y_noisy))


def run_dataset(name: str, n_seeds: int) -> dict:
    make, options = DATASETS[name]
    start = time.perf_counter()
    figures: dict[str, dict[str, list[float]]] = {}
    accuracies = []
    for seed in range(n_seeds):
        X, y = make(seed)
        y_noisy, flipped = flip_labels(y, FRACTION_FLIPPED, random_state=seed)
        is_flipped = np.isin(np.arange(len(y)), flipped)
        scores, accuracy = rankings(X, y_noisy, seed, options)
        accuracies.append(accuracy)
        for ranking, values in scores.items():
            inspected, found, auc = mislabel_detection_curve(values, is_flipped)
            row = figures.setdefault(ranking, {})
            for top in TOPS:
                row.setdefault(f"top {top:.0%}", []).append(float(np.interp(top, inspected,
                                                                             found)))
            row.setdefault("AUC", []).append(auc)
    return {"dataset": name, "figures": figures, "accuracy": accuracies,
            "seconds": time.perf_counter() - start}


def rst_table(header: list[str], rows: list[list[str]]) -> str:
    cells = [header] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([rule, line(header), rule, *map(line, rows), rule])


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def table(results: list[dict]) -> str:
    columns = [f"top {top:.0%}" for top in TOPS] + ["AUC"]
    header = ["data set", "training accuracy", "ranking"] + [
        f"found in {c}" if c != "AUC" else c for c in columns]
    rows = []
    for r in results:
        for i, (ranking, figures) in enumerate(r["figures"].items()):
            first = [r["dataset"], mean_std(r["accuracy"])] if i == 0 else ["", ""]
            rows.append(first + [ranking] + [mean_std(figures[c]) for c in columns])
    return rst_table(header, rows)


def verdicts(results: list[dict]) -> list[str]:
    """One line per data set and figure: is self-influence better than the loss, by more than
    the spread of the paired differences over the seeds?"""
    lines = []
    for r in results:
        mine, loss = r["figures"]["self-influence"], r["figures"]["training loss"]
        parts = []
        for column in [f"top {top:.0%}" for top in TOPS] + ["AUC"]:
            diff = np.asarray(mine[column]) - np.asarray(loss[column])
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
            verdict = ("better" if diff.mean() > 2 * se else
                       "worse" if diff.mean() < -2 * se else "no clear difference")
            parts.append(f"{column} {diff.mean():+.3f} ({verdict})")
        lines.append(f"* {r['dataset']}: self-influence minus loss, paired over the seeds "
                     f"(verdict at 2 standard errors): " + "; ".join(parts) + ".")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--out", default=str(HERE / "results" / "mislabels.rst"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for name in DATASETS:
        results.append(run_dataset(name, args.seeds))
        print(f"{name}: done in {results[-1]['seconds']:.0f} s", flush=True)
    text_table = table(results)
    lines = verdicts(results)
    print()
    print(text_table)
    print()
    print("\n".join(lines))
    machine = (f"{platform.platform()}, Python {platform.python_version()}, torch "
               f"{torch.__version__}, 1 thread")
    seconds = ", ".join(f"{r['dataset']} {r['seconds']:.0f} s" for r in results)
    text = "\n".join([
        ".. Generated by benchmarks/mislabels.py; do not edit.",
        "",
        f"{N_TRAIN} training rows, {FRACTION_FLIPPED:.0%} of the labels flipped, "
        f"{args.seeds} seeds (mean ± standard deviation); self-influence of the last layer, "
        f"Exact(damping={DAMPING:g}), Gauss-Newton; training accuracy on the noisy labels; "
        f"{machine}; {seconds}.",
        "",
        text_table, "", *lines, "",
    ])
    Path(args.out).write_text(text)
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
