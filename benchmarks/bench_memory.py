"""Memory benchmark: peak RSS of explaining 10 test points against 100,000 and 1,000,000 rows.

Each configuration runs in a fresh Python subprocess, so peaks do not carry over. The child loads
the training data (``np.load``) and the trained net, resets the kernel's peak-RSS counter to the
current RSS (``/proc/self/clear_refs``, Linux; elsewhere the peak so far stands), records
``resource.getrusage(...).ru_maxrss`` as its **baseline**, then fits an
:class:`~sk_fastif.InfluenceExplainer`, calls ``explain(X_test[:10], k=10)`` and records the
peak again. The table reports the growth of the
peak over the baseline, next to the size of the data and of an ``n_train x n_params`` float32
gradient matrix (what a method that materialises every training gradient at once would hold).

The ``naive`` rows (one size by default; ``--naive-large`` adds 1,000,000 rows) run that method
in the same way: all training gradients in one matrix, then one matrix product. Ratios are against
it.

Data: ``make_classification`` (20 features, 2 classes); net: a 20-128-2 tanh MLP (2,946
parameters) trained for one epoch. Solver: ``LiSSA(depth=100, batch_size=32)`` on the
Gauss-Newton curvature, whose cost does not depend on ``n``; its ``scale`` is estimated once by
``scale="auto"`` on a 5,000-row subsample (the automatic rule on all rows would spend 30 full
passes over the data on power iterations) and passed as a number.

``--inputs array dict dataset`` measures the same runs with the training data given as a dict
(``{"X": X}``, passed to the module by keyword) and as a map-style Dataset read one row at a
time, e.g. ``--sizes 10000 100000 --batch-sizes 256 --inputs array dict dataset``.

Run: ``python benchmarks/bench_memory.py`` (about 10 minutes on two CPU cores, most of it the
1,000,000-row run; ``--sizes 100000`` for a 4-minute run).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# run from a checkout without installing (the children inherit it through PYTHONPATH)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_TEST = 10
N_FEATURES = 20
N_HIDDEN = 128


def _mib_maxrss() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def _reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0), so that transient memory of imports
    and loading does not hide the peak of explaining. Returns whether it worked.

    Freed heap memory is first returned to the system (glibc ``malloc_trim``), otherwise later
    allocations would reuse it without raising the RSS and the growth would read low.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# the net: a 20-128-2 tanh MLP trained by Adam for one epoch on minibatches of 4096
NET = dict(n_hidden=N_HIDDEN, lr=1e-2, max_epochs=1, batch_size=4096)


def prepare(n: int, workdir: Path) -> dict:
    """Generate the data and train the net once per size; save both for the children."""
    import torch

    from sk_fastif import InfluenceExplainer
    from sk_fastif.datasets import make_classification_split
    from sk_fastif.solvers import LiSSA
    from sk_fastif.toy import train_mlp_classifier

    X, X_test, y, _ = make_classification_split(n, N_TEST, n_features=N_FEATURES,
                                                n_informative=10, random_state=0)
    np.save(workdir / f"X_{n}.npy", X)
    np.save(workdir / f"y_{n}.npy", y)
    np.save(workdir / f"Xte_{n}.npy", X_test)
    net = train_mlp_classifier(X, y, n_out=2, **NET, random_state=0)
    torch.save(net.module_.state_dict(), workdir / f"net_{n}.pt")
    sub = np.random.RandomState(0).choice(n, size=min(n, 5_000), replace=False)
    probe = InfluenceExplainer(net, solver=LiSSA(damping=1e-2, depth=1, batch_size=32),
                               curvature="gauss_newton", random_state=0).fit(X[sub], y[sub])
    return {"scale": 2.0 * float(probe.solver_.scale_), "n_params": probe.n_params_}


class _Rows:
    """A map-style Dataset over in-memory rows, read one item at a time."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


def _as_kind(X, y, kind: str):
    """The training data as the user would pass it: an array, a dict or a Dataset."""
    if kind == "dict":  # the module's forward argument, by name
        return {"X": X}, y
    if kind == "dataset":
        import torch

        return type("Rows", (_Rows, torch.utils.data.Dataset), {})(X, y), None
    return X, y


