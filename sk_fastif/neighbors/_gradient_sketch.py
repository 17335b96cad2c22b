"""Shortlists in gradient space: sketches of per-sample gradients and their top-k search.

:class:`GradientSketchCandidates` with the machinery behind it, which sees the gradients only as
a re-iterable stream of ``(slice, block)`` pairs and the queries as a matrix:

* :func:`random_basis`: a Gaussian or an orthogonal random projection (Johnson-Lindenstrauss).
* :func:`gradient_basis`: the top right singular vectors of the gradient matrix, found by a
  randomized range finder (Halko, Martinsson & Tropp 2011, algorithm 4.4) that reads the
  gradients in streaming passes and never holds more than one block of them.
* :func:`project_stream`: one pass that stores the sketch ``G @ basis`` of every row.
* :func:`top_inner_products`: the exact top-k of ``queries @ sketch.T`` by chunked products.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.utils import check_array, check_random_state
from sklearn.utils.validation import check_is_fitted

from .._sklearn_compat import Interval, StrOptions
from ._base import BaseCandidates, GradientStream, SearchContext

__all__ = ["GradientSketchCandidates", "gradient_basis", "project_stream", "random_basis",
           "top_inner_products"]

_KINDS = ("helpful", "harmful", "abs")


def random_basis(n_params: int, n_components: int, kind: str, seed: int) -> np.ndarray:
    """A random projection matrix of shape ``(n_params, n_components)``, float32.

    ``"gaussian"``: independent ``N(0, 1/n_components)`` entries. ``"orthogonal"``: orthonormal
    columns (the Q factor of a Gaussian matrix, signs fixed by R's diagonal) scaled by
    ``sqrt(n_params / n_components)``. Either way ``E[(Pᵀa)·(Pᵀb)] = a·b``; with
    ``n_components == n_params`` the orthogonal one preserves every inner product exactly.
    """
    omega = np.random.default_rng(seed).standard_normal((n_params, n_components),
                                                        dtype=np.float32)
    if kind == "gaussian":
        return omega / np.float32(np.sqrt(n_components))
    if kind != "orthogonal":
        raise ValueError(f"unknown random projection {kind!r}.")
    q, r = np.linalg.qr(omega.astype(np.float64))
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)
    return (q * np.sqrt(n_params / n_components)).astype(np.float32)


def _orth(M: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(M.double())[0].to(M.dtype)


def _times(stream: GradientStream, M: torch.Tensor) -> torch.Tensor:
    """``G @ M`` for the streamed ``G``, shape ``(n, M.shape[1])``."""
    return torch.cat([G @ M.to(G.device, G.dtype) for _, G in stream()])


def _t_times(stream: GradientStream, Y: torch.Tensor, n_params: int) -> torch.Tensor:
    """``Gᵀ @ Y`` for the streamed ``G``, shape ``(n_params, Y.shape[1])``, accumulated."""
    W = None
    for sl, G in stream():
        block = G.T @ Y[sl].to(G.device, G.dtype)
        W = block if W is None else W + block
    return W if W is not None else Y.new_zeros((n_params, Y.shape[1]))


def gradient_basis(stream: GradientStream, n_params: int, n_components: int, *, n_iter: int,
                   n_oversamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``n_components`` right singular vectors of the streamed gradient matrix ``G``.

    A randomized range finder over the rows of ``G``: ``Y = G Ω`` for a Gaussian ``Ω`` with
    ``n_components + n_oversamples`` columns (at most ``n_params``), ``n_iter`` power iterations
    ``Y ← G orth(Gᵀ orth(Y))``, then ``B = orth(Y)ᵀ G`` and the SVD of ``B``. Passes over the
    gradients: ``2 + 2 * n_iter``.

    Returns
    -------
    basis : ndarray of shape (n_params, n_components), float32
        Orthonormal columns, the leading right singular vectors first.
    singular_values : ndarray of shape (n_components,)
        Their singular values (estimates).
    """
    width = min(n_components + n_oversamples, n_params)
    gen = np.random.default_rng(seed)
    omega = torch.from_numpy(gen.standard_normal((n_params, width), dtype=np.float32))
    Y = _times(stream, omega)
    for _ in range(n_iter):
        W = _orth(_t_times(stream, _orth(Y), n_params))
        Y = _times(stream, W)
    Bt = _t_times(stream, _orth(Y), n_params)  # (Qᵀ G)ᵀ
    U, s, _ = torch.linalg.svd(Bt.double().cpu(), full_matrices=False)
    basis = U[:, :n_components].float().numpy()
    return np.ascontiguousarray(basis), s[:n_components].numpy()


def project_stream(stream: GradientStream, basis: np.ndarray, n_rows: int
                   ) -> tuple[np.ndarray, float]:
    """The sketch ``G @ basis`` of every streamed row, and ``‖G‖_F²``, in one pass."""
    out = np.empty((n_rows, basis.shape[1]), dtype=np.float32)
    P = torch.from_numpy(basis)
    total = 0.0
    for sl, G in stream():
        out[sl] = (G @ P.to(G.device, G.dtype)).cpu().numpy()
        total += float(G.double().pow(2).sum())
    return out, total


def top_inner_products(Z: np.ndarray, sketch: np.ndarray, k: int, kind: str,
                       max_elements: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``sketch`` with the highest (``kind``) inner products with each ``Z`` row.

    ``"helpful"``: the largest values of ``Z @ sketch.T``; ``"harmful"``: the smallest;
    ``"abs"``: the largest magnitudes. Exact, by products over chunks of queries holding at most
    ``max_elements`` values. Returns ``(indices, values)`` of shape ``(len(Z), k)``, best first.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}; got {kind!r}.")
    n = len(sketch)
    step = max(1, max_elements // max(n, 1))
    S = torch.from_numpy(np.ascontiguousarray(sketch, dtype=np.float32))
    Zt = torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float32))
    indices = np.empty((len(Z), k), dtype=np.int64)
    values = np.empty((len(Z), k), dtype=np.float32)
    for start in range(0, len(Z), step):
        V = Zt[start : start + step] @ S.T
        key = V if kind == "helpful" else (-V if kind == "harmful" else V.abs())
        idx = torch.topk(key, k, dim=1, sorted=True).indices
        indices[start : start + step] = idx.numpy()
        values[start : start + step] = torch.gather(V, 1, idx).numpy()
    return indices, values


