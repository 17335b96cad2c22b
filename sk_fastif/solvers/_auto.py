"""The solver ``solver="auto"`` chooses: exact when the curvature matrix is small, else CG."""

from __future__ import annotations

import logging

from ._base import BaseSolver
from ._cg import CG
from ._exact import Exact

# Below this many parameters the explicit matrix (n_params products, once per fit) costs about
# what 10 block-CG iterations on 50 test points cost, and every later call is free; above it
# block CG is cheaper and its cost does not grow with n_params squared.
EXACT_MAX_PARAMS = 512
# The default's stopping rule: block CG to a relative residual of 1e-2. On the 1,733- and
# 4,906-parameter tanh MLPs of benchmarks/speed.py (50 and 20 test points, damping 0.05) its
# scores agreed with Exact's at per-row Pearson >= 0.9999 and Spearman >= 0.9996, in 7 and 8
# iterations; 3e-2 fell to a per-row Spearman of 0.989 on a digits MLP at damping="auto", and
# 1e-1 to 0.98.
AUTO_CG_TOL = 1e-2

_LOG = logging.getLogger("sk_fastif")


def auto_solver(n_params: int) -> BaseSolver:
    """The solver of ``InfluenceExplainer(solver="auto")`` for ``n_params`` parameters.

    ``Exact(damping="auto")`` when ``n_params <= 512`` (the explicit matrix is cheap, and
    free to reuse), otherwise block conjugate gradients to a relative residual of 1e-2:
    ``CG(damping="auto", tol=1e-2, block=True)``, whose scores agreed with the exact ones
    at per-row Pearson and Spearman correlations of at least 0.99 on the benchmark problems
    (``benchmarks/speed.py``), at a fraction of the cost of an exact solve. For answers exact
    to 1e-6, use ``CG(damping=..., block=True)``. ``set_params(damping=λ)`` gives the same
    rule at a fixed damping. The choice is logged at INFO on the ``sk_fastif`` logger.

    Parameters
    ----------
    n_params : int
        Number of parameters differentiated.

    Returns
    -------
    BaseSolver
        A new, unprepared solver.

    Examples
    --------
    >>> from sk_fastif.solvers import auto_solver
    >>> auto_solver(170)
    Exact(damping='auto')
    >>> auto_solver(2410)
    CG(block=True, damping='auto', tol=0.01)
    """
    if n_params <= EXACT_MAX_PARAMS:
        solver = Exact(damping="auto")
    else:
        solver = CG(damping="auto", tol=AUTO_CG_TOL, block=True)
    _LOG.info('solver="auto": %r for %d parameters', solver, n_params)
    return solver
