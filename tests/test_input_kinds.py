"""Every input a skorch net takes: token ids, dicts, DataFrames, Datasets and images.

The references are built here, independently of the package: the explicit float64 Hessian of
the mean training loss (``torch.func.hessian`` of a loss written in the test) and per-sample
gradients by plain autograd, so a wrong conversion (token ids cast to float, a dict's values
in the wrong order, rows of a Dataset read out of order) shows up as wrong scores.
"""

import copy

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from skorch.dataset import Dataset as SkorchDataset
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import Dataset, TensorDataset

from sk_fastif import InfluenceExplainer
from sk_fastif.solvers import Exact

DAMPING = 0.05


# ------------------------------------------------------------------------------ references
def explicit_scores(module, X_train, y_train, X_test, y_test, damping):
    """``(1/n) g_test (H + λI)⁻¹ g_train`` from an explicit float64 Hessian of the mean
    cross-entropy; a dict ``X`` goes to the module as keyword arguments, as skorch does."""
    module = copy.deepcopy(module).double()
    names = [n for n, p in module.named_parameters()]
    shapes = [p.shape for p in module.parameters()]
    sizes = [p.numel() for p in module.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def loss(t, X, y):
        params = {n: v.view(s) for n, v, s in zip(names, torch.split(t, sizes), shapes)}
        logits = (functional_call(module, params, (), X) if isinstance(X, dict)
                  else functional_call(module, params, (X,)))
        return torch.nn.functional.cross_entropy(logits, y)

    with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no forward AD
        H = torch.func.hessian(loss)(theta, X_train, y_train)
    n = len(y_train)

    def grads(X, y):
        rows = []
        for i in range(len(y)):
            Xi = {k: v[i:i + 1] for k, v in X.items()} if isinstance(X, dict) else X[i:i + 1]
            t = theta.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(loss(t, Xi, y[i:i + 1]), t)
            rows.append(g)
        return torch.stack(rows)

    with sdpa_kernel([SDPBackend.MATH]):
        G_test, G_train = grads(X_test, y_test), grads(X_train, y_train)
    S = torch.linalg.solve(H + damping * torch.eye(len(theta), dtype=torch.float64), G_test.T).T
    return (S @ G_train.T / n).numpy()


# ------------------------------------------------------------------------------ a text model
class TinyText(torch.nn.Module):
    """Embedding, one self-attention layer, masked mean pooling, a linear classifier."""

    def __init__(self, vocab=12, dim=4):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.attn = torch.nn.MultiheadAttention(dim, num_heads=1, batch_first=True)
        self.head = torch.nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        m = attention_mask.to(h.dtype).unsqueeze(-1)
        return self.head((h * m).sum(1) / m.sum(1))


def text_data(n, seed, length=6, vocab=12):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab, size=(n, length))
    lengths = rng.randint(3, length + 1, size=n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask  # 0 is padding
    y = ((ids == 3).sum(1) > (ids == 5).sum(1)).astype(np.int64)
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}, y


@pytest.fixture(scope="module")
def text_net():
    torch.manual_seed(0)
    X, y = text_data(40, 0)
    net = NeuralNetClassifier(TinyText, criterion=torch.nn.CrossEntropyLoss, max_epochs=30,
                              lr=0.3, batch_size=40, train_split=None, verbose=0)
    net.initialize()
    net.module_.double()
    net.partial_fit(X, y)  # fit would initialize the module again, in float32
    return net, X, y


def test_text_model_on_dict_inputs_matches_an_explicit_hessian(text_net):
    net, X, y = text_net
    X_test, y_test = text_data(3, 1)
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING), curvature="hessian").fit(X, y)
    got = expl.influences(X_test, y_test)

    tens = {k: torch.as_tensor(v) for k, v in X.items()}
    tens_test = {k: torch.as_tensor(v) for k, v in X_test.items()}
    want = explicit_scores(net.module_, tens, torch.as_tensor(y), tens_test,
                           torch.as_tensor(y_test), DAMPING)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
    # token ids were kept integer: the engine holds them as int64
    assert expl.engine_.X_train["input_ids"].dtype == torch.int64


def test_user_net_is_untouched_by_dict_inputs(text_net):
    net, X, y = text_net
    before = {k: v.clone() for k, v in net.module_.state_dict().items()}
    flags = [m.training for m in net.module_.modules()]
    InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y).explain(
        {k: v[:2] for k, v in X.items()}, k=3)
    after = net.module_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [m.training for m in net.module_.modules()]


def test_token_ids_out_of_range_name_the_largest_valid_id(text_net):
    net, X, y = text_net
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    bad = {k: v[:2].copy() for k, v in X.items()}
    bad["input_ids"][1, 0] = 40
    with pytest.raises(ValueError, match=r"token id 40.*'embed'.*12 rows.*largest valid id is 11"):
        expl.influences(bad, y[:2])


