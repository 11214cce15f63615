"""Tied slices: every slice of a multislice object made equal to the others of its class.

A crystal sliced at its period along the beam has the same transmission function in every
slice of its own frame (the tilt is carried by the propagator, physics.md §4.1). Free
slices can absorb a global tilt as a depth-linear lateral shift and a wrong slice
thickness as depth-dependent blur, so the data alone hardly decide either; tied slices
cannot, which makes the tilt and Δz observable (``tilted-multislice`` ties them while it
refines both, then releases them). ``tie_slices`` replaces slice s by the mean over the
slices s' ≡ s (mod ``period``): the orthogonal projection onto the tied objects, so it is
exact and idempotent, and a no-op on one slice (or ``period`` ≥ the number of slices).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .. import backend
from .base import ConstraintParams, ConstraintSpec, Context


class TieSlicesParams(ConstraintParams):
    period: int = Field(1, ge=1, description=(
        "Slices per period of the specimen along the beam: slices s and s + period are tied."))


def tie_slices(state: Any, params: TieSlicesParams, ctx: Context) -> Any:
    """O_s ← mean of O_s' over s' ≡ s (mod period) (module doc)."""
    obj = state.object
    n = obj.shape[1]
    if n <= params.period:
        return state
    xp = backend.namespace(obj)
    means = [xp.mean(obj[:, r::params.period], axis=1) for r in range(params.period)]
    tied = xp.stack([means[s % params.period] for s in range(n)], axis=1).astype(obj.dtype)
    return state.copy(object=tied)


SPECS = [
    ConstraintSpec("tie_slices", TieSlicesParams, tie_slices, ("object",),
                   "Each slice replaced by the mean of the slices with its index mod `period` "
                   "(a crystal sliced at its period; makes a global tilt and Δz observable)."),
]
