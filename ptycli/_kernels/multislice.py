"""Compiled multislice kernels, FFTs included: a group's part for LSQ-ML and the gradient
engine (``multislice_part``: forward model, loss and exact adjoint window by window, the
twin of ``_kernels.single_slice_part``), LSQ-ML's per-slice step terms
(``lsqml_terms_multi_part``) and one sequential 3PIE position (``epie_multislice_position``,
the twin of ``_kernels.epie_position``; ``epie_multislice_part`` runs it on several threads).

Why: the array path (physics/multislice.py) runs each slice's product, transforms,
propagator and adjoint as separate passes over blocks of positions, ~10 Python-level calls
per slice and block; with one probe mode that was 2.5-3x the FFT bound per iteration
against 1.4-1.7x for one slice (the compiled path), and the slices scaling exponent was
1.15-1.23. Here one position's waves go through every slice and back while they are in
cache, with no Python in between.

Shapes as in physics/multislice.py: probe modes P, object modes Q, slices S, windows
(M, N). The object is (Q, S, H, W); the propagator h (1 or B, M, N), per position with
beam tilts. No propagation follows the last slice. Part of the backend seam: the engines reach
these through ``backend.kernels`` (ptycli/_kernels/__init__.py).

Numba keys a cached function by its own file only (a documented limitation), and the kernels
here have single_slice.py's helpers (``farfield`` ...) compiled into their machine code: after a
change there alone they would load the old callee (seen once as LSQ-ML's multislice loss
evaluating the Anscombe model for Poisson data). ``INLINED_DIGEST`` names the version of
single_slice.py they were written against; a test fails until it is updated, and the edit
that updates it changes this file, which is what makes Numba compile these afresh.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .single_slice import (
    _JIT,
    _adjoint_row,
    _atomic_add,
    _barrier,
    _fft_planes,
    _fft_planes_scaled,
    copy_flat,
    _position_curvature_sums,
    _position_gradient_sums,
    _probe_step,
    _row_max,
    _store_release,
    farfield,
    object_step_row,
    position_out,
    ramp_accumulate,
    ramp_product,
    spectral_multiply,
)

# the conj flags of ``_propagate`` / ``spectral_multiply`` as run-time booleans: the literals
# True and False each typed a specialisation of their own (two compiles of both, ~1.4 CPU-s)
_YES, _NO = np.bool_(True), np.bool_(False)

# sha256 of single_slice.py, first 16 hex digits (tests/test_kernel_cache.py says the new one)
INLINED_DIGEST = "b2b870390286643f"


@nb.njit(**_JIT)
def _slice_product(obj, sl, yb, xb, src, dest):
    """dest[p, q] = O_{q,sl}(window at yb, xb) · src[p, q or 0] (src (P, Q|1, M, N))."""
    n_p, nq, m, n = dest.shape
    shared = src.shape[1] == 1
    for p in range(n_p):
        for q in range(nq):
            qi = 0 if shared else q
            for y in range(m):
                orow = obj[q, sl, yb + y, xb:xb + n]
                prow = src[p, qi, y]
                drow = dest[p, q, y]
                for x in range(n):
                    drow[x] = orow[x] * prow[x]


@nb.njit(**_JIT)
def _slice_adjoint(obj, sl, yb, xb, psi, g, num, illum, do_num, do_illum, keep_num, keep_illum, g_keep, w_keep):
    """Adjoint of ``_slice_product`` for slice ``sl``, in place: g (P, Q, M, N) = ∂L/∂e* on
    entry and conj(O_q) g (∂L/∂ψ* of each mode pair) on return. On the way:
    num[q, sl] += Σ_p conj(ψ) g and illum[q, sl] += Σ_p |ψ|² at the window (when asked),
    and the same windows into g_keep, w_keep (Q, M, N) with ``keep_num``, ``keep_illum``."""
    n_p, nq, m, n = g.shape
    shared = psi.shape[1] == 1
    for q in range(nq):
        qi = 0 if shared else q
        for y in range(m):
            orow = obj[q, sl, yb + y, xb:xb + n]
            nrow = num[q, sl, yb + y, xb:xb + n] if do_num else num[0, 0, 0, 0:n]
            wrow = illum[q, sl, yb + y, xb:xb + n] if do_illum else illum[0, 0, 0, 0:1]
            krow = g_keep[q, y] if keep_num else g_keep[0, 0, 0:n]
            vrow = w_keep[q, y] if keep_illum else w_keep[0, 0, 0:1]
            for p in range(n_p):
                prow = psi[p, qi, y]
                grow = g[p, q, y]
                if keep_num:
                    if p == 0:
                        for x in range(n):
                            krow[x] = prow[x].conjugate() * grow[x]
                    else:
                        for x in range(n):
                            krow[x] += prow[x].conjugate() * grow[x]
                if keep_illum:
                    if p == 0:
                        for x in range(n):
                            v = prow[x]
                            vrow[x] = v.real * v.real + v.imag * v.imag
                    else:
                        for x in range(n):
                            v = prow[x]
                            vrow[x] += v.real * v.real + v.imag * v.imag
                _adjoint_row(orow, prow, grow, nrow, wrow, do_num, do_illum)


@nb.njit(**_JIT)
def _sum_object_modes(far, out, scale):
    """out (P, M, N) = scale · Σ_q far[p, q] (scale 1: the sum; 1/Q: the mean)."""
    n_p, nq, m, n = far.shape
    for p in range(n_p):
        for y in range(m):
            arow = out[p, y]
            for x in range(n):
                arow[x] = far[p, 0, y, x]
            for q in range(1, nq):
                frow = far[p, q, y]
                for x in range(n):
                    arow[x] += frow[x]
            if scale != 1:
                for x in range(n):
                    arow[x] *= scale


@nb.njit(inline="always", **_JIT)
def _row_terms(u, g, w, zero):
    """(Re Σ conj(u) g, Σ |u|² w) over one row, summed in the rows' float32 (as ``lsqml_terms``)."""
    rn = zero
    rd = zero
    for x in range(u.shape[0]):
        v = u[x]
        gv = g[x]
        rn += v.real * gv.real + v.imag * gv.imag
        rd += (v.real * v.real + v.imag * v.imag) * w[x]
    return rn, rd