def test_dict_values_of_different_lengths_are_refused(text_net):
    net, X, y = text_net
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    bad = {"input_ids": X["input_ids"][:3], "attention_mask": X["attention_mask"][:2]}
    with pytest.raises(ValueError, match=r"disagree in length.*'input_ids' has 3.*"
                                         r"'attention_mask' has 2"):
        expl.influences(bad, y[:3])
    with pytest.raises(ValueError, match="keys"):
        expl.influences({"input_ids": X["input_ids"][:2]}, y[:2])


def test_ragged_sequences_are_refused_with_the_padding_hint(text_net):
    net, X, y = text_net
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    ragged = {"input_ids": [[1, 2, 3], [4, 5]], "attention_mask": [[1, 1, 1], [1, 1]]}
    with pytest.raises(ValueError, match=r"ragged.*padded to one length.*attention mask"):
        expl.influences(ragged, y[:2])


def test_a_module_returning_a_model_output_gets_the_wrapper_named():
    class Output(dict):
        pass

    class HFLike(TinyText):
        def forward(self, input_ids, attention_mask):
            return Output(logits=super().forward(input_ids, attention_mask))

    class Unwrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = HFLike()

        def forward(self, **kw):
            return self.model(**kw)["logits"]

    X, y = text_data(20, 0)
    net = NeuralNetClassifier(Unwrap, criterion=torch.nn.CrossEntropyLoss, max_epochs=2,
                              train_split=None, verbose=0).fit(X, y)
    InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)  # the wrapper works
    net.module_ = net.module_.model  # the unwrapped model returns its output object
    with pytest.raises(TypeError, match=r"returns Output, not a tensor.*\.logits"):
        InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)


def test_integer_features_of_a_linear_net_still_take_its_float_dtype():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 5, size=(60, 3))
    y = (X[:, 0] > 2).astype(np.int64)
    net = NeuralNetClassifier(torch.nn.Linear(3, 2), criterion=torch.nn.CrossEntropyLoss,
                              max_epochs=5, lr=0.1, train_split=None, verbose=0)
    net.fit(X.astype(np.float32), y)
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    ref = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X.astype(np.float32), y)
    assert expl.engine_.X_train.dtype == torch.float32
    np.testing.assert_allclose(expl.influences(X[:4], y[:4]), ref.influences(X[:4], y[:4]))


# ------------------------------------------------------------------------------ tabular kinds
class Tabular(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                                        torch.nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)


