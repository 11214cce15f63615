"""Fused CPU kernels (ptycli/_kernels/) against the array-API code they replace: integration tests.

The contract of each kernel is tests/test_primitives.py (every kernel against the reference
primitive it implements, ptycli/engines/primitives.py). These tests check the composition:
whole engine runs and compiled parts (buffers, threads, FFT plans, records) against the
same run with ``backend.set_kernels(False)`` (the code CuPy and array_api_strict run).
Kernels only reorder float32 sums, so results agree to float32 rounding: rtol 1e-4 of the
largest value after two iterations; unit checks of each kernel at 1e-5 relative.
"""

import inspect
import re

import numpy as np
import pytest
from test_perf_structure import _patterns, _state

from ptycli import backend, host_fft
from ptycli.engines import common, loop, noise
from ptycli.engines.registry import ENGINES
from ptycli.physics import multislice, overlap
from ptycli.recipe import Recipe

pytest.importorskip("numba")


@pytest.fixture
def kernels_off():
    backend.set_kernels(False)
    yield
    backend.set_kernels(True)


def _close(a, b, rtol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * float(np.max(np.abs(b))))


def _rng_c(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _run(engine, kernels, monkeypatch, modes=1, noise_model="amplitude", mask=False, positions=False,
         group=4, extra=None, slices=1, object_modes=1, tilts=False, threads=1):
    backend.set_kernels(kernels)
    monkeypatch.setenv("PTYCLI_THREADS", str(threads))
    try:
        state = _state(slices=slices, modes=modes, scan=(4, 4))
        pats = _patterns(state)
        if object_modes > 1:  # further object modes: the first with another weak phase
            more = [state.object * np.exp(0.2j * k).astype(np.complex64) * 0.5 for k in range(1, object_modes)]
            state.object = np.concatenate([state.object, *more], axis=0)
        if tilts:  # small per-position beam tilts: a propagator per position
            state.tilts = np.random.default_rng(5).uniform(-2, 2, (len(pats), 2)).astype(np.float32)
        det_mask = None
        if mask:
            det_mask = np.ones(pats.shape[-2:], np.float32)
            det_mask[:3, :5] = 0.0
        extra = dict(extra or {})
        refine = extra.pop("refine", {"object": True, "probe": True, "positions": positions})
        stage = ENGINES[engine].params(type=engine, iterations=2, grouping={"kind": "compact", "size": group},
                                       refine=refine, noise={"model": noise_model}, **extra)
        recipe = Recipe(recipe="ptycli/1", stage=[stage])
        ctx = common.make_context(state, np, "single", stage.noise.model, stage.noise.eps, mask=det_mask,
                                  n_e=float(pats.sum(axis=(-2, -1)).mean()))
        losses = []

        class Obs:
            def on_iteration_end(self, stage_i, it, loss, t):
                losses.append(loss)

        hooks = loop.RunHooks(read_batch=lambda idx, _s: pats[idx],
                              make_engine=lambda params, st: ENGINES[engine].engine(params, ctx, st),
                              apply_constraints=lambda st, _s, _it: st, observers=[Obs()])
        out = loop.run(recipe, state, np.arange(len(pats)), 0, hooks)[0]
        return out, np.asarray(losses)
    finally:
        backend.set_kernels(True)


@pytest.mark.parametrize("engine,modes,noise_model,mask,positions,group,extra", [
    ("lsqml", 1, "amplitude", False, True, 4, None),
    ("lsqml", 2, "poisson", True, False, 4, None),
    ("lsqml", 1, "anscombe", False, False, 4, None),
    ("gradient", 1, "intensity", False, False, 4, {"learning_rate": {"object": 1e-7, "probe": 1e-7}}),
    ("gradient", 1, "anscombe", True, True, 4, None),
    ("gradient", 2, "amplitude", False, False, 4, None),
    ("epie", 1, "amplitude", False, True, 1, None),
    ("epie", 1, "amplitude", False, False, 1, None),  # sequential ePIE's lean path, one probe mode
    ("epie", 2, "poisson", True, False, 1, None),
    ("epie", 1, "amplitude", False, False, 4, {"rpie_gamma": 0.3, "alpha": 0.7, "beta": 0.5}),
])
def test_engines_match_the_array_api_code(engine, modes, noise_model, mask, positions, group, extra, monkeypatch):
    fused, loss_f = _run(engine, True, monkeypatch, modes, noise_model, mask, positions, group, extra)
    plain, loss_p = _run(engine, False, monkeypatch, modes, noise_model, mask, positions, group, extra)
    _close(fused.object, plain.object)
    _close(fused.probe, plain.probe)
    np.testing.assert_allclose(loss_f, loss_p, rtol=1e-4)
    np.testing.assert_allclose(fused.positions, plain.positions, rtol=0, atol=1e-4)
    assert not np.array_equal(fused.object, _state(modes=modes).object)  # the engine did update


@pytest.mark.parametrize("engine,group", [("lsqml", 4), ("gradient", 4), ("epie", 1)])
def test_multislice_engines_match_the_array_api_code(engine, group, monkeypatch):
    fused, loss_f = _run(engine, True, monkeypatch, modes=2, group=group, slices=3)
    plain, loss_p = _run(engine, False, monkeypatch, modes=2, group=group, slices=3)
    _close(fused.object, plain.object)
    _close(fused.probe, plain.probe)
    np.testing.assert_allclose(loss_f, loss_p, rtol=1e-4)


def test_kernels_are_only_offered_for_numpy():
    assert backend.kernels(np) is not None
    assert backend.kernels(object()) is None
    backend.set_kernels(False)
    try:
        assert backend.kernels(np) is None
    finally:
        backend.set_kernels(True)


@pytest.mark.parametrize("model", ["amplitude", "intensity", "poisson", "anscombe"])
@pytest.mark.parametrize("masked", [False, True])
def test_farfield_kernel_matches_the_noise_models(model, masked):
    Psi = _rng_c((3, 2, 1, 16, 16))
    intensity = (np.abs(Psi) ** 2).sum(axis=(1, 2))
    D = (intensity * np.random.default_rng(2).uniform(0.5, 1.5, intensity.shape)).astype(np.float32)
    D[0, 0, :4] = 0.0  # zero counts: the Poisson D log D term
    mask = None
    if masked:
        mask = np.ones((16, 16), np.float32)
        mask[2:5, 3:9] = 0.0
    for a, c in ((0.0, 2.0), (1.0, -1.0)):
        loss, out = noise.fused_farfield(Psi, D, model, mask, None, a, c)
        ref_loss, lprime = noise.loss_and_dloss_dI(intensity.astype(np.float32), D, model, mask)
        ref = Psi * (a + c * lprime)[:, None, None]
        _close(loss, ref_loss, 1e-5)
        _close(out, ref, 1e-5)
        assert out.dtype == np.complex64 and loss.dtype == np.float32


def test_shift_kernels_match_the_ramps():
    probe = _rng_c((2, 16, 12))
    frac = np.random.default_rng(3).uniform(0, 1, (5, 2)).astype(np.float32)
    spectrum = backend.fft2(probe)
    fused = overlap.shift_probe(probe, frac)
    grad = _rng_c((5, 2, 16, 12), 4)
    fused_sum = overlap.unshift_sum_k(grad, frac)
    fused_unshift = overlap.unshift(grad, frac)
    backend.set_kernels(False)
    try:
        _close(fused, overlap.shift_probe(probe, frac, spectrum), 1e-5)
        _close(fused_sum, overlap.unshift_sum_k(grad, frac), 1e-5)
        _close(fused_unshift, overlap.unshift(grad, frac), 1e-5)
    finally:
        backend.set_kernels(True)


def test_window_kernels_match_numpy_and_refuse_windows_outside():
    obj = _rng_c((2, 3, 20, 22))
    y0, x0 = np.array([0, 4, 8]), np.array([10, 0, 12])
    patches = backend.extract_patches(obj, y0, x0, (8, 10))
    for b in range(3):
        np.testing.assert_array_equal(patches[b], obj[..., y0[b]:y0[b] + 8, x0[b]:x0[b] + 10])
    target = np.zeros_like(obj)
    backend.scatter_add_patches(target, y0, x0, patches)
    ref = np.zeros_like(obj)
    for b in range(3):
        ref[..., y0[b]:y0[b] + 8, x0[b]:x0[b] + 10] += patches[b]
    np.testing.assert_allclose(target, ref, rtol=1e-6)
    with pytest.raises(Exception):  # noqa: B017  (the NumPy path's own error, not a silent write)
        backend.extract_patches(obj, np.array([15]), np.array([0]), (8, 10))


def test_exit_waves_from_the_object_match_windows_times_probe():
    state = _state(modes=2)
    ctx = common.make_context(state, np, "single", "amplitude", None)
    data = np.ones((5, 32, 32), np.float32)
    b = common.make_batch(state, np.arange(5), data, ctx)
    lean, full = common.forward(state, b, ctx, patches=False), common.forward(state, b, ctx)
    assert lean.patches is None and full.patches is not None
    _close(lean.Psi, full.Psi, 1e-6)
    # a window off the grid: no fused result, so the caller's general path reports it
    assert backend.window_exit_waves(state.object[:, 0], np.array([-1]), np.array([0]), lean.psi1[:1]) is None


def test_lsqml_direction_kernel_matches_the_formula():
    from ptycli import _kernels

    rng = np.random.default_rng(2)
    num = _rng_c((2, 3, 14, 17), 3)
    w = rng.uniform(0, 5, size=num.shape).astype(np.float32)
    delta = np.float32(0.1)
    ref = -0.5 * num / np.sqrt(w * w + (delta * w.max(axis=(-2, -1), keepdims=True)) ** 2)
    flat = num.reshape(-1, 14, 17).copy()
    _kernels.lsqml_direction(flat, w.reshape(-1, 14, 17), delta)  # in place
    _close(flat.reshape(num.shape), ref, 1e-6)


def test_backward_kernel_matches_adjoint_and_scatter():
    state = _state(modes=2)
    rng = np.random.default_rng(5)
    idx = np.arange(6)
    ctx = common.make_context(state, np, "single", "amplitude", None)
    b = common.make_batch(state, idx, rng.uniform(size=(6, 32, 32)).astype(np.float32), ctx)
    fwd = common.forward(state, b, ctx)
    g = _rng_c(fwd.Psi.shape, 6)
    num, illum, g_psi = common.backward_accumulate(g, fwd, state, b, ctx, numerator=True, illumination=True)
    g_patches, g_psi_ref = multislice.backward(backend.fft2(g), fwd.cache, None)
    num_ref = overlap.accumulate(np.zeros_like(state.object), b.y0, b.x0, g_patches)
    w = (np.abs(fwd.psi1) ** 2).sum(axis=1)[:, None, None]
    illum_ref = overlap.accumulate(np.zeros(state.object.shape, np.float32), b.y0, b.x0, w)
    _close(g_psi, g_psi_ref.sum(axis=2), 1e-5)
    _close(num, num_ref, 1e-5)
    _close(illum, illum_ref, 1e-5)


@pytest.mark.parametrize("complex_z", [True, False])
def test_adam_kernel_matches_the_textbook_steps(complex_z):
    from ptycli.engines.optimizers import Adam

    rng = np.random.default_rng(7)
    shape = (3, 70, 1000)  # large enough to be split over the host threads
    z0 = _rng_c(shape, 8) if complex_z else rng.standard_normal(shape).astype(np.float32)
    grads = [(_rng_c(shape, 9 + i) if complex_z else rng.standard_normal(shape).astype(np.float32))
             for i in range(3)]
    results = []
    for kernels in (True, False):
        backend.set_kernels(kernels)
        try:
            opt, z = Adam(), z0.copy()
            for g in grads:
                z = opt.step("object", z, g, 0.01)
            results.append((z, opt.slots["object"]))
        finally:
            backend.set_kernels(True)
    (zf, sf), (zp, sp) = results
    assert zf.dtype == z0.dtype and sf["m"].dtype == z0.dtype
    _close(zf, zp)
    _close(sf["m"], sp["m"])
    _close(sf["v_re"], sp["v_re"])
    if complex_z:
        _close(sf["v_im"], sp["v_im"])
    assert not np.shares_memory(zf, z0)  # a new array: callers may hold the old one


@pytest.mark.parametrize("engine,group,slices,modes", [("lsqml", 4, 1, 2), ("gradient", 4, 1, 1), ("epie", 1, 1, 2),
                                                       ("lsqml", 4, 2, 2), ("epie", 4, 1, 1)])
def test_kernels_never_read_their_output_buffers(engine, group, slices, modes, monkeypatch):
    """Every output buffer comes from ``_kernels.empty`` uninitialised; filled with NaN here,
    a kernel that reads one before writing it (once seeding its sums from it, which made a
    run NaN depending on what the allocator handed back) fails the comparison."""
    from ptycli import _kernels

    real_empty = _kernels.empty

    def poisoned(shape, dtype):
        out = real_empty(shape, dtype)
        if np.dtype(dtype).kind in "fc":
            out[...] = np.nan
        return out

    monkeypatch.setattr(_kernels, "empty", poisoned)
    fused, loss_f = _run(engine, True, monkeypatch, modes=modes, group=group, slices=slices, positions=True)
    monkeypatch.setattr(_kernels, "empty", real_empty)
    plain, loss_p = _run(engine, False, monkeypatch, modes=modes, group=group, slices=slices, positions=True)
    assert np.isfinite(loss_f).all() and np.isfinite(fused.object).all() and np.isfinite(fused.probe).all()
    _close(fused.object, plain.object)
    _close(fused.probe, plain.probe)


@pytest.mark.parametrize("per_position_h", [False, True])
@pytest.mark.parametrize("block_elements", [1, 3 * 2 * 2 * 8 * 8, 2**16])
def test_blocked_multislice_matches_the_array_api_code(per_position_h, block_elements, monkeypatch):
    """The CPU multislice passes run a few positions at a time (blocks of 1, of 3 with a
    short last block of 2, and all 5 at once here): same far field, cache and adjoint."""
    monkeypatch.setattr(multislice, "BLOCK_ELEMENTS", block_elements)
    b, p, q, s, m = 5, 2, 2, 3, 8
    psi1 = _rng_c((b, p, m, m), 1)
    patches = np.exp(0.3j * _rng_c((b, q, s, m, m), 2).real).astype(np.complex64)
    H = np.exp(1j * _rng_c((b, m, m) if per_position_h else (m, m), 3).real).astype(np.complex64)
    g_exit = _rng_c((b, p, q, m, m), 4)
    Psi, cache = multislice.forward(psi1, patches, H)
    g_obj, g_psi = multislice.backward(None, cache, H, grad_exit=g_exit.copy())
    backend.set_kernels(False)
    try:
        Psi_p, cache_p = multislice.forward(psi1, patches, H)
        g_obj_p, g_psi_p = multislice.backward(None, cache_p, H, grad_exit=g_exit.copy())
    finally:
        backend.set_kernels(True)
    _close(Psi, Psi_p, 1e-5)
    for a, c in zip(cache.psi, cache_p.psi, strict=True):
        _close(np.broadcast_to(a, c.shape), c, 1e-5)
    _close(g_obj, g_obj_p, 1e-5)
    _close(g_psi, g_psi_p, 1e-5)


@pytest.mark.parametrize("has_obj,has_probe", [(True, True), (True, False), (False, True)])
def test_lsqml_steps_kernel_matches_the_array_api_code(has_obj, has_probe):
    from types import SimpleNamespace

    from ptycli.engines.lsqml import LsqmlEngine

    rng = np.random.default_rng(4)
    n = 23
    aa, bb = rng.uniform(1, 5, n), rng.uniform(1, 5, n)
    ab, ra, rb = rng.normal(0, 1, n), rng.normal(0, 3, n), rng.normal(0, 3, n)
    cols = (aa, bb, ab, ra, rb) if has_obj and has_probe else (aa, ra) if has_obj else (bb, rb)
    engine = object.__new__(LsqmlEngine)
    engine.params = SimpleNamespace(trim=0.1, beta_lsq=0.9)
    engine.ctx = common.RunContext(xp=np, real_dtype=np.float32, complex_dtype=np.complex64)
    results = []
    for kernels in (True, False):
        backend.set_kernels(kernels)
        try:
            results.append([float(v) for v in engine._steps_single(cols, has_obj, has_probe)])
        finally:
            backend.set_kernels(True)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
    assert any(v > 0 for v in results[0])


def _single_precision_args():
    rng = np.random.default_rng(0)
    c = lambda *s: _rng_c(s, 1)  # noqa: E731
    f32 = np.float32
    obj, psi, tgt = c(1, 40, 40), c(2, 1, 8, 8), c(2, 1, 1, 8, 8)
    ys, xs = np.array([1, 5]), np.array([2, 9])
    n = 50
    r = rng.uniform(0.1, 1, n).astype(f32)
    return {
        "epie_single": (obj, ys, xs, psi, tgt, f32(1), f32(-1), np.empty((2, 1, 8, 8), np.complex64),
                        np.empty((2, 1, 8, 8), np.complex64)),
        "adam": (c(n), c(n), c(n), c(n), r, r.copy(), f32(0.9), f32(0.999), f32(1.1), f32(1.01), f32(1e-8),
                 f32(1e-3), 0, n, np.empty(n, np.complex64)),
        "adam_real": (r, r * f32(0.5), r * f32(0.1), r * r, f32(0.9), f32(0.999), f32(1.1), f32(1.01), f32(1e-8),
                      f32(1e-3), 0, n, np.empty(n, f32)),
        "adam_region": (c(1, 9, 10), c(1, 4, 5), c(1, 9, 10), *(rng.uniform(0, 1, (2, 1, 9, 10)).astype(f32)), 2, 3,
                        f32(0.9), f32(0.999), f32(1.1), f32(1.01), f32(1e-8), f32(1e-3), 0, 9,
                        np.empty((1, 9, 10), np.complex64)),
        "lsqml_direction": (c(1, 6, 7), rng.uniform(0, 2, (1, 6, 7)).astype(f32), f32(0.1)),
        "farfield": (c(2, 1, 8, 8), rng.uniform(0, 2, (2, 8, 8)).astype(f32), np.ones((8, 8), f32), 0, f32(1e-6),
                     f32(0), f32(2), f32(1), np.empty((2, 1, 8, 8), np.complex64), np.empty(2, f32)),
    }


@pytest.mark.parametrize("name", ["epie_single", "adam", "lsqml_direction", "farfield"])
def test_float32_kernels_do_no_double_precision_arithmetic(name):
    """An int or float literal in a float32 expression makes Numba compute it in float64
    (this made Adam and ePIE's update run in double precision, 1.4-1.6x slower): the compiled
    code of these kernels must hold no double-precision arithmetic except the far-field
    kernel's float64 loss sum."""
    import re

    import numba

    from ptycli import _kernels

    fresh = numba.njit(**{**_kernels._JIT, "cache": False})(getattr(_kernels, name).py_func)
    fresh(*_single_precision_args()[name])
    ir = fresh.inspect_llvm(fresh.signatures[0])
    double_ops = re.findall(r"= (?:fadd|fsub|fmul|fdiv)(?: [a-z]+)* (?:<\d+ x )?double|llvm\.sqrt\.f64", ir)
    if name == "farfield":  # total += w * diff²: the loss is summed in float64 by design
        double_ops = [op for op in double_ops if not op.startswith("= fadd")]
    assert not double_ops, double_ops[:5]


@pytest.mark.parametrize("name", ["adam", "adam_real", "adam_region"])
def test_adam_kernels_compile_to_vector_code(name):
    """Numba's wraparound indexing kept a loop over range(lo, hi) scalar (the complex Adam
    step ran 10x slower than its vectorised form): the Adam kernels' square roots must be
    vector instructions."""
    import numba

    from ptycli import _kernels

    fresh = numba.njit(**{**_kernels._JIT, "cache": False})(getattr(_kernels, name).py_func)
    fresh(*_single_precision_args()[name])
    ir = fresh.inspect_llvm(fresh.signatures[0])
    assert re.search(r"llvm\.sqrt\.v\d+f32", ir), "no vector sqrt in the compiled loop"


def test_adam_on_a_region_equals_adam_on_the_embedded_gradient():
    """The region kernel steps the whole grid as the dense kernel does for a gradient that
    is zero outside the region (moments decay there), over several steps."""
    from ptycli.engines.optimizers import Adam, embed

    rng = np.random.default_rng(9)
    z0 = _rng_c((2, 1, 30, 26), 1)
    regions = [(slice(0, 13), slice(0, 12)), (slice(4, 17), slice(9, 21)), (slice(17, 30), slice(14, 26))]
    sparse, dense = Adam(), Adam()
    z_s, z_d = z0.copy(), z0.copy()
    for step, region in enumerate(regions):
        g = _rng_c((2, 1, 13, 12), 10 + step) * np.float32(rng.uniform(0.5, 2))
        before = z_s.copy()
        z_s = sparse.step("object", z_s, g, 1e-2, region=region)
        z_d = dense.step("object", z_d, embed(z0, g, region), 1e-2)
    np.testing.assert_allclose(z_s, z_d, rtol=0, atol=1e-6)
    for key in ("m", "v_re", "v_im"):
        np.testing.assert_allclose(sparse.slots["object"][key], dense.slots["object"][key], rtol=0, atol=1e-7)
    # the last step's gradient is zero on the first region: momentum alone still moved it
    assert np.abs(z_s - before)[..., :4, :9].min() > 0


def _on_fftw_kernels(monkeypatch):
    """FFTW as the host FFT, with plans for compiled kernels (else the test skips)."""
    pytest.importorskip("pyfftw")
    monkeypatch.setattr(host_fft, "_fft_library", "pyfftw")
    if host_fft.kernel_fft_plans(32, 32, np.complex64) is None:
        pytest.skip("pyFFTW's FFTW library is not reachable from kernels here")


def _count_transforms(monkeypatch):
    """{"calls": transforms through backend._fft_call, "kernel": those compiled kernels report}."""
    counted = {}
    real_call = backend._fft_call

    def counting(x, *a, **kw):
        counted["calls"] = counted.get("calls", 0) + int(np.prod(x.shape[:-2]))
        return real_call(x, *a, **kw)

    monkeypatch.setattr(backend, "_fft_call", counting)
    monkeypatch.setattr(host_fft, "kernel_ffts", lambda shape, n: counted.__setitem__("kernel", counted.get("kernel", 0) + n))
    return counted


@pytest.mark.parametrize("modes,noise_model,mask,extra", [
    (1, "amplitude", False, None),
    (2, "poisson", True, None),
    (1, "anscombe", False, {"rpie_gamma": 0.3, "alpha": 0.7, "beta": 0.5}),
    (1, "amplitude", False, {"refine": {"object": True, "probe": False}}),
])
def test_epie_position_kernel_matches_the_array_path(modes, noise_model, mask, extra, monkeypatch):
    """Sequential ePIE's whole position in one compiled call (FFTW executed from the kernel)
    against the same path as array calls, both on FFTW: the same states to float32 rounding
    (the two use different FFTW plans), and the same number of transforms counted."""
    _on_fftw_kernels(monkeypatch)
    from ptycli import _kernels
    from ptycli.engines import epie

    counted = _count_transforms(monkeypatch)
    threaded, real = [], _kernels.epie_multislice_part
    monkeypatch.setattr(_kernels, "epie_multislice_part", lambda *a: threaded.append(1) or real(*a))
    native, loss_n = _run("epie", True, monkeypatch, modes, noise_model, mask, False, 1, extra, threads=2)
    n_native = counted.get("calls", 0) + counted.get("kernel", 0)
    assert counted.get("kernel", 0) > 0  # the compiled path ran
    # several probe modes: each position on two threads, as a one-slice threaded 3PIE position
    assert (len(threaded) == 2 * 16 * 2) == (modes > 1) and (not threaded) == (modes == 1)
    counted.clear()
    monkeypatch.setattr(epie.EpieEngine, "_native_plans", lambda self, probe_k: None)
    plain, loss_p = _run("epie", True, monkeypatch, modes, noise_model, mask, False, 1, extra)
    assert "kernel" not in counted and counted["calls"] == n_native
    _close(native.object, plain.object)
    _close(native.probe, plain.probe)
    np.testing.assert_allclose(loss_n, loss_p, rtol=1e-4)
    assert not np.array_equal(native.object, _state(modes=modes).object)


@pytest.mark.parametrize("engine,modes,noise_model,mask,extra", [
    ("lsqml", 1, "amplitude", False, None),
    ("lsqml", 2, "anscombe", True, None),
    ("lsqml", 1, "amplitude", False, {"refine": {"object": False, "probe": True}}),
    ("lsqml", 2, "poisson", True, None),  # LSQ-ML's own χ: the Poisson step β_ξ per position
    ("lsqml", 1, "intensity", False, None),  # and the amplitude model's step
    ("gradient", 1, "amplitude", False, None),
    ("gradient", 2, "intensity", True, {"learning_rate": {"object": 1e-7, "probe": 1e-7}}),
    ("gradient", 1, "anscombe", False, {"refine": {"object": True, "probe": False}}),
])
def test_single_slice_part_kernel_matches_the_array_path(engine, modes, noise_model, mask, extra, monkeypatch):
    """A single-slice part in one compiled call (window by window, FFTW executed from the
    kernel; for LSQ-ML also its step terms, ``lsqml_terms_part``) against the same part as
    array calls on FFTW: the same states to float32 rounding and the same number of
    transforms, with the group split into two parts."""
    _on_fftw_kernels(monkeypatch)
    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)
    counted = _count_transforms(monkeypatch)
    real_part = common.prepare_part_kernel
    parts_seen = []
    monkeypatch.setattr(common, "prepare_part_kernel", lambda *a, **kw: parts_seen.append(1) or real_part(*a, **kw))
    monkeypatch.setattr(common, "n_parts", lambda ctx, b, e=1: min(2, b))
    kernel, loss_k = _run(engine, True, monkeypatch, modes, noise_model, mask, False, 4, extra)
    assert counted.get("kernel", 0) > 0 and parts_seen  # the compiled parts ran
    n_kernel = counted.get("calls", 0) + counted["kernel"]
    counted.clear()
    monkeypatch.setattr(host_fft, "kernel_fft_plans", lambda m, n, dtype: None)  # every compiled path off
    plain, loss_p = _run(engine, True, monkeypatch, modes, noise_model, mask, False, 4, extra)
    # the gradient engine's probe step in a kernel (``_ProbeTail``) also transforms the last
    # group's new probe for a next group; a next iteration transforms it afresh (2 iterations)
    tail = engine == "gradient" and (extra or {}).get("optimizer", "adam") == "adam"  # the tail's step is Adam's
    tail_extra = 2 * modes if tail and (extra or {}).get("refine", {}).get("probe", True) else 0
    assert "kernel" not in counted and counted["calls"] + tail_extra == n_kernel
    _close(kernel.object, plain.object)
    _close(kernel.probe, plain.probe)
    np.testing.assert_allclose(loss_k, loss_p, rtol=1e-4)