@nb.njit(**_JIT)
def _propagate(execute, plan_f, plan_b, wave, h, scale, conj):
    """wave (P, Q, M, N) ← F⁻¹[h (or conj h) · F[wave]] in place (``scale`` = s², both
    transforms' normalisation)."""
    n_p, nq, m, n = wave.shape
    _fft_planes(execute, plan_f, wave)
    spectral_multiply(wave.reshape((1, n_p * nq, m, n)), h, scale, conj)
    _fft_planes(execute, plan_b, wave)


@nb.njit(inline="always", **_JIT)
def _forward_slices(execute, plan_f, plan_b, probe_k, fb, s, obj, yb, xb, hb, first, waves, far, data_b, mask, model,
                    eps, a, c, loss_b, poisson, background=None):
    """One window through every slice and back to the exit plane: ψ_1 = F⁻¹[s·ramp·F[P]] into
    ``first``; e_s = O_s ψ_s and ψ_{s+1} = F⁻¹[h F[e_s]] (waves[s - 1]); Ψ = F[e_S], then
    ``far`` = F⁻¹[(a + c·m ℓ')Ψ] (``farfield`` with s² for the unnormalised plans) and
    loss_b (1,): the forward half that ``multislice_part`` and the 3PIE position share."""
    n_p, nq, m, n = far.shape
    n_slices = obj.shape[1]
    s2 = s * s
    ramp_product(probe_k, fb, -1.0, s, first.reshape((1, n_p, m, n)))
    _fft_planes(execute, plan_b, first)
    for sl in range(n_slices):
        src = first if sl == 0 else waves[sl - 1]
        if sl == n_slices - 1:
            _slice_product(obj, sl, yb, xb, src, far)
            _fft_planes(execute, plan_f, far)
            flat = far.reshape((1, n_p * nq, m, n))
            farfield(flat, data_b, mask, model, eps, a, c, s2, flat, loss_b, poisson, background)
            _fft_planes(execute, plan_b, far)
        else:
            _slice_product(obj, sl, yb, xb, src, waves[sl])
            _propagate(execute, plan_f, plan_b, waves[sl], hb, s2, _NO)


