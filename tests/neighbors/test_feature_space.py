"""Candidate selectors on their own: embeddings, exact search, pynndescent recall, errors.

Truth comes from outside the selectors: activations recomputed by hand from the module's layers,
brute-force distances with numpy, and scikit-learn's exact search for pynndescent's recall.
pynndescent compiles its kernels once per process (tens of seconds): every NNDescent index here is
built after the module-scoped ``nnd_digits`` fixture paid that cost.
"""

import copy
import pickle

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from skorch import NeuralNetClassifier

from sk_fastif.neighbors import (
    BaseCandidates,
    ExactCandidates,
    NNDescentCandidates,
    SearchContext,
)


def hidden_activations(net, X):
    """tanh(hidden(X)) of the conftest MLP, computed from its layers by hand."""
    m = net.module_
    with torch.no_grad():
        return torch.tanh(m.hidden(torch.as_tensor(X))).numpy()


def brute_force_neighbors(E_train, E_query, k):
    d = ((E_query[:, None, :].astype(np.float64) - E_train[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k], np.sqrt(np.sort(d, axis=1)[:, :k])


def mean_recall(approx, exact):
    return np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(approx, exact)])


@pytest.fixture(scope="module")
def nnd_digits(digits, digits_mlp):
    Xtr = digits[0]
    return NNDescentCandidates(n_neighbors=40, random_state=0).fit(SearchContext(digits_mlp, Xtr))


@pytest.fixture(scope="module")
def blobs():
    """5,000 points in 12 dimensions with cluster structure: a non-trivial ANN problem."""
    rng = np.random.RandomState(0)
    centers = rng.randn(20, 12) * 3
    X = (centers[rng.randint(20, size=5200)] + rng.randn(5200, 12)).astype(np.float32)
    net = NeuralNetClassifier(torch.nn.Linear(12, 2), criterion=torch.nn.CrossEntropyLoss,
                              max_epochs=1, train_split=None, verbose=0)
    net.initialize()
    return net, X[:5000], X[5000:]


# ------------------------------------------------------------------------------------ embeddings
def test_penultimate_is_the_input_of_the_last_linear_layer(digits, digits_mlp):
    Xtr, _, Xte, _ = digits
    sel = ExactCandidates(n_neighbors=5, batch_size=7).fit(SearchContext(digits_mlp, Xtr))
    assert sel.embedding_module_ == "output"
    assert sel.embedding_dim_ == 16
    np.testing.assert_allclose(sel.embed(digits_mlp, Xte), hidden_activations(digits_mlp, Xte),
                               rtol=1e-6, atol=1e-6)


def test_penultimate_follows_execution_order_not_registration_order():
    class Reversed(torch.nn.Module):  # the layer registered first runs last
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 2)
            self.body = torch.nn.Linear(4, 3)

        def forward(self, X):
            return self.head(torch.relu(self.body(X)))

    X = np.random.RandomState(0).randn(30, 4).astype(np.float32)
    net = NeuralNetClassifier(Reversed, criterion=torch.nn.CrossEntropyLoss, max_epochs=1,
                              train_split=None, verbose=0).fit(X, (X[:, 0] > 0).astype(np.int64))
    sel = ExactCandidates(n_neighbors=3).fit(SearchContext(net, X))
    assert sel.embedding_module_ == "head"
    with torch.no_grad():
        expected = torch.relu(net.module_.body(torch.as_tensor(X))).numpy()
    np.testing.assert_allclose(sel.embed(net, X), expected, rtol=1e-6, atol=1e-7)


