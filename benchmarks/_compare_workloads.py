"""Workloads of ``benchmarks/compare.py``: the trained nets, their data and the reference scores.

A workload is prepared once by the parent process and saved to a directory (``spec.json``, the
module's ``state.pt`` and ``data.npz``), from which every worker process loads the same net and
data. The reference scores, ``score = (1/n) g_testᵀ (H + λI)⁻¹ g_train`` in float64 on the exact
Hessian of the mean training loss, are computed here independently of sk_fastif's solvers and
cached in the same directory.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, grad, hessian, jvp, vmap

from sk_fastif.datasets import load_digits_split, make_classification_split
from sk_fastif.toy import TanhMLP, train_mlp_classifier

#: The workloads: name -> settings. ``net`` names the trained net a workload shares with others.
WORKLOADS = {
    "digits50": {"net": "digits", "n_test": 50, "reference": "explicit"},
    "digits360": {"net": "digits", "n_test": 360, "reference": "explicit"},
    "synth": {"net": "synth", "n_test": 20, "reference": "cg"},
    "mlp2k": {"net": "mlp2k", "n_test": 50, "reference": "explicit"},
    "mlp8k": {"net": "mlp8k", "n_test": 20, "reference": "explicit"},
}

#: Damping on the Hessian, per net: above minus its smallest eigenvalue (digits: 6e-5, synth:
#: -0.019, by Lanczos), so that ``H + λI`` is positive definite and CG is the reference.
DAMPING = {"digits": 0.011, "synth": 0.05, "mlp2k": 0.05, "mlp8k": 0.05}


# ================================================================================== the nets
def _train_digits():
    """The digits MLP: ``train_digits_net(0)``'s split and training (64-32-10 tanh, Adam)."""
    X_train, X_test, y_train, y_test = load_digits_split(random_state=0)
    net = train_mlp_classifier(X_train, y_train, n_out=10, random_state=0)
    return net, X_train, X_test, y_train, y_test, {"n_in": 64, "n_hidden": 32, "n_out": 10}


def _train_synth():
    """A 100-256-10 tanh MLP on 20,000 rows of ``make_classification`` (5 epochs of Adam)."""
    X_train, X_test, y_train, y_test = make_classification_split(
        20000, 1000, n_features=100, n_informative=40, n_redundant=20, n_classes=10,
        class_sep=1.5, standardize=True, random_state=0)
    net = train_mlp_classifier(X_train, y_train, n_out=10, random_state=0, n_hidden=256,
                               max_epochs=5, batch_size=128, lr=0.003)
    return net, X_train, X_test, y_train, y_test, {"n_in": 100, "n_hidden": 256, "n_out": 10}


def train_tabular(n, d, c, h, n_test, cosine):
    """A d-h-c tanh MLP on n rows of ``make_classification``, 20 epochs of Adam (lr 1e-2)."""
    from sklearn.datasets import make_classification
    from skorch import NeuralNetClassifier
    from skorch.callbacks import LRScheduler

    X, y = make_classification(n + n_test, d, n_informative=d // 2, n_classes=c,
                               random_state=0)
    X, y = X.astype(np.float32), y.astype(np.int64)
    torch.manual_seed(0)
    callbacks = [LRScheduler("CosineAnnealingLR", T_max=20)] if cosine else []
    net = NeuralNetClassifier(
        TanhMLP, module__n_in=d, module__n_hidden=h, module__n_out=c,
        criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam, lr=1e-2,
        max_epochs=20, batch_size=128, train_split=None, callbacks=callbacks,
        verbose=0).fit(X[:n], y[:n])
    return net, X[:n], X[n:], y[:n], y[n:], {"n_in": d, "n_hidden": h, "n_out": c}


def _train_mlp2k():
    """2,000 rows, 30 features, 5 classes, 48 hidden units (1,733 parameters)."""
    return train_tabular(2000, 30, 5, 48, 250, cosine=False)


def _train_mlp8k():
    """8,000 rows, 40 features, 10 classes, 96 hidden units (4,906 parameters). A cosine
    learning-rate decay ends training nearer a minimum: the smallest Hessian eigenvalue is
    -0.013, so ``H + 0.05 I`` is positive definite (-0.064 after 5 epochs at a fixed rate)."""
    return train_tabular(8000, 40, 10, 96, 100, cosine=True)


_TRAINERS = {"digits": _train_digits, "synth": _train_synth, "mlp2k": _train_mlp2k,
             "mlp8k": _train_mlp8k}


def build_module(spec: dict, dtype=torch.float32) -> torch.nn.Module:
    """The workload's :class:`~sk_fastif.datasets.TanhMLP`, weights loaded, in eval mode."""
    module = TanhMLP(**spec["arch"])
    module.load_state_dict(torch.load(Path(spec["dir"]) / "state.pt", weights_only=True))
    return module.to(dtype).eval()


