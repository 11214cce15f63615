"""PyPty's three kinds of beam tilt: before, inside and after the specimen.

- **before**: a shift in the aperture plane, i.e. the incident probe is tilted: ψ₁ ← R(t) ψ₁.
- **inside**: the tilt of the inter-slice propagator (physics.md §4.1; ``State.tilts``),
  the beam walks sideways by Δz tan t per slice.
- **after**: a shift in the detector plane: the exit wave is tilted before the far field,
  Ψ ← F[R(t) F⁻¹Ψ], which moves the pattern by tan(t)/λ.

R(t)(r) = exp(2πi r·tan(t)/λ) with r in Å from the window centre (M//2, N//2) and t in mrad
(y, x). The sign matches §4.1: a positive t_x moves the beam towards +x with depth and the
pattern towards +k_x. For one slice, before and after are the same map (R commutes with the
transmission); with several slices they differ, and the inside tilt is the third choice.
Gradients (∇ = ∂/∂Re + i ∂/∂Im, physics.md §5.1): with g = ∇ at the tilted wave w = R v,

    ∇_v L = conj(R) g,    dL/dt_a = Re Σ conj(g) (2πi r_a c) w = -2π c Σ r_a Im(conj(g) w)

with c = 1e-3 (1 + tan² t)/λ per mrad.
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from . import grids


def _tan_k(tilts_mrad: Any, wavelength_a: float) -> tuple[Any, Any]:
    """(k = tan(t)/λ [1/Å], dk/dt per mrad), both (B, 2)."""
    xp = backend.namespace(tilts_mrad)
    tan = xp.tan(tilts_mrad * 1e-3)
    return tan / wavelength_a, (1e-3 / wavelength_a) * (1.0 + tan * tan)


def ramp(shape: tuple[int, int], dx_a: float, wavelength_a: float, tilts_mrad: Any, dtype: Any) -> Any:
    """R(t) (B, M, N) for tilts (B, 2) mrad (y, x), in the complex ``dtype``."""
    xp = backend.namespace(tilts_mrad)
    rdt = grids.real_dtype_name(dtype)
    y, x = grids.real_coords_a(shape, dx_a, xp=xp, dtype=rdt)
    k, _ = _tan_k(xp.astype(tilts_mrad, grids._dtype(xp, rdt)), wavelength_a)
    phase = (2.0 * math.pi) * (k[:, 0, None, None, ...] * y[None] + k[:, 1, None, None, ...] * x[None])
    return xp.astype(grids.cis(phase), grids._dtype(xp, dtype))


def tilt_gradient(grad_w: Any, w: Any, shape: tuple[int, int], dx_a: float, wavelength_a: float,
                  tilts_mrad: Any) -> Any:
    """dL/dt (B, 2) per mrad for w = R(t) v, from g = ∇_w L; both (B, ..., M, N)."""
    xp = backend.namespace(w)
    rdt = grids.real_dtype_name(w.dtype)
    cross = xp.imag(xp.conj(grad_w) * w)
    while cross.ndim > 3:  # sum probe/object modes
        cross = xp.sum(cross, axis=1)
    y, x = grids.real_coords_a(shape, dx_a, xp=xp, dtype=rdt)
    _, dk = _tan_k(xp.astype(tilts_mrad, grids._dtype(xp, rdt)), wavelength_a)
    gy = xp.sum(cross * y[None], axis=(-2, -1)) * dk[:, 0, ...]
    gx = xp.sum(cross * x[None], axis=(-2, -1)) * dk[:, 1, ...]
    return (-2.0 * math.pi) * xp.stack([gy, gx], axis=1)


def _b5(r: Any, like: Any) -> Any:
    """Broadcast a (B, M, N) ramp against (B, ..., M, N)."""
    xp = backend.namespace(r)
    return xp.reshape(r, (r.shape[0],) + (1,) * (like.ndim - 3) + tuple(r.shape[1:]))


class AfterTilt:
    """The detector-plane shift Ψ -> F[R(t) F⁻¹Ψ] per position, as a linear detector transform.

    Composes with another transform ``then`` (e.g. near field) applied after it. After
    ``apply``, ``adjoint`` also leaves dL/dt in ``self.grad`` (B, 2) per mrad.
    """

    def __init__(self, shape: tuple[int, int], dx_a: float, wavelength_a: float, tilts_mrad: Any, dtype: Any,
                 then: Any = None):
        self.shape, self.dx_a, self.wavelength_a = shape, dx_a, wavelength_a
        self.tilts = tilts_mrad
        self.R = ramp(shape, dx_a, wavelength_a, tilts_mrad, dtype)
        self.then = then
        self.exit: Any = None
        self.grad: Any = None

    def apply(self, Psi: Any) -> Any:
        self.exit = _b5(self.R, Psi) * backend.ifft2(Psi)  # the tilted exit wave
        out = backend.fft2(self.exit)
        return out if self.then is None else self.then.apply(out)

    def adjoint(self, grad_W: Any) -> Any:
        g = grad_W if self.then is None else self.then.adjoint(grad_W)
        g_exit = backend.ifft2(g)  # F unitary: the adjoint of F is F⁻¹
        self.grad = tilt_gradient(g_exit, self.exit, self.shape, self.dx_a, self.wavelength_a, self.tilts)
        xp = backend.namespace(g_exit)
        return backend.fft2(xp.conj(_b5(self.R, g_exit)) * g_exit)
