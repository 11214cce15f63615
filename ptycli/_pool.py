"""Host threads for the parts of a group (``backend.map_parts``) that start within microseconds.

Why: a group is split into parts that run concurrently on the host's cores, 1-3 times per
group in every engine, and a gradient-engine group lasts ~3 ms. With a
``ThreadPoolExecutor`` the second part's compiled kernel started ~200 us after the first
one's and the results came back ~100 us after the last kernel ended (measured on the
benchmark machine). Two causes: a thread asleep (on a queue, or on Python's lock while
another thread holds it) wakes ~85 us after it is signalled there; and every part first runs
~40 us of Python, during which the other threads cannot.

So here:
- an idle worker waits by spinning on a flag in compiled code without Python's lock, for a
  few milliseconds (the serial work between two parallel phases), and only then sleeps;
- every flag a waiting thread watches is written from compiled code, i.e. after the writer
  has let go of Python's lock: the waiter then takes the lock at once;
- with ``staggered``, the caller lets the workers run their Python first: it waits until each
  has called ``entering()`` (just before its kernel, which releases the lock), then runs its
  own part. The parts' kernels then start within ~50 us of each other.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import numpy as np

#: how long an idle thread spins before it sleeps: covers the serial work between the
#: parallel phases of a group (optimiser steps, Python) in every engine
SPIN_S = 0.003
#: with ``staggered``: the longest the caller waits for a worker to reach its kernel (a
#: part without a kernel never does), and the margin it then leaves for the worker's
#: call into the kernel to let go of Python's lock
ENTER_WAIT_S = 0.0003
ENTER_MARGIN_S = 0.00001

_LINE = 8  # int64 per 64-byte cache line: each flag on a line of its own
_local = threading.local()


def entering() -> None:
    """Called by a part right before its compiled kernel: tells a caller waiting with
    ``staggered`` that this worker is about to let go of Python's lock."""
    hook = getattr(_local, "entering", None)
    if hook is not None:
        hook()


