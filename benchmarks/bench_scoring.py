"""Scoring pass: ``S @ G.T`` by forward mode against forming the per-sample gradients.

The scoring pass reduces the iHVPs ``S`` (one row per test point) against the gradient of every
training point. With few rows in ``S``, each score ``S[i] · g_j`` is a directional derivative of
the loss ``l_j``, and forward mode computes it without the ``(rows, n_params)`` gradient block;
with many rows, forming the block once and multiplying is cheaper. This script times both ways
in the same process on two MLPs (the digits one, and a 100-256-10 one of 28,426 parameters), for
a range of rows of ``S``, and prints the ratio: the crossover behind
``sk_fastif._gradients.FORWARD_MAX_VECTORS``. It also checks that both give the same scores.

Run: ``python benchmarks/bench_scoring.py`` (about a minute on two CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from sk_fastif import _gradients, toy
from sk_fastif._net import NetBridge


def _bridge(n_in, n_hidden, n_train, batch_size, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n_train, n_in).astype("float32")
    y = rng.randint(0, 10, n_train).astype("int64")
    net = toy.make_mlp_classifier(n_in=n_in, n_hidden=n_hidden, n_out=10).initialize()
    return NetBridge(net, None, batch_size), torch.as_tensor(X), torch.as_tensor(y)


def _time(fn, repeats):
    fn()  # warm-up
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _scores(bridge, S, X, y, forward):
    limit = _gradients.FORWARD_MAX_VECTORS
    _gradients.FORWARD_MAX_VECTORS = len(S) if forward else 0
    try:
        return torch.cat([P for _, P in _gradients.iter_products(bridge, S, X, y)], dim=1)
    finally:
        _gradients.FORWARD_MAX_VECTORS = limit


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 20, 50, 64, 128, 256])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    nets = {"digits 64-32-10 (2,410 params), 1,437 rows": (64, 32, 1437),
            "100-256-10 (28,426 params), 5,000 rows": (100, 256, 5000)}
    print(f"torch threads: {torch.get_num_threads()}, batch_size {args.batch_size}\n")
    print("| net | rows of S | gradients (s) | forward (s) | gradients / forward | max rel. diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (n_in, n_hidden, n_train) in nets.items():
        bridge, X, y = _bridge(n_in, n_hidden, n_train, args.batch_size)
        for m in args.rows:
            S = torch.randn(m, bridge.n_params)
            a = _scores(bridge, S, X, y, forward=False)
            b = _scores(bridge, S, X, y, forward=True)
            diff = float((a - b).abs().max() / a.abs().max())
            tg = _time(partial(_scores, bridge, S, X, y, False), args.repeats)
            tf = _time(partial(_scores, bridge, S, X, y, True), args.repeats)
            print(f"| {name} | {m} | {tg:.3f} | {tf:.3f} | {tg / tf:.2f} | {diff:.1e} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
