"""FastIF candidate pruning: recall of the kNN shortlists, and the end-to-end speed-up.

Three parts, each printing markdown tables (ratios against a baseline run in the same process):

(a) Recall-vs-k (FastIF's study): for correctly and wrongly predicted test points, the fraction
    R@m of the m truly most influential training points (exhaustive scoring) that the k nearest
    training points in the net's penultimate space contain, for k from 10 to n, beside the random
    baseline k/n. On digits (exact curvature) and on a synthetic ``make_classification`` problem
    (the reference LiSSA). Shortlists from exact kNN (``ExactCandidates``, like FastIF's flat
    FAISS index) and, for the helpful top-10, from ``NNDescentCandidates``.
(b) End-to-end speed per test point (one test point per call, FastIF's protocol) of
    kNN + small-batch LiSSA against exhaustive scoring with FastIF's reference LiSSA
    (batch 128, depth 1000), with the agreement beside each time: Spearman correlation with the
    reference scores over each point's candidates, and R@10 of the shortlist and of the
    explanation's top 10 against the reference's exhaustive top 10.
(c) How the time per test point grows with n, the index build reported separately.
(d) Selectors in feature and gradient space at the same k: penultimate and input neighbours,
    the gradient dot product and ``GradientSketchCandidates`` (SVD, orthogonal and Gaussian
    projections), R@10 of the helpful list against exhaustive exact scores, on the digits MLP
    and a 5,800-row 4-class problem; the recall-vs-k curves with the random baseline go to
    ``benchmarks/results/candidate_recall.json``.
(e) The query cost of the sketch after fit against the number of parameters.
(f) ``--factor-scoring``: exhaustive scoring from the rank-one factors of linear layers (layer
    inputs and backpropagated signals) against the engine's and against pruning, at 100,000 rows.

All times are CPU seconds of the benchmark process (``time.process_time``) with one torch thread,
so that other jobs on a shared machine do not distort the ratios.

Run: ``python benchmarks/bench_knn.py`` (10,000, 30,000 and 100,000 training rows; about 30
minutes on two CPU cores). ``--large`` adds 1,000,000 rows (about 25 more minutes, 4 GB of memory);
``--quick`` is a small smoke run; ``--selectors`` runs (d) and (e) only (about 5 minutes). The
tables of a ``--large`` run are in docs/candidates.rst.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

# benchmark this checkout, not an installed sk_fastif
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.base import clone

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import make_classification_split
from sk_fastif.neighbors import ExactCandidates, GradientSketchCandidates, NNDescentCandidates
from sk_fastif.solvers import CG, Exact, LiSSA
from sk_fastif.toy import train_digits_net, train_mlp_classifier

KINDS = {"helpful": lambda s: -s, "harmful": lambda s: s, "abs": lambda s: -np.abs(s)}


def make_problem(n_train: int, n_test: int = 2000, seed: int = 0):
    """32 standardised features, 2 classes of 3 clusters each, 3% of the labels random."""
    return make_classification_split(
        n_train, n_test, n_features=32, n_informative=12, n_redundant=8, n_clusters_per_class=3,
        flip_y=0.03, class_sep=0.8, standardize=True, random_state=seed,
    )


def train_mlp(X, y, width: int, seed: int = 0):
    """32 -> width -> width -> 2 tanh MLP (width 256: 74,754 parameters; 64: 6,402)."""
    epochs = int(np.clip(round(200_000 / len(X)), 1, 20))  # about 200k samples seen
    return train_mlp_classifier(X, y, n_hidden=width, n_hidden_layers=2, lr=1e-3,
                                max_epochs=epochs, batch_size=256, random_state=seed)


def pick_points(pred, y, n_each: int):
    """Indices of the first ``n_each`` correctly and the first ``n_each`` wrongly predicted."""
    correct = np.flatnonzero(pred == y)[:n_each]
    wrong = np.flatnonzero(pred != y)[:n_each]
    return correct, wrong


def recall_at(scores, shortlists, m, kind):
    top = np.argsort(KINDS[kind](scores), axis=1, kind="stable")[:, :m]
    return np.array([np.isin(t, s).sum() / m for t, s in zip(top, shortlists)])


def timed(fn, *args, **kw):
    """Result and CPU seconds of this process (robust to other jobs on a shared machine)."""
    t0 = time.process_time()
    out = fn(*args, **kw)
    return out, time.process_time() - t0


def fmt_t(t: float) -> str:
    return f"{t:.3g}" if t < 100 else f"{t:.0f}"


# ------------------------------------------------------------------------------- (a) recall
def recall_tables(name, net, Xtr, scores, X_pts, groups, ks, nnd=None, tops=(10, 100)):
    """Print R@m vs k for each kind, correct / wrong, with exact and NNDescent shortlists."""
    n = len(Xtr)
    exact = ExactCandidates(n_neighbors=1).fit(net, Xtr)
    ks = [k for k in ks if k <= n]
    print(f"\n#### (a) {name}: R@m of the k nearest training points (correct / wrong "
          f"predictions, {len(groups['correct'])} / {len(groups['wrong'])} test points, "
          f"n = {n:,})\n")
    header = "| k | random k/n | " + " | ".join(
        f"{kind} R@{m}" for kind in KINDS for m in tops) + " | NNDescent helpful R@10 |"
    print(header)
    print("|" + " ---: |" * (header.count("|") - 1))
    for k in ks:
        short, _ = exact.kneighbors(net, X_pts, n_neighbors=k)
        cells = [f"{k:,}", f"{k / n:.4f}"]
        for kind in KINDS:
            for m in tops:
                r = recall_at(scores, short, m, kind)
                cells.append(f"{r[groups['correct']].mean():.2f} / {r[groups['wrong']].mean():.2f}")
        cell = "–"
        if nnd is not None and k <= n // 4:
            short_nnd, _ = nnd.kneighbors(net, X_pts, n_neighbors=k)
            r = recall_at(scores, short_nnd, 10, "helpful")
            cell = f"{r[groups['correct']].mean():.2f} / {r[groups['wrong']].mean():.2f}"
        cells.append(cell)
        print("| " + " | ".join(cells) + " |")


def digits_recall(args):
    net, Xtr, Xte, ytr, yte = train_digits_net(0)
    pred = net.predict(Xte)
    correct, wrong = pick_points(pred, yte, 50)
    pts = np.concatenate([correct, wrong])
    groups = {"correct": np.arange(len(correct)),
              "wrong": np.arange(len(correct), len(pts))}
    expl = InfluenceExplainer(net, solver=Exact(damping=1.0)).fit(Xtr, ytr)
    min_eig = float(expl.solver_.eigenvalues_.min())
    damping = max(1e-2, 2 * -min_eig)
    expl.set_params(solver=Exact(damping=damping)).fit(Xtr, ytr)
    print(f"\ndigits MLP 64-32-10 ({expl.n_params_} parameters), {len(Xtr)} training points, "
          f"Exact solver, Hessian, damping {damping:.3g}; test accuracy {np.mean(pred == yte):.3f}")
    scores = expl.influences(Xte[pts], yte[pts])
    nnd = NNDescentCandidates(n_neighbors=10, random_state=0).fit(net, Xtr)
    recall_tables("digits", net, Xtr, scores, Xte[pts], groups,
                  [10, 30, 100, 300, 1000, len(Xtr)], nnd=nnd)


# ------------------------------------------------------------------------- (b), (c) speed
def solvers(scale, damping, args):
    ref = LiSSA(damping=damping, scale=scale, depth=1000, batch_size=128, random_state=0)
    fast = {f"LiSSA B=1 J={d}": LiSSA(damping=damping, scale=scale, depth=d, batch_size=1,
                                       random_state=0) for d in args.fast_depths}
    return ref, fast


def estimate_scale(net, Xtr, ytr, damping):
    """LiSSA's automatic scale with single-row probes, on a 10,000-row subsample."""
    sub = min(len(Xtr), 10_000)
    probe = InfluenceExplainer(net, solver=LiSSA(damping=damping, batch_size=1, random_state=0))
    probe.fit(Xtr[:sub], ytr[:sub])
    return 2.0 * probe.solver_.scale_, probe.solver_.top_eigenvalue_