@pytest.mark.parametrize("engine,slices,modes,object_modes,noise_model,mask,tilts,probe", [
    ("gradient", 1, 1, 1, "amplitude", False, False, True),
    ("gradient", 1, 2, 1, "poisson", True, False, True),
    ("gradient", 1, 1, 2, "amplitude", False, False, False),
    ("lsqml", 1, 1, 1, "amplitude", False, False, True),
    ("lsqml", 1, 2, 1, "anscombe", True, False, True),
    ("gradient", 3, 1, 1, "amplitude", False, False, True),
    ("gradient", 3, 2, 1, "poisson", True, False, False),
    ("lsqml", 3, 2, 2, "anscombe", True, True, True),
    ("lsqml", 3, 1, 1, "amplitude", False, False, False),
])
def test_parts_with_position_refinement_match_the_array_path(engine, slices, modes, object_modes, noise_model, mask,
                                                             tilts, probe, monkeypatch):
    """Refining positions, the gradient and LSQ-ML engines keep their compiled parts, which
    make the position terms in the same call (``single_slice_part`` / ``multislice_part``
    with ``do_pos``: ∂L/∂f from F[∇ψ_1] and F[ψ_1], the curvature from each slice's window
    and incident wave while they are in cache): the same object, probe and positions as the
    array path to float32 rounding. Transforms: the array path's but, with the probe
    refined, one per position and probe mode fewer (the probe gradient's F[∇ψ_1] serves)."""
    _on_fftw_kernels(monkeypatch)
    from ptycli import _kernels

    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)
    monkeypatch.setattr(common, "n_parts", lambda ctx, b, e=1: min(2, b))
    counted = _count_transforms(monkeypatch)
    with_terms = []  # each part call's do_pos
    for name in ("single_slice_part",) if slices == 1 else ("multislice_part",):
        real = getattr(_kernels, name)
        want = list(inspect.signature(getattr(real, "py_func", real)).parameters).index("want")  # a records.Wanted
        monkeypatch.setattr(_kernels, name, lambda *a, _k=real, _i=want: with_terms.append(a[_i].positions) or _k(*a))
    extra = {"refine": {"object": True, "probe": probe, "positions": True}}
    if engine == "gradient":
        extra["learning_rate"] = {"object": 1e-3, "probe": 1e-3}
    run = {"slices": slices, "object_modes": object_modes, "tilts": tilts}
    kernel, loss_k = _run(engine, True, monkeypatch, modes, noise_model, mask, True, 4, extra, **run)
    assert with_terms == [True] * (2 * 4 * 2)  # parts x groups x iterations, every one with its terms
    n_kernel = counted.get("calls", 0) + counted["kernel"]
    counted.clear()
    monkeypatch.setattr(host_fft, "kernel_fft_plans", lambda m, n, dtype: None)  # every compiled path off
    plain, loss_p = _run(engine, True, monkeypatch, modes, noise_model, mask, True, 4, extra, **run)
    shared = 16 * 2 * modes if probe else 0  # positions x iterations x probe modes
    assert "kernel" not in counted and counted["calls"] == n_kernel + shared
    _close(kernel.object, plain.object)
    _close(kernel.probe, plain.probe)
    np.testing.assert_allclose(kernel.positions, plain.positions, rtol=0, atol=1e-4)
    assert not np.allclose(kernel.positions, _state(slices=slices, modes=modes).positions)  # the positions moved
    np.testing.assert_allclose(loss_k, loss_p, rtol=1e-4)


