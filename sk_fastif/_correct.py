"""Error correction: fine-tune a copy of a net on the points most helpful for its errors.

:func:`correct_net` is FastIF's error correction over an explainer's public surface and the
engine's one scoring pipeline (:meth:`InfluenceExplainer.correct
<sk_fastif.InfluenceExplainer.correct>` is a thin method over it), shaped like scikit-learn's
``permutation_importance``: the arguments validated first, seeded streams (separate for the
anchors, the random picks, the replay and the refreshes, so that strategies compare paired) and
plain records (one dict per step) in the result.
"""

from __future__ import annotations

import copy
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _inputs as rows_of
from . import _net
from . import _ranking as ranking
from . import _validation as val
from ._sklearn_compat import Interval, StrOptions, validate_params

__all__ = ["correct_net"]


def _validation_metrics(net, task, Xv, yv, batch_size: int) -> tuple[float | None, float | None]:
    """The net's mean loss (its own ``get_loss``, eval mode) and accuracy on validation data."""
    if Xv is None:
        return None, None
    total = 0.0
    with _net.net_modes(net), torch.no_grad():
        n = rows_of.n_rows(Xv)
        for s in range(0, n, batch_size):
            Xb, yb = rows_of.take(Xv, slice(s, s + batch_size)), yv[s:s + batch_size]
            total += float(net.get_loss(net.infer(Xb), yb, X=Xb, training=False)) * len(yb)
    loss = total / n
    if task.kind == "regressor":
        return loss, None
    predicted = task.predicted_labels(_net.predict_proba_tensor(net, Xv, batch_size))
    return loss, float((predicted == yv).float().mean())


def _fresh_optimizer(net, param_names: list[str], lr: float) -> None:
    """A new instance of the net's own optimizer (its class and arguments) at learning rate lr,
    over the parameters ``param_names`` only (the ones the influence is computed for).

    The state left by training (Adam's moment estimates, momentum buffers) is not carried over:
    measured on the shortcut digits, Adam's stale second moments (tiny at convergence) turn the
    first correction steps into large jumps that lower the accuracy even on the error examples.
    The other parameters are not stepped: the influence says nothing about them.
    """
    chosen = set(param_names)
    named = [(n, p) for n, p in net.module_.named_parameters() if n in chosen]
    args, kwargs = net.get_params_for_optimizer("optimizer", named)
    net.optimizer_ = net.optimizer(*args, **kwargs)
    for group in net.optimizer_.param_groups:
        group["lr"] = lr


def _concat(a, b):
    """Two batches of net input (tensors, or dicts of them) stacked row-wise."""
    if isinstance(a, dict):
        return {k: _concat(a[k], b[k]) for k in a}
    return torch.cat([torch.as_tensor(a), torch.as_tensor(b).to(torch.as_tensor(a).device)])


def _streams(random_state) -> dict[str, np.random.RandomState]:
    """Separate seeded streams for the anchors, the random picks, the replay and the refreshes.

    Drawn from ``random_state`` whatever the strategy, so that two corrections run with the
    same ``random_state`` and different strategies see the same anchors and the same replay.
    """
    seeds = check_random_state(random_state).randint(np.iinfo(np.int32).max, size=4)
    return {name: np.random.RandomState(seed)
            for name, seed in zip(("anchors", "random", "replay", "refresh"), seeds)}


