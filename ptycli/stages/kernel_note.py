"""Say when the fused CPU kernels are about to be compiled for the first time.

Numba compiles them on first use and keeps the machine code on disk; the first run after
an install (or an upgrade, which gets a new cache directory) therefore spends 30-90 s
compiling with nothing on the screen, which looked like a hang.
"""

from __future__ import annotations

from pathlib import Path

MESSAGE = "compiling kernels (one-time, 30-90 s; kept in {})"


def compile_note() -> str | None:
    """The message to show when no kernel has been compiled into this version's cache yet;
    None when some are cached, or when the kernels are off (no Numba, PTYCLI_KERNELS=0)."""
    import numpy as np  # noqa: PLC0415

    from .. import backend  # noqa: PLC0415

    k = backend.kernels(np)
    if k is None:
        return None
    for fn in vars(k).values():
        path = getattr(getattr(fn, "_cache", None), "_cache_path", None)  # a Numba dispatcher's cache
        if path:
            root = Path(path).parent  # this kernel version's directory (one per source module below)
            return None if any(root.rglob("*.nbi")) else MESSAGE.format(root)
    return None
