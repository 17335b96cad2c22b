"""Parallel and distributed scoring: the same numbers on every backend, faults that surface.

Every backend (loky worker processes, threads, a real Dask ``LocalCluster``) must return the
sequential results, an error in a worker must reach the caller with its type, its message and
the work unit, and the user's net must come out unchanged.
"""

import copy
import logging
import os
import warnings

import joblib
import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif._parallel import check_devices
from sk_fastif.neighbors import ExactCandidates
from sk_fastif.solvers import Exact, LiSSA, ScaleRestartWarning
from sk_fastif.toy import TanhMLP

SOLVERS = {
    "Exact": Exact(damping=0.05),
    "LiSSA": LiSSA(damping=0.05, depth=20, batch_size=16, random_state=0),
}


class FailingMLP(TanhMLP):
    """Fails on demand, in worker processes only (the caller's process computes as usual)."""

    mode = None  # "raise" or "exit"
    caller = None  # the process id of the caller

    def forward(self, X):
        import os

        if self.mode is not None and os.getpid() != self.caller:
            if self.mode == "raise":
                raise RuntimeError("boom in the module")
            os._exit(3)
        return super().forward(X)


@pytest.fixture(scope="module")
def data(digits):
    Xtr, ytr, Xte, yte = digits
    return Xtr[:240], ytr[:240], Xte[:12], yte[:12]


def _explainer(net, data, solver, curvature="gauss_newton", **kw):
    Xtr, ytr, _, _ = data
    return InfluenceExplainer(net, solver=copy.deepcopy(solver), params=["output"],
                              curvature=curvature, batch_size=16, **kw).fit(Xtr, ytr)


def _all_results(e, data):
    _, _, Xte, yte = data
    return {
        "influences": e.influences(Xte, yte),
        "factors": e.influence_factors(Xte, yte),
        "self": e.self_influence(),
        "self_X": e.self_influence(Xte, yte),
        "score": e.score(Xte, yte),
    }


# The caller's process scores the training set from its kept gradients by one matrix product,
# workers by their own gradient passes: float32 sums in another order, so that an element much
# smaller than the largest may differ by a few float32 epsilons of the largest.
ATOL = 1e-6


def _assert_same(a, b):
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5,
                                   atol=ATOL * np.abs(a[key]).max(), err_msg=key)


@pytest.fixture(scope="module")
def sequential(digits_mlp, data):
    return {name: _all_results(_explainer(digits_mlp, data, s), data)
            for name, s in SOLVERS.items()}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_loky_workers_return_the_sequential_numbers(digits_mlp, data, sequential, name):
    e = _explainer(digits_mlp, data, SOLVERS[name], n_jobs=2)
    _assert_same(sequential[name], _all_results(e, data))


@pytest.mark.parametrize("name", list(SOLVERS))
def test_threads_return_the_sequential_numbers(digits_mlp, data, sequential, name):
    e = _explainer(digits_mlp, data, SOLVERS[name], n_jobs=2)
    with joblib.parallel_config(backend="threading"):
        _assert_same(sequential[name], _all_results(e, data))


class _FakeEngine:
    device = torch.device("cpu")
    verbose = 0


def _where_and_threads(engine, unit):
    return os.getpid(), torch.get_num_threads()