def speed_for_size(n, args, rows_b, rows_c, recall_problem=False):
    Xtr, Xte, ytr, yte = make_problem(n, seed=0)
    net, t_train = timed(train_mlp, Xtr, ytr, args.width)
    pred = net.predict(Xte)
    print(f"\n## n = {n:,}: trained the MLP in {t_train:.0f} s, test accuracy "
          f"{np.mean(pred == yte):.3f}; torch threads {torch.get_num_threads()}")
    scale, top = estimate_scale(net, Xtr, ytr, 0.0)
    damping = args.damping_ratio * scale
    ref_solver, fast_solvers = solvers(scale, damping, args)
    print(f"Hessian, top eigenvalue ~{top:.3g}; every LiSSA uses scale {scale:.3g} and damping "
          f"{damping:.3g} (FastIF's damping/scale ratio {args.damping_ratio:g})")

    k = args.k
    selector = NNDescentCandidates(n_neighbors=k, random_state=0)
    fitted_sel, t_index = timed(clone(selector).fit, net, Xtr)
    common = dict(curvature="hessian", batch_size=256)

    def explainer(solver, pruned):
        # The pruned explainers share the one index built above (each would otherwise build the
        # same index, seed 0): fit without candidates, then attach the fitted selector.
        e, t_fit = timed(InfluenceExplainer(net, solver=solver, **common).fit, Xtr, ytr)
        if pruned:
            e.set_params(candidates=selector)
            e.candidates_ = fitted_sel
            t_fit += t_index
        return e, t_fit

    ref, t_fit_ref = explainer(ref_solver, False)
    knn_ref, t_fit_knn = explainer(ref_solver, True)
    fast, t_fit = {}, {}
    for name, solver in fast_solvers.items():
        fast[name], t_fit[name] = explainer(solver, True)

    correct, wrong = pick_points(pred, yte, args.n_quality // 2)
    pts = np.concatenate([correct, wrong])
    Xq, yq = Xte[pts], pred[pts]  # explain the predictions

    # ---- warm-up (torch.func tracing, first queries): every method once with 3 LiSSA steps
    for e in [ref, knn_ref, *fast.values()]:
        depth = e.solver_.depth
        e.solver_.set_params(depth=3)
        e.influences(Xq[:1], yq[:1])
        e.solver_.set_params(depth=depth)

    # ---- (b) timing: one test point per call, as FastIF does
    configs = {"ref": ref, "knn_ref": knn_ref, **fast}
    times = {name: [] for name in configs}
    stages = {"exhaustive scoring": [], "kNN query": [], "kNN scoring": []}
    for i in range(args.n_time):
        x, yy = Xq[i : i + 1], yq[i : i + 1]
        for name, e in configs.items():
            times[name].append(timed(e.influences, x, yy)[1])
        # ---- (c) the stages that depend on n, with factors from the cheapest solver (the
        # cost of scoring does not depend on the factors' values), through the engine
        e = fast[next(iter(fast))]
        Xt, yt = e.as_engine_input(x, yy)
        S = e.engine_.factors(e.engine_.gradients(Xt, yt)).solution
        stages["exhaustive scoring"].append(timed(ref.engine_.score_rows, S)[1])
        (C, _), t_query = timed(e.candidates_.kneighbors, e.net_, Xt)
        stages["kNN query"].append(t_query)
        stages["kNN scoring"].append(timed(e.engine_.score_candidates, S,
                                           np.sort(C, axis=1))[1])
    t = {name: float(np.median(v)) for name, v in times.items()}
    st = {name: float(np.median(v)) for name, v in stages.items()}

    # ---- agreement on a batch (LiSSA's estimate for a column does not depend on the block)
    ref_scores, t_ref_batch = timed(ref.influences, Xq, yq)
    ref_top10 = np.argsort(-ref_scores, axis=1, kind="stable")[:, :10]
    print(f"reference scores of {len(Xq)} test points in one call: {t_ref_batch:.0f} s")

    def agreement(rows_of):
        rho, rec_short, rec_expl = [], [], []
        for i in range(len(Xq)):
            cand, values = rows_of(i)
            rho.append(spearmanr(values, ref_scores[i, cand])[0])
            rec_short.append(np.isin(ref_top10[i], cand).mean())
            top = cand[np.argsort(-values, kind="stable")[:10]]
            rec_expl.append(np.isin(ref_top10[i], top).mean())
        return np.mean(rho), np.mean(rec_short), np.mean(rec_expl)

    # kNN + the reference solver gives the reference scores on the candidates (the same LiSSA
    # chains; tests/test_candidates.py checks the equality), so only the shortlists are needed
    short, _ = knn_ref.candidates_.kneighbors(net, Xq)
    base = t["ref"]
    rows_b.append((n, "exhaustive + LiSSA B=128 J=1000 (FastIF reference)", t_fit_ref, None,
                   base, 1.0, (1.0, 1.0, 1.0)))
    rows_b.append((n, f"kNN k={k} + LiSSA B=128 J=1000", t_fit_knn, t_index,
                   t["knn_ref"], base / t["knn_ref"],
                   agreement(lambda i: (short[i], ref_scores[i, short[i]]))))
    for name, e in fast.items():
        S = e.influences(Xq, yq)
        rows_b.append((n, f"kNN k={k} + {name}", t_fit[name], t_index, t[name], base / t[name],
                       agreement(lambda i, S=S: (S[i].indices, S[i].data))))
    rows_c.append((n, t_index, st["exhaustive scoring"], st["kNN query"], st["kNN scoring"]))

    if recall_problem:
        groups = {"correct": np.arange(len(correct)),
                  "wrong": np.arange(len(correct), len(pts))}
        recall_tables(f"make_classification, MLP 32-{args.width}-{args.width}-2 "
                      f"({ref.n_params_:,} parameters), reference LiSSA",
                      net, Xtr, ref_scores, Xq, groups,
                      [10**e for e in range(1, 7) if 10**e < n] + [n],
                      nnd=fitted_sel)



# ------------------------------------------------------------- (d) selectors in gradient space
FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def make_four_class_problem(n_train: int = 5_800, n_test: int = 600, seed: int = 0):
    """20 standardised features, 4 classes of 2 clusters each, 3% of the labels random."""
    return make_classification_split(
        n_train, n_test, n_features=20, n_informative=10, n_redundant=4, n_classes=4,
        n_clusters_per_class=2, flip_y=0.03, class_sep=1.0, standardize=True, random_state=seed,
    )


def selector_problems(args):
    """``name -> (net, X_train, y_train, X_test)`` of the selector study."""
    out = {}
    net, Xtr, Xte, ytr, _ = train_digits_net(0)
    out["digits MLP 64-32-10"] = (net, Xtr, ytr, Xte)
    Xtr, Xte, ytr, _ = make_four_class_problem()
    net = train_mlp_classifier(Xtr, ytr, n_hidden=32, n_hidden_layers=2, lr=3e-3, max_epochs=30,
                               batch_size=128, random_state=0)
    out["make_classification 20-32-32-4"] = (net, Xtr, ytr, Xte)
    return out


def sketch_selectors(n_params: int) -> dict:
    """The gradient-space selectors compared (unfitted, seeded), by label."""
    sel = {}
    for d in (32, 128, 256):
        sel[f"sketch svd d={d} helpful"] = GradientSketchCandidates(
            1, n_components=d, kind="helpful", random_state=0)
    sel["sketch svd d=128 abs"] = GradientSketchCandidates(1, n_components=128, random_state=0)
    d = min(512, n_params)
    sel[f"sketch orthogonal d={d} helpful"] = GradientSketchCandidates(
        1, n_components=d, projection="orthogonal", kind="helpful", random_state=0)
    sel[f"sketch gaussian d={d} helpful"] = GradientSketchCandidates(
        1, n_components=d, projection="gaussian", kind="helpful", random_state=0)
    return sel


def selector_study(args):
    """R@10 (helpful) of every selector against exhaustive exact scores, recall-vs-k to JSON."""
    results = {}
    rows = []
    for name, (net, Xtr, ytr, Xte) in selector_problems(args).items():
        n = len(Xtr)
        expl = InfluenceExplainer(net, solver=Exact(damping=args.sketch_damping),
                                  curvature="gauss_newton").fit(Xtr, ytr)
        engine = expl.engine_
        Xq = Xte[: args.n_sketch_queries]
        Xt, yt = expl.as_engine_input(Xq)  # explain the predicted labels
        G = engine.gradients(Xt, yt)
        S = engine.factors(G).solution
        truth = engine.score_rows(S)  # exhaustive exact scores
        ks = sorted({max(10, int(round(f * n))) for f in FRACTIONS})
        print(f"\n#### (d) {name}: n = {n:,}, {expl.n_params_:,} parameters, Exact solver, "
              f"Gauss-Newton, damping {args.sketch_damping:g}; {len(Xq)} test points, "
              f"predicted labels\n")
        curves: dict[str, list[float]] = {}
        fit_times: dict[str, float] = {}
        feature = {"penultimate kNN": ExactCandidates(1), "input kNN":
                   ExactCandidates(1, embedding="input")}
        for label, sel in feature.items():
            fitted, fit_times[label] = timed(sel.fit, net, Xtr)
            curves[label] = [recall_at(truth, fitted.kneighbors(net, Xq, k)[0], 10,
                                       "helpful").mean() for k in ks]
        # gradient dot product g_test . g_j: exhaustive, curvature left out (a reference)
        dots = engine.score_rows(G)
        fit_times["gradient dot (exhaustive)"] = None
        order = np.argsort(-dots, axis=1, kind="stable")
        curves["gradient dot (exhaustive)"] = [
            recall_at(truth, order[:, :k], 10, "helpful").mean() for k in ks]
        for label, sel in sketch_selectors(expl.n_params_).items():
            fitted, fit_times[label] = timed(sel.fit, net, Xtr, engine=engine)
            short = fitted.kneighbors(net, Xq, max(ks), factors=S)[0]
            curves[label] = [recall_at(truth, short[:, :k], 10, "helpful").mean() for k in ks]
            if fitted.captured_energy_ is not None:
                label_e = f"{label} (captured energy {fitted.captured_energy_:.3f})"
                fit_times[label_e] = fit_times.pop(label)
                curves[label_e] = curves.pop(label)
        print("| selector | fit (s) | " + " | ".join(f"k={k:,} ({k / n:.1%})" for k in ks) + " |")
        print("| --- | ---: |" + " ---: |" * len(ks))
        print("| random k/n | – | " + " | ".join(f"{k / n:.3f}" for k in ks) + " |")
        for label, curve in curves.items():
            t_fit = fit_times[label]
            print(f"| {label} | {'–' if t_fit is None else f'{t_fit:.1f}'} | "
                  + " | ".join(f"{r:.2f}" for r in curve) + " |")
        for frac in (0.01, 0.05):
            k = int(round(frac * n))
            best = max(curves, key=lambda lab, k=k: np.interp(k, ks, curves[lab]))
            rows.append((name, frac, k, best))
        results[name] = {
            "n_train": n, "n_params": int(expl.n_params_), "n_queries": len(Xq),
            "metric": "R@10 helpful against exhaustive exact scores",
            "k": ks, "random": [k / n for k in ks], "recall": curves,
        }
    path = Path(args.results_dir) / "candidate_recall.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nrecall-vs-k data written to {path}")


