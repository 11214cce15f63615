"""Tilt constraints: lateral smoothing of per-position beam tilts (PtyRAD tilt_smooth)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .. import backend
from .base import ConstraintParams, ConstraintSpec, Context, require


# ----------------------------------------------------------------------------- tilts
class TiltSmoothParams(ConstraintParams):
    sigma_steps: float = Field(1.0, gt=0, description="Gaussian std in scan steps (nearest-neighbour spacing).")


def scan_step_px(positions: Any) -> float:
    """Median nearest-neighbour distance of the scan (px), from a subsample on the host."""
    import numpy as np  # noqa: PLC0415

    p = backend.to_numpy(positions).astype(float)
    sample = p[:: max(1, len(p) // 256)]
    d2 = ((sample[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    d2[d2 == 0] = np.inf
    return float(np.sqrt(np.median(d2.min(axis=1)))) if len(p) > 1 else 1.0


def tilt_smooth(state: Any, params: TiltSmoothParams, ctx: Context) -> Any:
    """t_j ← Σ_k g_jk t_k / Σ_k g_jk, g = exp(-|p_j - p_k|²/2σ²), in chunks of positions."""
    tilts = require(state.tilts, "per-position tilts", "tilt_smooth")
    xp = backend.namespace(tilts)
    ref = state.positions_initial if state.positions_initial is not None else state.positions
    sigma = params.sigma_steps * scan_step_px(ref)
    p = xp.asarray(ref, dtype="float64")
    out = []
    for start in range(0, p.shape[0], 1024):  # J x 1024 weights at a time bounds memory
        d = p[start:start + 1024, None, :] - p[None, :, :]
        g = xp.exp(-xp.sum(d * d, axis=-1) / (2 * sigma * sigma))
        out.append((g @ tilts.astype("float64")) / xp.sum(g, axis=1, keepdims=True))
    return state.copy(tilts=xp.concatenate(out).astype(tilts.dtype))


SPECS = [
    ConstraintSpec("tilt_smooth", TiltSmoothParams, tilt_smooth, ("tilts",),
                   "Gaussian smoothing of per-position tilts over neighbouring scan positions."),
]