def _assert_workers_limit_their_threads():
    from joblib import cpu_count

    from sk_fastif._parallel import Dispatcher

    out = Dispatcher(2, [torch.device("cpu")]).map(_FakeEngine(), _where_and_threads, range(4))
    pids = {pid for pid, _ in out}
    assert os.getpid() not in pids and len(pids) == 2  # two worker processes, one share each
    assert {n for _, n in out} == {max(1, cpu_count() // 2)}


def test_loky_workers_limit_their_threads():
    _assert_workers_limit_their_threads()


def test_a_dask_local_cluster_returns_the_sequential_numbers(digits_mlp, data, sequential):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1") as cluster, \
            distributed.Client(cluster):
        with joblib.parallel_config(backend="dask"):
            _assert_workers_limit_their_threads()
        for name, solver in SOLVERS.items():
            e = _explainer(digits_mlp, data, solver, n_jobs=2)
            with joblib.parallel_config(backend="dask"):
                _assert_same(sequential[name], _all_results(e, data))


def test_devices_and_candidates(digits_mlp, data):
    Xtr, ytr, Xte, yte = data
    kw = dict(candidates=ExactCandidates(n_neighbors=30))
    seq = _explainer(digits_mlp, data, SOLVERS["Exact"], **kw)
    par = _explainer(digits_mlp, data, SOLVERS["Exact"], n_jobs=2, devices=["cpu", "cpu"], **kw)
    a, b = seq.influences(Xte, yte), par.influences(Xte, yte)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-7 * np.abs(a.data).max())
    ra = seq.audit_candidates(Xte, yte, top=5)
    rb = par.audit_candidates(Xte, yte, top=5)
    assert ra.recall == rb.recall


def test_a_device_that_does_not_exist_is_refused_at_fit(digits_mlp, data):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match="does not exist"):
        _explainer(digits_mlp, data, SOLVERS["Exact"], devices=[f"cuda:{n}"])
    with pytest.raises(ValueError, match="not a torch device"):
        _explainer(digits_mlp, data, SOLVERS["Exact"], devices=["gpu-please"])
    with pytest.raises(ValueError, match="at least one"):
        check_devices([], torch.device("cpu"))
    assert check_devices(None, torch.device("cpu")) == [torch.device("cpu")]


@pytest.fixture()
def failing(data):
    Xtr, ytr, _, _ = data
    torch.manual_seed(0)
    net = NeuralNetClassifier(FailingMLP, criterion=torch.nn.CrossEntropyLoss, max_epochs=2,
                              lr=0.1, train_split=None, verbose=0).fit(Xtr, ytr)
    yield net
    net.module_.mode = None


def _state(net):
    return {k: v.clone() for k, v in net.module_.state_dict().items()}


def test_an_error_in_a_worker_reaches_the_caller_with_its_work_unit(failing, data):
    _, _, Xte, yte = data
    e = _explainer(failing, data, LiSSA(damping=0.05, scale=5.0, depth=5, batch_size=16,
                                        random_state=0), curvature="hessian", n_jobs=2)
    expected = e.set_params(n_jobs=None).influences(Xte, yte)
    before = _state(failing)
    failing.module_.mode, failing.module_.caller = "raise", os.getpid()
    with pytest.raises(RuntimeError, match="boom in the module") as info:
        e.set_params(n_jobs=2).influences(Xte, yte)
    assert any("work unit" in note for note in getattr(info.value, "__notes__", []))
    failing.module_.mode = None
    for k, v in _state(failing).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    np.testing.assert_allclose(e.influences(Xte, yte), expected, rtol=1e-5,
                               atol=1e-7 * np.abs(expected).max())


def test_a_killed_worker_gives_a_clear_error(failing, data):
    _, _, Xte, yte = data
    e = _explainer(failing, data, LiSSA(damping=0.05, scale=5.0, depth=5, batch_size=16,
                                        random_state=0), curvature="hessian", n_jobs=2)
    before = _state(failing)
    failing.module_.mode, failing.module_.caller = "exit", os.getpid()
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    with pytest.raises(TerminatedWorkerError, match="terminated"):
        e.influences(Xte, yte)
    failing.module_.mode = None
    for k, v in _state(failing).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert np.all(np.isfinite(e.influences(Xte, yte)))  # fresh workers afterwards