def test_input_module_name_and_callable_embeddings(digits, digits_mlp):
    Xtr, _, Xte, _ = digits
    sel = ExactCandidates(n_neighbors=3, embedding="input").fit(SearchContext(digits_mlp, Xtr))
    assert sel.embedding_module_ is None
    np.testing.assert_array_equal(sel.embed(digits_mlp, Xte), Xte)

    sel = ExactCandidates(n_neighbors=3, embedding="hidden").fit(SearchContext(digits_mlp, Xtr))
    with torch.no_grad():
        pre = digits_mlp.module_.hidden(torch.as_tensor(Xte)).numpy()
    np.testing.assert_allclose(sel.embed(digits_mlp, Xte), pre, rtol=1e-6, atol=1e-6)

    calls = []

    def first_pixels(net, X):
        calls.append((net, len(X), torch.is_grad_enabled(), net.module_.training))
        return X[:, :5] * 2

    sel = ExactCandidates(n_neighbors=3, embedding=first_pixels, batch_size=150).fit(
        SearchContext(digits_mlp, Xtr))
    np.testing.assert_allclose(sel.embed(digits_mlp, Xte), Xte[:, :5] * 2)
    assert [c[1] for c in calls[:3]] == [150, 150, 100]  # chunks of batch_size over 400 rows
    assert all(c[0] is digits_mlp and not c[2] and not c[3] for c in calls)


def test_embedding_leaves_the_net_unchanged(digits, digits_mlp):
    Xtr = digits[0]
    before = copy.deepcopy(digits_mlp.module_.state_dict())
    digits_mlp.module_.train()
    try:
        sel = ExactCandidates(n_neighbors=3).fit(SearchContext(digits_mlp, Xtr))
        sel.kneighbors(SearchContext(digits_mlp, Xtr[:4]))
        assert digits_mlp.module_.training and digits_mlp.module_.hidden.training
        assert not digits_mlp.module_.output._forward_hooks
    finally:
        digits_mlp.module_.eval()
    for name, value in digits_mlp.module_.state_dict().items():
        assert torch.equal(value, before[name])


# ---------------------------------------------------------------------------------- exact search
def test_exact_candidates_equal_brute_force(digits, digits_mlp):
    Xtr, _, Xte, _ = digits
    sel = ExactCandidates(n_neighbors=25).fit(SearchContext(digits_mlp, Xtr))
    idx, dist = sel.kneighbors(SearchContext(digits_mlp, Xte))
    ref_idx, ref_dist = brute_force_neighbors(hidden_activations(digits_mlp, Xtr),
                                              hidden_activations(digits_mlp, Xte), 25)
    assert idx.shape == (len(Xte), 25) and idx.dtype == np.int64
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-5)
    # the same sets (ties could swap order)
    assert mean_recall(idx, ref_idx) == 1.0
    # a different number of neighbours at query time, from the same index
    idx5, _ = sel.kneighbors(SearchContext(digits_mlp, Xte), n_neighbors=5)
    assert mean_recall(idx5, ref_idx[:, :5]) == 1.0


def test_mean_query_searches_from_the_mean_embedding(digits, digits_mlp):
    Xtr, _, Xte, _ = digits
    sel = ExactCandidates(n_neighbors=30).fit(SearchContext(digits_mlp, Xtr))
    idx, _ = sel.kneighbors(SearchContext(digits_mlp, Xte[:10]), query="mean")
    centre = hidden_activations(digits_mlp, Xte[:10]).mean(axis=0, keepdims=True)
    ref, _ = brute_force_neighbors(hidden_activations(digits_mlp, Xtr), centre, 30)
    assert idx.shape == (1, 30)
    assert set(idx[0]) == set(ref[0])