@nb.njit(**_JIT)
def multislice_part(fft, scan, h, noise, want, bufs, pos, tilt, done_addr, signal_addr, signal_value):
    """A part of a multislice group, position by position with FFTs, in one call: the forward
    model through every slice, the loss and its gradient at the last exit plane, the exact
    adjoint back through the slices with its scatter-adds, and the probe gradient's spectrum.
    Arguments are records (records.py): fft ``Fft``, scan ``Scan``, h the propagator
    ((1 or B, M, N)), noise ``Noise``, want ``Wanted``, bufs ``MultisliceBuffers``, pos
    ``Positions``, tilt ``Tilts``; below by the names they are unpacked to.

    The same quantities as engines/common.forward → loss_and_grad_exit → backward →
    overlap.accumulate (and lsqml.illumination_patches) → overlap.unshift_sum_of. Per
    position b (pattern data[rows[b]]): ψ_1 = F⁻¹[s·ramp_b·F[P]] into ``first`` (shared by
    the object modes); e_s = O_s ψ_s; ψ_{s+1} = F⁻¹[h F[e_s]] (unitary: s² between the
    unnormalised plans) into waves[s - 1]; Ψ = F[e_S] and F⁻¹[2ℓ'Ψ] in ``far``; then back:
    num (Q, S, H, W) = Σ_b Σ_p conj(ψ_s) g_s, illum (Q, S, H, W) = Σ_b Σ_p |ψ_s|² (when
    asked), g_{s-1} = F⁻¹[conj(h) F[conj(O_s) g_s]]; with ``do_probe``, probe_grad_k
    (P, M, N) = Σ_b s·ramp_b*·F[∇ψ_1], ∇ψ_1 = Σ_q conj(O_1) g_1. The sums are zeroed first.

    With ``keep`` (what LSQ-ML's per-slice step terms read): g_patches, w_patches
    (B, S, Q, M, N: each position's slice a C block) the windows of the numerator and illumination per position (when
    do_num / do_illum), g_psi1 (B, P, M, N) ∇ψ_1 and t1 (B, M, N) Σ_q |O_{q,1}|² (with
    do_probe); else these may be any arrays of the right rank (not written).
    With ``do_pos``, pos_out (B, 4) = the position terms of ``engines/common.position_terms``
    (∂L/∂f_y, ∂L/∂f_x and ‖ψ_s ∂O_s/∂f‖² summed over slices and modes, in px) from the waves
    while they are in cache: uy (M,), ux (N,) fftfreq, pos_k (1, P, M, N), win, tmp
    (1, 1, M, N) complex and power (Q, M, N) real scratch (any arrays of the right rank else);
    without ``pos_curvature`` (L-BFGS reads ∂L/∂f only) pos_out[:, 2:] = 0, its transforms saved.
    With ``do_tilt``, tilt_out (B, 3) = (∂L/∂t_y, ∂L/∂t_x per mrad, ∂L/∂Δz per Å) of
    ``physics/model.py``: Σ over the propagations of Re Σ conj(G_s) ∂H/∂θ F[e_{s-1}] with
    ∂H/∂θ = -i H rate_θ and H F[e_{s-1}] = F[ψ_s] (``propagation.propagator_derivatives``:
    rate_t = 2π Δz 1e-3 k sec²t, rate_Δz = πλ|k|² + 2π k·tan t). ky (M,), kx (N,) = 2π k;
    qy (M,), qx (N,) = πλ k² (k in 1/Å); geo (B, 4) = (Δz 1e-3 sec²t_y, Δz 1e-3 sec²t_x,
    tan t_y, tan t_x) per position; tilt_k (P, Q, M, N) complex scratch with planes aligned
    as planned (any arrays of the right rank else).
    first (P, 1, M, N), waves (max(S - 1, 1), P, Q, M, N), far (P, Q, M, N), g_sum (P, M, N): scratch, C-contiguous with
    64-byte-aligned planes as the plans were made. ``done_addr``, ``signal_addr`` as in
    ``single_slice_part``.
    """
    execute, plan_f, plan_b = fft
    probe_k, frac, s, obj, y0, x0, data, rows = scan
    mask, model, eps, poisson, background = noise
    do_num, do_illum, do_probe, do_pos, pos_curvature, keep, do_tilt = want
    first, waves, far, g_sum, num, illum, probe_grad_k, loss, g_patches, w_patches, g_psi1, t1 = bufs
    # None: that code is pruned before typing (not compiled: a faster first run)
    if pos is not None:
        uy, ux, pos_k, win, tmp, power, pos_out = pos
    if tilt is not None:
        ky, kx, qy, qx, geo, tilt_k, tilt_out = tilt
    if signal_addr != 0:
        _store_release(signal_addr, signal_value)
    nb_ = frac.shape[0]
    n_slices = obj.shape[1]
    n_p, nq, m, n = far.shape
    s2 = s * s
    zero = loss.dtype.type(0)
    per_position_h = h.shape[0] > 1
    if do_num:
        num[...] = 0
    if do_illum:
        illum[...] = 0
    if do_probe:
        probe_grad_k[...] = 0
    keep_num = keep and do_num
    keep_illum = keep and do_illum
    keep_probe = keep and do_probe
    for b in range(nb_):
        fb = frac[b].reshape((1, 2))
        yb, xb = y0[b], x0[b]
        hb = h[b if per_position_h else 0].reshape((1, m, n))
        _forward_slices(execute, plan_f, plan_b, probe_k, fb, s, obj, yb, xb, hb, first, waves, far,
                        data[rows[b]].reshape((1, m, n)), mask, model, eps, zero, s2 + s2, loss[b:b + 1], poisson,
                        background)
        ty = 0.0
        tx = 0.0
        tq = 0.0
        for sl in range(n_slices - 1, -1, -1):
            src = first if sl == 0 else waves[sl - 1]
            gk = g_patches[b, sl] if keep_num else g_patches[0, 0]
            wk = w_patches[b, sl] if keep_illum else w_patches[0, 0]
            _slice_adjoint(obj, sl, yb, xb, src, far, num, illum, do_num, do_illum, keep_num, keep_illum, gk, wk)
            if tilt is not None and sl > 0 and do_tilt:  # G_s = F[∇ψ_s] is the adjoint propagation's own transform
                _fft_planes(execute, plan_f, far)
                tk = tilt_k.reshape(-1)
                wv = src.reshape(-1)
                for i in range(tk.shape[0]):
                    tk[i] = wv[i]
                _fft_planes(execute, plan_f, tilt_k)
                ry, rx, rq = _tilt_sums(far, tilt_k, ky, kx, qy, qx)
                ty += ry
                tx += rx
                tq += rq
                spectral_multiply(far.reshape((1, n_p * nq, m, n)), hb, s2, _YES)
                _fft_planes(execute, plan_b, far)
            elif sl > 0:
                _propagate(execute, plan_f, plan_b, far, hb, s2, _YES)
        if tilt is not None and do_tilt:  # unitary spectra: s² on the unnormalised pair
            tilt_out[b, 0] = float(s2) * ty * geo[b, 0]
            tilt_out[b, 1] = float(s2) * tx * geo[b, 1]
            tilt_out[b, 2] = float(s2) * (tq + ty * geo[b, 2] + tx * geo[b, 3])
        cy = 0.0
        cx = 0.0
        if pos is not None and do_pos and pos_curvature:  # slice by slice, from the waves that entered each slice
            for sl in range(n_slices):
                ry, rx = _slice_curvature(execute, plan_f, plan_b, obj, sl, yb, xb, first, waves, uy, ux, win, tmp,
                                          power)
                cy += ry
                cx += rx
        if keep_probe:
            tb = t1[b]
            for y in range(m):
                trow = tb[y]
                for x in range(n):
                    trow[x] = 0
                for q in range(nq):
                    orow = obj[q, 0, yb + y, xb:xb + n]
                    for x in range(n):
                        v = orow[x]
                        trow[x] += v.real * v.real + v.imag * v.imag
        if not (do_probe or (pos is not None and do_pos)):
            continue
        # ∇ψ_1 = Σ_q conj(O_{q,1}) g_1: with one object mode that is ``far`` itself
        if nq == 1:
            gp = far.reshape((1, n_p, m, n))
        else:
            _sum_object_modes(far, g_sum, loss.dtype.type(1))
            gp = g_sum.reshape((1, n_p, m, n))
        if keep_probe:
            kept = g_psi1[b].reshape(-1)
            src_flat = gp.reshape(-1)
            for i in range(kept.shape[0]):
                kept[i] = src_flat[i]
        _fft_planes(execute, plan_f, gp)
        if pos is not None and do_pos:  # ∂L/∂f from F[∇ψ_1] (the probe gradient's own transform) and F[ψ_1]
            to = pos_k.reshape(-1)
            fr = first.reshape(-1)
            for i in range(to.shape[0]):
                to[i] = fr[i]
            _fft_planes(execute, plan_f, pos_k)
            gy, gx = _position_gradient_sums(gp, pos_k, uy, ux)
            position_out(pos_out[b], s, gy, gx, cy, cx)
        if not do_probe:
            continue
        ramp_accumulate(gp, fb, 1.0, s, probe_grad_k, probe_grad_k[:0])
    if done_addr != 0:
        _atomic_add(done_addr, 1)
    return loss


