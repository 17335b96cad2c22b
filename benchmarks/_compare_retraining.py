"""``compare.py --retraining``: leave-one-out correlation and LDS of a few methods' scores.

Two models on the digits: a convex one, ``Linear(64, 10)`` trained to its optimum by L-BFGS on
the mean cross-entropy plus ``(λ/2)|θ|²`` (so that ``H + λI`` is exactly the Hessian of the
objective the refits minimise), and the digits MLP of the other tables (refit: a clone trained
with the same settings). Methods: sk_fastif's ``Exact`` and ``CG``, pyDVL's CG and Kronfluence's
EK-FAC; a peer's score matrix is evaluated through the ``scores=`` keyword of
:func:`sk_fastif.metrics.linear_datamodeling_score` and
:func:`sk_fastif.metrics.leave_one_out_correlation`. Where that keyword is not available yet,
the peer rows say so. The scores are computed in this process (this table is about agreement
with retraining, not speed).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skorch import NeuralNetClassifier
from torch.utils.data import DataLoader, TensorDataset

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import load_digits_split
from sk_fastif.solvers import CG, Exact
from sk_fastif.toy import train_mlp_classifier

DAMPING = 0.011


def fit_linear(X, y, *, lam=DAMPING, n_classes=10):
    """A fitted skorch ``Linear(64, 10)`` at the optimum of cross-entropy + ``(λ/2)|θ|²``."""
    module = torch.nn.Linear(X.shape[1], n_classes)
    torch.nn.init.zeros_(module.weight)
    torch.nn.init.zeros_(module.bias)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    opt = torch.optim.LBFGS(module.parameters(), lr=1, max_iter=500, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(module(Xt), yt) + lam / 2 * sum(
            (p ** 2).sum() for p in module.parameters())
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    net = NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss, max_epochs=0,
                              train_split=None, verbose=0).initialize()
    net.module_.load_state_dict(module.state_dict())
    return net


def peer_scores(kind, module, X, y, X_test, y_test, lam=DAMPING):
    """pyDVL CG or Kronfluence EK-FAC scores in sk_fastif's convention (see _compare_methods)."""
    Xtr, ytr = torch.as_tensor(X), torch.as_tensor(y)
    Xte, yte = torch.as_tensor(X_test), torch.as_tensor(y_test)
    n = len(Xtr)
    if kind == "pydvl:CG":
        from pydvl.influence.torch import CgInfluence

        model = CgInfluence(module, F.cross_entropy, regularization=lam, rtol=1e-7, atol=1e-9,
                            solve_simultaneously=True)
        model.fit(DataLoader(TensorDataset(Xtr, ytr), batch_size=n))
        return model.influences(Xte, yte, Xtr, ytr).detach().numpy() / n
    import _compare_methods as cm

    spec = {"damping": lam}
    data = {"X_train": X, "y_train": y, "X_test": X_test, "y_test": y_test}
    orig = cm.build_module
    cm.build_module = lambda spec, dtype=torch.float32: module
    try:
        scores, _ = cm.METHODS["kronfluence:EK-FAC"].setup(spec, data)()
    finally:
        cm.build_module = orig
    return scores


def main(args) -> int:
    """Run the LOO / LDS table and add it to ``args.out`` under ``"retraining"``."""
    from sk_fastif.metrics import leave_one_out_correlation, linear_datamodeling_score

    X, X_test, y, y_test = load_digits_split(random_state=0)
    X_test, y_test = X_test[:20], y_test[:20]
    models = {
        "linear (convex, L-BFGS)": (fit_linear(X, y), fit_linear, 20, 50),
        "digits MLP": (train_mlp_classifier(X, y, n_out=10, random_state=0), None, 20, 50),
    }
    out = {}
    for model_name, (net, refit, n_loo, n_subsets) in models.items():
        rows = []
        for name, solver in (("ours:Exact", Exact(damping=DAMPING)),
                             ("ours:CG", CG(damping=DAMPING)),
                             ("pydvl:CG", None), ("kronfluence:EK-FAC", None)):
            expl = InfluenceExplainer(net, solver=solver or CG(damping=DAMPING),
                                      curvature="hessian", random_state=0).fit(X, y)
            kw = {}
            row = {"method": name}
            try:
                if solver is None:
                    kw["scores"] = peer_scores(name, copy.deepcopy(net.module_), X, y,
                                               X_test, y_test)
                loo = leave_one_out_correlation(
                    expl, X, y, X_test, y_test, refit=refit, random_state=0,
                    indices=np.random.RandomState(0).choice(len(X), n_loo, replace=False),
                    **kw)
                lds = linear_datamodeling_score(expl, X, y, X_test, y_test, n_subsets=n_subsets,
                                                refit=refit, random_state=0, **kw)
                row.update(loo=float(loo.score), lds=float(lds.score))
            except TypeError as exc:
                row["error"] = f"needs the scores= keyword of sk_fastif.metrics: {exc}"
            except Exception as exc:  # reported in the table
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            print(f"  [{model_name}] {row}", flush=True)
            rows.append(row)
        out[model_name] = {"n_loo": n_loo, "n_subsets": n_subsets, "rows": rows}
        print(f"\n### retraining: {model_name}\n\n| method | LOO Pearson | LDS | note |\n"
              "| --- | ---: | ---: | --- |")
        for r in rows:
            print(f"| {r['method']} | {r.get('loo', float('nan')):.3f} | "
                  f"{r.get('lds', float('nan')):.3f} | {r.get('error', '')} |")
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.exists() else {}
    result["retraining"] = {"damping": DAMPING, "n_test": len(X_test), "models": out}
    path.write_text(json.dumps(result, indent=1, default=float))
    return 0

