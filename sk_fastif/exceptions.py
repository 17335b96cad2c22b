"""The library's warnings and errors, in one place (like :mod:`sklearn.exceptions`).

They are also importable from where they are raised (:mod:`sk_fastif.solvers`,
:mod:`sk_fastif.neighbors`, :mod:`sk_fastif`).
"""

__all__ = [
    "CurvatureTooLargeError",
    "DivergenceError",
    "IndefiniteCurvatureWarning",
    "LiSSADepthWarning",
    "LowCandidateRecallWarning",
    "ScaleRestartWarning",
    "StoreError",
    "TrainSplitWarning",
]


class DivergenceError(ArithmeticError):
    """Raised when an iterative solver diverges or produces non-finite values.

    The message names the setting to change (``scale``, ``damping`` or ``curvature``).

    Examples
    --------
    >>> import torch
    >>> from sk_fastif.solvers import CurvatureOperator
    >>> H = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))  # an explicit curvature
    >>> op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
    ...                        n_params=2, n_samples=100, dtype=torch.float64)
    >>> from sk_fastif.solvers import DivergenceError, LiSSA
    >>> G = torch.ones(1, 2, dtype=torch.float64)
    >>> try:  # scale must exceed half of H's largest eigenvalue, 2
    ...     LiSSA(damping=0.0, scale=0.5, depth=100, random_state=0).solve(op, G)
    ... except DivergenceError as exc:
    ...     print(str(exc)[:28])
    LiSSA diverged: at step 5 of
    """


class IndefiniteCurvatureWarning(UserWarning):
    """Warned when ``H + damping * I`` is not positive definite (influences are then unreliable).

    Examples
    --------
    >>> import warnings, torch
    >>> from sk_fastif.solvers import CurvatureOperator, Exact, IndefiniteCurvatureWarning
    >>> H = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))  # indefinite
    >>> op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
    ...                        n_params=2, n_samples=100, dtype=torch.float64)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = Exact(damping=0.1).prepare(op)
    >>> caught[0].category is IndefiniteCurvatureWarning
    True
    """


class ScaleRestartWarning(UserWarning):
    """Warned when LiSSA with ``scale="auto"`` diverged and restarts with a doubled scale.

    The restart is recorded in the solver's ``restarts_`` and in the solve's ``info``. To make
    a restart an error instead (e.g. in a benchmark that must not change its scale), filter it:

    Examples
    --------
    >>> import warnings
    >>> from sk_fastif.solvers import ScaleRestartWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", ScaleRestartWarning)
    ...     # explainer.fit(...) or explainer.influences(...) here would raise on a restart
    """


class CurvatureTooLargeError(MemoryError):
    """Raised by :class:`Exact` when the explicit ``P x P`` curvature would not fit in memory.

    Raised before any curvature product; the message says how much memory was needed.

    Examples
    --------
    >>> from sk_fastif.solvers import CurvatureOperator, CurvatureTooLargeError, Exact
    >>> huge = CurvatureOperator(matvec=None, batch_matvec=None, n_params=10**7, n_samples=10)
    >>> try:
    ...     Exact().prepare(huge)
    ... except CurvatureTooLargeError as exc:
    ...     print(str(exc)[:58])
    Exact needs the explicit n_params x n_params curvature mat
    """


class LiSSADepthWarning(UserWarning):
    """Warned when LiSSA's ``depth`` truncates its series, or when ``depth="auto"`` is long.

    A truncated series estimates ``(H + λI)^{-1} g`` only along directions of large curvature:
    along flat ones it behaves as if the damping were about ``scale / depth`` instead of ``λ``.

    Examples
    --------
    >>> import warnings
    >>> import torch
    >>> from sk_fastif.solvers import CurvatureOperator, LiSSA, LiSSADepthWarning
    >>> H = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    >>> op = CurvatureOperator(matvec=lambda V: V @ H, batch_matvec=lambda V, idx: V @ H,
    ...                        n_params=2, n_samples=1, dtype=torch.float64)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = LiSSA(damping=0.01, scale=2.0, depth=50, batch_size=1).solve(op, torch.ones((1, 2)))
    >>> [w.category.__name__ for w in caught]
    ['LiSSADepthWarning']
    """


class TrainSplitWarning(UserWarning):
    """Warned by :meth:`InfluenceExplainer.fit` when the net held out part of its training data.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceExplainer, TrainSplitWarning
    >>> X = np.random.RandomState(0).randn(50, 3).astype("float32")
    >>> y = (X[:, 0] > 0).astype("int64")
    >>> net = NeuralNetClassifier(torch.nn.Linear(3, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=1, verbose=0).fit(X, y)  # skorch's ValidSplit(5)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = InfluenceExplainer(net).fit(X, y)
    >>> any(w.category is TrainSplitWarning for w in caught)
    True
    """


class LowCandidateRecallWarning(UserWarning):
    """Warned by :meth:`InfluenceExplainer.audit_candidates` when the shortlist misses too many
    of the truly most influential training points: raise the selector's ``n_neighbors``.

    Examples
    --------
    >>> import warnings
    >>> from sk_fastif.neighbors import LowCandidateRecallWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", LowCandidateRecallWarning)  # audits then raise
    ...     issubclass(LowCandidateRecallWarning, UserWarning)
    True
    """


class StoreError(ValueError):
    """Raised when the gradient store in ``memory`` cannot be used by this explainer.

    The store is gone (an unpickled explainer whose directory was deleted), incomplete, of
    another format version, or was written for another net, parameter selection or training
    data. A store is never reused when it does not match: the message names the directory to
    delete.

    Examples
    --------
    >>> from sk_fastif.exceptions import StoreError
    >>> issubclass(StoreError, ValueError)
    True
    """