@nb.njit(**_JIT)
def lsqml_terms_multi_part(execute, plan_b, dp_k, frac, s, d_obj, y0, x0, g_patches, w_patches, g_psi1, t1,
                           use_obj, use_probe, shifted, out_obj, out_probe, dp_out, signal_addr, signal_value):
    """LSQ-ML's per-position terms of the decoupled multislice steps (physics.md §6.3, 6) for a
    part, reading ``multislice_part``'s kept windows: out_obj (B, S, 2) = (-½ Re⟨ΔO_s, ∇O_s⟩,
    ⟨|ΔO_s|², W_s⟩) per slice with the windows of d_obj (Q, S, H, W) read in place, and
    out_probe (B, 2) = (-½ Re⟨ΔP_b, ∇ψ_1⟩, ⟨|ΔP_b|², Σ_q|O_{q,1}|²⟩) with
    ΔP_b = F⁻¹[s·ramp_b·dp_k] made in ``shifted`` (1, P, M, N). Sums in float64 over float32 row sums (as
    ``lsqml_terms``). Then, unless dp_out is empty, dp_out = ΔP = s·F⁻¹[dp_k]. ``signal_*``
    as ``single_slice_part``."""
    if signal_addr != 0:
        _store_release(signal_addr, signal_value)
    nb_ = frac.shape[0]
    n_slices, nq, m, n = g_patches.shape[1:]
    n_p = shifted.shape[1]
    zero = t1[0, 0].dtype.type(0)
    for b in range(nb_):
        yb, xb = y0[b], x0[b]
        if use_obj:
            for sl in range(n_slices):
                num = 0.0
                den = 0.0
                for q in range(nq):
                    for y in range(m):
                        rn, rd = _row_terms(d_obj[q, sl, yb + y, xb:xb + n], g_patches[b, sl, q, y],
                                            w_patches[b, sl, q, y], zero)
                        num += rn
                        den += rd
                out_obj[b, sl, 0] = -0.5 * num
                out_obj[b, sl, 1] = den
        if use_probe:
            ramp_product(dp_k, frac[b].reshape((1, 2)), -1.0, s, shifted)
            _fft_planes(execute, plan_b, shifted)
            num = 0.0
            den = 0.0
            for p in range(n_p):
                for y in range(m):
                    rn, rd = _row_terms(shifted[0, p, y], g_psi1[b, p, y], t1[b, y], zero)
                    num += rn
                    den += rd
            out_probe[b, 0] = -0.5 * num
            out_probe[b, 1] = den
    if dp_out.shape[0] > 0:
        copy_flat(dp_out.reshape(-1), dp_k.reshape(-1))
        _fft_planes_scaled(execute, plan_b, dp_out, s)
    return out_obj


@nb.njit(**_JIT)
def _mode_power_row(psi, qi, y, tmp):
    """tmp = Σ_p |ψ[p, qi, y]|² (one row)."""
    n_p, n = psi.shape[0], tmp.shape[0]
    prow = psi[0, qi, y]
    for x in range(n):
        v = prow[x]
        tmp[x] = v.real * v.real + v.imag * v.imag
    for p in range(1, n_p):
        prow = psi[p, qi, y]
        for x in range(n):
            v = prow[x]
            tmp[x] += v.real * v.real + v.imag * v.imag


