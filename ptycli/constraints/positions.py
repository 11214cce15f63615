"""Position constraints (physics.md §7.11).

Positions are (J, 2) object pixels (y, x). The reference positions are
``ctx.positions_initial`` or ``state.positions_initial`` (the nominal scan).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

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
    hold: list[Literal["rotation", "scale"]] = Field(
        default_factory=list, description="project only: parts of A kept nominal (those of the identity): "
                                          "rotation (of the scan against the detector), scale (isotropic).")

    @model_validator(mode="after")
    def _hold_projects(self) -> "AffineParams":
        if self.hold and self.mode != "project":
            raise ValueError(f"hold = {self.hold} applies to mode = \"project\" only (mode is \"{self.mode}\")")
        return self


# The linear part A = s·I + ω·J + α·D + β·S of an affine map (small distortions): isotropic
# scale, rotation (antisymmetric), anisotropic scale, shear. The parts not held (s = 1, ω = 0)
# are fitted by least squares; on a square raster the four are orthogonal, so they keep the
# values of the full fit.
_PARTS = {"scale": ((1.0, 0.0), (0.0, 1.0)), "rotation": ((0.0, -1.0), (1.0, 0.0)),
          "anisotropy": ((1.0, 0.0), (0.0, -1.0)), "shear": ((0.0, 1.0), (1.0, 0.0))}


def fit_affine(r: Any, r0: Any, hold: Any = ()) -> Any:
    """Least squares r ≈ [r0 - c0, 1] @ T with c0 = mean r0; T is (3, 2) on the host. The
    parts of T[:2] named in ``hold`` (``_PARTS``) are those of the identity (s = 1, ω = 0)."""
    import numpy as np  # noqa: PLC0415  (3x2 host solve of bookkeeping numbers)

    r_h, r0_h = backend.to_numpy(r).astype(float), backend.to_numpy(r0).astype(float)
    design = np.concatenate([r0_h - r0_h.mean(axis=0), np.ones((len(r0_h), 1))], axis=1)
    if not hold:
        return np.linalg.lstsq(design, r_h, rcond=None)[0], design
    d = design[:, :2]
    fixed = d @ np.eye(2) if "scale" in hold else np.zeros_like(d)  # the held parts' value: A = I
    free = [np.asarray(m) for name, m in _PARTS.items() if name not in hold]
    shift = [np.eye(2)[[k] * len(d)] for k in range(2)]  # t_y, t_x
    columns = np.stack([(d @ m).ravel() for m in free] + [c.ravel() for c in shift], axis=1)
    coef = np.linalg.lstsq(columns, (r_h - fixed).ravel(), rcond=None)[0]
    linear = sum((c * m for c, m in zip(coef, free, strict=False)), np.zeros((2, 2)))
    if "scale" in hold:
        linear = linear + np.eye(2)
    return np.concatenate([linear, coef[None, -2:]], axis=0), design


def affine(state: Any, params: AffineParams, ctx: Context) -> Any:
    """Fit r = A (r⁰ - c⁰) + t; ``remove`` gives r - (A - I)(r⁰ - c⁰), ``project`` gives
    A(r⁰ - c⁰) + t, ``remove_scale`` gives r - (s - 1)(r⁰ - c⁰) with s = tr A / 2.

    ``hold`` (project): the named parts of A stay those of the nominal scan. Why ``rotation``:
    the object's frame is the detector's, so the data see only the scan's rotation against
    the detector, and an unknown detector rotation is fitted as a scan rotation that turns the
    reconstruction with it, slowly, iteration after iteration (abTEM SrTiO3 with a 2° detector
    rotation: the fitted rotation went 0 → 3.9° = scan 1.9° + detector 2° over 40 iterations of
    the 12x12 fixture, and the phase correlation with the specimen-frame truth 0.949 at 20 →
    0.879 at 40; held: 0.937, 0.935). A scan rotation is a calibration
    (``preprocess --scan-rotation-deg``).

    Why ``remove_scale``: a defocus error of the probe is taken up by the positions as a scan
    magnification (a defocused probe is a shadow image of the object), while a real scan
    distortion is mostly anisotropic scale, shear, rotation and drift, which stay refinable."""
    import numpy as np  # noqa: PLC0415

    xp = backend.namespace(state.positions)
    r0 = _initial(state, ctx, "position_affine")
    t, design = fit_affine(state.positions, r0, params.hold)
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
