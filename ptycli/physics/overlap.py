"""The overlap operator: sub-pixel probe shifts and object windows (physics.md §1.5, §5.1).

A position p (object px, probe centre) splits into the window corner floor(p) - M//2 and a
fraction f in [0, 1) that moves the probe by +f through the Fourier shift theorem; the
object is never interpolated.
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from . import grids


def split_positions(positions_px: Any, shape: tuple[int, int]) -> tuple[Any, Any, Any]:
    """(y0 int (J,), x0 int (J,), frac (J, 2)) from probe centres (J, 2) in object px."""
    xp = backend.namespace(positions_px)
    base = xp.floor(positions_px)
    frac = positions_px - base
    corner = xp.astype(base, xp.int64)
    return corner[:, 0, ...] - shape[0] // 2, corner[:, 1, ...] - shape[1] // 2, frac


def shift_ramp(frac: Any, shape: tuple[int, int], dtype: Any = None, *, conj: bool = False) -> Any:
    """exp(-2πi(u_y f_y + u_x f_x)) as (B, M, N): multiplying a spectrum by it shifts by +f.

    ``conj`` gives the conjugate ramp (the shift by -f) without a separate conj pass.
    """
    xp = backend.namespace(frac)
    rdt = grids.real_dtype_name(dtype if dtype is not None else frac.dtype)
    uy, ux = _pixel_grid(shape, xp, rdt)
    f = xp.astype(frac, grids._dtype(xp, rdt))
    fy = xp.reshape(f[:, 0, ...], (-1, 1, 1))
    fx = xp.reshape(f[:, 1, ...], (-1, 1, 1))
    # Separable: cis of (B, M, 1) and (B, 1, N) then one product, instead of a
    # transcendental per pixel (B·(M+N) instead of B·M·N sin/cos).
    sign = 2.0 * math.pi if conj else -2.0 * math.pi
    return grids.cis(sign * (uy * fy)) * grids.cis(sign * (ux * fx))


_GRIDS: dict[tuple, tuple[Any, Any, Any]] = {}


def _pixel_grid(shape: tuple[int, int], xp: Any, rdt: str) -> tuple[Any, Any]:
    """pixel_freq_grid, memoised per (shape, dtype, namespace, device): ramps are built for
    every group (every position in sequential ePIE), the grids never change."""
    key = (tuple(shape), rdt, id(xp), backend.device_name(xp))
    hit = _GRIDS.get(key)
    if hit is None or hit[0] is not xp:
        hit = (xp, *grids.pixel_freq_grid(shape, xp=xp, dtype=rdt))
        if len(_GRIDS) > 64:
            _GRIDS.clear()
        _GRIDS[key] = hit
    return hit[1], hit[2]


def shift_probe(probe: Any, frac: Any, probe_k: Any = None) -> Any:
    """Probe modes (P, M, N) shifted by +frac (B, 2) -> (B, P, M, N).

    Pass ``probe_k = fft2(probe)`` to reuse it across batches (one FFT saved per mode).
    """
    return shift_spectrum(backend.fft2(probe) if probe_k is None else probe_k, frac)


def shift_spectrum(spectrum: Any, frac: Any) -> Any:
    """``shift_probe`` of the modes whose spectrum F[probe] (P, M, N) is ``spectrum``."""
    k = backend.kernels(backend.namespace(spectrum))
    if k is not None and spectrum.ndim == 3:
        # the inverse FFT's normalisation rides on the ramps, not on a pass over B shifted waves
        scale = k.real_scalar(backend.unitary_scale(spectrum.shape), spectrum)
        out = k.ramp_product(spectrum, frac, -1.0, scale, k.empty((frac.shape[0], *spectrum.shape), spectrum.dtype))
        return backend.ifft2(out, overwrite=True, scaled=False)
    ramp = shift_ramp(frac, tuple(spectrum.shape[-2:]), spectrum.dtype)
    if spectrum.shape[0] == 1 and backend.is_numpy(backend.namespace(ramp)):
        ramp *= spectrum  # one mode: reuse the fresh ramp as the product's buffer
        return backend.ifft2(ramp[:, None, ...], overwrite=True)
    return backend.ifft2(spectrum[None, ...] * ramp[:, None, ...], overwrite=True)


def unshift(grad: Any, frac: Any) -> Any:
    """Adjoint of ``shift_probe`` per position: shift (B, P, M, N) by -frac (B, 2)."""
    spectrum = backend.fft2(grad)
    k = backend.kernels(backend.namespace(spectrum))
    if k is not None and spectrum.ndim == 4:
        # in place: a fresh FFT output
        return backend.ifft2(k.ramp_multiply(spectrum, frac, 1.0, k.real_scalar(1.0, spectrum)), overwrite=True)
    ramp = shift_ramp(frac, tuple(grad.shape[-2:]), grad.dtype, conj=True)
    return backend.ifft2(spectrum * ramp[:, None, ...], overwrite=True)


def unshift_sum(grad: Any, frac: Any, *, overwrite: bool = False) -> Any:
    """Σ_b unshift(grad_b) (P, M, N) for grad (B, P, M, N): summed in Fourier space, where the
    ramps are diagonal (one batched FFT and one inverse). ``overwrite`` as in ``unshift_sum_of``."""
    return backend.ifft2(unshift_sum_of(grad, frac, overwrite=overwrite), overwrite=True)


def unshift_sum_of(grad: Any, frac: Any, *, overwrite: bool = False) -> Any:
    """``unshift_sum_k(fft2(grad), frac)`` (P, M, N) from the waves ``grad`` (B, P, M, N).

    The FFT's normalisation is applied once to the (P, M, N) sum instead of to every
    position's spectrum; ``overwrite``: ``grad`` is the caller's temporary (FFT in place).
    """
    summed = unshift_sum_k(backend.fft2(grad, overwrite=overwrite, scaled=False), frac)
    summed *= backend.unitary_scale(grad.shape)
    return summed


def unshift_sum_k(grad_k: Any, frac: Any) -> Any:
    """The spectrum of ``unshift_sum`` (P, M, N): partial sums over parts of a batch add up."""
    xp = backend.namespace(grad_k)
    k = backend.kernels(xp)
    if k is not None and grad_k.ndim == 4:
        return k.ramp_sum(grad_k, frac, 1.0, k.empty(grad_k.shape[1:], grad_k.dtype))
    ramp = shift_ramp(frac, tuple(grad_k.shape[-2:]), grad_k.dtype, conj=True)
    prod = grad_k * ramp[:, None, ...]
    return prod[0] if prod.shape[0] == 1 else xp.sum(prod, axis=0)


def sum_probe_modes(x: Any) -> Any:
    """Σ over axis 1 of (B, P, ...), the probe modes, without a copy when P = 1 (the common
    case, on every per-position update)."""
    return x[:, 0, ...] if x.shape[1] == 1 else backend.namespace(x).sum(x, axis=1)


def shift_gradient(G: Any, F: Any, u: tuple[Any, Any]) -> Any:
    """∂L/∂f (B, 2) of waves shifted by f (physics.md §5.4), from spectra: G = F[∂L/∂ψ*] and
    F = F[ψ] (B, P, M, N), summed over the modes P. Re Σ conj(G)(-2πi u)F = 2π Σ u Im(conj(G) F),
    u = (u_y (M, 1), u_x (1, N)) in cycles per pixel. The reference of the position gradient
    (``engines.primitives.position_gradient``; fused: ``_kernels._position_gradient_sums``)."""
    xp = backend.namespace(G, F)
    cross = xp.imag(xp.conj(G) * F)
    cross = sum_probe_modes(cross)  # (B, M, N)
    uy, ux = u
    gy = xp.sum(cross * uy, axis=(-2, -1))
    gx = xp.sum(cross * ux, axis=(-2, -1))
    return (2.0 * math.pi) * xp.stack([gy, gx], axis=1)


def extract(obj: Any, y0: Any, x0: Any, shape: tuple[int, int]) -> Any:
    """Object windows: (Q, S, H, W) -> (B, Q, S, M, N)."""
    return backend.extract_patches(obj, y0, x0, shape)


def accumulate(target: Any, y0: Any, x0: Any, patches: Any) -> Any:
    """Adjoint of ``extract``: scatter-add (B, Q, S, M, N) into target (Q, S, H, W), in place."""
    return backend.scatter_add_patches(target, y0, x0, patches)


def windows_fit(positions_px: Any, shape: tuple[int, int], object_shape: tuple[int, int]) -> bool:
    """True when every window lies inside an object of ``object_shape`` (H, W)."""
    xp = backend.namespace(positions_px)
    y0, x0, _ = split_positions(positions_px, shape)
    lo = min(float(backend.to_numpy(xp.min(y0))), float(backend.to_numpy(xp.min(x0))))
    hi_y = float(backend.to_numpy(xp.max(y0))) + shape[0]
    hi_x = float(backend.to_numpy(xp.max(x0))) + shape[1]
    return lo >= 0 and hi_y <= object_shape[0] and hi_x <= object_shape[1]
