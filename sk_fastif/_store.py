"""The training set's per-sample gradients, kept for scoring: factored over Linear layers, or dense.

For a ``torch.nn.Linear`` layer ``s = W a + b`` applied once per sample, the gradient of the
loss ``l_i`` of training point ``i`` with respect to ``[W | b]`` is the outer product
``δ_i [a_iᵀ, 1]`` of the gradient ``δ_i = ∂l_i/∂s_i`` at the layer's output and the layer's input
``a_i``. Keeping ``a_i`` and ``δ_i`` (``n_in + n_out`` numbers per row and layer instead of
``n_out * (n_in + 1)``) is exact, not a projection, and the score of a vector ``v`` (per layer
``V = [V_W | v_b]``) is ``Σ_layers δ_iᵀ (V_W a_i + v_b)``: batched matrix products, with no
per-sample gradient formed. One forward and one backward pass over a chunk give the factors of
all its rows, where per-sample gradients need a vectorised backward pass per row.

:func:`keep_gradients` builds :class:`LinearFactors` when every selected parameter is the weight
or bias of a Linear layer that sees one input row per sample (inputs of shape
``(batch, n_in)``), and checks on the first rows that the outer products equal the per-sample
gradients (a weight also used outside its layer, or a net whose rows interact, fails the check);
otherwise it keeps :class:`DenseGradients`. Both answer the same two questions: ``dot(S, rows)``
(``S @ G[rows]ᵀ``) and ``gradients(rows)`` (dense rows, for shortlists). Both are plain tensors
row-aligned with the training set, the layout an on-disk gradient store keeps too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import vmap

from . import _gradients as grads
from . import _inputs as rows_of
from . import _validation as val
from ._curvature import KroneckerFactors, LayerRecorder, LinearBlock, linear_blocks
from ._net import VMAP_ERRORS
from .exceptions import StoreError

__all__ = ["DenseGradients", "KroneckerMemo", "LinearFactor", "LinearFactors", "STORE_FORMAT",
           "keep_gradients", "open_store", "store_root", "write_store"]

# A product with the kept gradients forms at most this many intermediate entries at a time.
_MAX_ENTRIES = 1 << 22


def _torch_dtype(dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _index(rows, n: int) -> slice | np.ndarray:
    """``rows`` (None: all ``n``) as a slice where they are consecutive, else int64 indices."""
    if rows is None:
        return slice(0, n)
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and bool(np.all(np.diff(idx) == 1)):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _count(index: slice | np.ndarray) -> int:
    return index.stop - index.start if isinstance(index, slice) else len(index)


def _rows(a, index: slice | np.ndarray, lo: int, hi: int, device) -> torch.Tensor:
    """Rows ``lo:hi`` of the selection ``index`` of ``a`` (a tensor, or a numpy array such as a
    read-only memory map, whose rows are copied), as a tensor on ``device``."""
    if isinstance(index, slice):
        part = a[index.start + lo:min(index.start + hi, index.stop)]
    elif isinstance(a, torch.Tensor):
        part = a[torch.as_tensor(index[lo:hi], device=a.device)]
    else:
        part = a[index[lo:hi]]
    if isinstance(part, np.ndarray):
        part = torch.from_numpy(np.array(part))  # off the memory map: a chunk in memory
    return part.to(device)


class DenseGradients:
    """Per-sample gradients as one ``(n_rows, n_params)`` array ``G``.

    ``G`` is a tensor, or a numpy array (a read-only memory map of an on-disk store) read in
    chunks of rows onto ``device``.
    """

    kind = "dense"

    def __init__(self, G, device=None) -> None:
        self.G = G
        self.device = torch.device(device if device is not None else
                                   G.device if isinstance(G, torch.Tensor) else "cpu")

    @property
    def n_rows(self) -> int:
        return int(self.G.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.G.nbytes)

    @property
    def dtype(self) -> torch.dtype:
        G = self.G
        return G.dtype if isinstance(G, torch.Tensor) else _torch_dtype(G.dtype)

    def dot(self, S: torch.Tensor, rows=None) -> torch.Tensor:
        """``S @ G[rows]ᵀ`` (None: every row), shape ``(len(S), n)``, in the gradients' dtype."""
        index = _index(rows, self.n_rows)
        n = _count(index)
        S = S.to(device=self.device, dtype=self.dtype)
        out = torch.empty(len(S), n, dtype=self.dtype, device=self.device)
        step = max(1, _MAX_ENTRIES // max(1, int(self.G.shape[1])))
        for lo in range(0, n, step):
            G = _rows(self.G, index, lo, lo + step, self.device)
            out[:, lo:lo + len(G)] = S @ G.T
        return out

    def gradients(self, rows) -> torch.Tensor:
        """The gradients of ``rows``, shape ``(len(rows), n_params)``."""
        index = _index(rows, self.n_rows)
        return _rows(self.G, index, 0, _count(index), self.device)

    def arrays(self) -> dict:
        """The arrays that make up this form, by their file names in a store."""
        return {"gradients": self.G}


@dataclass
class LinearFactor:
    """One Linear layer's factors over the kept rows.

    Attributes
    ----------
    block : LinearBlock
        The layer and where its selected weight and bias lie in ``theta``.
    inputs : torch.Tensor or ndarray of shape (n_rows, n_in), or None
        The layer's input of each row (None when its weight is not selected).
    output_grads : torch.Tensor or ndarray of shape (n_rows, n_out)
        The gradient of each row's loss at the layer's output.
    """

    block: LinearBlock
    inputs: torch.Tensor | np.ndarray | None
    output_grads: torch.Tensor | np.ndarray


class LinearFactors:
    """Per-sample gradients of Linear layers as their input and output-gradient factors.

    Parameters
    ----------
    layers : list of LinearFactor
        One per layer; together they cover every selected parameter. Their arrays are tensors,
        or numpy arrays (read-only memory maps of an on-disk store) read in chunks of rows.
    n_params : int
        The number of selected parameters.
    device : torch.device or None, default=None
        Where results are computed (None: the tensors' device).
    """

    kind = "linear_factors"

    def __init__(self, layers: list[LinearFactor], n_params: int, device=None) -> None:
        self.layers = layers
        self.n_params = int(n_params)
        first = layers[0].output_grads
        self.device = torch.device(device if device is not None else
                                   first.device if isinstance(first, torch.Tensor) else "cpu")
        self.dtype = (first.dtype if isinstance(first, torch.Tensor)
                      else _torch_dtype(first.dtype))

    @property
    def n_rows(self) -> int:
        return int(self.layers[0].output_grads.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(int(f.output_grads.nbytes) + (0 if f.inputs is None else int(f.inputs.nbytes))
                   for f in self.layers)

    def arrays(self) -> dict:
        """The arrays that make up this form, by their file names in a store."""
        out = {}
        for i, f in enumerate(self.layers):
            if f.inputs is not None:
                out[f"layer{i}.inputs"] = f.inputs
            out[f"layer{i}.output_grads"] = f.output_grads
        return out

    def dot(self, S: torch.Tensor, rows=None) -> torch.Tensor:
        """``S @ G[rows]ᵀ`` (None: every row), shape ``(len(S), n)``, without forming ``G``.

        The rows are read in chunks (each layer's intermediate at most ``_MAX_ENTRIES``).
        """
        index = _index(rows, self.n_rows)
        n = _count(index)
        S = S.to(device=self.device, dtype=self.dtype)
        m = S.shape[0]
        out = torch.zeros(m, n, dtype=self.dtype, device=self.device)
        for f in self.layers:
            b = f.block
            bias = None if b.bias is None else S[:, b.bias[0]:b.bias[1]]  # (m, n_out)
            if b.weight is not None:
                W = S[:, b.weight[0]:b.weight[1]].reshape(m, b.n_out, b.n_in)
                inputs_first = b.n_out <= b.n_in  # the smaller intermediate: (rows, m, min)
                if inputs_first:
                    M = W.reshape(m * b.n_out, b.n_in).T
                else:
                    M = W.permute(1, 0, 2).reshape(b.n_out, m * b.n_in)
            step = max(1, _MAX_ENTRIES // max(1, m * min(b.n_out, b.n_in)))
            for lo in range(0, n, step):
                Dc = _rows(f.output_grads, index, lo, lo + step, self.device)
                part = None if bias is None else Dc @ bias.T
                if b.weight is not None:
                    Ac = _rows(f.inputs, index, lo, lo + step, self.device)
                    if inputs_first:  # Σ_o δ_o (W a)_o
                        T = (Ac @ M).view(-1, m, b.n_out)
                        prod = torch.bmm(T, Dc[:, :, None])[..., 0]
                    else:  # Σ_j a_j (Wᵀ δ)_j
                        T = (Dc @ M).view(-1, m, b.n_in)
                        prod = torch.bmm(T, Ac[:, :, None])[..., 0]
                    part = prod if part is None else part + prod
                out[:, lo:lo + len(Dc)] += part.T
        return out

    def gradients(self, rows) -> torch.Tensor:
        """The dense gradients of ``rows``, shape ``(len(rows), n_params)`` (outer products)."""
        index = _index(rows, self.n_rows)
        n = _count(index)
        G = torch.empty(n, self.n_params, dtype=self.dtype, device=self.device)
        for f in self.layers:
            b = f.block
            D = _rows(f.output_grads, index, 0, n, self.device)
            if b.weight is not None:
                A = _rows(f.inputs, index, 0, n, self.device)
                G[:, b.weight[0]:b.weight[1]] = (D[:, :, None] * A[:, None, :]).reshape(n, -1)
            if b.bias is not None:
                G[:, b.bias[0]:b.bias[1]] = D
        return G


class _NotFactorable(Exception):
    """The net's gradients are not the outer products of its Linear layers' factors."""


def _summed_losses(bridge, F: torch.Tensor, X, y: torch.Tensor) -> torch.Tensor:
    """The sum of the per-sample losses of the outputs ``F`` of a chunk."""
    if bridge.batch_loss_is_mean:
        return bridge.net.get_loss(F, y, X=X, training=False).reshape(()) * len(y)

    def one(o, x, t):
        return bridge.loss_of_output(o[None], x, t)

    if bridge.use_vmap:
        try:
            return vmap(one)(F, X, y).sum()
        except VMAP_ERRORS:
            pass
    return torch.stack([one(o, x, t) for o, x, t in zip(F, rows_of.samples(X), y)]).sum()


def _chunk_factors(bridge, blocks: list[LinearBlock], X, y
                   ) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
    """``(inputs, output_grads)`` of each layer for one chunk on the device.

    The layers' hooks are on the net only meanwhile: nothing else (the check against
    per-sample gradients, another thread's work) runs through them.
    """
    B = len(y)
    recorder = LayerRecorder(bridge.net.module_, blocks)
    try:
        with bridge.modes(), torch.enable_grad():
            theta = bridge.theta.detach().requires_grad_(True)
            recorder.clear()
            F = bridge.batch_output(theta, X)
            if not isinstance(F, torch.Tensor) or any(b.layer not in recorder.outputs
                                                      for b in blocks):
                raise _NotFactorable
            outs = [recorder.outputs[b.layer] for b in blocks]
            ins = [recorder.inputs[b.layer] for b in blocks]
            for b, a, o in zip(blocks, ins, outs):
                if tuple(o.shape) != (B, b.n_out) or tuple(a.shape) != (B, b.n_in):
                    raise _NotFactorable  # positions (sequences, images): a sum of products
            D = torch.autograd.grad(_summed_losses(bridge, F, X, y), outs, allow_unused=True)
    except ValueError as exc:  # a layer applied twice in one pass (the recorder says so)
        raise _NotFactorable from exc
    finally:
        recorder.remove()
    return [(a.detach() if b.weight is not None else None,
             torch.zeros(B, b.n_out, dtype=bridge.dtype, device=bridge.device) if d is None
             else d.detach())
            for b, a, d in zip(blocks, ins, D)]


def _matches(factors: LinearFactors, G: torch.Tensor) -> bool:
    """Whether the factors' outer products are the per-sample gradients ``G`` of their rows."""
    approx = factors.gradients(np.arange(len(G)))
    scale = float(G.abs().max()) if G.numel() else 0.0
    return bool(torch.allclose(approx, G, rtol=1e-4, atol=1e-5 * scale + 1e-12))


def _factors_of(blocks: list[LinearBlock], arrays: dict, n_params: int,
                device=None) -> LinearFactors:
    """The :class:`LinearFactors` made of ``arrays`` (named as :meth:`LinearFactors.arrays`)."""
    return LinearFactors([LinearFactor(b, arrays.get(f"layer{i}.inputs"),
                                       arrays[f"layer{i}.output_grads"])
                          for i, b in enumerate(blocks)], n_params, device)


def _widths(bridge, blocks: list[LinearBlock] | None) -> dict[str, int]:
    """The columns of each array of the kept form: factors over ``blocks``, or dense."""
    if blocks is None:
        return {"gradients": bridge.n_params}
    out = {}
    for i, b in enumerate(blocks):
        if b.weight is not None:
            out[f"layer{i}.inputs"] = b.n_in
        out[f"layer{i}.output_grads"] = b.n_out
    return out


def _factor_chunks(bridge, X, y: torch.Tensor, progress: Callable[[Iterator], Iterator],
                   blocks: list[LinearBlock]) -> Iterator[tuple[slice, dict]]:
    """One pass over the rows: each chunk's factors, checked finite (and, on the first chunk,
    against per-sample gradients: :class:`_NotFactorable` when they differ)."""
    for sl in progress(list(bridge.pass_chunks(len(y)))):
        Xb, yb = bridge.on_device(X, y, sl)
        arrays = {}
        for i, (a, d) in enumerate(_chunk_factors(bridge, blocks, Xb, yb)):
            if a is not None:
                arrays[f"layer{i}.inputs"] = a
            arrays[f"layer{i}.output_grads"] = d
        val.check_finite_gradients(torch.cat(list(arrays.values()), dim=1),
                                   what="training point", offset=sl.start)
        if sl.start == 0:
            k = min(len(yb), 4)
            G = grads.gradients(bridge, rows_of.take(Xb, slice(0, k)), yb[:k])
            first = _factors_of(blocks, {name: t[:k] for name, t in arrays.items()},
                                bridge.n_params)
            if not _matches(first, G):
                raise _NotFactorable
        yield sl, arrays


def _dense_chunks(bridge, X, y: torch.Tensor, progress: Callable[[Iterator], Iterator]
                  ) -> Iterator[tuple[slice, dict]]:
    """One pass over the rows: each chunk's per-sample gradients, checked finite."""
    for sl in progress(list(bridge.chunks(len(y)))):
        block = grads.gradients(bridge, rows_of.take(X, sl), y[sl])
        val.check_finite_gradients(block, what="training point", offset=sl.start)
        yield sl, {"gradients": block}


class _InMemory:
    """Collects a pass's chunks into tensors on the bridge's device."""

    def __init__(self, bridge, widths: dict[str, int], n: int) -> None:
        self.arrays = {name: torch.empty(n, w, dtype=bridge.dtype, device=bridge.device)
                       for name, w in widths.items()}

    def write(self, sl: slice, parts: dict) -> None:
        for name, t in parts.items():
            self.arrays[name][sl] = t


class _OnDisk:
    """Writes a pass's chunks, in row order, to one ``.npy`` file per array in ``directory``.

    Plain appends (no memory map while writing), so a full disk is an ``OSError`` of the
    write, not a fault of the process; every file is flushed to disk by :meth:`close`.
    """

    def __init__(self, directory: Path, bridge, widths: dict[str, int], n: int) -> None:
        self.dtype = torch.empty(0, dtype=bridge.dtype).numpy().dtype
        self.n, self.done = n, 0
        self.files = {}
        for name, w in widths.items():
            f = self.files[name] = open(directory / f"{name}.npy", "wb")  # noqa: SIM115
            np.lib.format.write_array_header_1_0(f, {
                "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                "shape": (n, w)})

    def write(self, sl: slice, parts: dict) -> None:
        if sl.start != self.done:
            raise RuntimeError(f"rows {sl} written out of order (after row {self.done})")
        for name, t in parts.items():
            self.files[name].write(t.detach().cpu().numpy().astype(self.dtype, copy=False)
                                   .tobytes())
        self.done = sl.stop

    def close(self, flush: bool = True) -> None:
        if flush and self.done != self.n:
            raise RuntimeError(f"{self.done} of {self.n} rows written")
        for f in self.files.values():
            if flush and not f.closed:
                f.flush()
                os.fsync(f.fileno())
            f.close()


def _blocks_of(bridge) -> list[LinearBlock] | None:
    try:
        return linear_blocks(bridge) or None
    except ValueError:
        return None


def _per_row(widths: dict[str, int]) -> int:
    return sum(widths.values())


def keep_gradients(bridge, X, y: torch.Tensor, *, max_bytes: int,
                   progress: Callable[[Iterator], Iterator] = iter
                   ) -> LinearFactors | DenseGradients | None:
    """The per-sample gradients of the training set ``(X, y)``, as factors where exact.

    Parameters
    ----------
    bridge : NetBridge
        The net's loss as a function of the selected parameters.
    X, y
        The training inputs (as the net takes them) and encoded targets.
    max_bytes : int
        The most memory the kept form may take; None is returned when it would take more.
    progress : callable
        Wraps the iterator over chunks of rows (a progress bar).

    Returns
    -------
    LinearFactors, DenseGradients or None
        Factors when every selected parameter belongs to a Linear layer that sees one input
        row per sample (checked), else dense gradients; None when the form needs more than
        ``max_bytes``. A row whose gradient is not finite raises a ValueError naming it.
    """
    n = len(y)
    itemsize = torch.empty((), dtype=bridge.dtype).element_size()
    blocks = _blocks_of(bridge)
    if blocks is not None:
        widths = _widths(bridge, blocks)
        if n * _per_row(widths) * itemsize <= max_bytes:
            sink = _InMemory(bridge, widths, n)
            try:
                for sl, parts in _factor_chunks(bridge, X, y, progress, blocks):
                    sink.write(sl, parts)
                return _factors_of(blocks, sink.arrays, bridge.n_params)
            except _NotFactorable:
                pass
    if n * bridge.n_params * itemsize > max_bytes:
        return None
    sink = _InMemory(bridge, _widths(bridge, None), n)
    for sl, parts in _dense_chunks(bridge, X, y, progress):
        sink.write(sl, parts)
    return DenseGradients(sink.arrays["gradients"])


# ============================================================================ on disk
#: The version of the on-disk layout below; a store of another version is refused.
STORE_FORMAT = 1
#: The directory under ``memory`` that holds the stores, one sub-directory per fingerprint.
STORE_DIR = "sk_fastif_store"
_MANIFEST = "manifest.json"


def store_root(memory) -> Path | None:
    """The directory ``memory`` names: None, a path, or a ``joblib.Memory`` (its location)."""
    if memory is None:
        return None
    if isinstance(memory, (str, os.PathLike)):
        return Path(memory)
    location = getattr(memory, "location", "missing")
    if location == "missing" or not hasattr(memory, "cache"):
        raise TypeError("memory must be None, a directory path or a joblib.Memory; got "
                        f"{type(memory).__name__}.")
    return None if location is None else Path(location)


def _store_error(path: Path, what: str) -> StoreError:
    return StoreError(f"memory: the gradient store in {path} {what}. Delete that directory "
                      "(the next fit writes it again) or fit with another memory.")


def _manifest(fingerprint: str, bridge, n: int, kind: str,
              blocks: list[LinearBlock] | None, widths: dict[str, int]) -> dict:
    return {
        "format": STORE_FORMAT,
        "writer": "sk_fastif",
        "fingerprint": fingerprint,
        "kind": kind,
        "n_rows": int(n),
        "n_params": int(bridge.n_params),
        "dtype": str(torch.empty(0, dtype=bridge.dtype).numpy().dtype),
        "param_names": list(bridge.selected),
        "layers": None if blocks is None else [_block_json(b) for b in blocks],
        "arrays": {name: [int(n), int(w)] for name, w in widths.items()},
    }


def _block_json(b: LinearBlock) -> dict:
    return {"layer": b.layer, "n_out": b.n_out, "n_in": b.n_in,
            "weight": None if b.weight is None else list(b.weight),
            "bias": None if b.bias is None else list(b.bias)}


def open_store(root: Path, fingerprint: str, bridge, n: int
               ) -> LinearFactors | DenseGradients:
    """The store of ``fingerprint`` under ``root``, memory-mapped read-only.

    Raises :class:`~sk_fastif.exceptions.StoreError` (naming ``memory``) when it is gone,
    incomplete, of another format, or for another net, parameter selection or data.
    """
    path = Path(root) / STORE_DIR / fingerprint
    if not path.is_dir():
        raise StoreError(f"memory: the gradient store of this explainer ({path}) is gone. "
                         "Fit the explainer again, which writes it.")
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise _store_error(path, f"has no readable {_MANIFEST} ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise _store_error(path, f"is in format {found!r}; this version of sk_fastif reads "
                                 f"format {STORE_FORMAT}")
    blocks = _blocks_of(bridge) if manifest.get("kind") == LinearFactors.kind else None
    expected = _manifest(fingerprint, bridge, n, manifest.get("kind"), blocks,
                         _widths(bridge, blocks))
    for key in ("fingerprint", "kind", "n_rows", "n_params", "dtype", "param_names",
                "layers", "arrays"):
        if manifest.get(key) != expected[key]:
            raise _store_error(path, f"was written for another net or data: its {key} is "
                                     f"{manifest.get(key)!r}, this explainer's "
                                     f"{expected[key]!r}")
    arrays = {}
    for name, shape in expected["arrays"].items():
        try:
            a = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _store_error(path, f"cannot be read ({name}.npy: {exc})") from exc
        if list(a.shape) != shape or str(a.dtype) != expected["dtype"]:
            raise _store_error(path, f"is incomplete: {name}.npy holds {a.dtype} {a.shape}")
        arrays[name] = a
    if blocks is None:
        return DenseGradients(arrays["gradients"], bridge.device)
    return _factors_of(blocks, arrays, bridge.n_params, bridge.device)


def write_store(root: Path, fingerprint: str, bridge, X, y: torch.Tensor, *,
                progress: Callable[[Iterator], Iterator] = iter
                ) -> LinearFactors | DenseGradients:
    """The store of ``fingerprint`` under ``root``: opened when there, else written and opened.

    It is written to a temporary directory beside its place and renamed into place once every
    file is on disk, so no reader sees a partial store; when another process renames its copy
    first, that copy is used. A failed write (an unwritable directory, a full disk) raises an
    ``OSError`` naming ``memory``, removes the partial copy and leaves other stores as they
    were.
    """
    final = Path(root) / STORE_DIR / fingerprint
    if final.is_dir():
        return open_store(root, fingerprint, bridge, len(y))
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{fingerprint}-", dir=final.parent))
        _write_into(tmp, fingerprint, bridge, X, y, progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a store renamed there first by another process
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        tmp = None
    except OSError as exc:
        message = f"memory: could not write the gradient store in {final}: {exc.strerror or exc}"
        raise (OSError(message) if exc.errno is None else OSError(exc.errno, message)) from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return open_store(root, fingerprint, bridge, len(y))


def _write_into(directory: Path, fingerprint: str, bridge, X, y: torch.Tensor,
                progress: Callable[[Iterator], Iterator]) -> None:
    """One pass over the rows into ``directory``: factors where exact, else dense rows."""
    n = len(y)
    blocks = _blocks_of(bridge)
    if blocks is not None:
        try:
            _write_pass(directory, bridge, _widths(bridge, blocks), n,
                        _factor_chunks(bridge, X, y, progress, blocks))
        except _NotFactorable:
            blocks = None
            for f in directory.iterdir():
                f.unlink()
    if blocks is None:
        _write_pass(directory, bridge, _widths(bridge, None), n,
                    _dense_chunks(bridge, X, y, progress))
    kind = DenseGradients.kind if blocks is None else LinearFactors.kind
    manifest = _manifest(fingerprint, bridge, n, kind, blocks, _widths(bridge, blocks))
    with open(directory / _MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _write_pass(directory: Path, bridge, widths: dict[str, int], n: int,
                chunks: Iterator[tuple[slice, dict]]) -> None:
    sink = _OnDisk(directory, bridge, widths, n)
    try:
        for sl, parts in chunks:
            sink.write(sl, parts)
    except BaseException:
        sink.close(flush=False)
        raise
    sink.close()


_KRONECKER_FIELDS = ("A_eigenvalues", "A_eigenvectors", "S_eigenvalues", "S_eigenvectors",
                     "eigenvalues")


class KroneckerMemo:
    """EK-FAC's factors of one store's curvature, kept beside its gradients.

    ``kfac-<key>.npz`` in the store's directory (``key``: ``exact``, or the probe count and
    seed), written to a temporary file and renamed into place; read with
    ``allow_pickle=False``. The factors depend only on the net, the data and the curvature,
    which the store's fingerprint covers, so every solver and fit on that store reuses them.

    Parameters
    ----------
    root : Path
        The ``memory`` directory.
    fingerprint : str
        The store's fingerprint.
    bridge : NetBridge
        The net's loss (for the layers the factors belong to).
    """

    def __init__(self, root: Path, fingerprint: str, bridge) -> None:
        self.path = Path(root) / STORE_DIR / fingerprint
        self.bridge = bridge

    def _file(self, key: str) -> Path:
        return self.path / f"kfac-{key}.npz"

    def load(self, key: str) -> list[KroneckerFactors] | None:
        """The kept factors of ``key``, or None when there are none."""
        file = self._file(key)
        if not file.is_file():
            return None
        blocks = linear_blocks(self.bridge)
        try:
            with np.load(file, allow_pickle=False) as data:
                arrays = {k: torch.from_numpy(data[k].copy()) for k in data.files}
            return [KroneckerFactors(b, *(arrays[f"{i}.{name}"] for name in _KRONECKER_FIELDS))
                    for i, b in enumerate(blocks)]
        except (OSError, ValueError, KeyError) as exc:
            raise _store_error(self.path, f"has an unreadable {file.name} ({exc})") from exc

    def save(self, key: str, factors: list[KroneckerFactors]) -> None:
        """Keep ``factors`` under ``key`` (atomically; an ``OSError`` names ``memory``)."""
        arrays = {f"{i}.{name}": getattr(f, name).cpu().numpy()
                  for i, f in enumerate(factors) for name in _KRONECKER_FIELDS}
        tmp = self._file(key).with_suffix(f".{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._file(key))
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, f"memory: could not write {self._file(key)}: "
                                     f"{exc.strerror or exc}") from exc
