"""damping="auto" against the best fixed damping, judged by retraining (LDS).

For each of three problems the script fits one net, then scores the influences of
``Exact(damping=d)`` for ``d`` in ``DAMPINGS`` (7 values, 1e-4 to 1, evenly spaced in log) and of
``Exact(damping="auto")`` by the linear datamodeling score, with **one**
:func:`sk_fastif.metrics.make_influence_scorer` ``("lds", n_subsets=N_SUBSETS, fraction=0.5,
random_state=0)`` per problem, so that every damping is judged on the same retrained nets (the
script checks that the scorer trained exactly ``N_SUBSETS`` nets per problem).

LDS protocol (the scorer's): draw ``N_SUBSETS`` random subsets of half the training rows (seed
0); train a clone of the net (same module, optimizer, epochs; a fresh initialisation from its
own seed, drawn from the same stream) on each; for each test point take the Spearman
correlation, over the subsets, between the predicted loss (the full net's test loss plus the
influence scores of the rows left out) and the retrained net's test loss; the LDS is the mean
over the test points (true labels). Curvature is the default Gauss-Newton, all parameters.

Problems (data seed 0, net seed 0, ``torch.set_num_threads(1)``):

* ``logreg digits``: multinomial logistic regression, a skorch net around one
  ``torch.nn.Linear(64, 10)`` (650 parameters), Adam, ``lr=0.01``, ``weight_decay=1e-3``, 100
  epochs of minibatches of 64, on 1,000 digits (200 test points). Convex with a unique minimiser
  (the weight decay), so the retrained nets do not depend on their initialisation much; the
  Hessian of the penalised objective is ``H + 1e-3 I``, so a damping near 1e-3 is the one the
  training objective implies.
* ``MLP digits``: a 64-32-10 tanh MLP (:func:`sk_fastif.toy.train_mlp_classifier`, 2,410
  parameters), Adam, ``lr=0.01``, 40 epochs, same split.
* ``MLP make_classification``: ``make_classification`` with 2,000 rows (1,800 training, 200
  test), 20 features (10 informative), 3 classes, standardized; a 20-32-3 tanh MLP (771
  parameters), same training.

The solver is ``Exact`` on all three (650, 2,410 and 771 parameters: small enough for the
explicit matrix; ``solver="auto"`` would pick ``Exact`` only up to 512 parameters and block CG to
1e-2 above, whose scores agree with ``Exact``'s at a per-row correlation >= 0.99), so the
comparison is of the damping alone, not of solver error.

Run: ``OMP_NUM_THREADS=1 python benchmarks/lds_damping.py`` (about 3 minutes on one core). It
prints the summary table and the LDS of every damping, and writes both to
``benchmarks/results/lds_damping.rst``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skorch import NeuralNetClassifier

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmark this checkout, not an installed sk_fastif

from sk_fastif import InfluenceExplainer  # noqa: E402
from sk_fastif.datasets import load_digits_split, make_classification_split  # noqa: E402
from sk_fastif.metrics import make_influence_scorer  # noqa: E402
from sk_fastif.solvers import Exact  # noqa: E402
from sk_fastif.toy import train_mlp_classifier  # noqa: E402

N_SUBSETS = 50
FRACTION = 0.5
SEED = 0
DAMPINGS = [float(d) for d in np.logspace(-4, 0, 7)]


def logreg_digits():
    X_train, X_test, y_train, y_test = load_digits_split(split="permutation", n_train=1000,
                                                         n_test=200, random_state=SEED)
    torch.manual_seed(SEED)
    net = NeuralNetClassifier(torch.nn.Linear, module__in_features=64, module__out_features=10,
                              criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam,
                              optimizer__weight_decay=1e-3, lr=0.01, max_epochs=100,
                              batch_size=64, train_split=None, verbose=0)
    return net.fit(X_train, y_train), X_train, X_test, y_train, y_test


def mlp_digits():
    X_train, X_test, y_train, y_test = load_digits_split(split="permutation", n_train=1000,
                                                         n_test=200, random_state=SEED)
    net = train_mlp_classifier(X_train, y_train, n_hidden=32, max_epochs=40, random_state=SEED)
    return net, X_train, X_test, y_train, y_test


def mlp_classification():
    X_train, X_test, y_train, y_test = make_classification_split(
        1800, 200, n_features=20, n_informative=10, n_redundant=0, n_classes=3,
        standardize=True, random_state=SEED)
    net = train_mlp_classifier(X_train, y_train, n_hidden=32, max_epochs=40, random_state=SEED)
    return net, X_train, X_test, y_train, y_test


PROBLEMS = {
    "logreg digits": logreg_digits,
    "MLP digits": mlp_digits,
    "MLP make_classification": mlp_classification,
}


def run_problem(name, make):
    start = time.perf_counter()
    net, X_train, X_test, y_train, y_test = make()
    accuracy = float(np.mean(net.predict(X_test) == y_test))
    n_params = sum(p.numel() for p in net.module_.parameters())
    scorer = make_influence_scorer("lds", n_subsets=N_SUBSETS, fraction=FRACTION,
                                   random_state=SEED)
    auto = InfluenceExplainer(net, solver=Exact(damping="auto")).fit(X_train, y_train)
    auto_lds = scorer(auto, X_test, y_test)  # trains the nets, once
    fixed = []
    for d in DAMPINGS:
        explainer = InfluenceExplainer(net, solver=Exact(damping=d)).fit(X_train, y_train)
        fixed.append(scorer(explainer, X_test, y_test))
    if scorer.n_retrainings_ != N_SUBSETS:
        raise RuntimeError(f"{name}: the scorer trained {scorer.n_retrainings_} nets, "
                           f"not {N_SUBSETS}")
    best = int(np.argmax(fixed))
    return {
        "problem": name, "n_train": len(y_train), "n_test": len(y_test), "n_params": n_params,
        "accuracy": accuracy, "auto_damping": float(auto.solver_.auto_damping_),
        "top_eigenvalue": float(auto.solver_.top_eigenvalue_estimate_), "auto_lds": auto_lds,
        "best_damping": DAMPINGS[best], "best_lds": fixed[best], "fixed": fixed,
        "seconds": time.perf_counter() - start,
    }


def rst_table(header, rows):
    cells = [header] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(row):
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([rule, line(header), rule, *map(line, rows), rule])


def tables(results):
    summary = rst_table(
        ["problem", "auto damping", "LDS auto", "best damping", "best LDS", "difference"],
        [[r["problem"], f"{r['auto_damping']:.3g}", f"{r['auto_lds']:.3f}",
          f"{r['best_damping']:.3g}", f"{r['best_lds']:.3f}",
          f"{r['auto_lds'] - r['best_lds']:+.3f}"] for r in results])
    detail = rst_table(
        ["problem"] + [f"{d:.3g}" for d in DAMPINGS] + ["auto"],
        [[r["problem"]] + [f"{v:.3f}" for v in r["fixed"]] + [f"{r['auto_lds']:.3f}"]
         for r in results])
    facts = rst_table(
        ["problem", "n_train", "n_test", "parameters", "test accuracy", "top eigenvalue",
         "seconds"],
        [[r["problem"], str(r["n_train"]), str(r["n_test"]), str(r["n_params"]),
          f"{r['accuracy']:.3f}", f"{r['top_eigenvalue']:.3g}", f"{r['seconds']:.0f}"]
         for r in results])
    return summary, detail, facts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "lds_damping.rst"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for name, make in PROBLEMS.items():
        results.append(run_problem(name, make))
        print(f"{name}: done in {results[-1]['seconds']:.0f} s", flush=True)
    summary, detail, facts = tables(results)
    print()
    print(summary)
    print()
    print("LDS of every damping (Exact solver):")
    print(detail)
    print()
    print(facts)
    machine = (f"{platform.platform()}, Python {platform.python_version()}, torch "
               f"{torch.__version__}, 1 thread")
    text = "\n".join([
        ".. Generated by benchmarks/lds_damping.py; do not edit.",
        "",
        f"LDS with {N_SUBSETS} subsets of {FRACTION:g} of the training rows (random_state="
        f"{SEED}), Exact solver, Gauss-Newton curvature; {machine}.",
        "",
        summary, "", "LDS of every damping:", "", detail, "", facts, "",
    ])
    Path(args.out).write_text(text)
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
