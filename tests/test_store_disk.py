"""The on-disk gradient store (``memory=``): what it holds, when it is reused or refused, and
how it survives crashes, full disks, concurrent writers and pickles.

What a store holds is checked against per-sample gradients taken by ``torch.func`` on the
module itself, and its scores against ``(1/n) S Gᵀ`` computed from those.
"""

import errno
import json
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

from sk_fastif import InfluenceExplainer, StoreError
from sk_fastif import _store as stores
from sk_fastif.neighbors import ExactCandidates
from sk_fastif.solvers import CG, Exact

from .test_store import MLP, N, Normed, _data, _net, _truth

DAMPING = 0.1


def _explainer(net, memory, **kw):
    X, y = _data()
    return InfluenceExplainer(net, solver=Exact(damping=DAMPING), memory=memory,
                              **kw).fit(X.numpy(), y.numpy())


def _store_dirs(root):
    parent = root / stores.STORE_DIR
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def _queries():
    Xq, yq = _data(seed=3)
    return Xq[:6].numpy(), yq[:6].numpy()


def _truth_scores(expl, net):
    """(1/n) S Gᵀ with G the torch.func per-sample gradients of the training set."""
    X, y = _data()
    S = torch.as_tensor(expl.influence_factors(*_queries()))
    return (S @ _truth(net, X, y).T).numpy() / N


