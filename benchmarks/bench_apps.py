"""The applications on digits: error correction, mislabel detection and the step test.

Three parts, each printing a markdown table of the mean and standard deviation over seeds:

(a) Error correction on the shortcut digits (:func:`~sk_fastif.datasets.make_shortcut_digits`,
    FastIF's HANS experiment in miniature). A tanh MLP trained by SGD on images whose marker
    pixel gives the label away (``--agreement`` of them) is corrected with ``correct`` on its
    errors in one part of the challenge split (where the marker never agrees), keeping the
    best step on a second part, and evaluated on a third. Strategies: ``helpful`` (influence,
    recomputed every step, and ``refresh=None``: the original net's influence throughout),
    ``random`` and ``anchors``; drawn from the training set, or from an outside labelled pool
    (a fourth part of the challenge split). The time of each correction is reported beside it.
(b) Mislabel detection: digits with 10% of the training labels flipped; the fraction of the
    flips found in the top 10% and 20% by self-influence and by training loss (the baseline),
    and the area under the detection curve.
(c) ``step_test`` on digits: the mean test-loss change after one step on the 10 most helpful,
    10 random and 10 most harmful training points, and how often its sign is the expected one.

Run: ``python benchmarks/bench_apps.py`` (5 seeds; about 10 minutes on two busy CPU cores);
``--quick`` is a 2-seed smoke run. The tables of a full run are in docs/applications.rst.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

# benchmark this checkout, not an installed sk_fastif
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import flip_labels, load_digits_split, make_shortcut_digits
from sk_fastif.metrics import mislabel_detection_curve, step_test
from sk_fastif.solvers import Exact
from sk_fastif.toy import train_digits_net, train_mlp_classifier


def _table(title: str, rows: dict[str, list[float]], fmt: str = "{:.3f}") -> None:
    print(f"\n### {title}\n\n| | mean | std | min | max |\n|---|---|---|---|---|")
    for name, values in rows.items():
        v = np.asarray(values, dtype=float)
        cells = [fmt.format(x) for x in (v.mean(), v.std(), v.min(), v.max())]
        print(f"| {name} | " + " | ".join(cells) + " |")


def correction(seeds, args) -> None:
    rows: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    for seed in seeds:
        X_tr, X_ch, y_tr, y_ch = make_shortcut_digits(
            n_train=args.n_train, agreement=args.agreement, random_state=seed)
        net = train_mlp_classifier(X_tr, y_tr, n_out=10, random_state=seed, lr=0.2,
                                   max_epochs=args.epochs, optimizer=torch.optim.SGD)
        (Xa, ya), (Xv, yv), (Xt, yt), (Xp, yp) = [
            (X_ch[p], y_ch[p]) for p in np.array_split(np.arange(len(X_ch)), 4)]
        wrong = net.predict(Xa) != ya
        expl = InfluenceExplainer(net, params=["output"], solver=Exact(damping=args.damping))
        expl.fit(X_tr, y_tr)
        acc = {"before": float(np.mean(net.predict(Xt) == yt))}
        variants = {
            "helpful, training set": dict(strategy="helpful"),
            "helpful, training set, refresh=None": dict(strategy="helpful", refresh=None),
            "random, training set": dict(strategy="random"),
            "anchors": dict(strategy="anchors"),
            "helpful, outside pool": dict(strategy="helpful", X_pool=Xp, y_pool=yp),
            "random, outside pool": dict(strategy="random", X_pool=Xp, y_pool=yp),
        }
        for name, options in variants.items():
            t0 = time.perf_counter()
            fixed = expl.correct(Xa[wrong], ya[wrong], n_steps=args.steps, n_anchors=10,
                                 n_helpful=10, lr=args.lr, X_val=Xv, y_val=yv,
                                 random_state=seed, **options)
            times.setdefault(name, []).append(time.perf_counter() - t0)
            acc[name] = float(np.mean(fixed.predict(Xt) == yt))
        for name, value in acc.items():
            rows.setdefault(f"challenge accuracy: {name}", []).append(value)
        for base in ("training set", "outside pool"):
            rows.setdefault(f"helpful - random, {base}", []).append(
                acc[f"helpful, {base}"] - acc[f"random, {base}"])
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
    _table(f"(a) Shortcut digits: challenge accuracy after {args.steps} steps "
           f"(agreement {args.agreement}, lr {args.lr}, {len(seeds)} seeds)", rows)
    _table("(a) Seconds per correction", times, "{:.1f}")


def mislabels(seeds, args) -> None:
    rows: dict[str, list[float]] = {}
    for seed in seeds:
        X, _, y, _ = load_digits_split(split="permutation", n_train=1000, n_test=0,
                                       random_state=seed)
        y_noisy, flipped = flip_labels(y, 0.1, random_state=seed)
        is_flipped = np.isin(np.arange(len(y)), flipped)
        net = train_mlp_classifier(X, y_noisy, n_out=10, random_state=seed, max_epochs=30)
        expl = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3))
        rankings = {
            "self-influence": expl.fit(X, y_noisy).self_influence(),
            "training loss": -np.log(net.predict_proba(X)[np.arange(len(X)), y_noisy]),
        }
        for name, scores in rankings.items():
            inspected, found, auc = mislabel_detection_curve(scores, is_flipped)
            for f in (0.1, 0.2):
                rows.setdefault(f"{name}: found in top {f:.0%}", []).append(
                    float(np.interp(f, inspected, found)))
            rows.setdefault(f"{name}: AUC", []).append(auc)
    _table(f"(b) Mislabel detection, digits, 1000 training images, 10% flipped "
           f"({len(seeds)} seeds)", rows)


def step_tests(seeds, args) -> None:
    rows: dict[str, list[float]] = {}
    for seed in seeds:
        net, X_tr, X_te, y_tr, y_te = train_digits_net(
            seed, split="permutation", n_train=1000, n_test=50, max_epochs=30)
        expl = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3))
        res = step_test(expl.fit(X_tr, y_tr), X_te, y_te, k=10, lr=0.05, random_state=seed)
        for name in ("helpful", "random", "harmful"):
            rows.setdefault(f"mean loss change, {name}", []).append(float(res[name].mean()))
        rows.setdefault("fraction where helpful lowers the loss", []).append(res.helpful_lowers)
        rows.setdefault("fraction where harmful raises the loss", []).append(res.harmful_raises)
    _table(f"(c) step_test on digits, 50 test images, k=10, lr=0.05 ({len(seeds)} seeds)",
           rows, "{:+.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, a smoke run")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--part", choices=["all", "correct", "mislabels", "step"],
                        default="all")
    parser.add_argument("--agreement", type=float, default=0.95)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--damping", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", category=UserWarning)
    seeds = list(range(2 if args.quick else args.seeds))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread")
    if args.part in ("all", "correct"):
        correction(seeds, args)
    if args.part in ("all", "mislabels"):
        mislabels(seeds, args)
    if args.part in ("all", "step"):
        step_tests(seeds, args)


if __name__ == "__main__":
    main()
