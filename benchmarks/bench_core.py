"""Core speed benchmark: influences of 100 test points on every training point of a digits MLP.

Each solver of sk_fastif (vectorised per-sample gradients, block solves) is timed next to a naive
baseline run in the same process: one test point at a time, LiSSA by double back-propagation on
minibatches, and training gradients one example at a time, as the original FastIF code does. The
baseline is timed on ``--naive-points`` test points and scaled linearly to ``--n-test`` (it is
linear in the number of test points: nothing is shared between them). Agreement is measured
against ``Exact`` on the same curvature and damping.

Run: ``python benchmarks/bench_core.py`` (about two minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# benchmark this checkout, not an installed sk_fastif
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from sk_fastif import InfluenceExplainer
from sk_fastif.solvers import CG, Exact, LiSSA
from sk_fastif.toy import train_digits_net


def naive_influences(net, X_train, y_train, X_test, y_test, *, damping, scale, depth,
                     batch_size, seed=0):
    """FastIF-style reference loop: per test point, LiSSA by double backprop, then a loop."""
    module = net.module_
    module.eval()
    params = [p for p in module.parameters() if p.requires_grad]
    loss_fn = torch.nn.CrossEntropyLoss()
    Xtr, ytr = torch.as_tensor(X_train), torch.as_tensor(y_train)
    n = len(Xtr)
    out = np.empty((len(X_test), n))
    for i, (x, y) in enumerate(zip(torch.as_tensor(X_test), torch.as_tensor(y_test))):
        g = torch.autograd.grad(loss_fn(module(x[None]), y[None]), params)
        h = [gi.clone() for gi in g]
        rng = np.random.default_rng(seed)
        for _ in range(depth):
            idx = torch.as_tensor(rng.choice(n, batch_size, replace=False))
            loss = loss_fn(module(Xtr[idx]), ytr[idx])
            grads = torch.autograd.grad(loss, params, create_graph=True)
            hv = torch.autograd.grad(grads, params, grad_outputs=h)
            h = [gi + hi - (hvi + damping * hi) / scale for gi, hi, hvi in zip(g, h, hv)]
        s = torch.cat([hi.reshape(-1) for hi in h]) / scale
        for j in range(n):  # one training example at a time
            gj = torch.autograd.grad(loss_fn(module(Xtr[j : j + 1]), ytr[j : j + 1]), params)
            out[i, j] = float(s @ torch.cat([t.reshape(-1) for t in gj])) / n
    return out


def agreement(a, b, k=10):
    top = np.mean([len(set(np.argsort(-x)[:k]) & set(np.argsort(-z)[:k])) / k
                   for x, z in zip(a, b)])
    return pearsonr(a.ravel(), b.ravel())[0], spearmanr(a.ravel(), b.ravel())[0], top


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--naive-points", type=int, default=4)
    parser.add_argument("--depth", type=int, default=300)
    parser.add_argument("--lissa-batch", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    net, X_train, X_test, y_train, y_test = train_digits_net(0)
    X_test, y_test = X_test[: args.n_test], y_test[: args.n_test]

    # the damping must make H + damping I positive definite for CG and LiSSA to converge
    ref = InfluenceExplainer(net, solver=Exact(damping=1.0)).fit(X_train, y_train)
    min_eig = float(ref.solver_.eigenvalues_.min())
    damping = max(1e-2, 2 * -min_eig)
    print(f"digits MLP: {ref.n_params_} parameters, {len(X_train)} training points, "
          f"{len(X_test)} test points; Hessian min eigenvalue {min_eig:.2e}; damping {damping:.3g}")

    rows = []
    solvers = {
        "Exact": Exact(damping=damping),
        "CG": CG(damping=damping, max_iter=200, tol=1e-4),
        f"LiSSA d={args.depth} B={args.lissa_batch}": LiSSA(
            damping=damping, depth=args.depth, batch_size=args.lissa_batch, random_state=0),
    }
    results = {}
    for name, solver in solvers.items():
        expl = InfluenceExplainer(net, solver=solver)
        t0 = time.perf_counter()
        expl.fit(X_train, y_train)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        results[name] = expl.influences(X_test, y_test)
        t_inf = time.perf_counter() - t0
        rows.append((name, t_fit, t_inf))
        if name.startswith("LiSSA"):
            lissa_scale = float(expl.solver_.scale_)

    t0 = time.perf_counter()
    naive = naive_influences(net, X_train, y_train, X_test[: args.naive_points],
                             y_test[: args.naive_points], damping=damping, scale=lissa_scale,
                             depth=args.depth, batch_size=args.lissa_batch)
    t_naive = (time.perf_counter() - t0) * len(X_test) / args.naive_points

    exact = results["Exact"]
    print(f"\n| method | fit (s) | influences, {len(X_test)} test x {len(X_train)} train (s) | "
          "speed-up vs naive | Pearson vs Exact | Spearman vs Exact | top-10 overlap |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    p, s, t = agreement(naive, exact[: args.naive_points])
    print(f"| naive FastIF-style loop (LiSSA d={args.depth} B={args.lissa_batch}, "
          f"timed on {args.naive_points}, scaled) | 0 | {t_naive:.1f} | 1x | {p:.3f} | {s:.3f} "
          f"| {t:.2f} |")
    for name, t_fit, t_inf in rows:
        p, s, t = agreement(results[name], exact)
        print(f"| sk_fastif {name} | {t_fit:.2f} | {t_inf:.3f} | {t_naive / t_inf:.0f}x "
              f"(incl. fit {t_naive / (t_inf + t_fit):.0f}x) | {p:.3f} | {s:.3f} | {t:.2f} |")


if __name__ == "__main__":
    main()
