"""Index once, query many: the gradient store (``memory=``) at 100,000 to 1,000,000 rows.

Workload: ``make_classification`` with ``n`` rows, 40 features (20 informative) and 10 classes;
a 40-96-10 tanh MLP (4,906 parameters) trained by skorch for one epoch of Adam (batches of
1,024; not timed); damping 0.05; 50 test points; the machine's CPU cores, one process.

Columns, per number of rows:

``fit s`` / ``fit MiB``
    ``InfluenceExplainer(net, solver=EKFAC(damping=0.05), memory=dir).fit(X, y)``: the finite
    loss check, the fingerprint, the gradient store written to ``dir`` (one pass), and EK-FAC's
    factors (two passes). MiB is the growth of peak resident memory over the state before the
    call (the data and the net already loaded), sampled every 5 ms.
``again s``
    A second explainer fitted with the same ``memory``: it opens the store (no pass); EK-FAC's
    factors are computed again.
``explain s``
    ``explain(X_test, k=10)`` over every training row, warm: the median of 3 calls after one
    (the solve is EK-FAC's, so each call is one gradient pass over the test points and one read
    of the store).
``store MiB``
    The size of the store on disk.

``--check-rows`` (default 20,000) also fits the same problem without ``memory`` and reports
whether the top-10s of the 50 test points are identical to the on-disk path's.

Run: ``python benchmarks/scale.py`` (``--rows 100000 300000 1000000``; about 10 minutes on 2
cores, most of it the 1,000,000-row net's training); results go to
``benchmarks/results/scale.rst``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this file is in

RESULTS = Path(__file__).resolve().parent / "results"
N_TEST = 50
DAMPING = 0.05


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(40, 96)
        self.out = torch.nn.Linear(96, 10)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


def problem(n: int):
    from sklearn.datasets import make_classification
    from skorch import NeuralNetClassifier

    X, y = make_classification(n + N_TEST, 40, n_informative=20, n_classes=10,
                               random_state=0)
    X = X.astype("float32")
    torch.manual_seed(0)
    net = NeuralNetClassifier(MLP, criterion=torch.nn.CrossEntropyLoss,
                              optimizer=torch.optim.Adam, lr=0.01, max_epochs=1,
                              batch_size=1024, train_split=None, verbose=0)
    net.fit(X[:n], y[:n])
    return net, X[:n], y[:n], X[n:], y[n:]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def peak_growth(fn):
    """``fn()``'s result, wall time, and the growth of resident memory (MiB) while it ran."""
    base = peak = _rss_mib()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, _rss_mib())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    return out, seconds, max(peak, _rss_mib()) - base


def explainer(net, memory):
    from sk_fastif import InfluenceExplainer
    from sk_fastif.solvers import EKFAC

    return InfluenceExplainer(net, solver=EKFAC(damping=DAMPING), memory=memory)


def measure(n: int) -> dict:
    net, X, y, Xq, yq = problem(n)
    root = Path(tempfile.mkdtemp(prefix="sk_fastif_scale_"))
    try:
        first, fit_s, fit_mib = peak_growth(lambda: explainer(net, root).fit(X, y))
        store_mib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
        _, again_s, _ = peak_growth(lambda: explainer(net, root).fit(X, y))
        first.explain(Xq, yq, k=10)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            first.explain(Xq, yq, k=10)
            times.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    row = {"rows": n, "fit_s": fit_s, "fit_mib": fit_mib, "again_s": again_s,
           "explain_s": statistics.median(times), "store_mib": store_mib}
    print(f"{n:>9,} rows: fit {fit_s:7.1f} s (+{fit_mib:6.0f} MiB), again {again_s:6.1f} s, "
          f"explain {row['explain_s']:6.2f} s, store {store_mib:6.0f} MiB", flush=True)
    return row


def check(n: int) -> bool:
    """Whether the on-disk and in-memory paths give identical top-10s at ``n`` rows."""
    net, X, y, Xq, yq = problem(n)
    root = Path(tempfile.mkdtemp(prefix="sk_fastif_scale_"))
    try:
        disk = explainer(net, root).fit(X, y).explain(Xq, yq, k=10)
        ram = explainer(net, None).fit(X, y).explain(Xq, yq, k=10)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    same = bool(np.array_equal(disk.helpful_indices, ram.helpful_indices)
                and np.array_equal(disk.harmful_indices, ram.harmful_indices))
    print(f"{n:,} rows: top-10s identical to the in-memory path's: {same}", flush=True)
    return same


def report(rows: list[dict], same: bool | None, check_rows: int) -> str:
    lines = ["=========  =======  =======  =======  =========  =========",
             "rows       fit s    fit MiB  again s  explain s  store MiB",
             "=========  =======  =======  =======  =========  ========="]
    for r in rows:
        lines.append(f"{r['rows']:<9,}  {r['fit_s']:<7.1f}  {r['fit_mib']:<7.0f}  "
                     f"{r['again_s']:<7.1f}  {r['explain_s']:<9.2f}  {r['store_mib']:<9.0f}")
    lines.append(lines[0])
    if same is not None:
        lines += ["", f"At {check_rows:,} rows the top-10s of the {N_TEST} test points are "
                      f"{'identical' if same else 'NOT identical'} to the in-memory path's."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--check-rows", type=int, default=20_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    same = check(args.check_rows) if args.check_rows else None
    rows = [measure(n) for n in args.rows]
    text = report(rows, same, args.check_rows)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "scale.rst").write_text(text)


if __name__ == "__main__":
    main()
