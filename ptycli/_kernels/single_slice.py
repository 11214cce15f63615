"""Fused CPU kernels (Numba) for the engines' memory-bound passes, the single-slice ones and
the helpers the multislice ones (multislice.py) build on; private to the backend seam.

Why: after the FFTs, an iteration on NumPy was dominated by ~20 separate elementwise
passes per group (ramps, |Ψ|², the noise model, conj products, window copies, scatter-adds,
the LSQ-ML step dots), each reading and writing whole (B, M, N) complex arrays, plus their
temporaries. Each kernel below does one of those chains in one pass over memory without
temporaries. They are serial and release the GIL: ``parallel.map_parts`` runs the parts of a
group on separate threads, so both cores stay busy without Numba's threading layer (which
is not safe to enter from several Python threads at once).

Every kernel has an array-API twin in the compute code (used on CuPy, array_api_strict, or
when Numba is missing or PTYCLI_KERNELS=0); tests check the two agree.
Noise model codes: 0 amplitude, 1 intensity, 2 poisson, 3 anscombe (physics.md §5.2).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir as llvm_ir
from numba.core import cgutils
from numba.core import types as nb_types
from numba.extending import intrinsic

# fastmath without nnan/ninf: reassociation lets LLVM vectorise the row loops and the
# reductions, while NaN and Inf still propagate (the loop's NaN check relies on it).
_JIT = {"nogil": True, "cache": True, "error_model": "numpy",
        "fastmath": {"reassoc", "contract", "arcp", "nsz"}}
NOISE_CODES = {"amplitude": 0, "intensity": 1, "poisson": 2, "anscombe": 3}
# LSQ-ML's own exit-wave steps (engines/lsqml.py, physics.md §6.3.1): the model's loss with
# another factor, for ``farfield`` only: the intensity loss with the amplitude model's step, and
# the Poisson gradient scaled per position by β_ξ ∈ [0, 1] (3 Newton steps on the window).
LSQML_STEP_CODES = {"intensity": 4, "poisson": 5}
ANSCOMBE_SHIFT = 0.375
INTENSITY_WEIGHT = 1.0


ALIGN_BYTES = 64
_ALIGN_FROM_BYTES = 2**16


def empty(shape: tuple[int, ...], dtype: object, aligned: bool = False) -> np.ndarray:
    """An output buffer for a kernel (callers outside the seam never import numpy).

    Large buffers (any, with ``aligned``) start on a 64-byte boundary: most are transformed
    in place next, and FFTW ran 6 % slower on the 16-byte-aligned blocks malloc hands out
    (32 vs 34 us per 128² complex64 transform, measured).
    """
    dt = np.dtype(dtype)
    n = math.prod(shape)
    nbytes = n * dt.itemsize
    if nbytes < _ALIGN_FROM_BYTES and not aligned:
        return np.empty(shape, dtype=dt)
    raw = np.empty(nbytes + ALIGN_BYTES, dtype=np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGN_BYTES
    return raw[start:start + nbytes].view(dt).reshape(shape)


def counters(n: int) -> np.ndarray:
    """n int64 zeros on the host, for compiled code to count and signal through (atomics)."""
    return np.zeros(n, dtype=np.int64)


def real_scalar(value: float, like: np.ndarray) -> np.generic:
    """``value`` in the real dtype of ``like``: kernels then stay in float32 for float32 data."""
    return like.real.dtype.type(value)


@nb.njit(**_JIT)
def copy_flat(dst, src):
    """dst[:] = src for two 1-D arrays of one size (callers pass ``a.reshape(-1)``: one
    signature), element by element: the slice assignment's shape-mismatch error drags
    Numba's string formatting into the first compilation (~5 CPU-s of a cold run, measured)."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@nb.njit(**_JIT)