def test_progress_and_timings(digits_mlp, data, capsys, caplog):
    _, _, Xte, yte = data
    e = _explainer(digits_mlp, data, SOLVERS["Exact"], n_jobs=2, verbose=1)
    with caplog.at_level(logging.INFO, logger="sk_fastif"):
        e.influences(Xte, yte)
    err = capsys.readouterr().err
    assert "scoring" in err  # the progress bar over the training partitions
    messages = [r.getMessage() for r in caplog.records]
    for phase in ("gradients", "solve", "scoring"):
        assert any(m.startswith(f"{phase}: ") for m in messages), (phase, messages)
    assert any(m.startswith("scoring: 240 rows") and "(2 workers)" in m for m in messages)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_lissa_chains_run_in_parallel_and_average_to_the_sequential_solve(digits_mlp, data,
                                                                         backend):
    _, _, Xte, yte = data
    solver = LiSSA(damping=0.05, depth=20, batch_size=16, n_repeats=3, random_state=0)
    seq = _explainer(digits_mlp, data, solver)
    a = seq.influences(Xte, yte)
    par = _explainer(digits_mlp, data, solver, n_jobs=2)
    with joblib.parallel_config(backend=backend):
        b = par.influences(Xte, yte)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=ATOL * np.abs(a).max())
    # the same chains, the same minibatches: the same number of curvature products
    with joblib.parallel_config(backend=backend):
        par_solve = par.solve(Xte, yte)
    assert par_solve.n_hvp == seq.solve(Xte, yte).n_hvp
    np.testing.assert_allclose(par_solve.solution.numpy(), seq.solve(Xte, yte).solution.numpy(),
                               rtol=1e-5, atol=1e-7)


def test_chains_left_behind_by_a_restart_are_rerun_at_the_common_scale(ridge_net, monkeypatch):
    from sk_fastif.solvers import _lissa

    net, X, y = ridge_net
    # an underestimated top eigenvalue: the automatic scale starts too small and restarts
    monkeypatch.setattr(_lissa, "_SAFETY", 0.3)
    # one group of chains restarts (chain 2), the other not: it is rerun at the doubled scale
    kw = dict(damping=1e-2, batch_size=20, depth=300, n_repeats=4, random_state=0)
    seq = InfluenceExplainer(net, solver=LiSSA(**kw), random_state=0).fit(X, y)
    par = InfluenceExplainer(net, solver=LiSSA(**kw), random_state=0, n_jobs=2).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScaleRestartWarning)
        a = seq.influences(X[:5], y[:5])
        with joblib.parallel_config(backend="threading"):  # the patched module is shared
            b = par.influences(X[:5], y[:5])
    assert len(seq.solver_.restarts_) == 1 and [r["repeat"] for r in par.solver_.restarts_] == [2]
    assert par.solver_.scale_ == seq.solver_.scale_
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=ATOL * np.abs(a).max())


class _FakeLibc:
    """Records the ``mallopt`` calls that :func:`_heap_for_tensors` makes."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    import ctypes
    import sys

    libc = _FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    return libc


def test_a_frozen_mmap_threshold_is_raised_while_shares_run(fake_libc, monkeypatch):
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which freezes glibc's mmap threshold at 128 KiB:
    # raised to 32 MiB while work runs, restored once, when the last overlapping share ends
    from sk_fastif._parallel import _heap_for_tensors

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with _heap_for_tensors():
        assert fake_libc.calls == [(-3, 32 << 20)]
        with _heap_for_tensors():  # a second share in the same worker (threads)
            pass
        assert fake_libc.calls == [(-3, 32 << 20)]
    assert fake_libc.calls == [(-3, 32 << 20), (-3, 128 * 1024)]
    with pytest.raises(RuntimeError), _heap_for_tensors():
        raise RuntimeError("a failing share restores the setting too")
    assert fake_libc.calls[-1] == (-3, 128 * 1024) and len(fake_libc.calls) == 4


@pytest.mark.parametrize("env", [{}, {"MALLOC_TRIM_THRESHOLD_": "65536",
                                      "MALLOC_MMAP_THRESHOLD_": "4096"}])
def test_the_allocator_is_left_alone_unless_the_threshold_is_frozen(fake_libc, monkeypatch, env):
    from sk_fastif._parallel import _heap_for_tensors

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with _heap_for_tensors():
        pass
    assert fake_libc.calls == []
