"""An opt-in setting of glibc's allocator for CPU runs (``ptycli --reuse-heap``); never applied
unless asked for, since it changes the whole process's allocator.

By default glibc serves every block above its mmap threshold (128 KiB, rising up to 32 MiB
as blocks are freed) with a fresh mmap and unmaps it on free, so each temporary of an engine
step (1-16 MiB) is page-faulted and zeroed by the kernel again. Raising the mmap and trim
thresholds keeps freed blocks on the heap for the next step (benchmarks/RESULTS.md,
"Host allocator", has the measured gain). The same without ptycli doing it: glibc's own
tunables, ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=536870912``.
"""

from __future__ import annotations

HEAP_MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's maximum for M_MMAP_THRESHOLD on 64-bit
HEAP_TRIM_THRESHOLD_BYTES = 512 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def reuse_heap() -> bool:
    """Raise glibc's mmap and trim thresholds (mallopt, documented in malloc.h); True when
    both took, False where the C library is not glibc (macOS, musl, Windows)."""
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD_BYTES) == 1
        return bool(ok and libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES) == 1)
    except (OSError, AttributeError):
        return False
