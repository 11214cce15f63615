"""Host threads for the parts of a group (``parallel.map_parts``) that start within microseconds.

Why: a group is split into parts that run concurrently on the host's cores, 1-3 times per
group in every engine, and a gradient-engine group lasts ~3 ms. With a
``ThreadPoolExecutor`` the second part's compiled kernel started ~200 us after the first
one's and the results came back ~100 us after the last kernel ended (measured on the
benchmark machine). Two causes: a thread asleep (on a queue, or on Python's lock while
another thread holds it) wakes ~85 us after it is signalled there; and every part first runs
~40-120 us of Python, during which the other threads cannot.

So here:
- an idle worker waits by spinning on a flag in compiled code without Python's lock, for a
  few milliseconds (the serial work between two parallel phases), and only then sleeps;
- every flag a waiting thread watches is written from compiled code, i.e. after the writer
  has let go of Python's lock: the waiter then takes the lock at once;
- ``run_kernels`` takes parts whose Python was done beforehand on the calling thread (each
  part is then one kernel call): a worker's kernel stores its "entered" flag as it starts,
  and only then does the caller start its own, so the kernels start within ~20 us of each
  other and no thread waits for another's Python.
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
#: ``run_kernels``: the longest the caller waits for a worker's kernel to start before it
#: starts its own (a worker that had fallen asleep takes ~100 us to wake)
ENTER_WAIT_S = 0.0003

_LINE = 8  # int64 per 64-byte cache line: each flag on a line of its own


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
        self.spins = _spins_for(kernels, SPIN_S)
        self.enter_spins = max(1, int(self.spins * ENTER_WAIT_S / SPIN_S))
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
            fn, arg, signalled, after = task
            try:
                # a kernel stores ``seen`` in the entered flag as it starts (``run_kernels``)
                out = fn(*arg, self._addr(entered), seen) if signalled else fn(arg)
                for kernel, args in after:
                    kernel(*args)
                self._results[i] = (True, out)
            except BaseException as err:  # handed to the caller, which raises it
                self._results[i] = (False, err)
            if self._caller_sleeps:  # it waits on the condition: store and wake it here
                with self._cond:
                    self._flags[done * _LINE] = seen
                    self._cond.notify_all()

    def run(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any] | None:
        """[fn(a) for a in args], the first on the calling thread and the others on workers;
        None when the pool is busy with another caller's parts (the caller runs them itself)."""
        return self._run([(fn, a, False, ()) for a in args], lambda: fn(args[0]))

    def run_kernels(self, calls: list[tuple[Any, tuple[Any, ...]]], after: tuple[tuple[Any, Any], ...] = (),
                    cancel: Callable[[], None] | None = None) -> list[Any] | None:
        """[kernel(*args, signal_addr, signal_value) for kernel, args in calls], concurrently:
        compiled kernels that store signal_value at signal_addr as they start (0: no store)
        and release Python's lock. The calling thread runs the first once the workers'
        kernels have started. None when the pool is busy (as ``run``).

        ``after``: kernels the last call's worker runs next, which may wait for the other
        kernels. The call then returns without waiting for that worker (its result is None):
        the caller learns from the kernels themselves when they are done. ``cancel``, called
        when the caller's own kernel call fails, must release whatever waits for it."""
        kernel, args = calls[0]
        last = len(calls) - 1
        return self._run([(f, a, True, after if i == last else ()) for i, (f, a) in enumerate(calls)],
                         lambda: kernel(*args, 0, 0), wait_entered=True, cancel=cancel,
                         detach_last=bool(after) and last > 0)

    def _run(self, tasks: list[tuple[Any, Any, bool, Any]], first: Callable[[], Any], wait_entered: bool = False,
             cancel: Callable[[], None] | None = None, detach_last: bool = False) -> list[Any] | None:
        if len(tasks) - 1 > self.n or not self._busy.acquire(blocking=False):
            return None
        try:
            rest = tasks[1:]
            for i in range(self.n):
                self._tasks[i] = rest[i] if i < len(rest) else None
            self._gen += 1
            gen = self._gen
            k = self.k
            wait = self.enter_spins if wait_entered and rest else 0
            # go is stored in compiled code: a spinning worker then finds Python's lock free
            entered = k.spin_until(self._addr(1), gen, wait, self._addr(0), gen)
            if self._sleepers:
                with self._cond:  # after the store: a worker going to sleep sees go or is woken
                    self._cond.notify_all()
                if wait and not entered:
                    k.spin_until(self._addr(1), gen, wait, 0, 0)
            if wait:
                for i in range(1, len(rest)):
                    k.spin_until(self._addr(1 + i), gen, wait, 0, 0)
            try:
                out0 = first()
            except BaseException:
                if cancel is not None:
                    cancel()
                raise
            finally:  # no part outlives the call (but a detached one), also when the first one raised
                waited = len(rest) - 1 if detach_last else len(rest)
                for i in range(waited):
                    self._wait_done(1 + self.n + i, gen)
                results = self._results[:waited] + [(True, None)] * (len(rest) - waited)
                self._results = [None] * self.n
            for ok, value in results:
                if not ok:
                    raise value
            return [out0, *(value for _, value in results)]
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
