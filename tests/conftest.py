"""Shared data and fitted nets for the test suite (small, so the suite stays fast)."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_regression
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor

from sk_fastif.datasets import load_digits_split
from sk_fastif.toy import TanhMLP, train_mlp_classifier

torch.set_num_threads(2)


class MLP(TanhMLP):
    """The suite's digits MLP: :class:`~sk_fastif.toy.TanhMLP`, 16 hidden units by default."""

    def __init__(self, n_in=64, n_hidden=16, n_out=10):
        super().__init__(n_in=n_in, n_hidden=n_hidden, n_out=n_out)


def make_digits(n_train=400, n_test=40, seed=0):
    """Rows ``[:n_train]`` and the next ``n_test`` of a seeded permutation of the digits."""
    Xtr, Xte, ytr, yte = load_digits_split(split="permutation", n_train=n_train, n_test=n_test,
                                           random_state=seed)
    return Xtr, ytr, Xte, yte


@pytest.fixture(scope="session")
def digits():
    return make_digits()


@pytest.fixture(scope="session")
def digits_mlp(digits):
    """A digits MLP trained with Adam (fitted once per session; tests must not modify it)."""
    Xtr, ytr, _, _ = digits
    return train_mlp_classifier(Xtr, ytr, n_hidden=16, max_epochs=30, random_state=0)


def fit_full_batch(net, X, y, weight_decay, max_iter=500):
    """Fit a convex skorch net's module to the optimum of mean loss + wd/2 |theta|^2 by L-BFGS."""
    module = net.module_
    params = [p for p in module.parameters()]
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-14,
        history_size=50, line_search_fn="strong_wolfe",
    )
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)

    def closure():
        opt.zero_grad()
        loss = net.get_loss(net.infer(Xt), yt, X=Xt, training=False)
        loss = loss + 0.5 * weight_decay * sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    opt.step(closure)
    for p in params:
        p.grad = None
    return net


@pytest.fixture(scope="session")
def logreg():
    """Multinomial logistic regression in float64 at the exact optimum of its L2-penalised loss."""
    X, y, _, _ = make_digits(n_train=300, n_test=0, seed=1)
    X = X[:, ::4].astype(np.float64)  # 16 features: 170 parameters, a well-posed convex problem
    wd = 1e-2
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        torch.nn.Linear, module__in_features=16, module__out_features=10,
        criterion=torch.nn.CrossEntropyLoss, max_epochs=1, train_split=None, verbose=0,
    )
    net.initialize()
    net.module_.double()
    fit_full_batch(net, X, y, wd)
    return net, X, y, wd


@pytest.fixture(scope="session")
def ridge_net():
    """A linear NeuralNetRegressor (MSE) at some fitted point, in float64."""
    X, y = make_regression(n_samples=80, n_features=5, noise=5.0, random_state=0)
    X = X.astype(np.float64)
    y = (y / y.std()).astype(np.float64).reshape(-1, 1)
    torch.manual_seed(0)
    net = NeuralNetRegressor(
        torch.nn.Linear, module__in_features=5, module__out_features=1,
        max_epochs=1, train_split=None, verbose=0,
    )
    net.initialize()
    net.module_.double()
    fit_full_batch(net, X, y, 0.0)
    return net, X, y


@pytest.fixture(scope="session")
def binary_net():
    """A logistic-regression NeuralNetBinaryClassifier (BCE with logits) in float64."""
    X, y, _, _ = make_digits(n_train=200, n_test=0, seed=2)
    X = X[:, ::4].astype(np.float64)
    yb = (y >= 5).astype(np.float64)

    class Logit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 1)

        def forward(self, X):
            return self.lin(X).squeeze(-1)

    torch.manual_seed(0)
    net = NeuralNetBinaryClassifier(Logit, max_epochs=1, train_split=None, verbose=0)
    net.initialize()
    net.module_.double()
    fit_full_batch(net, X, yb, 1e-2)
    return net, X, yb


def make_linear_problem(seed=0, n=60, d=4, classes=3):
    """A separable-ish 3-class problem in float64: ``(X, y)``."""
    rng = np.random.RandomState(seed)
    X = rng.randn(n, d)
    W = rng.randn(d, classes)
    y = np.argmax(X @ W + 0.5 * rng.randn(n, classes), axis=1).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def linear():
    """A float64 softmax regression trained by plain SGD (so a correction step is SGD too)."""
    X, y = make_linear_problem()
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        torch.nn.Linear, module__in_features=4, module__out_features=3,
        criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.SGD, lr=0.5, max_epochs=30,
        batch_size=60, train_split=None, verbose=0)
    net.initialize()
    net.module_.double()
    net.partial_fit(X, y)
    return net, X, y
