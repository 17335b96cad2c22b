"""Applications of the influence scores: scoring an outside pool and correcting a net's errors.

:class:`ApplicationsMixin` gives :class:`~sk_fastif.InfluenceExplainer` its application
methods: :meth:`~ApplicationsMixin.pool_influences` and :meth:`~ApplicationsMixin.explain_pool`
rank the points of a pool the net never trained on (data augmentation), and
:meth:`~ApplicationsMixin.correct` fine-tunes a **copy** of the net on the points most helpful
for the examples it gets wrong (FastIF's error correction). They are built from the explainer's
own input handling, iHVPs and shortlists and from the engine's scoring methods.
"""

from __future__ import annotations

import copy
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints

from . import _batch as rows_of
from . import _net
from . import _ranking as ranking
from . import _validation as val
from ._explanation import Explanation

__all__ = ["ApplicationsMixin"]

_CORRECT_CONSTRAINTS = {
    "n_steps": [Interval(Integral, 1, None, closed="left")],
    "n_anchors": [Interval(Integral, 1, None, closed="left")],
    "n_helpful": [Interval(Integral, 1, None, closed="left")],
    "lr": [Interval(Real, 0, None, closed="neither")],
    "strategy": [StrOptions({"helpful", "random", "anchors"})],
    "refresh": [Interval(Integral, 1, None, closed="left"), None],
    "random_state": ["random_state"],
}


def _pool_size(X_pool, y_pool) -> int:
    if y_pool is None:
        raise ValueError(
            "X_pool was given without y_pool: a pool without labels cannot be scored (the "
            "influence of a point needs its loss gradient, hence its label). Pass y_pool."
        )
    if X_pool is None:
        raise ValueError("y_pool was given without X_pool: pass both, or neither.")
    n = val.n_samples(X_pool, "X_pool")
    if n == 0:
        raise ValueError("X_pool is empty: at least one pool point is required.")
    return n


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


def _fresh_optimizer(net, lr: float) -> None:
    """A new instance of the net's own optimizer (its class and arguments) at learning rate lr.

    The state left by training (Adam's moment estimates, momentum buffers) is not carried over:
    measured on the shortcut digits, Adam's stale second moments (tiny at convergence) turn the
    first correction steps into large jumps that lower the accuracy even on the error examples.
    """
    net.initialize_optimizer()
    for group in net.optimizer_.param_groups:
        group["lr"] = lr


