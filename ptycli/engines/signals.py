"""Signals that stop a run cleanly: SIGTERM/SIGUSR1 (requeue, exit 75), SIGINT (exit 130).

The handler only sets a flag; the loop finishes the current group, writes a checkpoint
and raises ``errors.Interrupted``. A second SIGINT falls through to Python's default so a
stuck run can still be killed from the keyboard.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


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


def _signals() -> list[int]:
    names = ("SIGTERM", "SIGUSR1", "SIGINT")
    return [getattr(signal, n) for n in names if hasattr(signal, n)]
