"""The net's feature space: embedding hooks and the base of the selectors that search it.

:class:`FeatureSpaceCandidates` embeds rows with the fitted net (the input of its last linear
layer, a submodule's output, the input itself or a callable) and leaves the index to its
subclasses (``_build_index(E)``, ``_query(E, k)``).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted

from .. import _inputs as rows_of
from .._net import eval_mode
from .._sklearn_compat import Interval
from ._base import BaseCandidates, SearchContext

__all__ = ["FeatureSpaceCandidates"]


def _as_tensor(net, X) -> torch.Tensor:
    """The net's input as a tensor on the device and in the dtype of the net's parameters."""
    param = next(net.module_.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else None
    if isinstance(X, rows_of.DatasetRows):
        return X  # read by chunks
    if isinstance(X, dict):
        return {k: _as_tensor(net, v) for k, v in X.items()}
    if isinstance(X, torch.Tensor):
        X = X.detach()
        if dtype is not None and X.dtype.is_floating_point:
            X = X.to(dtype)
        return X.to(device)
    X = np.asarray(X)
    if dtype is not None and X.dtype.kind == "f":
        return torch.as_tensor(X, dtype=dtype, device=device)
    return torch.as_tensor(X, device=device)


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"the hooked module returned a {type(out).__name__}, not a tensor; pass a callable "
        "embedding=(net, X) -> array instead."
    )


class FeatureSpaceCandidates(BaseCandidates):
    """Base of the selectors that search the net's feature space (kNN over embeddings).

    Subclasses implement ``_build_index(E)`` (store what is needed to search the rows of the
    embedding ``E``) and ``_query(E, k)`` (the ``(indices, distances)`` of the ``k`` nearest
    indexed rows of each row of ``E``, nearest first). They read the context's ``net`` and
    ``X`` only.

    Parameters
    ----------
    n_neighbors : int
        Number of candidates per query (``k``).
    embedding : {"penultimate", "input"}, str, or callable
        The feature space the neighbours are searched in:

        * ``"penultimate"``: the input of the net's last ``torch.nn.Linear`` layer (the last one
          run in a forward pass), i.e. the features the output layer reads. FastIF's choice (the
          pooled representation of the fine-tuned model) and the right default: points the model
          sees as alike are the ones whose gradients align.
        * ``"input"``: the net's input, i.e. ``X`` after any pipeline preprocessing, flattened.
          Useful for models without a linear output layer or when the raw features are already
          meaningful (tabular data after scaling).
        * the name of a submodule of ``net.module_`` (as in ``named_modules()``): its output,
          flattened; e.g. a hidden block's activations.
        * a callable ``embedding(net, X) -> array of shape (n, d)``: ``X`` is the net's input as a
          tensor on the net's device. Called in eval mode under ``torch.no_grad()``, in chunks of
          ``batch_size`` rows.
    metric : str or callable
        The distance, passed to the index (see the subclass).
    batch_size : int
        Rows per forward pass when embedding.

    Examples
    --------
    >>> from sk_fastif.neighbors import ExactCandidates, FeatureSpaceCandidates
    >>> issubclass(ExactCandidates, FeatureSpaceCandidates)
    True
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "embedding": [str, callable],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def _resolve_embedding(self, net, Xt: torch.Tensor) -> str | None:
        """Check the embedding against the net; return the hooked module's name (or None)."""
        emb = self.embedding
        if callable(emb) or emb == "input":
            return None
        modules = dict(net.module_.named_modules())
        if emb == "penultimate":
            order: list[str] = []
            handles = [
                m.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
                for name, m in modules.items()
                if isinstance(m, torch.nn.Linear)
            ]
            try:
                with eval_mode(net.module_), torch.no_grad():
                    net.infer(rows_of.first(Xt, 2))
            finally:
                for h in handles:
                    h.remove()
            if not order:
                raise ValueError(
                    "embedding='penultimate' needs a torch.nn.Linear layer in the net's module, "
                    "and the forward pass ran none. Pass embedding='input', the name of a "
                    "submodule or a callable (net, X) -> array."
                )
            return order[-1]
        if emb not in modules or emb == "":
            names = [n for n in modules if n]
            raise ValueError(
                f"embedding={emb!r} is not 'penultimate', 'input', a callable, or the name of a "
                f"submodule of the net's module. Submodule names: {names}."
            )
        return emb

    def embed(self, net, X) -> np.ndarray:
        """Embed the net's inputs ``X`` in the selector's feature space.

        Parameters
        ----------
        net : skorch.NeuralNet
            The fitted net (left unchanged: its modules' train/eval modes are restored).
        X : array-like or torch.Tensor of shape (n, ...)
            The net's input (after any pipeline preprocessing).

        Returns
        -------
        E : ndarray of shape (n, d), float32
        """
        check_is_fitted(self, "n_samples_fit_")
        return self._embed(net, X, self.embedding_module_)

    def _embed(self, net, X, module_name: str | None) -> np.ndarray:
        Xt = _as_tensor(net, X)
        n = rows_of.n_rows(Xt)
        emb = self.embedding
        if emb == "input":
            if not isinstance(Xt, torch.Tensor):
                raise ValueError(
                    "embedding='input' needs the net's input as one array; for a dict or a "
                    "Dataset pass embedding='penultimate', a submodule's name or a callable."
                )
            E = Xt.reshape(n, -1).cpu().numpy()
        else:
            captured: list[torch.Tensor] = []
            handle = None
            if module_name is not None:
                module = dict(net.module_.named_modules())[module_name]
                if emb == "penultimate":

                    def hook(mod, inp, out):  # the input of the last linear layer
                        captured[:] = [inp[0]]
                else:

                    def hook(mod, inp, out):
                        captured[:] = [_first_tensor(out)]

                handle = module.register_forward_hook(hook)
            blocks = []
            try:
                with eval_mode(net.module_), torch.no_grad():
                    for start in range(0, n, self.batch_size):
                        chunk = rows_of.take(Xt, slice(start, start + self.batch_size))
                        m = rows_of.n_rows(chunk)
                        if callable(emb):
                            block = emb(net, chunk)
                            if isinstance(block, torch.Tensor):
                                block = block.detach().cpu().numpy()
                            block = np.asarray(block)
                        else:
                            captured.clear()
                            net.infer(chunk)
                            if not captured:
                                raise ValueError(
                                    f"embedding={emb!r}: module {module_name!r} did not run in "
                                    "the forward pass."
                                )
                            block = captured[0].detach().reshape(m, -1).cpu().numpy()
                        if block.ndim != 2 or block.shape[0] != m:
                            raise ValueError(
                                f"the embedding of {m} rows has shape {block.shape}; "
                                f"expected ({m}, d)."
                            )
                        blocks.append(block)
            finally:
                if handle is not None:
                    handle.remove()
            E = np.concatenate(blocks) if blocks else np.zeros((0, 0))
        E = check_array(E, dtype=np.float32, ensure_all_finite=True, input_name="embedding",
                        ensure_min_samples=1)
        return np.ascontiguousarray(E, dtype=np.float32)

    # ------------------------------------------------------------------------------ the hooks
    def _fit(self, context: SearchContext) -> None:
        Xt = _as_tensor(context.net, context.X)
        self.embedding_module_ = self._resolve_embedding(context.net, Xt)
        E = self._embed(context.net, Xt, self.embedding_module_)
        self.embedding_dim_ = int(E.shape[1])
        self.n_samples_fit_ = len(E)  # the index's own queries check against it
        self._build_index(E)

    def _kneighbors(self, context: SearchContext, k: int, query: str
                    ) -> tuple[np.ndarray, np.ndarray]:
        E = self._embed(context.net, context.X, self.embedding_module_)
        if E.shape[1] != self.embedding_dim_:
            raise ValueError(
                f"the test embedding has {E.shape[1]} dimensions but the training embedding "
                f"had {self.embedding_dim_}."
            )
        if query == "mean":
            E = E.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        return self._query(E, k)

    def _build_index(self, E: np.ndarray) -> None:
        raise NotImplementedError

    def _query(self, E: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError
