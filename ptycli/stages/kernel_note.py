"""Say when the fused CPU kernels start compiling.

Numba compiles them on first use and keeps the machine code in its on-disk cache; the first
run after an install (or an upgrade) compiles the ones it uses, which looked like a hang
with nothing on the screen. Numba's own compile event (ptycli/_kernels/compile_guard.py)
says when that starts, so the note appears exactly when a run compiles, never otherwise.
"""

from __future__ import annotations

from typing import Callable

MESSAGE = "compiling kernels (first run after an install or upgrade: up to about a minute; kept in Numba's cache)"


def on_compile(say: Callable[[str], None]) -> bool:
    """``say(MESSAGE)`` once, when a kernel next starts compiling in this process; False (and
    nothing said, ever) when the kernels are off (no Numba, PTYCLI_KERNELS=0)."""
    import numpy as np  # noqa: PLC0415

    from .. import backend  # noqa: PLC0415

    k = backend.kernels(np)
    if k is None:
        return False
    k.on_first_compile(lambda: say(MESSAGE), key=MESSAGE)  # one note, however many runs asked
    return True
