"""Parallel scoring: the speed-up of joblib workers, Dask's overhead and the first call's cost.

One fitted explainer (a tanh MLP on ``make_classification`` data, exact Hessian, ``CG``) scores
``--n-test`` test points against every training point, sequentially and with ``n_jobs=2`` (loky
worker processes), threads, and a Dask ``LocalCluster`` (2 worker processes, 1 thread each,
on 127.0.0.1). Every configuration is timed twice in the same process: the first call pays for
starting the workers, the second is the steady state. The sequential run uses torch's default
number of threads; a second sequential run on one torch thread shows what one core does alone
(two workers on two cores can at best halve that). Ratios are against the sequential run of the
same process; agreement is the largest absolute difference from it.

Run: ``python benchmarks/bench_parallel.py`` (the issue's workload: 20,000 training rows, a
64-150-150-2 MLP with 32,852 parameters, 50 test points), ``--quick`` for a small smoke run.
On a machine with GPUs, ``--devices cuda:0 cuda:1`` binds the workers to them.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this file is in

from sk_fastif import InfluenceExplainer  # noqa: E402
from sk_fastif.datasets import make_classification_split  # noqa: E402
from sk_fastif.solvers import CG  # noqa: E402
from sk_fastif.toy import train_mlp_classifier  # noqa: E402


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=150)
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--devices", nargs="*", default=None)
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2,000 rows, 10 test points")
    args = parser.parse_args(argv)
    # CG runs a fixed number of iterations here (the same work in every configuration); the
    # filter reaches the workers too
    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    if args.quick:
        args.n_train, args.n_test, args.hidden, args.max_iter = 2000, 10, 64, 10

    X_train, X_test, y_train, y_test = make_classification_split(
        args.n_train, args.n_test, standardize=True, n_features=64, n_informative=16,
        random_state=0)
    net = train_mlp_classifier(X_train, y_train, n_hidden=args.hidden, n_hidden_layers=2,
                               max_epochs=3, random_state=0)
    expl = InfluenceExplainer(net, solver=CG(damping=1e-2, max_iter=args.max_iter, tol=1e-12),
                              curvature="gauss_newton", batch_size=256,
                              devices=args.devices).fit(X_train, y_train)
    print(f"{args.n_train} training rows, {expl.n_params_} parameters, {args.n_test} test "
          f"points, CG max_iter={args.max_iter}, Gauss-Newton curvature\n")

    rows = []
    base, t_seq = timed(expl.set_params(n_jobs=None).influences, X_test, y_test)
    _, t_seq2 = timed(expl.influences, X_test, y_test)
    rows.append((f"sequential (torch default: {torch.get_num_threads()} threads)", t_seq, t_seq2,
                 0.0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: what each worker gets, the ceiling of two workers
    try:
        one, t1 = timed(expl.influences, X_test, y_test)
        _, t2 = timed(expl.influences, X_test, y_test)
    finally:
        torch.set_num_threads(threads)
    rows.append(("sequential, 1 torch thread", t1, t2, float(np.abs(one - base).max())))

    def run(name, n_jobs, backend=None):
        expl.set_params(n_jobs=n_jobs)
        with joblib.parallel_config(backend=backend) if backend else _null():
            out, t1 = timed(expl.influences, X_test, y_test)
            _, t2 = timed(expl.influences, X_test, y_test)
        rows.append((name, t1, t2, float(np.abs(out - base).max())))

    run("loky, n_jobs=2", 2)
    run("threading, n_jobs=2", 2, "threading")
    if not args.no_dask:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            rows.append((f"dask: not installed ({exc})", np.nan, np.nan, np.nan))
        else:
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              dashboard_address=None, host="127.0.0.1") as cluster, \
                    Client(cluster):
                run("dask LocalCluster, 2 workers", 2, "dask")

    print("| configuration | first call (s) | later call (s) | speed-up (later) | max abs diff |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, t1, t2, diff in rows:
        print(f"| {name} | {t1:.2f} | {t2:.2f} | {t_seq2 / t2:.2f}x | {diff:.1e} |")
    loky = next(r for r in rows if r[0].startswith("loky"))
    dask = [r for r in rows if r[0].startswith("dask LocalCluster")]
    one_thread = next(r for r in rows if r[0].startswith("sequential, 1"))
    print(f"\nloky n_jobs=2 over one torch thread (later calls): {one_thread[2] / loky[2]:.2f}x")
    if dask:
        print(f"Dask over loky (later calls): {dask[0][2] / loky[2]:.2f}x")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
