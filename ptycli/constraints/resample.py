"""Resampling operations between stages: slices, lateral padding/cropping, probe modes.

These change array shapes, so they are not per-iteration constraints; ``ptycli
constrain`` offers them (``--slices``, ``--slice-thickness-a``, ``--pad-px``,
``--probe-modes``) so one stage's result can seed a differently shaped next stage.
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from ..errors import RecipeError
from .base import unwrap_phase
from .probe import orthogonalize_modes


# ----------------------------------------------------------------------------- slices
def _thicknesses(state: Any) -> list[float]:
    if state.slice_thickness is None:
        if state.n_slices > 1:
            raise RecipeError("state has several slices but no slice_thickness; cannot resample depth")
        return [0.0]
    return [float(t) for t in backend.to_numpy(state.slice_thickness)]


def resample_slices(state: Any, n_slices: int | None = None, thickness_a: float | None = None) -> Any:
    """Re-slice the object, conserving the projected complex potential.

    ln O is integrated along depth (cumulative sum at slice boundaries), linearly
    interpolated at the new boundaries and differenced, so Σ_s ln O_s (total phase and
    absorption) is kept wherever the new stack covers the old one; depth beyond the old
    total thickness is vacuum. Defaults: keep the total thickness T, so only one of
    ``n_slices`` (Δz = T/S) or ``thickness_a`` (S = round(T/Δz)) is needed.
    """
    old = _thicknesses(state)
    total = sum(old)
    if n_slices is None and thickness_a is None:
        return state
    if n_slices is None:
        n_slices = max(1, int(round(total / thickness_a)))  # type: ignore[operator]
    if thickness_a is None:
        if total <= 0:
            raise RecipeError("--slices needs --slice-thickness-a for a state without slice thicknesses")
        thickness_a = total / n_slices
    obj = state.object
    xp = backend.namespace(obj)
    log_o = xp.log(xp.maximum(xp.abs(obj), 1e-30)) + 1j * unwrap_phase(xp.angle(obj))
    zeros = xp.zeros_like(log_o[:, :1])
    cum = xp.concatenate([zeros, xp.cumsum(log_o, axis=1)], axis=1)  # at boundaries (Q, S+1, H, W)
    bounds = [0.0]
    for t in old:
        bounds.append(bounds[-1] + t)
    new_cum = [_interp_boundary(cum, bounds, k * thickness_a) for k in range(n_slices + 1)]
    new_log = xp.stack([b - a for a, b in zip(new_cum[:-1], new_cum[1:])], axis=1)
    new_obj = xp.exp(new_log).astype(obj.dtype)
    rdtype = backend.real_dtype_of(obj)
    slices = backend.to_device([thickness_a] * n_slices, xp, rdtype)
    return state.copy(object=new_obj, slice_thickness=slices)


def _interp_boundary(cum: Any, bounds: list[float], z: float) -> Any:
    if z >= bounds[-1]:
        return cum[:, -1]
    for s in range(len(bounds) - 1):
        if bounds[s] <= z <= bounds[s + 1]:
            width = bounds[s + 1] - bounds[s]
            f = 0.0 if width == 0 else (z - bounds[s]) / width
            return (1 - f) * cum[:, s] + f * cum[:, s + 1]
    return cum[:, 0]


# ----------------------------------------------------------------------------- lateral pad/crop
def pad_object(state: Any, pad_px: int) -> Any:
    """Pad every side of the object by ``pad_px`` vacuum pixels (negative crops).

    Positions, initial positions and the origin move with the object so every probe
    still sees the same object pixels. Cropping that would cut a probe window is refused.
    """
    if pad_px == 0:
        return state
    obj = state.object
    xp = backend.namespace(obj)
    q, s, h, w = obj.shape
    if pad_px > 0:
        new = xp.ones((q, s, h + 2 * pad_px, w + 2 * pad_px), dtype=obj.dtype)
        new[..., pad_px:pad_px + h, pad_px:pad_px + w] = obj
    else:
        c = -pad_px
        if 2 * c >= min(h, w):
            raise RecipeError(f"--pad-px {pad_px}: cannot crop {c} px per side from a {h}x{w} object")
        new = obj[..., c:h - c, c:w - c]
    positions = state.positions + pad_px
    _check_windows(positions, state.window, new.shape[-2:], pad_px)
    changes = {"object": new, "positions": positions,
               "origin_px": tuple(float(o) + pad_px for o in state.origin_px)}
    if state.positions_initial is not None:
        changes["positions_initial"] = state.positions_initial + pad_px
    return state.copy(**changes)


def _check_windows(positions: Any, window: tuple[int, int], shape: tuple[int, int], pad_px: int) -> None:
    p = backend.to_numpy(positions)
    corner_y = p[:, 0].min() // 1 - window[0] // 2
    corner_x = p[:, 1].min() // 1 - window[1] // 2
    end_y = p[:, 0].max() // 1 - window[0] // 2 + window[0]
    end_x = p[:, 1].max() // 1 - window[1] // 2 + window[1]
    if corner_y < 0 or corner_x < 0 or end_y > shape[0] or end_x > shape[1]:
        raise RecipeError(f"--pad-px {pad_px}: the cropped object ({shape[0]}x{shape[1]}) would cut probe windows; "
                          "crop less")


# ----------------------------------------------------------------------------- probe modes
def change_probe_modes(state: Any, n_modes: int, new_mode_power: float = 0.5) -> Any:
    """Keep the strongest ``n_modes`` orthogonal modes, or add new ones; total power kept.

    New modes are the main mode times low-order polynomials (y, x, yx, y²-x², …),
    orthogonalised against the existing ones, each with ``new_mode_power`` × the power
    of the previous mode (a geometric series, physics.md §3.4).
    """
    if n_modes < 1:
        raise RecipeError(f"--probe-modes {n_modes}: need at least 1 mode")
    xp = backend.namespace(state.probe)
    total = xp.sum(xp.abs(state.probe) ** 2)
    modes, powers = orthogonalize_modes(state.probe)
    if n_modes <= modes.shape[0]:
        kept = modes[:n_modes]
    else:
        kept = _add_modes(modes, backend.to_numpy(powers).astype(float), n_modes, new_mode_power)
    scale = xp.sqrt(total / xp.sum(xp.abs(kept) ** 2)).astype(backend.real_dtype_of(kept))
    return state.copy(probe=(kept * scale).astype(state.probe.dtype))


def _add_modes(modes: Any, powers: Any, n_modes: int, ratio: float) -> Any:
    xp = backend.namespace(modes)
    m, n = modes.shape[-2:]
    main = modes[0]
    y = xp.arange(m, dtype="float64")[:, None] - m // 2
    x = xp.arange(n, dtype="float64")[None, :] - n // 2
    weight = xp.abs(main) ** 2
    rms = math.sqrt(float(backend.to_numpy(xp.sum(weight * (y * y + x * x)) / xp.sum(weight))) or 1.0)
    y, x = y / rms, x / rms
    polys = [y + 0 * x, x + 0 * y, y * x, y * y - x * x, y * y + x * x, y * y * x, y * x * x, y**3, x**3]
    out = [modes[p] for p in range(modes.shape[0])]
    power = float(powers[-1]) if len(powers) else 1.0
    for poly in polys:
        if len(out) >= n_modes:
            break
        cand = (main * poly).astype(modes.dtype)
        for o in out:  # Gram-Schmidt against the modes so far
            cand = cand - o * (xp.sum(xp.conj(o) * cand) / xp.sum(xp.abs(o) ** 2))
        norm = float(backend.to_numpy(xp.sqrt(xp.sum(xp.abs(cand) ** 2))))
        if norm < 1e-12:
            continue
        power *= ratio
        out.append(cand * (math.sqrt(power) / norm))
    if len(out) < n_modes:
        raise RecipeError(f"--probe-modes {n_modes}: could only build {len(out)} independent modes")
    return xp.stack(out)
