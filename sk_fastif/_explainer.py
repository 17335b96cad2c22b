"""InfluenceExplainer: validation, orchestration and the public methods."""

from __future__ import annotations

import contextlib
import copy
import difflib
import warnings
from numbers import Integral

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier
from tqdm.auto import tqdm

from . import _validation as _val
from ._explanation import Explanation
from ._gradients import NetBridge, eval_mode
from .neighbors import BaseCandidates
from .solvers._base import BaseSolver

try:  # scikit-learn >= 1.6
    from sklearn.frozen import FrozenEstimator
except ImportError:  # pragma: no cover
    FrozenEstimator = None

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover

    def _validate_data(estimator, X, **kwargs):
        return estimator._validate_data(X, **kwargs)

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


def _is_prefit(estimator) -> bool:
    """Whether ``estimator`` is a fitted skorch net / pipeline (False for anything else)."""
    try:
        return _is_fitted(estimator)
    except TypeError:
        return False


def _param_dtype(net) -> torch.dtype | None:
    """Floating dtype of a skorch net's parameters (None if it has no floating parameter)."""
    for p in net.module_.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _bare_net_input(X, dtype: torch.dtype | None):
    """``X`` as the explainer hands it to a bare skorch net: a validated array in ``dtype``.

    The influence computations feed the net ``X`` as a tensor in its parameters' dtype; the
    same conversion for ``fit``/``predict`` keeps both views of ``X`` identical (skorch itself
    would pass a DataFrame's columns as keyword arguments and does not cast), and invalid input
    (NaN, sparse, complex, 1-D, empty) is refused before the net is trained.
    """
    X = check_array(X, accept_sparse=False, dtype="numeric", ensure_all_finite=True,
                    allow_nd=True, input_name="X")
    if dtype is not None:
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        if X.dtype != np_dtype:
            X = X.astype(np_dtype)
    if not X.flags.writeable:  # e.g. a pandas copy-on-write view: torch wants writable arrays
        X = X.copy()
    return X


def _numeric_target(y) -> np.ndarray:
    """``y`` as an array: pandas converted, an object array made numeric if it can be."""
    y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") and hasattr(y, "index") else y)
    if y.dtype == object:
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                "Unknown label type: y must hold numbers (class indices for a classifier)."
            ) from None
    return y