def child(args) -> None:
    """One measured configuration (runs in its own process)."""
    import torch

    from sk_fastif import InfluenceExplainer
    from sk_fastif.solvers import LiSSA
    from sk_fastif.toy import make_mlp_classifier

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    X = np.load(work / f"X_{args.n}.npy")
    y = np.load(work / f"y_{args.n}.npy")
    X_test = np.load(work / f"Xte_{args.n}.npy")
    net = make_mlp_classifier(N_FEATURES, 2, **NET).initialize()
    net.module_.load_state_dict(torch.load(work / f"net_{args.n}.pt"))
    reset = _reset_peak()
    baseline = _mib_maxrss()

    t0 = time.perf_counter()
    if args.method == "sk_fastif":
        solver = LiSSA(damping=1e-2, scale=args.scale, depth=args.depth, batch_size=32)
        Xk, yk = _as_kind(X, y, args.input)
        expl = InfluenceExplainer(net, solver=solver, curvature="gauss_newton",
                                  batch_size=args.batch_size, random_state=0).fit(Xk, yk)
        t_fit = time.perf_counter() - t0
        ex = expl.explain(_as_kind(X_test, None, args.input)[0] if args.input == "dict"
                          else X_test, k=10)
        top = ex.helpful_indices[:, 0].tolist()
    else:  # naive: every training gradient in one (n, n_params) matrix
        solver = LiSSA(damping=1e-2, scale=args.scale, depth=args.depth, batch_size=32)
        expl = InfluenceExplainer(net, solver=solver, curvature="gauss_newton",
                                  batch_size=args.batch_size, random_state=0).fit(X, y)
        t_fit = time.perf_counter() - t0
        factors = torch.as_tensor(expl.influence_factors(X_test))
        engine = expl.engine_
        G = engine.gradients(engine.X_train, engine.y_train)  # n x n_params at once
        scores = (factors @ G.T).numpy() / len(X)
        top = np.argsort(-scores, axis=1)[:, 0].tolist()
    t_total = time.perf_counter() - t0
    print(json.dumps({"baseline": baseline, "peak": _mib_maxrss(), "t_fit": t_fit,
                      "t_total": t_total, "top": top, "reset": reset}))


def _run(*args: str) -> dict:
    """Run this script in a fresh subprocess and return the JSON line it prints."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                         text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(n, method, batch_size, info, args, workdir, kind="array") -> dict:
    return _run("--child", "--n", str(n), "--method", method, "--batch-size", str(batch_size),
                "--input", kind,
                "--scale", repr(info["scale"]), "--depth", str(args.depth),
                "--threads", str(args.threads), "--workdir", str(workdir))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--naive-large", action="store_true",
                        help="also run the naive method at the largest size (n x 2,946 float32 "
                             "gradients: about 11 GiB at 1,000,000 rows)")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inputs", nargs="+", default=["array"],
                        choices=["array", "dict", "dataset"],
                        help="the kinds of training input to measure (the extra kinds run "
                             "with batch_size 256 at every size)")
    parser.add_argument("--input", default="array", help=argparse.SUPPRESS)
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="sk_fastif", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    if args.prepare:
        print(json.dumps(prepare(args.n, Path(args.workdir))))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for i, n in enumerate(sorted(args.sizes)):
            # in a subprocess too: this process stays small, because a child's ru_maxrss
            # starts from the peak of the process that launched it
            info = _run("--prepare", "--n", str(n), "--workdir", str(workdir))
            P = info["n_params"]
            configs = [("sk_fastif", 256, "array")] if "array" in args.inputs else []
            if i == 0 and "array" in args.inputs:  # growth with batch_size, at the smallest size
                configs = [("sk_fastif", b, "array") for b in args.batch_sizes]
            configs += [("sk_fastif", 256, k) for k in args.inputs if k != "array"]
            if i == 0 or args.naive_large:
                configs.append(("naive", 256, "array"))
            for method, batch_size, kind in configs:
                res = run_child(n, method, batch_size, info, args, workdir, kind)
                rows.append({"n": n, "P": P, "method": method, "batch_size": batch_size,
                             "input": kind, **res})
                print(f"  done: n={n:,} {method} batch_size={batch_size}: "
                      f"+{res['peak'] - res['baseline']:.0f} MiB in {res['t_total']:.1f} s",
                      file=sys.stderr)

    naive = {r["n"]: r["peak"] - r["baseline"] for r in rows if r["method"] == "naive"}
    reset = all(r["reset"] for r in rows)
    print(f"\nExplaining {N_TEST} test points (k=10); a 20-{N_HIDDEN}-2 MLP; "
          f"LiSSA depth {args.depth}; {args.threads} threads. Baseline: RSS after loading data "
          f"and net{', peak reset there' if reset else ' (peak so far: no reset on this OS)'}."
          "\n")
    print("| n_train | method | input | batch_size | data (MiB) | n x P float32 (MiB) "
          "| baseline RSS (MiB) | peak RSS (MiB) | growth (MiB) | growth vs naive | fit (s) "
          "| fit + explain (s) |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        growth = r["peak"] - r["baseline"]
        data = r["n"] * (N_FEATURES * 4 + 8) / 2**20
        full = r["n"] * r["P"] * 4 / 2**20
        ratio = f"{growth / naive[r['n']]:.2f}" if r["n"] in naive else "n/a"
        print(f"| {r['n']:,} | {r['method']} | {r['input']} | {r['batch_size']} | {data:.0f} | "
              f"{full:.0f} | "
              f"{r['baseline']:.0f} | {r['peak']:.0f} | {growth:.0f} | {ratio} | "
              f"{r['t_fit']:.1f} | {r['t_total']:.1f} |")


if __name__ == "__main__":
    main()
