"""Object filters (physics.md §7.7-§7.9 and PtyRAD-style filters): smoothing in x, y and z.

Object shape is (Q, S, H, W). Filters are periodic laterally (the object FFT grid) and
act on the complex transmission, or on its amplitude and/or phase (``part``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .. import backend
from ..errors import InputError
from .base import (
    ConstraintParams, ConstraintSpec, Context, Part, filter_part, freq2, mirror_extend, propagate_probe, relaxed, unwrap_phase,
)


# ----------------------------------------------------------------------------- lateral blur
class BlurParams(ConstraintParams):
    sigma_px: float = Field(0.4, gt=0, description="Gaussian standard deviation in object pixels.")
    part: Part = Field("complex", description="complex (§7.7), amplitude, phase or both.")
    weight: float = Field(1.0, ge=0, le=1, description="Mix O ← (1-w) O + w blur(O).")


def gaussian_blur_2d(x: Any, sigma_px: float) -> Any:
    """F⁻¹[F[x] exp(-2π² σ² |u|²)], u in cycles/px (§7.7)."""
    xp = backend.namespace(x)
    uy, ux = freq2(x.shape[-2:], xp, dtype="float64")
    g = xp.exp(-2 * math.pi**2 * sigma_px**2 * (uy * uy + ux * ux)).astype(backend.real_dtype_of(x))
    return backend.ifft2(backend.fft2(x.astype(backend.complex_dtype_of(x))) * g)


def lateral_blur(state: Any, params: BlurParams, ctx: Context) -> Any:
    new = filter_part(state.object, params.part, lambda a: gaussian_blur_2d(a, params.sigma_px))
    return state.copy(object=relaxed(new, state.object, 1 - params.weight))


# ----------------------------------------------------------------------------- depth blur
class DepthBlurParams(ConstraintParams):
    sigma_slices: float = Field(1.0, gt=0, description="Gaussian standard deviation in slices (§7.8).")
    part: Part = Field("complex", description="complex, amplitude, phase or both.")


def reflect_index(i: int, n: int) -> int:
    """Symmetric reflection (…c b a | a b c…) of index i into [0, n)."""
    period = 2 * n
    i %= period
    return i if i < n else period - 1 - i


def depth_gaussian(x: Any, sigma: float, axis: int = -3) -> Any:
    """Σ_s' g(s-s') x_s' / Σ g with reflected boundaries, g(n) = exp(-n²/2σ²) (§7.8)."""
    xp = backend.namespace(x)
    n = x.shape[axis]
    half = max(1, int(math.ceil(3 * sigma)))
    taps = [(k, math.exp(-k * k / (2 * sigma * sigma))) for k in range(-half, half + 1)]
    norm = sum(w for _, w in taps)
    out = 0
    for k, w in taps:
        idx = xp.asarray([reflect_index(s + k, n) for s in range(n)])
        out = out + (w / norm) * xp.take(x, idx, axis=axis)
    return out


def depth_blur(state: Any, params: DepthBlurParams, ctx: Context) -> Any:
    if state.n_slices < 2:
        return state
    new = filter_part(state.object, params.part, lambda a: depth_gaussian(a, params.sigma_slices))
    return state.copy(object=new)


# ----------------------------------------------------------------------------- kz filter
class KzFilterParams(ConstraintParams):
    beta: float = Field(1.0, ge=0, description="Strength β (PtychoShelves regularize_layers), typically 0-1.")
    alpha: float = Field(1.0, ge=0, description="Lateral damping exp(-α|u|²) (PtychoShelves fixes 1).")
    part: Part = Field("both", description="amplitude, phase or both (complex is treated as both).")
    units: Literal["index", "physical"] = Field("index", description=(
        "index: u_z and u_x,y in cycles per slice and per pixel (PtychoShelves); physical: β is "
        "relative to the probe's cone, the filter acts beyond |k_z| = α_conv |k_r| / β in Å⁻¹ "
        "(needs the state's semiangle and slice thickness)"))


