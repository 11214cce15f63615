"""Signals that stop a run cleanly: SIGTERM/SIGUSR1 (requeue, exit 75), SIGINT (exit 130).

The handler only sets a flag; the loop finishes the current group, writes a checkpoint
and raises ``errors.Interrupted``. A second SIGINT falls through to Python's default so a
stuck run can still be killed from the keyboard.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

from ..errors import Interrupted


class StopFlag:
    """Which signal asked the run to stop, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def resumable(self) -> bool:
        return self.signum != signal.SIGINT

    def set(self, signum: int) -> None:
        self.signum = signum


class SignalHandlers:
    """Context manager installing flag-setting handlers (main thread only)."""

    def __init__(self, flag: StopFlag):
        self.flag = flag
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.flag.signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.flag.set(signum)

    def __enter__(self) -> SignalHandlers:
        if threading.current_thread() is threading.main_thread():
            for sig in _signals():
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class StopOnSignals(contextlib.ContextDecorator):
    """For stages that write one output in one go and keep no checkpoint (preprocess, init, export).

    SIGTERM/SIGUSR1 raise ``Interrupted`` where the process is, as SIGINT raises KeyboardInterrupt,
    so the store writer drops ``OUT.partial`` (an export its temporary file) on the way out and the
    CLI exits 75 with one line, instead of the process dying by the signal (-15) and leaving debris.
    Further signals are ignored meanwhile, so a second one cannot interrupt that clean-up.
    """

    def __init__(self, what: str):
        self.what = what
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        for sig in self._old:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(f"{self.what} stopped by {signal.Signals(signum).name}; nothing was written "
                          "(no checkpoint: run it again)")

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGTERM", "SIGUSR1"):
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def _signals() -> list[int]:
    names = ("SIGTERM", "SIGUSR1", "SIGINT")
    return [getattr(signal, n) for n in names if hasattr(signal, n)]