@pytest.mark.parametrize("noise_model,mask,extra", [("amplitude", False, None),
                                                    ("poisson", True, {"rpie_gamma": 0.3, "alpha": 0.7})])
def test_epie_position_kernel_with_position_refinement_matches_the_array_path(noise_model, mask, extra, monkeypatch):
    """Sequential ePIE refining positions runs its compiled position and the position terms
    as a compiled call (``_kernels.position_terms_epie``, before the object's step): the same
    object, probe and positions as the general array path to float32 rounding."""
    _on_fftw_kernels(monkeypatch)
    from ptycli import _kernels

    counted = _count_transforms(monkeypatch)
    real_terms = _kernels.position_terms_epie
    terms_seen = []
    monkeypatch.setattr(_kernels, "position_terms_epie", lambda *a: terms_seen.append(1) or real_terms(*a))
    kernel, loss_k = _run("epie", True, monkeypatch, 1, noise_model, mask, True, 1, extra)
    assert len(terms_seen) == 16 * 2  # positions x iterations
    n_kernel = counted.get("calls", 0) + counted["kernel"]
    counted.clear()
    monkeypatch.setattr(host_fft, "kernel_fft_plans", lambda m, n, dtype: None)  # every compiled path off
    plain, loss_p = _run("epie", True, monkeypatch, 1, noise_model, mask, True, 1, extra)
    # the array path also transforms the probe at every position but the first (the compiled
    # path carries its spectrum from position to position)
    assert "kernel" not in counted and counted["calls"] == n_kernel + (16 * 2 - 1)
    _close(kernel.object, plain.object)
    _close(kernel.probe, plain.probe)
    np.testing.assert_allclose(kernel.positions, plain.positions, rtol=0, atol=1e-4)
    assert not np.allclose(kernel.positions, _state().positions)  # the positions moved
    np.testing.assert_allclose(loss_k, loss_p, rtol=1e-4)