@validate_params(
    {
        "explainer": "no_validation",
        "X": "no_validation",
        "y": "no_validation",
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "n_anchors": [Interval(Integral, 1, None, closed="left")],
        "n_helpful": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "strategy": [StrOptions({"helpful", "random", "anchors"})],
        "refresh": [Interval(Integral, 1, None, closed="left"), None],
        "X_pool": "no_validation",
        "y_pool": "no_validation",
        "X_val": "no_validation",
        "y_val": "no_validation",
        "n_replay": [Interval(Integral, 0, None, closed="left")],
        "X_rest": "no_validation",
        "y_rest": "no_validation",
        "max_rest_drop": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def correct_net(explainer, X, y, *, n_steps: int = 10, n_anchors: int = 10,
                n_helpful: int = 10, lr: float = 1e-4, strategy: str = "helpful",
                refresh: int | None = 1, X_pool=None, y_pool=None, X_val=None, y_val=None,
                n_replay: int = 0, X_rest=None, y_rest=None, max_rest_drop: float = 0.01,
                random_state=None):
    """A copy of the net fine-tuned on the points most helpful for the examples it gets wrong.

    FastIF's error correction. Each step samples ``n_anchors`` of the error examples
    ``(X, y)``, computes the iHVP of their **mean** loss, scores the training set (or the
    pool ``X_pool``) against it, shortlisting around the anchors' mean embedding when the
    explainer has ``candidates``, and takes one step of the net's own optimizer, at
    learning rate ``lr``, on the mean loss of the ``n_helpful`` most helpful points (and of
    ``n_replay`` random training points, when asked). The optimizer is a fresh instance of
    the net's own class and arguments over the explainer's ``params`` only (the parameters
    the influence is computed for; the others stay as they are): the state left by training
    is not carried over. The user's estimator and this explainer are never modified: the
    steps are taken on a deep copy.

    Parameters
    ----------
    explainer : InfluenceExplainer
        A fitted explainer; its settings (solver, ``params``, ``candidates``) score the points,
        and its ``params`` are the parameters stepped.
    X, y : array-like of shape (n_errors, n_features) and (n_errors,)
        Examples the net gets wrong (or any examples it should do better on), raw like the
        training data, with their true labels.
    n_steps : int, default=10
        Number of optimizer steps.
    n_anchors : int, default=10
        Error examples sampled (without replacement) at each step; all of them when fewer.
    n_helpful : int, default=10
        Points stepped on at each step.
    lr : float, default=1e-4
        Learning rate of the optimizer during the correction (FastIF's 1e-4 suits BERT; a
        small MLP with SGD needs ~0.1).
    strategy : {"helpful", "random", "anchors"}, default="helpful"
        ``"helpful"``: the most helpful points by influence. ``"random"``: ``n_helpful``
        points drawn uniformly from the training set or pool. ``"anchors"``: the sampled
        error examples themselves. The last two are FastIF's baselines.
    refresh : int or None, default=1
        The influence is recomputed for the corrected net every ``refresh`` steps, from step
        ``refresh + 1`` on (a fresh explainer of the same settings over a snapshot of the copy:
        curvature, solver preparation and shortlists; step 1 uses this explainer, whose net
        the copy still equals). ``None`` keeps this explainer's influence for every step, with
        no refit (cheapest; see the Applications page for the measured effect).
    X_pool, y_pool : array-like or None, default=None
        An outside pool of labelled data to draw the points from instead of the training
        set (FastIF's augmentation from an unseen pool). Not with ``strategy="anchors"``.
    X_val, y_val : array-like or None, default=None
        Validation data of the examples to correct: the loss and accuracy after each step are
        recorded and the best step (highest accuracy, then lowest loss; lowest loss for a
        regressor), among those that respect ``max_rest_drop``, is kept, so a correction never
        silently degrades the net.
    n_replay : int, default=0
        Random training points added to every step's batch (a replay of what the net
        learned, drawn from their own stream, the same for every strategy), so that a step
        on the chosen points does not undo the rest. 0: the chosen points alone.
    X_rest, y_rest : array-like or None, default=None
        Validation data of the rest (what the correction must not degrade); needs ``X_val``.
        Its loss and accuracy are recorded at each step, and a step is kept only if its
        accuracy is at most ``max_rest_drop`` below step 0's (for a regressor: its loss at
        most ``max_rest_drop`` times above step 0's, relatively).
    max_rest_drop : float, default=0.01
        The drop of the rest's validation accuracy a kept step may cost (see ``X_rest``).
    random_state : int, RandomState instance or None, default=None
        Seed of four separate streams: the anchors, the random strategy's picks, the replay
        and the refreshed explainers. Corrections with the same ``random_state`` and
        different strategies see the same anchors and the same replay (paired comparisons).

    Returns
    -------
    corrected : estimator
        A deep copy of the explainer's ``fitted_estimator_`` (the same type: a net, a
        pipeline ending in one, or a FrozenEstimator) with the corrected net inside. It
        carries ``correction_history_``, a list of one dict per step, ``{"step": int (0 =
        before any step), "indices": ndarray (the rows stepped on: of the training set, of
        ``X_pool``, or of ``X`` for ``"anchors"``), "anchors": ndarray (the rows of ``X``
        sampled), "replay": ndarray (the training rows replayed), "val_loss",
        "val_accuracy", "rest_loss", "rest_accuracy": float or None}`` (the arrays are empty
        at step 0), and ``correction_step_``, the step kept.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif import InfluenceExplainer, correct_net
    >>> from sk_fastif.datasets import make_shortcut_digits
    >>> from sk_fastif.solvers import Exact
    >>> from sk_fastif.toy import train_mlp_classifier
    >>> X_tr, X_ch, y_tr, y_ch = make_shortcut_digits(n_train=300, n_challenge=60)
    >>> net = train_mlp_classifier(X_tr, y_tr, n_out=10, max_epochs=10)
    >>> expl = InfluenceExplainer(net, params=["output"], solver=Exact()).fit(X_tr, y_tr)
    >>> fixed = correct_net(expl, X_ch[:30], y_ch[:30], n_steps=3, lr=0.01,
    ...                     X_val=X_ch[30:], y_val=y_ch[30:], random_state=0)
    >>> type(fixed) is type(net), [h["step"] for h in fixed.correction_history_]
    (True, [0, 1, 2, 3])
    """
    check_is_fitted(explainer, ["engine_", "candidates_"])
    if X is None or y is None:
        raise ValueError("correct needs the error examples X and their true labels y.")
    if rows_of.n_samples(X, "X") == 0:
        raise ValueError("X is empty: correct needs at least one example to correct.")
    Xe, ye = explainer.as_engine_input(X, y)  # refuses labels the net never saw
    in_pool = X_pool is not None or y_pool is not None
    if in_pool:
        if strategy == "anchors":
            raise ValueError('strategy="anchors" steps on the error examples: X_pool and '
                             "y_pool have no use there; drop them or choose another strategy.")
        val.check_pool(X_pool, y_pool)
        with val.errors_naming(X="X_pool", y="y_pool"):
            Xp, yp = explainer.as_engine_input(X_pool, y_pool)
    else:
        Xp, yp = explainer.engine_.X_train, explainer.engine_.y_train
    Xt, yt = explainer.engine_.X_train, explainer.engine_.y_train
    where = "pool" if in_pool else "training set"
    if strategy != "anchors" and n_helpful > len(yp):
        raise ValueError(f"n_helpful={n_helpful} exceeds the {len(yp)} points of the {where}.")
    if n_replay > len(yt):
        raise ValueError(f"n_replay={n_replay} exceeds the {len(yt)} points of the training "
                         "set.")
    selector = explainer.candidates_
    if strategy == "helpful" and selector is not None and n_helpful > selector.n_neighbors:
        raise ValueError(f"n_helpful={n_helpful} exceeds the candidates' n_neighbors="
                         f"{selector.n_neighbors}: the helpful points are ranked among the "
                         "shortlist.")
    if (X_val is None) != (y_val is None):
        raise ValueError("pass both X_val and y_val, or neither.")
    if (X_rest is None) != (y_rest is None):
        raise ValueError("pass both X_rest and y_rest, or neither.")
    if X_rest is not None and X_val is None:
        raise ValueError("X_rest constrains the step kept on X_val: pass X_val and y_val too.")
    with val.errors_naming(X="X_val", y="y_val"):
        Xv, yv = explainer.as_engine_input(X_val, y_val) if X_val is not None else (None, None)
    with val.errors_naming(X="X_rest", y="y_rest"):
        Xr, yr = (explainer.as_engine_input(X_rest, y_rest) if X_rest is not None
                  else (None, None))
    streams = _streams(random_state)

    corrected = copy.deepcopy(explainer.fitted_estimator_)
    net = _net.split_estimator(corrected)[1]
    _fresh_optimizer(net, explainer.param_names_, lr)
    task, batch_size = explainer.task_, explainer.engine_.batch_size

    def record(step: int, indices, anchors, replay) -> dict:
        loss, acc = _validation_metrics(net, task, Xv, yv, batch_size)
        rest_loss, rest_acc = _validation_metrics(net, task, Xr, yr, batch_size)
        return {"step": step, "indices": np.asarray(indices, dtype=np.int64),
                "anchors": np.asarray(anchors, dtype=np.int64),
                "replay": np.asarray(replay, dtype=np.int64), "val_loss": loss,
                "val_accuracy": acc, "rest_loss": rest_loss, "rest_accuracy": rest_acc}

    history = [record(0, [], [], [])]
    best_step, best_state = 0, copy.deepcopy(net.module_.state_dict())
    scorer = explainer  # the copy equals its net until the first step
    for step in range(1, n_steps + 1):
        anchors = np.sort(streams["anchors"].choice(len(ye), size=min(n_anchors, len(ye)),
                                                    replace=False))
        if strategy == "anchors":
            chosen = anchors
            batch = (rows_of.take(Xe, anchors), ye[torch.as_tensor(anchors, device=ye.device)])
        else:
            if strategy == "random":
                chosen = np.sort(streams["random"].choice(len(yp), size=n_helpful,
                                                          replace=False))
            else:
                if refresh is not None and step > 1 and (step - 1) % refresh == 0:
                    scorer = _scorer_for(explainer, net,
                                         int(streams["refresh"].randint(np.iinfo(np.int32).max)))
                chosen = _most_helpful(scorer, Xe, ye, anchors,
                                       (Xp, yp) if in_pool else None, n_helpful)
            batch = (rows_of.take(Xp, chosen), yp[torch.as_tensor(chosen, device=yp.device)])
        replay = np.sort(streams["replay"].choice(len(yt), size=n_replay, replace=False))
        if n_replay:
            batch = (_concat(batch[0], rows_of.take(Xt, replay)),
                     torch.cat([batch[1], yt[torch.as_tensor(replay, device=yt.device)]]))
        net.train_step(batch)
        history.append(record(step, chosen, anchors, replay))
        if Xv is not None and _better(history[-1], history[best_step], history[0],
                                      task.kind, max_rest_drop):
            best_step, best_state = step, copy.deepcopy(net.module_.state_dict())
    if Xv is not None:
        net.module_.load_state_dict(best_state)
    else:
        best_step = n_steps
    for p in net.module_.parameters():  # no gradients of the correction left behind
        p.grad = None
    corrected.correction_history_ = history
    corrected.correction_step_ = best_step
    return corrected


def _better(entry: dict, best: dict, start: dict, kind: str, max_rest_drop: float) -> bool:
    """Whether ``entry`` is kept over ``best``: it respects the rest's constraint (relative to
    step 0, ``start``) and has the higher validation accuracy, then the lower loss (lower loss
    for a regressor)."""
    if entry["rest_loss"] is not None:
        if kind == "regressor":
            if entry["rest_loss"] > start["rest_loss"] * (1.0 + max_rest_drop):
                return False
        elif entry["rest_accuracy"] < start["rest_accuracy"] - max_rest_drop - 1e-12:
            return False

    def key(e: dict) -> tuple:
        acc = e["val_accuracy"]
        return (-acc if acc is not None else 0.0, e["val_loss"])

    return key(entry) < key(best)


def _scorer_for(explainer, net, seed: int):
    """An explainer over a snapshot of ``net`` (the same settings), fitted on the training data
    as the net sees it: the influence of the corrected net at this step."""
    snapshot = copy.deepcopy(net)
    scorer = clone(explainer).set_params(estimator=snapshot, random_state=seed, verbose=0)
    return scorer.fit(rows_of.as_user_input(explainer.engine_.X_train), explainer.y_train_)


def _most_helpful(scorer, Xe, ye, anchors: np.ndarray, pool, n_helpful: int) -> np.ndarray:
    """Rows of the training set (or of ``pool``) most helpful for the anchors' mean loss.

    ``Xe, ye`` are the error examples as the engine takes them; the scores come from the
    scorer's one pipeline (the explainer's public state is left as it is).
    """
    index = torch.as_tensor(anchors, device=ye.device)
    scores = scorer.parallel_engine().scores(rows_of.take(Xe, anchors), ye[index], data=pool,
                                             selector=scorer.candidates_, query="mean")
    return np.sort(ranking.top_k(scores.values, n_helpful, "helpful", scores.candidates)[0][0])