def _bare_net_target(net, y, dtype: torch.dtype | None):
    """``y`` as the explainer hands it to a bare skorch net when training a clone of it.

    Pandas becomes arrays and object arrays numeric; a classifier's labels become int64 class
    indices (integral floats accepted) and other floating targets take ``dtype``.
    """
    y = _numeric_target(y)
    classifier = not isinstance(net, NeuralNetBinaryClassifier) and (
        isinstance(net, NeuralNetClassifier)
        or isinstance(getattr(net, "criterion_", None), _CLASSIFICATION_LOSSES)
    )
    if classifier and y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    if dtype is not None and y.dtype.kind == "f":
        return y.astype(torch.empty((), dtype=dtype).numpy().dtype, copy=False)
    return y


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
        A fitted estimator is used as is and never modified, and clones of the explainer (as
        :class:`~sklearn.model_selection.GridSearchCV` makes) share it rather than retrain it; an
        unfitted one is cloned and fitted by :meth:`fit`.
    solver : Exact, CG, LiSSA or None, default=None
        The inverse-Hessian-vector-product solver; ``None`` means ``LiSSA()``. Its ``damping`` is
        ``λ`` above.
    candidates : NNDescentCandidates, ExactCandidates or None, default=None
        ``None`` scores every training point. A selector from :mod:`sk_fastif.neighbors` scores
        only each test point's ``n_neighbors`` nearest training points in the net's feature
        space (FastIF's pruning): :meth:`fit` builds the index, and :meth:`explain` and
        :meth:`influences` compute training gradients for the candidates only (once per distinct
        candidate of a call, however many test points share it). :meth:`influences` then returns a
        sparse matrix. The curvature and its solver still use the whole training set. Check the
        shortlist with :meth:`audit_candidates`.
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
        Seeds a stochastic solver (LiSSA) whose own ``random_state`` is not an integer, a
        candidate selector whose own ``random_state`` is None, and, when ``fit`` trains a clone
        of an unfitted estimator, torch's random number generator for that training (within
        :func:`torch.random.fork_rng`, so the global generator is left as it was). The solver's
        integer seed is drawn once in :meth:`fit` (``None``: from numpy's global generator), so a
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
    candidates_ : BaseCandidates or None
        The fitted clone of ``candidates`` (holding the neighbour index), or None.
    n_params_ : int
        Number of parameters differentiated.
    param_names_ : list of str
        Their names.
    n_train_ : int
        Number of training points ``n``.
    n_features_in_ : int
        Number of features of ``X`` seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of ``X`` seen in :meth:`fit`, when it was a DataFrame with string column
        names; later calls warn or raise when their names differ, as in scikit-learn.
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
        "candidates": [BaseCandidates, None],
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
        candidates=None,
        params=None,
        curvature="hessian",
        batch_size=256,
        random_state=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.solver = solver
        self.candidates = candidates
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
        if not isinstance(y, torch.Tensor):
            y = _numeric_target(y)
        if _is_fitted(self.estimator):
            fitted = self.estimator
        else:
            if FrozenEstimator is not None and isinstance(self.estimator, FrozenEstimator):
                raise NotFittedError(
                    "The FrozenEstimator wraps an unfitted net: fit the net before freezing it."
                )
            fitted = clone(self.estimator)
            with contextlib.ExitStack() as stack:
                if self.random_state is not None:
                    # seed torch for this training only (initialisation, shuffling, dropout)
                    stack.enter_context(torch.random.fork_rng())
                    rng = check_random_state(self.random_state)
                    torch.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
                if isinstance(fitted, NeuralNet):
                    # initialize + partial_fit is skorch's fit; initializing first gives the dtype
                    fitted.initialize()
                    dtype = _param_dtype(fitted)
                    fitted.partial_fit(_bare_net_input(X, dtype),
                                       _bare_net_target(fitted, y, dtype))
                else:
                    fitted.fit(X, y)
        self.fitted_estimator_ = fitted
        self._pre, self.net_ = _split_estimator(fitted)
        # n_features_in_ and, for a DataFrame with string column names, feature_names_in_
        _validate_data(self, X, reset=True, skip_check_array=True)

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

        selector = None
        if self.candidates is not None:
            selector = clone(self.candidates)
            if "random_state" in selector.get_params() and selector.random_state is None:
                if self.random_state is not None:
                    seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
                    selector.set_params(random_state=int(seed))
            selector.fit(self.net_, Xt)
        # set last: an interrupted fit leaves the explainer not fitted (see _check_fitted)
        self.candidates_ = selector
        return self

    # ============================================================================= validation
    def _check_fitted(self):
        check_is_fitted(self, ["bridge_", "solver_", "candidates_"])

    def _transform(self, X, reset: bool = False) -> torch.Tensor:
        """Apply the pipeline's preprocessing and return the net's input as a tensor."""
        if X is None:
            raise ValueError("X is required.")
        if _val._n_samples(X, "X") == 0:
            raise ValueError("X is empty: at least one sample is required.")
        after = self._pre is not None
        if not after:  # a bare net's input: its shape first, then scikit-learn's feature checks
            self._check_input_shape(X, reset)
        if not reset:
            self._check_input_features(X)
        Xt = X
        if after:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                Xt = self._pre.transform(X)
            self._check_input_shape(Xt, reset, after_preprocessing=True)
        if isinstance(Xt, torch.Tensor):
            Xt = Xt.detach().cpu().numpy()
        try:
            Xt = check_array(Xt, accept_sparse=False, dtype="numeric", ensure_all_finite=True,
                             input_name="X", allow_nd=True)
        except ValueError as exc:  # name the argument in scikit-learn's messages that do not
            if "X" in str(exc):
                raise
            raise ValueError(f"Invalid X: {exc}") from exc
        if not Xt.flags.writeable:  # e.g. a pandas copy-on-write view: torch wants writable
            Xt = Xt.copy()
        Xt = torch.as_tensor(Xt, dtype=self.bridge_.dtype, device=self.bridge_.device)
        _val.check_input_tensor(Xt, after_preprocessing=after)
        return Xt

    def _check_input_shape(self, X, reset: bool, *, after_preprocessing: bool = False) -> None:
        """Check the net's input shape (at least 2-D, non-empty, as in ``fit``); record it there."""
        shape = _val._shape(X)
        _val.check_input_shape(shape, None if reset else self._input_shape,
                               after_preprocessing=after_preprocessing)
        if reset:
            self._input_shape = shape[1:]

    def _check_input_features(self, X) -> None:
        """Check ``X``'s number of features and column names against those seen in ``fit``."""
        _validate_data(self, X, reset=False, skip_check_array=True)

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

    def _check_query(self, query: str) -> None:
        if query not in ("each", "mean"):
            raise ValueError(f"query must be 'each' or 'mean'; got {query!r}.")

    def _query_factors(self, Xt: torch.Tensor, yt: torch.Tensor, query: str) -> torch.Tensor:
        """iHVPs of the test gradients: one row per point, or one for the group's mean loss."""
        G = self.bridge_.gradients(Xt, yt)
        if query == "mean":
            G = G.mean(dim=0, keepdim=True)
        self._warn_zero_gradients(G)
        return self._solve(G)

    def _dense_scores(self, S: torch.Tensor) -> np.ndarray:
        """Scores of every training point: one pass over the training gradients."""
        out = np.empty((len(S), self.n_train_), dtype=np.float64)
        for sl, Gtr in self._train_gradients():
            _val.check_finite_gradients(Gtr, what="training point", offset=sl.start)
            out[:, sl] = (S @ Gtr.T).cpu().numpy()
        out /= self.n_train_
        return out

    def _candidate_scores(self, S: torch.Tensor, C: np.ndarray) -> np.ndarray:
        """Scores ``(1/n) S[i] · g(C[i, j])`` of each row's candidates, shape ``C.shape``.

        Training gradients are computed once for each distinct candidate of the whole call (the
        union of the rows of ``C``), streamed in chunks of ``batch_size``. Each chunk is reduced
        against the factors of the test points that list its rows: by one matrix product when
        those test points share most of the chunk, otherwise pair by pair.
        """
        m, kc = C.shape
        U, inv = np.unique(C.ravel(), return_inverse=True)
        order = np.argsort(inv, kind="stable")  # (test, candidate) pairs grouped by row of U
        pair_u = inv[order]
        pair_row = order // kc
        values = np.empty(m * kc, dtype=np.float64)
        device = S.device
        rows_u = torch.as_tensor(U, dtype=torch.long, device=self._X_train.device)
        it = self.bridge_.iter_gradients(self._X_train[rows_u], self._y_train[rows_u])
        if self.verbose:
            n_chunks = -(-len(U) // self.batch_size)
            it = tqdm(it, total=n_chunks, desc="candidate gradients", leave=False)
        for sl, G in it:
            _val.check_finite_gradients(G, what="training point", rows=U[sl])
            lo, hi = np.searchsorted(pair_u, [sl.start, sl.stop])
            pos, rows, local = order[lo:hi], pair_row[lo:hi], pair_u[lo:hi] - sl.start
            involved = np.unique(rows)
            if len(involved) * (sl.stop - sl.start) <= 4 * (hi - lo):
                block = S[torch.as_tensor(involved, device=device)] @ G.T
                r = torch.as_tensor(np.searchsorted(involved, rows), device=device)
                c = torch.as_tensor(local, device=device)
                values[pos] = block[r, c].cpu().numpy()
            else:
                for a in range(0, hi - lo, self.batch_size):
                    b = slice(a, a + self.batch_size)
                    r = torch.as_tensor(rows[b], device=device)
                    c = torch.as_tensor(local[b], device=device)
                    values[pos[b]] = (S[r] * G[c]).sum(dim=1).cpu().numpy()
        return values.reshape(m, kc) / self.n_train_

    def _shortlists(self, Xt: torch.Tensor, query: str) -> np.ndarray:
        indices, _ = self.candidates_.kneighbors(self.net_, Xt, query=query)
        return indices

    def _influences(self, Xt: torch.Tensor, yt: torch.Tensor, query: str):
        S = self._query_factors(Xt, yt, query)
        if self.candidates_ is None:
            return self._dense_scores(S)
        C = np.sort(self._shortlists(Xt, query), axis=1)
        values = self._candidate_scores(S, C)
        m, kc = C.shape
        return sp.csr_matrix(
            (values.ravel(), C.ravel(), np.arange(0, m * kc + 1, kc)), shape=(m, self.n_train_)
        )

    def influences(self, X, y=None, *, query: str = "each"):
        """Influence of the training points on each test point.

        ``out[i, j] = (1/n) g(x_i)ᵀ (H + λI)⁻¹ g(z_j)``: the estimated rise of the loss on test
        point ``i`` if training point ``j`` were left out. Positive = helpful, negative = harmful;
        ``-n * out`` is Koh & Liang's ``I_up,loss``.

        Parameters
        ----------
        X : array-like of shape (n_test, n_features)
        y : array-like of shape (n_test,) or None
            Targets; ``None`` explains the predicted label.
        query : {"each", "mean"}, default="each"
            ``"each"``: one row per test point. ``"mean"``: the test points form one group and
            the result has one row, the influence on the group's **mean** loss (equal to the
            mean of the ``"each"`` rows over the same training points); with ``candidates`` its
            shortlist comes from one neighbour query at the group's mean embedding (FastIF's
            mean-of-anchors query).

        Returns
        -------
        scores : ndarray of shape (n_rows, n_train_), or scipy.sparse.csr_matrix
            ``n_rows`` is ``n_test`` (or 1 for ``query="mean"``). Without ``candidates``, a dense
            array of all scores. With ``candidates``, a CSR matrix that stores exactly each
            row's ``n_neighbors`` candidates (``.indices``, sorted, explicit zeros kept); the
            other entries were **not scored**, which is not the same as a zero influence.
        """
        self._check_query(query)
        Xt, yt = self._data(X, y)
        return self._influences(Xt, yt, query)

    def explain(self, X, y=None, *, k: int = 10, query: str = "each") -> Explanation:
        """Most helpful and most harmful training points for each test point.

        Parameters
        ----------
        X : array-like of shape (n_test, n_features)
        y : array-like of shape (n_test,) or None
            Targets; ``None`` explains the predicted label.
        k : int, default=10
            Number of training points listed per kind. With ``candidates`` they are ranked among
            each test point's candidates only, so ``k`` may not exceed the selector's
            ``n_neighbors``.
        query : {"each", "mean"}, default="each"
            ``"mean"`` explains the group's mean loss in one row (see :meth:`influences`); its
            ``test_labels`` is None.

        Returns
        -------
        explanation : Explanation
            ``helpful_*`` are the ``k`` highest scores (positive = the point supports the
            prediction), ``harmful_*`` the ``k`` lowest. See :class:`Explanation`.
        """
        self._check_fitted()
        self._check_query(query)
        n_pool = self.n_train_ if self.candidates_ is None else self.candidates_.n_neighbors
        if not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= n_pool:
            if self.candidates_ is not None and isinstance(k, Integral) and k > n_pool:
                raise ValueError(
                    f"k={k} exceeds the {n_pool} candidates scored per test point: lower k or "
                    "raise the selector's n_neighbors."
                )
            bound = "n_train_" if self.candidates_ is None else "n_neighbors"
            raise ValueError(f"k must be an integer in [1, {bound}={n_pool}]; got {k!r}.")
        Xt, yt = self._data(X, y)
        scores = self._influences(Xt, yt, query)
        if self.candidates_ is None:
            pool = None
        else:
            m = scores.shape[0]
            pool = scores.indices.reshape(m, -1).astype(np.int64)
            scores = scores.data.reshape(m, -1)
        helpful = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        harmful = np.argsort(scores, axis=1, kind="stable")[:, :k]
        helpful_scores = np.take_along_axis(scores, helpful, axis=1)
        harmful_scores = np.take_along_axis(scores, harmful, axis=1)
        if pool is not None:
            helpful = np.take_along_axis(pool, helpful, axis=1)
            harmful = np.take_along_axis(pool, harmful, axis=1)
        return Explanation(
            helpful_indices=helpful,
            helpful_scores=helpful_scores,
            harmful_indices=harmful,
            harmful_scores=harmful_scores,
            test_labels=yt.cpu().numpy() if query == "each" else None,
            train_labels=self.y_train_,
        )

    def _audit_scores(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive scores of every training point and the candidate shortlists, for X.

        Both use the same iHVPs, so comparing them measures the pruning alone.
        """
        self._check_fitted()
        if self.candidates_ is None:
            raise ValueError(
                "the explainer has no candidates: there is no shortlist to audit. Set "
                "candidates=NNDescentCandidates(...) and fit again."
            )
        Xt, yt = self._data(X, y)
        S = self._query_factors(Xt, yt, "each")
        return self._dense_scores(S), self._shortlists(Xt, "each")

    def audit_candidates(
        self, X, y=None, *, top=10, kind: str = "helpful", max_samples: int | None = 100,
        min_recall: float = 0.9,
    ):
        """Measure the recall of the candidate shortlists on a sample of queries.

        Scores a random sample of the test points exhaustively (every training point, with the
        same iHVPs) and computes ``R@m``, the fraction of the true top-``m`` training points
        that the shortlist contains (see :func:`sk_fastif.metrics.candidate_recall`). Warns
        :class:`~sk_fastif.neighbors.LowCandidateRecallWarning` when the mean ``R@m`` falls
        below ``min_recall``: raise the selector's ``n_neighbors`` (or try another
        ``embedding``). Costs one pass over the training gradients.

        Parameters
        ----------
        X : array-like of shape (n_test, n_features)
            Queries to audit, e.g. the test points to be explained.
        y : array-like of shape (n_test,) or None
            Targets; ``None`` uses the predicted labels.
        top : int or sequence of int, default=10
            The ``m`` of ``R@m``; each at most the selector's ``n_neighbors``.
        kind : {"helpful", "harmful", "abs"}, default="helpful"
            Which top list: highest scores, lowest scores or largest magnitudes.
        max_samples : int or None, default=100
            Audit at most this many queries, drawn at random (seeded by ``random_state``);
            None audits all.
        min_recall : float, default=0.9
            Warn when a mean ``R@m`` is lower.

        Returns
        -------
        result : sklearn.utils.Bunch
            As :func:`~sk_fastif.metrics.candidate_recall`, plus ``sample_indices`` (the rows
            of ``X`` audited).
        """
        from sklearn.utils import _safe_indexing

        from .metrics import candidate_recall
        from .neighbors import LowCandidateRecallWarning

        self._check_fitted()
        if self.candidates_ is None:
            raise ValueError(
                "the explainer has no candidates: there is no shortlist to audit. Set "
                "candidates=NNDescentCandidates(...) and fit again."
            )
        tops = [top] if isinstance(top, Integral) else list(top)
        k = self.candidates_.n_neighbors
        if any(isinstance(m, bool) or not isinstance(m, Integral) or m > k for m in tops):
            raise ValueError(
                f"top must hold integers of at most n_neighbors={k}: a shortlist of {k} cannot "
                f"hold a longer top list; got {top!r}."
            )
        if max_samples is not None and (
            isinstance(max_samples, bool) or not isinstance(max_samples, Integral)
            or max_samples < 1
        ):
            raise ValueError(
                f"max_samples must be None or a positive integer; got {max_samples!r}."
            )
        n = len(X)
        sample = np.arange(n)
        if max_samples is not None and n > max_samples:
            rng = check_random_state(self.random_state)
            sample = np.sort(rng.choice(n, size=max_samples, replace=False))
            X = _safe_indexing(X, sample)
            y = None if y is None else _safe_indexing(y, sample)
        result = candidate_recall(self, X, y, top=tops, kind=kind)
        result["sample_indices"] = sample
        for m in tops:
            if result.recall[m] < min_recall:
                warnings.warn(
                    f"The candidate shortlists hold only {result.recall[m]:.0%} of the true "
                    f"top-{m} {kind} training points (mean R@{m} over {len(sample)} queries; "
                    f"a random shortlist of {k} would hold {k / self.n_train_:.1%}). Raise the "
                    f"selector's n_neighbors (now {k}) or try another embedding.",
                    LowCandidateRecallWarning,
                    stacklevel=2,
                )
        return result

    def self_influence(self, X=None, y=None) -> np.ndarray:
        """Score of each point on itself, ``(1/n) g(z)ᵀ (H + λI)⁻¹ g(z)``.

        High self-influence flags points the model could not explain from the rest of the data,
        such as mislabeled ones. It needs each point's own gradient only, so ``candidates``
        does not change it.

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

        Raises
        ------
        DivergenceError
            When the solver diverges (e.g. a LiSSA ``scale`` that is too small). In a grid search,
            ``error_score=np.nan`` (the default) then ranks the setting last, with a warning
            carrying the message; ``error_score="raise"`` stops the search.
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
        Xt = self._transform(X)  # validated, preprocessed and in the net's dtype
        with self.bridge_._modes():  # skorch switches the module and criterion modes
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

    # ===================================================== scikit-learn cloning, params, pickling
    def __sklearn_clone__(self):
        """Clone every parameter except a fitted ``estimator``, which is kept by reference.

        :func:`sklearn.base.clone` would return an unfitted copy of a fitted skorch net, so a
        grid search over the explainer would retrain it (or fail). The explainer never modifies
        a fitted estimator, so sharing it between clones is safe. An unfitted estimator is
        cloned as usual (and :meth:`fit` trains a clone of it).
        """
        if not _is_prefit(self.estimator):
            return super().__sklearn_clone__()
        params = self.get_params(deep=False)
        new = type(self)(
            **{k: v if k == "estimator" else clone(v, safe=False) for k, v in params.items()}
        )
        for attr in ("_metadata_request", "_sklearn_output_config"):  # as sklearn's clone
            if attr in self.__dict__:
                setattr(new, attr, copy.deepcopy(self.__dict__[attr]))
        return new

    def set_params(self, **params):
        """Set the parameters of this explainer, including nested ones (``solver__depth``).

        Unknown names raise a ``ValueError`` that suggests the closest valid name. Nested
        parameters of a *fitted* ``estimator`` cannot be set: it is used as is and never
        retrained, so they would have no effect on the explanations (set them on an unfitted
        net, which :meth:`fit` then trains).

        Parameters
        ----------
        **params : dict
            Explainer parameters, ``<component>__<parameter>`` for nested ones.

        Returns
        -------
        self : InfluenceExplainer
        """
        if params:
            self._check_param_names(params)
        return super().set_params(**params)

    def _check_param_names(self, params: dict) -> None:
        own = self.get_params(deep=False)
        valid: dict[str, list[str]] = {}
        for name, current in own.items():
            value = params.get(name, current)
            valid[name] = []
            if hasattr(value, "get_params") and not isinstance(value, type):
                valid[name] = sorted(value.get_params(deep=True))
        names = set(own) | {f"{n}__{sub}" for n, subs in valid.items() for sub in subs}
        for key in params:
            head, delim, sub = key.partition("__")
            if delim and head == "estimator" and "estimator" not in params:
                if _is_prefit(own["estimator"]):
                    raise ValueError(
                        f"Cannot set {key!r}: the explainer's estimator is fitted and is used as "
                        "is, never retrained, so its parameters have no effect on the "
                        "explanations. Pass an unfitted net to tune it (fit then trains a "
                        "clone), or set the parameter on the net itself."
                    )
            if key in names:
                continue
            if delim and head in own and params.get(head, own[head]) is None:
                hint = " (None means LiSSA())" if head == "solver" else ""
                raise ValueError(
                    f"Invalid parameter {key!r}: {head} is None{hint}, so it has no parameter "
                    f"{sub!r}. Set {head} to an estimator first, e.g. "
                    f"set_params({head}=..., {key}=...)."
                )
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            if delim and head in own:
                listing = f"Valid parameters of {head} are: {valid[head]!r}."
            else:
                listing = f"Valid parameters are: {sorted(own)!r}."
            raise ValueError(
                f"Invalid parameter {key!r} for estimator {type(self).__name__}.{hint} {listing}"
            )

    def __getstate__(self):
        state = super().__getstate__()
        solver, op = state.get("solver_"), state.get("_op")
        if solver is not None and op is not None and solver._is_prepared_for(op):
            # The solver drops its operator when pickled; remember that it was prepared for
            # ours so that its factorisation / automatic scale is reused after loading, and
            # explanations stay identical without refitting.
            state = dict(state, _solver_was_prepared=True)
        return state

    def __setstate__(self, state):
        prepared = state.pop("_solver_was_prepared", False)
        super().__setstate__(state)
        if prepared:
            self.solver_._mark_prepared(self._op)

