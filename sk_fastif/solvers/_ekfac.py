"""EKFAC: eigenvalue-corrected Kronecker-factored iHVPs, without curvature products."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._curvature import FactoredCurvature, KroneckerFactors, apply_inverse
from .._sklearn_compat import Interval, StrOptions
from ._base import BaseSolver, CurvatureOperator, DivergenceError, SolveResult, _work_dtype

__all__ = ["EKFAC", "KroneckerFactors"]


def require_factored(op: CurvatureOperator, who: str) -> FactoredCurvature:
    """``op.factored``, or a ValueError saying that ``who`` needs the net behind the operator.

    The factored view is computed by the curvature layer from the net and the training data;
    the solver only asks it for factors.
    """
    factored = getattr(op, "factored", None)
    if factored is None:
        raise ValueError(
            f"{who} needs the net and training data behind the curvature operator "
            "(CurvatureOperator.factored), for the Kronecker factors of its layers; this "
            "operator has none (it was built from products only, e.g. from a matrix). Use it "
            "through InfluenceExplainer or InfluenceEngine, or use Exact, CG or LiSSA.")
    n = int(factored.n_params)
    if n != int(op.n_params):
        raise ValueError(f"{who}: the operator has n_params={op.n_params} but its net's "
                         f"selected parameters have {n}.")
    return factored


class EKFAC(BaseSolver):
    """Eigenvalue-corrected Kronecker-factored (EK-FAC) approximation of the curvature.

    Approximates the Gauss-Newton (Fisher) curvature of the mean training loss block-diagonally
    over the selected ``torch.nn.Linear`` layers, each block a Kronecker product in its
    eigenbasis with corrected eigenvalues (George et al., 2018; Grosse et al., 2023), and
    solves with it in closed form: no curvature-vector product, only two passes over the
    training data in :meth:`prepare`. Fast and approximate: its answers are not the exact
    ``(H + damping I)^{-1} g`` of :class:`Exact` or :class:`CG`; how far they are is measured
    by ``InfluenceExplainer.score`` (the residual against the true curvature) and in the
    documentation's benchmark.

    For a layer ``s = W a + b`` with ``ã = [a; 1]`` (the 1 only when the bias is selected),
    :meth:`prepare` computes

    1. in one pass, ``A = mean_i ã_i ã_iᵀ`` and ``S = mean_i sum_k g_ik g_ikᵀ``, where
       ``g_ik`` back-propagates to ``s`` the probe ``u_ik`` of point ``i``: the columns of a
       square root of ``∂²l_i/∂f²``, the Hessian of the net's own loss with respect to its
       output ``f`` (see ``mc_samples``), so that ``sum_k J_iᵀ u_ik u_ikᵀ J_i`` is point
       ``i``'s Gauss-Newton matrix; then the eigendecompositions ``A = Q_A diag(a) Q_Aᵀ`` and
       ``S = Q_S diag(s) Q_Sᵀ``;
    2. in a second pass, the corrected eigenvalues
       ``Λ[o, j] = mean_i sum_k ((Q_Sᵀ g_ik)[o] (Q_Aᵀ ã_i)[j])²``: the exact diagonal of the
       layer's Gauss-Newton block in the eigenbasis ``Q_S ⊗ Q_A``, where K-FAC would use
       ``s[o] a[j]``.

    :meth:`solve` rotates each layer's block of the right-hand sides into the eigenbasis,
    divides by ``Λ + damping`` and rotates back.

    Parameters
    ----------
    damping : float or "auto", default=1e-3
        The ``lambda >= 0`` of ``(H + lambda I)^{-1}``, the same meaning for every solver:
        ``"auto"`` is the rule of :func:`~sk_fastif.solvers.auto_damping` on the operator's
        curvature (60 curvature products in :meth:`prepare`).
    mc_samples : int or None, default=None
        How the output-space Hessian ``∂²l_i/∂f²`` of each point enters. None: exactly, through
        its eigendecomposition (one backward pass per output of the net, e.g. 10 for a
        10-class classifier); the factors are then deterministic and, for a single Linear layer
        under a squared loss, EK-FAC is the exact Gauss-Newton matrix. An int ``k``: ``k``
        random Gaussian combinations of those directions per point (``k`` backward passes),
        unbiased for the same matrix: the loss-agnostic form of the pseudo-targets sampled from
        the net's predictive distribution (for a cross-entropy loss both have the
        covariance ``diag(p) - p pᵀ``), for nets with many outputs.
    random_state : int, RandomState instance or None, default=None
        Seeds the probes of an integer ``mc_samples`` (both passes use the same probes); not
        used when ``mc_samples`` is None. An int gives the same factors at every
        :meth:`prepare`.

    Attributes
    ----------
    layers_ : list of str
        The module names of the factored Linear layers, in the order of the parameters.
    factors_ : list of KroneckerFactors
        Per layer: the eigenvalues and eigenvectors of ``A`` and ``S`` and the corrected
        eigenvalues (float64, on the CPU, whatever the net's device).
    n_hvp_prepare_ : int
        Curvature-vector products spent by :meth:`prepare` (60 with ``damping="auto"``, else 0).

    Raises
    ------
    ValueError
        From :meth:`prepare`, when a selected parameter is not the weight or bias of a
        ``torch.nn.Linear`` layer (the message names them and suggests ``params=``), when a
        layer is applied more than once per forward pass, or when the operator carries no
        net (``CurvatureOperator.factored`` is None, e.g. an operator built from a matrix).
    DivergenceError
        From :meth:`solve` with ``damping=0`` when some corrected eigenvalue is zero.

    Notes
    -----
    EKFAC approximates the Gauss-Newton matrix whatever the operator's curvature: with
    ``curvature="hessian"`` it leaves out the Hessian's second-order term, so its answers
    approximate the Gauss-Newton ones (only ``damping="auto"`` reads the operator's Hessian).
    Cross-layer blocks are dropped (block-diagonal). For inputs with more dimensions than
    ``(batch, features)`` (a Linear layer applied at several positions), ``A`` and ``S`` sum
    over positions, and the corrected eigenvalues use the exact per-point gradient (summed
    over positions). The negative part of the output Hessian of a loss that is not convex in
    the output is dropped (the losses of skorch's nets are convex).

    A solve spends no curvature product (``n_hvp`` is 0 unless it had to prepare) and has no
    iterations: its ``trace`` is empty, ``n_iter`` is 0 and ``converged`` True. Its ``info``
    holds ``"layers"`` and ``"factor_shapes"`` (per layer, the sizes of ``S`` and ``A``).
    ``damping`` is not part of the prepared state: changing it reuses the factors. The
    arithmetic is in float64 (``op.dtype`` on Apple MPS); the factors pickle with the solver
    and are keyed on the operator's fingerprint, like the other solvers' prepared state.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetRegressor
    >>> from sk_fastif import InfluenceExplainer
    >>> from sk_fastif.solvers import EKFAC, Exact
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randn(50, 3).astype("float32"); y = X @ np.ones((3, 1), "float32")
    >>> net = NeuralNetRegressor(torch.nn.Linear, module__in_features=3, module__out_features=1,
    ...                          max_epochs=5, lr=0.1, train_split=None, verbose=0).fit(X, y)
    >>> ekfac = InfluenceExplainer(net, solver=EKFAC(damping=0.01)).fit(X, y)
    >>> ekfac.solver_.layers_, [f.block.shape for f in ekfac.solver_.factors_]
    ([''], [(1, 4)])
    >>> exact = InfluenceExplainer(net, solver=Exact(damping=0.01)).fit(X, y)
    >>> # one Linear layer under a squared loss: K-FAC is exact
    >>> np.allclose(ekfac.influences(X[:3], y[:3]), exact.influences(X[:3], y[:3]), rtol=1e-4)
    True
    """

    _parameter_constraints: dict = {
        "damping": [Interval(Real, 0.0, None, closed="left"), StrOptions({"auto"})],
        "mc_samples": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(self, *, damping: float | str = 1e-3, mc_samples: int | None = None,
                 random_state: int | np.random.RandomState | None = None) -> None:
        self.damping = damping
        self.mc_samples = mc_samples
        self.random_state = random_state

    def _prepare_key(self) -> tuple:
        if self.mc_samples is None:
            return (None,)
        return (int(self.mc_samples), self.random_state)

    def _prepare(self, op: CurvatureOperator) -> int:
        """Compute the factors of the selected Linear layers (two passes, no products)."""
        factored = require_factored(op, "EKFAC")
        seed = None
        if self.mc_samples is not None:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        factors = factored.factors(self.mc_samples, seed)
        self.factors_ = factors
        self.layers_ = [f.block.layer for f in factors]
        return 0

    def _check_params(self, op: CurvatureOperator) -> None:
        super()._check_params(op)
        require_factored(op, "EKFAC")

    def _solve(self, op: CurvatureOperator, G: torch.Tensor) -> SolveResult:
        """Apply the damped inverse of the EK-FAC curvature to every row of ``G``."""
        damping = self._damping()
        if damping == 0:
            smallest = min(float(f.eigenvalues.min()) for f in self.factors_)
            if smallest <= 0:
                raise DivergenceError(
                    f"EKFAC with damping=0: a corrected eigenvalue is {smallest:.3g}, so the "
                    f"approximate curvature is singular. Use damping > 0.")
        wd = _work_dtype(op)
        S = apply_inverse(self.factors_, G.detach().to(wd), damping, n_params=int(op.n_params))
        info = {"layers": list(self.layers_),
                "factor_shapes": [(f.block.n_out, f.block.n_cols) for f in self.factors_]}
        return SolveResult(solution=S.to(op.dtype), trace=[], n_hvp=0, converged=True,
                           n_iter=0, info=info)

    def _nonfinite_message(self, op: CurvatureOperator) -> str:
        return (f"EKFAC produced non-finite values (damping={self._damping():g}): the net's "
                "loss or its output Hessian is not finite. Raise `damping` or check the model.")