def physical_beta(state: Any, beta: float) -> float:
    """β in index units for ``units = "physical"``: the filter's edge β|u_z| = |u_r| put on
    the probe's information cone |k_z| = α_conv |k_r| / β (k_z = u_z/Δz, k_r = u_r/Δx), i.e.
    β·Δx/(α_conv Δz). Why: the index filter acts on slice counts, not depth, so the same β
    regularised 4 Å slices (abTEM Au, 200 kV: LSQ-ML 0.67 -> 0.94) and erased the depth
    contrast of 25 Å ones (ptycli's 4-slice preset 0.96 -> 0.88)."""
    dz = None if state.slice_thickness is None else float(np.mean(backend.to_numpy(state.slice_thickness)))
    if not state.semiangle_mrad or not dz or dz <= 0:
        raise InputError("kz_filter units = \"physical\" needs the state's semiangle_mrad and slice_thickness "
                              f"(got {state.semiangle_mrad!r}, {dz!r}); use units = \"index\" or set them with init")
    return float(beta) * float(state.dx_a) / (float(state.semiangle_mrad) * 1e-3 * dz)


def kz_weight(uy: Any, ux: Any, uz: Any, beta: float, alpha: float = 0.0) -> Any:
    """Wa(u) = [1 - (2/π) arctan((β|u_z|/sqrt(u_x²+u_y²+1e-3))²)] exp(-α(u_x²+u_y²)) (§7.9)."""
    xp = backend.namespace(uy, ux, uz)
    lateral2 = ux * ux + uy * uy
    atan = getattr(xp, "atan", None) or xp.arctan  # the array API's name, NumPy < 2's / CuPy's
    w = 1 - (2 / math.pi) * atan((beta * xp.abs(uz) / xp.sqrt(lateral2 + 1e-3)) ** 2)
    return w * xp.exp(-alpha * lateral2)


def _filter3(x: Any, wa: Any) -> Any:
    """Re F3⁻¹[Wa F3[x]] over (s, y, x) of a (Q, S, H, W) real array."""
    xp = backend.namespace(x)
    spectrum = backend.fftn(xp.astype(x, backend.complex_dtype_of(x)), axes=(-3, -2, -1))
    return xp.real(backend.ifftn(spectrum * wa, axes=(-3, -2, -1)))


def illumination_weight(illumination: Any, xp: Any) -> Any:
    """w_ill = min(1, 10 Σ|P|² / max Σ|P|²): the phase is only trusted where it was lit."""
    if illumination is None:
        return 1.0
    return xp.minimum(1.0, 10 * illumination / xp.max(illumination))


def kz_filter(state: Any, params: KzFilterParams, ctx: Context) -> Any:
    """PtychoShelves regulation_multilayers (§7.9): O ← O (1 + Δa) exp(iΔφ).

    A one-slice object has no depth to regularise and is returned as it is, so that the
    multislice recipes can carry this filter whatever the state (the lateral damping alone
    is ``object_lowpass``'s job)."""
    full = state.object
    xp = backend.namespace(full)
    q, s, h, w = full.shape
    if s == 1:
        return state
    # The first object mode only: the filter relaxes amplitudes towards 1, the transmission
    # of a weak specimen, which the weak incoherent modes (amplitude ~0.05) are not; on them
    # it kept two-mode LSQ-ML and ePIE from converging.
    obj = full[:1, ...]
    rdtype = backend.real_dtype_of(obj)
    uz = backend.fftfreq(s, xp=xp, dtype="float64")[:, None, None]
    uy = backend.fftfreq(h, xp=xp, dtype="float64")[None, :, None]
    ux = backend.fftfreq(w, xp=xp, dtype="float64")[None, None, :]
    beta = physical_beta(state, params.beta) if params.units == "physical" else params.beta
    wa = xp.astype(kz_weight(uy, ux, uz, beta, params.alpha), rdtype)
    amp = xp.abs(obj)
    delta_a = xp.zeros_like(amp)
    delta_phi = xp.zeros_like(amp)
    if params.part in ("amplitude", "both", "complex"):
        filtered = 1 + 0.9 * (_filter3(amp, wa) - 1)
        delta_a = xp.astype(filtered - amp, rdtype)
    if params.part in ("phase", "both", "complex"):
        phi = unwrap_phase(backend.angle(obj))
        delta_phi = xp.astype(illumination_weight(ctx.illumination, xp) * (_filter3(phi, wa) - phi), rdtype)
    rotation = xp.exp(1j * xp.astype(delta_phi, obj.dtype))
    first = xp.astype(obj * (1 + xp.astype(delta_a, obj.dtype)) * rotation, obj.dtype)
    return state.copy(object=first if q == 1 else backend.concat([first, full[1:, ...]], axis=0))