@pytest.mark.parametrize("slices,modes,object_modes,noise_model,mask,tilts,extra,positions", [
    (3, 1, 1, "amplitude", False, False, None, False),
    (3, 2, 2, "poisson", True, True, None, False),
    (3, 1, 2, "anscombe", False, False, {"rpie_gamma": 0.3, "alpha": 0.7, "beta": 0.5}, False),
    (3, 2, 1, "amplitude", False, False, {"refine": {"object": True, "probe": False}}, False),
    (3, 1, 1, "amplitude", True, False, {"refine": {"object": False, "probe": True}}, False),
    # refining positions: the terms in the same call, one thread or several
    (3, 1, 1, "amplitude", False, False, None, True),
    (3, 2, 2, "poisson", True, True, None, True),
    (1, 2, 1, "anscombe", False, False, {"rpie_gamma": 0.3, "alpha": 0.7}, True),
    (3, 1, 2, "amplitude", False, False, {"refine": {"object": True, "probe": False, "positions": True}}, True),
])
def test_epie_multislice_position_kernel_matches_the_array_path(slices, modes, object_modes, noise_model, mask, tilts,
                                                                extra, positions, monkeypatch):
    """Sequential 3PIE's whole position in one compiled call (``epie_multislice_position``)
    against the general array path: the same states to float32 rounding, every transform
    counted (the compiled path carries the probe's spectrum from position to position, the
    array path transforms the probe at each: P fewer per position). Refining positions, the
    call makes the position terms before its steps (the threaded call splits their slices):
    the same positions too."""
    _on_fftw_kernels(monkeypatch)
    from ptycli import _kernels

    counted = _count_transforms(monkeypatch)
    called = []
    real, threaded = _kernels.epie_multislice_position, _kernels.epie_multislice_part
    monkeypatch.setattr(_kernels, "epie_multislice_position", lambda *a: called.append(1) or real(*a))
    # thread t of a threaded position counts itself as 1 / n_threads of a position
    monkeypatch.setattr(_kernels, "epie_multislice_part", lambda *a: called.append(1 / a[2]) or threaded(*a))
    run = {"slices": slices, "object_modes": object_modes, "tilts": tilts}
    native, loss_n = _run("epie", True, monkeypatch, modes, noise_model, mask, positions, 1, extra, threads=2, **run)
    n_pos, iters, s, q = 16, 2, slices, object_modes
    probe = (extra or {}).get("refine", {}).get("probe", True)
    per_position = (modes + modes * q * (4 * s - 2) + (2 * modes if probe else 0)
                    + (2 * modes + 3 * q * s if positions else 0))
    assert sum(called) == pytest.approx(n_pos * iters) and counted["kernel"] == n_pos * iters * per_position
    # two wave chains or more (probe x object modes) run on two host threads together
    assert all(c == 0.5 for c in called) == (modes * q > 1) and all(c in (0.5, 1) for c in called)
    n_native = counted.get("calls", 0) + counted["kernel"]
    counted.clear()
    monkeypatch.setattr(host_fft, "kernel_fft_plans", lambda m, n, dtype: None)  # the general array path
    plain, loss_p = _run("epie", True, monkeypatch, modes, noise_model, mask, positions, 1, extra, **run)
    # the array path also transforms the probe at every position but the first (the compiled
    # path transformed it once and carried its spectrum)
    assert "kernel" not in counted and counted["calls"] == n_native + modes * (n_pos * iters - 1)
    _close(native.object, plain.object)
    _close(native.probe, plain.probe)
    np.testing.assert_allclose(loss_n, loss_p, rtol=1e-4)
    np.testing.assert_allclose(native.positions, plain.positions, rtol=0, atol=1e-4)
    moved = not np.allclose(native.positions, _state(slices=slices, modes=modes).positions)
    assert moved == positions
    assert not np.array_equal(native.object if (extra or {}).get("refine", {}).get("object", True) else native.probe,
                              plain.object * 0)


