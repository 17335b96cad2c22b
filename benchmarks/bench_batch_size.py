"""The explainer's ``batch_size`` (rows per chunk, right-hand sides per block): time and memory.

On the workloads of ``compare.py`` (the digits MLP with 50 and 360 test points, the
20,000-row, 28,426-parameter MLP with 20), ``fit`` + ``influences`` of two exact-grade solvers
(``CG(tol=1e-2)`` and the EK-FAC-preconditioned ``CG(max_iter=4)``, Hessian curvature, the
workload's damping), each configuration in a fresh process: wall time, and the growth of the
peak resident set over the RSS just before ``fit`` (``ru_maxrss`` after the kernel's peak
counter is reset, Linux). The table gives the median over ``--repeats`` runs and its ratio to
the median of ``batch_size=256`` (the previous default) for the same workload and solver.

Why it matters: a vectorised curvature product holds intermediates for every (row,
right-hand side) pair of its chunk, so its transient memory grows with ``batch_size`` times
the number of test points solved together, while on a CPU the time per row stops falling
well before 256 rows.

Run: ``python benchmarks/bench_batch_size.py`` (about 5 minutes on two CPU cores; the
workloads are prepared, or read from ``compare.py``'s cache, first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SOLVERS = ("CG tol=1e-2", "CG ekfac 4 it")


def child(workdir: str, batch_size: int, solver: str) -> dict:
    """One configuration (run in a fresh process): seconds and peak growth in MiB."""
    import resource
    import time
    import warnings

    import _compare_methods as cm
    from _compare_workloads import load_workload

    from sk_fastif import solvers

    make = {"CG tol=1e-2": lambda lam, spec: solvers.CG(damping=lam, tol=1e-2),
            "CG ekfac 4 it": lambda lam, spec: solvers.CG(damping=lam, max_iter=4,
                                                          preconditioner="ekfac")}[solver]
    run = cm._ours(make, batch_size=batch_size)(*load_workload(workdir))  # compare.py's row
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    except OSError:
        pass
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter=4 does not reach CG's default tol
        run()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "growth_mib": (peak - base) / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="digits50,digits360,synth")
    p.add_argument("--batch-sizes", default="64,128,256,512")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "sk_fastif_compare"))
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2])))
        return
    from _compare_workloads import prepare

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if 256 not in sizes:
        sizes.append(256)
    print("| workload | solver | batch_size | time s | peak growth MiB | time / 256 "
          "| growth / 256 |\n|---|---|---:|---:|---:|---:|---:|")
    for name in args.workloads.split(","):
        workdir = prepare(name, Path(args.cache_dir), log=lambda *a: None)
        for solver in SOLVERS:
            runs = {b: [] for b in sizes}
            for _ in range(args.repeats):
                for b in sizes:
                    out = subprocess.run([sys.executable, __file__, "--child", str(workdir),
                                          str(b), solver], capture_output=True, text=True,
                                         check=True).stdout
                    runs[b].append(json.loads(out.strip().splitlines()[-1]))
            ref = {k: np.median([r[k] for r in runs[256]]) for k in ("seconds", "growth_mib")}
            for b in sizes:
                t = np.median([r["seconds"] for r in runs[b]])
                g = np.median([r["growth_mib"] for r in runs[b]])
                print(f"| {name} | {solver} | {b} | {t:.2f} | {g:.0f} | "
                      f"{t / ref['seconds']:.2f} | {g / ref['growth_mib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