# ----------------------------------------------------------------------------- lateral low-pass
class LowpassParams(ConstraintParams):
    resolution_a: float = Field(..., gt=0, description="Finest period kept [Å]; cut-off k_c = 1/resolution_a.")
    width_frac: float = Field(0.05, gt=0, description="Sigmoid edge width as a fraction of k_c.")
    part: Part = Field("complex", description="complex, amplitude, phase or both.")


def lowpass(state: Any, params: LowpassParams, ctx: Context) -> Any:
    """F[O_s] ← F[O_s] / (1 + exp((|k| - k_c)/(w k_c))), per slice (PtyRAD kr_filter)."""
    xp = backend.namespace(state.object)
    ky, kx = freq2(state.object.shape[-2:], xp, state.dx_a, dtype="float64")
    k_c = 1.0 / params.resolution_a
    arg = xp.clip((xp.sqrt(ky * ky + kx * kx) - k_c) / (params.width_frac * k_c), -60, 60)
    mask = (1 / (1 + xp.exp(arg))).astype(backend.real_dtype_of(state.object))
    fn = lambda a: backend.ifft2(backend.fft2(a.astype(backend.complex_dtype_of(a))) * mask)  # noqa: E731
    return state.copy(object=filter_part(state.object, params.part, fn))


# ----------------------------------------------------------------------------- DCT sparsity
class DctThresholdParams(ConstraintParams):
    keep: float = Field(0.1, gt=0, le=1, description="Fraction of the strongest DCT coefficients kept per slice.")
    part: Part = Field("phase", description="complex, amplitude, phase or both.")


def dct_threshold_2d(x: Any, keep: float) -> Any:
    """Keep the strongest ``keep`` fraction of the 2-D DCT-II coefficients of each image.

    The DCT-II of x equals (up to a unit-modulus twiddle) the FFT of x's half-sample
    symmetric extension, and each coefficient appears there with equal magnitude, so
    thresholding |FFT| of the extension and cropping back is a DCT threshold; no scipy.
    """
    xp = backend.namespace(x)
    h, w = x.shape[-2:]
    ext = mirror_extend(x)
    spec = backend.fft2(ext.astype(backend.complex_dtype_of(x)))
    # Rank as the orthonormal DCT does: its k = 0 row and column are scaled by 1/sqrt(2).
    rank = xp.abs(spec) * _dc_scale(2 * h, xp)[:, None] * _dc_scale(2 * w, xp)[None, :]
    mag = rank[..., :h, :w].reshape(*x.shape[:-2], h * w)
    n_keep = max(1, int(math.ceil(keep * h * w - 1e-9)))  # 0.1 * 120 must keep 12, not 13
    thresh = xp.sort(mag, axis=-1)[..., h * w - n_keep][..., None, None]
    spec = spec * (rank >= thresh * (1 - 1e-6))
    return backend.ifft2(spec)[..., :h, :w]


def _dc_scale(n: int, xp: Any) -> Any:
    s = xp.ones(n, dtype="float64")
    s[0] = 1 / math.sqrt(2)
    return s


