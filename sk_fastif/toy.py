"""Example torch modules and skorch nets for the demo, the examples, the tests and the benchmarks.

Like :mod:`skorch.toy`: small, named, seeded building blocks, not part of the influence
machinery. The data they are trained on lives in :mod:`sk_fastif.datasets`.

* :class:`TanhMLP`: a tanh multi-layer perceptron with named ``hidden`` and ``output`` layers;
* :func:`make_mlp_classifier` and :func:`train_mlp_classifier`: a skorch classifier around it;
* :func:`train_digits_net`: the demo's digits classifier and its split.

Until 0.2 these names are also importable from :mod:`sk_fastif.datasets`, where they lived
before, with a :class:`FutureWarning`.
"""

from __future__ import annotations

import numpy as np
import torch
from skorch import NeuralNetClassifier

from .datasets import load_digits_split

__all__ = [
    "TanhMLP",
    "make_mlp_classifier",
    "train_digits_net",
    "train_mlp_classifier",
]


class TanhMLP(torch.nn.Module):
    """A tanh multi-layer perceptron with named layers, returning logits.

    ``n_in -> n_hidden (-> n_hidden ...) -> n_out``, a tanh after every hidden layer. The layers
    are attributes ``hidden``, ``hidden2``, ``hidden3``, ... and ``output``, created in that
    order (so a given ``torch.manual_seed`` gives the same weights as a hand-written module with
    these layers), which lets an explainer select them by name (``params=["output"]``).

    Parameters
    ----------
    n_in : int, default=64
        Number of input features (64: the 8x8 digits).
    n_hidden : int, default=32
        Width of each hidden layer.
    n_out : int, default=10
        Number of outputs (classes).
    n_hidden_layers : int, default=1
        Number of hidden layers.

    See Also
    --------
    make_mlp_classifier : A skorch classifier around this module.

    Examples
    --------
    >>> import torch
    >>> from sk_fastif.toy import TanhMLP
    >>> module = TanhMLP(n_in=6, n_hidden=8, n_out=3)
    >>> module(torch.zeros(5, 6)).shape
    torch.Size([5, 3])
    >>> [name for name, _ in TanhMLP(n_hidden_layers=2).named_children()]
    ['hidden', 'hidden2', 'output']
    """

    def __init__(
        self, *, n_in: int = 64, n_hidden: int = 32, n_out: int = 10, n_hidden_layers: int = 1
    ) -> None:
        super().__init__()
        if n_hidden_layers < 1:
            raise ValueError(f"n_hidden_layers must be >= 1, got {n_hidden_layers}.")
        self.hidden = torch.nn.Linear(n_in, n_hidden)
        self._hidden_names = ["hidden"]
        for i in range(2, n_hidden_layers + 1):
            setattr(self, f"hidden{i}", torch.nn.Linear(n_hidden, n_hidden))
            self._hidden_names.append(f"hidden{i}")
        self.output = torch.nn.Linear(n_hidden, n_out)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(len(X), n_out)``."""
        for name in self._hidden_names:
            X = torch.tanh(getattr(self, name)(X))
        return self.output(X)


def make_mlp_classifier(
    n_in: int = 64,
    n_out: int = 10,
    *,
    n_hidden: int = 32,
    n_hidden_layers: int = 1,
    lr: float = 0.01,
    max_epochs: int = 40,
    batch_size: int = 64,
    **params,
) -> NeuralNetClassifier:
    """An unfitted skorch classifier around :class:`TanhMLP`, trained with Adam.

    The criterion is :class:`torch.nn.CrossEntropyLoss` (the module returns logits), the
    optimizer :class:`torch.optim.Adam`, with no validation split and no printing: the settings
    of the demo, for which the defaults are chosen.

    Parameters
    ----------
    n_in : int, default=64
        Number of input features.
    n_out : int, default=10
        Number of classes.
    n_hidden : int, default=32
        Width of each hidden layer.
    n_hidden_layers : int, default=1
        Number of hidden layers.
    lr : float, default=0.01
        Learning rate.
    max_epochs : int, default=40
        Number of training epochs.
    batch_size : int, default=64
        Minibatch size.
    **params
        Any other parameter of :class:`skorch.NeuralNetClassifier`; these take precedence over
        the settings above (e.g. ``optimizer=torch.optim.SGD``, ``criterion=...``).

    Returns
    -------
    net : skorch.NeuralNetClassifier
        The unfitted net.

    See Also
    --------
    train_mlp_classifier : Build and fit it in one call, from a seed.

    Examples
    --------
    >>> from sk_fastif.toy import make_mlp_classifier
    >>> net = make_mlp_classifier(6, 3, n_hidden=8).initialize()
    >>> sum(p.numel() for p in net.module_.parameters())
    83
    """
    settings = {
        "module__n_in": n_in,
        "module__n_hidden": n_hidden,
        "module__n_out": n_out,
        "module__n_hidden_layers": n_hidden_layers,
        "criterion": torch.nn.CrossEntropyLoss,
        "optimizer": torch.optim.Adam,
        "lr": lr,
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "train_split": None,
        "verbose": 0,
    }
    return NeuralNetClassifier(TanhMLP, **{**settings, **params})


def train_mlp_classifier(
    X, y, *, n_out: int | None = None, random_state: int = 0, **params
) -> NeuralNetClassifier:
    """Fit :func:`make_mlp_classifier` on ``X, y`` after seeding torch.

    Calls ``torch.manual_seed(random_state)`` (which sets torch's global generator: the initial
    weights and the minibatch order follow from it), then fits. The same seed and data give the
    same weights.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features), dtype float32
        Training features; ``n_features`` sets the module's ``n_in``.
    y : ndarray of shape (n_samples,), dtype int64
        Class indices.
    n_out : int or None, default=None
        Number of outputs; None: ``y.max() + 1``. Pass more to leave some outputs untrained.
    random_state : int, default=0
        Seed given to :func:`torch.manual_seed`.
    **params
        Arguments of :func:`make_mlp_classifier` (``n_hidden``, ``lr``, ``max_epochs``, ...)
        or of :class:`skorch.NeuralNetClassifier`.

    Returns
    -------
    net : skorch.NeuralNetClassifier
        The fitted net.

    See Also
    --------
    make_mlp_classifier : The unfitted net.

    Examples
    --------
    >>> from sk_fastif.datasets import make_classification_split
    >>> from sk_fastif.toy import train_mlp_classifier
    >>> X_train, X_test, y_train, y_test = make_classification_split(80, 20, n_features=4)
    >>> net = train_mlp_classifier(X_train, y_train, n_hidden=8, max_epochs=5)
    >>> net.predict(X_test).shape
    (20,)
    """
    n_out = int(np.max(y)) + 1 if n_out is None else n_out
    torch.manual_seed(random_state)
    net = make_mlp_classifier(np.shape(X)[1], n_out, **params)
    return net.fit(X, y)


def train_digits_net(
    random_state: int = 0,
    *,
    split: str = "stratified",
    n_train: int | None = None,
    n_test: int | None = None,
    **params,
) -> tuple[NeuralNetClassifier, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split the digits and train a 64-32-10 tanh MLP on the training part (the demo's net).

    :func:`~sk_fastif.datasets.load_digits_split` (80/20, stratified, by default) then
    :func:`train_mlp_classifier` with Adam, ``lr=0.01``, 40 epochs of minibatches of 64, both
    seeded by ``random_state``.

    Parameters
    ----------
    random_state : int, default=0
        Seed of the split and of :func:`torch.manual_seed` before training.
    split : {"stratified", "random", "permutation"}, default="stratified"
        How :func:`~sk_fastif.datasets.load_digits_split` divides the rows.
    n_train, n_test : int or None, default=None
        Sizes of the two parts, as in :func:`~sk_fastif.datasets.load_digits_split`.
    **params
        Arguments of :func:`make_mlp_classifier` (``n_hidden``, ``max_epochs``, ...).

    Returns
    -------
    net : skorch.NeuralNetClassifier
        The fitted net.
    X_train, X_test, y_train, y_test : ndarray
        The split, as :func:`~sk_fastif.datasets.load_digits_split` returns it.

    Examples
    --------
    >>> from sk_fastif.toy import train_digits_net
    >>> net, X_train, X_test, y_train, y_test = train_digits_net(
    ...     split="permutation", n_train=200, n_test=50, max_epochs=1)
    >>> net.predict(X_test).shape
    (50,)
    """
    X_train, X_test, y_train, y_test = load_digits_split(
        split=split, n_train=n_train, n_test=n_test, random_state=random_state)
    net = train_mlp_classifier(X_train, y_train, n_out=10, random_state=random_state, **params)
    return net, X_train, X_test, y_train, y_test
