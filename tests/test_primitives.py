"""The compute primitives' contract (ptycli/engines/primitives.py, issue 25 item 1).

(a) Each reference primitive (the array-API code, what CuPy runs) against an independent
    NumPy computation, an adjoint identity ⟨A x, y⟩ = ⟨x, Aᴴ y⟩ or a finite difference,
    under NumPy (fused kernels off) and ``array_api_strict``.
(b) Each fused CPU kernel that implements a primitive (``KERNELS`` below) against the
    reference on the same random float32/complex64 inputs, to float32 rounding.

This file is the contract between the compiled and the array implementations: a kernel
that passes here computes the primitive. The whole-engine comparisons of
tests/test_fused_kernels.py stay as integration tests (the kernels' composition, buffers
and threads), not as the definition of what a kernel computes.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from ptycli import backend, host_fft
from ptycli.engines import noise, primitives
from ptycli.physics import overlap, propagation

# The compiled implementation of each primitive, as "module:function" under ptycli._kernels.
# The kernels are being reshaped (issue 25 item 4): a renamed kernel is a one-line fix here.
KERNELS = {
    "extract": "single_slice:extract",
    "scatter_add": "single_slice:scatter_add",
    "shift_probe": "single_slice:ramp_product",
    "unshift_sum_k": "single_slice:ramp_sum",
    "unshift_accumulate": "single_slice:ramp_accumulate",
    "shift_ramp_multiply": "single_slice:ramp_multiply",
    "transmit": "single_slice:window_product",
    "transmit_from_object": "single_slice:exit_from_object",
    "transmit_slice": "multislice:_slice_product",
    "transmit_adjoint": "single_slice:adjoint_products",
    "transmit_adjoint_scatter": "single_slice:backward_single",
    "transmit_adjoint_scatter_in_place": "single_slice:backward_single_in_place",
    "transmit_adjoint_slice": "multislice:_slice_adjoint",
    "mode_power": "single_slice:mode_power",
    "propagate_product": "single_slice:spectral_multiply",
    "propagate": "multislice:_propagate",
    "geometry_term": "multislice:_tilt_sums",
    "farfield_update": "single_slice:farfield",
    "position_gradient": "single_slice:_position_gradient_sums",
    "position_out": "single_slice:position_out",
    "position_curvature": "single_slice:_position_curvature_sums",
    "epie_update": "single_slice:epie_single",
    "epie_update_slice": "multislice:_slice_epie",
    "lsqml_dots": "single_slice:lsqml_terms",
    "lsqml_slice_dots": "multislice:_row_terms",
    "lsqml_steps": "single_slice:lsqml_steps",
    "lsqml_direction": "single_slice:lsqml_direction",
    "adam_step": "single_slice:adam",
    "adam_step_real": "single_slice:adam_real",
    "adam_step_region": "single_slice:adam_region",
}
# over 3 s each on a cold Numba cache (the kernels' first compile): out of the quick subset
COLD_COMPILE = pytest.mark.slow
NOISE_CODES = {"amplitude": 0, "intensity": 1, "poisson": 2, "anscombe": 3}  # _kernels.NOISE_CODES
LSQML_STEP_CODES = {"intensity": 4, "poisson": 5}  # _kernels.LSQML_STEP_CODES


def kernel(name: str):
    pytest.importorskip("numba")
    module, attr = KERNELS[name].split(":")
    return getattr(importlib.import_module(f"ptycli._kernels.{module}"), attr)


B, P, Q, S, M, N, H, W = 3, 2, 2, 2, 8, 8, 20, 22  # small: each kernel compiles one signature
Y0, X0 = np.array([0, 5, 12], np.int64), np.array([3, 14, 7], np.int64)


def _aligned(shape):
    """A complex64 buffer whose planes start on the 64 bytes the kernels' FFTW plans expect."""
    pytest.importorskip("numba")
    return importlib.import_module("ptycli._kernels.single_slice").empty(shape, np.complex64, aligned=True)