@nb.njit(**_JIT)
def _slice_epie(obj, sl, yb, xb, psi, e, beta, gamma, d_obj, to_wave, tmp):
    """3PIE's updates at slice ``sl`` (physics.md §6.2), from the values before the position's
    update: δ = e - O ψ, d_obj (Q, M, N) = Σ_p conj(ψ) δ / den (den = max Σ_p|ψ|² for ePIE,
    (1-γ)Σ_p|ψ|² + γ max with gamma > 0 for rPIE) and Δψ = β conj(O) δ / max|O|², both per
    object mode, the maxima over every object mode (engines/epie.py ``_denominator``: why);
    e (P, Q, M, N) becomes ψ + Δψ (``to_wave``: the wave the slice before must have made) or
    Δψ itself (the first slice: the probe's update). psi (P, Q|1, M, N)."""
    nq, m = e.shape[1], e.shape[2]
    w_max = tmp.dtype.type(0)
    t_max = tmp.dtype.type(0)
    for q in range(nq):
        w_q, t_q = _slice_epie_maxes(obj, sl, yb, xb, psi, q, 0, m, tmp)
        w_max = max(w_max, w_q)
        t_max = max(t_max, t_q)
    for q in range(nq):
        _slice_epie_rows(obj, sl, yb, xb, psi, e, q, beta / t_max, gamma, w_max, d_obj, to_wave, tmp, 0, m)


@nb.njit(inline="always", **_JIT)
def _slice_epie_maxes(obj, sl, yb, xb, psi, q, r0, r1, tmp):
    """(max Σ_p|ψ_{p,q}|², max |O_{q,sl}|²) over rows r0:r1 of the window: ``_slice_epie``'s
    two denominators, taken over part of the rows (a thread's share; 0 for no rows)."""
    n = tmp.shape[0]
    qi = 0 if psi.shape[1] == 1 else q
    w_max = tmp.dtype.type(0)
    t_max = tmp.dtype.type(0)
    for y in range(r0, r1):
        _mode_power_row(psi, qi, y, tmp)
        w_max = max(w_max, _row_max(tmp, n))
        orow = obj[q, sl, yb + y, xb:xb + n]
        for x in range(n):
            v = orow[x]
            tmp[x] = v.real * v.real + v.imag * v.imag
        t_max = max(t_max, _row_max(tmp, n))
    return w_max, t_max


@nb.njit(inline="always", **_JIT)
def _slice_epie_rows(obj, sl, yb, xb, psi, e, q, scale, gamma, w_max, d_obj, to_wave, tmp, r0, r1):
    """``_slice_epie`` for object mode q on rows r0:r1, given the window's w_max = max Σ_p|ψ|²
    and scale = β / max|O|²."""
    n_p, n = e.shape[0], e.shape[3]
    qi = 0 if psi.shape[1] == 1 else q
    for y in range(r0, r1):
        orow = obj[q, sl, yb + y, xb:xb + n]
        drow = d_obj[q, y]
        for p in range(n_p):
            prow = psi[p, qi, y]
            erow = e[p, q, y]
            if p == 0:
                for x in range(n):
                    drow[x] = 0
            # one branch per row: each loop below vectorises
            if to_wave:
                for x in range(n):
                    pv = prow[x]
                    delta = erow[x] - orow[x] * pv
                    drow[x] += pv.conjugate() * delta
                    erow[x] = pv + orow[x].conjugate() * delta * scale
            else:
                for x in range(n):
                    pv = prow[x]
                    delta = erow[x] - orow[x] * pv
                    drow[x] += pv.conjugate() * delta
                    erow[x] = orow[x].conjugate() * delta * scale
        if gamma > 0:
            _mode_power_row(psi, qi, y, tmp)
        object_step_row(drow, tmp, gamma, w_max)


@nb.njit(**_JIT)
def _tilt_sums(g_k, w_k, ky, kx, qy, qx):
    """Σ r Im(conj(G) W) over the (P, Q, M, N) spectra for r = ky, kx and qy + qx (lines
    along rows and columns): Re Σ conj(G) (-i r) W, one propagation's share of the tilt and
    thickness derivatives before their per-position factors."""
    n_p, nq, m, n = g_k.shape
    ty = 0.0
    tx = 0.0
    tq = 0.0
    for p in range(n_p):
        for q in range(nq):
            for y in range(m):
                grow = g_k[p, q, y]
                wrow = w_k[p, q, y]
                ry = kx.dtype.type(0)
                rx = kx.dtype.type(0)
                rq = kx.dtype.type(0)
                for x in range(n):  # float32 row sums (they vectorise), float64 over rows
                    im = (grow[x].conjugate() * wrow[x]).imag
                    ry += im
                    rx += kx[x] * im
                    rq += qx[x] * im
                ty += ky[y] * ry
                tx += rx
                tq += qy[y] * ry + rq
    return ty, tx, tq


