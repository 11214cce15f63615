"""Performance structure (issue 8), not timings: single precision throughout, no host
synchronisation per group, FFT plan cache, memory estimate, prefetching data source."""

import numpy as np
import pytest

from ptycli import backend, host_fft
from ptycli.engines import common, data, loop, noise
from ptycli.engines.registry import ENGINES
from ptycli.recipe import Recipe

ENGINE_NAMES = ["epie", "lsqml", "gradient"]


def _state(slices=1, modes=1, size=32, scan=(4, 4)):
    from ptycli.physics import probe as probe_mod
    from ptycli.physics import scan as scan_mod
    from ptycli.store.state import State

    dx_a = 0.3
    p0 = probe_mod.make_probe((size, size), dx_a, 300e3, 20.0, {"C10": -50.0}, counts=1e4)
    probe = probe_mod.init_modes(p0, modes) if modes > 1 else p0[None]
    iy, ix = np.meshgrid(np.arange(scan[0]), np.arange(scan[1]), indexing="ij")
    pos_a = np.stack([iy.ravel(), ix.ravel()], axis=1).astype(np.float64) * 1.1  # sub-pixel steps
    origin = scan_mod.origin_px(pos_a, dx_a, (size, size))
    pos = scan_mod.to_pixels(pos_a, dx_a, origin)
    h, w = scan_mod.object_shape(pos, (size, size))
    rng = np.random.default_rng(0)
    obj = np.exp(1j * 0.05 * rng.standard_normal((1, slices, h, w))).astype(np.complex64)
    return State(probe=probe.astype(np.complex64), object=obj, positions=pos, dx_a=dx_a, energy_kev=300.0,
                 slice_thickness=np.full(slices, 5.0), positions_initial=pos.copy(), semiangle_mrad=20.0,
                 aberrations={"C10": -50.0})


def _patterns(state):
    far = backend.fft2(state.probe)
    far = (far.real**2 + far.imag**2).sum(axis=0).astype(np.float32)
    rng = np.random.default_rng(1)
    return (far * rng.uniform(0.8, 1.2, size=(len(state.positions), *far.shape))).astype(np.float32)


def _run(engine, state, patterns, iterations=1, group=4, observers=(), **over):
    stage = ENGINES[engine].params(type=engine, iterations=iterations, grouping={"kind": "compact", "size": group},
                                   **over)
    recipe = Recipe(recipe="ptycli/1", stage=[stage])
    ctx = common.make_context(state, np, "single", stage.noise.model, stage.noise.eps,
                              n_e=float(patterns.sum(axis=(-2, -1)).mean()))
    hooks = loop.RunHooks(read_batch=lambda idx, _s: patterns[idx],
                          make_engine=lambda params, st: ENGINES[engine].engine(params, ctx, st),
                          apply_constraints=lambda st, _s, _it: st, observers=list(observers))
    return loop.run(recipe, state, np.arange(len(patterns)), 0, hooks)[0]


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("slices,modes", [(1, 1), (2, 2)])
@pytest.mark.parametrize("kernels", [True, False])
def test_one_iteration_stays_single_precision(engine, slices, modes, kernels, monkeypatch):
    """Every state array and every batch-sized array of the hot path is float32/complex64,
    with the fused CPU kernels and with the array-API code (what CuPy runs).

    Batch-sized complex arrays all pass through the FFT, so the FFT seam sees any upcast;
    the forward cache and the far-field gradient are checked directly.
    """
    if kernels and backend.kernels(np) is None:
        pytest.skip("Numba is not installed")
    monkeypatch.setattr(backend, "_kernels_mode", "auto" if kernels else "0")  # restored after the test
    state = _state(slices, modes)
    patterns = _patterns(state)
    seen, fwd_seen = [], []
    orig = backend._fft_call  # every transform (fft2, ifft2, fourier_multiply) goes through it
    monkeypatch.setattr(backend, "_fft_call", lambda x, *a, _f=orig: seen.append(x.dtype) or _f(x, *a))
    orig_fwd, orig_grad = common.forward, common.loss_and_grad_farfield
    monkeypatch.setattr(common, "forward", lambda *a, **k: fwd_seen.append(orig_fwd(*a, **k)) or fwd_seen[-1])
    grads, lprimes = [], []
    monkeypatch.setattr(common, "loss_and_grad_farfield",
                        lambda *a, **k: grads.append(orig_grad(*a, **k)) or grads[-1])
    orig_lp, orig_fused = noise.loss_and_dloss_dI, noise.fused_farfield
    monkeypatch.setattr(noise, "loss_and_dloss_dI", lambda *a, **k: lprimes.append(orig_lp(*a, **k)) or lprimes[-1])
    fused = []
    monkeypatch.setattr(noise, "fused_farfield", lambda *a, **k: fused.append(orig_fused(*a, **k)) or fused[-1])
    out = _run(engine, state, patterns, refine={"probe": True, "positions": True})
    assert out.probe.dtype == np.complex64 and out.object.dtype == np.complex64
    assert seen and set(seen) == {np.dtype(np.complex64)}, set(seen)
    assert fwd_seen and (fused if kernels else lprimes)
    if kernels:  # the fused far-field kernel: loss and the scaled wave
        assert fused and all(f[0].dtype == np.float32 and f[1].dtype == np.complex64 for f in fused)
    for fwd in fwd_seen:
        assert fwd.psi1.dtype == fwd.patches.dtype == fwd.Psi.dtype == np.complex64
        assert fwd.I.dtype == np.float32
        assert all(p.dtype == np.complex64 for p in fwd.cache.psi)
    for loss, g in grads:
        assert loss.dtype == np.float32 and g.dtype == np.complex64
    for loss, lp in lprimes:
        assert loss.dtype == np.float32 and lp.dtype == np.float32