@pytest.mark.parametrize("engine,modes,object_modes,noise_model,mask,tilts,extra", [
    ("lsqml", 1, 1, "amplitude", False, False, None),
    ("lsqml", 2, 2, "anscombe", True, True, None),
    ("lsqml", 2, 1, "amplitude", True, False, {"refine": {"object": False, "probe": True}}),
    ("lsqml", 1, 2, "amplitude", False, False, {"refine": {"object": True, "probe": False}}),
    ("lsqml", 2, 1, "poisson", True, True, None),
    ("lsqml", 1, 1, "poisson", False, False, None),
    ("lsqml", 1, 2, "intensity", False, False, None),
    ("gradient", 1, 1, "amplitude", False, False, None),
    ("gradient", 2, 2, "intensity", True, True, {"learning_rate": {"object": 1e-7, "probe": 1e-7}}),
    ("gradient", 1, 1, "anscombe", False, False, {"refine": {"object": True, "probe": False}}),
])
def test_multislice_part_kernel_matches_the_array_path(engine, modes, object_modes, noise_model, mask, tilts, extra,
                                                       monkeypatch):
    """A multislice part in one compiled call (``multislice_part``: every slice forward and
    back window by window, FFTW executed from the kernel) against the same part as array
    calls on FFTW: the same states to float32 rounding and the same number of transforms,
    with the group split into two parts; 3 slices, probe and object modes, per-position tilts."""
    _on_fftw_kernels(monkeypatch)
    from ptycli import _kernels

    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)
    counted = _count_transforms(monkeypatch)
    called = []
    for name in ("multislice_part", "lsqml_terms_multi_part"):
        real = getattr(_kernels, name)
        monkeypatch.setattr(_kernels, name, lambda *a, _n=name, _k=real: called.append(_n) or _k(*a))
    monkeypatch.setattr(common, "n_parts", lambda ctx, b, e=1: min(2, b))
    run = {"slices": 3, "object_modes": object_modes, "tilts": tilts}
    kernel, loss_k = _run(engine, True, monkeypatch, modes, noise_model, mask, False, 4, extra, **run)
    # the compiled parts ran (for LSQ-ML, its step terms too)
    assert counted.get("kernel", 0) > 0 and "multislice_part" in called
    assert ("lsqml_terms_multi_part" in called) == (engine == "lsqml")
    n_kernel = counted.get("calls", 0) + counted["kernel"]
    counted.clear()
    monkeypatch.setattr(host_fft, "kernel_fft_plans", lambda m, n, dtype: None)  # every compiled path off
    plain, loss_p = _run(engine, True, monkeypatch, modes, noise_model, mask, False, 4, extra, **run)
    tail = engine == "gradient" and (extra or {}).get("refine", {}).get("probe", True)  # as the single-slice test
    assert "kernel" not in counted and counted["calls"] + (2 * modes if tail else 0) == n_kernel
    _close(kernel.object, plain.object)
    _close(kernel.probe, plain.probe)
    np.testing.assert_allclose(loss_k, loss_p, rtol=1e-4)
    assert not np.array_equal(kernel.object, plain.object * 0)  # a real run


