"""The methods of ``benchmarks/compare.py``: sk_fastif's solvers and the peer libraries' ones.

Every method is a function ``setup(spec, data) -> run``: ``setup`` builds what the user would
already have (the torch module, tensors, data loaders; not timed), and ``run()`` (timed:
construct + fit + score) returns ``(scores, info)``. A ``run`` with ``run.query_many = True``
also takes ``run(batches=[(X, y), ...])``: one fit, then each batch of test points scored with
what the fit prepared (the library's own cache), the way a notebook queries; it returns the
list of score matrices. ``scores`` is an ``(n_test, n_train)``
array in sk_fastif's convention, ``score = (1/n) g_testᵀ (H + λI)⁻¹ g_train``, positive =
helpful; entries a method did not score are NaN and listed in ``info["mask"]`` (a boolean
array, True where scored). ``info["rows"]`` lists the test rows computed when a method is
timed on a few test points only, and ``info["time_scale"]`` the factor its time is scaled by.

Sign and scale of each peer, from its documented convention (docstrings and source read in
the versions below), converted to ours without fitting anything:

* pyDVL 0.10 (``influences`` and ``influences_from_factors``, mode ``Up``):
  ``⟨H⁻¹ ∇ℓ(z_test), ∇ℓ(z)⟩`` with ``H`` the curvature of the *mean* loss (operators average
  over the loader's batches) plus ``regularization``; no sign flip, no ``1/n``. Ours: ``/ n``.
* Captum 0.9 (``InfluenceFunctionBase``): ``∇L(x)ᵀ H⁻¹ ∇L(z)`` with ``H`` the Hessian of the
  *total* (summed) training loss and ``hessian_reg`` added to it, so ``hessian_reg = n λ``
  gives ``(n (H + λI))⁻¹`` and the scores are ours as they are. Positive = proponent.
* dattri 0.3 (``BaseInnerProductAttributor.attribute``): ``g_trainᵀ (H + reg I)⁻¹ g_test``
  with ``H`` of the loss function given (ours: the mean cross-entropy), shape
  ``(n_train, n_test)``. Ours: ``.T / n``. Its LiSSA recursion
  ``h ← v + (1 - d) h - H h / s`` has the fixed point ``(H + s d I)⁻¹ v``: ``d = λ / s``.
* Kronfluence 1.0 (``compute_pairwise_scores``): ``∇f(z_q)ᵀ (G + λI)⁻¹ ∇L(z_m)`` with ``f``
  the measurement (here the query's loss), ``G`` the EK-FAC Fisher of the mean loss
  (covariances divided by the number of examples) and ``damping_factor = λ``; positive =
  helpful. Ours: ``/ n``.
* FastIF (the original algorithm, reimplemented here after its code):
  ``I = -∇L(z)ᵀ s_test`` with ``s_test ≈ (H + s d I)⁻¹ ∇L(z_test)``, no ``1/n``, negative =
  helpful. Ours: ``-I / n``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from _compare_workloads import build_module
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class Method:
    """A method of the comparison.

    Attributes
    ----------
    name : str
        Row name, ``library:solver[ setting]``.
    library : str
        ``"sk_fastif"``, ``"pydvl"``, ``"captum"``, ``"dattri"``, ``"kronfluence"``,
        ``"fastif"`` or ``"floor"``.
    setup : callable
        ``setup(spec, data) -> run``, see the module docstring.
    note : str
        What the row is (setting, curvature), printed in the table.
    skip : dict
        ``{net name: reason}`` where the method is not attempted.
    """

    name: str
    library: str
    setup: object
    note: str = ""
    skip: dict = field(default_factory=dict)


METHODS: dict[str, Method] = {}
_EXPLICIT = {"synth": "not attempted: explicit 28,426 x 28,426 Hessian"}


def method(name, library, note="", skip=None):
    """Register ``setup`` as method ``name``."""
    def register(setup):
        METHODS[name] = Method(name, library, setup, note, dict(skip or {}))
        return setup
    return register


# ===================================================================================== helpers
def tensors(data):
    """The four arrays as torch tensors (float32 inputs, int64 labels)."""
    return (torch.as_tensor(data["X_train"]), torch.as_tensor(data["y_train"]),
            torch.as_tensor(data["X_test"]), torch.as_tensor(data["y_test"]))


def lissa_scale(spec):
    """A LiSSA scale safely above the largest minibatch curvature: ``2 (μ_max + λ)``."""
    return 2.0 * (spec["spectrum"]["mu_max"] + spec["damping"])


def _rows(S):
    return np.asarray(S, dtype=np.float64)


# ================================================================================= sk_fastif
def _ours(solver_factory, *, candidates=None, n_jobs=None, curvature="hessian",
          batch_size=None):
    """sk_fastif's explainer with ``solver_factory(damping, spec)`` (``batch_size=None``: the
    explainer's default)."""
    def setup(spec, data):
        from sk_fastif import InfluenceExplainer
        from sk_fastif.toy import make_mlp_classifier

        net = make_mlp_classifier(**spec["arch"]).initialize()
        net.module_.load_state_dict(build_module(spec).state_dict())
        lam = spec["damping"]

        def run(batches=None):
            cands = candidates(spec) if candidates is not None else None
            size = {} if batch_size is None else {"batch_size": batch_size}
            expl = InfluenceExplainer(net, solver=solver_factory(lam, spec), candidates=cands,
                                      curvature=curvature, n_jobs=n_jobs, random_state=0,
                                      **size)
            expl.fit(data["X_train"], data["y_train"])
            if batches is not None:
                return [expl.influences(X, y) for X, y in batches]
            S = expl.influences(data["X_test"], data["y_test"])
            if cands is None:
                return _rows(S), {}
            coo = S.tocoo()  # stores exactly each row's candidates (explicit zeros kept)
            dense = np.full(S.shape, np.nan)
            dense[coo.row, coo.col] = coo.data
            mask = np.zeros(S.shape, dtype=bool)
            mask[coo.row, coo.col] = True
            return dense, {"mask": mask}
        run.query_many = candidates is None
        return run
    return setup