def _c(shape, seed, dtype=np.complex64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _r(shape, seed, lo=0.0, hi=1.0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(dtype)


def _close(a, b, rtol=2e-5):
    """Equal to float32 rounding: |a - b| <= rtol · max|b|."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * float(np.max(np.abs(b))))


def _dot(u, v):
    """Re Σ conj(u) v in float64."""
    return float(np.sum((np.conj(np.asarray(u, np.complex128)) * np.asarray(v, np.complex128)).real))


@pytest.fixture
def ref():
    """The reference primitives on NumPy: the fused kernels off (the array-API code)."""
    with backend.kernels_disabled():
        yield


@pytest.fixture(params=["numpy", "array_api_strict", pytest.param("cupy", marks=pytest.mark.cupy)])
def xp(request):
    """(a)-tests' namespace: NumPy with the kernels off, array_api_strict, or CuPy (on a CUDA
    machine only: conftest deselects it elsewhere)."""
    if request.param == "numpy":
        with backend.kernels_disabled():
            yield np
        return
    yield pytest.importorskip(request.param)


def _on(xp, a):
    return a if xp is np else backend.to_device(a, xp)


def _host(a):
    return backend.to_numpy(a)


# ============================================================================ (a) references
def test_extract_and_scatter_add_are_windows_and_their_adjoint(xp):
    obj = _c((Q, S, H, W), 1)
    win = _host(primitives.extract(_on(xp, obj), Y0, X0, (M, N)))
    for b in range(B):
        np.testing.assert_array_equal(win[b], obj[..., Y0[b]:Y0[b] + M, X0[b]:X0[b] + N])
    patches = _c((B, Q, S, M, N), 2)
    back = _host(primitives.scatter_add(_on(xp, np.zeros_like(obj)), Y0, X0, _on(xp, patches)))
    assert math.isclose(_dot(win, patches), _dot(obj, back), rel_tol=1e-5)


def test_shift_probe_is_a_fourier_shift_and_unshift_sum_its_adjoint(xp):
    probe = _c((P, M, N), 3)
    whole = _host(primitives.shift_probe(_on(xp, probe), _on(xp, np.array([[1.0, 2.0]], np.float32))))
    _close(whole[0], np.roll(probe, (1, 2), axis=(-2, -1)), 1e-5)  # an integer shift is a roll
    frac = _r((B, 2), 4)
    g = _c((B, P, M, N), 5)
    shifted = _host(primitives.shift_probe(_on(xp, probe), _on(xp, frac)))
    adjoint = _host(backend.ifft2(primitives.unshift_sum_k(backend.fft2(_on(xp, g)), _on(xp, frac))))
    assert math.isclose(_dot(shifted, g), _dot(probe, adjoint), rel_tol=1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_transmit_is_the_product_and_transmit_adjoint_its_adjoint(xp, shared):
    t, g = _c((B, Q, M, N), 6), _c((B, P, Q, M, N), 7)
    psi = _c((B, P, 1 if shared else Q, M, N), 8)
    e = _host(primitives.transmit(_on(xp, t), _on(xp, psi)))
    _close(e, np.einsum("bqyx,bpqyx->bpqyx", t, np.broadcast_to(psi, g.shape)), 1e-6)
    g_t, g_psi = (_host(a) for a in primitives.transmit_adjoint(_on(xp, t), _on(xp, psi), _on(xp, g)))
    assert math.isclose(_dot(e, g), _dot(t, g_t), rel_tol=1e-5)  # linear in t
    g_psi = g_psi.sum(axis=2, keepdims=True) if shared else g_psi  # a shared wave meets every mode
    assert math.isclose(_dot(e, g), _dot(psi, g_psi), rel_tol=1e-5)  # and in ψ


def test_mode_power_sums_the_probe_modes(xp):
    psi = _c((B, P, 1, M, N), 9)
    w = _host(primitives.mode_power(_on(xp, psi), Q))
    _close(w, np.broadcast_to((np.abs(psi) ** 2).sum(axis=1), (B, Q, M, N)), 1e-6)


def test_propagate_is_a_convolution_and_conj_its_adjoint(xp):
    wl = 0.0251
    Hk = propagation.fresnel_propagator((M, N), 0.5, wl, 20.0, tilt_mrad=np.array([[3.0, -2.0]] * B),
                                        xp=np, dtype="complex64")  # (B, M, N), band-limited: not unitary
    x, y = _c((B, P, Q, M, N), 10), _c((B, P, Q, M, N), 11)
    h5 = Hk[:, None, None]
    px = _host(primitives.propagate(_on(xp, x), _on(xp, h5)))
    _close(px, np.fft.ifft2(h5 * np.fft.fft2(x)), 1e-5)
    adj = _host(primitives.propagate(_on(xp, y), _on(xp, h5), conj=True))
    assert math.isclose(_dot(px, y), _dot(x, adj), rel_tol=1e-5)


def test_geometry_term_is_the_derivative_of_the_propagation():
    """Re Σ conj(G) ∂H/∂θ F[e] against a central difference of Re Σ conj(G) H(θ) F[e] in θ
    (each tilt component, and the slice thickness), float64."""
    wl, dx, dz = 0.0251, 0.5, 20.0
    tilt = np.array([[3.0, -2.0], [0.5, 1.0], [-1.0, 0.0]])
    G, F = _c((B, P, Q, M, N), 12, np.complex128), _c((B, P, Q, M, N), 13, np.complex128)
    Hk = propagation.fresnel_propagator((M, N), dx, wl, dz, tilt_mrad=tilt, xp=np, dtype="complex128")
    dH = propagation.propagator_derivatives((M, N), dx, wl, dz, Hk, tilt_mrad=tilt)

    def value(h):
        return np.sum((np.conj(G) * h[:, None, None] * F).real, axis=(1, 2, 3, 4))

    step = 1e-4
    for name, axis in (("tilt_y", 0), ("tilt_x", 1)):
        d = np.zeros_like(tilt)
        d[:, axis] = step
        fd = (value(propagation.fresnel_propagator((M, N), dx, wl, dz, tilt_mrad=tilt + d, xp=np, dtype="complex128"))
              - value(propagation.fresnel_propagator((M, N), dx, wl, dz, tilt_mrad=tilt - d, xp=np,
                                                     dtype="complex128"))) / (2 * step)
        np.testing.assert_allclose(primitives.geometry_term(G, dH[name][:, None, None], F), fd, rtol=1e-6, atol=1e-8)
    fd = (value(propagation.fresnel_propagator((M, N), dx, wl, dz + step, tilt_mrad=tilt, xp=np, dtype="complex128"))
          - value(propagation.fresnel_propagator((M, N), dx, wl, dz - step, tilt_mrad=tilt, xp=np,
                                                 dtype="complex128"))) / (2 * step)
    np.testing.assert_allclose(primitives.geometry_term(G, dH["thickness"][:, None, None], F), fd, rtol=1e-6, atol=1e-8)


def _far_and_data(seed, dtype=np.complex64):
    Psi = _c((B, P, 1, M, N), seed, dtype)
    inten = (np.abs(Psi) ** 2).sum(axis=(1, 2))
    D = (inten * _r(inten.shape, seed + 1, 0.5, 1.5, np.float64)).astype(np.float32 if dtype == np.complex64
                                                                           else np.float64)
    D[0, 0, :3] = 0.0  # zero counts: Poisson's D log D term
    return Psi, D


@pytest.mark.parametrize("model", ["amplitude", "intensity", "poisson", "anscombe"])
def test_farfield_update_is_the_wirtinger_gradient_of_the_loss(model, ref):
    """(0, 2): Re Σ conj(∇_Ψ L) δ against a central difference of L along δ (float64)."""
    Psi, D = _far_and_data(14, np.complex128)
    mask = np.ones((M, N))
    mask[1:3, 2:6] = 0.0
    eps = 1e-12 if model == "amplitude" else 1e-3  # amplitude: ε guards ℓ' only, so is no derivative's
    loss, grad = primitives.farfield_update(Psi, D, model, mask, eps, 0.0, 2.0)
    delta, h = _c(Psi.shape, 16, np.complex128), 1e-6

    def total(z):
        return float(np.sum(noise.loss((np.abs(z) ** 2).sum(axis=(1, 2)), D, model, mask, eps)))

    assert math.isclose(float(np.sum(loss)), total(Psi), rel_tol=1e-12)
    fd = (total(Psi + h * delta) - total(Psi - h * delta)) / (2 * h)
    assert math.isclose(_dot(grad, delta), fd, rel_tol=1e-5)


def test_farfield_update_projection_is_the_modulus_projection(xp):
    Psi, D = _far_and_data(17)
    _, proj = primitives.farfield_update(_on(xp, Psi), _on(xp, D), "amplitude", None, 0.0, 1.0, -1.0)
    inten = (np.abs(Psi) ** 2).sum(axis=(1, 2))
    _close(_host(proj), Psi * np.sqrt(D / inten)[:, None, None], 1e-5)


def test_lsqml_exit_steps(xp):
    """intensity: -2(Ψ̂ - Ψ) with the modulus projection Ψ̂; Poisson: -2 β r Ψ with β the
    minimiser of the Poisson loss Σ I u² - D log(I u²), u = 1 + β r, over [0, 1] (a grid)."""
    Psi, D = _far_and_data(18)
    inten = (np.abs(Psi) ** 2).sum(axis=(1, 2))
    step = _host(primitives.lsqml_exit_step(_on(xp, Psi), _on(xp, D), "intensity", None, 0.0))
    _close(step, -2.0 * (Psi * np.sqrt(D / inten)[:, None, None] - Psi), 1e-5)
    step = _host(primitives.lsqml_exit_step(_on(xp, Psi), _on(xp, D), "poisson", None, 1e-3))
    r = D / (inten + 1e-3) - 1.0
    betas = np.linspace(0, 1, 2001)
    for b in range(B):
        u = 1.0 + betas[:, None, None] * r[b]
        curve = np.sum(inten[b] * u * u - D[b] * np.log(inten[b] * u * u + 1e-30), axis=(1, 2))
        expect = -2.0 * betas[np.argmin(curve)] * r[b] * Psi[b]
        _close(step[b], expect, 2e-3)


def test_compressed_update_and_projection(xp):
    """∇_Ψ L of the signals' least squares against a central difference (float64); the
    projection's intensities reproduce the signals for disjoint masks."""
    Psi = _c((B, P, 1, M, N), 90, np.complex128)
    masks = np.zeros((3, M, N))
    masks[0, :2], masks[1, 3:5], masks[2, 6:] = 1.0, 0.5, 2.0  # disjoint
    inten = (np.abs(Psi) ** 2).sum(axis=(1, 2))
    # signals above the model's: the projection adds intensity, never clipped at zero
    signals = np.einsum("kyx,byx->bk", masks, inten) * _r((B, 3), 91, 1.0, 1.5, np.float64)
    loss, grad = primitives.compressed_update(Psi, inten, signals, masks)
    delta, h = _c(Psi.shape, 92, np.complex128), 1e-6

    def total(z):
        return float(np.sum(noise.compressed_loss((np.abs(z) ** 2).sum(axis=(1, 2)), signals, masks)))

    assert math.isclose(float(np.sum(loss)), total(Psi), rel_tol=1e-12)
    assert math.isclose(_dot(grad, delta), (total(Psi + h * delta) - total(Psi - h * delta)) / (2 * h), rel_tol=1e-5)
    Psi32, masks32 = Psi.astype(np.complex64), masks.astype(np.float32)
    proj = _host(primitives.compressed_projection(_on(xp, Psi32), _on(xp, inten.astype(np.float32)),
                                                  _on(xp, signals.astype(np.float32)), _on(xp, masks32)))
    _close(np.einsum("kyx,byx->bk", masks, (np.abs(proj) ** 2).sum(axis=(1, 2))), signals, 1e-5)


@pytest.mark.parametrize("gamma", [None, 0.3])
def test_epie_update_is_the_ptychographic_step(xp, gamma):
    """ΔO = Σ_p conj(ψ)δ / den and Δψ = β conj(t)δ / max|t|², written out with NumPy."""
    t, psi, target = _c((B, Q, M, N), 36), _c((B, P, 1, M, N), 37), _c((B, P, Q, M, N), 38)
    d_obj, d_psi = (_host(a) for a in primitives.epie_update(_on(xp, t), _on(xp, psi), _on(xp, target), 0.7, gamma))
    delta = target - t[:, None] * psi
    w = (np.abs(psi) ** 2).sum(axis=1)
    w_max = w.max(axis=(1, 2, 3), keepdims=True)
    den = w_max if gamma is None else (1 - gamma) * w + gamma * w_max
    _close(d_obj, (np.conj(psi) * delta).sum(axis=1) / den, 1e-5)
    t_max = (np.abs(t) ** 2).max(axis=(1, 2, 3))[:, None, None, None, None]
    _close(d_psi, 0.7 * np.conj(t[:, None]) * delta / t_max, 1e-5)


def test_position_gradient_is_the_derivative_along_the_shift(xp):
    """Re⟨g, ∂ψ/∂f⟩ for ψ = shift_probe(P, f), against a central difference in f."""
    probe, g = _c((P, M, N), 19, np.complex128), _c((B, P, M, N), 20, np.complex128)
    frac = _r((B, 2), 21, dtype=np.float64)
    u = tuple(_on(xp, a) for a in (np.fft.fftfreq(M)[:, None], np.fft.fftfreq(N)[None, :]))
    psi = primitives.shift_probe(_on(xp, probe), _on(xp, frac))
    grad = _host(primitives.position_gradient(_on(xp, g), psi, u))
    h = 1e-5
    for axis in range(2):
        d = np.zeros_like(frac)
        d[:, axis] = h
        plus = _host(primitives.shift_probe(_on(xp, probe), _on(xp, frac + d)))
        minus = _host(primitives.shift_probe(_on(xp, probe), _on(xp, frac - d)))
        fd = np.sum((np.conj(g) * (plus - minus)).real, axis=(1, 2, 3)) / (2 * h)
        np.testing.assert_allclose(grad[:, axis], fd, rtol=1e-6)


def test_position_curvature_weights_the_shifted_objects_derivative(xp):
    """Σ_s ‖ψ_s ∂O_s/∂f‖²: the derivative of a Fourier-shifted window by central difference."""
    windows = _c((B, Q, S, M, N), 22, np.complex128)
    waves = [_c((B, P, 1, M, N), 23 + s, np.complex128) for s in range(S)]
    u = (np.fft.fftfreq(M)[:, None], np.fft.fftfreq(N)[None, :])
    curv = _host(primitives.position_curvature(_on(xp, windows), [_on(xp, w) for w in waves],
                                               tuple(_on(xp, a) for a in u)))
    h = 1e-5
    spec = np.fft.fft2(windows)
    for axis in range(2):
        ramp = lambda f: np.exp(-2j * np.pi * u[axis] * f)  # noqa: E731
        d = (np.fft.ifft2(spec * ramp(h)) - np.fft.ifft2(spec * ramp(-h))) / (2 * h)
        expect = sum(np.sum(np.abs(d[:, :, s]) ** 2 * (np.abs(waves[s]) ** 2).sum(axis=1), axis=(1, 2, 3))
                     for s in range(S))
        np.testing.assert_allclose(curv[:, axis], expect, rtol=1e-6)


def test_lsqml_dots_and_slice_dots(xp):
    a, b, g = _c((B, P, Q, M, N), 25), _c((B, P, Q, M, N), 26), _c((B, P, Q, M, N), 27)
    got = [_host(v) for v in primitives.lsqml_dots(_on(xp, a), _on(xp, b), _on(xp, g))]
    chi = -0.5 * g
    expect = [[_dot(u[j], v[j]) for j in range(B)] for u, v in ((a, a), (b, b), (a, b), (a, chi), (b, chi))]
    for x, y in zip(got, expect):
        _close(x, np.asarray(y), 1e-5)
    w = _r((B, Q, S, M, N), 28)
    v, gs = _c((B, Q, S, M, N), 29), _c((B, Q, S, M, N), 30)
    num, den = (_host(x) for x in primitives.lsqml_slice_dots(_on(xp, v), _on(xp, gs), _on(xp, w), keep=(0, 2)))
    _close(num, -0.5 * np.einsum("bqsyx->bs", (np.conj(v) * gs).real), 1e-5)
    _close(den, np.einsum("bqsyx->bs", np.abs(v) ** 2 * w), 1e-5)


def _step_terms(seed, n=12):
    rng = np.random.default_rng(seed)
    aa, bb = rng.uniform(1, 3, n), rng.uniform(1, 3, n)
    ab = rng.uniform(-0.5, 0.5, n)
    ra, rb = rng.uniform(-1, 2, n), rng.uniform(-1, 2, n)
    return aa, bb, ab, ra, rb


def _trimmed(values, trim):
    v = np.sort(np.clip(values, 0, None))
    k = int(trim * len(v))
    return v[k:len(v) - k].mean() if k > 0 and len(v) - 2 * k > 0 else v.mean()


def test_lsqml_steps_solve_the_damped_two_by_two_problems(xp):
    aa, bb, ab, ra, rb = _step_terms(31)
    got = primitives.lsqml_steps(tuple(_on(xp, t) for t in (aa, bb, ab, ra, rb)), True, True, 0.1, 0.9,
                                 getattr(xp, "float32"))
    alphas = np.array([np.linalg.solve([[aa[j] + 0.1 * aa.mean(), ab[j]], [ab[j], bb[j] + 0.1 * bb.mean()]],
                                       [ra[j], rb[j]]) for j in range(len(aa))])
    assert math.isclose(float(_host(got[0])), 0.9 * _trimmed(alphas[:, 0], 0.1), rel_tol=1e-6)
    assert math.isclose(float(_host(got[1])), 0.9 * _trimmed(alphas[:, 1], 0.0), rel_tol=1e-6)


def test_lsqml_direction_is_the_preconditioned_sum(xp):
    num, w = _c((Q, S, H, W), 32), _r((Q, S, H, W), 33, 0, 5)
    w[:, 1] *= 0.01  # a weak slice: its own max would not bound it
    got = _host(primitives.lsqml_direction(_on(xp, num.copy()), _on(xp, w), 0.1))
    w_max = w.max(axis=(0, 2, 3), keepdims=True)
    _close(got, -0.5 * num / np.sqrt(w * w + (0.1 * w_max) ** 2), 1e-6)


def test_adam_step_is_the_textbook_step_per_real_component():
    z0, b1, b2, eps, lr = _c((5, 7), 34, np.complex128), 0.9, 0.999, 1e-8, 0.01
    z, m, v_re, v_im = z0, np.zeros_like(z0), np.zeros(z0.shape), np.zeros(z0.shape)
    parts = np.stack([z0.real, z0.imag])
    pm, pv = np.zeros_like(parts), np.zeros_like(parts)
    for t in range(1, 4):
        g = _c(z0.shape, 35 + t, np.complex128)
        z, m, v_re, v_im = primitives.adam_step(z, g, m, v_re, v_im, t, b1, b2, eps, lr)
        gp = np.stack([g.real, g.imag])
        pm = b1 * pm + (1 - b1) * gp
        pv = b2 * pv + (1 - b2) * gp * gp
        parts = parts - lr * (pm / (1 - b1**t)) / (np.sqrt(pv / (1 - b2**t)) + eps)
    np.testing.assert_allclose(z, parts[0] + 1j * parts[1], rtol=1e-12)


# ============================================================================ (b) kernels
def test_extract_and_scatter_add_kernels(ref):
    obj = _c((Q * S, H, W), 40)
    out = np.empty((B, Q * S, M, N), np.complex64)
    kernel("extract")(obj, Y0, X0, out)
    np.testing.assert_array_equal(out, primitives.extract(obj, Y0, X0, (M, N)))
    patches = _c((B, Q * S, M, N), 41)
    target = _c((Q * S, H, W), 42)
    expect = primitives.scatter_add(target.copy(), Y0, X0, patches)
    kernel("scatter_add")(target, Y0, X0, patches)
    _close(target, expect, 1e-6)


@COLD_COMPILE
def test_shift_kernels(ref):
    probe, frac = _c((P, M, N), 43), _r((B, 2), 44)
    spec = np.fft.fft2(probe).astype(np.complex64)
    out = np.empty((B, P, M, N), np.complex64)
    kernel("shift_probe")(spec, frac, -1.0, np.float32(1.0), out)  # F[ψ], the ramps times the spectrum
    _close(np.fft.ifft2(out), primitives.shift_probe(probe, frac), 1e-5)
    g_k = _c((B, P, M, N), 45)
    total = np.empty((P, M, N), np.complex64)
    kernel("unshift_sum_k")(g_k, frac, 1.0, total)
    _close(total, primitives.unshift_sum_k(g_k, frac), 1e-5)
    acc = _c((P, M, N), 63)
    copy_to = np.empty_like(acc)
    expect = acc + primitives.unshift_sum_k(g_k[:1], frac[:1])
    kernel("unshift_accumulate")(g_k[:1], frac[:1], 1.0, np.float32(1.0), acc, copy_to)
    _close(acc, expect, 1e-5)
    np.testing.assert_array_equal(copy_to, acc)
    each = g_k.copy()
    kernel("shift_ramp_multiply")(each, frac, 1.0, np.float32(2.0))
    _close(each, 2.0 * g_k * overlap.shift_ramp(frac, (M, N), np.complex64, conj=True)[:, None], 1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_transmit_kernels(shared, ref):
    t = _c((B, Q, M, N), 46)
    psi = _c((B, P, 1 if shared else Q, M, N), 47)
    out = np.empty((B, P, Q, M, N), np.complex64)
    kernel("transmit")(t, psi, out)
    _close(out, primitives.transmit(t, psi), 1e-6)
    g = _c((B, P, Q, M, N), 48)
    out_t, out_psi = np.empty_like(t), np.empty_like(g)
    kernel("transmit_adjoint")(t, psi, g, out_t, out_psi)
    g_t, g_psi = primitives.transmit_adjoint(t, psi, g)
    _close(out_t, g_t, 1e-6)
    _close(out_psi, g_psi, 1e-6)


def test_exit_waves_from_the_object_kernel(ref):
    obj, psi1 = _c((Q, H, W), 49), _c((B, P, M, N), 50)
    out = np.empty((B, P, Q, M, N), np.complex64)
    kernel("transmit_from_object")(obj, Y0, X0, psi1, out)
    _close(out, primitives.transmit(primitives.extract(obj, Y0, X0, (M, N)), psi1[:, :, None]), 1e-6)


def test_transmit_adjoint_with_scatter_add_kernel(ref):
    """backward_single: the adjoint's ∂L/∂t* and Σ_p|ψ|² scattered onto the grid, ∂L/∂ψ_1* summed over object modes."""
    obj, psi1, g = _c((Q, H, W), 51), _c((B, P, M, N), 52), _c((B, P, Q, M, N), 53)
    num, illum = np.zeros((Q, H, W), np.complex64), np.zeros((Q, H, W), np.float32)
    g_psi = np.empty((B, P, M, N), np.complex64)
    kernel("transmit_adjoint_scatter")(obj, Y0, X0, psi1, g, num, illum, True, True, g_psi)
    t = primitives.extract(obj, Y0, X0, (M, N))
    g_t, g_pair = primitives.transmit_adjoint(t, psi1[:, :, None], g)
    _close(num, primitives.scatter_add(np.zeros_like(num), Y0, X0, g_t), 1e-5)
    _close(illum, primitives.scatter_add(np.zeros_like(illum), Y0, X0,
                                         np.ascontiguousarray(primitives.mode_power(psi1[:, :, None], Q))), 1e-5)
    _close(g_psi, g_pair.sum(axis=2), 1e-5)


def test_transmit_adjoint_in_place_kernel(ref):
    """backward_single_in_place (one object mode): g ← conj(O) g, the scatter-adds as backward_single."""
    obj, psi1, g = _c((1, H, W), 93), _c((B, P, M, N), 94), _c((B, P, M, N), 95)
    num, illum = np.zeros((1, H, W), np.complex64), np.zeros((1, H, W), np.float32)
    t = primitives.extract(obj, Y0, X0, (M, N))
    g_t, g_pair = primitives.transmit_adjoint(t, psi1[:, :, None], g[:, :, None])
    out = g.copy()
    kernel("transmit_adjoint_scatter_in_place")(obj, Y0, X0, psi1, out, num, illum, True, True)
    _close(out, g_pair[:, :, 0], 1e-6)
    _close(num, primitives.scatter_add(np.zeros_like(num), Y0, X0, g_t), 1e-5)
    _close(illum, primitives.scatter_add(np.zeros_like(illum), Y0, X0,
                                         np.ascontiguousarray(primitives.mode_power(psi1[:, :, None], 1))), 1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_slice_kernels(shared, ref):
    """_slice_product / _slice_adjoint: one position's slice ``sl`` of an object (Q, S, H, W)."""
    obj = _c((Q, S, H, W), 54)
    src = _c((P, 1 if shared else Q, M, N), 55)
    sl, yb, xb = 1, 5, 9
    t = obj[None, :, sl, yb:yb + M, xb:xb + N]
    dest = np.empty((P, Q, M, N), np.complex64)
    kernel("transmit_slice")(obj, sl, yb, xb, src, dest)
    _close(dest, primitives.transmit(t, src[None])[0], 1e-6)
    g = _c((P, Q, M, N), 56)
    g_t, g_psi = primitives.transmit_adjoint(t, src[None], g[None])
    num, illum = np.zeros_like(obj), np.zeros(obj.shape, np.float32)
    g_keep, w_keep = np.empty((Q, M, N), np.complex64), np.empty((Q, M, N), np.float32)
    kernel("transmit_adjoint_slice")(obj, sl, yb, xb, src, g, num, illum, True, True, True, True, g_keep, w_keep)
    _close(g, g_psi[0], 1e-6)  # in place: ∂L/∂ψ* of each mode pair
    _close(g_keep, g_t[0], 1e-5)
    _close(num[:, sl, yb:yb + M, xb:xb + N], g_t[0], 1e-5)
    _close(w_keep, primitives.mode_power(src[None], Q)[0], 1e-6)
    _close(illum[:, sl, yb:yb + M, xb:xb + N], w_keep, 1e-6)


def test_mode_power_kernel(ref):
    psi = _c((B, P, Q, M, N), 57)
    out = np.empty((B, Q, M, N), np.float32)
    kernel("mode_power")(psi, out)
    _close(out, primitives.mode_power(psi, Q), 1e-6)


@pytest.mark.parametrize("conj", [False, True])
def test_propagate_kernels(conj, ref):
    h = propagation.fresnel_propagator((M, N), 0.5, 0.0251, 20.0, tilt_mrad=np.array([[3.0, -2.0]] * B),
                                       xp=np, dtype="complex64")
    spec = _c((B, P * Q, M, N), 58)
    got = spec.copy()
    kernel("propagate_product")(got, h, np.float32(0.5), conj)
    _close(got, 0.5 * spec * (np.conj(h) if conj else h)[:, None], 1e-6)
    plans = host_fft.fftw_plane_plans(M, N, np.complex64)
    if plans is None:
        pytest.skip("no FFTW plans for the kernels here (pyFFTW's FFTW not reachable)")
    wave = _aligned((P, Q, M, N))
    wave[...] = _c((P, Q, M, N), 59)
    expect = primitives.propagate(wave.copy(), h[:1], conj=conj)
    kernel("propagate")(plans[0], plans[1], plans[2], wave, h[:1], np.float32(1.0 / (M * N)), conj)
    _close(wave, expect, 1e-5)


def test_tilt_sums_kernel(ref):
    G, Wk = _c((P, Q, M, N), 60), _c((P, Q, M, N), 61)
    ky, kx, qy, qx = (_r(n, 62 + i, -1, 1) for i, n in enumerate((M, N, M, N)))
    ty, tx, tq = kernel("geometry_term")(G, Wk, ky, kx, qy, qx)
    for got, r in ((ty, ky[:, None]), (tx, kx[None, :]), (tq, qy[:, None] + qx[None, :])):
        expect = float(primitives.geometry_term(G[None], (-1j * r).astype(np.complex64), Wk[None])[0])
        assert math.isclose(got, expect, rel_tol=1e-5, abs_tol=1e-5 * float(np.abs(G * Wk).sum()))


@COLD_COMPILE
@pytest.mark.parametrize("model", ["amplitude", "intensity", "poisson", "anscombe"])
def test_farfield_kernel(model, ref):
    Psi, D = _far_and_data(66)
    mask = np.ones((M, N), np.float32)
    mask[1:3, 2:6] = 0.0
    eps = np.float32(1e-3)
    flat = np.ascontiguousarray(Psi.reshape(B, P, M, N))
    for a, c in ((0.0, 2.0), (1.0, -1.0)):
        out, loss = np.empty_like(flat), np.empty(B, np.float32)
        kernel("farfield_update")(flat, D, mask, NOISE_CODES[model], eps, np.float32(a), np.float32(c),
                                  np.float32(1.0), out, loss)
        ref_loss, ref_out = primitives.farfield_update(Psi, D, model, mask, 1e-3, a, c)
        _close(loss, ref_loss, 1e-5)
        _close(out, ref_out.reshape(flat.shape), 1e-5)
    if model in LSQML_STEP_CODES:  # LSQ-ML's own χ: (a, c) = (0, 2) gives -2χ
        out = np.empty_like(flat)
        kernel("farfield_update")(flat, D, mask, LSQML_STEP_CODES[model], eps, np.float32(0), np.float32(2),
                                  np.float32(1.0), out, loss)
        _close(out, primitives.lsqml_exit_step(Psi, D, model, mask, 1e-3).reshape(flat.shape), 1e-4)
        _close(loss, primitives.farfield_update(Psi, D, model, mask, 1e-3, 0.0, 2.0)[0], 1e-5)


@COLD_COMPILE
@pytest.mark.parametrize("gamma", [None, 0.3])
def test_epie_update_kernel(gamma, ref):
    """epie_single: the single-slice update read from the object grid, Δψ averaged over the object modes."""
    obj, psi1, target = _c((Q, H, W), 87), _c((B, P, M, N), 88), _c((B, P, Q, M, N), 89)
    d_obj, d_psi = np.empty((B, Q, M, N), np.complex64), np.empty((B, P, M, N), np.complex64)
    kernel("epie_update")(obj, Y0, X0, psi1, target, np.float32(0.7), np.float32(-1.0 if gamma is None else gamma),
                          d_obj, d_psi)
    ref_obj, ref_psi = primitives.epie_update(primitives.extract(obj, Y0, X0, (M, N)), psi1[:, :, None], target, 0.7,
                                              gamma)
    _close(d_obj, ref_obj, 1e-5)
    _close(d_psi, ref_psi.mean(axis=2), 1e-5)


@COLD_COMPILE
@pytest.mark.parametrize("gamma,to_wave", [(None, True), (0.3, False)])
def test_epie_update_slice_kernel(gamma, to_wave, ref):
    """_slice_epie (3PIE, one position and slice): d_obj, and e ← ψ + Δψ (``to_wave``) or Δψ."""
    obj, psi, e = _c((Q, S, H, W), 96), _c((P, 1, M, N), 97), _c((P, Q, M, N), 98)
    sl, yb, xb = 1, 4, 11
    d_obj, tmp, got = np.empty((Q, M, N), np.complex64), np.empty(N, np.float32), e.copy()
    kernel("epie_update_slice")(obj, sl, yb, xb, psi, got, np.float32(0.7),
                                np.float32(-1.0 if gamma is None else gamma), d_obj, to_wave, tmp)
    ref_obj, d_psi = primitives.epie_update(obj[None, :, sl, yb:yb + M, xb:xb + N], psi[None], e[None], 0.7, gamma)
    _close(d_obj, ref_obj[0], 1e-5)
    _close(got, (psi + d_psi[0]) if to_wave else d_psi[0], 1e-5)


def test_position_gradient_kernel(ref):
    """_position_gradient_sums on unnormalised spectra, scaled by position_out (s = 1/sqrt(MN))."""
    g, psi = _c((1, P, M, N), 67), _c((1, P, M, N), 68)
    uy, ux = (np.fft.fftfreq(n).astype(np.float32) for n in (M, N))
    gy, gx = kernel("position_gradient")(np.fft.fft2(g).astype(np.complex64), np.fft.fft2(psi).astype(np.complex64),
                                         uy, ux)
    out = np.empty(4)
    kernel("position_out")(out, np.float32(1 / math.sqrt(M * N)), gy, gx, 0.0, 0.0)
    _close(out[:2], primitives.position_gradient(g, psi, (uy[:, None], ux[None, :]))[0], 1e-5)


def test_position_curvature_kernel(ref):
    plans = host_fft.fftw_plane_plans(M, N, np.complex64)
    if plans is None:
        pytest.skip("no FFTW plans for the kernels here (pyFFTW's FFTW not reachable)")
    obj, psi = _c((Q, H, W), 69), _c((1, P, 1, M, N), 70)
    power = np.ascontiguousarray((np.abs(psi[0]) ** 2).sum(axis=0))  # (1, M, N): shared by the modes
    uy, ux = (np.fft.fftfreq(n).astype(np.float32) for n in (M, N))
    win, tmp = _aligned((1, 1, M, N)), _aligned((1, 1, M, N))
    cy, cx = kernel("position_curvature")(plans[0], plans[1], plans[2], obj, 5, 9, power, uy, ux, win, tmp)
    out = np.empty(4)
    kernel("position_out")(out, np.float32(1 / math.sqrt(M * N)), 0.0, 0.0, cy, cx)
    windows = obj[None, :, None, 5:5 + M, 9:9 + N]
    _close(out[2:], primitives.position_curvature(windows, [psi], (uy[:, None], ux[None, :]))[0], 1e-5)


@pytest.mark.parametrize("use_obj,use_probe", [(True, True), (True, False), (False, True)])
def test_lsqml_dots_kernel(use_obj, use_probe, ref):
    d_obj, obj = _c((Q, H, W), 71), _c((Q, H, W), 72)
    psi, shifted, g = _c((B, P, M, N), 73), _c((B, P, M, N), 74), _c((B, P, Q, M, N), 75)
    out = np.empty((B, 5))
    kernel("lsqml_dots")(d_obj, obj, Y0, X0, psi, shifted, g, use_obj, use_probe, out)
    a = primitives.transmit(primitives.extract(d_obj, Y0, X0, (M, N)), psi[:, :, None]) if use_obj else None
    b = primitives.transmit(primitives.extract(obj, Y0, X0, (M, N)), shifted[:, :, None]) if use_probe else None
    expect = primitives.lsqml_dots(a, b, g)
    cols = (0, 1, 2, 3, 4) if use_obj and use_probe else (0, 3) if use_obj else (1, 4)
    for col, e in zip(cols, expect):
        _close(out[:, col], e, 1e-5)


def test_lsqml_slice_dots_kernel(ref):
    v, g, w = _c((1, N), 76), _c((1, N), 77), _r((1, N), 78)
    rn, rd = kernel("lsqml_slice_dots")(v[0], g[0], w[0], np.float32(0))
    num, den = primitives.lsqml_slice_dots(v, g, w)
    assert math.isclose(-0.5 * rn, float(num[0]), rel_tol=1e-5) and math.isclose(rd, float(den[0]), rel_tol=1e-5)


@pytest.mark.parametrize("has_obj,has_probe", [(True, True), (True, False), (False, True)])
def test_lsqml_steps_kernel(has_obj, has_probe):
    aa, bb, ab, ra, rb = _step_terms(79)
    mode = 0 if has_obj and has_probe else 1 if has_obj else 2
    out = np.empty(2, np.float32)
    kernel("lsqml_steps")(aa, bb, ab, ra, rb, mode, 0.1, 0.9, out)
    terms = (aa, bb, ab, ra, rb) if mode == 0 else (aa, ra) if mode == 1 else (bb, rb)
    a_o, a_p = primitives.lsqml_steps(terms, has_obj, has_probe, 0.1, 0.9, np.float32)
    np.testing.assert_allclose(out, [float(a_o), float(a_p)], rtol=1e-6)


@pytest.mark.parametrize("modes", [1, Q])
def test_lsqml_direction_kernel(modes):
    num, w = _c((modes, S, H, W), 80), _r((modes, S, H, W), 81, 0, 5)
    w[:, 1] *= 0.01
    got = num.reshape(-1, H, W).copy()
    kernel("lsqml_direction")(got, w.reshape(-1, H, W), np.float32(0.1), None, None, modes)
    _close(got.reshape(num.shape), primitives.lsqml_direction(num.copy(), w, 0.1), 1e-6)


@COLD_COMPILE
@pytest.mark.parametrize("complex_z", [True, False])
def test_adam_kernels(complex_z):
    b1, b2, eps, lr, t = 0.9, 0.999, 1e-8, 0.01, 3
    make = (lambda s: _c((2, H, W), s)) if complex_z else (lambda s: _r((2, H, W), s, -1, 1))
    z, g, m = make(82), make(83), make(84)
    v_re, v_im = _r((2, H, W), 85), _r((2, H, W), 86) if complex_z else None
    expect = primitives.adam_step(z, g, m, v_re, v_im, t, b1, b2, eps, lr)
    f = np.float32
    consts = (f(b1), f(b2), f(1 / (1 - b1**t)), f(1 / (1 - b2**t)), f(eps), f(lr))
    flat = [a.reshape(-1).copy() for a in (z, g, m, v_re)]
    z_out = np.empty_like(flat[0])
    if complex_z:
        v_im_k = v_im.reshape(-1).copy()
        kernel("adam_step")(flat[0], flat[1], None, flat[2], flat[3], v_im_k, *consts, 0, z.size, z_out)
        _close(v_im_k.reshape(z.shape), expect[3], 1e-6)
    else:
        kernel("adam_step_real")(*flat, *consts, 0, z.size, z_out)
    _close(z_out.reshape(z.shape), expect[0], 1e-5)
    _close(flat[2].reshape(z.shape), expect[1], 1e-6)
    _close(flat[3].reshape(z.shape), expect[2], 1e-6)
    if complex_z:  # a gradient given on a region: the step on the embedded gradient
        region = (slice(4, 12), slice(6, 16))
        g_region = np.ascontiguousarray(g[:, region[0], region[1]])
        full = np.zeros_like(g)
        full[:, region[0], region[1]] = g_region
        expect = primitives.adam_step(z, full, m, v_re, v_im, t, b1, b2, eps, lr)
        mk, vr, vi, z_out = m.copy(), v_re.copy(), v_im.copy(), np.empty_like(z)
        kernel("adam_step_region")(z, g_region, mk, vr, vi, 4, 6, *consts, 0, 2 * H, z_out)
        _close(z_out, expect[0], 1e-5)
        _close(mk, expect[1], 1e-6)
