"""The probe and its mixed-state modes (physics.md §3.4, §7.1).

ψ(k) = A(k) exp(-iχ(k)); P = fftshift(F⁻¹[ψ]) scaled so Σ|P|² = counts (unitary FFT).
Construction runs in float64 and is cast once at the end: χ reaches hundreds of radians
outside the aperture and float32 would scramble its phase there.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from .. import backend
from ..errors import InputError
from . import grids
from .aberrations import chi
from .electron import wavelength_a as _wavelength_a
from .propagation import band_limit as _band_limit


def aperture(ky: Any, kx: Any, wavelength_a: float, semiangle_mrad: float, edge_mrad: float | None = None) -> Any:
    """Soft aperture A = clip((α_max - α)/w + 1/2, 0, 1), w ≥ one reciprocal pixel.

    The minimum edge follows the grid direction, λ·sqrt((cosφ dk_x)² + (sinφ dk_y)²), so a
    non-square window gets the same one-pixel ramp along each axis (abTEM's choice too).
    """
    xp = backend.namespace(ky, kx)
    m, n = ky.shape[-2], kx.shape[-1]
    dk_y = _spacing(ky, m)
    dk_x = _spacing(kx, n)
    k = xp.sqrt(ky * ky + kx * kx)
    alpha = wavelength_a * k
    k_safe = xp.where(k > 0, k, xp.ones_like(k))
    cos2 = xp.where(k > 0, (kx / k_safe) ** 2, xp.ones_like(k))
    sin2 = xp.where(k > 0, (ky / k_safe) ** 2, xp.zeros_like(k))
    w_pix = wavelength_a * xp.sqrt(cos2 * dk_x**2 + sin2 * dk_y**2)
    w = xp.maximum(w_pix, xp.full_like(w_pix, (edge_mrad or 0.0) * 1e-3))
    return xp.clip((semiangle_mrad * 1e-3 - alpha) / w + 0.5, 0.0, 1.0)


def _spacing(k: Any, size: int) -> float:
    """Reciprocal pixel of an unshifted fftfreq axis (entry 1 minus entry 0)."""
    if size < 2:
        return 0.0
    flat = backend.to_numpy(k).reshape(-1)
    return float(flat[1] - flat[0])


def probe_spectrum(shape: tuple[int, int], dx_a: float, energy_ev: float, semiangle_mrad: float,
                   aberrations: dict[str, float] | None = None, *, edge_mrad: float | None = None,
                   xp: ModuleType | None = None) -> Any:
    """ψ(k) = A(k) exp(-iχ(k)), unshifted, float64/complex128, not normalised."""
    xp = grids.resolve(xp)
    lam = _wavelength_a(energy_ev)
    ky, kx = grids.freq_grid(shape, dx_a, xp=xp, dtype="float64")
    a = aperture(ky, kx, lam, semiangle_mrad, edge_mrad)
    return xp.astype(a, xp.complex128) * grids.cis(-chi(ky, kx, lam, aberrations))


def make_probe(shape: tuple[int, int], dx_a: float, energy_ev: float, semiangle_mrad: float,
               aberrations: dict[str, float] | None = None, *, counts: float = 1.0,
               edge_mrad: float | None = None, band_limit: str | None = None, xp: ModuleType | None = None,
               dtype: Any = "complex64") -> Any:
    """Probe (M, N) centred at pixel (M//2, N//2), Σ|P|² = counts.

    ``band_limit`` ("hard" | "abtem") applies the multislice band limit B(k) to the spectrum
    once (physics.md §4.1); it only matters when the aperture reaches 2/3 of Nyquist.
    """
    xp = grids.resolve(xp)
    spectrum = probe_spectrum(shape, dx_a, energy_ev, semiangle_mrad, aberrations, edge_mrad=edge_mrad, xp=xp)
    if band_limit is not None:
        spectrum = spectrum * xp.astype(_band_limit(shape, dx_a, xp=xp, style=band_limit, dtype="float64"),
                                        xp.complex128)
    probe = backend.fftshift(backend.ifft2(spectrum))
    return xp.astype(normalize(probe, counts), grids._dtype(xp, dtype))


def normalize(probe: Any, counts: float) -> Any:
    """Scale all modes together so Σ_p Σ_r |P_p|² = counts."""
    xp = backend.namespace(probe)
    power = xp.sum(xp.real(probe * xp.conj(probe)))
    return probe * xp.sqrt(counts / power)


def probe_from_pacbed(mean_pattern: Any, dx_a: float, energy_ev: float,
                      aberrations: dict[str, float] | None = None, counts: float | None = None) -> Any:
    """Probe with amplitude sqrt(PACBED) (DC-centred input) and phase exp(-iχ).

    ``counts`` defaults to the pattern's own total (the unitary FFT keeps it).
    """
    xp = backend.namespace(mean_pattern)
    pattern = backend.ifftshift(xp.clip(mean_pattern, 0.0, None))
    shape = tuple(pattern.shape[-2:])
    ky, kx = grids.freq_grid(shape, dx_a, xp=xp, dtype=grids.real_dtype_name(pattern.dtype))
    amp = xp.astype(xp.sqrt(pattern), grids._dtype(xp, grids.complex_dtype_name(pattern.dtype)))
    spectrum = amp * grids.cis(-chi(ky, kx, _wavelength_a(energy_ev), aberrations))
    total = counts if counts is not None else float(backend.to_numpy(xp.sum(pattern)))
    if not total > 0:
        raise InputError("mean pattern has no positive counts; cannot build a probe from it")
    return normalize(backend.fftshift(backend.ifft2(spectrum)), total)


# ----------------------------------------------------------------------------- modes
def orthogonalize_modes(probe: Any) -> Any:
    """Rotate modes to orthogonal ones with descending powers (§7.1); Σ_p|P_p(r)|² unchanged."""
    modes, _ = _eig_modes(probe)
    return modes


def mode_occupancies(probe: Any) -> Any:
    """Fractions λ_p / Σλ of the orthogonalised modes (descending)."""
    xp = backend.namespace(probe)
    _, lam = _eig_modes(probe)
    return lam / xp.sum(lam)


def _eig_modes(probe: Any) -> tuple[Any, Any]:
    xp = backend.namespace(probe)
    n_modes = probe.shape[0]
    a = xp.reshape(probe, (n_modes, -1))
    gram = a @ xp.conj(xp.permute_dims(a, (1, 0)))
    lam, vec = xp.linalg.eigh(gram)  # ascending
    order = xp.flip(xp.arange(n_modes))
    vec = xp.take(vec, order, axis=1)
    lam = xp.take(lam, order)
    modes = xp.conj(xp.permute_dims(vec, (1, 0))) @ a
    return xp.reshape(modes, probe.shape), xp.clip(xp.real(lam), 0.0, None)


def init_modes(probe: Any, n_modes: int, kind: str = "hermite", decay: float = 0.5, *,
               dx_a: float | None = None, energy_ev: float | None = None,
               defocus_spread_a: float = 20.0) -> Any:
    """(n_modes, M, N) initial mixed state from one probe (M, N) (physics.md §3.4).

    Mode 1 keeps the given probe's shape. ``hermite``: modes 2.. are the probe times
    x, y, xy, x², y², ... ; ``defocus-spread``: the probe propagated to ±δ, ±2δ, ...
    (needs dx_a and energy_ev). Both are Gram–Schmidt-orthogonalised against the earlier
    modes and given geometric powers decay^p; the total power equals the input's.
    """
    if n_modes < 1:
        raise InputError(f"probe modes: {n_modes}; expected >= 1")
    xp = backend.namespace(probe)
    if kind == "hermite":
        raw = _hermite_candidates(probe, n_modes)
    elif kind == "defocus-spread":
        if dx_a is None or energy_ev is None:
            raise InputError("init_modes kind='defocus-spread' needs dx_a and energy_ev")
        raw = _defocus_candidates(probe, n_modes, dx_a, energy_ev, defocus_spread_a)
    else:
        raise InputError(f"probe mode kind {kind!r}: expected hermite or defocus-spread")
    modes = _gram_schmidt(raw)
    total = xp.sum(xp.real(probe * xp.conj(probe)))
    powers = [decay**p for p in range(n_modes)]
    scale = [math.sqrt(w / sum(powers)) for w in powers]
    weights = xp.reshape(xp.asarray(scale, dtype=grids._dtype(xp, grids.real_dtype_name(probe.dtype))), (n_modes, 1, 1))
    return modes * xp.astype(weights, probe.dtype) * xp.sqrt(total)


def _hermite_candidates(probe: Any, n_modes: int) -> list[Any]:
    xp = backend.namespace(probe)
    m, n = probe.shape[-2:]
    y, x = grids.real_coords_a((m, n), 2.0 / max(m, n), xp=xp, dtype=grids.real_dtype_name(probe.dtype))
    polys = [y * 0 + 1, x + 0 * y, y + 0 * x, x * y, x * x - y * 0, y * y - x * 0]
    order = 3
    while len(polys) < n_modes:  # higher orders when many modes are asked for
        polys += [x**i * y ** (order - i) for i in range(order + 1)]
        order += 1
    return [probe * xp.astype(p, probe.dtype) for p in polys[:n_modes]]


def _defocus_candidates(probe: Any, n_modes: int, dx_a: float, energy_ev: float, spread_a: float) -> list[Any]:
    xp = backend.namespace(probe)
    lam = _wavelength_a(energy_ev)
    ky, kx = grids.freq_grid(tuple(probe.shape[-2:]), dx_a, xp=xp, dtype=grids.real_dtype_name(probe.dtype))
    spectrum = backend.fft2(probe)
    out = [probe]
    for i in range(1, n_modes):
        dz = spread_a * ((i + 1) // 2) * (1 if i % 2 else -1)
        out.append(backend.ifft2(spectrum * grids.cis(-math.pi * lam * dz * (ky * ky + kx * kx))))
    return out


def _gram_schmidt(vectors: list[Any]) -> Any:
    """Orthonormal modes spanning the candidates in order (the first keeps its shape)."""
    xp = backend.namespace(vectors[0])
    basis: list[Any] = []
    for v in vectors:
        w = v
        for b in basis:  # twice-iterated classical GS is stable enough for a handful of modes
            w = w - xp.sum(xp.conj(b) * w) * b
        for b in basis:
            w = w - xp.sum(xp.conj(b) * w) * b
        norm = xp.sqrt(xp.sum(xp.real(w * xp.conj(w))))
        if float(backend.to_numpy(norm)) <= 1e-6 * math.sqrt(float(backend.to_numpy(xp.sum(xp.abs(v) ** 2)))):
            raise InputError("probe modes: candidates are linearly dependent (probe too small for its window?)")
        basis.append(w / norm)
    return xp.stack(basis)
