"""sk_fastif.datasets (the splits, the planted label noise) and sk_fastif.toy (the example
module and nets), with the deprecated names that stay importable from datasets until 0.2.

The old constructions that the demo, the examples and the test fixtures used before they moved
here are written out below, and the new builders must reproduce them bit for bit.
"""

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, make_classification
from sklearn.model_selection import train_test_split
from skorch import NeuralNetClassifier

import sk_fastif.datasets as datasets
import sk_fastif.toy as toy
from sk_fastif.datasets import (
    flip_labels,
    load_digits_split,
    make_classification_split,
)
from sk_fastif.toy import (
    TanhMLP,
    make_mlp_classifier,
    train_digits_net,
    train_mlp_classifier,
)


def _old_digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y.astype(np.int64)


def _old_demo_split(random_state):
    """sk_fastif.demo.train_digits_net's split, as it was."""
    X, y = _old_digits()
    return train_test_split(X, y, test_size=0.2, random_state=random_state, stratify=y)


def _old_make_digits(n_train, n_test, seed):
    """tests/conftest.py::make_digits, as it was (returns Xtr, ytr, Xte, yte)."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(X))
    X = (X / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    tr, te = idx[:n_train], idx[n_train : n_train + n_test]
    return X[tr], y[tr], X[te], y[te]


class _OldMLP(torch.nn.Module):
    """The two-layer MLP the demo (DigitsMLP) and the conftest (MLP) each defined."""

    def __init__(self, n_in=64, n_hidden=16, n_out=10):
        super().__init__()
        self.hidden = torch.nn.Linear(n_in, n_hidden)
        self.output = torch.nn.Linear(n_hidden, n_out)

    def forward(self, X):
        return self.output(torch.tanh(self.hidden(X)))


def _assert_arrays_identical(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g, e)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


# ------------------------------------------------------------------------------- digits splits
def test_digits_split_shapes_dtypes_and_values():
    X_train, X_test, y_train, y_test = load_digits_split()
    assert X_train.shape == (1437, 64) and X_test.shape == (360, 64)
    assert y_train.shape == (1437,) and y_test.shape == (360,)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    X = np.vstack([X_train, X_test])
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(np.concatenate([y_train, y_test]))) == set(range(10))
    # stratified: every digit in the same proportion in both parts (to one image)
    counts_train, counts_test = np.bincount(y_train), np.bincount(y_test)
    np.testing.assert_allclose(counts_test, 0.2 * (counts_train + counts_test), atol=1)


@pytest.mark.parametrize("random_state", [0, 1, 7])
def test_stratified_split_is_the_demos_old_split(random_state):
    _assert_arrays_identical(load_digits_split(random_state=random_state),
                             _old_demo_split(random_state))


def test_random_split_is_the_examples_old_split():
    X, y = _old_digits()
    _assert_arrays_identical(load_digits_split(split="random", random_state=0),
                             train_test_split(X, y, test_size=0.2, random_state=0))


@pytest.mark.parametrize("n_train, n_test, seed",
                         [(400, 40, 0), (300, 0, 1), (200, 0, 2), (150, 10, 3), (300, 12, 1),
                          (400, 10, 0)])
def test_permutation_split_is_the_conftests_old_make_digits(n_train, n_test, seed):
    X_train, X_test, y_train, y_test = load_digits_split(
        split="permutation", n_train=n_train, n_test=n_test, random_state=seed)
    _assert_arrays_identical((X_train, y_train, X_test, y_test),
                             _old_make_digits(n_train, n_test, seed))


def test_permutation_split_appends_test_rows_after_the_training_rows():
    short = load_digits_split(split="permutation", n_train=300, n_test=0, random_state=1)
    long = load_digits_split(split="permutation", n_train=300, n_test=12, random_state=1)
    np.testing.assert_array_equal(short[0], long[0])
    assert short[1].shape == (0, 64) and long[1].shape == (12, 64)
    X, _ = _old_digits()
    rows = {row.tobytes() for row in long[0]}
    assert not any(row.tobytes() in rows for row in long[1])  # disjoint parts
    assert all(row.tobytes() in {r.tobytes() for r in X} for row in long[1])


@pytest.mark.parametrize("split", ["stratified", "random", "permutation"])
def test_digits_split_is_deterministic_and_sized(split):
    a = load_digits_split(split=split, random_state=3)
    b = load_digits_split(split=split, random_state=3)
    c = load_digits_split(split=split, random_state=4)
    _assert_arrays_identical(a, b)
    assert not np.array_equal(a[2], c[2])
    assert [len(part) for part in a] == [1437, 360, 1437, 360]  # ceil(0.2 * 1797) test rows
    only_train = load_digits_split(split=split, n_train=1000)
    assert (len(only_train[0]), len(only_train[1])) == (1000, 797)
    only_test = load_digits_split(split=split, n_test=100)
    assert (len(only_test[0]), len(only_test[1])) == (1697, 100)
    both = load_digits_split(split=split, n_train=500, n_test=100)
    assert (len(both[0]), len(both[1]), len(both[2]), len(both[3])) == (500, 100, 500, 100)


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "kfold"}, "split must be one of"),
    ({"n_train": 1500, "n_test": 400}, "exceeds the 1797 digits"),
    ({"n_train": -1}, r"n_train must be None or an integer in \[0, 1797\]"),
    ({"n_test": 2.5}, "n_test must be None or an integer"),
    ({"split": "permutation", "test_size": 1.5}, r"test_size must be a float in \(0, 1\)"),
])
def test_digits_split_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits_split(**kwargs)


# ------------------------------------------------------------------------ synthetic problems
def test_classification_split_is_make_classification_cut_in_two():
    params = dict(n_features=6, n_informative=4, n_redundant=0, n_classes=3)
    X_train, X_test, y_train, y_test = make_classification_split(120, 30, random_state=0,
                                                                 **params)
    X, y = make_classification(n_samples=150, random_state=0, **params)
    X, y = X.astype(np.float32), y.astype(np.int64)
    _assert_arrays_identical((X_train, X_test, y_train, y_test),
                             (X[:120], X[120:], y[:120], y[120:]))
    again = make_classification_split(120, 30, random_state=0, **params)
    _assert_arrays_identical(again, (X_train, X_test, y_train, y_test))
    other = make_classification_split(120, 30, random_state=1, **params)
    assert not np.array_equal(other[0], X_train)


def test_classification_split_standardizes_over_all_rows():
    X_train, X_test, _, _ = make_classification_split(300, 100, n_features=5, standardize=True)
    X = np.vstack([X_train, X_test]).astype(np.float64)
    np.testing.assert_allclose(X.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(X.std(0), 1.0, rtol=1e-5)
    raw, _ = make_classification(n_samples=400, n_features=5, random_state=0)
    expected = ((raw - raw.mean(0)) / raw.std(0)).astype(np.float32)
    np.testing.assert_array_equal(X_train, expected[:300])


def test_classification_split_bad_sizes():
    with pytest.raises(ValueError, match="n_test must be a non-negative integer"):
        make_classification_split(10, -1)


# --------------------------------------------------------------------------- planted noise
@pytest.mark.parametrize("fraction, n_flipped", [(0.0, 0), (0.1, 12), (0.25, 30), (1.0, 120)])
def test_flip_labels_flips_exactly_the_returned_indices(fraction, n_flipped):
    _, _, y, _ = make_classification_split(120, 0, n_classes=3, n_informative=4)
    y_noisy, flipped = flip_labels(y, fraction, random_state=0)
    assert flipped.dtype == np.int64 and len(flipped) == n_flipped
    assert np.all(np.diff(flipped) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(np.flatnonzero(y_noisy != y), flipped)
    assert y_noisy.dtype == y.dtype and set(np.unique(y_noisy)) <= {0, 1, 2}
    assert not np.shares_memory(y_noisy, y)


def test_flip_labels_is_deterministic_and_draws_every_other_class():
    y = np.repeat(np.arange(4), 250)
    a, fa = flip_labels(y, 0.5, random_state=5)
    b, fb = flip_labels(y, 0.5, random_state=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)
    _, fc = flip_labels(y, 0.5, random_state=6)
    assert not np.array_equal(fa, fc)
    # each flipped 0 became a 1, 2 or 3, each about a third of the time
    new = a[fa[y[fa] == 0]]
    counts = np.bincount(new, minlength=4)
    assert counts[0] == 0 and np.all(counts[1:] > len(new) / 6)


def test_flip_labels_keeps_arbitrary_labels():
    y = np.array(["cat", "dog", "cat", "dog", "cat", "dog"])
    y_noisy, flipped = flip_labels(y, 0.5, random_state=0)
    assert len(flipped) == 3
    assert all({y[i], y_noisy[i]} == {"cat", "dog"} for i in flipped)


@pytest.mark.parametrize("y, fraction, match", [
    (np.zeros(5, dtype=int), 0.2, "at least two classes"),
    (np.arange(6), 1.5, r"fraction must be a number in \[0, 1\]"),
    (np.arange(6), -0.1, "fraction must be"),
    (np.arange(6).reshape(2, 3), 0.1, "y must be 1-D"),
])
def test_flip_labels_bad_arguments(y, fraction, match):
    with pytest.raises(ValueError, match=match):
        flip_labels(y, fraction)


# ---------------------------------------------------------------------------------- module
def test_tanh_mlp_forward_shapes_and_named_layers():
    module = TanhMLP(n_in=6, n_hidden=8, n_out=4)
    assert [name for name, _ in module.named_children()] == ["hidden", "output"]
    assert module.hidden.in_features == 6 and module.hidden.out_features == 8
    assert module.output.in_features == 8 and module.output.out_features == 4
    out = module(torch.randn(5, 6))
    assert out.shape == (5, 4) and out.dtype == torch.float32
    assert TanhMLP()(torch.zeros(3, 64)).shape == (3, 10)  # the digits defaults: 64-32-10
    with torch.no_grad():
        X = torch.randn(7, 6)
        np.testing.assert_array_equal(
            module(X), module.output(torch.tanh(module.hidden(X))))


def test_deeper_tanh_mlp_composes_its_hidden_layers_in_order():
    module = TanhMLP(n_in=5, n_hidden=7, n_out=2, n_hidden_layers=3)
    names = [name for name, _ in module.named_children()]
    assert names == ["hidden", "hidden2", "hidden3", "output"]
    assert sum(p.numel() for p in module.parameters()) == 5 * 7 + 7 + 2 * (7 * 7 + 7) + 7 * 2 + 2
    with torch.no_grad():
        X = torch.randn(4, 5)
        h = torch.tanh(module.hidden3(torch.tanh(module.hidden2(torch.tanh(module.hidden(X))))))
        np.testing.assert_array_equal(module(X), module.output(h))


def test_tanh_mlp_initialises_like_the_old_hand_written_modules():
    torch.manual_seed(0)
    old = _OldMLP(64, 32, 10)
    torch.manual_seed(0)
    _assert_same_weights(TanhMLP(n_in=64, n_hidden=32, n_out=10), old)


def test_tanh_mlp_arguments_are_keyword_only_and_checked():
    with pytest.raises(TypeError):
        TanhMLP(16)  # the old DigitsMLP(16) meant n_hidden=16: no silent n_in=16
    with pytest.raises(ValueError, match="n_hidden_layers must be >= 1"):
        TanhMLP(n_hidden_layers=0)


def test_demo_re_exports_the_moved_names():
    import sk_fastif.demo as demo

    assert demo.train_digits_net is train_digits_net
    assert demo.DigitsMLP is TanhMLP


# -------------------------------------------------------------------------------------- nets
def test_make_mlp_classifier_settings_and_overrides():
    net = make_mlp_classifier(6, 4, n_hidden=8)
    assert net.module is TanhMLP and net.criterion is torch.nn.CrossEntropyLoss
    assert net.optimizer is torch.optim.Adam and net.train_split is None and net.verbose == 0
    assert (net.lr, net.max_epochs, net.batch_size) == (0.01, 40, 64)
    net.initialize()
    assert net.module_.hidden.in_features == 6 and net.module_.output.out_features == 4
    sgd = make_mlp_classifier(6, 4, optimizer=torch.optim.SGD, train_split=False, verbose=1)
    assert sgd.optimizer is torch.optim.SGD and sgd.train_split is False and sgd.verbose == 1


def test_train_mlp_classifier_is_the_conftests_old_construction():
    Xtr, ytr, _, _ = _old_make_digits(400, 40, 0)
    torch.manual_seed(0)
    old = NeuralNetClassifier(_OldMLP, criterion=torch.nn.CrossEntropyLoss,
                              optimizer=torch.optim.Adam, lr=0.01, max_epochs=3, batch_size=64,
                              train_split=None, verbose=0).fit(Xtr, ytr)
    torch.manual_seed(123)  # train_mlp_classifier seeds torch itself
    new = train_mlp_classifier(Xtr, ytr, n_hidden=16, max_epochs=3, random_state=0)
    assert new.module_.output.out_features == 10  # inferred from y
    _assert_same_weights(new.module_, old.module_)
    again = train_mlp_classifier(Xtr, ytr, n_hidden=16, max_epochs=3, random_state=0)
    _assert_same_weights(again.module_, new.module_)
    other = train_mlp_classifier(Xtr, ytr, n_hidden=16, max_epochs=3, random_state=1)
    assert not torch.equal(other.module_.hidden.weight, new.module_.hidden.weight)


def test_train_mlp_classifier_can_leave_outputs_untrained():
    # three classes, four outputs: no training label is 3, so output 3 is never a target
    X_train, _, y_train, _ = make_classification_split(60, 0, n_features=6, n_informative=4,
                                                       n_redundant=0, n_classes=3)
    assert set(np.unique(y_train)) == {0, 1, 2}
    net = train_mlp_classifier(X_train, y_train, n_out=4, n_hidden=8, max_epochs=30,
                               random_state=0)
    assert net.module_.output.out_features == 4  # as asked, not y.max() + 1 == 3
    assert train_mlp_classifier(X_train, y_train, n_hidden=8,
                                max_epochs=1).module_.output.out_features == 3
    # the same seed's untrained net: what train_mlp_classifier started from
    torch.manual_seed(0)
    init = make_mlp_classifier(6, 4, n_hidden=8).initialize().module_
    assert not torch.equal(net.module_.hidden.weight, init.hidden.weight)  # it was trained
    proba = net.predict_proba(X_train)
    assert proba.shape == (60, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        proba_init = torch.softmax(init(torch.as_tensor(X_train)), dim=1).numpy()
    # the output with no label is only ever pushed down (0.27 -> 0.07 on average here), while
    # the three labelled outputs learn the labels
    assert proba[:, 3].mean() < 0.5 * proba_init[:, 3].mean(), (proba[:, 3].mean(),
                                                               proba_init[:, 3].mean())
    accuracy = np.mean(proba.argmax(axis=1) == y_train)
    assert accuracy > np.mean(proba_init.argmax(axis=1) == y_train) + 0.2, accuracy


def test_train_digits_net_is_the_demos_old_construction():
    X_train, X_test, y_train, y_test = _old_demo_split(0)
    torch.manual_seed(0)
    old = NeuralNetClassifier(_OldMLP, module__n_hidden=32, criterion=torch.nn.CrossEntropyLoss,
                              optimizer=torch.optim.Adam, lr=0.01, max_epochs=2, batch_size=64,
                              train_split=None, verbose=0).fit(X_train, y_train)
    net, *split = train_digits_net(0, max_epochs=2)
    _assert_arrays_identical(split, (X_train, X_test, y_train, y_test))
    assert net.module_.hidden.out_features == 32
    _assert_same_weights(net.module_, old.module_)


# ---------------------------------------------------------------------------------- imports
def _import_roots(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add("." * node.level + (node.module or "").split(".")[0])
    return roots


def _public_names_defined_in(module) -> set[str]:
    return {name for name in dir(module) if not name.startswith("_")
            and getattr(getattr(module, name), "__module__", None) == module.__name__}


def test_datasets_is_data_only_and_imports_only_numpy_and_sklearn():
    # no torch, no skorch, no module of the package: the nets live in sk_fastif.toy
    assert _import_roots(datasets) <= {"__future__", "importlib", "warnings", "numbers",
                                       "numpy", "sklearn"}, _import_roots(datasets)
    assert set(datasets.__all__) == _public_names_defined_in(datasets)
    assert not any(isinstance(getattr(datasets, name), type) for name in datasets.__all__)


def test_toy_imports_datasets_and_nothing_else_of_the_package():
    assert _import_roots(toy) <= {"__future__", "numpy", "torch", "skorch", ".datasets"}
    assert set(toy.__all__) == _public_names_defined_in(toy)
    assert set(toy.__all__) == {"TanhMLP", "make_mlp_classifier", "train_mlp_classifier",
                                "train_digits_net"}


def test_importing_datasets_does_not_import_toy():
    code = ("import sys, sk_fastif.datasets; "
            "assert 'sk_fastif.toy' not in sys.modules, 'datasets imported toy'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------- deprecated, until 0.2
@pytest.mark.parametrize("name", ["TanhMLP", "make_mlp_classifier", "train_mlp_classifier",
                                  "train_digits_net"])
def test_moved_names_still_import_from_datasets_with_a_future_warning(name):
    with pytest.warns(FutureWarning, match=rf"sk_fastif\.toy\.{name}\b"):
        old = getattr(datasets, name)
    assert old is getattr(toy, name)
    with pytest.warns(FutureWarning, match=rf"sk_fastif\.datasets\.{name} has moved"):
        exec(f"from sk_fastif.datasets import {name}", {})
    assert name not in datasets.__all__  # a star import does not warn


def test_unknown_datasets_attributes_still_raise_attribute_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="has no attribute 'DigitsMLP'"):
            datasets.DigitsMLP  # noqa: B018
        assert not hasattr(datasets, "nothing_here")


def test_deprecated_tanh_mlp_is_the_same_class():
    with pytest.warns(FutureWarning):
        OldTanhMLP = datasets.TanhMLP
    torch.manual_seed(0)
    a = OldTanhMLP(n_in=6, n_hidden=8, n_out=3)
    torch.manual_seed(0)
    _assert_same_weights(a, TanhMLP(n_in=6, n_hidden=8, n_out=3))
    assert isinstance(a, TanhMLP)


@pytest.mark.parametrize("rate", [0.0, 0.2, 1.0])
def test_make_noisy_labels_warns_and_is_flip_labels_as_a_mask(rate):
    y = np.arange(50) % 5
    with pytest.warns(FutureWarning, match="make_noisy_labels is deprecated.*use flip_labels"):
        y_noisy, mask = datasets.make_noisy_labels(y, rate, random_state=4)
    y_flip, flipped = flip_labels(y, rate, random_state=4)
    np.testing.assert_array_equal(y_noisy, y_flip)
    assert y_noisy.dtype == y_flip.dtype
    np.testing.assert_array_equal(np.flatnonzero(mask), flipped)
    # the replacement its deprecation note gives
    np.testing.assert_array_equal(mask, np.isin(np.arange(len(y)), flipped))
    assert mask.dtype == bool and mask.sum() == round(rate * 50)
    assert np.all((y_noisy != y) == mask)
    with pytest.warns(FutureWarning):  # the old signature: random_state positional
        again = datasets.make_noisy_labels(y, rate, 4)
    np.testing.assert_array_equal(again[1], mask)


def test_make_noisy_labels_docstring_says_what_to_use():
    doc = datasets.make_noisy_labels.__doc__
    assert ".. deprecated::" in doc and "flip_labels" in doc and "np.isin" in doc
