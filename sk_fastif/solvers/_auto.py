"""The solver ``solver="auto"`` chooses: exact when the curvature matrix is small, else CG."""

from __future__ import annotations

import logging

from ._base import BaseSolver
from ._cg import CG
from ._exact import Exact

# Exact's explicit float64 matrix of this many parameters is 128 MiB (three copies at most while
# it is built), and its n_params curvature products cost about as much as 40 CG iterations on a
# block of 100 test points: below it, exact answers come at an everyday price.
EXACT_MAX_PARAMS = 4096

_LOG = logging.getLogger("sk_fastif")


def auto_solver(n_params: int) -> BaseSolver:
    """The solver of ``InfluenceExplainer(solver="auto")`` for ``n_params`` parameters.

    ``Exact(damping="auto")`` when ``n_params <= 4096`` (the explicit curvature matrix takes
    at most 128 MiB in float64), otherwise ``CG(damping="auto")``. Both are deterministic and
    converge to the same exact answer; with ``damping="auto"`` they also choose the same
    ``λ`` (:func:`~sk_fastif.solvers.auto_damping`). The choice is logged at INFO on the
    ``sk_fastif`` logger.

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
    >>> auto_solver(2410)
    Exact(damping='auto')
    >>> auto_solver(32702)
    CG(damping='auto')
    """
    solver = Exact(damping="auto") if n_params <= EXACT_MAX_PARAMS else CG(damping="auto")
    _LOG.info('solver="auto": %r for %d parameters', solver, n_params)
    return solver
