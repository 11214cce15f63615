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
from . import overlap


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
    k = backend.kernels(backend.namespace(psi1))
    if k is not None and n_slices > 1 and not keep_spectra:
        return _forward_blocked(k, psi1, patches, H)
    cache = Cache(patches=patches)
    psi = psi1[:, :, None, ...]  # (B, P, 1, M, N): shared by every object mode on slice 1
    for s in range(n_slices):
        cache.psi.append(psi)
        exit_wave = transmit(patches[:, :, s, ...], psi)
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
    xp = backend.namespace(grad_Psi, grad_exit, cache.patches)  # grad_Psi is None when grad_exit is given
    patches = cache.patches
    n_slices = patches.shape[2]
    grad_patches = [None] * n_slices
    geometry = {name: 0.0 for name in (dH or {})}
    g = backend.ifft2(grad_Psi) if grad_exit is None else grad_exit  # w.r.t. the last exit wave
    k = backend.kernels(xp)
    if k is not None and n_slices > 1 and not dH and g.dtype == patches.dtype:
        return _backward_blocked(k, g, cache, H)
    grad_obj = k.empty(patches.shape, patches.dtype) if k is not None and g.dtype == patches.dtype else None
    for s in range(n_slices - 1, -1, -1):
        # fused: both products in one pass, written straight into the result
        out_t = grad_obj[:, :, s, ...] if grad_obj is not None else None
        grad_patches[s], grad_psi = transmit_adjoint(patches[:, :, s, ...], cache.psi[s], g, out_t=out_t)
        if s == 0:
            break
        # grad_psi is a temporary here (only slice 1's is returned): transforms run in place
        if dH:
            spectrum = backend.fft2(grad_psi, overwrite=True)  # G_s
            for name, d in dH.items():
                geometry[name] = geometry[name] + geometry_term(spectrum, _h5(d), cache.exit_k[s - 1])
            spectrum *= xp.conj(_h5(H))  # fresh FFT output, read above only
            g = backend.ifft2(spectrum, overwrite=True)
        else:
            g = backend.fourier_multiply(grad_psi, _h5(H), conj=True, overwrite=True)
    if grad_obj is None:
        grad_obj = grad_patches[0][:, :, None, ...] if n_slices == 1 else xp.stack(grad_patches, axis=2)
    if dH is None:
        return grad_obj, grad_psi
    return grad_obj, grad_psi, geometry


# Positions per block of the CPU multislice passes: a block's waves (P·Q·M·N each) up to
# this many elements, 512 KiB in complex64, so a block and its scratch stay in a core's
# L2 cache (1 MiB here) through the product, both FFTs and the propagator of every slice.
# Unblocked, each of those passes streamed the whole part (8 MiB for 16 positions x 4
# modes x 128²) through memory, and the two cores shared that bandwidth.
BLOCK_ELEMENTS = 2**16


