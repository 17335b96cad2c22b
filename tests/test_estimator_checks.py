"""scikit-learn's estimator checks over the explainer and the solvers, and parameter validation."""

import inspect

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif.solvers import CG, BaseSolver, Exact, LiSSA

_CHECK_OPTIONS = inspect.signature(parametrize_with_checks).parameters


class Summary(torch.nn.Module):
    """A classifier of any number of features: a linear layer on each row's mean and mean square.

    The checks fit data with 1 to 10 features; this module accepts them all.
    """

    def __init__(self, n_classes=4):
        super().__init__()
        self.lin = torch.nn.Linear(2, n_classes)

    def forward(self, X):
        return self.lin(torch.stack([X.mean(dim=1), (X**2).mean(dim=1)], dim=1))


def small_net():
    return NeuralNetClassifier(Summary, criterion=torch.nn.CrossEntropyLoss, max_epochs=2,
                               lr=0.1, train_split=None, verbose=0)


# A solver is not fitted on (X, y): InfluenceExplainer.fit prepares it on the curvature operator
# of the training loss (``prepare(op)``, then ``solve(op, G)``). The checks below call ``fit``
# (or, for the sparse / NaN / empty-data checks, expect ``fit`` to refuse bad X), so they cannot
# apply; the API checks (cloning, get/set_params, __init__, repr, tags) run and pass.
_SOLVER_HAS_NO_FIT = (
    "a solver has no fit(X, y): the explainer prepares it on a curvature operator"
)
_SOLVER_FIT_CHECKS = (
    "check_complex_data",
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_dtype_object",
    "check_estimator_sparse_array",
    "check_estimator_sparse_matrix",
    "check_estimator_sparse_tag",
    "check_estimators_dtypes",
    "check_estimators_empty_data_messages",
    "check_estimators_fit_returns_self",
    "check_estimators_nan_inf",
    "check_estimators_overwrite_params",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_fit1d",
    "check_fit2d_1feature",
    "check_fit2d_1sample",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_pipeline_consistency",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
)


def _expected_failed_checks(estimator):
    if isinstance(estimator, BaseSolver):
        return dict.fromkeys(_SOLVER_FIT_CHECKS, _SOLVER_HAS_NO_FIT)
    return {}  # the explainer passes every check that applies to it


@parametrize_with_checks(
    [
        # Exact: the checks' data sets are tiny (LiSSA's default batch_size=32 exceeds some)
        InfluenceExplainer(small_net(), solver=Exact(damping=1e-2)),
        InfluenceExplainer(small_net(), solver=CG(damping=1e-2, max_iter=5),
                           curvature="gauss_newton"),
        Exact(),
        CG(),
        LiSSA(),
    ],
    expected_failed_checks=_expected_failed_checks,
    # strict xfails (an expected failure that passes is an error) where scikit-learn has them
    **({"xfail_strict": True} if "xfail_strict" in _CHECK_OPTIONS else {}),
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_explainer_parameter_validation():
    # scikit-learn's own check: every constraint of _parameter_constraints is enforced by fit
    check_param_validation("InfluenceExplainer", InfluenceExplainer(small_net(), solver=Exact()))


@pytest.mark.parametrize(
    ("name", "value"),
    [("solver", "lissa"), ("curvature", "fisher"), ("batch_size", 0), ("params", 3),
     ("random_state", "seed"), ("verbose", -1)],
)
def test_invalid_parameter_names_the_parameter(name, value):
    rng = np.random.RandomState(0)
    X, y = rng.rand(12, 3).astype(np.float32), np.arange(12) % 2
    params = {"solver": Exact(), name: value}
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        InfluenceExplainer(small_net(), **params).fit(X, y)
