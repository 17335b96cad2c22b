"""Tuning benchmark: what a grid search over solver settings costs, and what it saves.

A ``GridSearchCV`` over ``CG`` and ``LiSSA`` settings for a digits MLP (FastIF's setting: the top
layer only), scored on held-out queries, timed in four set-ups run in the same process:

* ``reference, cached``: :func:`sk_fastif.metrics.make_influence_scorer` against ``Exact``, whose
  influences are computed once for all candidates (the library's behaviour);
* ``reference, per candidate``: the same scorer with its cache emptied before every call, i.e. the
  reference recomputed for each candidate (the baseline);
* ``residual score``: the explainer's own reference-free ``score``;
* ``unfitted net``: the explainer given the *unfitted* net, so each candidate trains its own copy
  (what a search would cost if cloning the explainer discarded the fitted net).

Run: ``python benchmarks/bench_tuning.py`` (about a minute on two CPU cores).
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
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, PredefinedSplit

from sk_fastif import InfluenceExplainer
from sk_fastif.metrics import make_influence_scorer
from sk_fastif.solvers import CG, Exact, LiSSA
from sk_fastif.toy import train_digits_net


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-queries", type=int, default=20)
    parser.add_argument("--damping", type=float, default=0.01)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    net, X_train, X_test, y_train, y_test = train_digits_net(random_state=0)
    train_time = time.perf_counter() - t0
    Xq, yq = X_test[: args.n_queries], y_test[: args.n_queries]
    X_all, y_all = np.vstack([X_train, Xq]), np.concatenate([y_train, yq])
    split = PredefinedSplit(np.r_[np.full(len(X_train), -1), np.zeros(len(Xq), dtype=int)])
    d = args.damping
    grid = [
        {"solver": [CG(damping=d)], "solver__max_iter": [2, 5, 20, 100]},
        {"solver": [LiSSA(damping=d, batch_size=64, random_state=0)], "solver__depth": [20, 100]},
    ]
    n_candidates = 6
    print(f"digits MLP: {len(X_train)} training points, {len(Xq)} queries, top layer "
          f"(params=['output']), damping={d}; {n_candidates} candidates; net trained in "
          f"{train_time:.1f} s")

    def search(estimator, scoring):
        gs = GridSearchCV(InfluenceExplainer(estimator, params=["output"]), grid,
                          scoring=scoring, cv=split, refit=False)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gs.fit(X_all, y_all)
        return gs, time.perf_counter() - start

    cached = make_influence_scorer("spearman", reference=Exact(damping=d))
    gs_cached, t_cached = search(net, cached)

    uncached = make_influence_scorer("spearman", reference=Exact(damping=d))

    def per_candidate(estimator, X, y=None):
        uncached._cache.clear()
        return uncached(estimator, X, y)

    gs_uncached, t_uncached = search(net, per_candidate)
    assert np.allclose(gs_cached.cv_results_["mean_test_score"],
                       gs_uncached.cv_results_["mean_test_score"])
    _, t_residual = search(net, None)
    _, t_unfitted = search(clone(net), None)

    rows = [
        ("reference, per candidate (baseline)", t_uncached, uncached.n_reference_computations_),
        ("reference, cached", t_cached, cached.n_reference_computations_),
        ("residual score (no reference)", t_residual, 0),
        ("unfitted net: trains a copy per candidate", t_unfitted, 0),
    ]
    print()
    print(f"{'set-up':<44s} {'seconds':>8s} {'Exact runs':>10s} {'vs baseline':>12s}")
    for name, seconds, n_ref in rows:
        print(f"{name:<44s} {seconds:8.2f} {n_ref:10d} {seconds / t_uncached:11.2f}x")

    print()
    res = gs_cached.cv_results_
    print(f"{'candidate':<26s} {'Spearman vs Exact':>18s} {'mean_score_time (s)':>20s}")
    for params, score, seconds in zip(res["params"], res["mean_test_score"],
                                      res["mean_score_time"]):
        solver = params["solver"]
        name = type(solver).__name__ + (f"(max_iter={params['solver__max_iter']})"
                                        if "solver__max_iter" in params
                                        else f"(depth={params['solver__depth']})")
        print(f"{name:<26s} {score:18.4f} {seconds:20.3f}")
    print("(the first candidate's score time includes the one Exact reference)")


if __name__ == "__main__":
    main()
