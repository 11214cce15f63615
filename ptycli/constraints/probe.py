"""Probe constraints (physics.md §7.1-§7.4): projections applied between updates."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from .. import backend
from .base import (
    ConstraintParams, ConstraintSpec, Context, centred_radius, freq2, fresnel, power_fraction_modes,
    propagate, require,
)


# ----------------------------------------------------------------------------- orthogonalise
class OrthogonalizeParams(ConstraintParams):
    """Orthogonalise incoherent probe modes (§7.1); no parameters beyond ``when``."""


def orthogonalize_modes(modes: Any) -> tuple[Any, Any]:
    """(P, ...) modes -> (orthogonal modes, powers), strongest first (§7.1).

    G = A A^H = V Λ V^H; the new modes V^H A are orthogonal with powers Λ, and
    Σ_p |P_p(r)|² is unchanged because V is unitary.
    """
    xp = backend.namespace(modes)
    a = modes.reshape(modes.shape[0], -1)
    gram = a @ xp.conj(a).T
    lam, vec = xp.linalg.eigh(gram)
    vec = vec[:, ::-1]  # eigh sorts ascending; we want descending power
    out = (xp.conj(vec).T @ a).reshape(modes.shape).astype(modes.dtype)
    return out, lam[::-1].real


def orthogonalize(state: Any, params: OrthogonalizeParams, ctx: Context) -> Any:
    if state.probe.shape[0] < 2:
        return state
    return state.copy(probe=orthogonalize_modes(state.probe)[0])


def orthogonalize_object_modes(state: Any, params: OrthogonalizeParams, ctx: Context) -> Any:
    """Object modes treated as the probe modes (§7.1), slice by slice stacked into one row."""
    if state.object.shape[0] < 2:
        return state
    return state.copy(object=orthogonalize_modes(state.object)[0])


# ----------------------------------------------------------------------------- fixed intensity
class FixIntensityParams(ConstraintParams):
    counts: float | None = Field(None, gt=0, description="Target Σ|P|² [counts/frame]; default N_e of the data.")


def fix_intensity(state: Any, params: FixIntensityParams, ctx: Context) -> Any:
    """P ← P sqrt(N_e / Σ_p Σ_r |P_p|²) (§7.2)."""
    xp = backend.namespace(state.probe)
    target = params.counts or require(ctx.counts_per_frame, "counts per frame (N_e)", "fix_probe_intensity")
    power = xp.sum(xp.abs(state.probe) ** 2)
    scale = xp.sqrt(target / power).astype(backend.real_dtype_of(state.probe))
    return state.copy(probe=state.probe * scale)


# ----------------------------------------------------------------------------- Fourier mask
class FourierMaskParams(ConstraintParams):
    radius_mrad: float | None = Field(None, gt=0, description="Mask radius; default 1.1 × semi-angle (§7.3).")
    width_mrad: float = Field(0.5, gt=0, description="Sigmoid edge width.")
    power_fraction: float = Field(0.95, gt=0, le=1, description="Mask the strongest modes holding this power.")


def sigmoid_aperture(shape: tuple[int, int], dx_a: float, wavelength: float, radius_mrad: float,
                     width_mrad: float, xp: Any) -> Any:
    """1 / (1 + exp((α - α_r)/w)) on the unshifted k grid; α = λ|k| in mrad."""
    ky, kx = freq2(shape, xp, dx_a)
    alpha_mrad = wavelength * 1e3 * xp.sqrt(ky * ky + kx * kx)
    arg = xp.clip((alpha_mrad - radius_mrad) / width_mrad, -60.0, 60.0)
    return (1.0 / (1.0 + xp.exp(arg))).astype("float32")


def fourier_mask(state: Any, params: FourierMaskParams, ctx: Context) -> Any:
    """F[P_p] ← F[P_p] ⊙ mask(k) for the modes holding ``power_fraction`` of the power."""
    xp = backend.namespace(state.probe)
    radius = params.radius_mrad
    if radius is None:
        radius = 1.1 * require(state.semiangle_mrad, "semiangle_mrad (or radius_mrad)", "probe_fourier_mask")
    lam = require(ctx.wavelength_a, "the wavelength", "probe_fourier_mask")
    mask = sigmoid_aperture(state.window, state.dx_a, lam, radius, params.width_mrad, xp)
    # The probe is stored centred (§1.4): shift to the origin so the mask acts on its spectrum only.
    probe = state.probe.copy()
    for p in power_fraction_modes(probe, params.power_fraction):
        spec = backend.fft2(backend.ifftshift(probe[p]))
        probe[p] = backend.fftshift(backend.ifft2(spec * mask)).astype(probe.dtype)
    return state.copy(probe=probe)


# ----------------------------------------------------------------------------- real-space window
class WindowParams(ConstraintParams):
    radius_a: float | None = Field(None, gt=0, description="Half-maximum radius; default 0.45 M dx (§7.4).")
    order: float = Field(4.0, gt=0, description="Super-Gaussian order n: w = 2^{-(ρ/R)^{2n}}.")
    z_range_a: float = Field(500.0, ge=0, description="Focal plane search ±range (0 = no search).")
    z_steps: int = Field(101, ge=1, description="Number of planes in the search.")
    power_fraction: float = Field(0.95, gt=0, le=1, description="Window the strongest modes holding this power.")


def super_gaussian(shape: tuple[int, int], radius_px: float, order: float, xp: Any) -> Any:
    rho = centred_radius(shape, xp, dtype="float64")
    return xp.exp(-math.log(2.0) * (rho / radius_px) ** (2 * order)).astype("float32")


def focal_plane_a(probe_mode: Any, dx_a: float, wavelength: float, z_range_a: float, z_steps: int) -> float:
    """Depth [Å] from the probe plane at which the peak intensity of the mode is highest."""
    if z_range_a == 0 or z_steps < 2:
        return 0.0
    xp = backend.namespace(probe_mode)
    z = [-z_range_a + 2 * z_range_a * i / (z_steps - 1) for i in range(z_steps)]
    spec = backend.fft2(probe_mode)
    peaks = []
    for chunk in range(0, z_steps, 16):  # bounded memory: 16 planes at a time
        h = fresnel(probe_mode.shape, dx_a, wavelength, z[chunk:chunk + 16], xp, probe_mode.dtype)
        peaks.append(xp.max(xp.abs(backend.ifft2(spec[None] * h)) ** 2, axis=(-2, -1)))
    peak = backend.to_numpy(xp.concatenate(peaks))
    return float(z[int(peak.argmax())])


def window(state: Any, params: WindowParams, ctx: Context) -> Any:
    """Apodise the probe at its focal plane, then propagate back (PtyRAD probe_mask_r)."""
    xp = backend.namespace(state.probe)
    lam = require(ctx.wavelength_a, "the wavelength", "probe_window")
    m = state.window[0]
    radius_px = (params.radius_a / state.dx_a) if params.radius_a else 0.45 * m
    w = super_gaussian(state.window, radius_px, params.order, xp)
    modes = power_fraction_modes(state.probe, params.power_fraction)
    z_f = focal_plane_a(state.probe[modes[0]], state.dx_a, lam, params.z_range_a, params.z_steps)
    h = fresnel(state.window, state.dx_a, lam, [z_f], xp, state.probe.dtype)[0]
    probe = state.probe.copy()
    for p in modes:
        at_focus = propagate(probe[p], h) * w
        probe[p] = propagate(at_focus, xp.conj(h)).astype(probe.dtype)
    return state.copy(probe=probe)


# ----------------------------------------------------------------------------- centring
class CentreParams(ConstraintParams):
    compensate_positions: bool = Field(True, description="Move positions with the probe so the model is unchanged.")


def centroid_px(intensity: Any) -> tuple[float, float]:
    """Intensity centroid (y, x) in px of a (M, N) image."""
    xp = backend.namespace(intensity)
    y = xp.arange(intensity.shape[0], dtype="float64")
    x = xp.arange(intensity.shape[1], dtype="float64")
    total = xp.sum(intensity)
    cy = xp.sum(xp.sum(intensity, axis=1) * y) / total
    cx = xp.sum(xp.sum(intensity, axis=0) * x) / total
    c = backend.to_numpy(xp.stack([cy, cx]))
    return float(c[0]), float(c[1])


def fourier_shift(images: Any, shift_yx: tuple[float, float]) -> Any:
    """Shift (..., M, N) images by +shift px with the shift theorem (§1.4)."""
    xp = backend.namespace(images)
    uy, ux = freq2(images.shape[-2:], xp, dtype="float64")
    ramp = xp.exp(-2j * math.pi * (uy * shift_yx[0] + ux * shift_yx[1])).astype(images.dtype)
    return backend.ifft2(backend.fft2(images) * ramp).astype(images.dtype)


def centre(state: Any, params: CentreParams, ctx: Context) -> Any:
    """Shift all modes so Σ_p|P_p|² has its centroid at (M//2, N//2).

    A probe moved by -d with positions moved by +d illuminates the same object pixels,
    so with ``compensate_positions`` the forward model is unchanged.
    """
    xp = backend.namespace(state.probe)
    cy, cx = centroid_px(xp.sum(xp.abs(state.probe) ** 2, axis=0))
    dy, dx = cy - state.window[0] // 2, cx - state.window[1] // 2
    probe = fourier_shift(state.probe, (-dy, -dx))
    changes: dict[str, Any] = {"probe": probe}
    if params.compensate_positions:
        offset = backend.to_device([dy, dx], backend.namespace(state.positions), state.positions.dtype)
        changes["positions"] = state.positions + offset
    return state.copy(**changes)


SPECS = [
    ConstraintSpec("orthogonalize_probe", OrthogonalizeParams, orthogonalize, ("probe",),
                   "Orthogonal incoherent probe modes by Gram eigendecomposition, powers kept (§7.1)."),
    ConstraintSpec("orthogonalize_object_modes", OrthogonalizeParams, orthogonalize_object_modes, ("object",),
                   "Orthogonal object modes, as for the probe (§7.1)."),
    ConstraintSpec("fix_probe_intensity", FixIntensityParams, fix_intensity, ("probe",),
                   "Scale the probe so Σ|P|² equals the counts per frame N_e (§7.2)."),
    ConstraintSpec("probe_fourier_mask", FourierMaskParams, fourier_mask, ("probe",),
                   "Sigmoid aperture on the probe spectrum of the dominant modes (§7.3)."),
    ConstraintSpec("probe_window", WindowParams, window, ("probe",),
                   "Super-Gaussian real-space window applied at the probe's focal plane (§7.4)."),
    ConstraintSpec("probe_centre", CentreParams, centre, ("probe", "positions"),
                   "Move the probe's intensity centroid to the window centre; positions follow."),
]
