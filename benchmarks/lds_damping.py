"""damping="auto" against the best fixed damping, judged by retraining (LDS).

For each problem the script fits one net, then scores the influences of ``Exact(damping=d)``
for ``d`` in ``DAMPINGS`` (17 values, 1e-4 to 1, four per decade) and of
``Exact(damping="auto")`` by the linear datamodeling score, with **one**
:func:`sk_fastif.metrics.make_influence_scorer` ``("lds", n_subsets=N_SUBSETS, fraction=0.5,
random_state=0)`` per problem, so that every damping is judged on the same retrained nets (the
script checks that the scorer trained exactly ``N_SUBSETS`` nets per problem). It also scores
the dampings that other rules give, each computed from the exact spectrum of the curvature
(``Exact``'s ``eigenvalues_``): ``0.01 top`` (0.01 times the largest eigenvalue, the rule of
``damping="auto"`` before), ``tr/n``, ``tr/P`` and ``tr/min(n,P)`` (the trace over the
training rows, over the parameters, over the smaller of the two: the current rule with the
exact trace instead of its estimate; its floor, the top eigenvalue over 1,000, is inactive on
all problems here).

LDS protocol (the scorer's): draw ``N_SUBSETS`` random subsets of half the training rows (seed
0); train a clone of the net (same module, optimizer, epochs; a fresh initialisation from its
own seed, drawn from the same stream) on each; for each test point take the Spearman
correlation, over the subsets, between the predicted loss (the full net's test loss plus the
influence scores of the rows left out) and the retrained net's test loss; the LDS is the mean
over the test points (true labels). Curvature is the default Gauss-Newton, all parameters.

Problems (data seed 0 unless said, net seed 0, ``torch.set_num_threads(1)``). The first three
were used to design the rule of ``damping="auto"``; the last two (``held out``) were chosen
before their figures were seen and were not used to design it:

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
* ``MLP breast_cancer`` (held out): scikit-learn's breast cancer data (569 rows, 30 features,
  2 classes), standardized, a random 469 / 100 split (seed 0); a 30-32-2 tanh MLP (1,058
  parameters), same training.
* ``logreg make_classification`` (held out): the ``make_classification`` problem above with
  data seed 1; logistic regression as in ``logreg digits`` (``torch.nn.Linear(20, 3)``, 63
  parameters).

The solver is ``Exact`` on all (at most 2,410 parameters: small enough for the explicit
matrix; ``solver="auto"`` would pick ``Exact`` only up to 512 parameters and block CG to 1e-2
above, whose scores agree with ``Exact``'s at a per-row correlation >= 0.99), so the
comparison is of the damping alone, not of solver error.

Run: ``OMP_NUM_THREADS=1 python benchmarks/lds_damping.py`` (about 10 minutes on one core). It
prints the tables and writes them to ``benchmarks/results/lds_damping.rst``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.datasets import load_breast_cancer
from skorch import NeuralNetClassifier

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmark this checkout, not an installed sk_fastif

from sk_fastif import InfluenceExplainer  # noqa: E402
from sk_fastif.datasets import load_digits_split, make_classification_split  # noqa: E402
from sk_fastif.metrics import linear_datamodeling_score, make_influence_scorer  # noqa: E402
from sk_fastif.solvers import Exact  # noqa: E402
from sk_fastif.toy import train_mlp_classifier  # noqa: E402

N_SUBSETS = 50
FRACTION = 0.5
SEED = 0
DAMPINGS = [float(d) for d in np.logspace(-4, 0, 17)]
WITHIN = 0.05  # the target: LDS at most this much below the best fixed damping


def _logreg(X_train, X_test, y_train, y_test, *, n_classes):
    """A multinomial logistic regression (weight decay 1e-3, Adam) and its data."""
    torch.manual_seed(SEED)
    net = NeuralNetClassifier(torch.nn.Linear, module__in_features=X_train.shape[1],
                              module__out_features=n_classes,
                              criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam,
                              optimizer__weight_decay=1e-3, lr=0.01, max_epochs=100,
                              batch_size=64, train_split=None, verbose=0)
    return net.fit(X_train, y_train), X_train, X_test, y_train, y_test


def logreg_digits():
    X_train, X_test, y_train, y_test = load_digits_split(split="permutation", n_train=1000,
                                                         n_test=200, random_state=SEED)
    return _logreg(X_train, X_test, y_train, y_test, n_classes=10)


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


def mlp_breast_cancer():
    X, y = load_breast_cancer(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0)).astype("float32")
    y = y.astype("int64")
    order = np.random.RandomState(SEED).permutation(len(y))
    train, test = order[:469], order[469:]
    net = train_mlp_classifier(X[train], y[train], n_hidden=32, max_epochs=40, random_state=SEED)
    return net, X[train], X[test], y[train], y[test]


def logreg_classification():
    X_train, X_test, y_train, y_test = make_classification_split(
        1800, 200, n_features=20, n_informative=10, n_redundant=0, n_classes=3,
        standardize=True, random_state=1)
    return _logreg(X_train, X_test, y_train, y_test, n_classes=3)


# name: (problem, held out: not used to design the rule of damping="auto")
PROBLEMS = {
    "logreg digits": (logreg_digits, False),
    "MLP digits": (mlp_digits, False),
    "MLP make_classification": (mlp_classification, False),
    "MLP breast_cancer": (mlp_breast_cancer, True),
    "logreg make_classification": (logreg_classification, True),
}

# Rules for the damping, as functions of the exact spectrum w, the rows n and the parameters P.
RULES = {
    "0.01 top": lambda w, n, P: 0.01 * float(np.abs(w).max()),
    "tr/n": lambda w, n, P: float(w.sum()) / n,
    "tr/P": lambda w, n, P: float(w.sum()) / P,
    "tr/min(n,P)": lambda w, n, P: float(w.sum()) / min(n, P),
}


def run_problem(name, make, held_out):
    start = time.perf_counter()
    net, X_train, X_test, y_train, y_test = make()
    accuracy = float(np.mean(net.predict(X_test) == y_test))
    n_params = sum(p.numel() for p in net.module_.parameters())
    scorer = make_influence_scorer("lds", n_subsets=N_SUBSETS, fraction=FRACTION,
                                   random_state=SEED)

    def lds(damping):
        explainer = InfluenceExplainer(net, solver=Exact(damping=damping)).fit(X_train, y_train)
        return scorer(explainer, X_test, y_test), explainer

    auto_lds, auto = lds("auto")  # trains the nets, once
    fixed = [lds(d)[0] for d in DAMPINGS]
    spectrum = InfluenceExplainer(net, solver=Exact(damping=1.0)).fit(X_train, y_train)
    w = np.asarray(spectrum.solver_.eigenvalues_, dtype=np.float64)
    rules = {}
    for rule, damping_of in RULES.items():
        damping = damping_of(w, len(y_train), n_params)
        rules[rule] = (damping, lds(damping)[0])
    if scorer.n_retrainings_ != N_SUBSETS:
        raise RuntimeError(f"{name}: the scorer trained {scorer.n_retrainings_} nets, "
                           f"not {N_SUBSETS}")
    best = int(np.argmax(fixed))
    return {
        "problem": name, "held_out": held_out, "n_train": len(y_train), "n_test": len(y_test),
        "n_params": n_params, "accuracy": accuracy,
        "auto_damping": float(auto.solver_.auto_damping_),
        "top_eigenvalue": float(auto.solver_.top_eigenvalue_estimate_),
        "trace": float(w.sum()), "auto_lds": auto_lds, "best_damping": DAMPINGS[best],
        "best_lds": fixed[best], "fixed": fixed, "rules": rules,
        "seconds": time.perf_counter() - start,
    }


CONFIDENT = 1e-4  # --diagnose: test points the net fits with a loss below this


def diagnose(name):
    """Per-test-point LDS of a few dampings, split by the full net's test loss.

    Prints, for the test points whose loss is below ``CONFIDENT`` and for the others, the mean
    Spearman correlation of ``damping="auto"`` and of fixed dampings (on one set of
    ``N_SUBSETS`` retrained nets), and how many distinct values the retrained nets' test
    losses take (float32 rounds a loss near zero to a few values, or to zero).
    """
    make, _ = PROBLEMS[name]
    net, X_train, X_test, y_train, y_test = make()
    fit = net.predict_proba(X_train)[np.arange(len(y_train)), y_train].astype(np.float64)
    print(f"{name}: training accuracy {np.mean(net.predict(X_train) == y_train):.3f}, median "
          f"training loss {np.median(-np.log(np.maximum(fit, 1e-300))):.2g}")
    proba = net.predict_proba(X_test)[np.arange(len(y_test)), y_test]
    loss = -np.log(np.maximum(proba.astype(np.float64), 1e-300))
    auto = InfluenceExplainer(net, solver=Exact(damping="auto")).fit(X_train, y_train)
    res = linear_datamodeling_score(auto, X_train, y_train, X_test, y_test,
                                    n_subsets=N_SUBSETS, fraction=FRACTION, random_state=SEED)
    left_out = np.ones((N_SUBSETS, len(y_train)), dtype=bool)
    for s, keep in enumerate(res.subsets):
        left_out[s, keep] = False
    distinct = np.array([len(np.unique(a)) for a in res.actual.T])
    confident = loss < CONFIDENT
    print(f"{name}: {confident.sum()} of {len(y_test)} test losses below {CONFIDENT:g}; "
          f"distinct retrained losses per test point (of {N_SUBSETS}), median: "
          f"{np.median(distinct[confident]):.0f} there, {np.median(distinct[~confident]):.0f} "
          "elsewhere")
    for damping in ["auto", 1e-3, 1e-2, 1e-1, 1.0]:
        explainer = auto if damping == "auto" else InfluenceExplainer(
            net, solver=Exact(damping=damping)).fit(X_train, y_train)
        predicted = left_out.astype(np.float64) @ explainer.influences(X_test, y_test).T
        per_test = np.array([
            spearmanr(p, a)[0] if np.ptp(p) > 0 and np.ptp(a) > 0 else np.nan
            for p, a in zip(predicted.T, res.actual.T)])
        print(f"  damping {damping}: LDS {np.nanmean(per_test):.3f}; loss < {CONFIDENT:g}: "
              f"{np.nanmean(per_test[confident]):.3f}, loss >= {CONFIDENT:g}: "
              f"{np.nanmean(per_test[~confident]):.3f}")


def rst_table(header, rows):
    cells = [header] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)

    def line(row):
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([rule, line(header), rule, *map(line, rows), rule])


def label(r):
    return r["problem"] + (" (held out)" if r["held_out"] else "")


def tables(results):
    summary = rst_table(
        ["problem", "auto damping", "LDS auto", "best damping", "best LDS", "difference",
         f"within {WITHIN:g}"],
        [[label(r), f"{r['auto_damping']:.3g}", f"{r['auto_lds']:.3f}",
          f"{r['best_damping']:.3g}", f"{r['best_lds']:.3f}",
          f"{r['auto_lds'] - r['best_lds']:+.3f}",
          "yes" if r["auto_lds"] >= r["best_lds"] - WITHIN else "no"] for r in results])
    rules = rst_table(
        ["problem"] + list(RULES),
        [[label(r)] + [f"{d:.3g}: {v - r['best_lds']:+.3f}" for d, v in r["rules"].values()]
         for r in results])
    detail = rst_table(
        ["problem"] + [f"{d:.3g}" for d in DAMPINGS] + ["auto"],
        [[r["problem"]] + [f"{v:.3f}" for v in r["fixed"]] + [f"{r['auto_lds']:.3f}"]
         for r in results])
    facts = rst_table(
        ["problem", "n_train", "n_test", "parameters", "test accuracy", "top eigenvalue",
         "trace", "seconds"],
        [[r["problem"], str(r["n_train"]), str(r["n_test"]), str(r["n_params"]),
          f"{r['accuracy']:.3f}", f"{r['top_eigenvalue']:.3g}", f"{r['trace']:.3g}",
          f"{r['seconds']:.0f}"] for r in results])
    return summary, rules, detail, facts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results" / "lds_damping.rst"))
    parser.add_argument("--problems", nargs="*", default=list(PROBLEMS),
                        help="names of the problems to run (default: all)")
    parser.add_argument("--diagnose", action="store_true",
                        help="only print the per-test-point LDS of the problems, split by "
                             "the test loss (writes nothing)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.diagnose:
        for name in args.problems:
            diagnose(name)
        return
    results = []
    for name in args.problems:
        make, held_out = PROBLEMS[name]
        results.append(run_problem(name, make, held_out))
        print(f"{name}: done in {results[-1]['seconds']:.0f} s", flush=True)
    summary, rules, detail, facts = tables(results)
    rules_text = ("Damping (and LDS minus the best fixed damping's) of other rules, from the "
                  "exact spectrum (tr: trace of H, n: training rows, P: parameters; tr/min(n,P) "
                  "is the current rule with the exact trace):")
    print()
    print(summary)
    print()
    print(rules_text)
    print(rules)
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
        f"{SEED}), Exact solver, Gauss-Newton curvature; {machine}. damping=\"auto\" is "
        "max(tr(H) / min(n, P), top / 1000), the trace from 30 Rademacher probes; \"best\" is "
        f"the best of {len(DAMPINGS)} fixed dampings from {DAMPINGS[0]:g} to {DAMPINGS[-1]:g}.",
        "",
        summary, "", rules_text, "", rules, "", "LDS of every damping:", "", detail, "", facts,
        "",
    ])
    Path(args.out).write_text(text)
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
