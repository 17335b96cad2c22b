"""Stateless checks of the computations and of the call arguments that are not input.

Input checks (arrays, dicts, Datasets, targets) live with the input handling in
:mod:`sk_fastif._inputs`; here are the checks of what the computations produce (finite
gradients, products and scores; zero gradients) and of the arguments of the public methods
(``k``, ``query``, ``kind``, the pool, the audit's arguments), each raising ``ValueError`` or
``TypeError`` with a message that names the argument and says what was expected.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from numbers import Integral

import numpy as np
import torch

from ._inputs import n_samples


def check_constructor_args(explainer) -> None:
    """Checks of constructor arguments that ``_parameter_constraints`` cannot express."""
    if isinstance(explainer.batch_size, bool):
        raise TypeError(f"batch_size must be a positive integer; got {explainer.batch_size!r}.")
    params = explainer.params
    if params is not None and not isinstance(params, str):
        bad = [p for p in params if not isinstance(p, str)]
        if bad:
            raise TypeError(
                f"params must be None, a string or a list of strings naming modules or "
                f"parameters; got non-string entries {bad!r}."
            )


def check_finite_gradients(
    G: torch.Tensor, *, what: str, offset: int = 0, rows: np.ndarray | None = None
) -> None:
    """Raise when per-sample loss gradients are NaN or infinite (never score with them).

    Row ``i`` of ``G`` is reported as index ``rows[i]`` when given, else ``offset + i``.
    """
    bad = ~torch.isfinite(G).all(dim=1)
    if bool(bad.any()):
        local = torch.nonzero(bad).flatten().cpu().numpy()
        rows = (local + offset if rows is None else np.asarray(rows)[local]).tolist()
        raise ValueError(
            f"The loss gradient of {len(rows)} {what}(s) (indices {rows[:10]}"
            f"{'...' if len(rows) > 10 else ''}) is not finite (NaN or inf): the net's loss "
            f"overflows there. Check X and y for extreme values, or use a float64 net."
        )


def check_finite_products(P: torch.Tensor, gradients, *, what: str, offset: int = 0,
                          rows: np.ndarray | None = None) -> None:
    """Raise when scoring products ``S @ G.T`` of a chunk are not finite because of ``G``.

    ``gradients()`` computes the chunk's per-sample gradients, only when ``P`` is not finite
    (forward-mode scoring forms no gradients): :func:`check_finite_gradients` then names the
    rows whose gradient is not finite.
    """
    if not bool(torch.isfinite(P).all()):
        check_finite_gradients(gradients(), what=what, offset=offset, rows=rows)


def check_finite_scores(values: np.ndarray) -> None:
    """Raise when influence scores are not finite although every gradient was (an overflow).

    The scoring pipeline's one check, for every path: scores are never returned as inf or NaN.
    """
    values = np.asarray(values)
    if values.size and not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise ValueError(
            f"{n_bad} influence score(s) are not finite (inf or NaN) although the loss "
            "gradients are: their products overflow the net's floating-point type. The inputs "
            "or the gradients are too large; rescale X (e.g. with a StandardScaler in a "
            "Pipeline) or use a float64 net."
        )


def check_finite_training_loss(bridge, Xt: torch.Tensor, yt: torch.Tensor) -> None:
    """One forward pass over the training set at ``fit``: every per-sample loss must be finite.

    When the net's batch loss is the mean of its per-sample losses (see
    ``NetBridge.check_batch_loss_is_mean``), a finite batch loss per chunk of rows shows it;
    per-sample losses are computed only to name the rows otherwise.
    """
    if getattr(bridge, "batch_loss_is_mean", False):
        with bridge.modes(), torch.no_grad():
            if all(bool(torch.isfinite(bridge.batch_loss(bridge.theta,
                                                         *bridge.on_device(Xt, yt, sl))))
                   for sl in bridge.pass_chunks(len(yt))):
                return
    losses = bridge.losses(Xt, yt)
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        raise ValueError(
            f"The net's loss is not finite on {len(rows)} training sample(s) (indices "
            f"{rows[:10]}{'...' if len(rows) > 10 else ''}). Check X and y for extreme values; "
            f"for a classifier with NLLLoss, the module must output probabilities (or use "
            f"criterion=torch.nn.CrossEntropyLoss on logits)."
        )


def warn_zero_gradients(G: torch.Tensor, consequence: str, *, stacklevel: int = 3) -> None:
    """Warn about points whose loss gradient is exactly zero (they get exact zeros, never 0/0)."""
    zero = torch.nonzero(G.abs().amax(dim=1) == 0).flatten().tolist()
    if zero:
        warnings.warn(
            f"{len(zero)} point(s) have a loss gradient that is exactly zero (indices "
            f"{zero[:10]}{'...' if len(zero) > 10 else ''}); {consequence}.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


@contextlib.contextmanager
def errors_naming(**names: str) -> Iterator[None]:
    """Errors raised inside name the caller's arguments: ``errors_naming(X="X_pool")``.

    Input checks speak of ``X`` and ``y``; for an outside pool the user passed ``X_pool`` and
    ``y_pool``, so a ``ValueError`` or ``TypeError`` is raised again (same type, chained) with
    each whole-word name replaced.
    """
    try:
        yield
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
        new = pattern.sub(lambda m: names[m.group(1)], msg)
        if new == msg:
            raise
        raise type(exc)(new) from exc


def check_pool(X_pool, y_pool) -> int:
    """``X_pool`` and ``y_pool`` of the pool methods: both given, not empty; their size."""
    if y_pool is None:
        raise ValueError(
            "X_pool was given without y_pool: a pool without labels cannot be scored (the "
            "influence of a point needs its loss gradient, hence its label). Pass y_pool."
        )
    if X_pool is None:
        raise ValueError("y_pool was given without X_pool: pass both, or neither.")
    n = n_samples(X_pool, "X_pool")
    if n == 0:
        raise ValueError("X_pool is empty: at least one pool point is required.")
    return n


def check_query(query: str) -> None:
    """``query`` of :meth:`influences` / :meth:`explain`."""
    if query not in ("each", "mean"):
        raise ValueError(f"query must be 'each' or 'mean'; got {query!r}.")


def check_kind(kind: str) -> None:
    """Which top list: helpful (highest scores), harmful (lowest) or abs (largest magnitude)."""
    if kind not in ("helpful", "harmful", "abs"):
        raise ValueError(f"kind must be 'helpful', 'harmful' or 'abs'; got {kind!r}.")


def check_k(k, n_pool: int, *, pruned: bool) -> int:
    """``k`` of :meth:`explain`: an integer in ``[1, n_pool]`` (the candidates, when pruned)."""
    if not isinstance(k, Integral) or isinstance(k, bool) or not 1 <= k <= n_pool:
        if pruned and isinstance(k, Integral) and k > n_pool:
            raise ValueError(
                f"k={k} exceeds the {n_pool} candidates scored per test point: lower k or "
                "raise the selector's n_neighbors."
            )
        bound = "n_neighbors" if pruned else "n_train_"
        raise ValueError(f"k must be an integer in [1, {bound}={n_pool}]; got {k!r}.")
    return int(k)


def check_audit_args(top, max_samples, n_neighbors: int) -> list[int]:
    """``top`` and ``max_samples`` of :meth:`audit_candidates`; return ``top`` as a list."""
    tops = [top] if isinstance(top, Integral) else list(top)
    if any(isinstance(m, bool) or not isinstance(m, Integral) or m > n_neighbors for m in tops):
        raise ValueError(
            f"top must hold integers of at most n_neighbors={n_neighbors}: a shortlist of "
            f"{n_neighbors} cannot hold a longer top list; got {top!r}."
        )
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, Integral) or max_samples < 1
    ):
        raise ValueError(f"max_samples must be None or a positive integer; got {max_samples!r}.")
    return tops
