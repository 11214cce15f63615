"""The host threads of a group's parts (ptycli/parallel.py, a standard thread pool): parts in
order, kernels that must run together, a tail that waits for the parts; and the compiled
wait the gradient engine's probe tail is joined with (``spin_until``)."""

import threading
import time

import numpy as np
import pytest

from ptycli import backend, host_fft, parallel

k = backend.kernels(np)
pytestmark = pytest.mark.skipif(k is None, reason="needs Numba")


def test_spin_until_sees_a_value_stored_by_another_thread_and_stores_its_own():
    flags = np.zeros(16, dtype=np.int64)
    assert not k.spin_until(flags.ctypes.data, 1, 1000, 0, 0)  # gives up after its tries
    assert k.spin_until(flags.ctypes.data, 0, 1, flags.ctypes.data + 64, 7)  # "at least": 0 >= 0
    assert flags[8] == 7  # stored before it waited
    threading.Timer(0.01, lambda: flags.__setitem__(0, 3)).start()
    assert k.spin_until(flags.ctypes.data, 2, 10**9, 0, 0)  # 3 >= 2: seen, long before the tries run out


def test_map_parts_runs_parts_on_other_threads_in_order_and_raises_their_errors():
    where = {}

    def fn(x):
        where.setdefault(x, set()).add(threading.current_thread().name.split("_")[0])
        if x == "bad":
            raise ValueError("part bad failed")
        return x * 2

    for _ in range(20):  # back to back, as groups run
        assert parallel.map_parts(fn, [1, 2, 3]) == [2, 4, 6]
    assert where[1] == {threading.current_thread().name.split("_")[0]}  # the first part: the caller
    assert where[2] == where[3] == {parallel._PART_THREAD}
    with pytest.raises(ValueError, match="part bad"):
        parallel.map_parts(fn, [1, "bad"])
    assert parallel.map_parts(fn, [5, 6]) == [10, 12]  # still usable after an error


def test_together_launches_run_at_once_or_not_at_all():
    """Kernels that wait for one another need a thread each: while another caller's launches
    hold the pool, ``together`` gives None (the caller's step-by-step path) instead of a wait
    that would never end."""
    count = k.counters(8)

    def part(i, addr, value):
        count[0] += 1
        deadline = time.time() + 10
        while count[0] < 2 and time.time() < deadline:  # a barrier: both must be running
            time.sleep(0.001)
        return int(count[0])

    def prepare(i):
        return parallel.Launch(part, (i,), lambda r: r)

    assert parallel.map_launches(prepare, [0, 1], together=True) == [2, 2]
    with parallel._busy:
        assert parallel.map_launches(prepare, [0, 1], together=True) is None


def test_map_launches_finishes_every_part_on_the_caller_or_gives_way():
    def kernel(x, out, addr, value):
        out[0] = x * x
        return x

    def prepare(x):
        if x is None:
            return None
        out = np.zeros(1)
        return parallel.Launch(kernel, (x, out), lambda r: (r, float(out[0]), threading.current_thread().name))

    got = parallel.map_launches(prepare, [2, 3])
    assert [g[:2] for g in got] == [(2, 4.0), (3, 9.0)]
    assert {g[2] for g in got} == {threading.current_thread().name}  # finish runs on the caller
    assert parallel.map_launches(prepare, [2, None]) is None  # a part without a launch: the caller's general path


def test_a_failing_part_cancels_the_tail_that_waits_for_it():
    """The caller's own part fails before its kernel ran: ``cancel`` must release the tail on
    the worker (which waits for every part), or the call would never return."""
    import concurrent.futures

    count = k.counters(16)

    def part(x, addr, value):
        if x == "bad":
            raise ValueError("part bad failed")
        count[0] += 1
        return x

    def tail_kernel():
        while not k.spin_until(count.ctypes.data, 2, 10_000, 0, 0):
            pass
        count[8] = 2 if count[0] > 2 else 1

    def prepare(x):
        return parallel.Launch(part, (x,), lambda r: r)

    def cancel():
        count[0] = 3

    def tail():
        return (tail_kernel, ()), cancel, lambda: k.spin_until(count.ctypes.data + 64, 1, 10**9, 0, 0)

    guard = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with pytest.raises(ValueError, match="part bad"):
            guard.submit(parallel.map_launches, prepare, ["bad", "good"], tail).result(timeout=30)
    finally:
        guard.shutdown(wait=False)
    deadline = time.time() + 10
    while count[8] == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert count[8] == 2  # the tail saw the cancel and did nothing


def test_probe_tail_steps_the_summed_gradient_or_does_nothing_when_cancelled(monkeypatch):
    from ptycli.engines.optimizers import Adam

    pytest.importorskip("pyfftw")
    monkeypatch.setattr(host_fft, "_fft_library", "pyfftw")
    plans = host_fft.kernel_fft_plans(8, 8, np.complex64)
    if plans is None:
        pytest.skip("pyFFTW's FFTW library is not reachable from kernels here")
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((1, 8, 8)) + 1j * rng.standard_normal((1, 8, 8))).astype(np.complex64)
    grads_k = k.empty((2, 1, 8, 8), np.complex64, aligned=True)
    grads_k[...] = rng.standard_normal(grads_k.shape) + 1j * rng.standard_normal(grads_k.shape)
    g = backend.ifft2(grads_k[0] + grads_k[1])  # the gradient the tail forms
    expect = Adam().step("probe", z, g, 1e-2)
    opt = Adam()
    args, commit = opt.kernel_step("probe", z, 1e-2)
    count, spectrum = k.counters(16), k.empty(z.shape, z.dtype, aligned=True)
    s = k.real_scalar(backend.unitary_scale((8, 8)), z)
    count[0] = 3  # cancelled (above the 2 parts)
    before = grads_k.copy()
    assert not k.probe_tail(count.ctypes.data, 2, count.ctypes.data + 64, *plans, grads_k, s, *args, spectrum)
    assert count[8] == 2 and np.array_equal(grads_k, before) and not opt.slots  # nothing moved
    count[0] = 2  # both parts done
    assert k.probe_tail(count.ctypes.data, 2, count.ctypes.data + 64, *plans, grads_k, s, *args, spectrum)
    commit()
    assert count[8] == 1 and opt.slots["probe"]["t"] == 1
    np.testing.assert_allclose(args[-1], expect, rtol=0, atol=1e-5)
    np.testing.assert_allclose(spectrum, backend.fft2(args[-1]), rtol=0, atol=1e-5)