class GradientSketchCandidates(BaseCandidates):
    """Training points with the highest sketched influence scores: search in gradient space.

    The feature-space selectors bet that the most influential training points lie near the test
    point in the net's features; this one ranks by (an estimate of) the score itself. A score is
    the inner product ``(1/n) s · g_j`` of the test point's iHVP ``s = (H + λI)⁻¹ g(z)`` with
    the training gradient ``g_j``; with a projection ``P`` of shape ``(n_params, n_components)``
    it is estimated by ``(1/n) (Pᵀs) · (Pᵀg_j)``. :meth:`fit` computes ``Pᵀg_j`` for every
    training point in streaming passes over the training gradients (never all held at once) and
    stores these sketches; ``kneighbors`` projects the test points' factors and returns the
    ``n_neighbors`` training points of highest estimated score (exact top-k by chunked matrix
    products, ``n_train * n_components`` multiply-adds per query whatever the net's size). The
    explainer then scores the candidates exactly, as with every selector.

    Parameters
    ----------
    n_neighbors : int, default=100
        Number of candidates per test point.
    n_components : int, default=256
        Dimension of the sketch, at most the number of parameters differentiated (``fit`` says
        so otherwise). Memory: ``n_train * n_components`` float32 for the sketches and
        ``n_params * n_components`` for the projection, both kept by the fitted selector.
    projection : {"svd", "orthogonal", "gaussian"}, default="svd"
        ``"svd"``: the leading right singular vectors of the training-gradient matrix (a
        randomized range finder over the streamed gradients, ``2 + 2 * n_iter`` passes plus one
        for the sketches): the subspace where the training gradients have most of their energy,
        so the sketch keeps the inner products that matter with few components.
        ``"orthogonal"``: random orthonormal directions, scaled so that sketched inner products
        are unbiased; with ``n_components`` equal to the number of parameters every inner
        product, and so the shortlist, is exact. ``"gaussian"``: a Gaussian random projection.
        The random projections take one pass.
    kind : {"abs", "helpful", "harmful"}, default="abs"
        The training points shortlisted: the highest estimated scores (``"helpful"``), the
        lowest (``"harmful"``) or the largest magnitudes (``"abs"``, which serves both lists of
        :meth:`~sk_fastif.InfluenceExplainer.explain`).
    n_iter : int, default=1
        Power iterations of the ``"svd"`` range finder (each costs two passes over the training
        gradients and sharpens the subspace). Not used by the random projections.
    batch_size : int, default=256
        Training points per block of gradients in the passes of :meth:`fit`.
    random_state : int, RandomState instance or None, default=None
        Seeds the projection (and the range finder's test matrix). An int makes the sketch and
        every shortlist reproducible. :class:`~sk_fastif.InfluenceExplainer` seeds it from its
        own ``random_state`` when this is None.

    Attributes
    ----------
    components_ : ndarray of shape (n_params, n_components), float32
        The projection ``P``.
    sketch_ : ndarray of shape (n_samples_fit_, n_components), float32
        ``Pᵀg_j`` of every training point.
    captured_energy_ : float or None
        ``"svd"`` and ``"orthogonal"``: the fraction of the training gradients' squared norm
        (``‖G‖_F²``) in the span of ``P``; near 1 means the sketch keeps nearly all of the
        gradients. None for ``"gaussian"``.
    singular_values_ : ndarray of shape (n_components,) or None
        ``"svd"``: estimates of the training-gradient matrix's leading singular values.
    n_samples_fit_ : int
        Number of training points sketched.
    n_params_ : int
        Number of parameters of the gradients.

    See Also
    --------
    ExactCandidates, NNDescentCandidates : Shortlists in the net's feature space.

    Notes
    -----
    The shortlists need the rows' gradient stream at ``fit`` and the queries' factors at
    ``kneighbors``, both in the :class:`SearchContext`; the scoring pipeline passes both, for
    the training set and for an outside pool alike. The fitted selector holds
    no reference to the net or the engine, so it pickles on its own. For the difference between
    the projections, their recall and costs, see the Candidate pruning page of the user guide.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skorch import NeuralNetClassifier
    >>> from sk_fastif import InfluenceEngine
    >>> from sk_fastif.neighbors import GradientSketchCandidates
    >>> from sk_fastif.solvers import Exact
    >>> rng = np.random.RandomState(0)
    >>> X = torch.as_tensor(rng.randn(60, 4).astype("float32")); y = (X[:, 0] > 0).long()
    >>> net = NeuralNetClassifier(torch.nn.Linear(4, 2), criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=5, lr=0.5, train_split=None, verbose=0).fit(X, y)
    >>> engine = InfluenceEngine.from_net(net, X, y, solver=Exact(damping=0.01)).prepare()
    >>> sel = GradientSketchCandidates(n_neighbors=5, n_components=10, projection="orthogonal",
    ...                                kind="helpful", random_state=0)
    >>> sel = sel.fit(engine.search_context())  # the training rows and their gradients
    >>> S = engine.factors(engine.gradients(X[:3], y[:3])).solution  # the test points' iHVPs
    >>> indices, estimates = sel.kneighbors(engine.search_context(X[:3], factors=S))
    >>> indices.shape
    (3, 5)
    >>> # 10 components for 10 parameters, orthogonal: the true top 5 by exact scores
    >>> truth = np.argsort(-engine.score_rows(S), axis=1)[:, :5]
    >>> bool((np.sort(indices, axis=1) == np.sort(truth, axis=1)).all())
    True
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "projection": [StrOptions({"svd", "orthogonal", "gaussian"})],
        "kind": [StrOptions({"abs", "helpful", "harmful"})],
        "n_iter": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    _N_OVERSAMPLES = 10

    def __init__(
        self,
        n_neighbors: int = 100,
        *,
        n_components: int = 256,
        projection: str = "svd",
        kind: str = "abs",
        n_iter: int = 1,
        batch_size: int = 256,
        random_state=None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.n_components = n_components
        self.projection = projection
        self.kind = kind
        self.n_iter = n_iter
        self.batch_size = batch_size
        self.random_state = random_state

    def _fit(self, context: SearchContext) -> None:
        """Sketch the loss gradient of every row of ``context`` (its gradient stream)."""
        if context.gradients is None or context.n_params is None:
            raise ValueError(
                "GradientSketchCandidates searches in gradient space and needs the rows' "
                "gradient stream: fit it with InfluenceEngine.search_context() "
                "(InfluenceExplainer(candidates=...) does so)."
            )
        n, p = context.n_rows, int(context.n_params)
        if self.n_components > p:
            raise ValueError(
                f"n_components={self.n_components} exceeds the number of parameters {p} (the "
                f"dimension of the gradients); use n_components <= {p}."
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        def stream():  # blocks of this selector's batch_size rows
            return context.gradients(self.batch_size)

        self.singular_values_ = None
        if self.projection == "svd":
            basis, self.singular_values_ = gradient_basis(
                stream, p, self.n_components, n_iter=self.n_iter,
                n_oversamples=self._N_OVERSAMPLES, seed=seed)
        else:
            basis = random_basis(p, self.n_components, self.projection, seed)
        sketch, total = project_stream(stream, basis, n)
        kept = float(np.square(sketch, dtype=np.float64).sum())
        scale = {"svd": 1.0, "orthogonal": self.n_components / p}.get(self.projection)
        self.captured_energy_ = None if scale is None else kept * scale / max(total, 1e-300)
        self.components_ = basis
        self.sketch_ = sketch
        self.n_params_ = p

    def transform(self, V) -> np.ndarray:
        """Project rows of gradients or factors (shape ``(m, n_params_)``) into the sketch space.

        Returns an ndarray of shape ``(m, n_components)``, float32: ``V @ components_``.
        """
        check_is_fitted(self, "sketch_")
        if isinstance(V, torch.Tensor):
            V = V.detach().to("cpu", torch.float32).numpy()
        V = check_array(V, dtype=np.float32, input_name="factors")
        if V.shape[1] != self.n_params_:
            raise ValueError(
                f"factors have {V.shape[1]} columns but the sketch was fitted on gradients of "
                f"{self.n_params_} parameters."
            )
        return V @ self.components_

    def _kneighbors(self, context: SearchContext, k: int, query: str
                    ) -> tuple[np.ndarray, np.ndarray]:
        """The rows of highest sketched score ``(1/n) (Pᵀs) · (Pᵀg_j)`` for the factors ``s``
        of the context (with ``query="mean"``, of their mean: the group's mean loss)."""
        if context.factors is None:
            raise ValueError(
                "GradientSketchCandidates ranks by sketched scores and needs the queries' "
                "iHVPs: SearchContext(..., factors=...)."
            )
        Z = self.transform(context.factors)
        n_test = context.n_rows
        allowed = (n_test,) if query == "each" else (1, n_test)
        if len(Z) not in allowed:
            raise ValueError(f"factors have {len(Z)} rows for {n_test} test points.")
        if query == "mean":
            Z = Z.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        indices, values = top_inner_products(Z, self.sketch_, k, self.kind)
        return indices, values / np.float32(self.n_samples_fit_)