def _ramp_line(out, f, n, sign, scale):
    """out[k] = scale exp(sign 2πi u_k f), u = fftfreq(n), by powers of one rotation in
    complex128 (two sin/cos per line instead of n; the recurrence's error, ~n ε, is far
    below complex64's)."""
    ph = sign * 2.0 * math.pi * f / n
    step = math.cos(ph) + 1j * math.sin(ph)
    back = step.conjugate()
    cur = scale + 0j
    for k in range((n + 1) // 2):  # u = 0, 1/n, ...
        out[k] = cur
        cur = cur * step
    cur = scale + 0j
    for k in range(1, n // 2 + 1):  # u = -1/n, -2/n, ... at the top of the line
        cur = cur * back
        out[n - k] = cur


@nb.njit(**_JIT)
def _ramps(frac, m, n, sign, like, scale):
    """Separable shift ramps exp(sign 2πi u f): (B, M) and (B, N) in the dtype of ``like``
    (a 1-D array: callers pass ``spec.reshape(-1)``, one signature for every rank), the first times ``scale`` (a factor of the product for free: e.g. an FFT's 1/sqrt(MN))."""
    nb_ = frac.shape[0]
    ey = np.empty((nb_, m), dtype=like.dtype)
    ex = np.empty((nb_, n), dtype=like.dtype)
    for b in range(nb_):
        # float64 arguments whatever the data's precision: one signature (float() keeps float32)
        _ramp_line(ey[b], np.float64(frac[b, 0]), m, np.float64(sign), np.float64(scale))
        _ramp_line(ex[b], np.float64(frac[b, 1]), n, np.float64(sign), np.float64(1.0))
    return ey, ex


@nb.njit(**_JIT)
def ramp_product(spec, frac, sign, scale, out):
    """out[b, p] = scale · spec[p] · exp(sign 2πi(u_y f_y + u_x f_x)) for spec (P, M, N), out (B, P, M, N).

    A kernel of its own rather than a product with a broadcast spectrum: the stride-0
    read-only view compiled to a loop measured 3x slower (0.25 vs 0.7-0.8 ms for 32 x 128²)."""
    nb_, n_p, m, n = out.shape
    ey, ex = _ramps(frac, m, n, sign, spec.reshape(-1), scale)
    for b in range(nb_):
        exb = ex[b]
        for p in range(n_p):
            for y in range(m):
                cy = ey[b, y]
                srow = spec[p, y]
                orow = out[b, p, y]
                for x in range(n):
                    orow[x] = srow[x] * (cy * exb[x])
    return out


@nb.njit(**_JIT)
def ramp_multiply(spec, frac, sign, scale):
    """spec[b, p] *= scale · exp(sign 2πi(u_y f_y + u_x f_x)) for spec (B, P, M, N), in place.

    In place by design, not through an ``out`` that may be ``spec``: an output aliasing the
    input fails LLVM's run-time overlap check and the loop runs scalar (measured 3x slower)."""
    nb_, n_p, m, n = spec.shape
    ey, ex = _ramps(frac, m, n, sign, spec.reshape(-1), scale)
    for b in range(nb_):
        exb = ex[b]
        for p in range(n_p):
            for y in range(m):
                cy = ey[b, y]
                row = spec[b, p, y]
                for x in range(n):
                    row[x] *= cy * exb[x]
    return spec


@nb.njit(**_JIT)
def ramp_accumulate(spec, frac, sign, scale, acc, copy_to):
    """acc[p] += scale · spec[0, p] · exp(sign 2πi(u_y f_y + u_x f_x)) for one position's
    spectrum spec (1, P, M, N) and acc (P, M, N); with ``copy_to`` of acc's size (else empty),
    copy_to = the new acc in the same pass. ``ramp_multiply`` and a sum fused: one pass over
    the planes instead of two (the products and their rounding are the same)."""
    n_p, m, n = acc.shape
    ey, ex = _ramps(frac, m, n, sign, spec.reshape(-1), scale)
    exb = ex[0]
    copy = copy_to.shape[0] > 0
    for p in range(n_p):
        for y in range(m):
            cy = ey[0, y]
            srow = spec[0, p, y]
            arow = acc[p, y]
            for x in range(n):
                arow[x] += srow[x] * (cy * exb[x])
            if copy:
                crow = copy_to[p, y]
                for x in range(n):
                    crow[x] = arow[x]
    return acc


@nb.njit(**_JIT)
def ramp_sum(spec, frac, sign, out):
    """out[p] = Σ_b spec[b, p] · exp(sign 2πi(u_y f_y + u_x f_x)) for spec (B, P, M, N)."""
    nb_, n_p, m, n = spec.shape
    ey, ex = _ramps(frac, m, n, sign, spec.reshape(-1), 1.0)
    out[...] = 0
    for b in range(nb_):
        exb = ex[b]
        for p in range(n_p):
            for y in range(m):
                cy = ey[b, y]
                srow = spec[b, p, y]
                orow = out[p, y]
                for x in range(n):
                    orow[x] += srow[x] * (cy * exb[x])
    return out


@nb.njit(inline="always", **_JIT)
def object_step_row(drow, power, gamma, w_max):
    """drow /= the ePIE object step's denominator, in place: max Σ_p|ψ|² (gamma ≤ 0), or
    rPIE's (1-γ)Σ_p|ψ|² + γ max with ``power`` = Σ_p|ψ|² of the row (gamma > 0)."""
    one = power.dtype.type(1)
    if gamma > 0:
        for x in range(drow.shape[0]):
            drow[x] = drow[x] / ((one - gamma) * power[x] + gamma * w_max)
    else:
        inv = one / w_max
        for x in range(drow.shape[0]):
            drow[x] = drow[x] * inv


@nb.njit(inline="always", **_JIT)
def _power_row(planes, y, out):
    """out = Σ_k |planes[k, y]|² (one row; planes (K, M, N), C-contiguous)."""
    n = out.shape[0]
    prow = planes[0, y]
    for x in range(n):
        v = prow[x]
        out[x] = v.real * v.real + v.imag * v.imag
    for k in range(1, planes.shape[0]):
        prow = planes[k, y]
        for x in range(n):
            v = prow[x]
            out[x] += v.real * v.real + v.imag * v.imag


@nb.njit(**_JIT)
def farfield(psi, data, mask, model, eps, a, c, s2, out, loss, poisson=True, background=None):
    """Per-position loss and out = (a + c·m ℓ'(I)) ψ with I = s2 Σ_k |ψ_k|², in one pass.

    psi, out (B, K, M, N); data (B, M, N); mask (M, N) (ones for no mask); loss (B,);
    eps, a, c, s2 in the real dtype of psi. For ψ = Ψ, s2 = 1: (a, c) = (0, 2) gives
    ∇_Ψ L, (1, -1) the projection Ψ̂ = (1 - m ℓ') Ψ. ``s2`` takes an unnormalised
    transform ψ = Ψ/s (s2 = s²) without a scaling pass of its own.
    ``LSQML_STEP_CODES``: 4, the intensity loss with the amplitude model's ℓ' (ε the
    amplitude model's); 5, the Poisson loss with ℓ' times β_b, the step along the Poisson
    gradient that 3 Newton iterations on the window find (``_poisson_beta``).
    ``poisson`` None: code 5's β is pruned before typing (not compiled; variants.py), and
    code 5 is refused.
    ``background`` (3, M, N) (codes 0, 2 and 5; None: pruned before typing): LSQ-ML's
    incoherent B in [0], the model intensity being I + B (engines/lsqml_background.py), and
    Σ_b m ℓ'(I + B), Σ_b m ℓ''(I + B) added into [1], [2] (B's Newton sums).
    """
    nb_, nk, m, n = psi.shape
    if poisson is None and model == 5:
        raise ValueError("farfield: model 5 (LSQ-ML's Poisson step) with the poisson argument None")
    # out may be psi itself: then the last loop is written on one array (an output aliasing
    # its input fails LLVM's run-time overlap check and that loop would run scalar)
    in_place = out.ctypes.data == psi.ctypes.data
    f = np.empty(n, dtype=loss.dtype)
    zero = f.dtype.type(0)
    one = f.dtype.type(1)
    two = f.dtype.type(2)
    shift = f.dtype.type(ANSCOMBE_SHIFT)
    weight = f.dtype.type(INTENSITY_WEIGHT)
    # model 5: the window's intensities, made once for β's Newton steps and the pass below
    inten = np.empty((m, n) if model == 5 else (1, 1), dtype=loss.dtype)
    for b in range(nb_):
        c_b = c
        if poisson is not None and model == 5:  # β_b from the whole window's intensities first
            c_b = c * _poisson_beta(psi[b], data[b], mask, eps, s2, inten, background)
        total = 0.0  # the window's loss: float64 over float32 row sums
        for y in range(m):
            drow = data[b, y]
            mrow = mask[y]
            if poisson is not None and model == 5:
                irow = inten[y]
                for x in range(n):
                    f[x] = irow[x]
            else:
                _power_row(psi[b], y, f)
                for x in range(n):
                    f[x] *= s2
            if background is not None:
                _background_row(f, drow, mrow, background, y, model, eps)
            # one branch per row, not per pixel: each loop below vectorises
            row = zero
            if model == 4:
                for x in range(n):
                    r = f[x] - drow[x]
                    s = np.sqrt(f[x])
                    diff = s - np.sqrt(drow[x])
                    w = mrow[x]
                    row += w * (weight * r * r)
                    f[x] = a + c * (w * ((diff + eps) / (s + eps)))
            elif model == 0:
                for x in range(n):
                    s = np.sqrt(f[x])
                    diff = s - np.sqrt(drow[x])
                    w = mrow[x]
                    row += w * (diff * diff)
                    f[x] = a + c * (w * ((diff + eps) / (s + eps)))
            elif model == 1:
                for x in range(n):
                    r = f[x] - drow[x]
                    w = mrow[x]
                    row += w * (weight * r * r)
                    f[x] = a + c * (w * (two * weight * r))
            elif model == 2 or model == 5:
                for x in range(n):
                    d = drow[x]
                    i = f[x]
                    dlogd = d * np.log(d) if d > 0 else zero
                    w = mrow[x]
                    row += w * (i - d * np.log(i + eps) - (d - dlogd))
                    f[x] = a + c_b * (w * (one - d / (i + eps)))
            else:
                for x in range(n):
                    si = np.sqrt(f[x] + shift)
                    sd = np.sqrt(drow[x] + shift)
                    w = mrow[x]
                    row += w * ((si - sd) * (si - sd))
                    f[x] = a + c * (w * (one - sd / si))
            total += row
            for k in range(nk):
                prow = psi[b, k, y]
                if in_place:
                    for x in range(n):
                        prow[x] = prow[x] * f[x]
                else:
                    orow = out[b, k, y]
                    for x in range(n):
                        orow[x] = prow[x] * f[x]
        loss[b] = total
    return loss


@nb.njit(inline="always", **_JIT)
def _background_row(f, drow, mrow, background, y, model, eps):
    """f += B (row y of background[0]) and B's Newton sums of the row added into
    background[1], background[2]: m ℓ'(f) and m ℓ''(f) of the amplitude model (code 0) or
    the Poisson one (2, 5), as engines/noise.dloss_dI and d2loss_dI2."""
    brow, grow, hrow = background[0, y], background[1, y], background[2, y]
    one = f.dtype.type(1)
    half = f.dtype.type(0.5)
    for x in range(f.shape[0]):
        f[x] += brow[x]
    if model == 0:
        for x in range(f.shape[0]):
            s = np.sqrt(f[x])
            sd = np.sqrt(drow[x])
            se = s + eps
            grow[x] += mrow[x] * ((s - sd + eps) / se)
            hrow[x] += mrow[x] * (half * sd / (se * se * se))
    else:
        for x in range(f.shape[0]):
            q = one / (f[x] + eps)
            d = drow[x]
            grow[x] += mrow[x] * (one - d * q)
            hrow[x] += mrow[x] * (d * q * q)


@nb.njit(**_JIT)
def _poisson_beta(psi_b, data_b, mask, eps, s2, inten, background=None):
    """LSQ-ML's Poisson step length β ∈ [0, 1] along χ = r Ψ, r = m (D/(I+ε) - 1), for one
    window (psi_b (K, M, N) with I = s2 Σ_k |ψ_k|², written into inten (M, N) for the
    caller): 3 Newton steps on dL/dβ from β = 0.5, as engines/lsqml.LsqmlEngine._poisson_step
    (u = 1 + β r floored at 1e-3). With ``background`` (``farfield``'s): r = m (D/(I+B+ε) - 1)
    and the loss of J = u² I + B, the curvature floored positive, as primitives.lsqml_exit_step."""
    m, n = data_b.shape
    f = inten[0]
    one = f.dtype.type(1)
    zero = f.dtype.type(0)
    tiny = f.dtype.type(1e-30)
    beta = f.dtype.type(0.5)
    for y in range(m):
        irow = inten[y]
        _power_row(psi_b, y, irow)
        for x in range(n):
            irow[x] *= s2
    for _ in range(3):
        grad = 0.0
        hess = 0.0
        for y in range(m):
            if background is not None:
                g_row, h_row = _poisson_beta_row(inten[y], data_b[y], mask[y], background[0, y], eps, beta)
            else:
                g_row, h_row = _poisson_beta_row(inten[y], data_b[y], mask[y], None, eps, beta)
            grad += g_row
            hess += h_row
        # the step in float32, as the array code's (its sums were float32 too)
        if background is not None:
            hess = max(hess, 1e-30)
        beta = beta - f.dtype.type(grad) / (f.dtype.type(hess) + tiny)
        beta = min(max(beta, zero), one)
    return beta


@nb.njit(**_JIT)
def _poisson_beta_row(irow, drow, mrow, brow, eps, beta):
    """One row's (dL/dβ, d²L/dβ²) of ``_poisson_beta``; ``brow`` the background's row, or
    None (pruned before typing: the loss of u² I alone)."""
    one = irow.dtype.type(1)
    two = irow.dtype.type(2)
    floor = irow.dtype.type(1e-3)
    g_row = irow.dtype.type(0)
    h_row = irow.dtype.type(0)
    for x in range(irow.shape[0]):
        i = irow[x]
        d = drow[x]
        if brow is not None:
            r = (d / (i + brow[x] + eps) - one) * mrow[x]
            u = one + beta * r
            u = u if u > floor else floor
            j = u * u * i + brow[x] + eps
            q = one - d / j
            t = r * u * i / j
            g_row += two * r * i * u * q
            h_row += two * r * r * i * q + two * two * d * t * t
        else:
            r = (d / (i + eps) - one) * mrow[x]
            u = one + beta * r
            u = u if u > floor else floor
            g_row += two * r * i * u - two * d * r / u
            h_row += two * r * r * i + two * d * r * r / (u * u)
    return g_row, h_row


@nb.njit(**_JIT)
def extract(obj, y0, x0, out):
    """Windows of obj (L, H, W) at corners (y0[b], x0[b]) into out (B, L, M, N)."""
    nb_, nl, m, n = out.shape
    for b in range(nb_):
        yb, xb = y0[b], x0[b]
        for q in range(nl):
            for y in range(m):
                orow = obj[q, yb + y, xb:xb + n]
                drow = out[b, q, y]
                for x in range(n):
                    drow[x] = orow[x]
    return out


@nb.njit(**_JIT)
def scatter_add(target, y0, x0, patches):
    """target (L, H, W) += windows patches (B, L, M, N) at corners (y0[b], x0[b])."""
    nb_, nl, m, n = patches.shape
    for b in range(nb_):
        yb, xb = y0[b], x0[b]
        for q in range(nl):
            for y in range(m):
                trow = target[q, yb + y, xb:xb + n]
                prow = patches[b, q, y]
                for x in range(n):
                    trow[x] += prow[x]
    return target


@nb.njit(**_JIT)
def backward_single(obj, y0, x0, psi, g, num, illum, do_num, do_illum, g_psi):
    """Adjoint of the single-slice exit waves e = O_q ψ_p with the scatter-adds fused in.

    g (B, P, Q, M, N) = ∂L/∂e*; then num (Q, H, W) += Σ_p conj(ψ) g at each window,
    illum (Q, H, W) += Σ_p |ψ|² (when asked) and g_psi (B, P, M, N) = Σ_q conj(O_q) g.
    """
    nb_, n_p, nq, m, n = g.shape
    for b in range(nb_):
        yb, xb = y0[b], x0[b]
        for q in range(nq):
            for y in range(m):
                orow = obj[q, yb + y, xb:xb + n]
                nrow = num[q, yb + y, xb:xb + n] if do_num else num[0, 0, 0:n]
                wrow = illum[q, yb + y, xb:xb + n] if do_illum else illum[0, 0, 0:1]
                for p in range(n_p):
                    prow = psi[b, p, y]
                    grow = g[b, p, q, y]
                    gprow = g_psi[b, p, y]
                    if q == 0:
                        for x in range(n):
                            gprow[x] = orow[x].conjugate() * grow[x]
                    else:
                        for x in range(n):
                            gprow[x] += orow[x].conjugate() * grow[x]
                    if do_num:
                        for x in range(n):
                            nrow[x] += prow[x].conjugate() * grow[x]
                    if do_illum:
                        for x in range(n):
                            v = prow[x]
                            wrow[x] += v.real * v.real + v.imag * v.imag
    return g_psi


@nb.njit(inline="always", **_JIT)
def _adjoint_row(orow, prow, grow, nrow, wrow, do_num, do_illum):
    """One row of one mode pair's adjoint, in place: nrow += conj(ψ) g (do_num), g ← conj(O) g,
    wrow += |ψ|² (do_illum). Shared by the single-slice and the multislice kernels."""
    n = grow.shape[0]
    if do_num:
        for x in range(n):
            gv = grow[x]
            nrow[x] += prow[x].conjugate() * gv
            grow[x] = orow[x].conjugate() * gv
    else:
        for x in range(n):
            grow[x] = orow[x].conjugate() * grow[x]
    if do_illum:
        for x in range(n):
            v = prow[x]
            wrow[x] += v.real * v.real + v.imag * v.imag


@nb.njit(**_JIT)
def backward_single_in_place(obj, y0, x0, psi, g, num, illum, do_num, do_illum):
    """``backward_single`` for one object mode with g_psi written over g: g (B, P, M, N) =
    ∂L/∂e* on entry and Σ_q conj(O_q) g on return (the numerator and illumination sums as
    there). One buffer less per window: the compiled parts keep theirs in L2."""
    nb_, n_p, m, n = g.shape
    for b in range(nb_):
        yb, xb = y0[b], x0[b]
        for y in range(m):
            orow = obj[0, yb + y, xb:xb + n]
            nrow = num[0, yb + y, xb:xb + n] if do_num else num[0, 0, 0:n]
            wrow = illum[0, yb + y, xb:xb + n] if do_illum else illum[0, 0, 0:1]
            for p in range(n_p):
                _adjoint_row(orow, psi[b, p, y], g[b, p, y], nrow, wrow, do_num, do_illum)
    return g


@nb.njit(**_JIT)
def lsqml_terms(d_obj, obj, y0, x0, psi, shifted_dp, g, use_obj, use_probe, out):
    """Per-position dots of LSQ-ML's 2×2 step problem (single slice), out (B, 5):
    (‖a‖², ‖b‖², Re⟨a, b⟩, Re⟨a, χ⟩, Re⟨b, χ⟩) with a = ΔO·ψ, b = O·ΔP_shifted, χ = -½ g.

    d_obj, obj (Q, H, W); psi, shifted_dp (B, P, M, N); g (B, P, Q, M, N).
    """
    nb_, n_p, nq, m, n = g.shape
    zero = psi[0, 0, 0].real.dtype.type(0)
    for b in range(nb_):
        yb, xb = y0[b], x0[b]
        # float64 sums over the window (sums of squares in counts) of float32 row sums (a
        # row's 128 terms summed in float32 vectorise; summing every term in float64 did not);
        # never seeded from ``out``, which the caller may pass uninitialised
        aa = 0.0
        bb = 0.0
        ab = 0.0
        ra = 0.0
        rb = 0.0
        for p in range(n_p):
            for q in range(nq):
                for y in range(m):
                    drow = d_obj[q, yb + y, xb:xb + n]
                    orow = obj[q, yb + y, xb:xb + n]
                    prow = psi[b, p, y]
                    srow = shifted_dp[b, p, y]
                    grow = g[b, p, q, y]
                    raa = zero
                    rbb = zero
                    rab = zero
                    rra = zero
                    rrb = zero
                    # one loop whatever use_obj / use_probe (the unused sums are dropped below):
                    # a loop per combination cost ~1 CPU-s more to compile, once per install
                    for x in range(n):
                        va = drow[x] * prow[x]
                        vb = orow[x] * srow[x]
                        chi = grow[x]
                        raa += va.real * va.real + va.imag * va.imag
                        rra += va.real * chi.real + va.imag * chi.imag
                        rbb += vb.real * vb.real + vb.imag * vb.imag
                        rrb += vb.real * chi.real + vb.imag * chi.imag
                        rab += va.real * vb.real + va.imag * vb.imag
                    aa += raa
                    bb += rbb
                    ab += rab
                    ra += rra
                    rb += rrb
        if not use_obj:  # set, not scaled: an unused direction may hold anything
            aa = 0.0
            ab = 0.0
            ra = 0.0
        if not use_probe:
            bb = 0.0
            ab = 0.0
            rb = 0.0
        out[b, 0] = aa
        out[b, 1] = bb
        out[b, 2] = ab
        out[b, 3] = -0.5 * ra
        out[b, 4] = -0.5 * rb
    return out


@nb.njit(**_JIT)
def _row_max(row, n):
    """max(row[:n]) of non-negative values, four independent chains (a max reduction does
    not vectorise while NaN must propagate, but it pipelines)."""
    m0 = row[0]
    m1 = m0
    m2 = m0
    m3 = m0
    x = 0
    while x + 4 <= n:
        m0 = max(m0, row[x])
        m1 = max(m1, row[x + 1])
        m2 = max(m2, row[x + 2])
        m3 = max(m3, row[x + 3])
        x += 4
    while x < n:
        m0 = max(m0, row[x])
        x += 1
    return max(max(m0, m1), max(m2, m3))


@nb.njit(**_JIT)
def epie_single(obj, y0, x0, psi, target, beta, gamma, d_obj, d_psi):
    """ePIE/rPIE updates of one slice from the corrected exit waves (physics.md §6.1).

    obj (Q, H, W); psi (B, P, M, N) incident waves; target (B, P, Q, M, N) = e'. Writes
    d_obj (B, Q, M, N) = Σ_p conj(ψ_p) δ_pq / den and d_psi (B, P, M, N) = mean_q β conj(O_q)
    δ_pq / max_q max|O_q|², δ = e' - O ψ, den = max Σ_p|ψ|² (ePIE) or (1-γ)Σ_p|ψ|² + γ max (rPIE,
    gamma > 0). Both from the values before this update, as the engine applies them.
    """
    nb_, n_p, nq, m, n = target.shape
    tmp = np.empty(n, dtype=d_obj.real.dtype)
    zero = tmp.dtype.type(0)
    one = tmp.dtype.type(1)
    modes = tmp.dtype.type(nq)
    for b in range(nb_):
        yb, xb = y0[b], x0[b]
        w_max = zero
        for y in range(m):
            _power_row(psi[b], y, tmp)
            w_max = max(w_max, _row_max(tmp, n))
        # max|O|² over every object mode, as engines/epie.py (why there)
        t_max = zero
        for q in range(nq):
            for y in range(m):
                orow = obj[q, yb + y, xb:xb + n]
                for x in range(n):
                    v = orow[x]
                    tmp[x] = v.real * v.real + v.imag * v.imag
                t_max = max(t_max, _row_max(tmp, n))
        scale = beta / (t_max * modes)
        for q in range(nq):
            if n_p == 1 and gamma <= 0:
                # one probe mode, ePIE: each output written once, no per-row passes after
                # (measured 40 -> ~25 us for one 128² position)
                inv = one / w_max
                for y in range(m):
                    orow = obj[q, yb + y, xb:xb + n]
                    prow = psi[b, 0, y]
                    erow = target[b, 0, q, y]
                    drow = d_obj[b, q, y]
                    srow = d_psi[b, 0, y]
                    if q == 0:
                        for x in range(n):
                            o = orow[x]
                            pv = prow[x]
                            delta = erow[x] - o * pv
                            drow[x] = pv.conjugate() * delta * inv
                            srow[x] = o.conjugate() * delta * scale
                    else:
                        for x in range(n):
                            o = orow[x]
                            pv = prow[x]
                            delta = erow[x] - o * pv
                            drow[x] = pv.conjugate() * delta * inv
                            srow[x] += o.conjugate() * delta * scale
                continue
            for y in range(m):
                orow = obj[q, yb + y, xb:xb + n]
                drow = d_obj[b, q, y]
                drow[:] = 0
                for p in range(n_p):
                    prow = psi[b, p, y]
                    erow = target[b, p, q, y]
                    srow = d_psi[b, p, y]
                    if q == 0:  # hoisted: no branch inside the vectorised loops
                        for x in range(n):
                            delta = erow[x] - orow[x] * prow[x]
                            drow[x] += prow[x].conjugate() * delta
                            srow[x] = orow[x].conjugate() * delta * scale
                    else:
                        for x in range(n):
                            delta = erow[x] - orow[x] * prow[x]
                            drow[x] += prow[x].conjugate() * delta
                            srow[x] += orow[x].conjugate() * delta * scale
                if gamma > 0:
                    _power_row(psi[b], y, tmp)
                object_step_row(drow, tmp, gamma, w_max)
    return d_obj


@nb.njit(inline="always", **_JIT)
def _sum_rows_max(ws, q, r0, r1):
    """ws[0][q, r0:r1] += Σ_k≥1 ws[k][q, r0:r1] (the parts' sums, in order), and the max of
    those rows afterwards (0 for no rows)."""
    w0 = ws[0]
    wd = w0.shape[2]
    w_max = w0.dtype.type(0)
    for y in range(r0, r1):
        wrow = w0[q, y]
        for k in range(1, len(ws)):
            orow = ws[k][q, y]
            for x in range(wd):
                wrow[x] += orow[x]
        w_max = max(w_max, _row_max(wrow, wd))
    return w_max


@nb.njit(inline="always", **_JIT)
def _direction_rows(nums, w, q, r0, r1, w_max, delta):
    """nums[0][q, r0:r1] ← -½ Σ_k nums[k] / sqrt(w² + (δ w_max)²) on those rows (the parts'
    sums added in order first), in place: not via an ``out`` that may be nums[0] (an aliased
    output makes the loop scalar: see ``ramp_multiply``). Formed as w_max·sqrt((w/w_max)² + δ²):
    w² overflowed float32 once a thick specimen's illumination passed 1e19 counts (inf, and
    NaN in the next step); an unlit plane (w_max = 0) gets no direction."""
    n0 = nums[0]
    wd = n0.shape[2]
    minus_half = w.dtype.type(-0.5)
    inv = w.dtype.type(1.0) / w_max if w_max > 0 else w.dtype.type(0.0)
    d2 = delta * delta
    for y in range(r0, r1):
        nrow = n0[q, y]
        wrow = w[q, y]
        for k in range(1, len(nums)):
            orow = nums[k][q, y]
            for x in range(wd):
                nrow[x] += orow[x]
        for x in range(wd):
            r = wrow[x] * inv
            nrow[x] *= minus_half * inv / np.sqrt(r * r + d2)


@nb.njit(**_JIT)
def lsqml_direction(num, w, delta, num2=None, w2=None, modes=1):
    """LSQ-ML's object direction num[l] ← -½ num[l] / sqrt(w[l]² + (δ max w)²) for each
    object mode and slice l, in place in two passes (the max, then the quotient); num
    (L, H, W) complex, w (L, H, W) real. The max is over plane l and, with ``modes`` Q > 1
    object modes (l = q·S + s), over that slice's planes of every mode (engines/lsqml.py
    ``_object_direction``: why). With a second part's sums num2, w2 (shaped as num, w), they
    are added on the way (into num and w): no pass of their own."""
    if num2 is None:
        _direction_passes((num,), (w,), delta, modes)
    else:
        _direction_passes((num, num2), (w, w2), delta, modes)
    return num


@nb.njit(inline="always", **_JIT)
def _direction_passes(nums, ws, delta, modes):
    n_l, h = nums[0].shape[0], nums[0].shape[1]
    maxes = np.empty(n_l, dtype=ws[0].dtype)
    for q in range(n_l):
        maxes[q] = _sum_rows_max(ws, q, 0, h)
    n_s = n_l // modes
    for q in range(n_l):
        w_max = maxes[q % n_s]
        for k in range(1, modes):
            w_max = max(w_max, maxes[q % n_s + k * n_s])
        _direction_rows(nums, ws[0], q, 0, h, w_max, delta)


@nb.njit(**_JIT)
def add_scaled(y, x, a):
    """y += a·x in place (same shapes, C-contiguous; a real in the data's precision)."""
    yf = y.reshape(-1)
    xf = x.reshape(-1)
    for i in range(yf.shape[0]):
        yf[i] += a * xf[i]
    return y


@nb.njit(**_JIT)
def _trimmed_mean(a, frac):
    """Mean of a clipped at 0, without the int(frac n) smallest and largest values
    (the whole set when that would leave nothing). Sorted by a Shell sort written here:
    np.sort compiled Numba's quicksort, ~2 CPU-s of a cold run (measured)."""
    n = a.shape[0]
    v = np.empty(n)
    for i in range(n):
        v[i] = a[i] if a[i] > 0.0 else 0.0
    k = int(frac * n)
    lo, hi = 0, n
    if k > 0 and n - 2 * k > 0:
        gap = 1
        while gap < n // 3:
            gap = 3 * gap + 1
        while gap > 0:
            for i in range(gap, n):
                t = v[i]
                j = i
                while j >= gap and v[j - gap] > t:
                    v[j] = v[j - gap]
                    j -= gap
                v[j] = t
            gap //= 3
        lo, hi = k, n - k
    total = 0.0
    for i in range(lo, hi):
        total += v[i]
    return total / (hi - lo)


@nb.njit(**_JIT)
def lsqml_steps(aa, bb, ab, ra, rb, mode, trim, beta, out):
    """LSQ-ML's single-slice steps from the per-position dots (B,) of the group, in float64:
    the damped 2×2 least squares per position, clipped at 0, trimmed means (``trim`` for the
    object, none for the probe) times β. mode 0: both directions, 1: object only, 2: probe
    only. out (2,) = (α_O, α_P) in the run's real dtype. One call instead of ~40 NumPy calls
    on 32-element arrays, which took 4 % of a case-A iteration on the caller's thread.
    Plain loops: array expressions compile Numba's ufunc machinery (a cold run's seconds)."""
    n = aa.shape[0]
    a_o = np.zeros(n)
    a_p = np.zeros(n)
    sa = 0.0
    sb = 0.0
    for j in range(n):
        sa += aa[j]
        sb += bb[j]
    da = 0.1 * (sa / n)
    db = 0.1 * (sb / n)
    for j in range(n):
        if mode == 0:
            aa_d = aa[j] + da
            bb_d = bb[j] + db
            det = aa_d * bb_d - ab[j] * ab[j]
            det = det if det > 0 else 1.0
            a_o[j] = (bb_d * ra[j] - ab[j] * rb[j]) / det
            a_p[j] = (aa_d * rb[j] - ab[j] * ra[j]) / det
        elif mode == 1:
            a_o[j] = ra[j] / (aa[j] + da)
        else:
            a_p[j] = rb[j] / (bb[j] + db)
    out[0] = beta * _trimmed_mean(a_o, trim) if mode != 2 else 0.0
    out[1] = beta * _trimmed_mean(a_p, 0.0) if mode != 1 else 0.0
    return out


# Numba indexes arrays with wraparound for negative indices, so a loop over range(lo, hi) or
# over x0 + j cannot prove its index >= 0 and LLVM leaves it scalar (measured: the complex
# Adam step ran at 4.8 ns per element with no packed instruction). The Adam kernels slice
# their spans first and loop over range(len): the same arithmetic, vectorised.
@nb.njit(inline="always", **_JIT)
def _adam_span(z, g, g2, m, v_re, v_im, z_out, b1, b2, c1, c2, eps, lr, one, unit_i):
    """One Adam step on the 1-D spans (complex z, real moments v_re, v_im), the moments in
    place; the gradient is g + g2 (g2 None: g alone; g None: zero, the moments only decay)."""
    for i in range(z.shape[0]):
        if g is None:  # resolved at compile time: the decay-only loop has no gradient load
            mi = b1 * m[i]
            vr = b2 * v_re[i]
            vi = b2 * v_im[i]
        else:
            gv = g[i] if g2 is None else g[i] + g2[i]
            mi = b1 * m[i] + (one - b1) * gv
            vr = b2 * v_re[i] + (one - b2) * (gv.real * gv.real)
            vi = b2 * v_im[i] + (one - b2) * (gv.imag * gv.imag)
        m[i] = mi
        v_re[i] = vr
        v_im[i] = vi
        z_out[i] = z[i] - (lr * (mi.real * c1) / (np.sqrt(vr * c2) + eps)
                           + unit_i * (lr * (mi.imag * c1) / (np.sqrt(vi * c2) + eps)))


@nb.njit(**_JIT)
def adam(z, grad, grad2, m, v_re, v_im, b1, b2, c1, c2, eps, lr, lo, hi, z_out):
    """One Adam step per real component of complex z on flat elements [lo, hi): z_out a fresh
    array, the moments m, v_re, v_im updated in place; the gradient is grad + grad2 (the
    parts of a group, summed here instead of in a pass of their own; grad2 may be None).

    Same formula as engines/optimizers.Adam: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g²
    (real and imaginary parts apart), z - lr (m c1) / (sqrt(v c2) + eps) with the bias
    corrections c1 = 1/(1-b1^t), c2 = 1/(1-b2^t).
    """
    g2 = None if grad2 is None else grad2[lo:hi]
    _adam_span(z[lo:hi], grad[lo:hi], g2, m[lo:hi], v_re[lo:hi], v_im[lo:hi], z_out[lo:hi],
               b1, b2, c1, c2, eps, lr, v_re.dtype.type(1), z_out.dtype.type(1j))
    return z_out


@nb.njit(**_JIT)
def adam_region(z, g, m, v_re, v_im, y0, x0, b1, b2, c1, c2, eps, lr, lo, hi, z_out):
    """``adam`` on rows [lo, hi) of z (L, H, W) (rows of all L planes in turn) for a gradient
    that is g (L, h, w) on rows y0.., columns x0.. and zero elsewhere: the step a group's
    gradient makes on the whole grid, without an object-sized gradient of zeros to read.
    Outside the region m ← b1 m, v ← b2 v, exactly as ``adam`` does with g = 0."""
    n_rows = z.shape[1]
    gh, gw = g.shape[1], g.shape[2]
    one = v_re.dtype.type(1)
    unit_i = z_out.dtype.type(1j)
    for r in range(lo, hi):
        q = r // n_rows
        y = r - q * n_rows
        zr, mr, vr_, vi_, zo = z[q, y], m[q, y], v_re[q, y], v_im[q, y], z_out[q, y]
        if not y0 <= y < y0 + gh:
            _adam_span(zr, None, None, mr, vr_, vi_, zo, b1, b2, c1, c2, eps, lr, one, unit_i)
            continue
        a, b = x0, x0 + gw
        _adam_span(zr[:a], None, None, mr[:a], vr_[:a], vi_[:a], zo[:a], b1, b2, c1, c2, eps, lr, one, unit_i)
        _adam_span(zr[a:b], g[q, y - y0], None, mr[a:b], vr_[a:b], vi_[a:b], zo[a:b],
                   b1, b2, c1, c2, eps, lr, one, unit_i)
        _adam_span(zr[b:], None, None, mr[b:], vr_[b:], vi_[b:], zo[b:], b1, b2, c1, c2, eps, lr, one, unit_i)
    return z_out


@nb.njit(**_JIT)
def adam_real(z, grad, m, v, b1, b2, c1, c2, eps, lr, lo, hi, z_out):
    """``adam`` for a real z (flat elements [lo, hi), sliced first: see ``_adam_span``)."""
    one = v.dtype.type(1)
    z, grad, m, v, z_out = z[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi], z_out[lo:hi]
    for i in range(z.shape[0]):
        g = grad[i]
        mi = b1 * m[i] + (one - b1) * g
        m[i] = mi
        vi = b2 * v[i] + (one - b2) * (g * g)
        v[i] = vi
        z_out[i] = z[i] - lr * (mi * c1) / (np.sqrt(vi * c2) + eps)
    return z_out


@nb.njit(**_JIT)
def window_product(t, psi, out):
    """Exit waves out[b, p, q] = t[b, q] ψ[b, p, q or 0] for t (B, Q, M, N), psi (B, P, Q|1, M, N)."""
    nb_, n_p, nq, m, n = out.shape
    shared = psi.shape[2] == 1
    for b in range(nb_):
        for p in range(n_p):
            for q in range(nq):
                qi = 0 if shared else q
                for y in range(m):
                    trow = t[b, q, y]
                    prow = psi[b, p, qi, y]
                    orow = out[b, p, q, y]
                    for x in range(n):
                        orow[x] = trow[x] * prow[x]
    return out


@nb.njit(**_JIT)
def adjoint_products(t, psi, g, out_t, out_psi):
    """Adjoint of ``window_product``: out_t[b, q] = Σ_p conj(ψ[b, p, q or 0]) g[b, p, q] and
    out_psi[b, p, q] = conj(t[b, q]) g[b, p, q]."""
    nb_, n_p, nq, m, n = g.shape
    shared = psi.shape[2] == 1
    for b in range(nb_):
        for q in range(nq):
            qi = 0 if shared else q
            for y in range(m):
                trow = t[b, q, y]
                acc = out_t[b, q, y]
                for p in range(n_p):
                    prow = psi[b, p, qi, y]
                    grow = g[b, p, q, y]
                    orow = out_psi[b, p, q, y]
                    if p == 0:
                        for x in range(n):
                            acc[x] = prow[x].conjugate() * grow[x]
                    else:
                        for x in range(n):
                            acc[x] += prow[x].conjugate() * grow[x]
                    for x in range(n):
                        orow[x] = trow[x].conjugate() * grow[x]
    return out_t


@nb.njit(**_JIT)
def exit_from_object(obj, y0, x0, psi, out):
    """Single-slice exit waves read straight from the object: out[b, p, q] = O_q(window b) ψ[b, p]."""
    nb_, n_p, nq, m, n = out.shape
    for b in range(nb_):
        yb, xb = y0[b], x0[b]
        for p in range(n_p):
            for q in range(nq):
                for y in range(m):
                    orow = obj[q, yb + y, xb:xb + n]
                    prow = psi[b, p, y]
                    drow = out[b, p, q, y]
                    for x in range(n):
                        drow[x] = orow[x] * prow[x]
    return out


@nb.njit(**_JIT)
def mode_power(psi, out):
    """out[b, q] = Σ_p |ψ[b, p, q or 0]|² for psi (B, P, Q|1, M, N), out (B, Q, M, N)."""
    nb_, nq, m, n = out.shape
    n_p = psi.shape[1]
    shared = psi.shape[2] == 1
    for b in range(nb_):
        for q in range(nq):
            qi = 0 if shared else q
            for y in range(m):
                orow = out[b, q, y]
                prow = psi[b, 0, qi, y]
                for x in range(n):
                    v = prow[x]
                    orow[x] = v.real * v.real + v.imag * v.imag
                for p in range(1, n_p):
                    prow = psi[b, p, qi, y]
                    for x in range(n):
                        v = prow[x]
                        orow[x] += v.real * v.real + v.imag * v.imag
    return out


@nb.njit(**_JIT)
def spectral_multiply(x, h, scale, conj):
    """x[b, r] *= scale · h[b or 0] (or its conjugate), in place: the product between the two
    FFTs of a propagation, with both transforms' normalisations folded into ``scale``."""
    nb_, nr, m, n = x.shape
    shared = h.shape[0] == 1
    for b in range(nb_):
        hb = 0 if shared else b
        for r in range(nr):
            for y in range(m):
                xrow = x[b, r, y]
                hrow = h[hb, y]
                if conj:
                    for i in range(n):
                        xrow[i] = xrow[i] * hrow[i].conjugate() * scale
                else:
                    for i in range(n):
                        xrow[i] = xrow[i] * hrow[i] * scale
    return x


# ----------------------------------------------------------------------------- FFTW in kernels
@intrinsic
def _fftw_execute(typingctx, fn, plan, src, dst):
    """fftwf_execute_dft(plan, src, dst) through its address ``fn`` (all four 64-bit ints).

    An address passed in, not a ctypes function object, so the calling kernels stay in
    Numba's on-disk cache (a ctypes global makes a function uncacheable)."""
    if not all(isinstance(t, nb_types.Integer) for t in (fn, plan, src, dst)):
        return None

    def codegen(context, builder, signature, args):
        ptr = llvm_ir.IntType(8).as_pointer()
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [ptr, ptr, ptr])
        callee = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(callee, [builder.inttoptr(a, ptr) for a in args[1:]])
        return context.get_dummy_value()

    return nb_types.void(fn, plan, src, dst), codegen


@nb.njit(inline="always", **_JIT)
def _fft_planes(execute, plan, a):
    """The 2D transform ``plan`` in place on every (M, N) plane of the C-contiguous ``a``."""
    planes = a.reshape((-1, a.shape[-2], a.shape[-1]))
    for i in range(planes.shape[0]):
        _fftw_execute(execute, plan, planes[i].ctypes.data, planes[i].ctypes.data)


@nb.njit(inline="always", **_JIT)
def _fft_planes_scaled(execute, plan, a, s):
    """``_fft_planes``, then every element times ``s`` (the unitary scale the plans leave out)."""
    _fft_planes(execute, plan, a)
    flat = a.reshape(-1)
    for i in range(flat.shape[0]):
        flat[i] *= s


@nb.njit(**_JIT)
def fft_plane_work(execute, plan_f, plan_b, src, work, count):
    """``count`` transforms of one (M, N) plane in place, forward and inverse by turns: the
    FFT work of the compiled parts alone, for the benchmark's bound (``stages/bench.py``).
    ``work`` starts from ``src`` again every 8 transforms, so the unnormalised values stay
    finite (each transform scales them by sqrt(MN)); that copy is < 1 % of the time."""
    addr = work.ctypes.data
    for i in range(count):
        if i % 8 == 0:
            copy_flat(work.reshape(-1), src.reshape(-1))
        _fftw_execute(execute, plan_f if i % 2 == 0 else plan_b, addr, addr)
    return count


@nb.njit(inline="always", **_JIT)
def _probe_step(execute, plan_f, plan_b, probe_k, step, frac, s, probe_out):
    """ePIE's probe update through its spectrum: F[P] += s·ramp*·F[Δψ] (probe_k in place;
    ``step`` (1, P, M, N) holds Δψ and is transformed in place), probe_out = s·F⁻¹[F[P]]."""
    _fft_planes(execute, plan_f, step)
    ramp_accumulate(step, frac, 1.0, s, probe_k, probe_out)
    _fft_planes_scaled(execute, plan_b, probe_out, s)


@nb.njit(**_JIT)
def epie_position(execute, plan_f, plan_b, probe_k, frac, s, obj, y0, x0, data, mask, model, eps, beta, gamma,
                  alpha, do_obj, do_probe, psi, exit_wave, corrected, loss, d_obj, d_psi, probe_out):
    """One position of sequential single-slice ePIE/rPIE, FFTs included, in one call.

    The same steps as engines/epie.EpieEngine._update_one's array code (which runs them as
    ~25 Python-level calls per position): ψ = F⁻¹[s·ramp·F[P]], Ψ = F[O ψ] (unnormalised,
    s = 1/sqrt(MN)), the far-field correction, e' = F⁻¹[...], the ePIE/rPIE updates, then
    F[P] += s·ramp*·F[Δψ] and probe_out = s·F⁻¹[F[P]]. FFTW runs through ``execute`` (the
    address of fftwf_execute_dft) with in-place plans ``plan_f``/``plan_b`` for one (M, N)
    plane; every buffer is C-contiguous with 64-byte-aligned planes, as planned.
    psi, d_psi (1, P, M, N); exit_wave, corrected (1, P, Q, M, N); d_obj (1, Q, M, N);
    probe_k, probe_out (P, M, N); data (1, M, N); loss (1,).
    """
    s2 = s * s
    ramp_product(probe_k, frac, -1.0, s, psi)
    _fft_planes(execute, plan_b, psi)
    exit_from_object(obj, y0, x0, psi, exit_wave)
    _fft_planes(execute, plan_f, exit_wave)
    nb_, n_p, nq, m, n = exit_wave.shape
    farfield(exit_wave.reshape((nb_, n_p * nq, m, n)), data, mask, model, eps, s2, -s2, s2,
             corrected.reshape((nb_, n_p * nq, m, n)), loss, None)  # ePIE's codes never include 5
    _fft_planes(execute, plan_b, corrected)
    epie_single(obj, y0, x0, psi, corrected, beta, gamma, d_obj, d_psi)
    if alpha != 1:
        flat = d_obj.reshape(-1)
        for i in range(flat.shape[0]):
            flat[i] *= alpha
    if do_obj:
        scatter_add(obj, y0, x0, d_obj)
    if do_probe:
        _probe_step(execute, plan_f, plan_b, probe_k, d_psi, frac, s, probe_out)
    return loss


@nb.njit(**_JIT)
def single_slice_part(fft, scan, noise, want, bufs, pos, in_place_ok, done_addr, signal_addr, signal_value):
    """A part of a single-slice group, position by position with FFTs, in one call: the
    forward model, the loss and its gradient at the exit plane, the adjoint's scatter-adds
    and the probe gradient's spectrum. Arguments are records (records.py): fft ``Fft``, scan
    ``Scan``, noise ``Noise``, want ``Wanted``, bufs ``SingleSliceBuffers``, pos
    ``Positions``; below by the names they are unpacked to.

    The same quantities as engines/common.forward → loss_and_grad_exit → backward_accumulate
    → overlap.unshift_sum_of on the whole part, made one window at a time so that each
    window's waves stay in cache through its transforms. Position b's pattern is
    data[rows[b]] (data (J, M, N): the resident set read in place, or the group's own with
    rows = 0..B-1). Per position b:
    ψ_b = F⁻¹[s·ramp_b·F[P]] into psi[b] (B, P, M, N); Ψ = F[O ψ] (unnormalised, s = 1/sqrt(MN));
    g_exit[b] (B, P, Q, M, N) = F⁻¹[2ℓ'Ψ] (unitary), loss[b]; num (Q, H, W) = Σ_b Σ_p conj(ψ) g,
    illum = Σ_b Σ_p |ψ|² (when asked); with ``do_probe``, probe_grad_k (P, M, N) = Σ_b s·ramp_b*·F[Σ_q conj(O) g]
    (the three sums are zeroed first). wave (1, P, Q, M, N) and g_psi (1, P, M, N) are scratch
    (g_psi is used with several object modes only: see the loop). Buffers C-contiguous with
    64-byte-aligned planes, as the plans were made.
    psi and g_exit may hold one position instead of B: scratch reused window after window,
    for callers that do not read them (they then stay in cache). ``signal_addr`` (not 0):
    *signal_addr = signal_value as the call starts (parallel.py passes 0: no signal).
    With ``do_pos``, pos_out (B, 4) = the position terms of ``engines/common.position_terms``
    (∂L/∂f_y, ∂L/∂f_x, ‖ψ ∂O/∂f‖² y, x in px; the curvature only with ``pos_curvature``, else
    0) while the window's waves are in cache, ∂L/∂f from the probe gradient's own F[∇ψ]:
    uy (M,), ux (N,) fftfreq; pos_k (1, P, M, N), win, tmp (1, 1, M, N) complex and power
    (1, M, N) real scratch (any arrays of the right rank else).
    ``pos`` None, ``in_place_ok`` None, noise.poisson None: the position terms, the in-place
    adjoint (one buffer less per window) and code 5's β are pruned before typing (not compiled;
    variants.py chooses, once per process).
    """
    execute, plan_f, plan_b = fft
    probe_k, frac, s, obj, y0, x0, data, rows = scan
    mask, model, eps, poisson, background = noise
    do_num, do_illum, do_probe, do_pos, pos_curvature, _, _ = want
    psi, g_exit, num, illum, wave, g_psi, probe_grad_k, loss = bufs
    if pos is not None:  # None: the position code is pruned before typing (not compiled)
        uy, ux, pos_k, win, tmp, power, pos_out = pos
    if signal_addr != 0:
        _store_release(signal_addr, signal_value)
    nb_ = frac.shape[0]
    n_p, nq, m, n = g_exit.shape[1:]
    keep = psi.shape[0] == nb_
    in_place = in_place_ok is not None and not keep and nq == 1
    s2 = s * s
    zero = loss.dtype.type(0)
    # the sums start from zero here, not in np.zeros: a zero-fill there holds Python's lock
    if do_num:
        num[...] = 0
    if do_illum:
        illum[...] = 0
    if do_probe:
        probe_grad_k[...] = 0
    for b in range(nb_):
        # one position's arrays by an integer index and a reshape, not a slice b:b+1: Numba
        # types a slice of a C array as any-layout, and the kernels' loops on it stayed scalar
        # (measured 278 against 199 us per 128² position)
        fb, yb, xb = frac[b].reshape((1, 2)), y0[b:b + 1], x0[b:b + 1]
        kb = b if keep else 0
        pb, gb = psi[kb].reshape((1, n_p, m, n)), g_exit[kb].reshape((1, n_p, nq, m, n))
        ramp_product(probe_k, fb, -1.0, s, pb)
        _fft_planes(execute, plan_b, pb)
        # With one object mode the exit wave, its far field and the far field's inverse FFT
        # all live in one buffer: ``wave`` without kept waves (the adjoint then works there
        # too), else the kept g_exit[b] (``wave`` then takes ∇ψ): fewer buffers per window
        # to keep in cache (gradient case A: 283 -> 172-200 us per position with two threads)
        ew = wave if in_place or nq > 1 else gb
        gw = wave if in_place else gb
        exit_from_object(obj, yb, xb, pb, ew)
        _fft_planes(execute, plan_f, ew)
        farfield(ew.reshape((1, n_p * nq, m, n)), data[rows[b]].reshape((1, m, n)), mask, model, eps, zero, s2 + s2, s2,
                 gw.reshape((1, n_p * nq, m, n)), loss[b:b + 1], poisson, background)
        _fft_planes(execute, plan_b, gw)
        if in_place_ok is not None and in_place:
            gp = wave.reshape((1, n_p, m, n))
            backward_single_in_place(obj, yb, xb, pb, gp, num, illum, do_num, do_illum)
        else:  # ∇ψ goes to ``wave`` too when it has room (dead after the far field)
            gp = wave.reshape((1, n_p, m, n)) if nq == 1 else g_psi
            backward_single(obj, yb, xb, pb, gb, num, illum, do_num, do_illum, gp)
        if pos is not None and do_pos:
            cy = 0.0
            cx = 0.0
            if pos_curvature:  # before F[∇ψ] below: ``wave`` may hold ∇ψ, ``pb`` still ψ
                for y in range(m):
                    _power_row(pb[0], y, power[0, y])
                cy, cx = _position_curvature_sums(execute, plan_f, plan_b, obj, yb[0], xb[0], power, uy, ux, win, tmp)
            to = pos_k.reshape(-1)
            fr = pb.reshape(-1)
            for i in range(to.shape[0]):
                to[i] = fr[i]
            _fft_planes(execute, plan_f, pos_k)
            _fft_planes(execute, plan_f, gp)
            gy, gx = _position_gradient_sums(gp, pos_k, uy, ux)
            position_out(pos_out[b], s, gy, gx, cy, cx)
            if do_probe:
                ramp_accumulate(gp, fb, 1.0, s, probe_grad_k, probe_grad_k[:0])
        elif do_probe:
            _fft_planes(execute, plan_f, gp)
            ramp_accumulate(gp, fb, 1.0, s, probe_grad_k, probe_grad_k[:0])
    if done_addr != 0:  # one more part of the group done (``probe_tail`` waits for them all)
        _atomic_add(done_addr, 1)
    return loss


@nb.njit(**_JIT)
def position_terms_epie(execute, plan_f, plan_b, s, obj, y0, x0, psi, d_psi, beta, uy, ux, g_k, psi_k, win, tmp,
                        power, out):
    """``engines/common.position_terms`` of one sequential single-slice ePIE position, FFTs
    included: out (1, 4) = (∂L/∂f_y, ∂L/∂f_x, ‖ψ ∂O/∂y‖², ‖ψ ∂O/∂x‖²) in px, with ∇ψ_1 =
    -2 Δψ max|O|² / β (Δψ (1, P, M, N) its probe-plane update, max over the window of every
    object mode, before the object's update), as ``EpieEngine``'s general path has it.
    obj (Q, H, W); psi (1, P, M, N) ψ_1; uy (M,), ux (N,) fftfreq; g_k, psi_k (1, P, M, N),
    win, tmp (1, 1, M, N) scratch, planes aligned as planned, power (1, M, N) real scratch."""
    m, n = d_psi.shape[2], d_psi.shape[3]
    yb, xb = y0[0], x0[0]
    t_max = power.dtype.type(0)
    for q in range(obj.shape[0]):
        for y in range(m):
            orow = obj[q, yb + y, xb:xb + n]
            for x in range(n):
                v = orow[x]
                t_max = max(t_max, v.real * v.real + v.imag * v.imag)
    scale = power.dtype.type(-2.0) * t_max / beta
    for p in range(d_psi.shape[1]):
        for y in range(m):
            grow = g_k[0, p, y]
            drow = d_psi[0, p, y]
            prow = psi_k[0, p, y]
            srow = psi[0, p, y]
            for x in range(n):
                grow[x] = drow[x] * scale
                prow[x] = srow[x]
    _fft_planes(execute, plan_f, g_k)
    _fft_planes(execute, plan_f, psi_k)
    gy, gx = _position_gradient_sums(g_k, psi_k, uy, ux)
    for y in range(m):  # Σ_p |ψ_p|², shared by every object mode
        _power_row(psi[0], y, power[0, y])
    cy, cx = _position_curvature_sums(execute, plan_f, plan_b, obj, yb, xb, power, uy, ux, win, tmp)
    position_out(out[0], s, gy, gx, cy, cx)
    return out


@nb.njit(inline="always", **_JIT)
def _position_gradient_sums(g_k, psi_k, uy, ux):
    """(Σ u_y Im(conj(G) Ψ), Σ u_x Im(conj(G) Ψ)) over the unnormalised spectra G = F[∇ψ_1]
    and Ψ = F[ψ_1] (1, P, M, N): ∂L/∂f up to ``position_out``'s 2π s²."""
    n_p, m, n = g_k.shape[1], g_k.shape[2], g_k.shape[3]
    gy = 0.0
    gx = 0.0
    for p in range(n_p):
        for y in range(m):
            grow = g_k[0, p, y]
            prow = psi_k[0, p, y]
            ry = ux.dtype.type(0)
            rx = ux.dtype.type(0)
            for x in range(n):  # float32 row sums (they vectorise), float64 over rows
                im = (grow[x].conjugate() * prow[x]).imag  # Re(-2πi u z) = 2π u Im z
                ry += im
                rx += ux[x] * im
            gy += uy[y] * ry
            gx += rx
    return gy, gx


@nb.njit(**_JIT)
def _position_curvature_sums(execute, plan_f, plan_b, obj, yb, xb, power, uy, ux, win, tmp):
    """Σ_q Σ |F⁻¹[F[O_q] u_y]|² w_q and the same with u_x, over the window at (yb, xb) of obj
    (Q, H, W): the curvature up to ``position_out``'s (2π s²)². power (Q or 1, M, N) holds
    w_q = Σ_p |ψ_{p,q}|² (one plane shared by every object mode); win, tmp (1, 1, M, N)
    scratch, planes aligned as planned."""
    nq = obj.shape[0]
    m, n = win.shape[2], win.shape[3]
    cy = 0.0
    cx = 0.0
    w0 = win[0, 0]
    t0 = tmp[0, 0]
    for q in range(nq):
        pw = power[0 if power.shape[0] == 1 else q]
        for y in range(m):
            orow = obj[q, yb + y, xb:xb + n]
            wrow = w0[y]
            for x in range(n):
                wrow[x] = orow[x]
        _fft_planes(execute, plan_f, win)
        for axis in range(2):
            for y in range(m):
                krow = w0[y]
                trow = t0[y]
                if axis == 0:
                    for x in range(n):
                        trow[x] = krow[x] * uy[y]
                else:
                    for x in range(n):
                        trow[x] = krow[x] * ux[x]
            _fft_planes(execute, plan_b, tmp)
            acc = 0.0
            for y in range(m):
                trow = t0[y]
                wrow = pw[y]
                row = wrow.dtype.type(0)
                for x in range(n):
                    d = trow[x]
                    row += (d.real * d.real + d.imag * d.imag) * wrow[x]
                acc += row
            if axis == 0:
                cy += acc
            else:
                cx += acc
    return cy, cx


@nb.njit(inline="always", **_JIT)
def position_out(out_b, s, gy, gx, cy, cx):
    """out_b (4,) = (∂L/∂f_y, ∂L/∂f_x, curvature y, x) from the raw sums (unitary transforms:
    s = 1/sqrt(MN) on the unnormalised plans)."""
    two_pi = 2.0 * math.pi
    s2 = float(s) * float(s)
    out_b[0] = two_pi * s2 * gy
    out_b[1] = two_pi * s2 * gx
    out_b[2] = two_pi * two_pi * s2 * s2 * cy
    out_b[3] = two_pi * two_pi * s2 * s2 * cx


@nb.njit(**_JIT)
def lsqml_terms_part(execute, plan_b, dp_k, frac, s, d_obj, obj, y0, x0, psi, g, use_obj, use_probe, shifted, out,
                     dp_out, signal_addr, signal_value):
    """``lsqml_terms`` for a part, position by position, with ΔP shifted to each window here:
    shifted (1, P, M, N) = F⁻¹[s·ramp_b·F[ΔP]] (scratch, a plane-aligned buffer as planned)
    is read by the dots while it is in cache. dp_k (P, M, N) = F[ΔP]; the rest as
    ``lsqml_terms``. Then, unless dp_out is empty, dp_out (P, M, N) = ΔP = s·F⁻¹[dp_k] (aligned
    planes): one part of the group makes it while the others finish. ``signal_*`` as
    ``single_slice_part``."""
    if signal_addr != 0:
        _store_release(signal_addr, signal_value)
    nb_, n_p, nq, m, n = g.shape
    for b in range(nb_):
        pb = psi[b].reshape((1, n_p, m, n))
        if use_probe:
            ramp_product(dp_k, frac[b].reshape((1, 2)), -1.0, s, shifted)
            _fft_planes(execute, plan_b, shifted)
            sb = shifted
        else:
            sb = pb
        lsqml_terms(d_obj, obj, y0[b:b + 1], x0[b:b + 1], pb, sb, g[b].reshape((1, n_p, nq, m, n)),
                    use_obj, use_probe, out[b:b + 1])
    if dp_out.shape[0] > 0:
        copy_flat(dp_out.reshape(-1), dp_k.reshape(-1))
        _fft_planes_scaled(execute, plan_b, dp_out, s)
    return out


@nb.njit(inline="always", **_JIT)
def _barrier(addr, target):
    """Wait until every thread of a ``lsqml_tail_part`` launch has counted itself in at
    ``addr`` (an int64 that only grows: the k-th barrier of n threads waits for k·n; a
    cancelled launch sets it past every target)."""
    _atomic_add(addr, 1)
    while _load_acquire(addr) < target:
        _cpu_relax()


@nb.njit(**_JIT)
def lsqml_tail_part(bar_addr, t, n_threads, fft, group, part, signal_addr, signal_value):
    """LSQ-ML's group after its parts' sums, as thread ``t`` of ``n_threads`` run together
    (``parallel.map_launches(..., together=True)``): the object direction on this thread's
    rows of the grid, the step terms of its own part, then the group's steps, and the object
    step on its rows. The serial passes between the parallel phases ran on one thread with
    Python between them (direction, steps, object step: ~0.5 ms of a ~7 ms group, case A).

    nums, ws: the parts' sums Σ∇O (L, H, W) and W (L, H, W); the direction
    nums[0] ← -½ Σ_k nums[k] / sqrt((Σ_k ws[k])² + (δ max)²) is made in place (as
    ``lsqml_direction``; ws[0] takes the sum). Then this part's rows first:first+B of the
    group's out (B_all, 5), as ``lsqml_terms_part`` (d_obj = nums[0]; thread 0's dp_out
    takes ΔP); then steps (2,) = (α_O, α_P) as ``lsqml_steps`` (mode, trim, beta; every
    thread solves the same numbers, each into its own steps) and, with ``apply_step``,
    obj += α_O·ΔO on this thread's rows. maxes (n_threads, L) is scratch. The same operations as
    the serial calls for each pixel and position (the same values to float32 rounding: the
    compiler may order a sum's terms differently here). The arguments after the launch's
    (barrier address, thread, threads) are records (records.py): fft ``Fft``, group
    ``TailGroup`` (shared by the threads), part ``TailPart`` (this thread's).
    """
    execute, _, plan_b = fft
    maxes, nums, ws, delta, obj, out, mode, trim, beta, use_obj, use_probe, apply_step = group
    dp_k, frac, s, y0, x0, psi, g, shifted, first, dp_out, steps = part
    if signal_addr != 0:
        _store_release(signal_addr, signal_value)
    passed = 0
    nl, h, wd = nums[0].shape
    r0 = h * t // n_threads
    r1 = h * (t + 1) // n_threads
    dir_obj = nums[0]
    if use_obj:  # ``lsqml_direction``'s two passes, on this thread's rows
        for q in range(nl):
            maxes[t, q] = _sum_rows_max(ws, q, r0, r1)
        _barrier(bar_addr, (passed + 1) * n_threads)
        for q in range(nl):
            w_max = maxes[0, q]  # the max of each object mode over the whole grid
            for i in range(1, n_threads):
                w_max = max(w_max, maxes[i, q])
            _direction_rows(nums, ws[0], q, r0, r1, w_max, delta)
        _barrier(bar_addr, (passed + 2) * n_threads)
        passed += 2
    # no start signal: int64 zeros, not the literals 0, which would compile a second
    # specialisation of the callee beside the one Python's calls use
    lsqml_terms_part(execute, plan_b, dp_k, frac, s, dir_obj, obj, y0, x0, psi, g, use_obj, use_probe, shifted,
                     out[first:first + frac.shape[0]], dp_out, np.int64(0), np.int64(0))
    _barrier(bar_addr, (passed + 1) * n_threads)
    lsqml_steps(out[:, 0], out[:, 1], out[:, 2], out[:, 3], out[:, 4], mode, trim, beta, steps)
    if apply_step and use_obj:
        a = steps[0]
        for q in range(obj.shape[0]):
            for y in range(r0, r1):
                orow = obj[q, y]
                drow = dir_obj[q, y]
                for x in range(wd):
                    orow[x] += a * drow[x]
    return steps


@nb.njit(**_JIT)
def probe_tail(wait_addr, parts, done_addr, execute, plan_f, plan_b, grads_k, s, z, m, v_re, v_im, b1, b2, c1, c2,
               eps, lr, z_out, spectrum_out):
    """The gradient engine's probe step for a group, run by a worker while the caller steps
    the object: once ``parts`` part kernels have counted themselves done at ``wait_addr``
    (``single_slice_part``'s done_addr; a count above ``parts`` cancels: nothing is done),
    g = s·F⁻¹[Σ_i grads_k[i]] (the parts' probe-gradient spectra, (K, P, M, N); the sum is
    made in grads_k[0]), one Adam step z_out = adam(z, g) (moments in place, as ``adam``),
    and spectrum_out = s·F[z_out], the spectrum the next group's shifts read. At the end,
    *done_addr = 1 (2 when cancelled). Planes 64-byte aligned as planned."""
    while _load_acquire(wait_addr) < parts:
        _cpu_relax()
    if _load_acquire(wait_addr) > parts:
        _store_release(done_addr, 2)
        return False
    g = grads_k[0]
    flat = g.reshape(-1)
    for i in range(1, grads_k.shape[0]):
        other = grads_k[i].reshape(-1)
        for j in range(flat.shape[0]):
            flat[j] += other[j]
    _fft_planes_scaled(execute, plan_b, g, s)
    out = z_out.reshape(-1)
    _adam_span(z.reshape(-1), flat, None, m.reshape(-1), v_re.reshape(-1), v_im.reshape(-1), out,
               b1, b2, c1, c2, eps, lr, v_re.dtype.type(1), z_out.dtype.type(1j))
    copy_flat(spectrum_out.reshape(-1), out)
    _fft_planes_scaled(execute, plan_f, spectrum_out, s)
    _store_release(done_addr, 1)
    return True


# ----------------------------------------------------------------------------- waiting for work
_X86 = __import__("platform").machine().lower() in ("x86_64", "amd64", "i686", "i386")


def _int64_at(builder, addr):
    """The address value ``addr`` as an int64 pointer (for the intrinsics below)."""
    return builder.inttoptr(addr, llvm_ir.IntType(64).as_pointer())


@intrinsic
def _load_acquire(typingctx, addr):
    """The int64 at address ``addr``, an atomic load with acquire ordering: read afresh on
    every call (a plain load of memory the loop never writes would be hoisted out of it)."""
    if not isinstance(addr, nb_types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_int64_at(builder, args[0]), ordering="acquire", align=8)

    return nb_types.int64(addr), codegen


@intrinsic
def _store_release(typingctx, addr, value):
    """*addr = value (int64), an atomic store with release ordering."""
    if not (isinstance(addr, nb_types.Integer) and isinstance(value, nb_types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        val = context.cast(builder, args[1], signature.args[1], nb_types.int64)
        builder.store_atomic(val, _int64_at(builder, args[0]), ordering="release", align=8)
        return context.get_dummy_value()

    return nb_types.void(addr, value), codegen


@intrinsic
def _atomic_add(typingctx, addr, value):
    """*addr += value (int64), atomically (acquire-release): a count several threads add to."""
    if not (isinstance(addr, nb_types.Integer) and isinstance(value, nb_types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        val = context.cast(builder, args[1], signature.args[1], nb_types.int64)
        builder.atomic_rmw("add", _int64_at(builder, args[0]), val, "acq_rel")
        return context.get_dummy_value()

    return nb_types.void(addr, value), codegen


@intrinsic
def _cpu_relax(typingctx):
    """The spin-wait hint (x86 ``pause``): the waiting core yields its pipeline and power to
    the running one; elsewhere nothing."""

    def codegen(context, builder, signature, args):
        if _X86:  # the intrinsic, not inline assembly: Numba's JIT has no assembler for it
            fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [])
            builder.call(cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause"), [])
        return context.get_dummy_value()

    return nb_types.void(), codegen


@nb.njit(**_JIT)
def spin_until(addr, value, spins, store_addr, store_value):
    """True once the int64 at ``addr`` is at least ``value``, False after ``spins`` tries.

    Without Python's lock, so the thread that will write it keeps running meanwhile. With
    ``store_addr`` (not 0), *store_addr = store_value first: a flag set here is seen by a
    waiting thread only once this one has let go of Python's lock, so that thread takes the
    lock at once instead of sleeping on it (a sleeping thread woke 85 us later, measured)."""
    if store_addr != 0:
        _store_release(store_addr, store_value)
    for _ in range(spins):
        if _load_acquire(addr) >= value:
            return True
        _cpu_relax()
    return _load_acquire(addr) >= value