class SpinPool:
    """``workers`` threads named ``name``-i that run parts handed to them by ``run``."""

    def __init__(self, workers: int, name: str, kernels: Any):
        self.k = kernels
        self.n = workers
        # go: the generation of work handed out; entered[i], done[i]: the last generation
        # worker i reached its kernel in / finished
        self._flags = np.zeros((2 + 2 * workers) * _LINE, dtype=np.int64)
        self._gen = 0
        self._tasks: list[Any] = [None] * workers
        self._results: list[Any] = [None] * workers
        self._cond = threading.Condition()
        self._sleepers = 0  # workers asleep on the condition
        self._caller_sleeps = False
        self._busy = threading.Lock()
        # did the workers' parts call entering() in the last staggered run? A part that has
        # no kernel never does, and waiting for it would only cost time
        self._entries_seen = True
        self.spins = _spins_for(kernels, SPIN_S)
        self.enter_spins = max(1, int(self.spins * ENTER_WAIT_S / SPIN_S))
        self.margin_spins = max(1, int(self.spins * ENTER_MARGIN_S / SPIN_S))
        for i in range(workers):
            threading.Thread(target=self._serve, args=(i,), name=f"{name}-{i}", daemon=True).start()

    # flag i of the array: go is 0, entered[i] is 1 + i, done[i] is 1 + workers + i
    def _addr(self, slot: int) -> int:
        return self._flags.ctypes.data + slot * _LINE * 8

    def _get(self, slot: int) -> int:
        return int(self._flags[slot * _LINE])

    def _serve(self, i: int) -> None:
        seen, done_addr = 0, 0
        entered, done = 1 + i, 1 + self.n + i

        def enter() -> None:
            self._flags[entered * _LINE] = seen

        while True:
            # the previous task's done flag is stored in here, after Python's lock is released
            if not self.k.spin_until(self._addr(0), seen + 1, self.spins, done_addr, seen):
                with self._cond:
                    self._sleepers += 1
                    while self._get(0) < seen + 1:
                        self._cond.wait()
                    self._sleepers -= 1
            seen = self._get(0)
            task, self._tasks[i] = self._tasks[i], None
            done_addr = self._addr(done)
            if task is None:  # this generation has fewer parts than workers
                continue
            fn, arg = task
            _local.entering = enter
            try:
                self._results[i] = (True, fn(arg))
            except BaseException as err:  # handed to the caller, which raises it
                self._results[i] = (False, err)
            finally:
                _local.entering = None
            if self._caller_sleeps:  # it waits on the condition: store and wake it here
                with self._cond:
                    self._flags[done * _LINE] = seen
                    self._cond.notify_all()

    def run(self, fn: Callable[[Any], Any], args: list[Any], staggered: bool = False) -> list[Any] | None:
        """[fn(a) for a in args], the first on the calling thread and the others on workers;
        None when the pool is busy with another caller's parts (the caller runs them itself)."""
        if len(args) - 1 > self.n or not self._busy.acquire(blocking=False):
            return None
        try:
            rest = args[1:]
            for i in range(self.n):
                self._tasks[i] = (fn, rest[i]) if i < len(rest) else None
            self._gen += 1
            gen = self._gen
            k = self.k
            # go is stored in compiled code: a spinning worker then finds Python's lock free
            staggered = staggered and bool(rest)
            first_wait = self.enter_spins if staggered and self._entries_seen else 0
            k.spin_until(self._addr(1), gen, first_wait, self._addr(0), gen)
            if self._sleepers:
                with self._cond:  # after the store: a worker going to sleep sees go or is woken
                    self._cond.notify_all()
            if staggered and self._entries_seen:
                for i in range(1, len(rest)):
                    k.spin_until(self._addr(1 + i), gen, self.enter_spins, 0, 0)
                k.spin_until(self._addr(0), gen + 1, self.margin_spins, 0, 0)  # never true: a pause
            try:
                first = fn(args[0])
            finally:  # no part outlives the call, also when the first one raised
                for i in range(len(rest)):
                    self._wait_done(1 + self.n + i, gen)
                results, self._results = self._results[:len(rest)], [None] * self.n
                if staggered:
                    self._entries_seen = all(self._get(1 + i) >= gen for i in range(len(rest)))
            for ok, value in results:
                if not ok:
                    raise value
            return [first, *(value for _, value in results)]
        finally:
            self._busy.release()

    def _wait_done(self, slot: int, gen: int) -> None:
        if self.k.spin_until(self._addr(slot), gen, self.spins, 0, 0):
            return
        with self._cond:
            self._caller_sleeps = True
            try:
                # the timeout: a worker that checked _caller_sleeps just before it was set
                # stores its flag without a notify
                while self._get(slot) < gen:
                    self._cond.wait(0.001)
            finally:
                self._caller_sleeps = False


def _spins_for(kernels: Any, seconds: float) -> int:
    """Spin tries that take about ``seconds`` on this machine (timed once)."""
    flag = np.zeros(_LINE, dtype=np.int64)
    tries = 20000
    kernels.spin_until(flag.ctypes.data, 1, 10, 0, 0)  # compiled or loaded before the timing
    t = time.perf_counter()
    kernels.spin_until(flag.ctypes.data, 1, tries, 0, 0)
    per_try = max((time.perf_counter() - t) / tries, 1e-9)
    return max(1000, int(seconds / per_try))


_pools: dict[int, SpinPool] = {}
_pools_lock = threading.Lock()


def pool(workers: int, name: str, kernels: Any) -> SpinPool:
    """The process's pool of at least ``workers`` threads (made on first use; a forked child
    makes its own, since threads do not survive a fork)."""
    with _pools_lock:
        have = _pools.get(os.getpid())
        if have is None or have.n < workers:
            # a smaller old pool's threads stay asleep on their condition: nothing hands
            # them work again
            have = _pools[os.getpid()] = SpinPool(workers, name, kernels)
        return have
