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
documented "numba:compiler_lock" event around that lock; ``CompileLock`` holds an exclusive
``fcntl.flock`` on one file for as long as any thread of this process is inside it, so two
processes never compile, save or read a cache entry at the same time. Nothing of Numba is
patched; without fcntl (not POSIX) the lock is left out.

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


class CompileLock(event.Listener):
    """An exclusive file lock held while any thread of the process is inside Numba's compiler
    lock (the events nest: Numba takes its lock again for every callee it compiles)."""

    def __init__(self, path: Path):
        self.path = path
        self._depth = 0
        self._mutex = threading.Lock()
        self._fh = None

    def on_start(self, ev: event.Event) -> None:
        with self._mutex:
            self._depth += 1
            if self._depth == 1:
                self._fh = _locked(self.path)

    def on_end(self, ev: event.Event) -> None:
        with self._mutex:
            self._depth -= 1
            if self._depth == 0 and self._fh is not None:
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

    def on_start(self, ev: event.Event) -> None:
        dispatcher = (ev.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not module.startswith("ptycli."):
            return
        self.compiled += 1
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
        event.register("numba:compile", notice)
        _installed = (lock, notice)
    return _installed


def on_first_compile(callback: Callable[[], None], key: Any = None) -> None:
    """Call ``callback()`` when a ptycli kernel next starts compiling in this process (at most
    once); a run whose kernels all load from the cache never calls it. A later registration
    under the same ``key`` (default: the callback) replaces an earlier one that never ran."""
    install()[1].callbacks[callback if key is None else key] = callback


def kernels_compiled() -> int:
    """How many ptycli kernels this process compiled (cache loads not counted)."""
    return install()[1].compiled