@nb.njit(**_JIT)
def _slice_curvature(execute, plan_f, plan_b, obj, sl, yb, xb, first, waves, uy, ux, win, tmp, power):
    """Slice ``sl``'s share of the position curvature (``_position_curvature_sums``): its
    object window's derivatives weighted by Σ_p |ψ|² of the wave that entered the slice
    (``first`` for the first slice, else waves[sl - 1]); power (Q, M, N) real scratch."""
    src = first if sl == 0 else waves[sl - 1]
    for qi in range(src.shape[1]):
        for y in range(src.shape[2]):
            _mode_power_row(src, qi, y, power[qi, y])
    return _position_curvature_sums(execute, plan_f, plan_b, obj[:, sl], yb, xb, power[:src.shape[1]], uy, ux, win,
                                    tmp)


@nb.njit(**_JIT)
def _epie_gradient_sums(execute, plan_f, obj, yb, xb, first, far, beta, uy, ux, g_k, psi_k):
    """∂L/∂f's raw sums (``_position_gradient_sums``) of a 3PIE position after its sweep, as
    the general path has them: ∇ψ_1 = -2 max|O_1|² mean_q Δψ_{1,q} / β, with ``far`` (P, Q,
    M, N) holding Δψ_1 of every mode pair and the first slice's windows not yet updated;
    ψ_1 = first (P, 1, M, N). g_k, psi_k (1, P, M, N) scratch, planes aligned as planned."""
    n_p, nq, m, n = far.shape
    t_max = uy.dtype.type(0)
    for q in range(nq):
        for y in range(m):
            orow = obj[q, 0, yb + y, xb:xb + n]
            for x in range(n):
                v = orow[x]
                t_max = max(t_max, v.real * v.real + v.imag * v.imag)
    scale = uy.dtype.type(-2.0) * t_max / beta
    inv_q = uy.dtype.type(1.0 / nq)
    for p in range(n_p):
        for y in range(m):
            grow = g_k[0, p, y]
            frow = far[p, 0, y]
            for x in range(n):
                grow[x] = frow[x]
            for q in range(1, nq):
                frow = far[p, q, y]
                for x in range(n):
                    grow[x] += frow[x]
            for x in range(n):
                grow[x] = grow[x] * inv_q * scale
            prow = psi_k[0, p, y]
            srow = first[p, 0, y]
            for x in range(n):
                prow[x] = srow[x]
    _fft_planes(execute, plan_f, g_k)
    _fft_planes(execute, plan_f, psi_k)
    return _position_gradient_sums(g_k, psi_k, uy, ux)


@nb.njit(inline="always", **_JIT)
def _epie_fields(fft, scan, noise, update, bufs, pos):
    """The 3PIE kernels' records (records.py) as one flat tuple, in the order they unpack it."""
    execute, plan_f, plan_b = fft
    probe_k, frac, s, obj, y0, x0, data, _ = scan
    mask, model, eps, _, _ = noise  # ePIE's codes never include 5 (its farfield calls pass None), nor a background
    beta, gamma, alpha, do_obj, do_probe, do_pos = update
    first, waves, far, d_obj, g_sum, loss, probe_out = bufs
    uy, ux, g_k, psi_k, win, pos_tmp, power, pos_parts, pos_out = pos
    return (execute, plan_f, plan_b, probe_k, frac, s, obj, y0, x0, data, mask, model, eps, beta, gamma, alpha,
            do_obj, do_probe, do_pos, first, waves, far, d_obj, g_sum, loss, probe_out, uy, ux, g_k, psi_k, win,
            pos_tmp, power, pos_parts, pos_out)


