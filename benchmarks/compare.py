"""sk_fastif against its peer libraries on the same nets, data, damping and Hessian.

Every method runs in its own process (this script with ``--worker``) under a memory cap, on a
workload the parent prepared once (the trained net's state dict and the data, saved to a
directory), and writes its ``(n_test, n_train)`` score matrix in sk_fastif's convention
``score = (1/n) g_testᵀ (H + λI)⁻¹ g_train`` (positive = helpful; each peer converted by its
documented convention, see ``_compare_methods.py``). The parent compares it with a float64
reference computed here independently (explicit Hessian and Cholesky solve, or CG to a relative
residual of 1e-8), and prints one markdown table per workload. Times cover construct + fit +
score, measured inside the worker (data loading excluded):

* **warm**: the median of 3 further calls in the same process after the first (made only while
  the calls so far took under 60 s), what a user who calls twice in a notebook sees;
* **cold**: the first call in the process (imports done, nothing else warmed up);
* **query-many**: one fit, then 5 batches of ``n_test`` held-out points one after another, each
  library with its own cache (ours: ``fit`` then ``influences`` per batch; pyDVL: ``fit`` then
  ``influence_factors`` and ``influences_from_factors``; dattri: ``cache`` then ``attribute``),
  after one warm-up, for the methods that have such a split.

Then peak memory (``ru_maxrss`` of the worker), Pearson and Spearman correlation per test point
over the training points (mean over the test points), the overlap of the 10 most helpful
training points, and a note. ``ours:defaults`` is the default solver rule at the workload's
damping, a row of its own.

Workloads
---------
``digits50``, ``digits360``
    The digits MLP of ``sk_fastif.datasets.train_digits_net(0)`` (64-32-10 tanh, 2,410
    parameters, 1,437 training points), the first 50 and all 360 held-out digits with their
    **true** labels, damping 0.011 on the **Hessian**; reference: explicit float64 Hessian
    (``torch.func.hessian``) and a Cholesky solve.
``synth``
    ``make_classification`` (20,000 training rows, 100 features, 10 classes), a 100-256-10 tanh
    MLP (28,426 parameters) trained 5 epochs with skorch; 20 test points (true labels), damping
    0.05 on the Hessian (its smallest eigenvalue is -0.019, by Lanczos); reference: float64 CG
    over ``torch.func`` Hessian-vector products to a relative residual of 1e-8.
    Explicit-Hessian methods are not attempted there.
``mlp2k``, ``mlp8k``
    ``make_classification`` with 2,000 rows, 30 features and 5 classes (a 30-48-5 tanh MLP,
    1,733 parameters, 50 test points), and with 8,000 rows, 40 features and 10 classes (a
    40-96-10 tanh MLP, 4,906 parameters, 20 test points; a cosine learning-rate decay, so that
    ``H + 0.05 I`` is positive definite), both trained 20 epochs with Adam by skorch; damping
    0.05 on the Hessian; reference: the explicit float64 Hessian.

Usage
-----
Run with the Python of an environment where the peers are installed (below)::

    python benchmarks/compare.py                  # every table, about 55 minutes on 2 CPU cores
    python benchmarks/compare.py --quick          # a few methods on digits50, about a minute
    python benchmarks/compare.py --workloads digits50 --methods ours:CG,pydvl:CG
    python benchmarks/compare.py --retraining     # only the LOO correlation and LDS table

The full run (no ``--workloads``, ``--methods`` or ``--quick``) ends with the retraining
table (leave-one-out correlation and LDS, see ``_compare_retraining.py``) unless
``--no-retraining`` is given.

A method that fails to import, run, or stay within ``--mem-cap`` GiB or ``--timeout`` seconds
is reported with its error in the table. Results go to ``benchmarks/results/compare.json``
with the machine (CPU count, library versions), and their tables to ``compare.rst`` beside it
(``docs/benchmarks.rst`` includes that file); a partial run (``--quick``, ``--workloads``,
``--methods``) writes ``compare_partial.json`` and ``.rst`` instead, unless ``--out`` says
otherwise. The trained nets and references are cached in ``--cache-dir``.

Peer environment
----------------
A separate virtual environment (Python 3.11), every ``pip`` call constrained to the torch
build installed first (``-c constraints.txt`` holding ``torch==2.13.0``), in this order:

1. ``torch==2.13.0`` (the CPU wheel);
2. ``pip install -e ".[bench]"`` (sk_fastif, its dependencies and the ``bench`` extra:
   ``captum==0.9.0``, ``dattri==0.3.0``, ``kronfluence==1.0.1``, ``dask[distributed]``);
3. ``pydvl==0.10.0 --no-deps`` (it declares ``numpy<2`` but runs with numpy 2), then
   ``zarr pandas more-itertools pyDeprecate dask[distributed]`` (pyDVL's imports; it does
   not declare ``zarr``).

Captum's Arnoldi class is imported from ``captum.influence._core.arnoldi_influence_function``.

Curvature: every method uses the Hessian of the mean training loss and the same damping,
except the EK-FAC ones (sk_fastif's, pyDVL's and Kronfluence's: Gauss-Newton / true Fisher;
dattri's: empirical Fisher), which have no Hessian variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the _compare_* helpers
sys.path.insert(1, str(HERE.parent))  # benchmark this checkout's sk_fastif

import numpy as np  # noqa: E402
from _compare_report import _fmt, write_rst  # noqa: E402

QUICK_METHODS = ["ours:Exact", "ours:CG", "ours:CG tol=1e-2", "ours:CG ekfac 4 it", "ours:EKFAC",
                 "pydvl:CG tuned", "pydvl:CG rtol=1e-2", "captum:Arnoldi", "dattri:CG",
                 "kronfluence:EK-FAC", "floor:per-sample grads"]
PEERS = ["captum", "dattri", "kronfluence", "pydvl", "torch", "numpy", "scipy", "skorch",
         "scikit-learn", "sk_fastif"]
TOP = 10
# warm: the median of this many calls after the cold one, made while the calls so far took less
# than WARM_BUDGET seconds; query-many: one fit, then N_BATCHES batches of test points
WARM_REPEATS = 3
WARM_BUDGET = 60.0
N_BATCHES = 5


# ==================================================================================== worker
def worker(name: str, workload_dir: str, result_dir: str) -> int:
    """Run method ``name`` on a prepared workload and write ``scores.npy`` and ``meta.json``."""
    out = Path(result_dir)
    meta = {"method": name}
    try:
        import _compare_methods as cm
        from _compare_workloads import load_workload

        spec, data = load_workload(workload_dir)
        batches = None
        if "X_many" in data:  # query-many: 5 batches of test points after one fit
            batches = list(zip(np.array_split(data["X_many"], N_BATCHES),
                               np.array_split(data["y_many"], N_BATCHES)))
        scores, info, times = cm.timed(cm.METHODS[name].setup, spec, data,
                                       warm_repeats=WARM_REPEATS, warm_budget=WARM_BUDGET,
                                       batches=batches)
        meta["seconds"] = times["cold"]
        meta["warm_seconds"] = times["warm"]
        meta["query_many_seconds"] = times["query_many"]
        meta["rows"] = [int(i) for i in info.get("rows", range(spec["n_test"]))]
        if scores is not None:
            np.save(out / "scores.npy", scores)
        if "mask" in info:
            np.save(out / "mask.npy", info["mask"])
    except BaseException as exc:  # reported, whatever it is
        first = (str(exc).strip().splitlines() or [""])[0]
        meta["error"] = f"{type(exc).__name__}: {first}"[:300]
    (out / "meta.json").write_text(json.dumps(meta))
    return 0


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_worker(name: str, workload_dir, *, mem_cap_gib: float, timeout: float) -> dict:
    """Run one method in a child process, watching its memory and time.

    Returns a dict with ``seconds`` (measured in the child), ``peak_mib`` (``ru_maxrss`` of the
    child, from :func:`os.wait4`), ``scores`` / ``mask`` / ``rows`` when it succeeded and
    ``error`` (one line) when it failed, was killed above the cap or timed out.
    """
    result_dir = Path(tempfile.mkdtemp(prefix="compare_"))
    log = open(result_dir / "log.txt", "w")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
           "--workload-dir", str(workload_dir), "--result-dir", str(result_dir)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    cap_kib = int(mem_cap_gib * 1024 ** 2)
    t0 = time.perf_counter()
    killed = None
    rss_peak = 0
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = _rss_kib(proc.pid)
        rss_peak = max(rss_peak, rss)
        if killed is None and rss > cap_kib:
            killed = f"killed: memory above the cap of {mem_cap_gib:g} GiB"
        elif killed is None and time.perf_counter() - t0 > timeout:
            killed = f"killed: timeout after {timeout:g} s"
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, rusage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    res = {"peak_mib": max(rusage.ru_maxrss, rss_peak) / 1024, "wall_s": time.perf_counter() - t0}
    meta_path = result_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if killed:
        res["error"] = killed
    elif "error" in meta:
        res["error"] = meta["error"]
    elif not meta:
        tail = (result_dir / "log.txt").read_text().strip().splitlines()
        res["error"] = f"exit {proc.returncode}: {(tail or [''])[-1][:200]}"
    else:
        res["seconds"] = meta["seconds"]
        res["warm_seconds"] = meta.get("warm_seconds")
        res["query_many_seconds"] = meta.get("query_many_seconds")
        res["rows"] = meta["rows"]
        if (result_dir / "scores.npy").exists():
            res["scores"] = np.load(result_dir / "scores.npy")
        if (result_dir / "mask.npy").exists():
            res["mask"] = np.load(result_dir / "mask.npy")
    shutil.rmtree(result_dir, ignore_errors=True)
    return res


# =================================================================================== metrics
def agreement(S: np.ndarray, R: np.ndarray, rows, mask=None) -> dict:
    """Agreement of scores ``S`` with the reference ``R`` over the test rows ``rows``.

    Per test row, over the training points scored (``mask``) with a finite score: Pearson and
    Spearman (:func:`sk_fastif.metrics.influence_agreement`; NaN for a constant row) and the
    overlap of the 10 most helpful training points with the reference's 10 most helpful
    among **all** training points (:func:`sk_fastif.metrics.top_k_overlap`, the unscored points
    ranked last, so a pruned method is charged for the top points outside its candidates;
    NaN with fewer than 10 scored). Means over the rows; ``n_nonfinite`` counts the NaN/inf
    scores among those scored.
    """
    from sk_fastif.metrics import influence_agreement, top_k_overlap

    pear, spear, top = [], [], []
    n_nonfinite = 0
    for i in rows:
        scored = np.ones(S.shape[1], bool) if mask is None else mask[i]
        finite = np.isfinite(S[i]) & scored
        n_nonfinite += int(np.sum(scored & ~np.isfinite(S[i])))
        s, r = S[i, finite], R[i, finite]
        if finite.sum() < 3 or np.ptp(s) == 0:
            pear.append(np.nan)
            spear.append(np.nan)
        else:
            pear.append(influence_agreement(s, r, method="pearson"))
            spear.append(influence_agreement(s, r, method="spearman"))
        if finite.sum() < TOP:
            top.append(np.nan)
            continue
        ranked = np.full(S.shape[1], s.min() - 1.0 - abs(s.min()))  # below every score
        ranked[finite] = s
        top.append(top_k_overlap(ranked, R[i], k=TOP))

    def mean(v):
        return float(np.mean(v)) if len(v) else float("nan")
    return {"pearson": mean(pear), "spearman": mean(spear), "top10": mean(top),
            "n_nonfinite": n_nonfinite}


# ================================================================================ the tables
def table(workload: str, rows: list[dict]) -> str:
    """One markdown table of a workload's results."""
    lines = [f"### {workload}", "",
             "| method | warm s | cold s | query-many s | peak MiB | Pearson | Spearman | "
             "top-10 | note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        note = r.get("error") or r.get("note", "")
        if r.get("error") and r.get("note"):
            note = f"{r['error']} ({r['note']})"
        lines.append(f"| {r['method']} | {_fmt(r.get('warm_seconds'), '{:.2f}')} | "
                     f"{_fmt(r.get('seconds'), '{:.2f}')} | "
                     f"{_fmt(r.get('query_many_seconds'), '{:.2f}')} | "
                     f"{_fmt(r.get('peak_mib'), '{:.0f}')} | {_fmt(r.get('pearson'), '{:.4f}')} | "
                     f"{_fmt(r.get('spearman'), '{:.4f}')} | {_fmt(r.get('top10'), '{:.2f}')} | "
                     f"{note} |")
    return "\n".join(lines)


SPEED_COLUMNS = {"warm": "warm_seconds", "cold": "seconds", "query_many": "query_many_seconds"}


def speedup(rows: list[dict], threshold: float = 0.99) -> dict | None:
    """The fastest peer's time over ours at Pearson >= threshold, per column, and memory.

    Per column (warm, cold, query-many): ``{column}_ours`` and ``{column}_peer`` name the
    fastest method of each side in that column, and ``{column}_ratio`` is the peer's time
    over ours. ``ours`` / ``peer`` / ``time_ratio`` / ``memory_ratio`` are the cold call's
    (kept for older results); ``defaults_*`` compare ``ours:defaults`` with the fastest peer.
    """
    def best(pred, key):
        ok = [r for r in rows if pred(r) and r.get(key) is not None
              and (r.get("pearson") or 0) >= threshold]
        return min(ok, key=lambda r: r[key]) if ok else None

    def is_peer(r):
        return r["library"] not in ("sk_fastif", "floor")

    out: dict = {}
    for col, key in SPEED_COLUMNS.items():
        ours = best(lambda r: r["library"] == "sk_fastif", key)
        peer = best(is_peer, key)
        defaults = best(lambda r: r["method"] == "ours:defaults", key)
        out[f"{col}_ours"] = ours and ours["method"]
        out[f"{col}_peer"] = peer and peer["method"]
        if ours and peer:
            out[f"{col}_ratio"] = peer[key] / ours[key]
            if col == "cold":
                out.update(ours=ours["method"], peer=peer["method"],
                           time_ratio=peer[key] / ours[key],
                           memory_ratio=ours["peak_mib"] / peer["peak_mib"])
        if defaults and peer:
            out[f"defaults_{col}_ratio"] = peer[key] / defaults[key]
    if "ours" not in out:
        out.update(ours=out["cold_ours"], peer=out["cold_peer"])
    return out


def machine() -> dict:
    """CPU count, platform and the versions of the libraries compared."""
    versions = {}
    for pkg in PEERS:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# ====================================================================================== main
def run_workload(name: str, methods: list[str], args, log=print) -> dict:
    """Prepare workload ``name``, run every method on it and score the results."""
    import _compare_methods as cm
    from _compare_workloads import load_workload, prepare, reference

    work_dir = prepare(name, args.cache_dir, log=log)
    spec, data = load_workload(work_dir)
    R = reference(spec, data)
    rows = []
    for m in methods:
        meth = cm.METHODS[m]
        row = {"method": m, "library": meth.library, "note": meth.note}
        if spec["net"] in meth.skip:
            row["error"] = meth.skip[spec["net"]]
            rows.append(row)
            log(f"  {m}: {row['error']}")
            continue
        res = run_worker(m, work_dir, mem_cap_gib=args.mem_cap, timeout=args.timeout)
        row.update({k: res[k] for k in ("seconds", "warm_seconds", "query_many_seconds",
                                        "peak_mib", "error") if k in res})
        if "scores" in res:
            row.update(agreement(res["scores"], R, res["rows"], res.get("mask")))
            if row["n_nonfinite"]:
                row["note"] = f"{row['n_nonfinite']} NaN/inf scores (silently); " + row["note"]
            if len(res["rows"]) < spec["n_test"]:
                row["note"] += f" [agreement on {len(res['rows'])} test points]"
        log(f"  {m}: " + ", ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float)
                                   else f"{k}={row[k]}" for k in row if k != "note"))
        rows.append(row)
    spec.pop("dir", None)
    return {"spec": spec, "rows": rows, "speedup": speedup(rows)}


