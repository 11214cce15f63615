"""The compute primitives the engines are written over (issue 25 item 1), one reference each.

Every formula an engine step needs has one named home here, with one array-API
implementation (NumPy, CuPy and ``array_api_strict`` alike: it is what runs on a GPU). A
fused CPU kernel (``ptycli/_kernels``, Numba) may implement the same primitive, alone or
fused with its neighbours; tests/test_primitives.py checks each kernel against the
reference here on the same float32/complex64 inputs (the contract), and each reference
against an independent NumPy computation, an adjoint identity or a finite difference.

A reference the physics layer needs too (physics/multislice.py's forward model and adjoint,
physics/model.py's gradients) lives in physics/, which may not import engines, and is named
here; the rest is defined here.

Shapes follow physics/multislice.py: probe modes P, object modes Q, slices S, windows
(M, N), positions B; far fields (B, P, Q, M, N), unshifted (DC at [0, 0]).

| primitive | reference | fused kernels (``backend.kernels(np)``) |
|---|---|---|
| ``extract`` / ``scatter_add`` | backend.extract_patches / scatter_add_patches (array branches) | extract, scatter_add |
| ``shift_probe`` / ``unshift_sum_k`` | physics/overlap.py (Fourier shift ramps) | ramp_product, ramp_multiply, ramp_sum, ramp_accumulate |
| ``transmit`` / ``transmit_adjoint`` | physics/multislice.py | window_product, exit_from_object, adjoint_products, backward_single(_in_place), multislice._slice_product, _slice_adjoint |
| ``propagate`` | backend.fourier_multiply (array branch) | spectral_multiply, multislice._propagate |
| ``geometry_term`` | physics/multislice.py | multislice._tilt_sums |
| ``mode_power`` | here | mode_power |
| ``farfield_update`` | here, over engines/noise.py's ℓ, ℓ' | farfield (model codes 0-3) |
| ``lsqml_exit_step`` | here | farfield (codes 4, 5: LSQ-ML's own χ) |
| ``compressed_update`` / ``compressed_projection`` | here | none (the array code runs) |
| ``epie_update`` | here | epie_single, multislice._slice_epie |
| ``position_gradient`` / ``position_curvature`` | physics/overlap.shift_gradient / here | _position_gradient_sums + position_out, _position_curvature_sums |
| ``lsqml_dots`` / ``lsqml_slice_dots`` | here | lsqml_terms, multislice._row_terms |
| ``lsqml_steps`` / ``lsqml_direction`` | here | lsqml_steps, lsqml_direction |
| ``adam_step`` | here | adam, adam_real, adam_region |

The whole-group kernels (``single_slice_part``, ``multislice_part``, ``epie_position`` ...)
compose these primitives with the FFTs in one call; tests/test_fused_kernels.py compares
them with the array path as integration tests.
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from ..physics import multislice, overlap
from . import noise

# --------------------------------------------------------------------- windows and shifts
extract = overlap.extract  # (Q, S, H, W) -> (B, Q, S, M, N) windows at integer corners
scatter_add = overlap.accumulate  # adjoint of ``extract``: (B, Q, S, M, N) added into (Q, S, H, W), in place
shift_probe = overlap.shift_probe  # probe (P, M, N) moved by +frac (B, 2) -> (B, P, M, N)
unshift_sum_k = overlap.unshift_sum_k  # Σ_b F[g_b]·ramp_b* (P, M, N): the probe's share of the adjoint shift

# --------------------------------------------------------------------- multislice step
transmit = multislice.transmit  # e = t ψ per mode pair
transmit_adjoint = multislice.transmit_adjoint  # (Σ_p conj(ψ) g, conj(t) g)
geometry_term = multislice.geometry_term  # Re Σ conj(G) ∂H/∂θ F[e] per position
intensity = multislice.intensity  # I = Σ_p Σ_q |Ψ|²


def propagate(psi: Any, H: Any, *, conj: bool = False, overwrite: bool = False) -> Any:
    """F⁻¹[H F[ψ]] (conj(H) with ``conj``: the adjoint, H not being unitary) over the last
    two axes; H (M, N) or (B, 1, ..., M, N) against psi. ``overwrite``: psi is the caller's
    temporary. The kz/tilt-aware H comes from ``physics.propagation.fresnel_propagator``."""
    return backend.fourier_multiply(psi, H, conj=conj, overwrite=overwrite)


def mode_power(psi: Any, n_object_modes: int) -> Any:
    """Σ_p |ψ[b, p, q or 0]|² (B, Q, M, N) for waves psi (B, P, Q|1, M, N): the illumination
    each object mode sees (a broadcast view when the waves are shared by the modes)."""
    xp = backend.namespace(psi)
    w = backend.abs2(psi)
    w = overlap.sum_probe_modes(w)
    return xp.broadcast_to(w, (w.shape[0], n_object_modes, *w.shape[-2:]))


# --------------------------------------------------------------------- noise models
def farfield_update(Psi: Any, D: Any, model: str, mask: Any, eps: float | None, a: float, c: float, *,
                    projection: bool = False, I: Any = None) -> tuple[Any, Any]:  # noqa: E741
    """(loss (B,), (a + c·m ℓ'(I)) Ψ) for far fields Ψ (B, P, Q, M, N), data D (B, M, N),
    I = Σ|Ψ|²: (a, c) = (0, 2) is ∇_Ψ L, (1, -1) the projection Ψ̂ = (1 - m ℓ')Ψ.
    ``projection``: ℓ' of ``noise.projection_lprime`` (the intensity model's projection is
    the amplitude model's). ℓ and ℓ' are engines/noise.py's (plugin models included).
    ``I``: Σ|Ψ|² when the caller has it (``Forward.I``)."""
    I = multislice.intensity(Psi) if I is None else I  # noqa: E741
    pick = noise.projection_lprime if projection else noise.loss_and_dloss_dI
    loss, lprime = pick(I, D, model, mask, eps)
    if a == 0:
        lprime *= c
    else:
        lprime = a + c * lprime
    return loss, noise.scale_by(Psi, lprime)


def lsqml_exit_step(Psi: Any, D: Any, model: str, mask: Any, eps: float | None, I: Any = None,  # noqa: E741
                    background: Any = None) -> Any:
    """-2χ (B, P, Q, M, N), LSQ-ML's own exit-wave update where its noise model has one:
    intensity, the projection Ψ̂ - Ψ on the measured intensities (the amplitude model's χ:
    -½∇ of the intensity loss scales with the counts, and the 2×2 steps overshot to NaN);
    Poisson, χ = β r Ψ with r = m (D/(I+ε) - 1) and β ∈ [0, 1] minimising the Poisson loss
    along it per position (3 Newton steps on dL/dβ from 0.5, physics.md §6.3.1). ``I`` as
    in ``farfield_update``. ``background``: LSQ-ML's incoherent B (M, N) (Poisson only), the
    model intensity being I + B (engines/lsqml_background.py); Ψ's step then sees
    J(β) = |1 + βr|² I + B."""
    I = multislice.intensity(Psi) if I is None else I  # noqa: E741
    if model == "intensity":
        _, lprime = noise.projection_lprime(I, D, "intensity", mask, eps)
        return noise.scale_by(Psi, 2.0 * lprime)
    if model != "poisson":
        raise ValueError(f"lsqml_exit_step: model {model!r} has no step of its own (expected intensity or poisson)")
    xp = backend.namespace(Psi, D)
    e = eps if eps is not None else noise.DEFAULT_EPS["poisson"]
    r = D / (I + e if background is None else I + background + e) - 1.0
    if mask is not None:
        r = r * mask
    beta = xp.full((I.shape[0], 1, 1), 0.5, dtype=I.dtype)
    for _ in range(3):
        u = 1.0 + beta * r
        u = xp.where(u > 1e-3, u, 1e-3)
        if background is None:
            grad = xp.sum(2 * r * I * u - 2 * D * r / u, axis=(-2, -1), keepdims=True)
            hess = xp.sum(2 * r * r * I + 2 * D * r * r / (u * u), axis=(-2, -1), keepdims=True)
        else:  # J = u² I + B; the curvature floored positive (J is not convex in β where B ≫ u² I)
            J = u * u * I + background + e
            q = 1.0 - D / J
            grad = xp.sum(2 * r * I * u * q, axis=(-2, -1), keepdims=True)
            hess = xp.maximum(xp.sum(2 * r * r * I * q + 4 * D * (r * u * I / J) ** 2, axis=(-2, -1), keepdims=True),
                              1e-30)
        beta = xp.clip(beta - grad / (hess + 1e-30), 0.0, 1.0)
    return Psi * xp.astype((-2.0 * beta * r)[:, None, None, ...], Psi.dtype)


def compressed_update(Psi: Any, I: Any, signals: Any, masks: Any) -> tuple[Any, Any]:  # noqa: E741
    """(loss (B,), ∇_Ψ L) for compressed data: least squares on the signals (B, K) =
    masks (K, M, N) · I, ∇_Ψ L = 2 ∂L/∂I Ψ (engines/noise.py's compressed model)."""
    dl = noise.compressed_dloss_dI(I, signals, masks)
    return noise.compressed_loss(I, signals, masks), 2 * dl[:, None, None, ...] * Psi


def compressed_projection(Psi: Any, I: Any, signals: Any, masks: Any) -> Any:  # noqa: E741
    """Ψ̂ for compressed data: the smallest intensity change that matches the signals.
    δI = -Σ_K m_K r_K / ‖m_K‖² with r_K = m_K·I - s_K (exact for disjoint masks), then the
    amplitude-type update Ψ̂ = sqrt(max(I + δI, 0) / I) Ψ."""
    xp = backend.namespace(Psi, signals)
    r = noise.compressed_signals(I, masks) - signals  # (B, K)
    norm = xp.sum(masks * masks, axis=(-2, -1))  # (K,)
    dI = -xp.sum((r / (norm + 1e-12))[:, :, None, None, ...] * masks[None, ...], axis=1)
    scale = xp.sqrt(xp.clip(I + dI, 0, None) / (I + 1e-12))
    return Psi * xp.astype(scale[:, None, None, ...], Psi.dtype)


# --------------------------------------------------------------------- ePIE
def epie_update(t: Any, psi: Any, target: Any, beta: float, gamma: float | None = None) -> tuple[Any, Any]:
    """ePIE/rPIE updates of one slice (physics.md §6.1) from the corrected exit waves
    ``target`` e' (B, P, Q, M, N), the slice's windows t (B, Q, M, N) and incident waves
    psi (B, P, Q|1, M, N); δ = e' - t ψ. Returns (ΔO = Σ_p conj(ψ) δ / den (B, Q, M, N),
    Δψ = β conj(t) δ / max|t|² (B, P, Q, M, N)), den = max Σ_p|ψ|² (ePIE, ``gamma`` None)
    or (1-γ) Σ_p|ψ|² + γ max (rPIE). Both maxima are over the window and every object mode:
    past slice 1 a weak mode's own max made its step ≈ δ/ψ (or δ/t), far larger than the
    mode (multislice with two object modes diverged). Fused: ``_kernels.epie_single`` (Δψ
    averaged over the object modes there), ``_kernels.multislice._slice_epie``."""
    xp = backend.namespace(t, psi, target)
    t5 = t[:, None, ...]
    delta = target - t5 * psi
    w = backend.abs2(psi)
    w = overlap.sum_probe_modes(w)  # (B, Q|1, M, N)
    w_max = xp.max(w, axis=(-3, -2, -1), keepdims=True)
    den = w_max if gamma is None else (1 - gamma) * w + gamma * w_max
    num = xp.conj(psi) * delta
    d_obj = overlap.sum_probe_modes(num) / den
    t_max = xp.max(backend.abs2(t5), axis=(-3, -2, -1), keepdims=True)
    d_psi = xp.conj(t5) * delta
    d_psi *= beta / t_max  # the per-position scalar first (one pass, not two)
    return d_obj, d_psi


# --------------------------------------------------------------------- position derivatives
def position_gradient(g_psi1: Any, psi1: Any, u: tuple[Any, Any]) -> Any:
    """∂L/∂f (B, 2) in pixels (physics.md §5.4), summed over probe modes: Re Σ conj(G)(-2πi u)F[ψ_1]
    with G = F[∂L/∂ψ_1*] (B, P, M, N) and ψ_1 the shifted probe; u = (u_y (M, 1), u_x (1, N))
    in cycles per pixel (``physics.overlap.shift_gradient`` of the two spectra)."""
    return overlap.shift_gradient(backend.fft2(g_psi1), backend.fft2(psi1), u)


def position_curvature(windows: Any, psi: list[Any], u: tuple[Any, Any]) -> Any:
    """‖ψ_s ∂O_s/∂f‖² (B, 2) summed over slices and modes: the Gauss-Newton scale of the
    position step, from the object windows (B, Q, S, M, N) and the waves ψ_s (B, P, Q|1, M, N)
    entering each slice. The object's derivative (PtychoShelves) and not the probe's: moving
    the probe over a flat object changes the exit wave but not the intensity."""
    xp = backend.namespace(windows)
    uy, ux = u
    out = 0.0
    for s, wave in enumerate(psi):
        spec = backend.fft2(windows[:, :, s, ...])  # (B, Q, M, N)
        w = xp.sum(backend.abs2(wave), axis=1)  # (B, Q|1, M, N)
        dy = backend.abs2(backend.ifft2(spec * (2j * math.pi * uy)))
        dx = backend.abs2(backend.ifft2(spec * (2j * math.pi * ux)))
        out = out + xp.stack([xp.sum(dy * w, axis=(1, 2, 3)), xp.sum(dx * w, axis=(1, 2, 3))], axis=-1)
    return out


# --------------------------------------------------------------------- LSQ-ML step sizes
def lsqml_dots(a: Any, b: Any, g_exit: Any) -> tuple[Any, ...]:
    """Per-position dots (B,) of LSQ-ML's damped 2×2 step problem (single slice, §6.3):
    (‖a‖², ‖b‖², Re⟨a, b⟩, Re⟨a, χ⟩, Re⟨b, χ⟩) with both directions, (‖a‖², Re⟨a, χ⟩) or
    (‖b‖², Re⟨b, χ⟩) with one; a = ΔO·ψ, b = O·ΔP_shifted (B, P, Q, M, N) or None, and
    χ = -½ g_exit with g_exit = F⁻¹[∇_Ψ L] (or LSQ-ML's -2χ)."""
    dot = backend.real_dot
    dot_chi = lambda v: -0.5 * backend.real_dot(v, g_exit)  # noqa: E731
    if a is not None and b is not None:
        return dot(a, a), dot(b, b), dot(a, b), dot_chi(a), dot_chi(b)
    if a is not None:
        return dot(a, a), dot_chi(a)
    return dot(b, b), dot_chi(b)


def lsqml_slice_dots(v: Any, g: Any, w: Any, keep: tuple[int, ...] = (0,)) -> tuple[Any, Any]:
    """(-½ Re Σ conj(v) g, Σ |v|² w) over the axes not in ``keep``: the decoupled
    per-slice (or probe) step's numerator and denominator, v the direction's windows, g the
    adjoint's matching gradient (-2χ folded as in ``lsqml_dots``), w the illumination."""
    return -0.5 * backend.real_dot(v, g, keep=keep), backend.real_dot(backend.abs2(v), w, keep=keep)


def trimmed_step(alpha: Any, trim: float, beta: float, dtype: Any, axis: int = 0) -> Any:
    """β · mean of ``alpha`` clipped at 0, without the int(trim n) smallest and largest
    values along ``axis`` (all of them when that would leave none), in ``dtype`` (a float64
    step would promote the complex64 update)."""
    xp = backend.namespace(alpha)
    alpha = xp.clip(alpha, 0, None)
    n = alpha.shape[axis]
    k = int(trim * n)
    if k > 0 and n - 2 * k > 0:
        alpha = xp.sort(alpha, axis=axis)
        alpha = alpha[k: n - k] if axis == 0 else alpha
    return xp.astype(beta * xp.sum(alpha, axis=axis) / alpha.shape[axis], dtype)


def lsqml_steps(terms: tuple[Any, ...], has_obj: bool, has_probe: bool, trim: float, beta: float,
                dtype: Any) -> tuple[Any, Any]:
    """(α_O, α_P) from the group's ``lsqml_dots`` (each (B,)): the damped 2×2 least squares
    per position (damping 0.1 × the group's mean), then ``trimmed_step`` (the probe's untrimmed).
    Solved in float64: in float32 aa·bb overflowed and aa·bb - ab² cancelled to noise."""
    xp = backend.namespace(*terms)
    terms = tuple(t if t.dtype == xp.float64 else xp.astype(t, xp.float64) for t in terms)
    mean = lambda t: xp.sum(t) / t.shape[0]  # noqa: E731
    if has_obj and has_probe:
        aa, bb, ab, ra, rb = terms
        aa = aa + 0.1 * mean(aa)
        bb = bb + 0.1 * mean(bb)
        det = aa * bb - ab * ab
        det = xp.where(det > 0, det, 1.0)
        return (trimmed_step((bb * ra - ab * rb) / det, trim, beta, dtype),
                trimmed_step((aa * rb - ab * ra) / det, 0.0, beta, dtype))
    if has_obj:
        aa, ra = terms
        return trimmed_step(ra / (aa + 0.1 * mean(aa)), trim, beta, dtype), 0.0
    bb, rb = terms
    return 0.0, trimmed_step(rb / (bb + 0.1 * mean(bb)), 0.0, beta, dtype)


def lsqml_direction(num: Any, W: Any, delta: float) -> Any:
    """ΔO = -½ num / sqrt(W² + (δ max W)²) (§6.3.4) for the sums num = Σ_j ∇O_j and
    W = Σ_j Σ_p |ψ_j|² (Q, S, H, W), the max over each slice's planes of every object mode
    (a weak mode's own max asked changes thousands of times the mode past slice 1). Formed as
    max·sqrt((W/max)² + δ²): W² overflowed float32 on thick specimens; an unlit plane gets
    no direction. ``num`` is scaled in place (the caller's sum)."""
    xp = backend.namespace(num, W)
    num *= -0.5
    w_max = xp.max(W, axis=(-4, -2, -1), keepdims=True)
    lit = w_max > 0
    inv = xp.astype(xp.where(lit, 1.0 / xp.where(lit, w_max, 1.0), 0.0), W.dtype)
    r = W * inv
    return num * xp.astype(inv / xp.sqrt(r * r + delta ** 2), W.dtype)


# --------------------------------------------------------------------- optimiser
def adam_step(z: Any, grad: Any, m: Any, v_re: Any, v_im: Any, t: int, b1: float, b2: float, eps: float,
              lr: float) -> tuple[Any, Any, Any, Any]:
    """One Adam step per real component (PyTorch ``view_as_real`` parity): (z_new, m, v_re,
    v_im) with m = b1 m + (1-b1) g, v = b2 v + (1-b2) g² for the real and imaginary parts
    apart (v_im None for a real z), z - lr m̂ / (sqrt(v̂) + eps), t the step's count (from 1).
    The moments come back as new arrays (callers may hold the old ones)."""
    xp = backend.namespace(z, grad)
    g_re, g_im = (xp.real(grad), xp.imag(grad)) if backend.is_complex(grad) else (grad, None)
    m = _ema(m, grad, b1)
    v_re = _ema_sq(v_re, g_re, b2)
    if g_im is not None:
        v_im = _ema_sq(v_im, g_im, b2)
    m_hat = m / (1 - b1 ** t)
    m_re, m_im = (xp.real(m_hat), xp.imag(m_hat)) if backend.is_complex(m_hat) else (m_hat, None)

    def sq(v: Any) -> Any:  # sqrt(v_hat) + eps, its temporaries in place
        out = v / (1 - b2 ** t)
        out **= 0.5
        out += eps
        return out

    step = m_re / sq(v_re)
    if m_im is not None:
        step = step + 1j * (m_im / sq(v_im))
    step *= lr
    return z - (step if step.dtype == z.dtype else xp.astype(step, z.dtype)), m, v_re, v_im


def _ema(avg: Any, x: Any, beta: float) -> Any:
    """beta avg + (1 - beta) x, as a new array."""
    out = beta * avg
    out += (1 - beta) * x
    return out


def _ema_sq(avg: Any, x: Any, beta: float) -> Any:
    """beta avg + (1 - beta) x x, as a new array."""
    sq = (1 - beta) * x
    sq *= x
    out = beta * avg
    out += sq
    return out
