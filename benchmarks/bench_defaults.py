"""The defaults against the truth: damping="auto" and solver="auto" beside fixed settings.

(a) A convex model, where the truth is leave-one-out retraining: multinomial logistic
regression on 16 digits features (170 parameters, 300 rows, float64), trained to the optimum
of its loss + wd/2 |θ|² (wd = 0.01) by L-BFGS, and retrained without each of 60 training points
(30 most influential, 30 random). The damping that matches the training objective is ``wd``
itself (the Hessian of the penalised loss is H + wd I); the others show what a wrong damping
costs. Pearson and Spearman of predicted against actual test-loss change, 5 test points.

(b) The digits MLP (64-32-10 tanh, 2,410 parameters, 1,437 training rows): the default
explainer (``solver="auto"``, ``curvature="gauss_newton"``, ``damping="auto"``) and
``LiSSA()`` with its defaults against ``Exact`` at fixed dampings, on 50 test points: Spearman
over all scores and the top-10 helpful overlap, and the wall time of fit + influences.

Run: ``python benchmarks/bench_defaults.py``.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this file is in

from sk_fastif import InfluenceExplainer  # noqa: E402
from sk_fastif.datasets import load_digits_split  # noqa: E402
from sk_fastif.solvers import Exact, LiSSA  # noqa: E402
from sk_fastif.toy import train_digits_net  # noqa: E402


def fit_logreg(X, y, wd, net=None):
    from skorch import NeuralNetClassifier

    if net is None:
        torch.manual_seed(0)
        net = NeuralNetClassifier(torch.nn.Linear, module__in_features=X.shape[1],
                                  module__out_features=10, criterion=torch.nn.CrossEntropyLoss,
                                  max_epochs=1, train_split=None, verbose=0)
        net.initialize()
        net.module_.double()
    params = list(net.module_.parameters())
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-14, history_size=50,
                            line_search_fn="strong_wolfe")
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net.module_(Xt), yt)
        loss = loss + 0.5 * wd * sum((p ** 2).sum() for p in params)
        loss.backward()
        return loss

    opt.step(closure)
    for p in params:
        p.grad = None
    return net


def convex():
    X, _, y, _ = load_digits_split(split="permutation", n_train=300, n_test=0, random_state=1)
    X = X[:, ::4].astype(np.float64)
    wd = 1e-2
    net = fit_logreg(X, y, wd)
    test = slice(0, 5)

    def losses(model):
        with torch.no_grad():
            out = model.module_(torch.as_tensor(X[test]))
            return torch.nn.functional.cross_entropy(out, torch.as_tensor(y[test]),
                                                     reduction="none").numpy()

    auto = InfluenceExplainer(net).fit(X, y)
    ref = auto.influences(X[test], y[test])
    rng = np.random.RandomState(0)
    top = np.argsort(-np.abs(ref[0]))[:30]
    removed = np.unique(np.concatenate([top, rng.choice(len(X), 30, replace=False)]))
    base = losses(net)
    actual = np.empty((len(removed), 5))
    for i, j in enumerate(removed):
        keep = np.arange(len(X)) != j
        actual[i] = losses(fit_logreg(X[keep], y[keep], wd, copy.deepcopy(net))) - base

    lam = auto.solver_.damping_
    rows = [(f'"auto" (= {lam:.3g}, solver_ = {type(auto.solver_).__name__})', auto)]
    for d in (1e-4, 1e-3, wd, 1e-1):
        note = " (= wd: the training objective's own)" if d == wd else ""
        rows.append((f"{d:g}{note}", InfluenceExplainer(net, solver=Exact(damping=d)).fit(X, y)))
    print(f"(a) logistic regression, {auto.n_params_} parameters, {len(X)} rows, wd={wd}; "
          f"{len(removed)} removals x 5 test points")
    print("| damping | Pearson vs LOO | Spearman vs LOO |")
    print("| --- | ---: | ---: |")
    for name, expl in rows:
        pred = expl.influences(X[test], y[test])[:, removed].T * len(X) / (len(X) - 1)
        print(f"| {name} | {pearsonr(pred.ravel(), actual.ravel())[0]:.3f} | "
              f"{spearmanr(pred.ravel(), actual.ravel())[0]:.3f} |")


def top10(a, b):
    return np.mean([len(set(np.argsort(-x)[:10]) & set(np.argsort(-z)[:10])) / 10
                    for x, z in zip(a, b)])


def mlp():
    net, Xtr, Xte, ytr, yte = train_digits_net(0)
    Xq, yq = Xte[:50], None  # explain the predictions, as the README does

    def run(**kw):
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            expl = InfluenceExplainer(net, random_state=0, **kw).fit(Xtr, ytr)
            scores = expl.influences(Xq, yq)
        return expl, scores, time.perf_counter() - t0, sorted({w.category.__name__
                                                               for w in caught})

    default, s_default, t_default, w_default = run()
    lam = default.solver_.damping_
    refs = {
        f"Exact, Gauss-Newton, damping {lam:.3g} (= auto)": run(solver=Exact(damping=lam))[1],
        "Exact, Gauss-Newton, damping 1e-3": run(solver=Exact(damping=1e-3))[1],
        "Exact, Hessian, damping 1e-2": run(solver=Exact(damping=1e-2), curvature="hessian")[1],
    }
    rows = [("default: InfluenceExplainer(net)", s_default, t_default, w_default)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        depth = InfluenceExplainer(net, solver=LiSSA(damping="auto")).fit(Xtr, ytr).solver_.depth_
    if depth <= 20_000:
        _, s_lissa, t_lissa, w_lissa = run(solver=LiSSA(damping="auto"))
        rows.append((f'LiSSA(damping="auto"), depth_={depth}', s_lissa, t_lissa, w_lissa))
    else:
        print(f'LiSSA(damping="auto") not run: its automatic depth is {depth:,} steps')
    print(f"\n(b) digits MLP, {default.n_params_} parameters, {len(Xtr)} rows, 50 test "
          f"points; default solver_ = {default.solver_!r}, damping_ = {lam:.4g}")
    print("| method | reference | Spearman | top-10 overlap | time (s) | warnings |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for name, s, t, w in rows:
        for ref_name, ref in refs.items():
            print(f"| {name} | {ref_name} | {spearmanr(s.ravel(), ref.ravel())[0]:.3f} | "
                  f"{top10(s, ref):.2f} | {t:.1f} | {', '.join(w) or '-'} |")


if __name__ == "__main__":
    convex()
    mlp()
