"""A second process that compiles a run's kernels while this one compiles its part kernel (issue
25 item 4: the first run after an install adds at most 15 s of compilation on 2 cores).

Why: Numba compiles one kernel at a time per process, single-threaded, and a run's first call
of a kernel waits for its whole compilation; the next kernel's types are known only when the run
gets there. A quick-recipe run compiled ``single_slice_part`` (13 CPU-s) and then LSQ-ML's tail
(9 CPU-s) one after the other, with the second core idle. Here, when this process starts
compiling a part kernel (``single_slice_part`` or ``multislice_part``, the largest), a helper
process (stages/compile_helper.py) makes the same run on a few of its positions with that kernel
skipped: every other kernel it calls is compiled with the types this run will use and saved to
Numba's on-disk cache, at the same time. Before its next new kernel signature this process waits
while the helper compiles (``compile_guard.before_lookups``), then loads what the helper
compiled. compile_guard's lock keeps the two processes' cache reads and writes apart while their
compilations overlap.

Nothing depends on the helper for correctness: a kernel it did not compile (it failed, was not
started, stopped early, or met other types) is compiled here as before, and the machine code is
Numba's either way (tests/test_compile_helper.py: the same reconstruction bit for bit). The
helper runs only where there are two usable cores or more, never starts one itself, says nothing
(PTYCLI_COMPILE_HELPER_LOG names a file for what it says), and is ended when it outlives its use.
PTYCLI_COMPILE_HELPER=0 turns it off, =1 starts it even when no core is idle (``enabled``).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from numba.core import event

from . import compile_guard

ENV = "PTYCLI_COMPILE_HELPER"
LOG = "PTYCLI_COMPILE_HELPER_LOG"  # a file for the helper's output and errors (debugging)
POSITIONS = 64  # the helper's run: this many of the run's positions where its groups do not say
MAX_POSITIONS = 1024  # at most this many (one group of more: the same part count, types alike)
WAIT_S = 300.0  # the longest this process waits for the helper before compiling on its own
IDLE_S = 8.0  # the helper stops once it has compiled nothing new for this long
START_S = 60.0  # ... or nothing at all for this long from its start
GRACE_S = 2.0  # ... and this process waits while it is busy or was within this (its run goes on
# between two kernels: a kernel it is about to compile is not compiled here as well)
# the part kernels' protocol (single_slice.py): the last three arguments are done_addr (an int64
# the kernel adds 1 to when done; gradient's probe tail waits for it), signal_addr and signal_value
_PARTS = ("single_slice_part", "multislice_part")

_spec: dict[str, Any] | None = None
_proc: subprocess.Popen | None = None
_started = 0.0
_busy = False  # the helper is starting or compiling (its stdout says "busy" / "idle")
_idle_since = 0.0
_on_start: list[Any] = []
_changed = threading.Condition()


def enabled() -> bool:
    """Whether a run in this process may start a helper: PTYCLI_COMPILE_HELPER not 0 (1: always,
    where there are two usable cores), not a helper itself, two usable cores or more and, unless
    asked for, one of them idle (1-minute load average): on a machine whose cores are all busy a
    second process only adds its own start (measured: quick recipe +7 CPU-s, wall not shorter)."""
    setting = os.environ.get(ENV, "auto")
    if setting == "0":
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if cores < 2:
        return False
    return setting == "1" or cores - os.getloadavg()[0] >= 1.0


def plan(entry: str, spec: dict[str, Any]) -> None:
    """If this process starts compiling a part kernel (the largest: ``_PARTS``), run
    ``entry.main(path)`` (a module's name: stages/compile_helper.py) in a helper process, ``path``
    a JSON file of ``spec`` and "skip": the name of that kernel."""
    global _spec
    if enabled():
        _spec = {**spec, "entry": entry}
        compile_guard.on_first_compile(_start, key=_start, early=True)


def helper_positions(n: int, group_sizes: list[Any]) -> int:
    """How many of the run's ``n`` positions the helper takes: enough for groups of the sizes
    the run's first grouped stage makes (grouping.py: ``k`` groups of ⌊n/k⌋ or ⌈n/k⌉), whose part
    counts set the kernels' types (common.n_parts: one tuple entry per part)."""
    size = next((int(s) for s in group_sizes if isinstance(s, int) and s > 0), None)
    if size is None:
        return min(n, POSITIONS)
    k = -(-n // size)
    if k <= 1:
        return min(n, MAX_POSITIONS)
    low, high = n // k, -(-n // k)
    return low + high if low != high else 2 * low


def running() -> bool:
    """Whether a helper process is running now."""
    return _proc is not None and _proc.poll() is None


def _start() -> None:
    """At this process's first compilation of a part kernel in the planned run: the helper, with
    that kernel skipped. Any failure to start it leaves compiling to this process, silently."""
    global _proc, _started
    spec = _spec
    if spec is None or _proc is not None:
        return
    if compile_guard.compiling() not in _PARTS:  # a small kernel first (L-BFGS's): at the next one
        compile_guard.on_first_compile(_start, key=_start, early=True)
        return
    spec = {**spec, "skip": compile_guard.compiling()}
    path = None
    try:
        fd, path = tempfile.mkstemp(prefix="ptycli-compile-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        entry = f"import sys, importlib; sys.exit(importlib.import_module({spec['entry']!r}).main(sys.argv[1]))"
        log = os.environ.get(LOG)  # a file for what the helper says (else nowhere)
        with open(log or os.devnull, "ab") as err:
            _proc = subprocess.Popen([sys.executable, "-c", entry, path], env={**os.environ, ENV: "0"},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    except (OSError, ValueError, subprocess.SubprocessError):
        _proc = None
        if path is not None:
            Path(path).unlink(missing_ok=True)
        return
    _set_busy(True)
    _started = time.monotonic()
    threading.Thread(target=_follow, args=(_proc,), name="ptycli-compile-helper", daemon=True).start()
    compile_guard.before_lookups(wait)
    atexit.register(_end)
    callbacks, _on_start[:] = list(_on_start), []
    for callback in callbacks:
        callback(spec["skip"])


def on_start(callback: Any) -> None:
    """Call ``callback(kernel)`` when a helper next starts, ``kernel`` the one this process
    compiles (the kernel note says so when it spoke before, at a smaller kernel)."""
    _on_start.append(callback)


def _set_busy(busy: bool) -> None:
    global _busy, _idle_since
    with _changed:
        _busy, _idle_since = busy, time.monotonic()
        _changed.notify_all()


def _follow(proc: subprocess.Popen) -> None:
    """The helper's status lines, until it ends."""
    for line in proc.stdout:
        _set_busy(line.strip() == b"busy")
    proc.wait()  # reaped: its CPU time counts in this process's children
    _set_busy(False)


def wait() -> None:
    """Block while the helper starts or compiles, or did so within GRACE_S (at most until WAIT_S
    after it started; then it is ended): what it compiles is in the cache before this process
    looks there."""
    with _changed:
        while _proc is not None and _proc.poll() is None:
            now = time.monotonic()
            if not _busy and now - _idle_since >= GRACE_S:
                break
            left = WAIT_S - (now - _started)
            if left <= 0:
                _end()
                break
            _changed.wait(min(left, GRACE_S if _busy else GRACE_S - (now - _idle_since)))


def _end() -> None:
    if _proc is not None and _proc.poll() is None:
        _proc.kill()
        _proc.wait()


# ---------------------------------------------------------------- the helper process itself


def _skipping(kernels: Any, name: str) -> None:
    """The helper's stand-in for the part kernel this process compiles: it runs nothing, and
    keeps the part kernels' protocol (done count, start signal) so that kernels waiting for it go
    on. Any other first kernel is compiled here too (its results are read: it must run)."""
    import ctypes  # noqa: PLC0415

    if name not in _PARTS:
        return
    lock = threading.Lock()

    def skipped(*args: Any) -> None:
        done, signal, value = args[-3:]
        with lock:
            if signal:
                ctypes.c_int64.from_address(signal).value = value
            if done:
                ctypes.c_int64.from_address(done).value += 1

    setattr(kernels, name, skipped)


def _zeroed(kernels: Any) -> None:
    """Buffers filled with zeros, not whatever memory held: the skipped kernel's outputs are read
    by the rest of the run (a NaN would end the helper's run early)."""
    empty = kernels.empty

    def zeros(shape: Any, dtype: Any, aligned: bool = False) -> Any:
        out = empty(shape, dtype, aligned)
        out.fill(0)
        return out

    kernels.empty = zeros


class _Status(event.Listener):
    """The helper's side of the status lines: "busy" while it compiles a kernel called from
    Python, "idle" after (outermost compilations only; it starts busy)."""

    def __init__(self) -> None:
        self.depth = 0

    def on_start(self, ev: Any) -> None:
        if self.depth == 0:
            _say("busy")
            print(f"ptycli compile helper: compiling {_name(ev)} (process CPU {time.process_time():.1f} s)",
                  file=sys.stderr, flush=True)
        self.depth += 1

    def on_end(self, ev: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            _say("idle")
            print(f"ptycli compile helper: compiled {_name(ev)} (process CPU {time.process_time():.1f} s)",
                  file=sys.stderr, flush=True)


def _name(ev: Any) -> str:
    return getattr(getattr((ev.data or {}).get("dispatcher"), "py_func", None), "__name__", "?")


def _say(word: str) -> None:
    try:
        sys.stdout.write(word + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):  # the run that started it is gone
        os._exit(0)


def _watch(notice: Any) -> None:
    """End the helper once it has compiled nothing new for IDLE_S (the rest of its run is of no
    use), or nothing at all for START_S (reading the run's inputs takes a while on a busy machine)."""
    seen, since = notice.compiled, time.monotonic()
    while True:
        time.sleep(0.5)
        if notice.compiled != seen or compile_guard.busy():
            seen, since = notice.compiled, time.monotonic()
        elif time.monotonic() - since > (IDLE_S if seen else START_S):
            os._exit(0)


def rehearse(skip: str) -> None:
    """Make this process a helper (stages/compile_helper.py runs the run after this): ``skip``
    (the kernel the run's process compiles) runs nothing, buffers start zeroed, each compilation
    is reported on stdout, and the process ends once it has compiled nothing new for IDLE_S."""
    os.environ[ENV] = "0"
    try:
        os.nice(5)  # once the run goes on, its iterations come first
    except OSError:
        pass
    kernels = sys.modules[__package__]  # ptycli._kernels, what backend.kernels(np) returns
    event.register("numba:compile", _Status())
    _skipping(kernels, skip)
    _zeroed(kernels)
    threading.Thread(target=_watch, args=(compile_guard.install()[1],), daemon=True).start()
