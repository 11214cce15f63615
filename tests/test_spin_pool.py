"""The host thread pool of the parts (ptycli/_pool.py): workers that wait spinning in
compiled code, then asleep; kernels that signal their start (``run_kernels``)."""

import threading
import time

import numpy as np
import pytest

from ptycli import _pool, backend

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
        return backend.Launch(kernel, (x, out), lambda r: (r, float(out[0]), threading.current_thread().name))

    got = backend.map_launches(prepare, [2, 3])
    assert [g[:2] for g in got] == [(2, 4.0), (3, 9.0)]
    assert {g[2] for g in got} == {threading.current_thread().name}  # finish runs on the caller
    assert backend.map_launches(prepare, [2, None]) is None  # a part without a launch: the caller's general path
