"""Say when the fused CPU kernels start compiling.

Numba compiles them on first use and keeps the machine code in its on-disk cache; the first
run after an install (or an upgrade) compiles the ones it uses, which looked like a hang
with nothing on the screen. Numba's own compile event (ptycli/_kernels/compile_guard.py)
says when that starts, so the note appears exactly when a run compiles, never otherwise.
"""

from __future__ import annotations

from typing import Callable

MESSAGE = "compiling kernels"
_WHY = "first run after an install or upgrade; kept in Numba's cache"


def message(first: str = "", helper: bool = False) -> str:
    """What the note says: the kernel compiling now and, with a helper process, that the others
    compile beside it (_kernels/helper.py)."""
    if helper:
        return f"{MESSAGE} in 2 processes ({first or 'the first'} here, the others in a helper; {_WHY})"
    return f"{MESSAGE} ({first + ', then the others the run uses; ' if first else ''}{_WHY})"


def on_compile(say: Callable[[str], None]) -> bool:
    """``say(message(...))`` once, when a kernel next starts compiling in this process; False (and
    nothing said, ever) when the kernels are off (no Numba, PTYCLI_KERNELS=0)."""
    import numpy as np  # noqa: PLC0415

    from .. import backend  # noqa: PLC0415

    k = backend.kernels(np)
    if k is None:
        return False

    def note() -> None:
        helper = getattr(k, "compile_helper", None)
        running = helper is not None and helper.running()
        say(message(k.compiling() if hasattr(k, "compiling") else "", running))
        if helper is not None and not running:  # a helper may start at a part kernel later on
            helper.on_start(lambda first: say(message(first, True)))

    k.on_first_compile(note, key=MESSAGE)  # one note, however many runs asked
    return True
