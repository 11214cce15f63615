"""Fresnel propagation with tilt and band limit (physics.md §4.1).

H(k) = B(k) exp(-iπλΔz|k|²) exp(-2πiΔz(k_x tan t_x + k_y tan t_y)). B makes H non-unitary,
so the adjoint is multiplication by conj(H), never by 1/H.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from .. import backend
from ..errors import InputError
from . import grids

BAND_LIMIT_STYLES = ("hard", "abtem", "none")
ABTEM_CUTOFF = 0.6666666  # abtem.config antialias.cutoff (fraction of Nyquist)
ABTEM_TAPER = 0.01  # abtem.config antialias.taper (1/Å per 1/dx)


def band_limit(shape: tuple[int, int], dx_a: float, xp: ModuleType | None = None, style: str = "hard",
               dtype: Any = "float32") -> Any:
    """B(k): 'hard' 2/3-Nyquist disk; 'abtem' the same with abTEM's cosine taper; 'none' = 1."""
    xp = grids.resolve(xp)
    ky, kx = grids.freq_grid(shape, dx_a, xp=xp, dtype=dtype)
    k = xp.sqrt(ky * ky + kx * kx)
    k_nyquist = 1.0 / (2.0 * dx_a)
    if style == "hard":
        return xp.where(k <= (2.0 / 3.0) * k_nyquist, xp.ones_like(k), xp.zeros_like(k))
    if style == "abtem":
        kc, w = ABTEM_CUTOFF * k_nyquist, ABTEM_TAPER / dx_a
        taper = 0.5 * (1.0 + xp.cos(math.pi * (k - kc + w) / w))
        inner = xp.where(k > kc - w, taper, xp.ones_like(k))
        return xp.where(k > kc, xp.zeros_like(k), inner)
    if style == "none":
        return xp.ones_like(k)
    raise InputError(f"band limit style {style!r}: expected one of {', '.join(BAND_LIMIT_STYLES)}")


def fresnel_propagator(shape: tuple[int, int], dx_a: float, wavelength_a: float, dz_a: float, *,
                       tilt_mrad: Any = None, band_limit: str = "hard", xp: ModuleType | None = None,
                       dtype: Any = "complex64") -> Any:
    """H (M, N), or (B, M, N) for per-position tilts ``tilt_mrad`` (B, 2) ordered (t_y, t_x)."""
    xp = xp or (backend.namespace(tilt_mrad) if tilt_mrad is not None else grids.resolve(None))
    rdt = grids.real_dtype_name(dtype)
    ky, kx = grids.freq_grid(shape, dx_a, xp=xp, dtype=rdt)
    phase = (-math.pi * wavelength_a * dz_a) * (ky * ky + kx * kx)
    if tilt_mrad is not None:
        tan_y, tan_x = _tilt_tangents(tilt_mrad, xp, rdt)
        phase = phase - (2.0 * math.pi * dz_a) * (kx * tan_x + ky * tan_y)
    b = band_limit_array(shape, dx_a, xp, band_limit, rdt)
    return xp.astype(b, grids._dtype(xp, grids.complex_dtype_name(dtype))) * grids.cis(phase)


def band_limit_array(shape: tuple[int, int], dx_a: float, xp: ModuleType, style: str, dtype: Any) -> Any:
    return band_limit(shape, dx_a, xp=xp, style=style, dtype=dtype)


def _tilt_tangents(tilt_mrad: Any, xp: ModuleType, rdt: str) -> tuple[Any, Any]:
    """tan(t) of (B, 2) tilts in mrad, as (B, 1, 1) arrays (t_y, t_x); (2,) gives (1, 1)."""
    t = xp.astype(xp.asarray(tilt_mrad), grids._dtype(xp, rdt)) * 1e-3
    if t.ndim == 1:
        t = xp.reshape(t, (1, 2))
    if t.ndim != 2 or t.shape[1] != 2:
        raise InputError(f"tilt_mrad has shape {tuple(t.shape)}; expected (B, 2) ordered (t_y, t_x)")
    tan = xp.tan(t)
    squeeze = xp.asarray(tilt_mrad).ndim == 1
    ty = xp.reshape(tan[:, 0, ...], (-1, 1, 1))
    tx = xp.reshape(tan[:, 1, ...], (-1, 1, 1))
    return (ty[0], tx[0]) if squeeze else (ty, tx)


def propagator_derivatives(shape: tuple[int, int], dx_a: float, wavelength_a: float, dz_a: float, H: Any, *,
                           tilt_mrad: Any = None) -> dict[str, Any]:
    """∂H/∂Δz and ∂H/∂t_y, ∂H/∂t_x (per mrad) as in physics.md §5.4, same shape as H."""
    xp = backend.namespace(H)
    rdt = grids.real_dtype_name(H.dtype)
    ky, kx = grids.freq_grid(shape, dx_a, xp=xp, dtype=rdt)
    cdt = H.dtype
    rate = math.pi * wavelength_a * (ky * ky + kx * kx)
    if tilt_mrad is None:
        tan_y = tan_x = 0.0
        sec2_y = sec2_x = 1.0
    else:
        tan_y, tan_x = _tilt_tangents(tilt_mrad, xp, rdt)
        sec2_y, sec2_x = 1.0 + tan_y * tan_y, 1.0 + tan_x * tan_x
    rate = rate + 2.0 * math.pi * (kx * tan_x + ky * tan_y)
    minus_i_h = -1j * H
    return {
        "thickness": minus_i_h * xp.astype(rate, cdt),
        "tilt_y": minus_i_h * xp.astype(2.0 * math.pi * dz_a * 1e-3 * ky * sec2_y, cdt),
        "tilt_x": minus_i_h * xp.astype(2.0 * math.pi * dz_a * 1e-3 * kx * sec2_x, cdt),
    }


def propagate(psi: Any, H: Any) -> Any:
    """F⁻¹[H ⊙ F[ψ]] over the last two axes."""
    return backend.fourier_multiply(psi, H)


def propagate_adjoint(psi: Any, H: Any) -> Any:
    """Adjoint of ``propagate``: F⁻¹[conj(H) ⊙ F[ψ]]."""
    return backend.fourier_multiply(psi, H, conj=True)