def query_cost_study(args):
    """Query cost after fit against the number of parameters, at a fixed n (the 5,800 rows)."""
    Xtr, Xte, ytr, _ = make_four_class_problem()
    Xq = Xte[:100]
    print("\n#### (e) Query cost after fit per test point (ms), 100 queries in one call, "
          f"n = {len(Xtr):,}; the iHVP solve is left out (the same for every selector)\n")
    print("| hidden width | parameters | exhaustive scoring | sketch svd d=128: fit (s) | "
          "sketch query | sketch: project | sketch: search | penultimate kNN query |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for width in args.cost_widths:
        net = train_mlp_classifier(Xtr, ytr, n_hidden=width, n_hidden_layers=2, lr=3e-3,
                                   max_epochs=5, batch_size=128, random_state=0)
        expl = InfluenceExplainer(net, solver=CG(damping=0.01, max_iter=1)).fit(Xtr, ytr)
        engine = expl.engine_
        Xt, yt = expl.as_engine_input(Xq)
        S = engine.gradients(Xt, yt)  # stands in for the factors: costs do not depend on values
        sel, t_fit = timed(GradientSketchCandidates(100, n_components=128, random_state=0).fit,
                           net, Xtr, engine=engine)
        pen = ExactCandidates(100).fit(net, Xtr)
        reps = 9
        t_exh = np.median([timed(engine.score_rows, S)[1] for _ in range(1)])
        t_q = np.median([timed(sel.kneighbors, net, Xq, factors=S)[1] for _ in range(reps)])
        t_proj = np.median([timed(sel.transform, S)[1] for _ in range(reps)])
        t_pen = np.median([timed(pen.kneighbors, net, Xq)[1] for _ in range(reps)])
        per = 1e3 / len(Xq)
        print(f"| {width} | {expl.n_params_:,} | {t_exh * per:.1f} | {t_fit:.1f} | "
              f"{t_q * per:.3f} | {t_proj * per:.3f} | {(t_q - t_proj) * per:.3f} | "
              f"{t_pen * per:.3f} |")



# ----------------------------------------------- (f) exhaustive scoring from rank-one factors
def layer_factors(net, X, y, batch_size: int = 4096):
    """Per linear layer, the inputs ``a_j`` and backpropagated signals ``δ_j`` of every row.

    A linear layer's per-sample weight gradient is the outer product ``δ_j a_jᵀ`` (and ``δ_j``
    its bias gradient), so these two factors hold every per-sample gradient of an MLP.
    """
    module = net.module_
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    ins = {name: [] for name, _ in layers}
    outs = {name: [] for name, _ in layers}
    captured = {}

    def hook(mod, inp, out, name):
        out.retain_grad()
        captured[name] = (inp[0].detach(), out)

    handles = [m.register_forward_hook(lambda mod, i, o, name=name: hook(mod, i, o, name))
               for name, m in layers]
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    try:
        module.eval()
        for start in range(0, len(Xt), batch_size):
            logits = module(Xt[start : start + batch_size])
            loss = torch.nn.functional.cross_entropy(logits, yt[start : start + batch_size],
                                                     reduction="sum")
            loss.backward()
            for name, (a, out) in captured.items():
                ins[name].append(a)
                outs[name].append(out.grad.detach())
        module.zero_grad(set_to_none=True)
    finally:
        for h in handles:
            h.remove()
    return [(name, torch.cat(ins[name]), torch.cat(outs[name])) for name, _ in layers]


def factor_scores(factors, S, n_train, max_elements: int = 1 << 24):
    """Exact scores ``(1/n) s_i · g_j`` of every row from the layer factors, shape (m, n)."""
    m = len(S)
    out = torch.zeros(m, len(factors[0][1]), dtype=torch.float64)
    offset = 0
    for _, A, D in factors:
        n_out, n_in = D.shape[1], A.shape[1]
        SW = S[:, offset : offset + n_out * n_in].reshape(m * n_out, n_in)
        Sb = S[:, offset + n_out * n_in : offset + n_out * (n_in + 1)]
        offset += n_out * (n_in + 1)
        chunk = max(1, max_elements // (m * n_out))
        for start in range(0, len(A), chunk):
            a, d = A[start : start + chunk], D[start : start + chunk]
            T = (a @ SW.T).reshape(len(a), m, n_out)
            out[:, start : start + chunk] += ((T * d[:, None, :]).sum(-1) + d @ Sb.T).T.double()
    return (out / n_train).numpy()


def factor_scoring_study(args):
    """Is exhaustive scoring from stored layer factors cheaper than pruning at n rows?"""
    n = args.factor_size
    Xtr, Xte, ytr, _ = make_problem(n, seed=0)
    net = train_mlp(Xtr, ytr, args.width)
    expl = InfluenceExplainer(net, solver=CG(damping=0.01, max_iter=1)).fit(Xtr, ytr)
    engine = expl.engine_
    names = list(engine.bridge.selected)
    assert names == [f"{a}.{b}" for a in ("hidden", "hidden2", "output")
                     for b in ("weight", "bias")], names
    factors, t_store = timed(layer_factors, net, Xtr, ytr)
    floats = sum(A.numel() + D.numel() for _, A, D in factors)
    Xt, yt = expl.as_engine_input(Xte[:64])
    S = engine.gradients(Xt, yt)  # stands in for factors: the costs do not depend on values
    check = factor_scores(factors, S[:2], n)[:, :2000]
    ref = engine.score_rows(S[:2], rows=np.arange(2000))
    err = float(np.abs(check - ref).max() / np.abs(ref).max())
    print(f"\n#### (f) Exhaustive scoring from rank-one layer factors, n = {n:,}, MLP "
          f"32-{args.width}-{args.width}-2 ({engine.n_params:,} parameters)\n")
    print(f"factors stored in {t_store:.1f} s: {floats:,} float32 ({floats * 4 / 2**20:.0f} MiB, "
          f"against {n * engine.n_params * 4 / 2**30:.1f} GiB for the gradients); largest "
          f"relative difference to the engine's scores {err:.1e}\n")
    sel, t_fit = timed(GradientSketchCandidates(1000, n_components=128, projection="gaussian",
                                                random_state=0).fit, net, Xtr, engine=engine)
    print("| test points per call | engine exhaustive (s / point) | factor exhaustive "
          "(s / point) | sketch query + scoring k=1,000 (s / point) |")
    print("| ---: | ---: | ---: | ---: |")
    for m in (1, 64):
        Sm = S[:m]
        t_eng = timed(engine.score_rows, Sm)[1] if m == 1 else float("nan")
        t_fac = timed(factor_scores, factors, Sm, n)[1]
        (C, _), t_q = timed(sel.kneighbors, net, Xte[:m], factors=Sm)
        t_sc = timed(engine.score_candidates, Sm, np.sort(C, axis=1))[1]
        eng = "–" if m > 1 else f"{t_eng:.2f}"
        print(f"| {m} | {eng} | {t_fac / m:.3f} | {(t_q + t_sc) / m:.3f} |")
    print(f"\n(the sketch's fit, a Gaussian projection in one pass, took {t_fit:.0f} s)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--large", action="store_true", help="also 1,000,000 training rows")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--k", type=int, default=100, help="candidates per test point")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the MLP")
    parser.add_argument("--recall-size", type=int, default=None,
                        help="n of the synthetic recall curve (default: the largest size up to "
                             "100,000; 0 skips it)")
    parser.add_argument("--fast-depths", type=int, nargs="+", default=[1000, 200])
    parser.add_argument("--damping-ratio", type=float, default=5e-3)
    parser.add_argument("--n-time", type=int, default=3, help="test points timed one by one")
    parser.add_argument("--n-quality", type=int, default=40,
                        help="test points (half correct, half wrong) for agreement and (a)")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--selectors", action="store_true",
                        help="only (d) and (e), the selectors in feature and gradient space")
    parser.add_argument("--skip-selectors", action="store_true", help="leave out (d) and (e)")
    parser.add_argument("--sketch-damping", type=float, default=0.01)
    parser.add_argument("--n-sketch-queries", type=int, default=100)
    parser.add_argument("--cost-widths", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--factor-scoring", action="store_true",
                        help="only (f), exhaustive scoring from rank-one layer factors")
    parser.add_argument("--factor-size", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.n_time, args.n_quality, args.width = [5_000], 1, 6, 64
        args.fast_depths = [100]
        args.n_sketch_queries, args.cost_widths = 20, [16, 64]
    sizes = sorted(set(args.sizes + ([1_000_000] if args.large else [])))
    torch.manual_seed(0)
    warnings.simplefilter("ignore", UserWarning)
    print(f"torch threads: {torch.get_num_threads()}; times are CPU seconds of this process; "
          f"MLP width {args.width}; sizes: {sizes}; k = {args.k}; per test point: median of "
          f"{args.n_time} single-point calls; agreement over {args.n_quality} test points "
          "(half correct, half wrong)")

    if args.factor_scoring:
        factor_scoring_study(args)
        return
    if not args.skip_selectors:
        selector_study(args)
        query_cost_study(args)
        if args.selectors:
            return

    # pynndescent compiles its kernels once per process: pay it here, outside every timing
    warm = np.random.RandomState(0).randn(500, 8).astype(np.float32)
    from pynndescent import NNDescent

    _, t_compile = timed(lambda: NNDescent(warm, n_neighbors=10, random_state=0,
                                           n_jobs=1).prepare())
    torch.set_num_threads(args.threads)  # numba's first parallel launch resets it
    print(f"pynndescent's one-off kernel compilation: {t_compile:.0f} s "
          "(excluded from every timing below)")

    if not args.skip_digits:
        digits_recall(args)

    rows_b, rows_c = [], []
    recall_n = args.recall_size
    if recall_n is None:
        recall_n = max(s for s in sizes if s <= 100_000) if min(sizes) <= 100_000 else min(sizes)
    for n in sizes:
        speed_for_size(n, args, rows_b, rows_c, recall_problem=(n == recall_n))

    print("\n#### (b) Time per test point, kNN + fast LiSSA vs exhaustive + reference LiSSA\n")
    print("| n | method | fit (s) | index build (s) | per test point (s) | speed-up | "
          "Spearman over candidates | shortlist R@10 | explanation top-10 overlap |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, name, t_fit, t_idx, tt, sp, (rho, rs, re) in rows_b:
        idx = "–" if t_idx is None else f"{t_idx:.1f}"
        print(f"| {n:,} | {name} | {t_fit:.1f} | {idx} | {fmt_t(tt)} | {sp:.0f}x | {rho:.3f} | "
              f"{rs:.2f} | {re:.2f} |")

    print("\n#### (c) Growth with n: the stages whose cost depends on n, per test point "
          "(LiSSA's solve does not depend on n)\n")
    print("| n | index build (s) | exhaustive scoring (s) | kNN query (s) | kNN scoring (s) | "
          "scoring speed-up | n / k |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, t_idx, sc_ref, t_query, sc_knn in rows_c:
        print(f"| {n:,} | {t_idx:.1f} | {fmt_t(sc_ref)} | {t_query:.4f} | {sc_knn:.4f} | "
              f"{sc_ref / (t_query + sc_knn):.0f}x | {n // args.k:,} |")


if __name__ == "__main__":
    main()
