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
# The default's stopping rule: block CG to a relative residual of 2e-2. Its scores agreed with
# Exact's at a mean per-row Spearman of 0.9989 on the 1,733-parameter tanh MLP of
# benchmarks/speed.py (50 test points, the Hessian at damping 0.05; Pearson 0.9998, 6
# iterations against 9 at 1e-2), and on digits MLPs (Gauss-Newton, damping="auto", 200 and
# 400 rows, two seeds, 50 test points) at a smallest per-row Spearman of 0.993 and Pearson of
# 0.9987; 3e-2 fell to a smallest per-row Spearman of 0.986 there.
AUTO_CG_TOL = 2e-2
# The default keeps the search directions of its solves for the next ones (CG(recycle=...))
# while they take at most this many bytes (two float64 numbers per parameter and direction),
# and never more directions than parameters: five blocks of 50 test points on that MLP then
# took 888 products instead of 1,522.
RECYCLE_BYTES = 64 * 2**20

_LOG = logging.getLogger("sk_fastif")


def auto_solver(n_params: int) -> BaseSolver:
    """The solver of ``InfluenceExplainer(solver="auto")`` for ``n_params`` parameters.

    ``Exact(damping="auto")`` when ``n_params <= 512`` (the explicit matrix is cheap, and
    free to reuse), otherwise block conjugate gradients to a relative residual of 2e-2 that
    keeps its search directions for later solves (at most 64 MiB of them):
    ``CG(damping="auto", tol=2e-2, block=True, recycle=min(n_params, 2**22 // n_params))``,
    whose scores agreed with the exact ones at per-row Pearson and Spearman correlations of
    at least 0.99 on the benchmark problems (``benchmarks/speed.py``, digits MLPs), at a
    fraction of the cost of an exact solve; later solves start from the kept directions. For
    answers exact to 1e-6 that depend on their block alone, use ``CG(damping=...,
    block=True)``. ``set_params(damping=λ)`` gives the same rule at a fixed damping. The
    choice is logged at INFO on the ``sk_fastif`` logger.

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
    CG(block=True, damping='auto', recycle=1740, tol=0.02)
    """
    if n_params <= EXACT_MAX_PARAMS:
        solver = Exact(damping="auto")
    else:
        solver = CG(damping="auto", tol=AUTO_CG_TOL, block=True,
                    recycle=min(n_params, RECYCLE_BYTES // (16 * max(1, n_params))))
    _LOG.info('solver="auto": %r for %d parameters', solver, n_params)
    return solver

