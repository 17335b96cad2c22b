"""InfluenceExplainer: validation, orchestration and the public methods."""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier
from tqdm.auto import tqdm

from . import _validation as _val
from ._explanation import Explanation
from ._gradients import NetBridge, eval_mode
from .solvers._base import BaseSolver

try:  # scikit-learn >= 1.6
    from sklearn.frozen import FrozenEstimator
except ImportError:  # pragma: no cover
    FrozenEstimator = None

_CLASSIFICATION_LOSSES = (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)


def _unwrap_frozen(est):
    if FrozenEstimator is not None and isinstance(est, FrozenEstimator):
        return est.estimator
    return est


def _split_estimator(estimator):
    """Return (preprocessor or None, skorch net) of a net, a Pipeline or a FrozenEstimator."""
    est = _unwrap_frozen(estimator)
    pre = None
    if isinstance(est, Pipeline):
        if len(est.steps) > 1:
            pre = est[:-1]
        est = _unwrap_frozen(est.steps[-1][1])
    if not isinstance(est, NeuralNet):
        raise TypeError(
            "estimator must be a skorch net (NeuralNetClassifier, NeuralNetBinaryClassifier, "
            "NeuralNetRegressor or NeuralNet), a Pipeline ending in one, or a FrozenEstimator of "
            f"either; got {type(est).__name__}."
        )
    return pre, est


def _is_fitted(estimator) -> bool:
    pre, net = _split_estimator(estimator)
    if not getattr(net, "initialized_", False):
        return False
    if pre is not None:
        try:
            check_is_fitted(pre)
        except NotFittedError:
            return False
    return True