@pytest.mark.parametrize("module,kind", [(MLP, "linear_factors"), (Normed, "dense")])
def test_fit_writes_the_per_sample_gradients_to_disk(tmp_path, module, kind):
    net = _net(module())
    expl = _explainer(net, tmp_path)
    (fp,) = _store_dirs(tmp_path)
    assert fp == expl.engine_.fingerprint
    path = tmp_path / stores.STORE_DIR / fp
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == stores.STORE_FORMAT and manifest["kind"] == kind
    assert manifest["n_rows"] == N and manifest["n_params"] == expl.n_params_
    X, y = _data()
    truth = _truth(net, X, y)
    store = stores.open_store(tmp_path, fp, expl.engine_.bridge, N)
    assert all(isinstance(a, np.memmap) for a in store.arrays().values())  # read from disk
    torch.testing.assert_close(store.gradients(np.arange(N)), truth, rtol=1e-4, atol=1e-6)
    S = torch.randn(5, truth.shape[1], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(store.dot(S), S @ truth.T, rtol=1e-4, atol=1e-5)
    rows = [3, 40, 41, 42, 3]
    torch.testing.assert_close(store.dot(S, rows), S @ truth[rows].T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(expl.influences(*_queries()), _truth_scores(expl, net),
                               rtol=1e-4, atol=1e-7)


def test_the_store_is_read_in_chunks_of_rows(tmp_path, monkeypatch):
    net = _net(MLP())
    expl = _explainer(net, tmp_path)
    ref = _truth_scores(expl, net)
    monkeypatch.setattr(stores, "_MAX_ENTRIES", 40)  # a few rows per read
    reads = []
    original = stores._rows

    def spy(a, index, lo, hi, device):
        out = original(a, index, lo, hi, device)
        reads.append(len(out))
        return out

    monkeypatch.setattr(stores, "_rows", spy)
    np.testing.assert_allclose(expl.influences(*_queries()), ref, rtol=1e-4, atol=1e-7)
    assert reads and max(reads) < N // 4


def test_a_second_fit_reuses_the_store_without_a_pass(tmp_path, monkeypatch):
    net = _net(MLP())
    first = _explainer(net, tmp_path)
    path = tmp_path / stores.STORE_DIR / first.engine_.fingerprint
    stamps = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    def no_pass(*args, **kwargs):
        raise AssertionError("the training set was passed over again")

    monkeypatch.setattr(stores, "_factor_chunks", no_pass)
    monkeypatch.setattr(stores, "_dense_chunks", no_pass)
    second = _explainer(net, joblib.Memory(tmp_path, verbose=0))  # a joblib.Memory: its dir
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == stamps
    np.testing.assert_array_equal(second.influences(*_queries()), first.influences(*_queries()))


def test_another_net_params_or_data_get_their_own_store(tmp_path):
    net, other = _net(MLP()), _net(MLP(), seed=1)
    a = _explainer(net, tmp_path)
    b = _explainer(other, tmp_path)
    c = _explainer(net, tmp_path, params=["out"])
    X, y = _data()
    X2 = X.clone()
    X2[0, 0] += 1.0
    d = InfluenceExplainer(net, solver=Exact(damping=DAMPING), memory=tmp_path).fit(
        X2.numpy(), y.numpy())
    fps = {e.engine_.fingerprint for e in (a, b, c, d)}
    assert len(fps) == 4 and set(_store_dirs(tmp_path)) == fps
    for expl, model in ((a, net), (b, other)):
        np.testing.assert_allclose(expl.influences(*_queries()), _truth_scores(expl, model),
                                   rtol=1e-4, atol=1e-7)


def _rewrite_manifest(tmp_path, fp, **changes):
    path = tmp_path / stores.STORE_DIR / fp / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("changes,match", [
    ({"format": 0}, "format 0; this version of sk_fastif reads format 1"),
    ({"fingerprint": "0" * 32}, "written for another net or data: its fingerprint"),
    ({"n_rows": N - 1}, "its n_rows is 59"),
    ({"layers": []}, "its layers"),
])
def test_a_store_that_does_not_match_is_refused(tmp_path, changes, match):
    net = _net(MLP())
    fp = _explainer(net, tmp_path).engine_.fingerprint
    _rewrite_manifest(tmp_path, fp, **changes)
    with pytest.raises(StoreError, match=f"memory: the gradient store in .*{fp}.*{match}"):
        _explainer(net, tmp_path)


def test_a_truncated_or_unpicklable_array_is_refused(tmp_path):
    net = _net(MLP())
    fp = _explainer(net, tmp_path).engine_.fingerprint
    path = tmp_path / stores.STORE_DIR / fp
    np.save(path / "layer0.output_grads.npy", np.zeros((N - 5, 7), dtype="float32"))
    with pytest.raises(StoreError, match=r"is incomplete: layer0.output_grads.npy"):
        _explainer(net, tmp_path)
    # an array of Python objects would run code when unpickled: it is never loaded
    np.save(path / "layer0.output_grads.npy", np.array([object()] * N), allow_pickle=True)
    with pytest.raises(StoreError, match="cannot be read"):
        _explainer(net, tmp_path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="no readable manifest.json"):
        _explainer(net, tmp_path)


def test_a_pickled_explainer_refers_to_its_store(tmp_path):
    net = _net(MLP())
    expl = _explainer(net, tmp_path)
    ref = expl.influences(*_queries())
    blob = pickle.dumps(expl)
    loaded = pickle.loads(blob)
    assert loaded.engine_._kept.store is None and loaded.engine_._kept.root == tmp_path
    np.testing.assert_array_equal(loaded.influences(*_queries()), ref)
    assert all(isinstance(a, np.memmap) for a in loaded.engine_._kept.store.arrays().values())
    for p in (tmp_path / stores.STORE_DIR / expl.engine_.fingerprint).iterdir():
        p.unlink()
    (tmp_path / stores.STORE_DIR / expl.engine_.fingerprint).rmdir()
    with pytest.raises(StoreError, match="memory: the gradient store of this explainer .* is "
                                         "gone. Fit the explainer again"):
        pickle.loads(blob).influences(*_queries())


def test_workers_read_their_partitions_of_the_store(tmp_path):
    net = _net(MLP())
    expl = _explainer(net, tmp_path)
    ref = _truth_scores(expl, net)
    expl.set_params(n_jobs=2)
    with joblib.parallel_config(backend="loky"):
        np.testing.assert_allclose(expl.influences(*_queries()), ref, rtol=1e-4, atol=1e-7)


def test_shortlists_read_the_store(tmp_path):
    net = _net(MLP())
    kw = dict(candidates=ExactCandidates(n_neighbors=10))
    on_disk = _explainer(net, tmp_path, **kw).explain(*_queries(), k=5)
    in_memory = _explainer(net, None, **kw).explain(*_queries(), k=5)
    np.testing.assert_array_equal(on_disk.helpful_indices, in_memory.helpful_indices)
    np.testing.assert_allclose(on_disk.helpful_scores, in_memory.helpful_scores, rtol=1e-5)


class _Crash(Exception):
    pass


def _failing_write(monkeypatch, exc, after=1):
    """The store's writer fails on its ``after + 1``-th chunk with ``exc``."""
    original = stores._OnDisk.write
    calls = []

    def write(self, sl, parts):
        calls.append(sl)
        if len(calls) > after:
            raise exc
        original(self, sl, parts)

    monkeypatch.setattr(stores._OnDisk, "write", write)


def test_a_crash_mid_fit_leaves_no_store_a_later_fit_trusts(tmp_path, monkeypatch):
    net = _net(MLP())
    X, y = _data()
    with monkeypatch.context() as m:
        _failing_write(m, _Crash("killed"))
        with pytest.raises(_Crash):
            InfluenceExplainer(net, solver=Exact(damping=DAMPING), memory=tmp_path,
                               batch_size=16).fit(X.numpy(), y.numpy())
    assert list((tmp_path / stores.STORE_DIR).iterdir()) == []  # nothing half-written kept
    # a process killed mid-write leaves its temporary copy: it is never read
    fp = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(
        X.numpy(), y.numpy()).engine_.fingerprint
    partial = tmp_path / stores.STORE_DIR / f".{fp}-killed"
    partial.mkdir()
    np.save(partial / "layer0.output_grads.npy", np.zeros((3, 7), dtype="float32"))
    expl = _explainer(net, tmp_path)
    assert (tmp_path / stores.STORE_DIR / fp).is_dir() and expl.engine_.fingerprint == fp
    np.testing.assert_allclose(expl.influences(*_queries()), _truth_scores(expl, net),
                               rtol=1e-4, atol=1e-7)


def test_a_full_disk_fails_fit_cleanly(tmp_path, monkeypatch):
    net, other = _net(MLP()), _net(MLP(), seed=1)
    older = _explainer(other, tmp_path)
    before = {k: v.clone() for k, v in net.module_.state_dict().items()}
    X, y = _data()
    with monkeypatch.context() as m:
        _failing_write(m, OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(OSError, match="memory: could not write the gradient store in .*: "
                                          "No space left on device") as info:
            InfluenceExplainer(net, solver=Exact(damping=DAMPING), memory=tmp_path,
                               batch_size=16).fit(X.numpy(), y.numpy())
    assert info.value.errno == errno.ENOSPC
    assert _store_dirs(tmp_path) == [older.engine_.fingerprint]  # the older store is intact
    for k, v in net.module_.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    np.testing.assert_allclose(older.influences(*_queries()), _truth_scores(older, other),
                               rtol=1e-4, atol=1e-7)


def test_an_unwritable_directory_fails_fit_cleanly(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="memory: could not write the gradient store in "
                                      f"{blocker}"):
        _explainer(_net(MLP()), blocker / "store")


def test_two_writers_of_one_store_leave_one_good_copy(tmp_path, monkeypatch):
    """The second writer finishes while the first is still writing: the first discards its
    copy and opens the one in place."""
    net = _net(MLP())
    X, y = _data()
    original = stores._write_into
    raced = []

    def racing(directory, fingerprint, bridge, Xs, ys, progress):
        original(directory, fingerprint, bridge, Xs, ys, progress)
        if not raced:  # another process completes the same store meanwhile
            raced.append(True)
            stores.write_store(tmp_path, fingerprint, bridge, Xs, ys)

    monkeypatch.setattr(stores, "_write_into", racing)
    expl = _explainer(net, tmp_path)
    assert raced and _store_dirs(tmp_path) == [expl.engine_.fingerprint]  # no temporary left
    np.testing.assert_allclose(expl.influences(*_queries()), _truth_scores(expl, net),
                               rtol=1e-4, atol=1e-7)


def _fit_in_process(net, root):
    X, y = _data()
    expl = InfluenceExplainer(net, solver=CG(damping=DAMPING, tol=1e-8, block=True),
                              memory=root).fit(X.numpy(), y.numpy())
    return expl.engine_.fingerprint


def test_two_processes_fitting_one_store(tmp_path):
    net = _net(MLP())
    fps = joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(_fit_in_process)(net, str(tmp_path)) for _ in range(2))
    expl = _explainer(net, tmp_path)  # opens what the two wrote
    assert fps == [expl.engine_.fingerprint] * 2 and _store_dirs(tmp_path) == fps[:1]
    np.testing.assert_allclose(expl.influences(*_queries()), _truth_scores(expl, net),
                               rtol=1e-4, atol=1e-7)


def test_memory_is_validated_and_none_keeps_nothing_on_disk(tmp_path):
    net = _net(MLP())
    with pytest.raises(InvalidParameterError, match="memory"):
        _explainer(net, 3)
    expl = _explainer(net, joblib.Memory(None, verbose=0))  # joblib's no-cache Memory
    assert expl.engine_._kept.root is None
    assert InfluenceExplainer(net).get_params()["memory"] is None


def test_ekfac_factors_are_kept_with_the_store(tmp_path, monkeypatch):
    from sk_fastif._curvature import _kfac_factors
    from sk_fastif.solvers import EKFAC

    net = _net(MLP())
    X, y = _data()

    def fit(memory, **kw):
        return InfluenceExplainer(net, solver=EKFAC(damping=DAMPING, **kw),
                                  memory=memory).fit(X.numpy(), y.numpy())

    ref = fit(None).influences(*_queries())
    first = fit(tmp_path)
    files = sorted(p.name for p in (tmp_path / stores.STORE_DIR /
                                    first.engine_.fingerprint).glob("kfac-*"))
    assert files == ["kfac-exact.npz"]
    original = _kfac_factors.compute_factors
    calls = []
    monkeypatch.setattr(_kfac_factors, "compute_factors",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    second = fit(tmp_path)  # reads the factors: no pass
    assert calls == []
    np.testing.assert_array_equal(second.influences(*_queries()), ref)
    for a, b in zip(first.solver_.factors_, second.solver_.factors_):
        torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=0, atol=0)
    fit(tmp_path, mc_samples=2, random_state=0)  # other probes: factors of their own
    assert calls == [1]
