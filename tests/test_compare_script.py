"""benchmarks/compare.py's own logic on a tiny problem, for sk_fastif's methods only."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

compare = pytest.importorskip("compare")
workloads = pytest.importorskip("_compare_workloads")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-5-3 tanh MLP, briefly trained on 60 points, saved as a compare.py workload."""
    from sk_fastif.toy import TanhMLP

    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.RandomState(0)
    X = rng.randn(70, 4).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    torch.manual_seed(0)
    module = TanhMLP(n_in=4, n_hidden=5, n_out=3)
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(torch.as_tensor(X[:60])),
                                          torch.as_tensor(y[:60])).backward()
        opt.step()
    torch.save(module.state_dict(), d / "state.pt")
    np.savez(d / "data.npz", X_train=X[:60], y_train=y[:60], X_test=X[60:], y_test=y[60:],
             X_many=X[np.arange(50) % 10 + 60], y_many=y[np.arange(50) % 10 + 60])
    spec = {"net": "tiny", "name": "tiny", "arch": {"n_in": 4, "n_hidden": 5, "n_out": 3},
            "damping": 0.05, "n_train": 60, "n_test": 10, "reference": "explicit",
            "spectrum": {"mu_max": 1.0, "mu_min": 0.0}}
    (d / "spec.json").write_text(json.dumps(spec))
    return d


