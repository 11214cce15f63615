"""Detector point-spread: a Gaussian blur of the model intensity, and its σ gradient.

The detector sees I_b = g_σ * I, a circular convolution with a normalised Gaussian of
standard deviation σ detector pixels. In Fourier space (u in cycles/px) that is the
product with G_σ(u) = exp(-2π² σ² |u|²); convolution is circular on the unshifted grid,
which is exactly pixel adjacency on the detector (DC at [0, 0], -1 wraps to M-1).
G is real and even, so the blur is self-adjoint: ∂L/∂I = blur(∂L/∂I_b), and

    dL/dσ = Σ ∂L/∂I_b ⊙ F⁻¹[ F[I] ⊙ (-4π² σ |u|²) G_σ ]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import backend
from . import grids


def _u2(shape: tuple[int, int], xp: Any, dtype: Any) -> Any:
    uy, ux = grids.pixel_freq_grid(shape, xp=xp, dtype=dtype)
    return uy * uy + ux * ux


def transfer(shape: tuple[int, int], sigma_px: float, *, xp: Any = None, dtype: Any = "float32") -> Any:
    """G_σ(u) (M, N), unshifted."""
    xp = grids.resolve(xp)
    return xp.exp(-2.0 * math.pi**2 * sigma_px**2 * _u2(shape, xp, dtype))


def blur(intensity: Any, sigma_px: float) -> Any:
    """g_σ * I over the last two axes (real in, real out)."""
    if sigma_px == 0:
        return intensity
    xp = backend.namespace(intensity)
    G = transfer(tuple(intensity.shape[-2:]), sigma_px, xp=xp, dtype=grids.real_dtype_name(intensity.dtype))
    return _nonnegative(xp.real(backend.ifft2(backend.fft2(intensity) * G)))


def _nonnegative(blurred: Any) -> Any:
    # g_σ * I ≥ 0 exactly, but the FFT leaves round-off negatives (~1e-7 of the peak in
    # float32) where I = 0, and sqrt/log noise models turn those into NaN. Only round-off
    # is clipped, so ∂L/∂I_b is passed through unchanged.
    xp = backend.namespace(blurred)
    return xp.maximum(blurred, xp.zeros_like(blurred))


class BlurredObjective:
    """Wrap an objective I -> (loss, ∂L/∂I) so it sees the blurred intensity.

    After a call, ``sigma_grad`` holds dL/dσ (summed over the batch) as a 0-d array.
    """

    def __init__(self, objective: Callable[[Any], tuple[Any, Any]], sigma_px: float):
        self.objective, self.sigma_px = objective, float(sigma_px)
        self.sigma_grad: Any = None

    def __call__(self, intensity: Any) -> tuple[Any, Any]:
        xp = backend.namespace(intensity)
        shape = tuple(intensity.shape[-2:])
        rdt = grids.real_dtype_name(intensity.dtype)
        u2 = _u2(shape, xp, rdt)
        G = xp.exp(-2.0 * math.pi**2 * self.sigma_px**2 * u2)
        spec = backend.fft2(intensity)
        loss, dIb = self.objective(_nonnegative(xp.real(backend.ifft2(spec * G))))
        dG = (-4.0 * math.pi**2 * self.sigma_px) * u2 * G
        self.sigma_grad = xp.sum(dIb * xp.real(backend.ifft2(spec * dG)))
        return loss, xp.real(backend.ifft2(backend.fft2(dIb) * G))


# ----------------------------------------------------------------------------- upsampling
# A beam wider than the detector's real-space window M·dx is modelled on a window U× larger
# (same dx), whose far field is sampled U× finer (dk/U); U×U model pixels then fall into one
# detector pixel. On the unshifted grid detector pixel q (frequency q dk) collects the model
# frequencies U q + o, o = -(U//2) ... U - 1 - U//2 (mod U M): a roll by U//2 then a reshape.
# For odd U the block is centred on q; for even U it sits half a model pixel towards -k.


def bin_pixels(intensity: Any, factor: int) -> Any:
    """(..., U M, U N) model intensity -> (..., M, N) detector intensity (sums, so counts are kept)."""
    if factor == 1:
        return intensity
    xp = backend.namespace(intensity)
    *lead, mu, nu = intensity.shape
    m, n = mu // factor, nu // factor
    rolled = xp.roll(intensity, (factor // 2, factor // 2), axis=(-2, -1))
    blocks = xp.reshape(rolled, (*lead, m, factor, n, factor))
    return xp.sum(xp.sum(blocks, axis=-1), axis=-2)


def bin_adjoint(grad: Any, factor: int) -> Any:
    """Adjoint of `bin_pixels`: each detector pixel's value copied to its U×U model pixels."""
    if factor == 1:
        return grad
    xp = backend.namespace(grad)
    *lead, m, n = grad.shape
    spread = xp.broadcast_to(grad[..., :, None, :, None], (*lead, m, factor, n, factor))
    spread = xp.reshape(spread, (*lead, m * factor, n * factor))
    return xp.roll(spread, (-(factor // 2), -(factor // 2)), axis=(-2, -1))