@pytest.mark.parametrize("parts", [1, 2])
def test_reused_part_buffers_do_not_leak_into_momentum(parts, monkeypatch):
    """The compiled parts write their sums into buffers reused group after group
    (``common.Scratch``); SGD's momentum keeps the first gradient it sees. With one part that
    gradient is such a buffer itself: the run must equal the array path's all the same."""
    _on_fftw_kernels(monkeypatch)
    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)
    monkeypatch.setattr(common, "n_parts", lambda ctx, b, e=1: min(parts, b))
    monkeypatch.setattr(common, "group_region", lambda *a: None)  # the step then takes the part's sum itself
    extra = {"optimizer": "sgd", "momentum": 0.9, "learning_rate": {"object": 1e-5, "probe": 1e-5}}
    kernel, loss_k = _run("gradient", True, monkeypatch, group=4, extra=extra)
    monkeypatch.setattr(host_fft, "kernel_fft_plans", lambda m, n, dtype: None)  # every compiled path off
    plain, loss_p = _run("gradient", True, monkeypatch, group=4, extra=extra)
    _close(kernel.object, plain.object)
    _close(kernel.probe, plain.probe)
    np.testing.assert_allclose(loss_k, loss_p, rtol=1e-4)


def test_compiled_paths_call_the_kernels_with_single_precision_scalars(monkeypatch, tmp_path):
    """A scalar like ``2 * s2`` in a kernel that calls another is float64 in Numba: the far
    field then ran in double precision inside the compiled part (283 vs 192 us per 128²
    position). Every compiled signature of the called kernels keeps float32 scalars.

    A callee's signatures are only seen when its caller is compiled in this process, not
    loaded from the on-disk cache, and other tests add their own double-precision calls;
    so the check runs in a fresh process with an empty kernel cache."""
    import os
    import subprocess
    import sys

    if os.environ.get("PTYCLI_TEST_FRESH_KERNELS") != "1":
        env = {**os.environ, "PTYCLI_TEST_FRESH_KERNELS": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                               f"{__file__}::test_compiled_paths_call_the_kernels_with_single_precision_scalars"],
                              capture_output=True, text=True, env=env, cwd=os.path.dirname(__file__), check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        return
    _on_fftw_kernels(monkeypatch)
    from ptycli import _kernels

    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)
    _run("gradient", True, monkeypatch, group=4)
    _run("epie", True, monkeypatch, group=1)
    # (ramp_multiply, once called from the parts too, is now called from Python only, with
    # k.real_scalar's float32)
    scalars = {"farfield": slice(4, 8), "epie_single": slice(5, 7)}
    for name, where in scalars.items():
        sigs = getattr(_kernels, name).signatures
        assert sigs, name
        for sig in sigs:
            assert all(str(t) == "float32" for t in sig[where]), (name, sig[where])


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimiser_step_with_a_second_part_equals_the_step_with_their_sum(kernels, optimizer):
    """``step(..., more=g2)`` (the fused Adam kernel reads both parts) is the step for g1 + g2,
    and the moments live on in the optimiser's own arrays (a checkpoint's copy does not move)."""
    from ptycli.engines.optimizers import SGD, Adam

    backend.set_kernels(kernels)
    try:
        z0 = _rng_c((1, 1, 40, 30), 3)
        parts = [(_rng_c(z0.shape, 4 + 2 * i), _rng_c(z0.shape, 5 + 2 * i)) for i in range(3)]
        make = (lambda: Adam()) if optimizer == "adam" else (lambda: SGD(momentum=0.5))
        split, summed = make(), make()
        z_s, z_t = z0.copy(), z0.copy()
        for g1, g2 in parts:
            z_s = split.step("object", z_s, g1, 1e-2, more=g2)
            z_t = summed.step("object", z_t, g1 + g2, 1e-2)
        _close(z_s, z_t, 1e-5)
        if optimizer == "adam":
            saved = split.state_dict()
            m_saved = saved["object/m"].copy()
            split.step("object", z_s, parts[0][0], 1e-2, more=parts[0][1])
            np.testing.assert_array_equal(saved["object/m"], m_saved)
    finally:
        backend.set_kernels(True)


def test_kernel_fft_plans_only_for_fftw_complex64_and_aligned_planes(monkeypatch):
    """Compiled kernels get FFTW plans only where every plane of their buffers is aligned as
    planned and the host FFTs are FFTW's; elsewhere the array code runs (None)."""
    pytest.importorskip("pyfftw")
    monkeypatch.setattr(host_fft, "_fft_library", "pyfftw")
    plans = host_fft.kernel_fft_plans(32, 32, np.complex64)
    if plans is None:
        pytest.skip("pyFFTW's FFTW library is not reachable from kernels here")
    assert all(isinstance(v, int) and v for v in plans) and plans[1] != plans[2]
    assert host_fft.kernel_fft_plans(32, 32, np.complex128) is None
    assert host_fft.kernel_fft_plans(33, 33, np.complex64) is None  # 33² x 8 bytes: planes not 64-byte aligned
    monkeypatch.setattr(host_fft, "_fft_library", "scipy")
    assert host_fft.kernel_fft_plans(32, 32, np.complex64) is None