def test_reference_matches_an_explicit_hessian_solve(tiny):
    spec, data = workloads.load_workload(tiny)
    R = workloads.reference(spec, data, cache=tiny, log=lambda s: None)
    module = workloads.build_module(spec, torch.float64)
    names = [k for k, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    X = {k: torch.as_tensor(data[k], dtype=torch.float64) for k in ("X_train", "X_test")}

    def loss(theta, X, y, reduction="mean"):
        chunks = torch.split(theta, [int(np.prod(s)) for s in shapes])
        p = {k: c.reshape(s) for k, c, s in zip(names, chunks, shapes)}
        out = torch.func.functional_call(module, p, (X,))
        return torch.nn.functional.cross_entropy(out, y, reduction=reduction)

    ytr, yte = torch.as_tensor(data["y_train"]), torch.as_tensor(data["y_test"])
    H = torch.autograd.functional.hessian(lambda t: loss(t, X["X_train"], ytr), flat)
    A = H + spec["damping"] * torch.eye(len(flat), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian
    G_tr = jac(lambda t: loss(t, X["X_train"], ytr, "none"), flat)
    G_te = jac(lambda t: loss(t, X["X_test"], yte, "none"), flat)
    expected = (G_te @ torch.linalg.solve(A, G_tr.T) / len(ytr)).numpy()
    np.testing.assert_allclose(R, expected, rtol=1e-8, atol=1e-12)
    # and the agreement metrics are perfect on it, and below 1 on a perturbed copy
    perfect = compare.agreement(expected, R, range(len(R)))
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["top10"] == 1.0
    noisy = expected + np.random.RandomState(0).randn(*R.shape) * R.std()
    assert compare.agreement(noisy, R, range(len(R)))["pearson"] < 0.9


@pytest.mark.slow
def test_worker_scores_agree_and_failures_are_reported(tiny):
    spec, data = workloads.load_workload(tiny)
    R = workloads.reference(spec, data, cache=tiny, log=lambda s: None)
    ok = compare.run_worker("ours:CG", tiny, mem_cap_gib=8, timeout=120)
    assert "error" not in ok, ok.get("error")
    assert ok["seconds"] > 0 and ok["peak_mib"] > 10
    assert ok["warm_seconds"] > 0 and ok["query_many_seconds"] > 0  # all three columns
    agree = compare.agreement(ok["scores"], R, ok["rows"])
    assert agree["pearson"] > 0.9999 and agree["n_nonfinite"] == 0
    # a method that fails in its process comes back with its error, not dropped
    bad = compare.run_worker("ours:no-such-method", tiny, mem_cap_gib=8, timeout=120)
    assert bad["error"].startswith("KeyError") and "scores" not in bad
    # and one over the memory cap is killed and reported
    capped = compare.run_worker("ours:CG", tiny, mem_cap_gib=0.01, timeout=120)
    assert "memory above the cap" in capped["error"]
    rows = [{"method": "ours:CG", "library": "sk_fastif", "seconds": ok["seconds"],
             "peak_mib": ok["peak_mib"], **agree},
            {"method": "ours:no-such-method", "library": "sk_fastif", **bad}]
    text = compare.table("tiny", rows)
    assert "KeyError" in text and text.count("\n| ours:") == 2


def test_rst_report_lists_every_row_and_states_the_ratio(tmp_path):
    report = pytest.importorskip("_compare_report")
    rows = [{"method": "ours:CG", "library": "sk_fastif", "seconds": 0.5, "peak_mib": 400.0,
             "warm_seconds": 0.25, "query_many_seconds": 1.0,
             "pearson": 0.999, "spearman": 0.99, "top10": 1.0, "note": "tol=1e-4"},
            {"method": "ours:defaults", "library": "sk_fastif", "seconds": 1.0,
             "peak_mib": 300.0, "warm_seconds": 0.5, "query_many_seconds": 2.0,
             "pearson": 0.995, "spearman": 0.99, "top10": 1.0, "note": ""},
            {"method": "ours:inexact", "library": "sk_fastif", "seconds": 0.01,
             "peak_mib": 300.0, "warm_seconds": 0.01, "pearson": 0.9, "note": "too rough"},
            {"method": "peer:CG", "library": "peer", "seconds": 2.0, "peak_mib": 1600.0,
             "warm_seconds": 1.5, "query_many_seconds": None,
             "pearson": 0.995, "spearman": 0.98, "top10": 0.9, "note": "a | b"},
            {"method": "peer:fast", "library": "peer", "seconds": 3.0, "peak_mib": 100.0,
             "warm_seconds": 1.0, "query_many_seconds": 5.0,
             "pearson": 0.999, "spearman": 0.99, "top10": 0.9, "note": ""},
            {"method": "peer:broken", "library": "peer", "error": "killed: timeout after 5 s",
             "note": ""}]
    result = {"machine": {"cpu_count": 2, "platform": "linux", "python": "3.11",
                          "versions": {"torch": "2.13.0", "captum": None}, "date": "today"},
              "settings": {"mem_cap_gib": 16, "timeout_s": 300, "quick": False},
              "workloads": {"digits50": {"spec": {}, "rows": rows,
                                         "speedup": compare.speedup(rows)}}}
    text = report.write_rst(result, tmp_path / "t.rst").read_text()
    lines = text.splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("====")]
    assert len(borders) == 3 and len({lines[i] for i in borders}) == 1  # one table
    body = lines[borders[1] + 1:borders[2]]
    assert [line.split()[0] for line in body] == [
        "``ours:CG``", "``ours:defaults``", "``ours:inexact``", "``peer:CG``", "``peer:fast``",
        "``peer:broken``"]
    assert "killed: timeout after 5 s" in body[5] and "a / b" in body[3]
    assert body[0].split()[1:4] == ["0.25", "0.50", "1.00"]  # warm, cold, query-many
    # per column, the fastest of each side at Pearson >= 0.99 (never the inexact row)
    assert "warm **4.0x** (``ours:CG`` against ``peer:fast``)" in text
    assert "cold **4.0x** (``ours:CG`` against ``peer:CG``)" in text
    assert "query-many **5.0x** (``ours:CG`` against ``peer:fast``)" in text
    assert "Over ``ours:defaults``: warm 2.0x, cold 2.0x, query-many 2.5x." in text
    assert "**0.25x** the peer's" in text
    assert "torch 2.13.0" in text and "captum" not in text
