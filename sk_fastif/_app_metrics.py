"""Metrics of the applications: finding mislabeled points, and testing explanations by a step.

:func:`mislabel_detection_curve` scores a ranking of training points (by self-influence, or
by loss as the baseline) by how fast it finds planted label flips. :func:`step_test` is a cheap
form of FastIF's simulatability check: one small gradient step on a test point's most helpful
training points should lower its loss, one on its most harmful points raise it. Both reach an
explainer only through its public methods and attributes.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.metrics import auc as area_under
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Interval, validate_params

from . import _batch as rows_of
from ._gradients import samples

__all__ = ["mislabel_detection_curve", "step_test"]


def mislabel_detection_curve(scores, is_flipped) -> tuple[np.ndarray, np.ndarray, float]:
    """Fraction of the flipped labels found against the fraction of the data inspected.

    The points are inspected in decreasing order of ``scores`` (highest first: for
    :meth:`~sk_fastif.InfluenceExplainer.self_influence`, or a training loss, the most
    suspicious first). Tied scores are inspected together: the curve goes straight across a
    tie, so no order among them is favoured.

    Parameters
    ----------
    scores : array-like of shape (n_samples,)
        Finite suspicion scores, higher = inspected earlier.
    is_flipped : array-like of shape (n_samples,), bool
        True for the points whose label was flipped (at least one), as
        :func:`sk_fastif.datasets.make_noisy_labels` returns it.

    Returns
    -------
    fraction_inspected : ndarray of shape (n_thresholds + 1,)
        Fraction of the points inspected, from 0 to 1, increasing.
    fraction_found : ndarray of shape (n_thresholds + 1,)
        Fraction of the flipped points among them, from 0 to 1.
    auc : float
        Area under the curve: about 0.5 for a random order; ``1 - p / 2`` (its largest value)
        when the fraction ``p`` of flipped points all come first.
        ``np.interp(0.2, fraction_inspected, fraction_found)`` is the fraction found in the
        top 20%.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.metrics import mislabel_detection_curve
    >>> inspected, found, auc = mislabel_detection_curve(
    ...     [0.9, 0.1, 0.8, 0.2], [True, False, True, False])
    >>> inspected.tolist(), found.tolist(), auc
    ([0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.5, 1.0, 1.0, 1.0], 0.75)
    """
    scores = np.asarray(scores, dtype=np.float64)
    flipped = np.asarray(is_flipped)
    if scores.ndim != 1 or flipped.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} and is_flipped {flipped.shape} must be 1-D "
                         "arrays of the same length.")
    if flipped.dtype != bool:
        if not np.all(np.isin(flipped, (0, 1))):
            raise ValueError("is_flipped must be a boolean mask (one entry per point), not "
                             "indices: use make_noisy_labels, or build the mask from them.")
        flipped = flipped.astype(bool)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite.")
    if not flipped.any():
        raise ValueError("is_flipped marks no point: there is nothing to find.")
    order = np.argsort(-scores, kind="stable")
    s, f = scores[order], flipped[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last point of each tie group
    found = np.cumsum(f)[ends]
    fraction_inspected = np.r_[0.0, (ends + 1) / len(s)]
    fraction_found = np.r_[0.0, found / found[-1]]
    return fraction_inspected, fraction_found, float(area_under(fraction_inspected,
                                                                fraction_found))


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
    engine = explainer.engine_
    bridge = engine.bridge
    n_test = len(yt)
    rng = check_random_state(random_state)
    sets = {
        "helpful": explanation.helpful_indices,
        "harmful": explanation.harmful_indices,
        "random": np.stack([rng.choice(engine.n_train, size=k, replace=False)
                            for _ in range(n_test)]),
    }
    before = bridge.losses(Xt, yt)
    out = Bunch(loss_before=before.cpu().numpy().astype(np.float64), k=int(k), lr=float(lr))
    for name, idx in sets.items():
        rows = torch.as_tensor(idx.ravel())
        G = engine.gradients(rows_of.take(engine.X_train, rows),
                             engine.y_train[rows.to(engine.y_train.device)], what="training point")
        steps = G.reshape(n_test, k, -1).mean(dim=1)
        after = torch.empty(n_test, dtype=before.dtype, device=before.device)
        with bridge.modes(), torch.no_grad():
            for i, (xi, yi) in enumerate(zip(samples(Xt), yt)):
                after[i] = bridge.sample_loss(bridge.theta - lr * steps[i],
                                              rows_of.to_device(xi, bridge.device), yi)
        out[name] = (after - before).cpu().numpy().astype(np.float64)
    out["helpful_lowers"] = float(np.mean(out["helpful"] < 0))
    out["harmful_raises"] = float(np.mean(out["harmful"] > 0))
    return out
