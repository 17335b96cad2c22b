"""The step test: explanations checked by one small gradient step on the points they name.

:func:`step_test` is a cheap form of FastIF's simulatability check: one small gradient step on a
test point's most helpful training points should lower its loss, one on its most harmful points
raise it. It reaches an explainer only through its public methods and attributes
(:meth:`~sk_fastif.InfluenceExplainer.explain`, ``as_engine_input``, ``parallel_engine``) and
the engine's losses.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import Bunch, check_random_state

from .. import _inputs as rows_of
from .._sklearn_compat import Interval, validate_params

__all__ = ["step_test"]


@validate_params(
    {
        "explainer": "no_validation",
        "X": "no_validation",
        "y": "no_validation",
        "k": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def step_test(explainer, X, y=None, *, k: int = 10, lr: float = 0.01, random_state=None):
    """Test explanations by one small gradient step on the points they name.

    For each test point ``z``, three copies of the explained parameters ``θ`` take one plain
    gradient step, ``θ' = θ - lr · mean_j ∇θ L(z_j)``, on the mean loss of the ``k`` most
    helpful, the ``k`` most harmful and ``k`` random training points of ``z`` (the
    explainer's :meth:`~sk_fastif.InfluenceExplainer.explain`; random points drawn
    uniformly). The change of the loss on ``z``, ``L(z; θ') - L(z; θ)``, is reported for each.
    Good explanations give a negative change for the helpful points (a step on them lowers the
    loss), a positive one for the harmful points, and the random points fall in between: a
    cheap form of FastIF's simulatability check. Only the explainer's parameters (its
    ``params``) move; the net is not modified.

    Parameters
    ----------
    explainer : InfluenceExplainer
        A fitted explainer.
    X : array-like of shape (n_test, n_features)
        Test points, raw like the training data.
    y : array-like of shape (n_test,) or None, default=None
        Their targets; None explains the predicted labels.
    k : int, default=10
        Number of points per set.
    lr : float, default=0.01
        Step size. To first order the change is ``-lr · g(z) · mean_j g(z_j)``: keep it small.
    random_state : int, RandomState instance or None, default=None
        Seed of the random points.

    Returns
    -------
    result : Bunch
        ``helpful``, ``harmful``, ``random``: ndarrays of shape (n_test,), the loss change of
        each test point after the step on each set; ``loss_before`` of shape (n_test,);
        ``helpful_lowers`` and ``harmful_raises``: the fractions of test points where the
        helpful step lowered and the harmful step raised the loss; ``k`` and ``lr``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.metrics import step_test
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(80, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
    >>> expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    >>> res = step_test(expl, X[:10], y[:10], k=5, random_state=0)
    >>> bool(res.helpful.mean() < 0 < res.harmful.mean())
    True
    """
    explanation = explainer.explain(X, y, k=k)
    Xt, yt = explainer.as_engine_input(X, y)
    engine = explainer.parallel_engine()
    n_test = len(yt)
    rng = check_random_state(random_state)
    sets = {
        "helpful": explanation.helpful_indices,
        "harmful": explanation.harmful_indices,
        "random": np.stack([rng.choice(engine.n_train, size=k, replace=False)
                            for _ in range(n_test)]),
    }
    before = engine.losses(Xt, yt)
    out = Bunch(loss_before=before.cpu().numpy().astype(np.float64), k=int(k), lr=float(lr))
    for name, idx in sets.items():
        rows = torch.as_tensor(idx.ravel())
        G = engine.gradients(rows_of.take(engine.X_train, rows),
                             engine.y_train[rows.to(engine.y_train.device)], what="training point")
        steps = lr * G.reshape(n_test, k, -1).mean(dim=1)
        after = engine.losses_after_step(Xt, yt, steps)
        out[name] = (after - before).cpu().numpy().astype(np.float64)
    out["helpful_lowers"] = float(np.mean(out["helpful"] < 0))
    out["harmful_raises"] = float(np.mean(out["harmful"] > 0))
    return out