def dct_threshold(state: Any, params: DctThresholdParams, ctx: Context) -> Any:
    fn = lambda a: dct_threshold_2d(a, params.keep)  # noqa: E731
    return state.copy(object=filter_part(state.object, params.part, fn))


# ----------------------------------------------------------------------------- z recentring
class ZRecenterParams(ConstraintParams):
    percentile: float = Field(95.0, ge=0, lt=100, description="Phase values above this percentile weigh the CoM.")
    scale: float = Field(1.0, gt=0, le=1, description="Fraction of the measured offset applied.")
    max_shift_slices: int = Field(10, ge=0, description="Largest shift applied, in slices.")


def depth_centroid(phase: Any, percentile: float) -> float:
    """Centre of mass along s of the strong (above-percentile) phase, in slices."""
    xp = backend.namespace(phase)
    flat = phase.reshape(-1)
    cut = xp.sort(flat)[min(flat.shape[0] - 1, int(percentile / 100 * flat.shape[0]))]
    strong = xp.where(phase > cut, phase, 0.0)
    per_slice = xp.sum(strong, axis=(0, 2, 3))
    s = xp.arange(phase.shape[1], dtype=per_slice.dtype)
    com = backend.to_numpy(xp.sum(per_slice * s) / xp.maximum(xp.sum(per_slice), 1e-30))
    return float(com)


def shift_slices(obj: Any, n: int) -> Any:
    """Move the object n slices deeper (n > 0) filling with vacuum (transmission 1)."""
    xp = backend.namespace(obj)
    out = xp.ones_like(obj)
    s = obj.shape[1]
    if n >= 0:
        out[:, n:] = obj[:, : s - n]
    else:
        out[:, : s + n] = obj[:, -n:]
    return out


def z_recenter(state: Any, params: ZRecenterParams, ctx: Context) -> Any:
    """Keep the object centred in depth; refocus the probe by the same distance.

    Content moved n slices deeper sits n Δz further from the probe plane, so the probe is
    propagated by -n Δz (its focus moves n Δz deeper) and C10 is lowered by n Δz.
    """
    s = state.n_slices
    if s < 2:
        return state
    xp = backend.namespace(state.object)
    com = depth_centroid(backend.angle(state.object), params.percentile)
    n = int(round(params.scale * ((s - 1) / 2 - com)))
    n = max(-params.max_shift_slices, min(params.max_shift_slices, n))
    if n == 0:
        return state
    dz = float(backend.to_numpy(state.slice_thickness)[0]) if state.slice_thickness is not None else 0.0
    probe = propagate_probe(state.probe, state.dx_a, ctx.wavelength_a, -n * dz)
    aberrations = dict(state.aberrations)
    if "C10" in aberrations:
        aberrations["C10"] = aberrations["C10"] - n * dz
    return state.copy(object=shift_slices(state.object, n), probe=probe, aberrations=aberrations)


SPECS = [
    ConstraintSpec("object_blur", BlurParams, lateral_blur, ("object",),
                   "Lateral Gaussian blur of each slice (§7.7), complex or amplitude/phase."),
    ConstraintSpec("object_depth_blur", DepthBlurParams, depth_blur, ("object",),
                   "Gaussian blur along the slice axis, reflected ends (§7.8)."),
    ConstraintSpec("kz_filter", KzFilterParams, kz_filter, ("object",),
                   "PtychoShelves arctan missing-wedge filter in (k_y, k_x, k_z) (§7.9)."),
    ConstraintSpec("object_lowpass", LowpassParams, lowpass, ("object",),
                   "Sigmoid lateral Fourier low-pass of each slice."),
    ConstraintSpec("object_dct_threshold", DctThresholdParams, dct_threshold, ("object",),
                   "Keep the strongest fraction of DCT coefficients per slice (sparsity)."),
    ConstraintSpec("object_z_recenter", ZRecenterParams, z_recenter, ("object", "probe"),
                   "Shift the object's depth centroid to the middle slice; refocus the probe."),
]