# -------------------------------------------------------------------------------- pynndescent
def test_nndescent_recall_against_exact_search(digits, digits_mlp, nnd_digits, blobs):
    Xtr, _, Xte, _ = digits
    exact = ExactCandidates(n_neighbors=40).fit(SearchContext(digits_mlp, Xtr))
    approx, _ = nnd_digits.kneighbors(SearchContext(digits_mlp, Xte))
    truth, _ = exact.kneighbors(SearchContext(digits_mlp, Xte))
    assert mean_recall(approx, truth) >= 0.95

    net, X, Q = blobs
    for k in (10, 100):
        nnd = NNDescentCandidates(n_neighbors=k, embedding="input", random_state=0)
        nnd = nnd.fit(SearchContext(net, X))
        truth, _ = brute_force_neighbors(X, Q, k)
        approx, dist = nnd.kneighbors(SearchContext(net, Q))
        assert approx.shape == (len(Q), k)
        assert mean_recall(approx, truth) >= 0.95
        # distances are true euclidean distances of the returned points
        np.testing.assert_allclose(dist, np.linalg.norm(X[approx] - Q[:, None], axis=2),
                                   rtol=1e-4, atol=1e-4)


def test_nndescent_is_deterministic_under_a_fixed_random_state(digits, digits_mlp, nnd_digits):
    Xtr, _, Xte, _ = digits
    again = NNDescentCandidates(n_neighbors=40, random_state=0).fit(SearchContext(digits_mlp, Xtr))
    i1, d1 = nnd_digits.kneighbors(SearchContext(digits_mlp, Xte))
    i2, d2 = again.kneighbors(SearchContext(digits_mlp, Xte))
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    # queries do not advance any hidden state
    np.testing.assert_array_equal(nnd_digits.kneighbors(SearchContext(digits_mlp, Xte))[0], i1)


def test_fitted_nndescent_pickles(digits, digits_mlp, nnd_digits):
    Xte = digits[2]
    restored = pickle.loads(pickle.dumps(nnd_digits))
    i1, d1 = nnd_digits.kneighbors(SearchContext(digits_mlp, Xte))
    i2, d2 = restored.kneighbors(SearchContext(digits_mlp, Xte))
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    assert restored.get_params() == nnd_digits.get_params()


def test_nndescent_refuses_shortlists_with_repeats(digits, digits_mlp, nnd_digits, monkeypatch):
    Xte = digits[2]
    sel = copy.deepcopy(nnd_digits)

    def query_with_repeats(E, k, epsilon):
        idx = np.tile(np.arange(k), (len(E), 1))
        idx[0, 1] = idx[0, 0]
        return idx, np.zeros((len(E), k), dtype=np.float32)

    monkeypatch.setattr(sel.index_, "query", query_with_repeats)
    with pytest.raises(RuntimeError, match="ExactCandidates"):
        sel.kneighbors(SearchContext(digits_mlp, Xte[:3]))


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("cls", [ExactCandidates, NNDescentCandidates])
def test_bad_parameters_give_clear_errors(digits, digits_mlp, cls):
    Xtr, _, Xte, _ = digits
    with pytest.raises(ValueError, match=r"n_neighbors=401 exceeds the number of training "
                                         r"samples 400"):
        cls(n_neighbors=401).fit(SearchContext(digits_mlp, Xtr))
    with pytest.raises(ValueError, match=r"embedding='hiden'.*Submodule names: \['hidden', "
                                         r"'output'\]"):
        cls(n_neighbors=5, embedding="hiden").fit(SearchContext(digits_mlp, Xtr))
    with pytest.raises(InvalidParameterError, match="n_neighbors"):
        cls(n_neighbors=0).fit(SearchContext(digits_mlp, Xtr))
    with pytest.raises(InvalidParameterError, match="embedding"):
        cls(n_neighbors=5, embedding=3).fit(SearchContext(digits_mlp, Xtr))
    with pytest.raises(NotFittedError):
        cls(n_neighbors=5).kneighbors(SearchContext(digits_mlp, Xte))