@nb.njit(**_JIT)
def epie_multislice_position(fft, scan, h, noise, update, bufs, pos):
    """One position of sequential multislice ePIE (3PIE, Maiden 2012; rPIE with gamma > 0),
    FFTs included, in one call: the same steps as engines/epie.EpieEngine.update's general
    path for a group of one, which ran ~10 array calls per slice.

    ψ_1 = F⁻¹[s·ramp·F[P]] (``first``, P, 1, M, N); forward through the slices as
    ``multislice_part`` (incident waves kept in waves[s - 1]); e'_S = F⁻¹[(1 - m ℓ')Ψ] (the
    projection) in ``far`` (P, Q, M, N), loss (1,); then from the last slice to the first,
    ``_slice_epie`` and e' of the slice before = F⁻¹[conj(h) F[ψ + Δψ]]. After the sweep:
    obj[:, s] += α d_obj[s] at the window (do_obj; d_obj (S, Q, M, N)), and with do_probe
    F[P] += s·ramp*·F[mean_q Δψ_1] (probe_k, in place) and probe_out = s·F⁻¹[F[P]].
    h (1, M, N) the propagator (the position's own with a tilt); g_sum (P, M, N) scratch;
    data (1, M, N). Planes 64-byte aligned as planned.
    With ``do_pos``, before both steps (the windows and waves as the update saw them):
    pos_out (1, 4) = the position terms of ``engines/common.position_terms`` (∂L/∂f_y,
    ∂L/∂f_x, curvature y, x), with ∇ψ_1 as the general path's (``_epie_gradient_sums``).
    uy (M,), ux (N,) fftfreq; g_k, psi_k (1, P, M, N), win, pos_tmp (T, 1, 1, M, N) complex,
    power (T, Q, M, N) real and pos_parts (T, 4) float64 scratch (T ≥ 1; the threaded
    kernel's shapes: index 0 here). Arguments are records (records.py): fft ``Fft``, scan
    ``Scan`` (rows not read), h, noise ``Noise``, update ``EpieStep``, bufs ``EpieBuffers``, pos
    ``EpiePositions``; above by the names they are unpacked to."""
    (execute, plan_f, plan_b, probe_k, frac, s, obj, y0, x0, data, mask, model, eps, beta, gamma, alpha, do_obj,
     do_probe, do_pos, first, waves, far, d_obj, g_sum, loss, probe_out, uy, ux, g_k, psi_k, win, pos_tmp, power,
     pos_parts, pos_out) = _epie_fields(fft, scan, noise, update, bufs, pos)
    n_slices = obj.shape[1]
    n_p, nq, m, n = far.shape
    s2 = s * s
    fb = frac[0].reshape((1, 2))
    yb, xb = y0[0], x0[0]
    hb = h[0].reshape((1, m, n))
    tmp = np.empty(n, dtype=loss.dtype)
    _forward_slices(execute, plan_f, plan_b, probe_k, fb, s, obj, yb, xb, hb, first, waves, far, data, mask, model,
                    eps, s2, -s2, loss, None)
    for sl in range(n_slices - 1, -1, -1):
        src = first if sl == 0 else waves[sl - 1]
        _slice_epie(obj, sl, yb, xb, src, far, beta, gamma, d_obj[sl], sl > 0, tmp)
        if sl > 0:
            _propagate(execute, plan_f, plan_b, far, hb, s2, _YES)
    if do_pos:
        cy = 0.0
        cx = 0.0
        for sl in range(n_slices):
            ry, rx = _slice_curvature(execute, plan_f, plan_b, obj, sl, yb, xb, first, waves, uy, ux, win[0],
                                      pos_tmp[0], power[0])
            cy += ry
            cx += rx
        gy, gx = _epie_gradient_sums(execute, plan_f, obj, yb, xb, first, far, beta, uy, ux, g_k, psi_k)
        position_out(pos_out[0], s, gy, gx, cy, cx)
    if do_obj:
        for sl in range(n_slices):
            for q in range(nq):
                for y in range(m):
                    trow = obj[q, sl, yb + y, xb:xb + n]
                    drow = d_obj[sl, q, y]
                    for x in range(n):
                        trow[x] += alpha * drow[x]
    if do_probe:
        if nq == 1:
            step = far.reshape((1, n_p, m, n))
        else:  # the probe's update: the mean over the object modes
            _sum_object_modes(far, g_sum, tmp.dtype.type(1.0 / nq))
            step = g_sum.reshape((1, n_p, m, n))
        _probe_step(execute, plan_f, plan_b, probe_k, step, fb, s, probe_out)
    return loss


@nb.njit(inline="always", **_JIT)
def _pair(a, p, q):
    """Plane (p, q) of a (P, Q, M, N) array as (1, 1, M, N), C-contiguous (integer indices:
    a slice would be typed any-layout and the loops on it stay scalar)."""
    return a[p, q].reshape((1, 1, a.shape[2], a.shape[3]))


@nb.njit(inline="always", **_JIT)
def _pair_product(obj, q, sl, yb, xb, src, dest):
    """dest (M, N) = O_{q,sl}(window at yb, xb) · src (M, N)."""
    m, n = dest.shape
    for y in range(m):
        orow = obj[q, sl, yb + y, xb:xb + n]
        prow = src[y]
        drow = dest[y]
        for x in range(n):
            drow[x] = orow[x] * prow[x]


