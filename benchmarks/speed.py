"""sk_fastif against the fastest peers in one process: warm, cold, query-many, the defaults.

Workloads (``make_classification``, a tanh MLP trained 20 epochs with Adam by skorch, the
**Hessian** of the mean cross-entropy at damping 0.05 for every method; the nets of
``compare.py``'s ``mlp2k`` and ``mlp8k``):

``2k``
    2,000 training rows, 30 features, 5 classes, 48 hidden units (1,733 parameters), 50 test
    points; 20 epochs.
``8k``
    8,000 training rows, 40 features, 10 classes, 96 hidden units (4,906 parameters), 20 test
    points; 20 epochs with a cosine learning-rate decay, which ends nearer a minimum: the
    smallest Hessian eigenvalue is -0.013, so ``H + 0.05 I`` is positive definite (at a fixed
    rate it was -0.064 after 5 epochs, and the reference refuses an indefinite system).

Methods (each times construct + fit + score, the ``(n_test, n_train)`` matrix):

``ours: defaults``
    ``InfluenceExplainer(net, curvature="hessian", solver=auto_solver(P).set_params(damping=λ))``:
    the default rule at the peers' damping and curvature.
``ours: block CG tol=5e-2``
    ``CG(damping=λ, tol=5e-2, block=True, recycle=P)``, the fastest setting at Pearson >= 0.99
    (it keeps every search direction for later calls, as the defaults do up to 64 MiB).
``pydvl: block CG rtol=1e-2``
    ``CgInfluence(regularization=λ, rtol=1e-2, solve_simultaneously=True)``.
``dattri: CG``
    ``IFAttributorCG(regularization=λ)`` with its defaults.

Columns: **warm** is the median of 5 calls after one warm-up call, **cold** the first call of
the method in this process (after a shared torch warm-up that no method is charged for);
**query-many** is one fit, then 5 batches of test points one after another (pyDVL: one
``fit``, then ``influence_factors`` and ``influences_from_factors`` per batch; dattri: one
``cache``, then ``attribute`` per batch; ours: one ``fit``, then ``influences`` per batch), the
median of 3 after a warm-up. **Pearson** and **Spearman** are per test row against a float64
explicit-Hessian solve (mean over the rows). **Peak MiB** is the growth of the process's
resident memory over its state before the call (sampled every 2 ms), in a fresh subprocess
per method. Progress bars are off (``TQDM_DISABLE=1``).

Run with the Python of the peers' environment (see ``compare.py``), on an otherwise idle
machine: ``python benchmarks/speed.py`` (both workloads, about 6 minutes on 2 CPU cores);
results go to ``benchmarks/results/speed.json`` and ``speed.rst``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this file is in
sys.path.insert(0, str(Path(__file__).resolve().parent))  # compare.py's workloads

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = {
    "2k": dict(n=2000, d=30, c=5, h=48, m=50, cosine=False),
    "8k": dict(n=8000, d=40, c=10, h=96, m=20, cosine=True),
}
DAMPING = 0.05
N_BATCHES = 5


# ============================================================================== the workloads
def build(name: str) -> dict:
    """Data, the trained skorch net, and its module (float32): ``compare.py``'s ``mlp2k`` and
    ``mlp8k`` nets."""
    from _compare_workloads import train_tabular

    w = WORKLOADS[name]
    n, m = w["n"], w["m"]
    net, X_train, X_test, y_train, y_test, _ = train_tabular(
        n, w["d"], w["c"], w["h"], N_BATCHES * m, cosine=w["cosine"])
    batches = [(X_test[i * m:(i + 1) * m], y_test[i * m:(i + 1) * m]) for i in range(N_BATCHES)]
    return {"net": net, "X_train": X_train, "y_train": y_train, "batches": batches}


def reference(data: dict) -> np.ndarray:
    """(1/n) g_testᵀ (H + λI)⁻¹ g_train of the first batch, float64, explicit Hessian."""
    import copy

    from torch.func import functional_call, grad, vjp, vmap

    module = copy.deepcopy(data["net"].module_).double()
    names = [k for k, _ in module.named_parameters()]
    shapes = [p.shape for p in module.parameters()]
    sizes = [p.numel() for p in module.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def loss(t, X, y):
        params = dict(zip(names, [q.view(s) for q, s in zip(torch.split(t, sizes), shapes)]))
        return torch.nn.functional.cross_entropy(functional_call(module, params, (X,)), y)

    Xtr = torch.as_tensor(data["X_train"], dtype=torch.float64)
    ytr = torch.as_tensor(data["y_train"])
    Xte, yte = (torch.as_tensor(a) for a in data["batches"][0])
    _, hvp = vjp(lambda t: grad(loss)(t, Xtr, ytr), theta)  # H is symmetric: vjp is H v
    eye = torch.eye(len(theta), dtype=torch.float64)
    H = torch.cat([vmap(hvp)(eye[i:i + 128])[0] for i in range(0, len(theta), 128)])
    one = vmap(grad(lambda t, x, y: loss(t, x[None], y[None])), in_dims=(None, 0, 0))
    G_tr, G_te = one(theta, Xtr, ytr), one(theta, Xte.double(), yte)
    smallest = float(torch.linalg.eigvalsh(H)[0])
    if smallest <= -DAMPING:
        raise ValueError(f"H + {DAMPING} I is indefinite: smallest eigenvalue of H {smallest:.4g}")
    solved = torch.linalg.solve(H + DAMPING * torch.eye(len(theta), dtype=H.dtype), G_te.T)
    return (G_tr @ solved).T.numpy() / len(ytr)


# ================================================================================ the methods
def ours(solver_factory):
    def make(data):
        from sk_fastif import InfluenceExplainer

        n_params = sum(p.numel() for p in data["net"].module_.parameters())

        def fit():
            return InfluenceExplainer(data["net"], solver=solver_factory(n_params),
                                      curvature="hessian").fit(data["X_train"], data["y_train"])

        return fit, lambda expl, X, y: expl.influences(X, y)
    return make


def pydvl(data):
    from pydvl.influence import torch as dvl
    from torch.utils.data import DataLoader, TensorDataset

    Xtr, ytr = torch.as_tensor(data["X_train"]), torch.as_tensor(data["y_train"])
    n = len(ytr)
    module = data["net"].module_

    def fit():
        loader = DataLoader(TensorDataset(Xtr, ytr), batch_size=n)
        return dvl.CgInfluence(module, torch.nn.functional.cross_entropy, regularization=DAMPING,
                               rtol=1e-2, solve_simultaneously=True).fit(loader)

    def score(model, X, y):
        factors = model.influence_factors(torch.as_tensor(X), torch.as_tensor(y))
        return model.influences_from_factors(factors, Xtr, ytr).detach().numpy() / n

    return fit, score


def dattri(data):
    from dattri.algorithm.influence_function import IFAttributorCG
    from dattri.task import AttributionTask
    from torch.func import functional_call
    from torch.utils.data import DataLoader, TensorDataset

    Xtr, ytr = torch.as_tensor(data["X_train"]), torch.as_tensor(data["y_train"])
    n = len(ytr)
    module = data["net"].module_

    def loss_func(params, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(functional_call(module, params, (x,)),
                                                 y.long())

    def fit():
        task = AttributionTask(loss_func=loss_func, model=module,
                               checkpoints=module.state_dict())
        attributor = IFAttributorCG(task, regularization=DAMPING)
        attributor.cache(DataLoader(TensorDataset(Xtr, ytr), batch_size=n))
        return attributor

    def score(attributor, X, y):
        test = DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)),
                          batch_size=len(y))
        S = attributor.attribute(DataLoader(TensorDataset(Xtr, ytr), batch_size=n), test)
        return S.detach().numpy().T / n

    return fit, score


def _auto(n_params):
    from sk_fastif.solvers import auto_solver
    return auto_solver(n_params).set_params(damping=DAMPING)


def _fastest(n_params):
    from sk_fastif.solvers import CG
    return CG(damping=DAMPING, tol=5e-2, block=True, recycle=n_params)


METHODS = {
    "ours: defaults": ours(_auto),
    "ours: block CG tol=5e-2": ours(_fastest),
    "pydvl: block CG rtol=1e-2": pydvl,
    "dattri: CG": dattri,
}


# ================================================================================ measuring
def one_shot(fit, score, data):
    X, y = data["batches"][0]
    return score(fit(), X, y)


def query_many(fit, score, data):
    model = fit()
    return [score(model, X, y) for X, y in data["batches"]]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def agreement(S, ref):
    from scipy.stats import pearsonr, spearmanr

    S = np.asarray(S, dtype=np.float64)
    return (float(np.mean([pearsonr(a, b)[0] for a, b in zip(S, ref)])),
            float(np.mean([spearmanr(a, b)[0] for a, b in zip(S, ref)])))


def measure(workload: str, methods: list[str]) -> list[dict]:
    data = build(workload)
    ref = reference(data)
    # a shared warm-up of torch's kernels, charged to no method
    fit, score = METHODS["ours: block CG tol=5e-2"](data)
    one_shot(fit, score, data)
    rows = []
    for name in methods:
        fit, score = METHODS[name](data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cold, S = timed(one_shot, fit, score, data)
            warm = statistics.median(timed(one_shot, fit, score, data)[0] for _ in range(5))
            timed(query_many, fit, score, data)
            many = statistics.median(timed(query_many, fit, score, data)[0] for _ in range(3))
        pearson, spearman = agreement(S, ref)
        rows.append({"method": name, "warm_s": warm, "cold_s": cold, "query_many_s": many,
                     "pearson": pearson, "spearman": spearman,
                     "peak_mib": peak_memory(workload, name)})
        print(f"{workload:>3} {name:<28} warm {warm:6.3f} s  cold {cold:6.3f} s  "
              f"query-many {many:6.3f} s  Pearson {pearson:.4f}  Spearman {spearman:.4f}  "
              f"peak {rows[-1]['peak_mib']:.0f} MiB", flush=True)
    return rows


def peak_memory(workload: str, name: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-worker", workload, name],
                         capture_output=True, text=True, timeout=600)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return float("nan")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_worker(workload: str, name: str) -> None:
    """Print the peak growth of resident memory (sampled every 2 ms) over one call."""
    import threading

    data = build(workload)
    fit, score = METHODS[name](data)
    before, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_shot(fit, score, data)
    done.set()
    sampler.join()
    print(max(peak[0], _rss_mib()) - before)


def report(results: dict) -> str:
    lines = []
    for workload, rows in results.items():
        w = WORKLOADS[workload]
        peers = [r for r in rows if not r["method"].startswith("ours")]
        lines += [f"``{workload}``: {w['n']:,} rows, {w['d']} features, {w['c']} classes, "
                  f"{w['h']} hidden, {w['m']} test points per batch", ""]
        header = ("method", "warm s", "cold s", "query-many s", "warm / fastest peer",
                  "cold / fastest peer", "query-many / fastest peer", "peak MiB", "Pearson",
                  "Spearman")
        table = []
        for r in rows:
            ratio = []
            for key in ("warm_s", "cold_s", "query_many_s"):
                best = min((p[key] for p in peers), default=float("nan"))
                ratio.append(f"{best / r[key]:.2f}x")
            table.append((r["method"], f"{r['warm_s']:.3f}", f"{r['cold_s']:.3f}",
                          f"{r['query_many_s']:.3f}", *ratio, f"{r['peak_mib']:.0f}",
                          f"{r['pearson']:.4f}", f"{r['spearman']:.4f}"))
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
        rule = " ".join("=" * x for x in widths)
        lines += [rule, " ".join(h.ljust(x) for h, x in zip(header, widths)), rule]
        lines += [" ".join(c.ljust(x) for c, x in zip(t, widths)) for t in table]
        lines += [rule, ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS),
                        choices=list(WORKLOADS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--memory-worker", nargs=2, metavar=("WORKLOAD", "METHOD"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    os.environ["TQDM_DISABLE"] = "1"  # dattri's progress bars (inherited by the workers)
    if args.memory_worker:
        memory_worker(*args.memory_worker)
        return
    results = {w: measure(w, args.methods) for w in args.workloads}
    RESULTS.mkdir(exist_ok=True)
    meta = {"cpus": os.cpu_count(), "torch": torch.__version__}
    (RESULTS / "speed.json").write_text(json.dumps({"machine": meta, "results": results},
                                                   indent=1))
    (RESULTS / "speed.rst").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