class ApplicationsMixin:
    """Pool scoring and error correction for :class:`~sk_fastif.InfluenceExplainer`."""

    # ============================================================================== pool
    def _pool_scores(self, X, y, X_pool, y_pool, query: str):
        """Scores of the pool (dense, or candidate values and their pool rows) and the labels."""
        self._check_fitted()
        val.check_query(query)
        _pool_size(X_pool, y_pool)
        Xp, yp = self.as_engine_input(X_pool, y_pool)
        Xt, yt = self.as_engine_input(X, y)
        S = self._factors(Xt, yt, query)
        labels = yt.cpu().numpy() if query == "each" else None
        engine = self.parallel_engine()
        if self.candidates_ is None:
            return engine.score_data(S, Xp, yp), None, labels, np.asarray(y_pool)
        k = self.candidates_.n_neighbors
        if k > len(yp):
            raise ValueError(f"the candidates' n_neighbors={k} exceeds the {len(yp)} pool points; "
                             "use a larger pool or fewer neighbours.")
        selector = clone(self.candidates_).fit(self.net_, Xp)  # the same settings, over the pool
        C = np.sort(selector.kneighbors(self.net_, Xt, query=query)[0], axis=1)
        U, inv = np.unique(C, return_inverse=True)
        scores = engine.score_data(S, rows_of.take(Xp, U),
                                   yp[torch.as_tensor(U, device=yp.device)])
        values = np.take_along_axis(scores, inv.reshape(C.shape), axis=1)
        return values, C, labels, np.asarray(y_pool)

    def pool_influences(self, X, y=None, *, X_pool, y_pool, query: str = "each"):
        """Influence that points of an outside pool would have on each test point.

        ``out[i, j] = (1/n) g(x_i)ᵀ (H + λI)⁻¹ g(p_j)`` with ``n`` the training-set size: the
        score pool point ``p_j`` would have as a training point. Positive = adding it should
        lower the test loss (helpful for data augmentation), negative = harmful.

        Parameters
        ----------
        X : array-like of shape (n_test, n_features)
        y : array-like of shape (n_test,) or None
            Targets; ``None`` explains the predicted label.
        X_pool : array-like of shape (n_pool, n_features)
            Candidate data, raw like ``X`` (a pipeline's preprocessing is applied).
        y_pool : array-like of shape (n_pool,)
            Their labels (required: a point's influence needs its loss gradient).
        query : {"each", "mean"}, default="each"
            One row per test point, or one row for the group's mean loss.

        Returns
        -------
        scores : ndarray of shape (n_rows, n_pool), or scipy.sparse.csr_matrix
            Dense without ``candidates``. With ``candidates``, a selector with the same settings
            is fitted over the pool's embedding and only each row's ``n_neighbors`` nearest pool
            points are scored (a CSR matrix holding exactly those, as :meth:`influences`).

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skorch import NeuralNetClassifier
        >>> from sk_fastif import InfluenceExplainer
        >>> from sk_fastif.solvers import Exact
        >>> rng = np.random.RandomState(0)
        >>> X = rng.randn(80, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
        >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
        ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0)
        >>> expl = InfluenceExplainer(net.fit(X[:60], y[:60]), solver=Exact()).fit(X[:60], y[:60])
        >>> expl.pool_influences(X[:3], y[:3], X_pool=X[60:], y_pool=y[60:]).shape
        (3, 20)
        """
        scores, pool, _, _ = self._pool_scores(X, y, X_pool, y_pool, query)
        if pool is None:
            return scores
        return ranking.candidates_to_csr(scores, pool, val.n_samples(X_pool, "X_pool"))

    def explain_pool(self, X, y=None, *, X_pool, y_pool, k: int = 10,
                     query: str = "each") -> Explanation:
        """Most helpful and most harmful points of an outside pool for each test point.

        The pool's points are ranked by :meth:`pool_influences`; the result is the same
        :class:`Explanation` as :meth:`explain`, its indices rows of ``X_pool`` and its
        ``train_labels`` the pool's labels. ``k`` may not exceed the pool size (or the
        selector's ``n_neighbors`` with ``candidates``).

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skorch import NeuralNetClassifier
        >>> from sk_fastif import InfluenceExplainer
        >>> from sk_fastif.solvers import Exact
        >>> rng = np.random.RandomState(0)
        >>> X = rng.randn(80, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
        >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
        ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0)
        >>> expl = InfluenceExplainer(net.fit(X[:60], y[:60]), solver=Exact()).fit(X[:60], y[:60])
        >>> ex = expl.explain_pool(X[:2], y[:2], X_pool=X[60:], y_pool=y[60:], k=3)
        >>> ex.helpful_indices.shape, bool(ex.helpful_indices.max() < 20)
        ((2, 3), True)
        """
        self._check_fitted()
        n_pool = _pool_size(X_pool, y_pool)
        pruned = self.candidates_ is not None
        k = val.check_k(k, self.candidates_.n_neighbors if pruned else n_pool, pruned=pruned)
        scores, pool, labels, pool_labels = self._pool_scores(X, y, X_pool, y_pool, query)
        return ranking.explanation(scores, k, pool=pool, test_labels=labels,
                                   train_labels=pool_labels)

    # ======================================================================== correction
    def _scorer_for(self, net, seed: int):
        """An explainer over a snapshot of ``net`` (the same settings), fitted on the training
        data as the net sees it: the influence of the corrected net at this step."""
        snapshot = copy.deepcopy(net)
        scorer = clone(self).set_params(estimator=snapshot, random_state=seed, verbose=0)
        return scorer.fit(rows_of.as_user_input(self.engine_.X_train), self.y_train_)

    def correct(self, X, y, *, n_steps: int = 10, n_anchors: int = 10, n_helpful: int = 10,
                lr: float = 1e-4, strategy: str = "helpful", refresh: int | None = 1,
                X_pool=None, y_pool=None, X_val=None, y_val=None, random_state=None):
        """A copy of the net fine-tuned on the points most helpful for the examples it gets wrong.

        FastIF's error correction. Each step samples ``n_anchors`` of the error examples
        ``(X, y)``, computes the iHVP of their **mean** loss, scores the training set (or the
        pool ``X_pool``) against it, shortlisting around the anchors' mean embedding when the
        explainer has ``candidates``, and takes one step of the net's own optimizer, at
        learning rate ``lr``, on the mean loss of the ``n_helpful`` most helpful points. The
        optimizer is a fresh instance of the net's own class and arguments: the state left by
        training is not carried over. The user's estimator and this explainer are never
        modified: the steps are taken on a deep copy.

        Parameters
        ----------
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
            The influence is recomputed for the corrected net every ``refresh`` steps (a
            fresh explainer of the same settings over a snapshot of the copy: curvature,
            solver preparation and shortlists). ``None`` keeps the influence of the original
            net for every step (cheapest; see the Applications page for the measured effect).
        X_pool, y_pool : array-like or None, default=None
            An outside pool of labelled data to draw the points from instead of the training
            set (FastIF's augmentation from an unseen pool). Not with ``strategy="anchors"``.
        X_val, y_val : array-like or None, default=None
            Validation data: the loss and accuracy after each step are recorded and the best
            step (highest accuracy, then lowest loss; lowest loss for a regressor) is kept, so a
            correction never silently degrades the net.
        random_state : int, RandomState instance or None, default=None
            Seed of the anchors, of the random strategy and of the refreshed explainers.

        Returns
        -------
        corrected : estimator
            A deep copy of :attr:`fitted_estimator_` (the same type: a net, a pipeline ending
            in one, or a FrozenEstimator) with the corrected net inside. It carries
            ``correction_history_``, a list of one dict per step, ``{"step": int (0 = before
            any step), "indices": ndarray (the rows stepped on: of the training set, of
            ``X_pool``, or of ``X`` for ``"anchors"``), "val_loss": float or None,
            "val_accuracy": float or None}``, and ``correction_step_``, the step kept.

        Examples
        --------
        >>> import numpy as np
        >>> from sk_fastif import InfluenceExplainer
        >>> from sk_fastif.datasets import make_shortcut_digits, train_mlp_classifier
        >>> from sk_fastif.solvers import Exact
        >>> X_tr, X_ch, y_tr, y_ch = make_shortcut_digits(n_train=300, n_challenge=60)
        >>> net = train_mlp_classifier(X_tr, y_tr, n_out=10, max_epochs=10)
        >>> expl = InfluenceExplainer(net, params=["output"], solver=Exact()).fit(X_tr, y_tr)
        >>> fixed = expl.correct(X_ch[:30], y_ch[:30], n_steps=3, lr=0.01,
        ...                      X_val=X_ch[30:], y_val=y_ch[30:], random_state=0)
        >>> type(fixed) is type(net), [h["step"] for h in fixed.correction_history_]
        (True, [0, 1, 2, 3])
        """
        self._check_fitted()
        params = dict(n_steps=n_steps, n_anchors=n_anchors, n_helpful=n_helpful, lr=lr,
                      strategy=strategy, refresh=refresh, random_state=random_state)
        validate_parameter_constraints(_CORRECT_CONSTRAINTS, params, caller_name="correct")
        if X is None or y is None:
            raise ValueError("correct needs the error examples X and their true labels y.")
        if val.n_samples(X, "X") == 0:
            raise ValueError("X is empty: correct needs at least one example to correct.")
        Xe, ye = self.as_engine_input(X, y)  # refuses labels the net never saw
        in_pool = X_pool is not None or y_pool is not None
        if in_pool:
            if strategy == "anchors":
                raise ValueError('strategy="anchors" steps on the error examples: X_pool and '
                                 "y_pool have no use there; drop them or choose another strategy.")
            _pool_size(X_pool, y_pool)
            Xp, yp = self.as_engine_input(X_pool, y_pool)
        else:
            Xp, yp = self.engine_.X_train, self.engine_.y_train
        where = "pool" if in_pool else "training set"
        if strategy != "anchors" and n_helpful > len(yp):
            raise ValueError(f"n_helpful={n_helpful} exceeds the {len(yp)} points of the {where}.")
        if (strategy == "helpful" and self.candidates_ is not None
                and n_helpful > self.candidates_.n_neighbors):
            raise ValueError(f"n_helpful={n_helpful} exceeds the candidates' n_neighbors="
                             f"{self.candidates_.n_neighbors}: the helpful points are ranked "
                             "among the shortlist.")
        if (X_val is None) != (y_val is None):
            raise ValueError("pass both X_val and y_val, or neither.")
        Xv, yv = self.as_engine_input(X_val, y_val) if X_val is not None else (None, None)
        Xp_net = rows_of.as_user_input(Xp)  # what the refreshed explainers take
        yp_raw = np.asarray(y_pool) if in_pool else self.y_train_

        rng = check_random_state(random_state)
        corrected = copy.deepcopy(self.fitted_estimator_)
        net = _net.split_estimator(corrected)[1]
        _fresh_optimizer(net, lr)

        def record(step: int, indices) -> dict:
            loss, acc = _validation_metrics(net, self.task_, Xv, yv, self.batch_size)
            return {"step": step, "indices": np.asarray(indices, dtype=np.int64),
                    "val_loss": loss, "val_accuracy": acc}

        def rank_key(entry: dict) -> tuple:
            acc = entry["val_accuracy"]
            return (-acc if acc is not None else 0.0, entry["val_loss"])

        history = [record(0, [])]
        best_step, best_state = 0, copy.deepcopy(net.module_.state_dict())
        Xe_net, ye_raw = rows_of.as_user_input(Xe), ye.cpu().numpy()
        scorer = None
        for step in range(1, n_steps + 1):
            anchors = np.sort(rng.choice(len(ye), size=min(n_anchors, len(ye)), replace=False))
            seed = int(rng.randint(np.iinfo(np.int32).max))
            if strategy == "anchors":
                chosen, batch = anchors, (rows_of.take(Xe, anchors), ye[anchors])
            else:
                if strategy == "random":
                    chosen = np.sort(rng.choice(len(yp), size=n_helpful, replace=False))
                else:
                    if scorer is None or (refresh is not None and (step - 1) % refresh == 0):
                        scorer = self._scorer_for(net, seed)
                    chosen = _most_helpful(scorer, rows_of.take(Xe_net, anchors), ye_raw[anchors],
                                           (Xp_net, yp_raw) if in_pool else None, n_helpful)
                index = torch.as_tensor(chosen, device=yp.device)
                batch = (rows_of.take(Xp, chosen), yp[index])
            net.train_step(batch)
            history.append(record(step, chosen))
            if Xv is not None and rank_key(history[-1]) < rank_key(history[best_step]):
                best_step, best_state = step, copy.deepcopy(net.module_.state_dict())
        if Xv is not None:
            net.module_.load_state_dict(best_state)
        else:
            best_step = n_steps
        corrected.correction_history_ = history
        corrected.correction_step_ = best_step
        return corrected


def _most_helpful(scorer, X_anchors, y_anchors, pool, n_helpful: int) -> np.ndarray:
    """Rows of the training set (or of ``pool``) most helpful for the anchors' mean loss."""
    if pool is None:
        scores = scorer.influences(X_anchors, y_anchors, query="mean")
    else:
        scores = scorer.pool_influences(X_anchors, y_anchors, X_pool=pool[0], y_pool=pool[1],
                                        query="mean")
    if hasattr(scores, "tocsr"):
        values, cols = ranking.csr_to_candidates(scores)
        return ranking.top_k(values, n_helpful, "helpful", cols)[0][0]
    return ranking.top_k(scores, n_helpful, "helpful")[0][0]