def main(argv=None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default=None, help="comma-separated (default: all)")
    p.add_argument("--methods", default=None, help="comma-separated names (default: all)")
    p.add_argument("--quick", action="store_true", help="a few methods on digits50")
    p.add_argument("--retraining", action="store_true", help="only the LOO / LDS table")
    p.add_argument("--no-retraining", action="store_true",
                   help="leave the LOO / LDS table out of a full run")
    p.add_argument("--mem-cap", type=float, default=16.0, help="GiB per method")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per method")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "sk_fastif_compare"))
    p.add_argument("--out", default=None,
                   help="JSON result (default: results/compare.json for the full run and "
                        "--retraining, results/compare_partial.json otherwise)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--workload-dir", help=argparse.SUPPRESS)
    p.add_argument("--result-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.workload_dir, args.result_dir)

    import _compare_methods as cm
    from _compare_retraining import main as retraining_main
    from _compare_workloads import WORKLOADS

    full = not (args.workloads or args.methods or args.quick)
    if args.out is None:  # a partial run never overwrites the full tables
        name = "compare.json" if full or args.retraining else "compare_partial.json"
        args.out = str(HERE / "results" / name)
    out_path = Path(args.out)
    if args.retraining:
        retraining_main(args)
        write_rst(json.loads(out_path.read_text()), out_path.with_suffix(".rst"))
        return 0
    workloads = (args.workloads.split(",") if args.workloads
                 else ["digits50"] if args.quick else list(WORKLOADS))
    methods = (args.methods.split(",") if args.methods
               else QUICK_METHODS if args.quick else list(cm.METHODS))
    unknown = [m for m in methods if m not in cm.METHODS] + [
        w for w in workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown methods or workloads {unknown}; methods: {list(cm.METHODS)}")
    result = {"machine": machine(), "settings": {"mem_cap_gib": args.mem_cap,
                                                 "timeout_s": args.timeout,
                                                 "quick": args.quick},
              "workloads": {}}
    for w in workloads:
        print(f"[{w}]", flush=True)
        try:
            result["workloads"][w] = run_workload(w, methods, args,
                                                  log=lambda s: print(s, flush=True))
        except Exception as exc:  # a workload that cannot be prepared is reported
            print(f"  workload {w} failed: {type(exc).__name__}: {exc}", flush=True)
            result["workloads"][w] = {"error": f"{type(exc).__name__}: {exc}", "rows": [],
                                      "speedup": None}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # saved as it goes
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print()
    for w, res in result["workloads"].items():
        print(table(w, res["rows"]))
        sp = res["speedup"]
        if sp is None:
            print(f"\n{res.get('error')}\n")
        elif "time_ratio" in sp:
            ratios = ", ".join(f"{col} {sp[col + '_ratio']:.1f}x" for col in SPEED_COLUMNS
                               if col + "_ratio" in sp)
            print(f"\nFastest peer at Pearson >= 0.99 / our fastest, per column: {ratios}; "
                  f"our peak memory / that peer's (cold): {sp['memory_ratio']:.2f}\n")
        else:
            print(f"\nNo ratio: fastest at Pearson >= 0.99 ours={sp['ours']}, "
                  f"peer={sp['peer']}\n")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1, default=float))
    if full and not args.no_retraining:
        print("[retraining]", flush=True)
        retraining_main(args)  # adds its table to the same file
    rst_path = write_rst(json.loads(out_path.read_text()), out_path.with_suffix(".rst"))
    print(f"saved {out_path} and {rst_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