def _blocks(n_positions: int, per_position: int) -> list[slice]:
    size = max(1, BLOCK_ELEMENTS // max(1, per_position))
    return [slice(a, min(a + size, n_positions)) for a in range(0, n_positions, size)]


def _forward_blocked(k: Any, psi1: Any, patches: Any, H: Any) -> tuple[Any, Cache]:
    """``forward`` with the fused CPU kernels, a few positions at a time through every slice:
    each block's wave goes from slice to slice in cache, written once to ``cache.psi``."""
    b_, p_ = psi1.shape[:2]
    q_, n_slices = patches.shape[1:3]
    shape = (b_, p_, q_, *psi1.shape[-2:])
    cache = Cache(patches=patches)
    cache.psi = [psi1[:, :, None, ...]] + [k.empty(shape, psi1.dtype) for _ in range(n_slices - 1)]
    Psi = k.empty(shape, psi1.dtype)
    for c in _blocks(b_, p_ * q_ * shape[-2] * shape[-1]):
        h = _h5(H[c]) if H.ndim == 3 else H
        for s in range(n_slices):
            last = s == n_slices - 1
            dest = Psi[c] if last else cache.psi[s + 1][c]
            transmit(patches[c, :, s, ...], cache.psi[s][c], out=dest)
            out = backend.fft2(dest, overwrite=True) if last else backend.fourier_multiply(dest, h, overwrite=True)
            backend.store(dest, out)
    return Psi, cache


def _backward_blocked(k: Any, g_exit: Any, cache: Cache, H: Any) -> tuple[Any, Any]:
    """``backward`` with the fused CPU kernels, block by block as ``_forward_blocked``; the
    gradient wave of a block stays in two cache-sized scratch buffers through the slices."""
    patches = cache.patches
    n_slices = patches.shape[2]
    grad_obj = k.empty(patches.shape, patches.dtype)
    grad_psi1 = k.empty(g_exit.shape, g_exit.dtype)
    blocks = _blocks(g_exit.shape[0], int(g_exit[0].size))
    scratch = [k.empty((blocks[0].stop - blocks[0].start, *g_exit.shape[1:]), g_exit.dtype) for _ in range(2)]
    for c in blocks:
        h = _h5(H[c]) if H.ndim == 3 else H
        g = g_exit[c]
        for i, s in enumerate(range(n_slices - 1, -1, -1)):
            dest = grad_psi1[c] if s == 0 else scratch[i % 2][: c.stop - c.start]
            transmit_adjoint(patches[c, :, s, ...], cache.psi[s][c], g, out_t=grad_obj[c, :, s, ...], out_psi=dest)
            if s > 0:  # dest is scratch: the transforms run in place in it
                g = backend.fourier_multiply(dest, h, conj=True, overwrite=True)
    return grad_obj, grad_psi1


def transmit(t: Any, psi: Any, out: Any = None) -> Any:
    """Exit waves of one slice, e[b, p, q] = t[b, q] ψ[b, p, q or 0]: the slice's object
    windows t (B, Q, M, N) times the incident waves psi (B, P, Q|1, M, N) -> (B, P, Q, M, N).
    The primitive ``engines.primitives.transmit``: the array expression below is its
    reference; on NumPy with the fused kernels ``_kernels.window_product`` runs it in one pass
    (into ``out`` when given; also fused in ``exit_from_object``, ``multislice._slice_product``)."""
    k = backend.kernels(backend.namespace(t, psi))
    if k is None or t.dtype != psi.dtype:
        return t[:, None, ...] * psi
    if out is None:
        out = k.empty((psi.shape[0], psi.shape[1], t.shape[1], *psi.shape[-2:]), psi.dtype)
    return k.window_product(t, psi, out)


def transmit_adjoint(t: Any, psi: Any, g: Any, out_t: Any = None, out_psi: Any = None) -> tuple[Any, Any]:
    """Adjoint of ``transmit`` for g = ∂L/∂e* (B, P, Q, M, N): (∂L/∂t* = Σ_p conj(ψ) g
    (B, Q, M, N), ∂L/∂ψ* = conj(t) g (B, P, Q, M, N), per mode pair). The array expression
    is the reference; on NumPy with the fused kernels ``_kernels.adjoint_products`` makes both
    in one pass (into ``out_t``, ``out_psi`` when given; also fused in ``backward_single``,
    ``multislice._slice_adjoint``)."""
    xp = backend.namespace(t, psi, g)
    k = backend.kernels(xp)
    if k is None or g.dtype != t.dtype:
        return overlap.sum_probe_modes(xp.conj(psi) * g), xp.conj(t[:, None, ...]) * g
    out_t = k.empty(t.shape, t.dtype) if out_t is None else out_t
    out_psi = k.empty(g.shape, g.dtype) if out_psi is None else out_psi
    k.adjoint_products(t, psi, g, out_t, out_psi)
    return out_t, out_psi


def geometry_term(G: Any, dH: Any, spectrum: Any) -> Any:
    """One propagation's share of ∂L/∂θ per position (B,): Re Σ conj(G) ∂H/∂θ F[e] over
    (P, Q, M, N) (physics.md §5.4), G = F[∂L/∂ψ*] after the propagation, ``spectrum`` = F[e]
    before it, dH broadcastable against both. Fused: ``_kernels.multislice._tilt_sums``."""
    xp = backend.namespace(G, spectrum)
    return xp.sum(xp.real(xp.conj(G) * dH * spectrum), axis=tuple(range(1, G.ndim)))


def intensity(Psi: Any) -> Any:
    """I (B, M, N) = Σ_p Σ_q |Ψ|²."""
    xp = backend.namespace(Psi)
    a = backend.abs2(Psi)
    if Psi.shape[1] * Psi.shape[2] == 1:  # one mode pair: a view, not a reduction copy
        return xp.reshape(a, (Psi.shape[0], *Psi.shape[3:]))
    return xp.sum(a, axis=(1, 2))
