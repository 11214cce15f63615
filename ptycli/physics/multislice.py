"""Multislice forward model and its exact adjoint (physics.md §4.2, §5.3).

Shapes: probe waves (B, P, M, N), object windows (B, Q, S, M, N), far field (B, P, Q, M, N).
Every probe mode meets every object mode (K = P·Q incoherent pairs). H is (M, N), (B, M, N)
for per-position tilts, or None for S = 1. No propagation follows the last slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import backend
from ..errors import InputError


@dataclass
class Cache:
    """What the adjoint needs: windows, incident waves ψ_s and (optionally) spectra F[e_s]."""

    patches: Any
    psi: list[Any] = field(default_factory=list)  # ψ_s, s = 1..S, (B, P, Q|1, M, N)
    exit_k: list[Any] = field(default_factory=list)  # F[e_s], s = 1..S-1 (when kept)


def _h5(H: Any) -> Any:
    """Broadcast H (M,N) or (B,M,N) against (B, P, Q, M, N)."""
    return H if H.ndim == 2 else H[:, None, None, ...]


def forward(psi1: Any, patches: Any, H: Any = None, *, keep_spectra: bool = False) -> tuple[Any, Cache]:
    """Far field Ψ (B, P, Q, M, N) = F[e_S] and the cache for ``backward``.

    ``keep_spectra`` keeps F[e_s] for the thickness/tilt gradients (no extra FFTs).
    """
    n_slices = patches.shape[2]
    if n_slices > 1 and H is None:
        raise InputError(f"multislice with {n_slices} slices needs a propagator H (got None)")
    cache = Cache(patches=patches)
    psi = psi1[:, :, None, ...]  # (B, P, 1, M, N): shared by every object mode on slice 1
    k = backend.kernels(backend.namespace(psi1))
    for s in range(n_slices):
        cache.psi.append(psi)
        if k is not None:  # one pass, no broadcast temporaries
            b_, p_, q_ = psi.shape[0], psi.shape[1], patches.shape[1]
            exit_wave = k.window_product(patches[:, :, s], psi, k.empty((b_, p_, q_, *psi.shape[-2:]), psi.dtype))
        else:
            exit_wave = patches[:, None, :, s, ...] * psi
        # exit_wave is this loop's own temporary: every transform of it may run in place
        if s == n_slices - 1:
            return backend.fft2(exit_wave, overwrite=True), cache
        if keep_spectra:
            spectrum = backend.fft2(exit_wave, overwrite=True)
            cache.exit_k.append(spectrum)
            psi = backend.ifft2(_h5(H) * spectrum, overwrite=True)
        else:
            psi = backend.fourier_multiply(exit_wave, _h5(H), overwrite=True)
    raise AssertionError("unreachable")


def backward(grad_Psi: Any, cache: Cache, H: Any = None, *, dH: dict[str, Any] | None = None,
             grad_exit: Any = None) -> Any:
    """Adjoint of ``forward``: (grad_patches (B,Q,S,M,N), grad_psi1 (B,P,Q,M,N)).

    ``dH`` maps names to ∂H/∂θ (shape of H); the third returned item then maps each name
    to the per-position derivative Re Σ_s Σ_k conj(G_s) ∂H/∂θ F[e_{s-1}] (B,) (physics.md
    §5.4), which needs ``forward(..., keep_spectra=True)``. ``grad_exit`` = ifft2(grad_Psi)
    when the caller already has it (saves one batched FFT).
    """
    xp = backend.namespace(grad_Psi)
    patches = cache.patches
    n_slices = patches.shape[2]
    grad_patches = [None] * n_slices
    geometry = {name: 0.0 for name in (dH or {})}
    g = backend.ifft2(grad_Psi) if grad_exit is None else grad_exit  # w.r.t. the last exit wave
    k = backend.kernels(xp)
    grad_obj = k.empty(patches.shape, patches.dtype) if k is not None and g.dtype == patches.dtype else None
    for s in range(n_slices - 1, -1, -1):
        if grad_obj is not None:  # both products in one pass, written straight into the result
            grad_psi = k.empty(g.shape, g.dtype)
            k.adjoint_products(patches[:, :, s], cache.psi[s], g, grad_obj[:, :, s], grad_psi)
        else:
            t = patches[:, None, :, s, ...]
            grad_patches[s] = _sum_probe_modes(xp.conj(cache.psi[s]) * g)
            grad_psi = xp.conj(t) * g
        if s == 0:
            break
        # grad_psi is a temporary here (only slice 1's is returned): transforms run in place
        if dH:
            spectrum = backend.fft2(grad_psi, overwrite=True)  # G_s
            for name, d in dH.items():
                term = xp.real(xp.conj(spectrum) * _h5(d) * cache.exit_k[s - 1])
                geometry[name] = geometry[name] + xp.sum(term, axis=(1, 2, 3, 4))
            spectrum *= xp.conj(_h5(H))  # fresh FFT output, read above only
            g = backend.ifft2(spectrum, overwrite=True)
        else:
            g = backend.fourier_multiply(grad_psi, _h5(H), conj=True, overwrite=True)
    if grad_obj is None:
        grad_obj = grad_patches[0][:, :, None] if n_slices == 1 else xp.stack(grad_patches, axis=2)
    if dH is None:
        return grad_obj, grad_psi
    return grad_obj, grad_psi, geometry


def intensity(Psi: Any) -> Any:
    """I (B, M, N) = Σ_p Σ_q |Ψ|²."""
    xp = backend.namespace(Psi)
    a = backend.abs2(Psi)
    if Psi.shape[1] * Psi.shape[2] == 1:  # one mode pair: a view, not a reduction copy
        return xp.reshape(a, (Psi.shape[0], *Psi.shape[3:]))
    return xp.sum(a, axis=(1, 2))


def _sum_probe_modes(x: Any) -> Any:
    """Σ over axis 1 of (B, P, ...), without a copy when P = 1."""
    xp = backend.namespace(x)
    return x[:, 0] if x.shape[1] == 1 else xp.sum(x, axis=1)