class InfluenceExplainer(MetaEstimatorMixin, BaseEstimator):
    """Explain a skorch net's predictions by the training points that most influenced them.

    For a test point ``z`` and training point ``z_j`` the influence score is

    ``score(z, z_j) = (1/n) g(z)ᵀ (H + λI)⁻¹ g(z_j)``

    with ``g`` the gradient of the net's own loss (``net.get_loss(net.infer(X), y)`` in eval mode)
    with respect to the selected parameters, ``H`` the curvature (Hessian or Gauss-Newton) of the
    **mean** training loss, ``λ`` the solver's ``damping`` and ``n`` the number of training points.
    It estimates how much the loss on ``z`` would rise if ``z_j`` were left out of training.
    **Positive = helpful, negative = harmful.** Koh & Liang's and FastIF's ``I_up,loss`` is
    ``-n * score``.

    Parameters
    ----------
    estimator : skorch net, Pipeline or FrozenEstimator
        A ``NeuralNetClassifier``, ``NeuralNetBinaryClassifier``, ``NeuralNetRegressor`` (or a
        ``NeuralNet`` with a suitable criterion), a ``Pipeline`` whose last step is such a net (the
        earlier steps transform ``X`` before the net sees it), or a ``FrozenEstimator`` of either.
        A fitted estimator is used as is and never modified; an unfitted one is cloned and fitted
        by :meth:`fit`.
    solver : Exact, CG, LiSSA or None, default=None
        The inverse-Hessian-vector-product solver; ``None`` means ``LiSSA()``. Its ``damping`` is
        ``λ`` above.
    params : list of str or None, default=None
        Parameters to differentiate: ``None`` for all trainable parameters, otherwise module names
        or parameter-name prefixes (e.g. ``["output"]`` for the last layer only, as FastIF does).
    curvature : {"hessian", "gauss_newton"}, default="hessian"
        ``"hessian"``: the exact Hessian of the mean training loss. ``"gauss_newton"``: the
        generalised Gauss-Newton matrix, positive semi-definite for losses convex in the net's
        output (cross-entropy, MSE, BCE); use it when the Hessian has negative eigenvalues.
    batch_size : int, default=256
        Number of samples (and right-hand sides) processed together: the memory knob.
    random_state : int, RandomState instance or None, default=None
        Seeds a stochastic solver (LiSSA) whose own ``random_state`` is not an integer. One
        integer seed is drawn in :meth:`fit` (``None``: from numpy's global generator), so a
        fitted explainer always gives the same results, whatever ``batch_size`` and whichever
        test points are explained together; pass an int for results reproducible across runs.
    verbose : int, default=0
        ``> 0`` shows progress bars for passes over the training set.

    Attributes
    ----------
    fitted_estimator_ : estimator
        The estimator used: ``estimator`` itself when it was fitted, otherwise a fitted clone.
    net_ : skorch.NeuralNet
        The net inside it.
    solver_ : BaseSolver
        The prepared clone of ``solver``.
    n_params_ : int
        Number of parameters differentiated.
    param_names_ : list of str
        Their names.
    n_train_ : int
        Number of training points ``n``.
    n_features_in_ : int
        Number of features of ``X`` seen in :meth:`fit`.
    last_solve_ : SolveResult or None
        Trace of the most recent block solve (for convergence checks).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(60, 4).astype("float32"); y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
    >>> expl = InfluenceExplainer(net, solver=Exact(damping=1e-2)).fit(X, y)
    >>> expl.influences(X[:3], y[:3]).shape
    (3, 60)
    >>> expl.explain(X[:3], k=5).helpful_indices.shape
    (3, 5)
    """

    _parameter_constraints: dict = {
        "estimator": "no_validation",
        "solver": [BaseSolver, None],
        "params": [list, tuple, str, None],
        "curvature": [StrOptions({"hessian", "gauss_newton"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        estimator,
        *,
        solver=None,
        params=None,
        curvature="hessian",
        batch_size=256,
        random_state=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.solver = solver
        self.params = params
        self.curvature = curvature
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ================================================================================= fitting
    def fit(self, X, y):
        """Prepare influence computation for the training data the net learned from.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (raw: a pipeline's preprocessing is applied here).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Training targets.

        Returns
        -------
        self : InfluenceExplainer
        """
        self._validate_params()
        _val.check_constructor_args(self)
        _val.discard_fit(self)
        pre, _ = _split_estimator(self.estimator)  # raises TypeError for non-skorch estimators
        _val.check_fit_data(X, y, has_preprocessor=pre is not None)
        if _is_fitted(self.estimator):
            fitted = self.estimator
        else:
            if FrozenEstimator is not None and isinstance(self.estimator, FrozenEstimator):
                raise NotFittedError(
                    "The FrozenEstimator wraps an unfitted net: fit the net before freezing it."
                )
            fitted = clone(self.estimator)
            fitted.fit(X, y)
        self.fitted_estimator_ = fitted
        self._pre, self.net_ = _split_estimator(fitted)
        if len(_val._shape(X, strict=False)) == 2:
            self.n_features_in_ = _val._shape(X)[1]
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)

        self.bridge_ = NetBridge(self.net_, self.params, self.curvature, self.batch_size)
        Xt = self._transform(X, reset=True)
        _val.check_net_accepts(self.net_, Xt, after_preprocessing=self._pre is not None)
        yt = self._check_y(y, Xt)
        _val.check_finite_training_loss(self.bridge_, Xt, yt)
        if self._is_classifier():
            self._train_labels = _val.train_labels(self.net_, yt.cpu().numpy())
        self._X_train, self._y_train = Xt, yt
        self.y_train_ = np.asarray(y)
        self.n_train_ = len(Xt)
        self.n_params_ = self.bridge_.n_params
        self.param_names_ = list(self.bridge_.selected)

        solver = self.solver
        if solver is None:
            from .solvers import LiSSA

            solver = LiSSA()
        self.solver_ = clone(solver)
        _val.fix_solver_seed(self.solver_, self.random_state)
        self._op = self.bridge_.operator(Xt, yt)
        try:
            self.solver_.prepare(self._op)
        except ValueError as exc:  # an invalid solver setting: say which object holds it
            raise ValueError(f"solver={solver!r}: {exc}") from exc
        self.last_solve_ = None
        return self

    # ============================================================================= validation
    def _check_fitted(self):
        check_is_fitted(self, ["bridge_", "solver_"])

    def _transform(self, X, reset: bool = False) -> torch.Tensor:
        """Apply the pipeline's preprocessing and return the net's input as a tensor."""
        if X is None:
            raise ValueError("X is required.")
        if _val._n_samples(X, "X") == 0:
            raise ValueError("X is empty: at least one sample is required.")
        if not reset and getattr(self, "n_features_in_", None) is not None:
            shape = _val._shape(X, strict=False)
            if len(shape) == 2 and shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {shape[1]} features, but InfluenceExplainer is expecting "
                    f"{self.n_features_in_} features as input."
                )
        Xt = X
        if self._pre is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                Xt = self._pre.transform(X)
        if isinstance(Xt, torch.Tensor):
            Xt = Xt.detach().cpu().numpy()
        after = self._pre is not None
        shape = _val._shape(Xt)
        _val.check_input_shape(shape, None if reset else self._input_shape,
                               after_preprocessing=after)
        if reset:
            self._input_shape = shape[1:]
        try:
            Xt = check_array(Xt, accept_sparse=False, dtype="numeric", ensure_all_finite=True,
                             input_name="X", allow_nd=True)
        except ValueError as exc:  # name the argument in scikit-learn's messages that do not
            if "X" in str(exc):
                raise
            raise ValueError(f"Invalid X: {exc}") from exc
        Xt = torch.as_tensor(Xt, dtype=self.bridge_.dtype, device=self.bridge_.device)
        _val.check_input_tensor(Xt, after_preprocessing=after)
        return Xt

    def _n_outputs(self, Xt: torch.Tensor) -> int:
        with eval_mode(self.net_.module_), torch.no_grad():
            out = self.net_.infer(Xt[:1])
        if isinstance(out, tuple):
            out = out[0]
        return 1 if out.dim() == 1 else int(out.shape[1])

    def _is_classifier(self) -> bool:
        if isinstance(self.net_, NeuralNetBinaryClassifier):
            return False
        return isinstance(self.net_, NeuralNetClassifier) or isinstance(
            getattr(self.net_, "criterion_", None), _CLASSIFICATION_LOSSES
        )

    def _check_y(self, y, Xt: torch.Tensor) -> torch.Tensor:
        n = len(Xt)
        y = _val.check_y_basic(y)
        if y.shape[0] != n:
            raise ValueError(f"y has {y.shape[0]} rows but X has {n}.")
        device = self.bridge_.device
        if self._is_classifier():
            if y.ndim != 1:
                raise ValueError(f"y must be 1-D class indices for a classifier; got {y.shape}.")
            if y.dtype.kind == "f" and not np.all(y == np.round(y)):
                raise ValueError("y must hold integer class indices for a classifier.")
            n_classes = self._n_outputs(Xt)
            if y.size and (y.min() < 0 or y.max() >= n_classes):
                raise ValueError(
                    f"y holds labels outside 0..{n_classes - 1}, the classes the net outputs: "
                    f"{sorted(set(np.unique(y).tolist()) - set(range(n_classes)))}."
                )
            _val.check_labels_seen(y, getattr(self, "_train_labels", None))
            return torch.as_tensor(y.astype(np.int64), device=device)
        if isinstance(self.net_, NeuralNetBinaryClassifier):
            if not np.all(np.isin(y, (0, 1))):
                raise ValueError("y must hold 0/1 labels for a NeuralNetBinaryClassifier.")
            return torch.as_tensor(y.reshape(-1), dtype=self.bridge_.dtype, device=device)
        # regression
        n_out = self._n_outputs(Xt)
        if y.ndim == 1:
            y = y.reshape(-1, 1) if n_out == 1 else y
        if y.ndim == 2 and y.shape[1] != n_out:
            raise ValueError(f"y has {y.shape[1]} columns but the net outputs {n_out}.")
        return torch.as_tensor(y, dtype=self.bridge_.dtype, device=device)

    def _data(self, X, y, *, allow_predicted: bool = True):
        """Validated (Xt, yt) tensors; ``y=None`` means the predicted label."""
        self._check_fitted()
        Xt = self._transform(X)
        if len(Xt) == 0:
            raise ValueError("X is empty: at least one sample is required.")
        if y is None:
            if not allow_predicted:
                raise ValueError("y is required here.")
            return Xt, self._predicted_labels(Xt)
        return Xt, self._check_y(y, Xt)

    def _predicted_labels(self, Xt: torch.Tensor) -> torch.Tensor:
        if not (self._is_classifier() or isinstance(self.net_, NeuralNetBinaryClassifier)):
            raise ValueError(
                "y=None (explain the prediction) is only defined for classifiers: for a regressor "
                "the loss at its own prediction is zero. Pass the targets y."
            )
        with eval_mode(self.net_.module_), torch.no_grad():
            out = torch.cat([self.net_.infer(Xt[s]) for s in self.bridge_._chunks(len(Xt))])
            proba = self.net_._get_predict_nonlinearity()(out)
        if isinstance(self.net_, NeuralNetBinaryClassifier):
            p1 = proba[:, 1] if proba.dim() == 2 else proba
            return (p1 > self.net_.threshold).to(self.bridge_.dtype)
        return proba.argmax(dim=1)

    # ============================================================================ computation
    def _solve(self, G: torch.Tensor) -> torch.Tensor:
        """iHVPs for the rows of G, solved in blocks of ``batch_size`` right-hand sides."""
        out = []
        for sl in self.bridge_._chunks(len(G)):
            res = self.solver_.solve(self._op, G[sl])
            self.last_solve_ = res
            out.append(res.solution)
        return torch.cat(out) if out else G.new_zeros((0, G.shape[1]))

    def _warn_zero_gradients(
        self, G: torch.Tensor, consequence: str = "their influence scores are all 0"
    ) -> None:
        _val.check_finite_gradients(G, what="test point")
        _val.warn_zero_gradients(G, consequence, stacklevel=3)

    def _train_gradients(self):
        it = self.bridge_.iter_gradients(self._X_train, self._y_train)
        if self.verbose:
            n_chunks = -(-self.n_train_ // self.batch_size)
            it = tqdm(it, total=n_chunks, desc="training gradients", leave=False)
        return it

    def influence_factors(self, X, y=None) -> np.ndarray:
        """Return the iHVPs ``(H + λI)⁻¹ g(z)`` of the test points' loss gradients.

        They are the reusable part of every score: ``score(z, z_j) = factors[z] · g(z_j) / n``.

        Parameters
        ----------
        X : array-like of shape (n_test, n_features)
        y : array-like of shape (n_test,) or None
            Targets; ``None`` explains the predicted label.

        Returns
        -------
        factors : ndarray of shape (n_test, n_params_)
        """
        Xt, yt = self._data(X, y)
        G = self.bridge_.gradients(Xt, yt)
        self._warn_zero_gradients(G, "their influence factors are 0")
        return self._solve(G).cpu().numpy()

    def influences(self, X, y=None) -> np.ndarray:
        """Influence of every training point on each test point.

        ``out[i, j] = (1/n) g(x_i)ᵀ (H + λI)⁻¹ g(z_j)``: the estimated rise of the loss on test
        point ``i`` if training point ``j`` were left out. Positive = helpful, negative = harmful;
        ``-n * out`` is Koh & Liang's ``I_up,loss``.

        Parameters
        ----------
        X : array-like of shape (n_test, n_features)
        y : array-like of shape (n_test,) or None
            Targets; ``None`` explains the predicted label.

        Returns
        -------
        scores : ndarray of shape (n_test, n_train_)
        """
        Xt, yt = self._data(X, y)
        G = self.bridge_.gradients(Xt, yt)
        self._warn_zero_gradients(G)
        S = self._solve(G)
        out = np.empty((len(Xt), self.n_train_), dtype=np.float64)
        for sl, Gtr in self._train_gradients():
            _val.check_finite_gradients(Gtr, what="training point", offset=sl.start)
            out[:, sl] = (S @ Gtr.T).cpu().numpy()
        out /= self.n_train_
        return out

    def explain(self, X, y=None, *, k: int = 10) -> Explanation:
        """Most helpful and most harmful training points for each test point.

        Parameters
        ----------
        X : array-like of shape (n_test, n_features)
        y : array-like of shape (n_test,) or None
            Targets; ``None`` explains the predicted label.
        k : int, default=10
            Number of training points listed per kind.

        Returns
        -------
        explanation : Explanation
            ``helpful_*`` are the ``k`` highest scores (positive = the point supports the
            prediction), ``harmful_*`` the ``k`` lowest. See :class:`Explanation`.
        """
        self._check_fitted()
        if not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= self.n_train_:
            raise ValueError(f"k must be an integer in [1, n_train_={self.n_train_}]; got {k!r}.")
        Xt, yt = self._data(X, y)
        scores = self.influences(X, yt.cpu().numpy())
        order = np.argsort(-scores, axis=1, kind="stable")
        helpful = order[:, :k]
        harmful = np.argsort(scores, axis=1, kind="stable")[:, :k]
        return Explanation(
            helpful_indices=helpful,
            helpful_scores=np.take_along_axis(scores, helpful, axis=1),
            harmful_indices=harmful,
            harmful_scores=np.take_along_axis(scores, harmful, axis=1),
            test_labels=yt.cpu().numpy(),
            train_labels=self.y_train_,
        )

    def self_influence(self, X=None, y=None) -> np.ndarray:
        """Score of each point on itself, ``(1/n) g(z)ᵀ (H + λI)⁻¹ g(z)``.

        High self-influence flags points the model could not explain from the rest of the data,
        such as mislabeled ones.

        Parameters
        ----------
        X : array-like of shape (n, n_features) or None
            Points to score; ``None`` scores the training set with its labels.
        y : array-like of shape (n,) or None
            Their labels (required when ``X`` is given for a regressor; ``None`` for a classifier
            uses the predicted label).

        Returns
        -------
        self_scores : ndarray of shape (n,)
        """
        self._check_fitted()
        if X is None:
            if y is not None:
                raise ValueError("y given without X: pass both, or neither for the training set.")
            Xt, yt = self._X_train, self._y_train
        else:
            Xt, yt = self._data(X, y)
        out = np.empty(len(Xt), dtype=np.float64)
        it = self.bridge_.iter_gradients(Xt, yt)
        for sl, G in it:
            _val.check_finite_gradients(G, what="point", offset=sl.start)
            _val.warn_zero_gradients(G, "their self-influence is 0", stacklevel=2)
            S = self._solve(G)
            out[sl] = (S * G).sum(dim=1).cpu().numpy()
        return out / self.n_train_

    def score(self, X, y=None) -> float:
        """Minus the mean relative residual of the iHVPs: higher is better, 0 is exact.

        ``-mean_i ‖(H + λI) s_i − g_i‖ / ‖g_i‖`` with ``s_i`` the solver's answer for test point
        ``i``. It needs no reference solution, so a grid search over solver settings ranks them
        meaningfully by default. Points whose gradient is exactly zero are left out (with a
        warning); if every gradient is zero the score is 0.0.

        Parameters
        ----------
        X : array-like of shape (n_test, n_features)
        y : array-like of shape (n_test,) or None

        Returns
        -------
        score : float
        """
        Xt, yt = self._data(X, y)
        G = self.bridge_.gradients(Xt, yt)
        self._warn_zero_gradients(G, "they are solved exactly (by 0) and left out of the score")
        S = self._solve(G)
        damping = float(getattr(self.solver_, "damping", 0.0))
        R = self._op.matvec(S) + damping * S - G
        gnorm = G.norm(dim=1)
        keep = gnorm > 0
        if not bool(keep.any()):
            return 0.0
        rel = R.norm(dim=1)[keep] / gnorm[keep]
        return -float(rel.mean())

    # ============================================================================ delegation
    def predict(self, X):
        """Predictions of the explained estimator."""
        self._check_fitted()
        Xt = self._transform(X)  # validated, preprocessed and in the net's dtype
        with self.bridge_._modes():  # skorch switches the module and criterion modes
            return self.net_.predict(Xt)

    def predict_proba(self, X):
        """Class probabilities of the explained estimator."""
        self._check_fitted()
        Xt = self._transform(X)
        with self.bridge_._modes():
            return self.net_.predict_proba(Xt)

    @property
    def classes_(self):
        """Classes of the explained classifier."""
        self._check_fitted()
        return getattr(self.net_, "classes_", None)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True
        return tags