def load_workload(directory) -> tuple[dict, dict]:
    """``(spec, data)`` of a prepared workload; ``data`` holds the four numpy arrays."""
    directory = Path(directory)
    spec = json.loads((directory / "spec.json").read_text())
    spec["dir"] = str(directory)
    with np.load(directory / "data.npz") as f:
        data = {k: f[k] for k in f.files}
    return spec, data


def prepare(name: str, root, log=print) -> Path:
    """Train (or find) workload ``name``'s net, save it under ``root`` and compute its reference.

    Returns the workload's directory. A net is trained once and shared by the workloads that
    name it; its files and reference are reused when already there.
    """
    settings = WORKLOADS[name]
    net_name = settings["net"]
    root = Path(root)
    net_dir = root / net_name
    if not (net_dir / "spec.json").exists():
        t0 = time.perf_counter()
        net, X_train, X_test, y_train, y_test, arch = _TRAINERS[net_name]()
        net_dir.mkdir(parents=True, exist_ok=True)
        torch.save(net.module_.state_dict(), net_dir / "state.pt")
        np.savez(net_dir / "data.npz", X_train=X_train, y_train=y_train, X_test=X_test,
                 y_test=y_test)
        base = {"net": net_name, "arch": arch, "damping": DAMPING[net_name],
                "n_train": len(X_train), "accuracy_test": float(np.mean(
                    net.predict(X_test) == y_test))}
        (net_dir / "spec.json").write_text(json.dumps(base, indent=1))
        log(f"[{net_name}] trained in {time.perf_counter() - t0:.1f} s")
    base = json.loads((net_dir / "spec.json").read_text())
    if "spectrum" not in base:
        spec_net, data_net = load_workload(net_dir)
        base["spectrum"] = extreme_eigenvalues(spec_net, data_net)
        (net_dir / "spec.json").write_text(json.dumps(base, indent=1))
        log(f"[{net_name}] Hessian eigenvalues {base['spectrum']}")
    if base["spectrum"]["mu_min"] + base["damping"] <= 0:
        raise RuntimeError(f"[{net_name}] H + λI is not positive definite: smallest eigenvalue "
                           f"{base['spectrum']['mu_min']:.3g}, damping {base['damping']}.")
    work_dir = root / name
    work_dir.mkdir(parents=True, exist_ok=True)
    n_test = settings["n_test"]
    with np.load(net_dir / "data.npz") as f:
        many = np.arange(5 * n_test) % len(f["y_test"])  # query-many: 5 batches of n_test
        np.savez(work_dir / "data.npz", X_train=f["X_train"], y_train=f["y_train"],
                 X_test=f["X_test"][:n_test], y_test=f["y_test"][:n_test],
                 X_many=f["X_test"][many], y_many=f["y_test"][many])
    state = (net_dir / "state.pt").read_bytes()
    (work_dir / "state.pt").write_bytes(state)
    spec = {**base, "name": name, "n_test": n_test, "labels": "true",
            "reference": settings["reference"],
            "fingerprint": hashlib.sha256(state).hexdigest()[:16]}
    (work_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    spec, data = load_workload(work_dir)
    reference(spec, data, cache=net_dir, log=log)
    return work_dir


# ============================================================ float64 gradients and curvature
def functional(spec: dict):
    """``(params, loss, per_sample_grads)`` of the workload's net in float64.

    ``params`` is a dict of detached float64 tensors; ``loss(p, X, y)`` the mean cross-entropy;
    ``per_sample_grads(p, X, y)`` an ``(n, n_params)`` matrix of flattened gradients.
    """
    module = build_module(spec, torch.float64)
    params = {k: v.detach() for k, v in module.named_parameters()}

    def loss(p, X, y):
        return torch.nn.functional.cross_entropy(functional_call(module, p, (X,)), y)

    def one(p, x, t):
        g = grad(loss)(p, x[None], t[None])
        return torch.cat([g[k].reshape(-1) for k in p])

    def per_sample_grads(p, X, y, chunk=2048):
        return torch.cat([vmap(one, in_dims=(None, 0, 0))(p, X[i:i + chunk], y[i:i + chunk])
                          for i in range(0, len(X), chunk)])

    return params, loss, per_sample_grads


def _flat_hvp(spec, data, chunk=5000):
    """A float64 Hessian-vector product ``v -> H v`` of the mean training loss (flat vectors)."""
    params, loss, _ = functional(spec)
    X = torch.as_tensor(data["X_train"], dtype=torch.float64)
    y = torch.as_tensor(data["y_train"])
    names = list(params)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]

    def unflat(v):
        return {k: t.reshape(s) for k, t, s in zip(names, torch.split(v, sizes), shapes)}

    def hvp(v):
        out = torch.zeros_like(v)
        tangent = unflat(v)
        for i in range(0, len(X), chunk):
            Xi, yi = X[i:i + chunk], y[i:i + chunk]
            _, hv = jvp(lambda p, Xi=Xi, yi=yi: grad(loss)(p, Xi, yi), (params,), (tangent,))
            out += torch.cat([hv[k].reshape(-1) for k in names]) * (len(Xi) / len(X))
        return out

    return hvp, sum(sizes)


