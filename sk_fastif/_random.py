"""Seeding from one place: one :class:`numpy.random.SeedSequence` per ``fit``.

``fit`` draws the root sequence once from the explainer's ``random_state`` and spawns from it
the seed of every random consumer: training a clone of an unfitted net, the solver, the
candidate selector, the sample of :meth:`~sk_fastif.InfluenceExplainer.audit_candidates`, and a
sequence for parallel workers. Each consumer gets its own independent stream, and no seed ever
depends on which test points are solved together or where, so results do not depend on
``batch_size`` or on how work is dispatched.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["FitSeeds", "fit_seeds", "needs_seed", "seed_selector", "seed_solver"]

_INT32 = np.iinfo(np.int32).max


def _as_int(seq: np.random.SeedSequence) -> int:
    """A 31-bit integer seed from a sequence (the range every library here accepts)."""
    return int(seq.generate_state(1, dtype=np.uint32)[0] % _INT32)


@dataclass(frozen=True)
class FitSeeds:
    """The seeds of one ``fit``, all spawned from one root :class:`~numpy.random.SeedSequence`.

    Attributes
    ----------
    seeded : bool
        Whether the explainer's ``random_state`` was given (not None). Training a clone and the
        selector are seeded only then; otherwise they use their own defaults.
    training, solver, selector, audit : int or None
        Integer seeds of each consumer; all None when nothing needed a seed (then no generator
        was touched, and an audit sample draws from numpy's global generator when it is made).
    workers : numpy.random.SeedSequence or None
        Spawns one sequence per unit of parallel work.
    """

    seeded: bool
    training: int | None = None
    solver: int | None = None
    selector: int | None = None
    audit: int | None = None
    workers: np.random.SeedSequence | None = None


def fit_seeds(random_state, *, needed: bool = True) -> FitSeeds:
    """Draw the root sequence from ``random_state`` once and spawn every consumer's seed.

    ``random_state`` is an int (reproducible across runs), a :class:`numpy.random.RandomState`
    (one integer is drawn from it) or None (one integer is drawn from numpy's global generator,
    so ``numpy.random.seed`` makes a run reproducible). With ``random_state=None`` and
    ``needed=False`` (no consumer needs a seed now) nothing is drawn, so a deterministic fit
    leaves numpy's global generator as it was.
    """
    if random_state is None and not needed:
        return FitSeeds(seeded=False)
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        entropy = int(random_state)
    else:
        entropy = int(check_random_state(random_state).randint(_INT32))
    training, solver, selector, audit, workers = np.random.SeedSequence(entropy).spawn(5)
    return FitSeeds(
        seeded=random_state is not None,
        training=_as_int(training),
        solver=_as_int(solver),
        selector=_as_int(selector),
        audit=_as_int(audit),
        workers=workers,
    )


def needs_seed(solver) -> bool:
    """Whether a solver is stochastic and has no integer seed of its own."""
    own = solver.get_params(deep=False).get("random_state", 0)
    return not (isinstance(own, Integral) and not isinstance(own, bool))


def seed_selector(selector, seeds: FitSeeds):
    """Give a selector whose own ``random_state`` is None the seed spawned for it (if any)."""
    params = selector.get_params()
    if seeds.seeded and "random_state" in params and params["random_state"] is None:
        selector.set_params(random_state=seeds.selector)
    return selector


def seed_solver(solver, seeds: FitSeeds):
    """Give a stochastic solver one integer seed (in place); return it.

    A solver's own integer ``random_state`` is kept; a ``RandomState`` instance gives one draw;
    otherwise (None) the solver takes the seed spawned for it.
    """
    if not needs_seed(solver):
        return solver
    own = solver.get_params(deep=False)["random_state"]
    if isinstance(own, np.random.RandomState):
        return solver.set_params(random_state=int(own.randint(_INT32)))
    return solver.set_params(random_state=seeds.solver)