def n_params(spec) -> int:
    """The number of parameters of the workload's net."""
    return sum(p.numel() for p in build_module(spec).parameters())


def _solvers():
    from sk_fastif import solvers
    return solvers


def _n_neighbors(spec):
    from sk_fastif.neighbors import NNDescentCandidates
    return NNDescentCandidates(n_neighbors=max(100, spec["n_train"] // 8), random_state=0)


method("ours:defaults", "sk_fastif", "solver='auto' at the workload's damping: "
       "auto_solver(n_params).set_params(damping=λ)")(
    _ours(lambda lam, spec: _solvers().auto_solver(n_params(spec)).set_params(damping=lam)))
method("ours:Exact", "sk_fastif", "explicit Hessian, eigendecomposed", _EXPLICIT)(
    _ours(lambda lam, spec: _solvers().Exact(damping=lam)))
method("ours:CG", "sk_fastif", "default tol=1e-6, max_iter=100")(
    _ours(lambda lam, spec: _solvers().CG(damping=lam)))
method("ours:CG tol=1e-4", "sk_fastif", "tol=1e-4")(
    _ours(lambda lam, spec: _solvers().CG(damping=lam, tol=1e-4)))
method("ours:CG tol=1e-2", "sk_fastif", "tol=1e-2")(
    _ours(lambda lam, spec: _solvers().CG(damping=lam, tol=1e-2)))
method("ours:CG ekfac", "sk_fastif", "EK-FAC-preconditioned, tol=1e-4")(
    _ours(lambda lam, spec: _solvers().CG(damping=lam, tol=1e-4, preconditioner="ekfac")))
method("ours:CG ekfac tol=1e-2", "sk_fastif", "EK-FAC-preconditioned, tol=1e-2")(
    _ours(lambda lam, spec: _solvers().CG(damping=lam, tol=1e-2, preconditioner="ekfac")))
method("ours:CG ekfac 4 it", "sk_fastif", "EK-FAC-preconditioned, max_iter=4")(
    _ours(lambda lam, spec: _solvers().CG(damping=lam, max_iter=4, preconditioner="ekfac")))
method("ours:LiSSA", "sk_fastif", "default: auto scale and depth, batch 32")(
    _ours(lambda lam, spec: _solvers().LiSSA(damping=lam, random_state=0)))
method("ours:LiSSA tuned", "sk_fastif", "batch 256, depth auto")(
    _ours(lambda lam, spec: _solvers().LiSSA(damping=lam, batch_size=256, random_state=0)))
method("ours:EKFAC", "sk_fastif", "Gauss-Newton (EK-FAC), exact output Hessian")(
    _ours(lambda lam, spec: _solvers().EKFAC(damping=lam)))
method("ours:CG pruned", "sk_fastif", "CG + NNDescentCandidates(n/8): candidates only")(
    _ours(lambda lam, spec: _solvers().CG(damping=lam), candidates=_n_neighbors))
method("ours:CG n_jobs=2", "sk_fastif", "CG, 2 joblib workers")(
    _ours(lambda lam, spec: _solvers().CG(damping=lam), n_jobs=2))


# ===================================================================================== pyDVL
def _pydvl(build, loader_batch=None):
    def setup(spec, data):
        Xtr, ytr, Xte, yte = tensors(data)
        module = build_module(spec)
        n = len(Xtr)
        batch = loader_batch or n
        loader = DataLoader(TensorDataset(Xtr, ytr), batch_size=batch)

        def scores(model, X, y):
            factors = model.influence_factors(X, y)
            S = torch.cat([model.influences_from_factors(factors, Xtr[i:i + 5000],
                                                         ytr[i:i + 5000]).detach()
                           for i in range(0, n, 5000)], dim=1)
            return _rows(S) / n

        def run(batches=None):
            model = build(module, F.cross_entropy, spec["damping"], spec).fit(loader)
            if batches is not None:
                return [scores(model, torch.as_tensor(X), torch.as_tensor(y))
                        for X, y in batches]
            return scores(model, Xte, yte), {}
        run.query_many = True
        return run
    return setup


def _dvl():
    from pydvl.influence import torch as dvl
    return dvl


method("pydvl:Direct", "pydvl", "explicit Hessian", _EXPLICIT)(_pydvl(
    lambda m, loss, lam, spec: _dvl().DirectInfluence(m, loss, regularization=lam)))
method("pydvl:CG", "pydvl", "default rtol=1e-4")(_pydvl(
    lambda m, loss, lam, spec: _dvl().CgInfluence(m, loss, regularization=lam)))
method("pydvl:CG tuned", "pydvl", "rtol=1e-7, atol=1e-9, block CG")(_pydvl(
    lambda m, loss, lam, spec: _dvl().CgInfluence(m, loss, regularization=lam, rtol=1e-7,
                                                  atol=1e-9, solve_simultaneously=True)))
method("pydvl:CG rtol=1e-2", "pydvl", "rtol=1e-2, block CG (ours:CG tol=1e-2's tolerance)")(
    _pydvl(lambda m, loss, lam, spec: _dvl().CgInfluence(
        m, loss, regularization=lam, rtol=1e-2, solve_simultaneously=True)))
method("pydvl:LiSSA", "pydvl", "default scale=10, maxiter=1000, batch 64", )(_pydvl(
    lambda m, loss, lam, spec: _dvl().LissaInfluence(m, loss, regularization=lam),
    loader_batch=64))
method("pydvl:LiSSA tuned", "pydvl", "scale=2(mu_max+lam), batch 256")(_pydvl(
    lambda m, loss, lam, spec: _dvl().LissaInfluence(m, loss, regularization=lam,
                                                     scale=lissa_scale(spec), rtol=1e-6),
    loader_batch=256))
method("pydvl:Arnoldi", "pydvl", "default rank=10")(_pydvl(
    lambda m, loss, lam, spec: _dvl().ArnoldiInfluence(m, loss, regularization=lam)))
method("pydvl:Arnoldi tuned", "pydvl", "rank=300, Woodbury")(_pydvl(
    lambda m, loss, lam, spec: _dvl().ArnoldiInfluence(m, loss, regularization=lam, rank=300,
                                                       use_woodbury=True)))
method("pydvl:EK-FAC", "pydvl", "K-FAC (Fisher, update_diagonal=False default)")(_pydvl(
    lambda m, loss, lam, spec: _dvl().EkfacInfluence(m, hessian_regularization=lam),
    loader_batch=256))
method("pydvl:EK-FAC tuned", "pydvl", "EK-FAC (Fisher), update_diagonal=True")(_pydvl(
    lambda m, loss, lam, spec: _dvl().EkfacInfluence(m, update_diagonal=True,
                                                     hessian_regularization=lam),
    loader_batch=256))


# ==================================================================================== Captum
def _captum(kind, **kwargs):
    def setup(spec, data):
        Xtr, ytr, Xte, yte = tensors(data)
        module = build_module(spec)
        n = len(Xtr)
        n_params = sum(p.numel() for p in module.parameters())
        checkpoint = f"{spec['dir']}/state.pt"

        def run():
            if kind == "naive":
                from captum.influence import NaiveInfluenceFunction as Cls
            else:
                from captum.influence._core.arnoldi_influence_function import (
                    ArnoldiInfluenceFunction as Cls,
                )
            opts = {k: (v(n_params) if callable(v) else v) for k, v in kwargs.items()}
            inf = Cls(module, TensorDataset(Xtr, ytr), checkpoint,
                      loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
                      sample_wise_grads_per_batch=True, batch_size=1024,
                      hessian_reg=n * spec["damping"], **opts)
            S = inf.influence((Xte, yte))
            return _rows(S.detach()), {}
        return run
    return setup


method("captum:Naive", "captum", "explicit Hessian, default projection_dim=50", _EXPLICIT)(
    _captum("naive"))
method("captum:Naive tuned", "captum", "projection_dim=n_params (all eigenpairs)", _EXPLICIT)(
    _captum("naive", projection_dim=lambda p: p))
method("captum:Arnoldi", "captum", "default projection_dim=50, arnoldi_dim=200")(
    _captum("arnoldi"))
method("captum:Arnoldi tuned", "captum", "projection_dim=300, arnoldi_dim=600")(
    _captum("arnoldi", projection_dim=300, arnoldi_dim=600))


# ==================================================================================== dattri
def _dattri(build, cache_batch=None, train_batch=5000, test_batch=None):
    def setup(spec, data):
        Xtr, ytr, Xte, yte = tensors(data)
        module = build_module(spec)
        n = len(Xtr)

        def loss_func(params, batch):
            x, y = batch  # dattri's LiSSA hands the labels back as floats: cast them
            return F.cross_entropy(functional_call(module, params, (x,)), y.long())

        def scores(attributor, X, y):
            S = attributor.attribute(
                DataLoader(TensorDataset(Xtr, ytr), batch_size=min(train_batch, n)),
                DataLoader(TensorDataset(X, y), batch_size=test_batch or len(X)))
            return _rows(S.detach().T) / n

        def run(batches=None):
            from dattri.task import AttributionTask

            task = AttributionTask(loss_func=loss_func, model=module,
                                   checkpoints=module.state_dict())
            attributor = build(task, spec["damping"], spec)
            attributor.cache(DataLoader(TensorDataset(Xtr, ytr), batch_size=cache_batch or n))
            if batches is not None:
                return [scores(attributor, torch.as_tensor(X), torch.as_tensor(y))
                        for X, y in batches]
            return scores(attributor, Xte, yte), {}
        run.query_many = True
        return run
    return setup


def _dt():
    from dattri.algorithm import influence_function as dt
    return dt


method("dattri:explicit", "dattri", "explicit Hessian", _EXPLICIT)(_dattri(
    lambda task, lam, spec: _dt().IFAttributorExplicit(task, regularization=lam)))
method("dattri:CG", "dattri", "default max_iter=10")(_dattri(
    lambda task, lam, spec: _dt().IFAttributorCG(task, regularization=lam)))
method("dattri:CG test batch 5", "dattri", "default max_iter=10, 5 test points per batch",
       {"digits": "not needed: every test point fits in one batch"})(_dattri(
    lambda task, lam, spec: _dt().IFAttributorCG(task, regularization=lam), test_batch=5))
method("dattri:CG tuned", "dattri", "max_iter=20 (at 100: NaN and > 4 GiB on digits)")(_dattri(
    lambda task, lam, spec: _dt().IFAttributorCG(task, regularization=lam, max_iter=20)))
method("dattri:LiSSA", "dattri", "default scaling=50, depth=5000, batch 1; d=lam/50")(_dattri(
    lambda task, lam, spec: _dt().IFAttributorLiSSA(task, damping=lam / 50.0)))
method("dattri:LiSSA tuned", "dattri", "scaling=2(mu_max+lam), depth=1000, batch 64")(_dattri(
    lambda task, lam, spec: _dt().IFAttributorLiSSA(
        task, scaling=lissa_scale(spec), damping=lam / lissa_scale(spec), recursion_depth=1000,
        batch_size=64)))
method("dattri:EK-FAC", "dattri", "empirical Fisher (EK-FAC), batch 256")(_dattri(
    lambda task, lam, spec: _dt().IFAttributorEKFAC(task, damping=lam), cache_batch=256))


# =============================================================================== Kronfluence
@method("kronfluence:EK-FAC", "kronfluence", "EK-FAC (MC Fisher), defaults")
def _kronfluence(spec, data):
    Xtr, ytr, Xte, yte = tensors(data)
    module = build_module(spec)
    n = len(Xtr)

    def run():
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task

        class Classification(Task):
            def compute_train_loss(self, batch, model, sample=False):
                x, y = batch
                logits = model(x)
                if sample:
                    with torch.no_grad():
                        y = torch.multinomial(F.softmax(logits.detach(), -1), 1).flatten()
                return F.cross_entropy(logits, y, reduction="sum")

            def compute_measurement(self, batch, model):
                x, y = batch
                return F.cross_entropy(model(x), y, reduction="sum")

        task = Classification()
        model = prepare_model(module, task)
        with tempfile.TemporaryDirectory() as out:
            analyzer = Analyzer(analysis_name="compare", model=model, task=task, cpu=True,
                                output_dir=out, disable_model_save=True, disable_tqdm=True)
            analyzer.fit_all_factors("ekfac", dataset=TensorDataset(Xtr, ytr),
                                     per_device_batch_size=256,
                                     factor_args=FactorArguments(strategy="ekfac"),
                                     overwrite_output_dir=True)
            analyzer.compute_pairwise_scores(
                "scores", "ekfac", query_dataset=TensorDataset(Xte, yte),
                train_dataset=TensorDataset(Xtr, ytr), per_device_query_batch_size=len(Xte),
                per_device_train_batch_size=1024,
                score_args=ScoreArguments(damping_factor=spec["damping"]),
                overwrite_output_dir=True)
            S = analyzer.load_pairwise_scores("scores")["all_modules"]
        return _rows(S) / n, {}
    return run


# ============================================================= FastIF's algorithm, and floor
@method("fastif:original", "fastif",
        "per-test LiSSA by double backprop (B=128, J=1000, s=2(mu_max+lam), d=lam/s), "
        "train grads one at a time; timed on 2 test points, scaled linearly")
def _fastif(spec, data, n_points=2, batch_size=128, depth=1000):
    Xtr, ytr, Xte, yte = tensors(data)
    module = build_module(spec)
    n = len(Xtr)
    params = [p for p in module.parameters() if p.requires_grad]
    scale = lissa_scale(spec)
    dampen = spec["damping"] / scale
    rows = list(range(min(n_points, len(Xte))))

    def run():
        gen = torch.Generator().manual_seed(0)
        S = np.full((len(Xte), n), np.nan)
        for i in rows:
            loss = F.cross_entropy(module(Xte[i:i + 1]), yte[i:i + 1])
            v = [g.detach() for g in torch.autograd.grad(loss, params)]
            h = [t.clone() for t in v]
            for _ in range(depth):
                idx = torch.randint(n, (batch_size,), generator=gen)
                lb = F.cross_entropy(module(Xtr[idx]), ytr[idx])
                gb = torch.autograd.grad(lb, params, create_graph=True)
                hv = torch.autograd.grad(gb, params, grad_outputs=h)
                h = [vi + (1 - dampen) * hi - hvi / scale
                     for vi, hi, hvi in zip(v, h, hv)]
            s_test = [t / scale for t in h]
            for j in range(n):
                lj = F.cross_entropy(module(Xtr[j:j + 1]), ytr[j:j + 1])
                gj = torch.autograd.grad(lj, params, create_graph=True)
                influence = -sum((a * b).sum() for a, b in zip(gj, s_test)).item()
                S[i, j] = -influence / n
        return S, {"rows": rows, "time_scale": len(Xte) / len(rows)}
    return run


@method("floor:per-sample grads", "floor",
        "one vmap(grad) pass over the training points: the minimum any method does")
def _floor(spec, data):
    Xtr, ytr, _, _ = tensors(data)
    module = build_module(spec)
    params = {k: v.detach() for k, v in module.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(module, p, (x[None],)), y[None])

    per = vmap(grad(loss), in_dims=(None, 0, 0))
    per(params, Xtr[:2], ytr[:2])  # warm-up: torch.func's first-call set-up is not the floor

    def run():
        total = 0.0
        for i in range(0, len(Xtr), 4096):
            g = per(params, Xtr[i:i + 4096], ytr[i:i + 4096])
            total += float(sum(t.sum() for t in g.values()))
        return None, {"checksum": total}
    return run


def timed(setup, spec, data, *, warm_repeats: int = 3, warm_budget: float = 60.0,
          batches=None):
    """Run a method: ``(scores, info, times)``, the times covering ``run()`` only.

    ``times["cold"]`` is the first call in the process; ``times["warm"]`` the median of
    ``warm_repeats`` further calls, made only while the calls so far took less than
    ``warm_budget`` seconds (None otherwise); ``times["query_many"]`` one ``run(batches=...)``
    after one warm-up, for a method that supports it and ``batches`` given (None otherwise).
    """
    run = setup(spec, data)
    t0 = time.perf_counter()
    scores, info = run()
    scale = info.get("time_scale", 1.0)
    cold = time.perf_counter() - t0
    spent, warm = cold, []
    for _ in range(warm_repeats):
        if spent >= warm_budget:
            break
        t0 = time.perf_counter()
        run()
        warm.append(time.perf_counter() - t0)
        spent += warm[-1]
    many = None
    if batches is not None and getattr(run, "query_many", False) and spent < warm_budget:
        run(batches=batches)
        t0 = time.perf_counter()
        run(batches=batches)
        many = time.perf_counter() - t0
    times = {"cold": cold * scale, "warm": float(np.median(warm)) * scale if warm else None,
             "query_many": many}
    return scores, info, times
