"""Compiling the fused kernels safely across processes, and saying when it happens, through
Numba's public event API (``numba.core.event``; developer/event_api.html in Numba's docs).

Why a lock: Numba (0.68 included) saves a new on-disk cache entry by reading the function's
index, taking the first free data-file name, and writing the index and then the data. Two
processes compiling *different* signatures of one kernel at the same time (two pytest-xdist
workers, two SLURM tasks of a cold install) can both take the same name, and one signature
then loads the other's machine code: silently wrong numbers (seen in this project as a NaN in
the test suite). Upstream this is open (numba#4807, "Cache causes segmentation faults when
generated in parallel"; numba#10128, where the maintainers proposed a file lock). Numba looks
up, compiles and saves an entry while it holds its compiler lock, and broadcasts the
documented "numba:compiler_lock" event around that lock and "numba:compile" around the
compilation proper (typing, lowering, LLVM: the cache is not touched in between; its pass
pipeline takes the compiler lock again, a frame of its own). ``CompileLock`` holds an exclusive
``fcntl.flock`` on one file while a thread of this process is in a dispatcher's own lock frame,
where it looks up or saves: every cache lookup and save of one process is atomic for the
others, while the compilations themselves run at the same time in several processes (helper.py
compiles a run's kernels in two; holding the lock through the pipeline frame had serialized
them). Nothing of Numba is patched;
without fcntl (not POSIX) the lock is left out.

The "numba:compile" event (a real compilation, not a cache load) is how the command line
learns that a run is compiling, at the moment it starts (``on_first_compile``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

from numba.core import event

LOCK_NAME = "ptycli-numba-compile.lock"


def lock_path() -> Path:
    """The lock file, beside the cache it guards (processes that share a cache share its lock):
    in NUMBA_CACHE_DIR when the user set one; else in the kernels' own __pycache__, where Numba
    keeps their code when it can write there; else in $XDG_CACHE_HOME/ptycli (~/.cache/ptycli),
    per user like Numba's fallback."""
    chosen = os.environ.get("NUMBA_CACHE_DIR")
    if chosen:
        return Path(chosen) / LOCK_NAME
    in_tree = Path(__file__).resolve().parent / "__pycache__"
    if os.access(in_tree if in_tree.exists() else in_tree.parent, os.W_OK):
        return in_tree / LOCK_NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ptycli" / LOCK_NAME


# the frames of a thread inside Numba (0.68): a dispatcher takes the compiler lock (_CACHE: it
# looks up, and after compiling saves, its cache entry), the compilation itself is the
# "numba:compile" event (_COMPILE), whose pass pipeline takes the lock again (_WORK: typing,
# lowering, LLVM, where callees' dispatchers nest as _CACHE frames); a lock taken inside a
# _CACHE frame (a subroutine compiled by the pipeline) is _WORK too
_CACHE, _COMPILE, _WORK = "cache", "compile", "work"


class CompileLock(event.Listener):
    """An exclusive file lock held while a thread of this process looks up or saves cache
    entries (the innermost frame a _CACHE frame), not while it compiles. Registered for both
    events.

    Threads of one process take turns before Numba's lock (``_outer``): a thread that waits
    for Numba's lock, whose event comes before the wait, must not hold the file lock meanwhile
    (another process's lookups would wait for this process's whole compilation)."""

    def __init__(self, path: Path):
        self.path = path
        self._outer = threading.Lock()
        self._tls = threading.local()
        self._fh = None
        self.before_lookup: Callable[[], None] | None = None  # helper.py: wait for the helper first

    def _stack(self) -> list[str]:
        stack = getattr(self._tls, "stack", None)
        if stack is None:
            stack = self._tls.stack = []
        return stack

    def on_start(self, ev: event.Event) -> None:
        stack = self._stack()
        if ev.kind == "numba:compiler_lock":
            if not stack:  # outermost: a new signature of a kernel called from Python
                if self.before_lookup is not None:
                    self.before_lookup()
                self._outer.acquire()
            stack.append(_CACHE if not stack or stack[-1] == _WORK else _WORK)
        else:
            stack.append(_COMPILE)
        self._hold(stack[-1] == _CACHE)

    def on_end(self, ev: event.Event) -> None:
        stack = self._stack()
        if not stack:
            return
        stack.pop()
        self._hold(bool(stack) and stack[-1] == _CACHE)
        if not stack and ev.kind == "numba:compiler_lock":
            self._outer.release()

    def _hold(self, held: bool) -> None:
        # only the thread holding _outer gets here with a non-empty stack: no race on _fh
        if held and self._fh is None:
            self._fh = _locked(self.path)
        elif not held and self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None


def _locked(path: Path):
    """``path`` opened and exclusively locked, or None where it cannot be (no fcntl, a cache
    directory that cannot be made): compiling then goes on unlocked, as Numba alone would."""
    try:
        import fcntl  # noqa: PLC0415  (POSIX only)

        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115  (held until the outermost end event)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX)
    except OSError:
        fh.close()
        return None
    return fh


class CompileNotice(event.Listener):
    """Calls each registered callback once, when the first ptycli kernel starts compiling."""

    def __init__(self):
        self.callbacks: dict[Any, Callable[[], None]] = {}
        self.compiled = 0  # ptycli kernels compiled (not loaded from the cache) in this process
        self.current = ""  # the name of the ptycli kernel compiling last (helper.py: the first of a run)

    def on_start(self, ev: event.Event) -> None:
        dispatcher = (ev.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith("ptycli."):
            return
        self.compiled += 1
        self.current = getattr(dispatcher.py_func, "__name__", "")
        callbacks, self.callbacks = self.callbacks, {}
        for cb in callbacks.values():
            cb()

    def on_end(self, ev: event.Event) -> None:
        pass


_installed: tuple[CompileLock, CompileNotice] | None = None


def install() -> tuple[CompileLock, CompileNotice]:
    """Register both listeners for the process (once; ptycli/_kernels.py calls it before it
    defines a kernel)."""
    global _installed
    if _installed is None:
        lock, notice = CompileLock(lock_path()), CompileNotice()
        event.register("numba:compiler_lock", lock)
        event.register("numba:compile", lock)
        event.register("numba:compile", notice)
        _installed = (lock, notice)
    return _installed


def on_first_compile(callback: Callable[[], None], key: Any = None, early: bool = False) -> None:
    """Call ``callback()`` when a ptycli kernel next starts compiling in this process (at most
    once); a run whose kernels all load from the cache never calls it. A later registration
    under the same ``key`` (default: the callback) replaces an earlier one that never ran.
    ``early``: before the callbacks registered so far (helper.py starts its process before the
    note says how many compile)."""
    notice = install()[1]
    key = callback if key is None else key
    notice.callbacks.pop(key, None)
    notice.callbacks = {key: callback, **notice.callbacks} if early else {**notice.callbacks, key: callback}


def compiling() -> str:
    """The name of the ptycli kernel that started compiling last in this process ("" if none)."""
    return install()[1].current


def before_lookups(wait: Callable[[], None] | None) -> None:
    """Call ``wait()`` before each new kernel signature is looked up in the cache or compiled
    (outside the file lock): helper.py waits there for its process's compilations."""
    install()[0].before_lookup = wait


def busy() -> bool:
    """Whether a thread of this process is inside Numba's compiler now (looking up or compiling)."""
    return install()[0]._outer.locked()


def kernels_compiled() -> int:
    """How many ptycli kernels this process compiled (cache loads not counted)."""
    return install()[1].compiled
