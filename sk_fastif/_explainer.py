"""InfluenceExplainer: the scikit-learn face of the influence engine.

Parameters and their constraints, the input transform, one call of the engine's scoring
pipeline per public method and the wrapping of its results. The computation lives in
:mod:`sk_fastif._engine`, error correction in :mod:`sk_fastif._correct`.
"""

from __future__ import annotations

import os
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.utils.validation import check_is_fitted

from . import _inputs as rows_of
from . import _net
from . import _ranking as ranking
from . import _sklearn_compat as compat
from . import _validation as val
from ._correct import correct_net
from ._engine import InfluenceEngine, Scores
from ._explanation import Explanation
from ._inputs import is_dataset
from ._net import fit_inputs
from ._parallel import Dispatcher, check_devices
from ._random import fit_seeds, needs_seed, seed_selector, seed_solver
from ._sklearn_compat import HasMethods, Interval, StrOptions
from .metrics import candidate_recall
from .neighbors import BaseCandidates, warn_low_recall
from .solvers import BaseSolver, SolveResult

__all__ = ["InfluenceExplainer"]

_PRIVATE_FIT_STATE = ("_inputs", "_last_solve")


class InfluenceExplainer(compat.PrefitSharingMixin, MetaEstimatorMixin, BaseEstimator):
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
        ``Exact(damping="auto")`` up to 512 parameters, else block CG to 1e-2 (see
        :func:`~sk_fastif.solvers.auto_solver`; the choice is ``solver_``).
    candidates : BaseCandidates or None, default=None
        ``None`` scores every training point. A selector from :mod:`sk_fastif.neighbors` scores
        only each query's ``n_neighbors`` candidates (FastIF's pruning), in the training set or
        a pool; :meth:`influences` then returns a sparse matrix. The curvature still uses the
        whole training set. Check the shortlists with :meth:`audit_candidates`.
    params : list of str or None, default=None
        Parameters to differentiate: ``None`` for all trainable parameters, otherwise module names
        or parameter-name prefixes (e.g. ``["output"]`` for the last layer only, as FastIF does).
    curvature : {"gauss_newton", "hessian"}, default="gauss_newton"
        ``"gauss_newton"``: the generalised Gauss-Newton matrix, positive semi-definite for losses
        convex in the net's output (cross-entropy, MSE, BCE), so ``H + λI`` is positive definite
        for any ``λ > 0``; equal to the Hessian for a model linear in its parameters.
        ``"hessian"``: the exact Hessian of the mean training loss (often indefinite for a net).
    batch_size : int or "auto", default="auto"
        Rows per vectorised chunk (the memory knob); "auto": 2**15 (row, vector) pairs at most.
    n_jobs : int or None, default=None
        joblib workers for the solves, LiSSA's chains, the scoring passes and self-influence:
        ``None`` means 1 unless a :func:`joblib.parallel_config` context says otherwise, ``-1``
        all cores; 0 is refused (by :meth:`fit` and by every call). Any joblib backend (loky,
        threading, Dask); results do not depend on it (see :doc:`/scaling`).
    devices : list of str or None, default=None
        Devices the workers are bound to, round-robin (e.g. ``["cuda:0", "cuda:1"]``); ``None``
        uses the net's device. A device that does not exist is refused by :meth:`fit`.
    memory : str, path, joblib.Memory or None, default=None
        Directory where :meth:`fit` stores the training gradients (reused by fits of the same
        net, params and data; read in chunks; see :doc:`/scaling`). ``None``: in memory.
    random_state : int, RandomState instance or None, default=None
        :meth:`fit` spawns from it the seeds of a stochastic solver whose own ``random_state``
        is not an integer, of a selector whose own is None, of the audit sample and of an
        unfitted estimator's training. Results do not depend on ``batch_size`` or on which test
        points are explained together; an int makes them reproducible across runs.
    verbose : int, default=0
        ``> 0`` shows progress bars for passes over the training set.

    Attributes
    ----------
    fitted_estimator_, net_ : estimator, skorch.NeuralNet
        ``estimator`` itself when it was fitted, otherwise a fitted clone; the net inside it.
    engine_ : InfluenceEngine
        The computation and its one scoring pipeline (gradients, curvature, prepared solver).
    solver_, candidates_ : BaseSolver, BaseCandidates or None
        The prepared clone of ``solver``; the fitted clone of ``candidates``, or None.
    task_, seeds_, devices_ : Task, FitSeeds, list of torch.device
        The net's task kind and target encoding; the seeds spawned; the checked devices.
    n_params_, param_names_ : int, list of str
        Number and names of the parameters differentiated.
    n_train_ : int
        Number of training points ``n``.
    y_train_ : ndarray
        The training targets.
    n_features_in_, feature_names_in_ : int, ndarray
        Features seen in :meth:`fit` (names for a DataFrame), checked as in scikit-learn.
    last_solve_ : SolveResult or None
        Deprecated: the trace of the most recent solve. Use :meth:`solve`, which returns it.

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
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "n_jobs": [Interval(Integral, None, -1, closed="right"),
                   Interval(Integral, 1, None, closed="left"), None],
        "devices": [list, tuple, str, None],
        "memory": [str, os.PathLike, HasMethods(["cache"]), None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, estimator, *, solver="auto", candidates=None, params=None,
                 curvature="gauss_newton", batch_size="auto", n_jobs=None, devices=None,
                 memory=None, random_state=None, verbose=0):
        self.estimator = estimator
        self.solver = solver
        self.candidates = candidates
        self.params = params
        self.curvature = curvature
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.devices = devices
        self.memory = memory
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y=None):
        """Prepare influence computation for the training data ``(X, y)`` the net learned from.

        ``X`` is raw (a pipeline's preprocessing is applied here): any array, a dict of arrays
        or a Dataset (read lazily; ``y=None`` takes its targets). Returns ``self``.
        """
        self._validate_params()
        val.check_constructor_args(self)
        compat.discard_fit(self, _PRIVATE_FIT_STATE)
        pre, _ = _net.split_estimator(self.estimator)  # TypeError for non-skorch estimators
        rows_of.check_fit_data(X, y, has_preprocessor=pre is not None)
        y = y if y is None or isinstance(y, torch.Tensor) else rows_of.numeric_target(y)
        solver = self.solver  # "auto": chosen by the engine once it knows the parameters
        seeds = fit_seeds(self.random_state, needed=not isinstance(solver, str)
                          and needs_seed(solver))
        fitted = self.estimator
        if not _net.is_fitted(fitted):
            fitted = _net.fit_clone(fitted, X, y, seeds.training if seeds.seeded else None)
        self.fitted_estimator_ = fitted
        pre, self.net_ = _net.split_estimator(fitted)
        _net.check_train_split(self.net_)
        if not is_dataset(X) and not rows_of.is_dict_input(X):  # feature counts, for arrays
            compat.validate_data(self, X, reset=True, skip_check_array=True)
        self._inputs, Xt, yt, self.task_, self.y_train_ = fit_inputs(pre, self.net_, X, y)
        engine = InfluenceEngine.from_net(
            self.net_, Xt, yt, params=self.params, curvature=self.curvature,
            batch_size=self.batch_size, verbose=self.verbose,
            solver=solver if isinstance(solver, str) else seed_solver(clone(solver), seeds))
        self.solver_ = engine.use_store(self.memory).solver
        try:
            engine.prepare()
        except ValueError as exc:  # an invalid solver setting: say which object holds it
            raise ValueError(f"solver={solver!r}: {exc}") from exc
        self.engine_ = engine
        self.devices_ = check_devices(self.devices, engine.device)
        self.n_train_, self.n_params_ = engine.n_train, engine.n_params
        self.param_names_ = engine.param_names
        self.seeds_ = seeds
        self._last_solve = None
        selector = None
        if self.candidates is not None:
            selector = seed_selector(clone(self.candidates), seeds).fit(engine.search_context())
        # set last: an interrupted fit leaves the explainer not fitted (see _check_fitted)
        self.candidates_ = selector
        return self

    def _check_fitted(self):
        check_is_fitted(self, ["engine_", "solver_", "candidates_"])

    def parallel_engine(self) -> InfluenceEngine:
        """The fitted engine, bound to ``n_jobs`` workers on ``devices`` (its one pipeline).

        Used by every public method; a parameter changed after :meth:`fit` is checked here.
        """
        self._check_fitted()
        self._validate_params()
        return self.engine_.bind(Dispatcher(self.n_jobs, self.devices_, self.verbose))

    def _check_features(self, X) -> None:
        if not is_dataset(X) and not rows_of.is_dict_input(X):
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
            proba = _net.predict_proba_tensor(self.net_, Xt, self.engine_.batch_size)
            return Xt, self.task_.predicted_labels(proba)
        return Xt, self.task_.encode(y, rows_of.n_rows(Xt))

    def _pool_input(self, X_pool, y_pool) -> tuple[torch.Tensor, torch.Tensor]:
        """The pool as the engine takes it; errors name ``X_pool`` and ``y_pool``."""
        val.check_pool(X_pool, y_pool)
        with val.errors_naming(X="X_pool", y="y_pool"):
            return self.as_engine_input(X_pool, y_pool)

    def _scores(self, X, y, query: str, pool=None) -> tuple[Scores, np.ndarray | None]:
        """The pipeline's scores of the queries (X, y) and their encoded labels."""
        val.check_query(query)
        data = None if pool is None else self._pool_input(*pool)
        engine = self.parallel_engine()
        Xt, yt = self.as_engine_input(X, y)
        result = engine.scores(Xt, yt, data=data, selector=self.candidates_, query=query)
        self._last_solve = result.solve
        return result, (yt.cpu().numpy() if query == "each" else None)

    def _check_k(self, k, n_data: int) -> int:
        pruned = self.candidates_ is not None
        return val.check_k(k, self.candidates_.n_neighbors if pruned else n_data, pruned=pruned)

    def solve(self, X, y=None, *, query: str = "each") -> SolveResult:
        """Solve for the iHVPs of the test points and return them with the solver's trace.

        A :class:`~sk_fastif.solvers.SolveResult`: ``solution`` (one row per test point, or one
        for ``query="mean"``), ``trace``, ``n_hvp``, ``converged``, ``n_iter``.
        """
        self._check_fitted()
        val.check_query(query)
        engine = self.parallel_engine()
        return engine.solve_queries(*self.as_engine_input(X, y), query=query,
                                    consequence="their influence factors are 0")

    def influence_factors(self, X, y=None) -> np.ndarray:
        """The iHVPs ``(H + λI)⁻¹ g(z)`` of the test points' loss gradients.

        An array of shape ``(n_test, n_params_)``, the reusable part of every score:
        ``score(z, z_j) = factors[z] · g(z_j) / n``. ``y=None`` explains the predicted label.
        :meth:`solve` returns them with the solver's trace.
        """
        result = self.solve(X, y)
        self._last_solve = result
        return result.solution.cpu().numpy()

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
            ``"each"``: one row per test point. ``"mean"``: one row, the influence on the
            group's **mean** loss (the mean of the ``"each"`` rows); with ``candidates`` its
            shortlist comes from one query for the group (FastIF's mean-of-anchors query).

        Returns
        -------
        scores : ndarray of shape (n_rows, n_train_), or scipy.sparse.csr_matrix
            ``n_rows`` is ``n_test`` (or 1 for ``query="mean"``). Without ``candidates``, a dense
            array of all scores. With ``candidates``, a CSR matrix that stores exactly each
            row's ``n_neighbors`` candidates (``.indices``, sorted, explicit zeros kept); the
            other entries were **not scored**, which is not the same as a zero influence.
        """
        self._check_fitted()
        return ranking.as_matrix(self._scores(X, y, query)[0])

    def explain(self, X, y=None, *, k: int = 10, query: str = "each") -> Explanation:
        """Most helpful and most harmful training points for each test point.

        ``X``, ``y`` and ``query`` as in :meth:`influences`; ``k`` points are listed per kind,
        ranked among each query's candidates with ``candidates`` (so ``k`` may not exceed
        ``n_neighbors``). Returns an :class:`Explanation`: ``helpful_*`` the ``k`` highest scores
        (the points support the prediction), ``harmful_*`` the ``k`` lowest.
        """
        self._check_fitted()
        val.check_query(query)
        k = self._check_k(k, self.n_train_)
        result, labels = self._scores(X, y, query)
        return ranking.explanation(result.values, k, pool=result.candidates, test_labels=labels,
                                   train_labels=self.y_train_)

    def pool_influences(self, X, y=None, *, X_pool, y_pool, query: str = "each"):
        """Influence that points of an outside pool would have on each test point.

        ``(1/n) g(x_i)ᵀ (H + λI)⁻¹ g(p_j)``, the score pool point ``p_j`` would have as a
        training point (positive = adding it should lower the test loss); ``y_pool`` is
        required. Dense, or with ``candidates`` a CSR matrix of each row's candidates from a
        selector of the same settings fitted on the pool (see :meth:`influences`).
        """
        self._check_fitted()
        return ranking.as_matrix(self._scores(X, y, query, pool=(X_pool, y_pool))[0])

    def explain_pool(self, X, y=None, *, X_pool, y_pool, k: int = 10,
                     query: str = "each") -> Explanation:
        """Most helpful and most harmful points of an outside pool for each test point.

        Ranked by :meth:`pool_influences`: an :class:`Explanation` whose indices are rows of
        ``X_pool`` and ``train_labels`` the pool's labels.
        """
        self._check_fitted()
        k = self._check_k(k, val.check_pool(X_pool, y_pool))
        result, labels = self._scores(X, y, query, pool=(X_pool, y_pool))
        return ranking.explanation(result.values, k, pool=result.candidates, test_labels=labels,
                                   train_labels=np.asarray(y_pool))

    def audit_candidates(self, X, y=None, *, top=10, kind: str = "helpful",
                         max_samples: int | None = 100, min_recall: float = 0.9):
        """Measure the recall of the candidate shortlists on a sample of queries.

        :func:`sk_fastif.metrics.candidate_recall` (``R@m``, the fraction of the true top-``m``
        of ``kind`` that each shortlist holds) on up to ``max_samples`` of the queries ``X``,
        drawn with the seed spawned by :meth:`fit`; ``top`` may not exceed ``n_neighbors``.
        Warns :class:`~sk_fastif.neighbors.LowCandidateRecallWarning` when a mean ``R@m`` is
        below ``min_recall``: raise ``n_neighbors`` or try another ``embedding``.
        """
        self._check_fitted()
        if self.candidates_ is None:
            raise ValueError(
                "the explainer has no candidates: there is no shortlist to audit. Set "
                "candidates=NNDescentCandidates(...) and fit again."
            )
        tops = val.check_audit_args(top, max_samples, self.candidates_.n_neighbors)
        result = candidate_recall(self, X, y, top=tops, kind=kind, max_samples=max_samples,
                                  random_state=self.seeds_.audit)
        warn_low_recall(result, kind, min_recall, stacklevel=3)
        return result

    def self_influence(self, X=None, y=None) -> np.ndarray:
        """Score of each point on itself, ``(1/n) g(z)ᵀ (H + λI)⁻¹ g(z)``.

        High self-influence flags points the model could not explain from the rest of the data,
        such as mislabeled ones (``candidates`` does not change it). ``X=None`` scores the
        training set with its labels; ``y=None`` uses a classifier's predicted label.
        """
        self._check_fitted()
        if X is None:
            if y is not None:
                raise ValueError("y given without X: pass both, or neither for the training set.")
            return self.parallel_engine().self_scores()
        return self.parallel_engine().self_scores_data(*self.as_engine_input(X, y))

    def score(self, X, y=None) -> float:
        """Minus the mean relative residual of the iHVPs: higher is better, 0 is exact.

        ``-mean_i ‖(H + λI) s_i − g_i‖ / ‖g_i‖``: it needs no reference, so a grid search over
        solver settings ranks them meaningfully by default. Zero-gradient points are left out
        (with a warning). A diverging solver raises :class:`~sk_fastif.solvers.DivergenceError`
        (in a grid search, ``error_score=np.nan`` ranks the setting last).
        """
        engine = self.parallel_engine()
        score, self._last_solve = engine.residual_score(*self.as_engine_input(X, y))
        return score

    def correct(self, X, y, **options):
        """A copy of the net fine-tuned on the points most helpful for the examples it gets wrong.

        FastIF's error correction: see :func:`sk_fastif.correct_net` for the options
        (``n_steps``, ``n_anchors``, ``n_helpful``, ``lr``, ``strategy``, ``refresh``, ``X_pool``/
        ``y_pool``, ``X_val``/``y_val``, ``n_replay``, ``X_rest``/``y_rest``, ``max_rest_drop``,
        ``random_state``) and the result, a deep copy of :attr:`fitted_estimator_` carrying
        ``correction_history_``, ``correction_step_``; the user's estimator and this stay as-is.
        """
        self._check_fitted()
        return correct_net(self, X, y, **options)

    @property
    def last_solve_(self) -> SolveResult | None:
        """Deprecated: the trace of the latest solve; :meth:`solve` returns it."""
        warnings.warn("last_solve_ is deprecated and will be removed in the next release: "
                      "InfluenceExplainer.solve(X, y) returns the iHVPs with their trace.",
                      FutureWarning, stacklevel=2)
        self._check_fitted()
        return self._last_solve

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
