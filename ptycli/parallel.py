"""Host threads for the parts of a group: ``map_parts`` (Python parts) and ``map_launches``
(parts that are each one compiled kernel call), with ``host_threads`` the count a group may
be split over. NumPy, FFTW and the compiled kernels release Python's lock, so a group's parts
run on every core.

The threads are a standard ``concurrent.futures.ThreadPoolExecutor``. A pool of spinning
workers (compiled spin-waits and hand-made flags) had been written to start a part within
microseconds instead of the ~85 us a sleeping thread takes to wake; measured against this
pool on benchmark cases A/B/C with 2 threads it did not gain the 10 % its upkeep needed
(benchmarks/RESULTS.md, "Host thread pool", issue 25).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .errors import DeviceError
from .host_fft import fft_workers


def host_threads() -> int:
    """Threads a group may be split over on the host: PTYCLI_THREADS, else the usable cores."""
    env = os.environ.get("PTYCLI_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError as exc:
            raise DeviceError(f"PTYCLI_THREADS={env!r}: expected a positive integer") from exc
    # asked once per group (and by sequential ePIE with modes once per position): the cores
    # are counted once per process, not with an affinity syscall at every call
    pid = os.getpid()
    n = _usable_cores.get(pid)
    if n is None:
        try:
            n = max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            n = max(1, os.cpu_count() or 1)
        _usable_cores[pid] = n
    return n


_usable_cores: dict[int, int] = {}


_pool: Any = None
_pool_size = 0
_pool_lock = threading.Lock()
_PART_THREAD = "ptycli-part"
_busy = threading.Lock()  # held by the caller whose launches use the pool's threads


def _executor(workers: int) -> Any:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            from concurrent.futures import ThreadPoolExecutor

            _pool_size = workers
            _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix=_PART_THREAD)
    return _pool


def _launch_all(calls: list[tuple[Any, tuple[Any, ...]]], after: tuple[tuple[Any, Any], ...],
                  cancel: Callable[[], None] | None, detach_last: bool) -> list[Any] | None:
    """[kernel(*args, 0, 0) for kernel, args in calls] at once: the first on the calling thread,
    the others on the pool's threads; ``after`` run next by the last one's thread, which this
    does not wait for when ``detach_last``. None when another caller's parts hold the pool."""
    if not _busy.acquire(blocking=False):
        return None
    try:
        pool = _executor(len(calls) - 1)
        last = len(calls) - 1

        def work(i: int) -> Any:
            kernel, args = calls[i]
            out = kernel(*args, 0, 0)
            for k2, a2 in after if i == last else ():
                k2(*a2)
            return out

        futures = [pool.submit(work, i) for i in range(1, len(calls))]
        waited = futures[:-1] if detach_last else futures
        try:
            kernel, args = calls[0]
            first = kernel(*args, 0, 0)
        except BaseException:
            if cancel is not None:
                cancel()
            raise
        finally:
            errors = [f.exception() for f in waited]  # waits: no part outlives the call
        for err in errors:
            if err is not None:
                raise err
        return [first, *(f.result() for f in waited), *([None] if detach_last else [])]
    finally:
        _busy.release()


def map_parts(fn: Any, parts: list[Any]) -> list[Any]:
    """[fn(p) for p in parts], run concurrently on host threads (one per part, the caller's
    among them), each with single-threaded FFTs; results in the order of ``parts``.

    NumPy and FFTW release the GIL on large arrays, so a group split into parts uses every
    core for the elementwise passes too, not only inside the FFTs. Parts that are each one
    compiled kernel call go through ``map_launches`` instead.
    """
    if len(parts) <= 1 or threading.current_thread().name.startswith(_PART_THREAD):
        # a part that maps parts again runs them itself: the pool's threads may all be busy
        # with the outer parts, and waiting on them from one of them would never end
        return [fn(p) for p in parts]
    pool = _executor(len(parts) - 1)
    futures = [pool.submit(_run_part, fn, p) for p in parts[1:]]
    try:
        first = _run_part(fn, parts[0])
    finally:
        errors = [f.exception() for f in futures]  # waits: no part outlives the call
    for err in errors:
        if err is not None:
            raise err
    return [first, *(f.result() for f in futures)]


@dataclass
class Launch:
    """One part's compiled call with its Python done beforehand: ``kernel(*args, signal_addr,
    signal_value)`` (a kernel that stores signal_value at signal_addr as it starts, 0 for
    none, and releases Python's lock), then ``finish`` of its return value."""

    kernel: Any
    args: tuple[Any, ...]
    finish: Callable[[Any], Any]
    made: Any = None  # what the call fills in, for callers that compose launches (read after it ran)

    def run(self) -> Any:
        """On the calling thread."""
        return self.finish(self.kernel(*self.args, 0, 0))

    def then(self, after: Callable[[Any], Any]) -> Launch:
        return Launch(self.kernel, self.args, lambda raw: after(self.finish(raw)), self.made)


def map_launches(prepare: Callable[[Any], Launch | None], parts: list[Any],
                 tail: Callable[[], tuple[Any, Any, Any] | None] | None = None, *, together: bool = False,
                 release: Callable[[], None] | None = None) -> list[Any] | None:
    """``map_parts`` for parts that are each one kernel call: every part's Python
    (``prepare``, then ``finish``) runs on the calling thread and only the kernels run
    concurrently. None when ``prepare`` gives None for any part: the caller then runs its
    general path.

    ``tail()``: ((kernel, args), cancel, parts_done) or None, prepared after the parts: a
    kernel run right after the last part's, on its thread, that waits for every part's kernel
    and may still run when this returns (its caller learns from it when it is done);
    ``cancel()`` releases it when a part fails before its kernel ran, and ``parts_done()``
    returns once every part's kernel has (their outputs are read here then).

    ``together``: the kernels wait for one another inside (barriers), so they must all run
    at once, each on a thread of its own: None (no kernel run) when that cannot be had
    (nested in a part, or another caller's launches hold the pool). ``release()`` then lets
    the others' barriers pass if the calling thread's kernel call fails.
    """
    launches = [prepare(p) for p in parts]
    if any(launch is None for launch in launches):
        return None
    if together and len(launches) > 1:
        if threading.current_thread().name.startswith(_PART_THREAD):
            return None
        raw = _launch_all([(ln.kernel, ln.args) for ln in launches], (), release, False)
        return None if raw is None else [ln.finish(r) for ln, r in zip(launches, raw)]
    after, cancel, parts_done = (tail() if tail is not None else None) or (None, None, None)
    after_calls = (after,) if after is not None else ()

    def guarded(ln: Launch, last: bool) -> Any:
        try:
            out = ln.kernel(*ln.args, 0, 0)
        except BaseException:
            if cancel is not None:
                cancel()
            raise
        for kernel, args in after_calls if last else ():
            kernel(*args)
        return out

    raw = None
    if len(launches) > 1 and not threading.current_thread().name.startswith(_PART_THREAD):
        raw = _launch_all([(ln.kernel, ln.args) for ln in launches], after_calls, cancel, bool(after_calls))
        if raw is not None and after_calls:
            parts_done()  # the last part's thread goes on with the tail
    if raw is None:  # one part, no pool, or the pool busy: as map_parts does
        n = len(launches)
        raw = map_parts(lambda il: guarded(il[1], il[0] == n - 1), list(enumerate(launches)))
    return [ln.finish(r) for ln, r in zip(launches, raw)]


def _run_part(fn: Any, part: Any) -> Any:
    with fft_workers(1):
        return fn(part)

