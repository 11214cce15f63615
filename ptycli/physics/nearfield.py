"""Near-field (Fresnel) ptychography: the detector sits a defocus z_j behind the exit plane.

Instead of the far field Ψ = F[e_S], measurement j records |W_j|² with

    W_j = F⁻¹[ H_(z_j) ⊙ Ψ ],   H_z(k) = exp(-iπ λ z |k|²)          (physics.md §4.1, no tilt)

(held ifftshifted like a pattern, so stores show it centred)

(in the magnified frame of the Fresnel scaling theorem: a point source at distance z1 and a
detector at z1 + z2 give z = z1 z2/(z1 + z2) and magnification (z1 + z2)/z1; ptycli
works in the demagnified sample frame, so dx is the detector pixel / magnification).
The adjoint is ∇_Ψ = conj(H_z) ⊙ F[∇_W] (F unitary), so gradients reuse the far-field
chain of §5.3 unchanged.

Sampling: the transfer-function propagator is exact without aliasing only while its
chirp is sampled, z ≤ z_c = N dx²/λ (N the smaller window side), i.e. the Fresnel number
of one pixel over the window N_F = (N dx)²/(λ z) ≥ N. Longer distances need a larger
window (or the impulse-response form), so `NearField` refuses them with the numbers.
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from ..errors import InputError
from . import grids


def critical_distance_a(shape: tuple[int, int], dx_a: float, wavelength_a: float) -> float:
    """Largest |z| [Å] the transfer-function propagator samples without aliasing."""
    return min(shape) * dx_a**2 / wavelength_a


def fresnel_number(width_a: float, wavelength_a: float, z_a: float) -> float:
    """N_F = width² / (λ z)."""
    return width_a**2 / (wavelength_a * abs(z_a)) if z_a else math.inf


class NearField:
    """Per-measurement Fresnel propagation of the exit wave to the detector (a linear map on Ψ)."""

    def __init__(self, shape: tuple[int, int], dx_a: float, wavelength_a: float, defocus_a: Any, *,
                 xp: Any = None, dtype: Any = "complex64"):
        xp = grids.resolve(xp)
        z = backend.to_numpy(defocus_a).reshape(-1).astype("float64")
        limit = critical_distance_a(shape, dx_a, wavelength_a)
        worst = float(abs(z).max()) if z.size else 0.0
        if worst > limit:
            width = min(shape) * dx_a
            raise InputError(
                f"near-field defocus {worst:.4g} Å exceeds the sampled limit N dx²/λ = {limit:.4g} Å "
                f"(Fresnel number {fresnel_number(width, wavelength_a, worst):.3g} < N = {min(shape)}); "
                "use a larger window or a finer pixel")
        ky, kx = grids.freq_grid(shape, dx_a, xp=xp, dtype="float64")
        k2 = ky * ky + kx * kx
        zd = backend.to_device(z, xp)[:, None, None]
        phase = (-math.pi * wavelength_a) * zd * k2[None]
        self.H = xp.astype(xp.cos(phase) + 1j * xp.sin(phase), grids._dtype(xp, dtype))  # (B, M, N)

    def _h5(self, like: Any) -> Any:
        return self.H[:, None, None, ...] if like.ndim == 5 else self.H

    def apply(self, Psi: Any) -> Any:
        """W = ifftshift(F⁻¹[H_z Ψ]) for Ψ (B, P, Q, M, N) or (B, M, N).

        The image is centred in the window (probe axis at (M//2, N//2)); the ifftshift
        stores it like a diffraction pattern, so the store's DC-centred I/O convention
        (ifftshift on load, fftshift on save) shows near-field images centred as well.
        """
        return backend.ifftshift(backend.ifft2(self._h5(Psi) * Psi), axes=(-2, -1))

    def adjoint(self, grad_W: Any) -> Any:
        """∇_Ψ = conj(H_z) F[fftshift(∇_W)] (shifts are permutations: their adjoints invert them)."""
        xp = backend.namespace(grad_W)
        return xp.conj(self._h5(grad_W)) * backend.fft2(backend.fftshift(grad_W, axes=(-2, -1)))