@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_host_transfers_do_not_grow_with_groups(engine, monkeypatch):
    """to_numpy calls per iteration: exactly one (the loss, kept on the device and read once
    by the loop), whether the iteration has 1 group or 8; position refinement adds at most
    one per group (positions live on the host for grouping)."""
    calls = []
    orig = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda x: calls.append(1) or orig(x))
    patterns = _patterns(_state())

    def last_iteration(group, **over):
        calls.clear()
        marks = []
        _run(engine, _state(), patterns, iterations=2, group=group, observers=[_Marker(calls, marks)], **over)
        return marks[1] - marks[0]  # the engine's construction may read scalars before iteration 0

    refine = {"probe": True}
    assert last_iteration(16, refine=refine) == 1
    assert last_iteration(2, refine=refine) == 1
    assert last_iteration(2, refine={"probe": True, "positions": True}) <= 1 + 8


class _Marker:
    def __init__(self, calls, out):
        self.calls, self.out = calls, out

    def on_iteration_end(self, *args):
        self.out.append(len(self.calls))


def test_fftw_plan_cache_reuses_plans_and_matches_numpy(monkeypatch):
    pytest.importorskip("pyfftw")
    from ptycli import _fftw

    monkeypatch.setattr(host_fft, "_fft_library", "pyfftw")
    _fftw.clear_plans()
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(3, 2, 24, 20)) + 1j * rng.normal(size=(3, 2, 24, 20))).astype(np.complex64)
    for _ in range(3):
        f = backend.fft2(x)
        np.testing.assert_allclose(f, np.fft.fft2(x, norm="ortho"), rtol=0, atol=2e-5)
        np.testing.assert_allclose(backend.ifft2(f), x, rtol=0, atol=2e-5)
    plans = _fftw.plan_info()
    assert len(plans) == 2  # one forward, one inverse: the batch (3x2) is flattened, reused
    assert {p["shape"] for p in plans} == {(6, 24, 20)}
    # misaligned and non-contiguous inputs are copied, never written to
    y = x[:, :, ::1, :][..., 1:, :]
    y0 = y.copy()
    np.testing.assert_allclose(backend.fft2(y), np.fft.fft2(y0, norm="ortho"), atol=2e-5)
    np.testing.assert_array_equal(y, y0)
    # the returned arrays are fresh: a later call does not overwrite an earlier result
    a = backend.fft2(x)
    a0 = a.copy()
    backend.fft2(np.zeros_like(x))
    np.testing.assert_array_equal(a, a0)
    # real input and float64 keep their precision class
    assert backend.fft2(x.real).dtype == np.complex64
    assert backend.fft2(x.astype(np.complex128)).dtype == np.complex128


def test_fftw_plans_are_repeatable_and_threaded_by_size(monkeypatch):
    """A plan made again in the same process takes FFTW's recorded choice (wisdom), not a new
    timing, so the same input gives bit-identical output after the plan cache is rebuilt;
    threads follow the size."""
    pytest.importorskip("pyfftw")
    from ptycli import _fftw

    monkeypatch.setattr(host_fft, "_fft_library", "pyfftw")
    monkeypatch.delenv("PTYCLI_FFTW_PLANNER", raising=False)
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(16, 64, 64)) + 1j * rng.normal(size=(16, 64, 64))).astype(np.complex64)
    _fftw.clear_plans()
    first = backend.fft2(x)
    _fftw.clear_plans()
    np.testing.assert_array_equal(backend.fft2(x), first)
    small = backend.fft2(x[:1])
    assert small.shape == (1, 64, 64)
    threads = {p["shape"]: p["threads"] for p in _fftw.plan_info()}
    assert threads[(1, 64, 64)] == 1  # 4096 elements: below THREADED_ELEMENTS
    assert threads[(16, 64, 64)] == host_fft._FFT_WORKERS  # 2**16 elements: every allowed thread


