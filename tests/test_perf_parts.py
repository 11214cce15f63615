"""Groups split into parallel parts (parallel.map_parts): the same update as one thread.

Oracle: a run with PTYCLI_THREADS=1 (the whole group in one pass). Splitting only changes
the order of float32 sums, so states agree to float32 rounding (rtol 1e-4 of the largest
value after two iterations), and two threaded runs agree bit for bit (fixed part order).
"""

import threading

import numpy as np
import pytest
from test_perf_structure import _patterns, _run, _state

from ptycli import backend, host_fft, parallel
from ptycli.engines import common


def _final(engine, threads, monkeypatch, slices=1, modes=1, noise="amplitude", positions=False):
    monkeypatch.setenv("PTYCLI_THREADS", str(threads))
    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)  # split even these tiny groups
    calls = []
    real_map = parallel.map_parts
    monkeypatch.setattr(parallel, "map_parts",
                        lambda fn, parts, **kw: calls.append(len(parts)) or real_map(fn, parts, **kw))
    state = _state(slices=slices, modes=modes, scan=(4, 4))
    refine = {"object": True, "probe": True, "positions": positions}
    out = _run(engine, state, _patterns(state), iterations=2, group=16, refine=refine, noise={"model": noise})
    assert calls and set(calls) == {threads}  # every group ran as ``threads`` parts
    return out


def _close(a, b, rtol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    scale = float(np.max(np.abs(a)))
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("engine,slices,modes,noise,positions", [
    ("lsqml", 1, 1, "amplitude", True),
    ("lsqml", 2, 2, "poisson", False),
    ("lsqml", 1, 2, "amplitude", False),
    ("gradient", 1, 1, "amplitude", True),
    ("gradient", 2, 2, "amplitude", False),
])
def test_parts_match_one_thread(engine, slices, modes, noise, positions, monkeypatch):
    one = _final(engine, 1, monkeypatch, slices, modes, noise, positions)
    two = _final(engine, 2, monkeypatch, slices, modes, noise, positions)
    _close(one.object, two.object)
    _close(one.probe, two.probe)
    np.testing.assert_allclose(one.positions, two.positions, rtol=0, atol=1e-4)
    if positions:  # the parts' position terms were applied: positions moved
        assert np.abs(one.positions - one.positions_initial).max() > 0
    again = _final(engine, 2, monkeypatch, slices, modes, noise, positions)
    np.testing.assert_array_equal(again.object, two.object)  # deterministic for a seed
    np.testing.assert_array_equal(again.probe, two.probe)


def test_split_batch_covers_the_group_in_order():
    b = common.Batch(idx=np.arange(7), y0=np.arange(7), x0=np.arange(7) * 2, frac=np.zeros((7, 2)),
                     source=np.arange(7 * 4).reshape(7, 2, 2), H=np.ones((7, 2, 2)))
    parts = common.split_batch(b, 3)
    assert [len(p.idx) for p in parts] == [2, 2, 3]
    np.testing.assert_array_equal(np.concatenate([p.x0 for p in parts]), b.x0)
    np.testing.assert_array_equal(np.concatenate([p.data for p in parts]), b.data)
    assert all(p.H.shape[0] == len(p.idx) for p in parts)


def test_n_parts_follows_threads_and_part_size(monkeypatch):
    ctx = common.RunContext(xp=np, real_dtype=np.float32, complex_dtype=np.complex64)
    monkeypatch.setenv("PTYCLI_THREADS", "2")
    assert common.n_parts(ctx, 32, 128 * 128) == 2  # lsqml, case A: parts of 16 x 128²
    assert common.n_parts(ctx, 16, 128 * 128) == 2  # gradient, case A: parts of 8 x 128² (fused kernels)
    assert common.n_parts(ctx, 32, 64 * 64) == 2  # lsqml at 64²: parts of 16 x 64²
    assert common.n_parts(ctx, 16, 64 * 64) == 1  # parts of 8 x 64² are below the threshold
    assert common.n_parts(ctx, 16, 4 * 128 * 128) == 2  # 4 probe modes
    assert common.n_parts(ctx, 1, 2**20) == 1  # sequential ePIE never pays for a thread
    monkeypatch.setenv("PTYCLI_THREADS", "1")
    assert common.n_parts(ctx, 32, 128 * 128) == 1


def test_map_parts_runs_concurrently_in_order_and_single_threaded_ffts(monkeypatch):
    seen = []

    def fn(k):
        seen.append((k, threading.get_ident(), getattr(host_fft._local, "fft_workers", None)))
        return backend.fft2(np.full((2, 8, 8), k, dtype=np.complex64))

    out = parallel.map_parts(fn, [1, 2])
    assert [float(o[0, 0, 0].real) for o in out] == [8.0, 16.0]  # unitary DC of a constant 8x8
    assert {w for _, _, w in seen} == {1}
    assert len({t for _, t, _ in seen}) == 2
    assert getattr(host_fft._local, "fft_workers", None) is None  # restored in the caller


def test_parts_that_map_parts_again_run_the_inner_parts_themselves():
    """Every pool thread is busy with an outer part: an inner map that waited on the pool
    from inside one of them would never return (run with a timeout to fail, not hang)."""
    import concurrent.futures

    inner_threads = []

    def inner(q):
        inner_threads.append(threading.current_thread().name)
        return q * 10

    def outer(k):
        return sum(parallel.map_parts(inner, [k, k + 1]))

    guard = concurrent.futures.ThreadPoolExecutor(1)
    try:
        assert guard.submit(parallel.map_parts, outer, [1, 2]).result(timeout=30) == [30, 50]
    finally:
        guard.shutdown(wait=False)  # a hung map must fail the test, not hang it
    assert len(inner_threads) == 4


def test_map_parts_raises_a_parts_error():
    def fn(k):
        if k == 2:
            raise ValueError("part 2 failed")
        return k

    with pytest.raises(ValueError, match="part 2"):
        parallel.map_parts(fn, [1, 2])


def test_parts_share_one_probe_spectrum_for_that_probe_only(monkeypatch):
    monkeypatch.setenv("PTYCLI_THREADS", "2")
    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)
    state = _state(scan=(4, 4))
    ctx = common.make_context(state, np, "single", "amplitude", None)
    engine = common.EngineBase(None, ctx, state)
    batch = common.make_batch(state, np.arange(8), np.ones((8, 32, 32), np.float32), ctx)
    parts = engine.parts(state, batch)
    assert len(parts) == 2 and parts[0].probe_spectrum is parts[1].probe_spectrum
    np.testing.assert_array_equal(parts[0].spectrum_of(state.probe), backend.fft2(state.probe))
    assert parts[0].spectrum_of(state.probe.copy()) is None  # another array (an updated probe): no reuse


