"""scikit-learn glue: the prefit-sharing clone, the ``set_params`` hints, and the one door to
scikit-learn's private helpers (parameter validation, sample counting), so that a change there
is mended in this file alone."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable

from sklearn.base import BaseEstimator, clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    InvalidParameterError,
    StrOptions,
    make_constraint,
    validate_parameter_constraints,
    validate_params,
)
from sklearn.utils.validation import _num_samples as num_samples
from sklearn.utils.validation import validate_data

__all__ = [
    "FrozenEstimator",
    "HasMethods",
    "Interval",
    "InvalidParameterError",
    "StrOptions",
    "make_constraint",
    "num_samples",
    "validate_parameter_constraints",
    "validate_params",
    "PrefitSharingMixin",
    "check_param_names",
    "clone_sharing_prefit",
    "discard_fit",
    "validate_data",
]


def clone_sharing_prefit(estimator: BaseEstimator, name: str = "estimator") -> BaseEstimator:
    """Clone every parameter of ``estimator`` except ``name``, which is kept by reference.

    :func:`sklearn.base.clone` would return an unfitted copy of a fitted skorch net, so a grid
    search over a meta-estimator that never modifies its fitted inner estimator would retrain it
    (or fail). Sharing it between clones is safe then.
    """
    params = estimator.get_params(deep=False)
    new = type(estimator)(
        **{k: v if k == name else clone(v, safe=False) for k, v in params.items()}
    )
    for attr in ("_metadata_request", "_sklearn_output_config"):  # as sklearn's clone
        if attr in estimator.__dict__:
            setattr(new, attr, copy.deepcopy(estimator.__dict__[attr]))
    return new


def check_param_names(estimator: BaseEstimator, params: dict,
                      is_prefit: Callable[[object], bool]) -> None:
    """Refuse unknown or ineffective ``set_params`` names with a hint at the right one.

    Unknown names get the closest valid name ("did you mean ...?", as skorch does); nested
    parameters of a component set to None say so; nested parameters of a fitted ``estimator``
    (which is used as is, never retrained) are refused because they would have no effect.
    """
    own = estimator.get_params(deep=False)
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
            if is_prefit(own["estimator"]):
                raise ValueError(
                    f"Cannot set {key!r}: the explainer's estimator is fitted and is used as "
                    "is, never retrained, so its parameters have no effect on the "
                    "explanations. Pass an unfitted net to tune it (fit then trains a "
                    "clone), or set the parameter on the net itself."
                )
        if key in names:
            continue
        value = params.get(head, own.get(head)) if delim else None
        if delim and head in own and (value is None or isinstance(value, str)):
            what = "None" if value is None else repr(value)
            hint = " (chosen at fit: Exact or CG)" if head == "solver" and value == "auto" else ""
            raise ValueError(
                f"Invalid parameter {key!r}: {head} is {what}{hint}, so it has no parameter "
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
            f"Invalid parameter {key!r} for estimator {type(estimator).__name__}.{hint} {listing}"
        )


def discard_fit(estimator: BaseEstimator, private: tuple[str, ...] = ()) -> None:
    """Forget a previous fit, so that a failed or interrupted ``fit`` leaves no stale mixture.

    Deletes the fitted attributes (names ending in ``_``) and the ``private`` ones. Afterwards
    an estimator whose ``fit`` was interrupted is either not fitted or fully consistent.
    """
    for name in list(vars(estimator)):
        if (name.endswith("_") and not name.startswith("__")) or name in private:
            delattr(estimator, name)


class PrefitSharingMixin:
    """A meta-estimator over a prefit ``estimator`` that it never modifies.

    Clones share a fitted ``estimator`` (a grid search never retrains it), and ``set_params``
    refuses unknown or ineffective names with a hint (see :func:`check_param_names`). A
    subclass sets ``_is_prefit`` to the function telling whether an estimator is fitted.
    """

    _is_prefit: Callable[[object], bool] = staticmethod(lambda estimator: False)

    def __sklearn_clone__(self):
        """Clone every parameter except a fitted ``estimator``, which is kept by reference.

        :func:`sklearn.base.clone` would return an unfitted copy of a fitted skorch net, so a
        grid search over the explainer would retrain it (or fail). The explainer never modifies
        a fitted estimator, so sharing it between clones is safe. An unfitted estimator is
        cloned as usual (and ``fit`` trains a clone of it).
        """
        if not type(self)._is_prefit(self.estimator):
            return super().__sklearn_clone__()
        return clone_sharing_prefit(self)

    def set_params(self, **params):
        """Set the parameters of this explainer, including nested ones (``solver__depth``).

        Unknown names raise a ``ValueError`` that suggests the closest valid name. Nested
        parameters of a *fitted* ``estimator`` cannot be set: it is used as is and never
        retrained, so they would have no effect on the explanations (set them on an unfitted
        net, which ``fit`` then trains).

        Parameters
        ----------
        **params : dict
            Explainer parameters, ``<component>__<parameter>`` for nested ones.

        Returns
        -------
        self : estimator
        """
        if params:
            check_param_names(self, params, type(self)._is_prefit)
        return super().set_params(**params)