def extreme_eigenvalues(spec: dict, data: dict, tol: float = 1e-3) -> dict:
    """Largest and smallest Hessian eigenvalues by Lanczos (``scipy.sparse.linalg.eigsh``).

    Used to choose the peers' LiSSA scales (``s`` above ``μ_max``) and to check that
    ``H + λI`` is positive definite (``μ_min + λ > 0``). Shifted power iteration is not
    enough for the smallest one: on ``synth`` 60 steps gave -0.0009 where Lanczos finds -0.019.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    hvp, n_params = _flat_hvp(spec, data)
    op = LinearOperator((n_params, n_params), dtype=np.float64,
                        matvec=lambda v: hvp(torch.as_tensor(np.ravel(v))).numpy())
    v0 = np.random.RandomState(0).randn(n_params)
    mu_max = float(eigsh(op, k=1, which="LA", tol=tol, ncv=40, v0=v0)[0][0])
    mu_min = float(eigsh(op, k=1, which="SA", tol=tol, ncv=60, v0=v0)[0][0])
    return {"mu_max": mu_max, "mu_min": mu_min}


# ============================================================================ reference scores
def reference(spec: dict, data: dict, cache=None, log=print) -> np.ndarray:
    """The reference score matrix ``(n_test, n_train)`` in float64, cached in ``cache``.

    ``"explicit"``: the Hessian from :func:`torch.func.hessian` of the mean loss (summed over
    chunks of the training set) and a Cholesky solve. ``"cg"``: conjugate gradients over
    float64 Hessian-vector products, to a relative residual of 1e-8 for every test point.
    Cached per net (all test points of the net's held-out rows are scored at once).
    """
    cache = Path(cache if cache is not None else Path(spec["dir"]).parent / spec["net"])
    path = cache / f"reference_{spec['reference']}.npy"
    n_test = spec["n_test"]
    if path.exists():
        S = np.load(path)
        if len(S) >= n_test:
            return S[:n_test]
    t0 = time.perf_counter()
    with np.load(cache / "data.npz") as f:
        full = {k: f[k] for k in f.files}
    if spec["net"] == "synth":  # its 1,000 held-out rows are not all needed
        full["X_test"], full["y_test"] = full["X_test"][:n_test], full["y_test"][:n_test]
    params, loss, psg = functional(spec)
    Xtr = torch.as_tensor(full["X_train"], dtype=torch.float64)
    ytr = torch.as_tensor(full["y_train"])
    Xte = torch.as_tensor(full["X_test"], dtype=torch.float64)
    yte = torch.as_tensor(full["y_test"])
    G_test = psg(params, Xte, yte)
    lam = spec["damping"]
    if spec["reference"] == "explicit":
        names = list(params)
        shapes = [params[k].shape for k in names]
        sizes = [params[k].numel() for k in names]
        flat = torch.cat([params[k].reshape(-1) for k in names])

        def flat_loss(theta, X, y):
            p = {k: t.reshape(s) for k, t, s in zip(names, torch.split(theta, sizes), shapes)}
            return loss(p, X, y)

        H = torch.zeros(len(flat), len(flat), dtype=torch.float64)
        for i in range(0, len(Xtr), 256):
            Xi, yi = Xtr[i:i + 256], ytr[i:i + 256]
            H += hessian(flat_loss)(flat, Xi, yi) * (len(Xi) / len(Xtr))
        H = (H + H.T) / 2 + lam * torch.eye(len(flat), dtype=torch.float64)
        L = torch.linalg.cholesky(H)  # fails loudly if H + λI is not positive definite
        F = torch.cholesky_solve(G_test.T, L).T
    else:
        hvp, _ = _flat_hvp(spec, full)
        F = torch.stack([_cg(lambda v: hvp(v) + lam * v, g, rtol=1e-8, log=log) for g in G_test])
    G_train = psg(params, Xtr, ytr)
    S = (F @ G_train.T / len(Xtr)).numpy()
    np.save(path, S)
    log(f"[{spec['net']}] reference ({spec['reference']}) in {time.perf_counter() - t0:.1f} s")
    return S[:n_test]


def _cg(A, b, *, rtol, max_iter=5000, log=print):
    """Plain float64 conjugate gradients for ``A x = b`` to ``|b - A x| <= rtol |b|``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    target = (rtol * b.norm()) ** 2
    it = 0
    for it in range(max_iter):  # noqa: B007 (reported below)
        Ap = A(p)
        curv = p @ Ap
        if curv <= 0:
            raise RuntimeError("H + λI is not positive definite along a CG direction.")
        alpha = rs / curv
        x += alpha * p
        r -= alpha * Ap
        rs_new = r @ r
        if rs_new <= target:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    # the recurrence drifts: check the true residual
    res = float((b - A(x)).norm() / b.norm())
    log(f"  reference CG: {it + 1} iterations, true relative residual {res:.1e}")
    if res > 10 * rtol:
        raise RuntimeError(f"reference CG reached only a relative residual of {res:.1e}")
    return x
