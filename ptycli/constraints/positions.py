"""Position constraints (physics.md §7.11).

Positions are (J, 2) object pixels (y, x). The reference positions are
``ctx.positions_initial`` or ``state.positions_initial`` (the nominal scan).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .. import backend
from .base import ConstraintParams, ConstraintSpec, Context, relaxed, require


def _initial(state: Any, ctx: Context, name: str) -> Any:
    ref = ctx.positions_initial if ctx.positions_initial is not None else state.positions_initial
    return require(ref, "initial positions (positions_initial)", name)


# ----------------------------------------------------------------------------- recentring
class RecenterParams(ConstraintParams):
    """r_j ← r_j - (mean r - mean r⁰): a global shift is degenerate with the object."""


def recenter(state: Any, params: RecenterParams, ctx: Context) -> Any:
    xp = backend.namespace(state.positions)
    ref = xp.asarray(_initial(state, ctx, "position_recenter"), dtype=state.positions.dtype)
    drift = xp.mean(state.positions, axis=0) - xp.mean(ref, axis=0)
    return state.copy(positions=state.positions - drift[None, :])


# ----------------------------------------------------------------------------- max update
class MaxUpdateParams(ConstraintParams):
    max_distance_a: float = Field(..., gt=0, description="Largest allowed displacement [Å].")
    reference: Literal["previous", "initial"] = Field(
        "previous", description="Measure from the positions before this iteration's update, or the nominal scan.")


def max_update(state: Any, params: MaxUpdateParams, ctx: Context) -> Any:
    """Clip each displacement r_j - r_ref,j to length max_distance (direction kept)."""
    xp = backend.namespace(state.positions)
    ref = ctx.positions_before if params.reference == "previous" else None
    if ref is None:
        ref = _initial(state, ctx, "position_max_update")
    ref = xp.asarray(ref, dtype=state.positions.dtype)
    d = state.positions - ref
    length = xp.sqrt(xp.sum(d * d, axis=1, keepdims=True))
    limit = params.max_distance_a / state.dx_a
    scale = xp.minimum(1.0, limit / xp.maximum(length, 1e-30))
    return state.copy(positions=ref + d * scale)


# ----------------------------------------------------------------------------- affine fit
class AffineParams(ConstraintParams):
    mode: Literal["remove", "project", "remove_scale"] = Field(
        "remove", description="remove: drop the global affine part; project: keep only the affine part; "
                              "remove_scale: drop only the isotropic scale (degenerate with the probe's defocus).")
    relax: float = Field(0.0, ge=0, le=1, description="0 = full correction, 1 = no change.")


def fit_affine(r: Any, r0: Any) -> Any:
    """Least squares r ≈ [r0 - c0, 1] @ T with c0 = mean r0; T is (3, 2) on the host."""
    import numpy as np  # noqa: PLC0415  (3x2 host solve of bookkeeping numbers)

    r_h, r0_h = backend.to_numpy(r).astype(float), backend.to_numpy(r0).astype(float)
    design = np.concatenate([r0_h - r0_h.mean(axis=0), np.ones((len(r0_h), 1))], axis=1)
    return np.linalg.lstsq(design, r_h, rcond=None)[0], design


def affine(state: Any, params: AffineParams, ctx: Context) -> Any:
    """Fit r = A (r⁰ - c⁰) + t; ``remove`` gives r - (A - I)(r⁰ - c⁰), ``project`` gives
    A(r⁰ - c⁰) + t, ``remove_scale`` gives r - (s - 1)(r⁰ - c⁰) with s = tr A / 2.

    Why ``remove_scale``: a defocus error of the probe is taken up by the positions as a scan
    magnification (a defocused probe is a shadow image of the object), while a real scan
    distortion is mostly anisotropic scale, shear, rotation and drift, which stay refinable."""
    import numpy as np  # noqa: PLC0415

    xp = backend.namespace(state.positions)
    r0 = _initial(state, ctx, "position_affine")
    t, design = fit_affine(state.positions, r0)
    fitted = design @ t
    if params.mode == "project":
        target = fitted
    elif params.mode == "remove_scale":
        scale = 0.5 * (t[0, 0] + t[1, 1])
        target = backend.to_numpy(state.positions).astype(float) - (scale - 1.0) * design[:, :2]
    else:
        identity_part = design[:, :2] @ np.eye(2) + t[2]
        target = backend.to_numpy(state.positions).astype(float) - (fitted - identity_part)
    new = backend.to_device(target, xp, state.positions.dtype)
    return state.copy(positions=relaxed(new, state.positions, params.relax))


SPECS = [
    ConstraintSpec("position_recenter", RecenterParams, recenter, ("positions",),
                   "Keep the centroid of the positions at its nominal value (§7.11)."),
    ConstraintSpec("position_max_update", MaxUpdateParams, max_update, ("positions",),
                   "Limit how far a position may move (per iteration or from the nominal scan)."),
    ConstraintSpec("position_affine", AffineParams, affine, ("positions",),
                   "Remove (or keep only) the global affine part of the position errors (§7.11)."),
]