@nb.njit(**_JIT)
def epie_multislice_part(bar_addr, t, n_threads, maxes, fft, scan, h, noise, update, bufs, pos, signal_addr,
                         signal_value):
    """``epie_multislice_position`` as thread ``t`` of ``n_threads`` run together
    (``parallel.map_launches(..., together=True)``): one 3PIE position on several cores.

    The transforms go by wave: thread t takes probe modes p = t, t + n_threads, ... for ψ_1
    and the probe's step, and mode pairs k = p·Q + q likewise for every slice's product and
    propagation (each pair's waves form their own chain through the slices). The far field
    (every mode's intensity at a pixel) runs on thread 0; each slice's updates split the
    window's rows, their two maxima shared through ``maxes`` (n_threads, Q, 2). Threads meet
    at barriers on ``bar_addr`` (an int64, zero at the start) between these phases. The same
    operations as the single-threaded kernel on every pixel and mode, so the same numbers.
    The position terms (``do_pos``) go by slice: thread t the curvature of slices t,
    t + n_threads, ... in its own scratch (win[t], pos_tmp[t], power[t]), the thread with the
    fewest slices ∂L/∂f too, each its partial sums into pos_parts[t]; thread 0 adds them.
    Why: one position's work is a chain of small transforms that a group-of-one engine
    cannot batch; with two or more wave chains (modes) they can run side by side.
    The records after ``maxes`` as ``epie_multislice_position``'s."""
    (execute, plan_f, plan_b, probe_k, frac, s, obj, y0, x0, data, mask, model, eps, beta, gamma, alpha, do_obj,
     do_probe, do_pos, first, waves, far, d_obj, g_sum, loss, probe_out, uy, ux, g_k, psi_k, win, pos_tmp, power,
     pos_parts, pos_out) = _epie_fields(fft, scan, noise, update, bufs, pos)
    if signal_addr != 0:
        _store_release(signal_addr, signal_value)
    n_slices = obj.shape[1]
    n_p, nq, m, n = far.shape
    s2 = s * s
    fb = frac[0].reshape((1, 2))
    yb, xb = y0[0], x0[0]
    hb = h[0].reshape((1, m, n))
    tmp = np.empty(n, dtype=loss.dtype)
    r0 = m * t // n_threads
    r1 = m * (t + 1) // n_threads
    passed = 0
    for p in range(t, n_p, n_threads):
        fp = first[p].reshape((1, 1, m, n))
        ramp_product(probe_k[p].reshape((1, m, n)), fb, -1.0, s, fp)
        _fft_planes(execute, plan_b, fp)
    passed += 1
    _barrier(bar_addr, passed * n_threads)
    for k in range(t, n_p * nq, n_threads):
        p, q = k // nq, k % nq
        for sl in range(n_slices):
            src = first[p, 0] if sl == 0 else waves[sl - 1][p, q]
            if sl == n_slices - 1:
                _pair_product(obj, q, sl, yb, xb, src, far[p, q])
                _fft_planes(execute, plan_f, _pair(far, p, q))
            else:
                _pair_product(obj, q, sl, yb, xb, src, waves[sl][p, q])
                _propagate(execute, plan_f, plan_b, _pair(waves[sl], p, q), hb, s2, _NO)
    passed += 1
    _barrier(bar_addr, passed * n_threads)
    if t == 0:
        flat = far.reshape((1, n_p * nq, m, n))
        farfield(flat, data, mask, model, eps, s2, -s2, s2, flat, loss, None)
    passed += 1
    _barrier(bar_addr, passed * n_threads)
    for k in range(t, n_p * nq, n_threads):
        _fft_planes(execute, plan_b, _pair(far, k // nq, k % nq))
    passed += 1
    _barrier(bar_addr, passed * n_threads)
    for sl in range(n_slices - 1, -1, -1):
        src = first if sl == 0 else waves[sl - 1]
        for q in range(nq):
            w_part, t_part = _slice_epie_maxes(obj, sl, yb, xb, src, q, r0, r1, tmp)
            maxes[t, q, 0] = w_part
            maxes[t, q, 1] = t_part
        passed += 1
        _barrier(bar_addr, passed * n_threads)
        w_max = maxes[0, 0, 0]
        t_max = maxes[0, 0, 1]
        for q in range(nq):  # over every object mode, as ``_slice_epie``
            for i in range(n_threads):
                w_max = max(w_max, maxes[i, q, 0])
                t_max = max(t_max, maxes[i, q, 1])
        for q in range(nq):
            _slice_epie_rows(obj, sl, yb, xb, src, far, q, beta / t_max, gamma, w_max, d_obj[sl], sl > 0, tmp,
                             r0, r1)
        passed += 1
        _barrier(bar_addr, passed * n_threads)
        if sl > 0:
            for k in range(t, n_p * nq, n_threads):
                _propagate(execute, plan_f, plan_b, _pair(far, k // nq, k % nq), hb, s2, _YES)
            passed += 1
            _barrier(bar_addr, passed * n_threads)
    if do_pos:  # before any step: every thread's reading of the windows ends at the barrier
        cy = 0.0
        cx = 0.0
        for sl in range(t, n_slices, n_threads):
            ry, rx = _slice_curvature(execute, plan_f, plan_b, obj, sl, yb, xb, first, waves, uy, ux, win[t],
                                      pos_tmp[t], power[t])
            cy += ry
            cx += rx
        gy = 0.0
        gx = 0.0
        if t == n_slices % n_threads:
            gy, gx = _epie_gradient_sums(execute, plan_f, obj, yb, xb, first, far, beta, uy, ux, g_k, psi_k)
        pos_parts[t, 0] = gy
        pos_parts[t, 1] = gx
        pos_parts[t, 2] = cy
        pos_parts[t, 3] = cx
        passed += 1
        _barrier(bar_addr, passed * n_threads)
        if t == 0:
            for i in range(1, n_threads):
                gy += pos_parts[i, 0]
                gx += pos_parts[i, 1]
                cy += pos_parts[i, 2]
                cx += pos_parts[i, 3]
            position_out(pos_out[0], s, gy, gx, cy, cx)
    if do_obj:  # every slice's update has read the object: this thread's rows of the window
        for sl in range(n_slices):
            for q in range(nq):
                for y in range(r0, r1):
                    trow = obj[q, sl, yb + y, xb:xb + n]
                    drow = d_obj[sl, q, y]
                    for x in range(n):
                        trow[x] += alpha * drow[x]
    if do_probe:
        for p in range(t, n_p, n_threads):
            if nq == 1:
                step = _pair(far, p, 0)
            else:  # the mean over the object modes
                step = g_sum[p].reshape((1, 1, m, n))
                _sum_object_modes(far[p].reshape((1, nq, m, n)), step[0], tmp.dtype.type(1.0 / nq))
            _probe_step(execute, plan_f, plan_b, probe_k[p].reshape((1, m, n)), step, fb, s,
                        probe_out[p].reshape((1, m, n)))
    return loss