def test_query_errors(digits, digits_mlp):
    Xtr, _, Xte, _ = digits
    sel = ExactCandidates(n_neighbors=5).fit(SearchContext(digits_mlp, Xtr))
    with pytest.raises(ValueError, match=r"n_neighbors must be an integer in \[1, 400\]"):
        sel.kneighbors(SearchContext(digits_mlp, Xte), n_neighbors=401)
    with pytest.raises(ValueError, match="query must be 'each' or 'mean'"):
        sel.kneighbors(SearchContext(digits_mlp, Xte), query="median")
    other = ExactCandidates(n_neighbors=5, embedding=lambda net, X: X[:, :3])
    other = other.fit(SearchContext(digits_mlp, Xtr))
    other.embedding = lambda net, X: X[:, :4]
    with pytest.raises(ValueError, match="4 dimensions but the training embedding had 3"):
        other.kneighbors(SearchContext(digits_mlp, Xte))
    with pytest.raises(ValueError, match="expected"):
        ExactCandidates(n_neighbors=5, embedding=lambda net, X: X[:2]).fit(
            SearchContext(digits_mlp, Xtr))


def test_penultimate_needs_a_linear_layer():
    class NoLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(4, 2))

        def forward(self, X):
            return X @ self.w

    X = np.random.RandomState(0).randn(20, 4).astype(np.float32)
    net = NeuralNetClassifier(NoLinear, criterion=torch.nn.CrossEntropyLoss, max_epochs=1,
                              train_split=None, verbose=0)
    net.initialize()
    with pytest.raises(ValueError, match=r"needs a torch.nn.Linear layer.*embedding='input'"):
        ExactCandidates(n_neighbors=3).fit(SearchContext(net, X))
    sel = ExactCandidates(n_neighbors=3, embedding="input").fit(SearchContext(net, X))
    assert sel.embedding_dim_ == 4


def test_nndescent_index_params_may_not_override_the_selector(digits, digits_mlp, nnd_digits):
    with pytest.raises(ValueError, match=r"index_params may not set \['random_state'\]"):
        NNDescentCandidates(n_neighbors=5, index_params={"random_state": 1}).fit(
            SearchContext(digits_mlp, digits[0]))


def test_selectors_share_the_base_class():
    assert issubclass(ExactCandidates, BaseCandidates)
    assert issubclass(NNDescentCandidates, BaseCandidates)
    assert "random_state" not in ExactCandidates().get_params()  # nothing random to seed


def test_index_build_and_queries_keep_torchs_thread_count(blobs, nnd_digits, monkeypatch):
    """numba's first parallel launch in a process resets the OpenMP thread count that torch
    shares (a one-thread torch process then runs on all cores); the selector restores it. The
    reset is simulated, since it happens once per process."""
    import pynndescent

    class ResettingNNDescent(pynndescent.NNDescent):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            torch.set_num_threads(3)

        def query(self, *args, **kwargs):
            torch.set_num_threads(3)
            return super().query(*args, **kwargs)

    monkeypatch.setattr(pynndescent, "NNDescent", ResettingNNDescent)
    net, X, Q = blobs
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sel = NNDescentCandidates(n_neighbors=5, embedding="input", random_state=0)
        sel = sel.fit(SearchContext(net, X))
        assert isinstance(sel.index_, ResettingNNDescent)
        assert torch.get_num_threads() == 1
        sel.kneighbors(SearchContext(net, Q))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_old_call_form_still_works_with_a_future_warning(digits, digits_mlp):
    Xtr, _, Xte, _ = digits
    new = ExactCandidates(n_neighbors=5).fit(SearchContext(digits_mlp, Xtr))
    with pytest.warns(FutureWarning, match="deprecated"):
        old = ExactCandidates(n_neighbors=5).fit(digits_mlp, Xtr)
    with pytest.warns(FutureWarning, match="deprecated"):
        got = old.kneighbors(digits_mlp, Xte, 3)
    np.testing.assert_array_equal(got[0], new.kneighbors(SearchContext(digits_mlp, Xte),
                                                         n_neighbors=3)[0])
    with pytest.raises(TypeError, match="SearchContext alone"):
        new.kneighbors(SearchContext(digits_mlp, Xte), Xte)
