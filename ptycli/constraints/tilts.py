"""Tilt constraints: lateral smoothing of per-position beam tilts (PtyRAD tilt_smooth) and
the global tilt read off the slices of a multislice object (``tilt_from_slices``).

A global tilt t is exactly degenerate with a depth-linear lateral shift of the slices: the
propagator's tilt moves the wave by Δz·tan t per slice, so slices O_s with tilt t give the
same patterns as slices O_s shifted by -s·Δz·tan t with no tilt (physics.md §4.1; only the
window edges differ, where the tilted wave wraps round the window). A tilt gradient from zero therefore sees an almost flat loss, and an
object refined from scratch absorbs the tilt. ``tilt_from_slices`` breaks the tie with a
prior: the specimen's columns run along the beam in its own frame (a crystal near a zone
axis), so the tilt is the one that makes consecutive slices line up. It measures their
common shift m (px) by cross-correlation over the scanned area, moves slice s by -s·m and
sets tan t ← tan t - m·dx/Δz for every position: the patterns are unchanged, the slices
are aligned and the tilt carries the geometry. A specimen whose slices really differ by a
lateral shift (an inclined structure in its own frame) is not for this constraint.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from .. import backend
from .base import ConstraintParams, ConstraintSpec, Context, require
from .probe import fourier_shift


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


# ----------------------------------------------------------------------------- global tilt
# Measure-and-align passes of ``tilt_from_slices`` (the residual shrinks ~5x per pass).
ALIGN_PASSES = 6


class TiltFromSlicesParams(ConstraintParams):
    max_tilt_mrad: float = Field(20.0, gt=0, le=200, description=(
        "Largest tilt change searched [mrad]: bounds the inter-slice shift Δz·tan t looked for."))


def slice_shift_px(obj: Any, region: tuple[slice, slice], max_shift_px: float) -> tuple[float, float]:
    """Common shift m (y, x) px of slice s+1 against slice s (content of s+1 ≈ content of s
    moved by +m), from the sum over slice pairs and object modes of their cross-power
    spectra over ``region``: the integer peak within ``max_shift_px``, then Newton steps on
    the band-limited correlation C(m) = Re Σ_k conj(A_k) B_k e^{2πi k·m} (sub-pixel)."""
    host = np.asarray(backend.to_numpy(obj))[..., region[0], region[1]].astype(np.complex128)
    host = host - host.mean(axis=(-2, -1), keepdims=True)  # the mean transmission carries no position
    taper = np.outer(np.hanning(host.shape[-2]), np.hanning(host.shape[-1]))  # no wrap-around edge
    spec = np.fft.fft2(host * taper)
    cross = np.sum(np.conj(spec[:, :-1]) * spec[:, 1:], axis=(0, 1))  # (h, w)
    corr = np.fft.ifft2(cross).real
    uy = np.fft.fftfreq(corr.shape[0])[:, None]
    ux = np.fft.fftfreq(corr.shape[1])[None, :]
    ly, lx = np.fft.fftfreq(corr.shape[0], 1 / corr.shape[0]), np.fft.fftfreq(corr.shape[1], 1 / corr.shape[1])
    allowed = (ly[:, None] ** 2 + lx[None, :] ** 2) <= max_shift_px ** 2
    iy, ix = np.unravel_index(np.argmax(np.where(allowed, corr, -np.inf)), corr.shape)
    near = corr[np.ix_([(iy - 1) % len(ly), iy, (iy + 1) % len(ly)], [(ix - 1) % len(lx), ix, (ix + 1) % len(lx)])]
    if corr[iy, ix] < near.max():
        return 0.0, 0.0  # the best allowed shift is on the search limit, not a peak: no estimate
    m = np.array([ly[iy], lx[ix]], dtype=np.float64)
    for _ in range(8):  # Newton on C(m): smooth near the peak, converges in a few steps
        phase = cross * np.exp(2j * math.pi * (uy * m[0] + ux * m[1]))
        k = (2 * math.pi * uy, 2 * math.pi * ux)
        grad = np.array([np.sum(-(k[a] * phase).imag) for a in range(2)])
        hess = np.array([[np.sum(-(k[a] * k[b] * phase).real) for b in range(2)] for a in range(2)])
        if not np.all(np.linalg.eigvalsh(hess) < 0):
            break  # not at a maximum: keep the integer peak
        step = -np.linalg.solve(hess, grad)
        m = m + np.clip(step, -0.5, 0.5)
        if np.max(np.abs(step)) < 1e-6:
            break
    if m[0] ** 2 + m[1] ** 2 > max_shift_px ** 2:
        return 0.0, 0.0
    return float(m[0]), float(m[1])


def scanned_region(state: Any) -> tuple[slice, slice]:
    """Object pixels the probe centres span, widened by a quarter window: where the slices are measured."""
    p = np.asarray(backend.to_numpy(state.positions), dtype=np.float64)
    h, w = state.object.shape[-2:]
    pad = np.asarray(state.window) // 4
    lo, hi = np.floor(p.min(axis=0)).astype(int) - pad, np.ceil(p.max(axis=0)).astype(int) + 1 + pad
    return slice(max(0, lo[0]), min(h, hi[0])), slice(max(0, lo[1]), min(w, hi[1]))


def tilt_from_slices(state: Any, params: TiltFromSlicesParams, ctx: Context) -> Any:
    """Align the slices and move their common inter-slice shift into the tilts (module doc)."""
    if state.n_slices < 2:
        return state
    dz = float(np.mean(backend.to_numpy(require(state.slice_thickness, "slice thickness", "tilt_from_slices"))))
    limit_px = dz * math.tan(params.max_tilt_mrad * 1e-3) / state.dx_a
    region, m = scanned_region(state), np.zeros(2)
    for _ in range(ALIGN_PASSES):
        # the taper pulls a correlation peak towards zero shift in proportion to the shift, so
        # measure what is left after aligning with the estimate so far until it is ~0
        slices = _aligned(state.object, m)
        step = slice_shift_px(slices, region, limit_px)
        if not any(step):
            break
        m = m + step
        if np.hypot(*m) > limit_px:
            m = np.zeros(2)  # walked out of the searched range: no estimate
            break
        if np.hypot(*step) < 1e-3:
            break
    if not np.any(m):
        return state
    slices = _aligned(state.object, m)
    tilts = (np.zeros((len(state.positions), 2)) if state.tilts is None
             else np.asarray(backend.to_numpy(state.tilts), dtype=np.float64))
    new_tan = np.tan(tilts * 1e-3) - np.asarray(m)[None, :] * state.dx_a / dz
    new_tilts = (np.arctan(new_tan) * 1e3).astype(np.float32 if state.tilts is None else state.tilts.dtype)
    return state.copy(object=slices, tilts=new_tilts)


def _aligned(obj: Any, m: np.ndarray) -> Any:
    """Slices s of ``obj`` (Q, S, H, W) moved by -s·m px, as one (Q, S, H, W) array."""
    xp = backend.namespace(obj)
    if not np.any(m):
        return obj
    return xp.stack([obj[:, s] if s == 0 else fourier_shift(obj[:, s], (-s * m[0], -s * m[1]))
                     for s in range(obj.shape[1])], axis=1)


SPECS = [
    ConstraintSpec("tilt_smooth", TiltSmoothParams, tilt_smooth, ("tilts",),
                   "Gaussian smoothing of per-position tilts over neighbouring scan positions."),
    ConstraintSpec("tilt_from_slices", TiltFromSlicesParams, tilt_from_slices, ("object", "tilts"),
                   "Global tilt from the common shift between consecutive slices, slices realigned "
                   "(model unchanged; assumes columns along the beam in the specimen frame)."),
]
