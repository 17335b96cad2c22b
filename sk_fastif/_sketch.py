"""Gradient sketches: projections of per-sample gradients and inner-product top-k search.

The machinery behind :class:`sk_fastif.neighbors.GradientSketchCandidates`, free of nets and
estimators: it sees the training gradients only as a re-iterable stream of ``(slice, block)``
pairs and the queries as a matrix.

* :func:`random_basis`: a Gaussian or an orthogonal random projection (Johnson-Lindenstrauss).
* :func:`gradient_basis`: the top right singular vectors of the training-gradient matrix, found
  by a randomized range finder (Halko, Martinsson & Tropp 2011, algorithm 4.4) that reads the
  gradients in streaming passes and never holds more than one block of them.
* :func:`project_stream`: one pass that stores the sketch ``G @ basis`` of every training point.
* :func:`top_inner_products`: the exact top-k of ``queries @ sketch.T`` by chunked products.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

__all__ = ["gradient_basis", "project_stream", "random_basis", "top_inner_products"]

GradientStream = Callable[[], Iterable[tuple[slice, torch.Tensor]]]

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
