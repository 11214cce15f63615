"""The host thread pool of the parts (ptycli/_pool.py): workers that wait spinning in
compiled code, then asleep; kernels that signal their start (``run_kernels``)."""

import threading
import time

import numpy as np
import pytest

from ptycli import _pool, backend, host_fft, parallel

k = backend.kernels(np)
pytestmark = pytest.mark.skipif(k is None, reason="needs Numba")


def test_spin_until_sees_a_value_stored_by_another_thread_and_stores_its_own():
    flags = np.zeros(16, dtype=np.int64)
    assert not k.spin_until(flags.ctypes.data, 1, 1000, 0, 0)  # gives up after its tries
    assert k.spin_until(flags.ctypes.data, 0, 1, flags.ctypes.data + 64, 7)  # "at least": 0 >= 0
    assert flags[8] == 7  # stored before it waited
    threading.Timer(0.01, lambda: flags.__setitem__(0, 3)).start()
    assert k.spin_until(flags.ctypes.data, 2, 10**9, 0, 0)  # 3 >= 2: seen, long before the tries run out


def test_pool_runs_parts_on_other_threads_in_order_and_raises_their_errors():
    pool = _pool.SpinPool(2, "test-part", k)
    where = {}

    def fn(x):
        where.setdefault(x, set()).add(threading.current_thread().name)
        if x == "bad":
            raise ValueError("part bad failed")
        return x * 2

    for _ in range(20):  # back to back, as groups run
        assert pool.run(fn, [1, 2, 3]) == [2, 4, 6]
    assert where == {1: {threading.current_thread().name}, 2: {"test-part-0"}, 3: {"test-part-1"}}
    with pytest.raises(ValueError, match="part bad"):
        pool.run(fn, [1, "bad"])
    assert pool.run(fn, [5, 6]) == [10, 12]  # fewer parts than workers; still usable after an error


def test_pool_wakes_workers_that_fell_asleep_and_waits_for_long_parts(monkeypatch):
    monkeypatch.setattr(_pool, "SPIN_S", 1e-4)
    pool = _pool.SpinPool(1, "test-sleepy", k)
    pool.spins = 100  # spin briefly: every wait below ends asleep on the condition
    assert pool.run(lambda x: x + 1, [1, 2]) == [2, 3]
    time.sleep(0.05)  # the worker now sleeps
    assert pool._sleepers == 1
    slow = pool.run(lambda x: time.sleep(0.05) or x, ["caller", "worker"])  # the caller sleeps too
    assert slow == ["caller", "worker"]


def test_run_kernels_starts_the_callers_kernel_once_the_workers_kernel_signalled():
    """Each kernel stores its signal as it starts (here: the spin kernel's store); the
    caller's own call comes after every worker's signal, so its start time is later."""
    pool = _pool.SpinPool(1, "test-kernels", k)
    pool.enter_spins = pool.spins * 300  # ~1 s: on a loaded machine too, the caller waits for the signal
    flag = np.zeros(8, dtype=np.int64)
    started = {}

    def kernel(name, addr, value):
        started[name] = time.perf_counter()
        # the compiled call: stores the signal, then waits a little (never true: 0 >= 1)
        k.spin_until(flag.ctypes.data, 1, 20000, addr, value)
        return name

    for _ in range(10):
        assert pool.run_kernels([(kernel, ("caller",)), (kernel, ("worker",))]) == ["caller", "worker"]
        assert started["worker"] <= started["caller"]


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
