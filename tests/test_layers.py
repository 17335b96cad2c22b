"""The small modules under the engine: ranking, seeding, the task kind, the input transform."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from skorch import NeuralNetBinaryClassifier, NeuralNetRegressor

from sk_fastif._inputs import InputTransformer
from sk_fastif._net import Task
from sk_fastif._random import fit_seeds, needs_seed, seed_solver
from sk_fastif._ranking import candidates_to_csr, csr_to_candidates, explanation, top_k
from sk_fastif.solvers import CG, LiSSA


# ------------------------------------------------------------------------------------ ranking
def test_top_k_by_hand():
    s = np.array([[0.5, -2.0, 3.0, 0.0, -0.1]])
    np.testing.assert_array_equal(top_k(s, 2, "helpful")[0], [[2, 0]])
    np.testing.assert_array_equal(top_k(s, 2, "harmful")[0], [[1, 4]])
    idx, val = top_k(s, 3, "abs")
    np.testing.assert_array_equal(idx, [[2, 1, 0]])
    np.testing.assert_array_equal(val, [[3.0, -2.0, 0.5]])
    # ties keep the column order
    np.testing.assert_array_equal(top_k(np.array([[1.0, 1.0, 1.0]]), 2)[0], [[0, 1]])
    with pytest.raises(ValueError, match="kind"):
        top_k(s, 2, "largest")


def test_top_k_over_a_candidate_pool_returns_training_indices():
    values = np.array([[0.1, 0.9, -0.4], [2.0, -1.0, 0.0]])
    pool = np.array([[10, 40, 70], [5, 6, 99]])
    idx, val = top_k(values, 2, "helpful", pool)
    np.testing.assert_array_equal(idx, [[40, 10], [5, 99]])
    np.testing.assert_array_equal(val, [[0.9, 0.1], [2.0, 0.0]])
    ex = explanation(values, 1, pool=pool, test_labels=np.array([3, 4]))
    np.testing.assert_array_equal(ex.harmful_indices, [[70], [6]])
    np.testing.assert_array_equal(ex.test_labels, [3, 4])


def test_csr_round_trip_keeps_explicit_zeros():
    values = np.array([[0.0, 1.5], [-2.0, 0.0]])
    pool = np.array([[1, 3], [0, 2]])
    m = candidates_to_csr(values, pool, 4)
    assert m.shape == (2, 4) and m.nnz == 4  # zeros are stored: they were scored
    np.testing.assert_array_equal(m.toarray(), [[0, 0, 0, 1.5], [-2.0, 0, 0, 0]])
    v, p = csr_to_candidates(m)
    np.testing.assert_array_equal(v, values)
    np.testing.assert_array_equal(p, pool)
    with pytest.raises(ValueError, match="same number"):
        csr_to_candidates(sp.csr_matrix(np.array([[1.0, 0, 2.0], [0, 3.0, 0]])))


# ------------------------------------------------------------------------------------ seeding
def test_fit_seeds_are_reproducible_and_distinct():
    a, b = fit_seeds(7), fit_seeds(7)
    assert (a.training, a.solver, a.selector, a.audit) == (
        b.training, b.solver, b.selector, b.audit)
    assert len({a.training, a.solver, a.selector, a.audit}) == 4
    assert fit_seeds(8).solver != a.solver
    assert a.seeded and not fit_seeds(None).seeded


def test_none_draws_from_numpys_global_generator_only_when_needed():
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    seeds = fit_seeds(None, needed=False)
    assert seeds.solver is None
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    np.random.seed(3)  # noqa: NPY002
    first = fit_seeds(None).solver
    np.random.seed(3)  # noqa: NPY002
    assert fit_seeds(None).solver == first


def test_solver_seeding_rules():
    seeds = fit_seeds(0)
    assert not needs_seed(CG()) and not needs_seed(LiSSA(random_state=5))
    assert seed_solver(LiSSA(random_state=5), seeds).random_state == 5
    assert seed_solver(LiSSA(), seeds).random_state == seeds.solver
    drawn = seed_solver(LiSSA(random_state=np.random.RandomState(0)), seeds).random_state
    assert drawn == np.random.RandomState(0).randint(np.iinfo(np.int32).max)


# --------------------------------------------------------------------------------------- task
def test_task_kinds(digits_mlp, digits, ridge_net, binary_net):
    Xtr, ytr, _, _ = digits
    task = Task.from_net(digits_mlp, torch.as_tensor(Xtr[:2]))
    assert (task.kind, task.n_outputs) == ("classifier", 10)
    y = task.encode(np.array([1.0, 2.0]), 2)
    assert y.dtype == torch.int64 and y.tolist() == [1, 2]
    proba = torch.tensor([[0.1, 0.9] + [0.0] * 8, [0.7, 0.3] + [0.0] * 8])
    assert task.predicted_labels(proba).tolist() == [1, 0]
    with pytest.raises(ValueError, match="labels outside"):
        task.encode(np.array([10]), 1)

    net, X, yr = ridge_net
    assert isinstance(net, NeuralNetRegressor)
    reg = Task.from_net(net, torch.as_tensor(X[:2]))
    assert (reg.kind, reg.n_outputs) == ("regressor", 1)
    assert reg.encode(yr[:3].ravel(), 3).shape == (3, 1)
    with pytest.raises(ValueError, match="regressor"):
        reg.predicted_labels(torch.zeros(3, 1))

    bnet, Xb, yb = binary_net
    assert isinstance(bnet, NeuralNetBinaryClassifier)
    binary = Task.from_net(bnet, torch.as_tensor(Xb[:2]))
    assert binary.kind == "binary"
    assert binary.predicted_labels(torch.tensor([[0.8, 0.2], [0.3, 0.7]])).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="0/1"):
        binary.encode(np.array([0, 2]), 2)


# ----------------------------------------------------------------------------------- inputs
def test_input_transformer_records_the_shape_and_converts():
    t = InputTransformer(None, torch.float64)
    Xt, targets = t.fit_transform(np.ones((4, 3), dtype=np.float32))
    assert Xt.dtype == torch.float64 and t.input_shape == (3,) and targets is None
    with pytest.raises(ValueError, match="expecting 3 features"):
        t.transform(np.ones((2, 5)))
    with pytest.raises(ValueError, match="Reshape your data"):
        t.transform(np.ones(3))
    with pytest.raises(ValueError, match="too large"):
        InputTransformer(None, torch.float32).fit_transform(np.full((2, 2), 1e300))
    # a dict: each value converted alike, integers kept (no net to say otherwise)
    d, _ = InputTransformer(None, torch.float32).fit_transform(
        {"ids": np.arange(8).reshape(4, 2), "w": np.ones(4)})
    assert d["ids"].dtype == torch.int64 and d["w"].dtype == torch.float32
    # a Dataset of (x, y) pairs: lazy rows and its targets
    ds = torch.utils.data.TensorDataset(torch.ones(5, 2, dtype=torch.float64), torch.arange(5))
    rows, targets = InputTransformer(None, torch.float32).fit_transform(ds)
    assert len(rows) == 5 and rows.take([0, 1]).dtype == torch.float32
    assert targets.tolist() == [0, 1, 2, 3, 4]