def test_lsqml_carries_the_probe_spectrum_between_groups(monkeypatch):
    """The spectrum carried from group to group (F[P] + α F[ΔP]) stays the probe's FFT."""
    from ptycli.engines import lsqml

    monkeypatch.setenv("PTYCLI_THREADS", "2")
    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)
    made = []
    real_init = lsqml.LsqmlEngine.__init__
    monkeypatch.setattr(lsqml.LsqmlEngine, "__init__", lambda self, *a: made.append(self) or real_init(self, *a))
    state = _state(scan=(4, 4))
    patterns = _patterns(state)
    computed = []
    real_fft2 = backend.fft2
    monkeypatch.setattr(backend, "fft2", lambda x, **kw: computed.append(x.shape) or real_fft2(x, **kw))
    out = _run("lsqml", state, patterns, iterations=2, group=4, refine={"object": True, "probe": True})
    assert computed.count(out.probe.shape) == 2  # the probe's own transform: once per iteration, not per group
    probe, spectrum, it = made[0]._carried
    assert probe is out.probe and it == 1
    np.testing.assert_allclose(spectrum, real_fft2(out.probe), rtol=0, atol=1e-4 * float(np.abs(spectrum).max()))


def test_gradient_engine_keeps_the_probe_spectrum_while_the_probe_stays(monkeypatch):
    """Before the probe is refined, every group of an iteration shifts the same probe: its
    transform is made once per iteration, not once per group; once refined, once per group."""
    monkeypatch.setenv("PTYCLI_THREADS", "2")
    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)
    state = _state(scan=(4, 4))
    patterns = _patterns(state)
    computed = []
    real_fft2 = backend.fft2
    monkeypatch.setattr(backend, "fft2", lambda x, **kw: computed.append(x.shape) or real_fft2(x, **kw))
    _run("gradient", state, patterns, iterations=2, group=4, refine={"object": True, "probe": False})
    assert computed.count(state.probe.shape) == 2
    computed.clear()
    _run("gradient", state, patterns, iterations=2, group=4, refine={"object": True, "probe": True})
    assert computed.count(state.probe.shape) == 2 * 4