class LazyPairs(Dataset):
    """A Dataset that builds its items on request (no tensor of the whole data)."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.as_tensor(self.X[i]), int(self.y[i])


@pytest.fixture(scope="module")
def tabular():
    from sklearn.datasets import make_classification

    X, y = make_classification(90, 5, n_informative=4, n_redundant=0, n_classes=3,
                               random_state=0)
    X = X.astype(np.float32)
    torch.manual_seed(0)
    net = NeuralNetClassifier(Tabular, criterion=torch.nn.CrossEntropyLoss, max_epochs=20,
                              lr=0.2, train_split=None, verbose=0).fit(X, y)
    return net, X, y


def test_the_same_data_as_array_dict_dataframe_or_dataset_gives_the_same_scores(tabular):
    pd = pytest.importorskip("pandas")
    net, X, y = tabular
    Xq, yq = X[:4], y[:4]

    def scores(X_fit, y_fit, X_query, y_query, **kw):
        expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING), **kw).fit(X_fit, y_fit)
        return expl.influences(X_query, y_query), expl

    ref, _ = scores(X, y, Xq, yq)
    kinds = {
        "dict": ({"x": X}, y, {"x": Xq}, yq),
        "DataFrame": (pd.DataFrame(X), y, pd.DataFrame(Xq), yq),
        "TensorDataset": (TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), None,
                          TensorDataset(torch.as_tensor(Xq), torch.as_tensor(yq)), None),
        "lazy Dataset": (LazyPairs(X, y), None, LazyPairs(Xq, yq), None),
        "skorch Dataset": (SkorchDataset(X, y), None, SkorchDataset(Xq, yq), None),
    }
    for name, (Xf, yf, Xqk, yqk) in kinds.items():
        got, expl = scores(Xf, yf, Xqk, yqk)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7, err_msg=name)
    # a lazy Dataset is read by rows, never copied into one tensor
    _, expl = scores(LazyPairs(X, y), None, Xq, yq)
    assert type(expl.engine_.X_train).__name__ == "DatasetRows"
    # self-influence and explain read the Dataset the same way
    np.testing.assert_allclose(expl.self_influence(), scores(X, y, Xq, yq)[1].self_influence(),
                               rtol=1e-5)
    assert expl.explain(LazyPairs(Xq, yq), k=3).helpful_indices.shape == (4, 3)


def test_a_dataset_without_targets_needs_y(tabular):
    net, X, y = tabular
    with pytest.raises(ValueError, match="carry no target.*pass y"):
        InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(SkorchDataset(X), None)
    with pytest.raises(ValueError, match="carry no target.*pass y"):
        InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(
            TensorDataset(torch.as_tensor(X)), None)
    # with y it works, and equals the arrays
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(
        TensorDataset(torch.as_tensor(X)), y)
    ref = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    np.testing.assert_allclose(expl.influences(X[:2], y[:2]), ref.influences(X[:2], y[:2]),
                               rtol=1e-5, atol=1e-7)


def test_candidates_work_on_dict_and_dataset_inputs(tabular):
    from sk_fastif.neighbors import ExactCandidates

    net, X, y = tabular
    dense = InfluenceExplainer(net, solver=Exact(damping=DAMPING),
                               candidates=ExactCandidates(n_neighbors=20)).fit(X, y)
    for Xf, Xq in (({"x": X}, {"x": X[:3]}), (LazyPairs(X, y), X[:3])):
        expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING),
                                  candidates=ExactCandidates(n_neighbors=20)).fit(
            Xf, None if isinstance(Xf, Dataset) else y)
        a = expl.explain(Xq, y[:3], k=5)
        b = dense.explain(X[:3], y[:3], k=5)
        np.testing.assert_array_equal(a.helpful_indices, b.helpful_indices)


# ------------------------------------------------------------------------------ images
class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.head = torch.nn.Linear(3 * 6 * 6, 10)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def test_a_cnn_on_digit_images_matches_an_explicit_hessian():
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.images[:120] / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target[:120].astype(np.int64)
    torch.manual_seed(0)
    net = NeuralNetClassifier(TinyCNN, criterion=torch.nn.CrossEntropyLoss, max_epochs=10,
                              lr=0.2, train_split=None, verbose=0)
    net.initialize()
    net.module_.double()
    net.partial_fit(X, y)  # fit would initialize the module again, in float32
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING), curvature="hessian").fit(X, y)
    got = expl.influences(X[:3], y[:3])
    want = explicit_scores(net.module_, torch.as_tensor(X),
                           torch.as_tensor(y), torch.as_tensor(X[:3]), torch.as_tensor(y[:3]),
                           DAMPING)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
    with pytest.raises(ValueError, match=r"samples of shape \(1, 4, 4\)"):
        expl.influences(X[:2, :, :4, :4], y[:2])


def test_to_frame_shows_images_and_dict_rows_as_one_cell_per_sample(text_net):
    pytest.importorskip("pandas")
    net, X, y = text_net
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    ex = expl.explain({k: v[:2] for k, v in X.items()}, y[:2], k=3)
    frame = ex.to_frame(X=X)
    assert {"input_ids", "attention_mask"} <= set(frame.columns)
    for _, row in frame.iterrows():
        np.testing.assert_array_equal(row["input_ids"], X["input_ids"][row["train_index"]])
    images = np.arange(40 * 4, dtype=float).reshape(40, 1, 2, 2)
    frame = ex.to_frame(X=images)
    for _, row in frame.iterrows():
        assert row["train_x"].shape == (1, 2, 2)
        np.testing.assert_array_equal(row["train_x"], images[row["train_index"]])


def test_the_per_sample_loop_fallback_takes_dict_inputs(text_net):
    net, X, y = text_net
    Xq = {k: v[:3] for k, v in X.items()}
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    vmapped = expl.influences(Xq, y[:3])
    expl.engine_.bridge.use_vmap = False  # what a module vmap cannot run falls back to
    np.testing.assert_allclose(expl.influences(Xq, y[:3]), vmapped, rtol=1e-8, atol=1e-12)
    curvature = expl.engine_.products.product
    V = torch.eye(expl.n_params_, dtype=torch.float64)[:2]
    looped = curvature(V, expl.engine_.X_train, expl.engine_.y_train)
    expl.engine_.bridge.use_vmap = True
    np.testing.assert_allclose(looped, curvature(V, expl.engine_.X_train,
                                                 expl.engine_.y_train), rtol=1e-8, atol=1e-12)


def test_a_bad_integer_input_does_not_decide_how_later_integers_are_taken():
    rng = np.random.RandomState(0)
    X = rng.randn(40, 3).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    net = NeuralNetClassifier(torch.nn.Linear(3, 2), criterion=torch.nn.CrossEntropyLoss,
                              max_epochs=2, train_split=None, verbose=0).fit(X, y)
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING)).fit(X, y)
    with pytest.raises(ValueError, match="expecting 3 features"):
        expl.influences(np.ones((2, 5), dtype=np.int64), y[:2])
    ints = np.arange(6).reshape(2, 3)
    np.testing.assert_allclose(expl.influences(ints, y[:2]),
                               expl.influences(ints.astype(np.float32), y[:2]))


def test_an_unfitted_text_net_is_trained_on_its_dict_inputs_with_ids_kept_integer():
    X, y = text_data(40, 0)
    net = NeuralNetClassifier(TinyText, criterion=torch.nn.CrossEntropyLoss, max_epochs=3,
                              lr=0.3, train_split=None, verbose=0)
    expl = InfluenceExplainer(net, solver=Exact(damping=DAMPING), random_state=0).fit(X, y)
    assert expl.engine_.X_train["input_ids"].dtype == torch.int64
    assert not getattr(net, "initialized_", False)  # a clone was trained, not the net
    assert expl.influences({k: v[:2] for k, v in X.items()}, y[:2]).shape == (2, 40)
