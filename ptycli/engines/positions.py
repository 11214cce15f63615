"""Position refinement limits shared by every engine (physics.md §5.4, §7.11).

Positions live on the host as (J, 2) float64 object pixels: they are tiny, and the
grouping and window bookkeeping need them there anyway.
"""

from __future__ import annotations

import numpy as np


def apply_step(state: object, idx: np.ndarray, delta_px: np.ndarray) -> None:
    """Move positions ``idx`` by ``delta_px`` (B, 2)."""
    state.positions[idx] = state.positions[idx] + np.nan_to_num(np.asarray(delta_px, dtype=np.float64))


def limit_step(state: object, idx: np.ndarray, start: np.ndarray, max_step_px: float) -> None:
    """Clip each position's move within this iteration to ``max_step_px`` per axis."""
    lo, hi = start[idx] - max_step_px, start[idx] + max_step_px
    state.positions[idx] = np.clip(state.positions[idx], lo, hi)


def remove_drift(state: object, subset: np.ndarray) -> None:
    """Keep the centroid of the refined positions at its nominal value (a global shift
    is degenerate with the object)."""
    ref = np.asarray(state.positions_initial)[subset]
    drift = state.positions[subset].mean(axis=0) - ref.mean(axis=0)
    state.positions[subset] = state.positions[subset] - drift


def rms_error(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance (px) between two position sets after removing their mean offset."""
    d = np.asarray(a) - np.asarray(b)
    d = d - d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean()))
