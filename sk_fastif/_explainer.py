"""InfluenceExplainer: the scikit-learn face of the influence engine.

Parameters and their constraints, the input transform, one engine call per public method and
the wrapping of its results. The computation itself lives in :mod:`sk_fastif._engine`.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from . import _batch as rows_of
from . import _net
from . import _ranking as ranking
from . import _sklearn_compat as compat
from . import _validation as val
from ._correct import ApplicationsMixin
from ._engine import InfluenceEngine
from ._explanation import Explanation
from ._inputs import InputTransformer, is_dataset
from ._parallel import Dispatcher, ParallelEngine, check_devices
from ._random import fit_seeds, needs_seed, seed_selector, seed_solver
from .metrics import candidate_recall
from .neighbors import BaseCandidates, warn_low_recall
from .solvers import BaseSolver

__all__ = ["InfluenceExplainer"]

_PRIVATE_FIT_STATE = ("_inputs",)


class InfluenceExplainer(ApplicationsMixin, compat.PrefitSharingMixin, MetaEstimatorMixin,
                         BaseEstimator):
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
        A skorch ``NeuralNetClassifier``, ``NeuralNetBinaryClassifier``, ``NeuralNetRegressor``
        or ``NeuralNet``, a ``Pipeline`` ending in one, or a ``FrozenEstimator`` of either. A
        fitted one is used as is, never modified, and shared by clones of the explainer (a grid
        search never retrains it); an unfitted one is cloned and trained by :meth:`fit`.
    solver : Exact, CG, LiSSA or "auto", default="auto"
        The inverse-Hessian-vector-product solver; its ``damping_`` is ``λ`` above. ``"auto"``:
        ``Exact(damping="auto")`` up to 4,096 parameters, else ``CG(damping="auto")`` (see
        :func:`~sk_fastif.solvers.auto_solver`; the choice is ``solver_``).
    candidates : BaseCandidates or None, default=None
        ``None`` scores every training point. A selector from :mod:`sk_fastif.neighbors` scores
        only each test point's ``n_neighbors`` nearest training points in the net's feature
        space (FastIF's pruning) or, for ``GradientSketchCandidates``, those of highest sketched
        score in gradient space, computing training gradients once per distinct candidate of a
        call; :meth:`influences` then returns a sparse matrix. The curvature still uses the
        whole training set. Check the shortlists with :meth:`audit_candidates`.
    params : list of str or None, default=None
        Parameters to differentiate: ``None`` for all trainable parameters, otherwise module names
        or parameter-name prefixes (e.g. ``["output"]`` for the last layer only, as FastIF does).
    curvature : {"gauss_newton", "hessian"}, default="gauss_newton"
        ``"gauss_newton"``: the generalised Gauss-Newton matrix, positive semi-definite for losses
        convex in the net's output (cross-entropy, MSE, BCE), so ``H + λI`` is positive definite
        for any ``λ > 0``; equal to the Hessian for a model linear in its parameters.
        ``"hessian"``: the exact Hessian of the mean training loss (often indefinite for a net).
    batch_size : int, default=128
        Samples (and right-hand sides) processed together: the memory knob (on a GPU, raise it).
    n_jobs : int or None, default=None
        joblib workers for the solves, LiSSA's chains, the scoring passes and self-influence:
        ``None`` means 1 unless a :func:`joblib.parallel_config` context says otherwise, ``-1``
        all cores. Any joblib backend (loky, threading, Dask); results do not depend on it
        (see :doc:`/scaling`).
    devices : list of str or None, default=None
        Devices the workers are bound to, round-robin (e.g. ``["cuda:0", "cuda:1"]``); ``None``
        uses the net's device. A device that does not exist is refused by :meth:`fit`.
    random_state : int, RandomState instance or None, default=None
        :meth:`fit` draws one :class:`numpy.random.SeedSequence` from it (``None``: from numpy's
        global generator) and spawns the seeds of a stochastic solver whose own
        ``random_state`` is not an integer, of a selector whose own is None, of the audit
        sample and, for an unfitted estimator, of its training (within
        :func:`torch.random.fork_rng`). A fitted explainer gives the same results whatever
        ``batch_size`` and whichever test points are explained together; an int makes them
        reproducible across runs.
    verbose : int, default=0
        ``> 0`` shows progress bars for passes over the training set.

    Attributes
    ----------
    fitted_estimator_ : estimator
        The estimator used: ``estimator`` itself when it was fitted, otherwise a fitted clone.
    net_ : skorch.NeuralNet
        The net inside it.
    engine_ : InfluenceEngine
        The computation: gradients, curvature operator, prepared solver, training tensors.
    solver_ : BaseSolver
        The prepared clone of ``solver`` (the engine's).
    candidates_ : BaseCandidates or None
        The fitted clone of ``candidates`` (holding the neighbour index), or None.
    task_ : Task
        The net's task kind (classifier, binary, regressor) and target encoding.
    seeds_ : FitSeeds
        The seeds spawned by :meth:`fit`.
    devices_ : list of torch.device
        The devices of ``devices``, checked.
    n_params_, param_names_ : int, list of str
        Number and names of the parameters differentiated.
    n_train_ : int
        Number of training points ``n``.
    y_train_ : ndarray
        The training targets.
    n_features_in_, feature_names_in_ : int, ndarray
        Features seen in :meth:`fit` (names for a DataFrame), checked as in scikit-learn.
    last_solve_ : SolveResult or None
        Trace of the most recent solve (for convergence checks).

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

    _is_prefit = staticmethod(_net.is_prefit)
    _parameter_constraints: dict = {
        "estimator": "no_validation",
        "solver": [BaseSolver, StrOptions({"auto"})],
        "candidates": [BaseCandidates, None],
        "params": [list, tuple, str, None],
        "curvature": [StrOptions({"hessian", "gauss_newton"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [Integral, None],
        "devices": [list, tuple, str, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, estimator, *, solver="auto", candidates=None, params=None,
                 curvature="gauss_newton", batch_size=128, n_jobs=None, devices=None,
                 random_state=None, verbose=0):
        self.estimator = estimator
        self.solver = solver
        self.candidates = candidates
        self.params = params
        self.curvature = curvature
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.devices = devices
        self.random_state = random_state
        self.verbose = verbose

    # ================================================================================= fitting
    def fit(self, X, y=None):
        """Prepare influence computation for the training data ``(X, y)`` the net learned from.

        ``X`` is raw (a pipeline's preprocessing is applied here): any array, a dict of arrays
        or a Dataset (read lazily; ``y=None`` takes its targets). Returns ``self``.
        """
        self._validate_params()
        val.check_constructor_args(self)
        compat.discard_fit(self, _PRIVATE_FIT_STATE)
        pre, _ = _net.split_estimator(self.estimator)  # TypeError for non-skorch estimators
        val.check_fit_data(X, y, has_preprocessor=pre is not None)
        y = y if y is None or isinstance(y, torch.Tensor) else _net.numeric_target(y)
        solver = self.solver  # "auto": chosen by the engine once it knows the parameters
        seeds = fit_seeds(self.random_state, needed=not isinstance(solver, str)
                          and needs_seed(solver))
        fitted = self.estimator
        if not _net.is_fitted(fitted):
            fitted = _net.fit_clone(fitted, X, y, seeds.training if seeds.seeded else None)
        self.fitted_estimator_ = fitted
        pre, self.net_ = _net.split_estimator(fitted)
        _net.check_train_split(self.net_)
        # n_features_in_ and, for a DataFrame with string column names, feature_names_in_
        if not is_dataset(X) and not val.is_dict_input(X):  # feature counts, for arrays
            compat.validate_data(self, X, reset=True, skip_check_array=True)

        dtype = _net.param_dtype(self.net_) or torch.float32
        self._inputs = InputTransformer(pre, dtype, self.net_)
        Xt, y_items = self._inputs.fit_transform(X)
        y = val.dataset_targets(y, y_items)
        _net.check_net_accepts(self.net_, Xt, after_preprocessing=pre is not None)
        task = _net.Task.from_net(self.net_, Xt)
        yt = task.encode(y, rows_of.n_rows(Xt))
        self.task_ = task.with_train_labels(self.net_, yt)
        self.y_train_ = np.asarray(y)
        engine = InfluenceEngine.from_net(
            self.net_, Xt, yt, params=self.params, curvature=self.curvature,
            batch_size=self.batch_size, verbose=self.verbose,
            solver=solver if isinstance(solver, str) else seed_solver(clone(solver), seeds))
        self.solver_ = engine.solver
        try:
            engine.prepare()
        except ValueError as exc:  # an invalid solver setting: say which object holds it
            raise ValueError(f"solver={solver!r}: {exc}") from exc
        self.engine_ = engine
        self.devices_ = check_devices(self.devices, engine.device)
        self.n_train_, self.n_params_ = engine.n_train, engine.n_params
        self.param_names_ = list(engine.bridge.selected)
        self.seeds_ = seeds
        self.last_solve_ = None

        selector = None
        if self.candidates is not None:
            selector = seed_selector(clone(self.candidates), seeds).fit(self.net_, Xt,
                                                                        engine=engine)
        # set last: an interrupted fit leaves the explainer not fitted (see _check_fitted)
        self.candidates_ = selector
        return self

    # ================================================================================== inputs
    def _check_fitted(self):
        check_is_fitted(self, ["engine_", "solver_", "candidates_"])

    def parallel_engine(self) -> ParallelEngine:
        """The fitted engine, its heavy methods dispatched over ``n_jobs`` workers on ``devices``.

        Used by every public method; results do not depend on ``n_jobs`` or the backend.
        """
        self._check_fitted()
        return ParallelEngine(self.engine_, Dispatcher(self.n_jobs, self.devices_, self.verbose))

    def _check_features(self, X) -> None:
        if not is_dataset(X) and not val.is_dict_input(X):
            compat.validate_data(self, X, reset=False, skip_check_array=True)

    def as_engine_input(self, X, y=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Xt, yt)``: ``X`` and ``y`` checked, preprocessed and encoded as the engine takes them.

        The input of :attr:`engine_`'s methods (see the Architecture page); ``y=None`` gives
        the predicted labels (classifiers only). Tensors on the net's device.
        """
        self._check_fitted()
        Xt, y_items = self._inputs.transform(X, self._check_features)
        if y is None and y_items is not None:  # a Dataset that yields targets
            y = y_items
        if y is None:
            proba = _net.predict_proba_tensor(self.net_, Xt, self.batch_size)
            return Xt, self.task_.predicted_labels(proba)
        return Xt, self.task_.encode(y, rows_of.n_rows(Xt))

    def _factors(self, Xt, yt, query: str = "each",
                 consequence: str = "their influence scores are all 0") -> torch.Tensor:
        engine = self.parallel_engine()
        G = engine.gradients(Xt, yt)
        if query == "mean":
            G = G.mean(dim=0, keepdim=True)
        val.warn_zero_gradients(G, consequence, stacklevel=3)
        res = engine.factors(G)
        self.last_solve_ = res
        return res.solution

    def _shortlists(self, Xt, query: str, S) -> np.ndarray:
        indices, _ = self.candidates_.kneighbors(self.net_, Xt, query=query, factors=S)
        return np.sort(indices, axis=1)

    # ============================================================================ computation
    def influence_factors(self, X, y=None) -> np.ndarray:
        """The iHVPs ``(H + λI)⁻¹ g(z)`` of the test points' loss gradients.

        An array of shape ``(n_test, n_params_)``, the reusable part of every score:
        ``score(z, z_j) = factors[z] · g(z_j) / n``. ``y=None`` explains the predicted label.
        """
        Xt, yt = self.as_engine_input(X, y)
        return self._factors(Xt, yt, consequence="their influence factors are 0").cpu().numpy()

    def _scores(self, X, y, query: str):
        """Dense scores, or ``(values, pool)`` of each row's candidates, and the test labels."""
        val.check_query(query)
        Xt, yt = self.as_engine_input(X, y)
        S = self._factors(Xt, yt, query)
        labels = yt.cpu().numpy() if query == "each" else None
        engine = self.parallel_engine()
        if self.candidates_ is None:
            return engine.score_rows(S), None, labels
        pool = self._shortlists(Xt, query, S)
        return engine.score_candidates(S, pool), pool, labels

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
        scores, pool, _ = self._scores(X, y, query)
        return scores if pool is None else ranking.candidates_to_csr(scores, pool, self.n_train_)

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
        val.check_query(query)
        pruned = self.candidates_ is not None
        k = val.check_k(k, self.candidates_.n_neighbors if pruned else self.n_train_,
                        pruned=pruned)
        scores, pool, labels = self._scores(X, y, query)
        return ranking.explanation(scores, k, pool=pool, test_labels=labels,
                                   train_labels=self.y_train_)

    def audit_candidates(self, X, y=None, *, top=10, kind: str = "helpful",
                         max_samples: int | None = 100, min_recall: float = 0.9):
        """Measure the recall of the candidate shortlists on a sample of queries.

        Scores up to ``max_samples`` of the queries ``X`` (drawn with the seed spawned by
        :meth:`fit`) exhaustively, with the same iHVPs, and computes ``R@m``, the fraction of
        the true top-``m`` training points of ``kind`` that the shortlist holds: see
        :func:`sk_fastif.metrics.candidate_recall` for the arguments and the result, which
        also has ``sample_indices``. ``top`` may not exceed the selector's ``n_neighbors``.
        Warns :class:`~sk_fastif.neighbors.LowCandidateRecallWarning` when a mean ``R@m`` is
        below ``min_recall``: raise ``n_neighbors`` or try another ``embedding``. Costs one
        pass over the training gradients.
        """
        self._check_fitted()
        if self.candidates_ is None:
            raise ValueError(
                "the explainer has no candidates: there is no shortlist to audit. Set "
                "candidates=NNDescentCandidates(...) and fit again."
            )
        k = self.candidates_.n_neighbors
        tops = val.check_audit_args(top, max_samples, k)
        result = candidate_recall(self, X, y, top=tops, kind=kind, max_samples=max_samples,
                                  random_state=self.seeds_.audit)
        warn_low_recall(result, kind, min_recall, stacklevel=3)
        return result

    def self_influence(self, X=None, y=None) -> np.ndarray:
        """Score of each point on itself, ``(1/n) g(z)ᵀ (H + λI)⁻¹ g(z)``.

        High self-influence flags points the model could not explain from the rest of the data,
        such as mislabeled ones. It needs each point's own gradient only, so ``candidates``
        does not change it.

        ``X=None`` scores the training set with its labels; for other points ``y=None`` uses a
        classifier's predicted label (a regressor needs ``y``). Returns an array of shape (n,).
        """
        self._check_fitted()
        if X is None:
            if y is not None:
                raise ValueError("y given without X: pass both, or neither for the training set.")
            return self.parallel_engine().self_scores()
        return self.parallel_engine().self_scores(*self.as_engine_input(X, y))

    def score(self, X, y=None) -> float:
        """Minus the mean relative residual of the iHVPs: higher is better, 0 is exact.

        ``-mean_i ‖(H + λI) s_i − g_i‖ / ‖g_i‖`` with ``s_i`` the solver's answer for test point
        ``i``. It needs no reference solution, so a grid search over solver settings ranks them
        meaningfully by default. Points whose gradient is exactly zero are left out (with a
        warning); if every gradient is zero the score is 0.0.

        A solver that diverges raises :class:`~sk_fastif.solvers.DivergenceError`; in a grid
        search ``error_score=np.nan`` (the default) then ranks the setting last, with a warning
        carrying the message.
        """
        Xt, yt = self.as_engine_input(X, y)
        G = self.engine_.gradients(Xt, yt)
        val.warn_zero_gradients(G, "they are solved exactly (by 0) and left out of the score",
                                stacklevel=2)
        res = self.parallel_engine().factors(G)
        self.last_solve_ = res
        rel = self.engine_.residuals(res.solution, G)
        rel = rel[torch.isfinite(rel)]
        return 0.0 if rel.numel() == 0 else -float(rel.mean())

    # ============================================================================ delegation
    def _delegate(self, method: str, X):
        self._check_fitted()
        Xt, _ = self._inputs.transform(X, self._check_features)  # as the influences see it
        with _net.net_modes(self.net_):  # skorch switches the module and criterion modes
            return getattr(self.net_, method)(Xt)

    def predict(self, X):
        """Predictions of the explained estimator."""
        return self._delegate("predict", X)

    def predict_proba(self, X):
        """Class probabilities of the explained estimator."""
        return self._delegate("predict_proba", X)

    @property
    def classes_(self):
        """Classes of the explained classifier."""
        self._check_fitted()
        return getattr(self.net_, "classes_", None)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True
        return tags