def test_memory_estimate_counts_modes_slices_and_picks_a_group():
    one = data.memory_estimate((64, 64))
    big = data.memory_estimate((64, 64), n_probe_modes=4, n_slices=10)
    # per position: 8 bytes x M^2 x (K (2S + 6) + 4 Q S) + 4 bytes x M^2 x 4
    assert one["per_position"] == 64 * 64 * (8 * (1 * (2 + 6) + 4) + 4 * 4)
    assert big["per_position"] == 64 * 64 * (8 * (4 * (20 + 6) + 40) + 4 * 4)
    assert data.memory_estimate((64, 64), precision="double")["per_position"] > one["per_position"]
    est = data.memory_estimate((64, 64), n_probe_modes=4, n_slices=10, object_shape=(400, 400),
                                  n_positions=4096)
    budget = est["fixed"] + est["patterns"] + 100 * est["per_position"]
    group, stream = data.auto_group_size(est, budget, 4096)
    assert not stream and group == 100
    group, stream = data.auto_group_size(est, est["fixed"] + 70 * est["per_position"], 4096)
    assert stream and 1 <= group < 70  # patterns no longer fit: streamed, in-flight frames counted
    with pytest.raises(Exception, match="memory budget"):
        data.auto_group_size(est, est["fixed"], 4096)


def test_prefetched_streaming_reads_are_identical_and_overlap(monkeypatch):
    """A background prefetch returns exactly the synchronous bytes, in order, reads each
    chunk once, and does its array reads off the calling thread."""
    import threading

    from ptycli.engines.data import PatternSource

    rng = np.random.default_rng(3)
    stack = rng.random((40, 8, 8)).astype(np.float32)
    readers = []

    class Chunked(np.ndarray):
        chunks = (5, 8, 8)

        def __getitem__(self, key):
            if isinstance(key, slice):
                readers.append(threading.current_thread().name)
            return super().__getitem__(key)

    arr = stack.view(Chunked)
    sync = PatternSource(arr, np, "float32", stream=True)
    fetched = PatternSource(arr, np, "float32", stream=True)
    groups = [np.array([3, 1, 22]), np.array([39, 0, 17, 16]), np.array([8, 9]), np.array([30, 2])]
    expected = [sync.read(g) for g in groups]
    readers.clear()
    fetched.prefetch(groups[0])
    for i, g in enumerate(groups):
        got = fetched.read_and_prefetch(g, groups[i + 1] if i + 1 < len(groups) else None)
        np.testing.assert_array_equal(got, expected[i])
        np.testing.assert_array_equal(got[0], np.fft.ifftshift(stack[g[0]]))
    fetched.close()
    touched = {int(c) for g in groups for c in g // 5}
    assert len(readers) == len(touched)  # every chunk decoded once
    assert all(name.startswith("ptycli-prefetch") for name in readers)
    # a mispredicted prefetch is absorbed into the cache, and the read is still exact
    other = PatternSource(arr, np, "float32", stream=True)
    other.prefetch(np.array([0, 1]))
    np.testing.assert_array_equal(other.read(np.array([35, 36])), np.fft.ifftshift(stack[[35, 36]], axes=(-2, -1)))
    assert 0 in other._cache and 7 in other._cache
    other.close()


def test_plan_memory_from_a_state_fits_the_budget():
    from ptycli.engines.data import plan_memory

    state = _state(slices=2, modes=2)
    est = plan_memory(state, np, budget_bytes=2**40)["estimate"]
    assert est["per_position"] == data.memory_estimate((32, 32), n_probe_modes=2, n_slices=2)["per_position"]
    roomy = plan_memory(state, np, budget_bytes=est["fixed"] + est["patterns"] + 40 * est["per_position"])
    assert roomy["group_size"] == 16 and not roomy["stream"]  # every position in one group, data resident
    budget = est["fixed"] + est["patterns"] + 5 * est["per_position"]
    tight = plan_memory(state, np, budget_bytes=budget)
    frame = est["patterns"] // 16
    assert tight["stream"] and 1 <= tight["group_size"] <= 5  # streamed, two groups of frames in flight
    assert tight["group_size"] * (est["per_position"] + 2 * frame) + est["fixed"] <= budget
    assert plan_memory(state, np)["group_size"] >= 1  # default budget: free host memory
