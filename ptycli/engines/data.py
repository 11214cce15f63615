"""Diffraction data for the engines: resident on the device, or streamed chunk by chunk.

Patterns are stored DC-centred and chunked along the position axis; the engines want
unshifted spectra on the compute device. A store that fits the memory budget is moved to
the device once; otherwise each group reads only the chunks it touches, through a small
LRU cache of decoded chunks (so ``sparse`` groups, which touch many chunks, still read
each chunk about once per iteration when the cache holds them all).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from .. import backend

DEFAULT_BUDGET_BYTES = 2 * 2**30


class PatternSource:
    """Reads groups of patterns (B, M, M), unshifted, on the device of ``xp``."""

    def __init__(self, patterns: Any, xp: Any, dtype: str, *, stream: bool | None = None,
                 budget_bytes: int | None = None):
        self.array, self.xp, self.dtype = patterns, xp, dtype
        self.budget = int(budget_bytes or DEFAULT_BUDGET_BYTES)
        shape = tuple(patterns.shape)
        frame_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        self.stream = bool(stream) if stream is not None else shape[0] * frame_bytes > self.budget
        chunks = getattr(patterns, "chunks", None)
        self.chunk_len = int(chunks[0]) if chunks else shape[0]
        self.max_chunks = max(2, self.budget // max(1, self.chunk_len * frame_bytes))
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._all = None if self.stream else self._decode(np.asarray(patterns[...]))

    def _decode(self, block: np.ndarray) -> Any:
        host = np.fft.ifftshift(np.asarray(block, dtype=self.dtype), axes=(-2, -1))
        return backend.to_device(host, self.xp, dtype=self.dtype)

    def read(self, idx: np.ndarray) -> Any:
        idx = np.asarray(idx)
        if self._all is not None:
            return self._all[backend.to_device(idx, self.xp)] if not backend.is_numpy(self.xp) else self._all[idx]
        parts, where = [], []
        for c in np.unique(idx // self.chunk_len):
            sel = np.flatnonzero(idx // self.chunk_len == c)
            parts.append(self._chunk(int(c))[idx[sel] - c * self.chunk_len])
            where.append(sel)
        out = self.xp.concatenate(parts, axis=0)
        inverse = np.argsort(np.concatenate(where), kind="stable")  # back to the order of idx
        return out[inverse] if backend.is_numpy(self.xp) else out[backend.to_device(inverse, self.xp)]

    def _chunk(self, c: int) -> Any:
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        block = self._decode(self.array[c * self.chunk_len:(c + 1) * self.chunk_len])
        self._cache[c] = block
        if len(self._cache) > self.max_chunks:
            self._cache.popitem(last=False)
        return block


class SignalSource:
    """Compressed signals (J, K): small, always resident."""

    def __init__(self, signals: Any, xp: Any, dtype: str):
        self._all = backend.to_device(np.asarray(signals[...], dtype=dtype), xp, dtype=dtype)
        self.xp = xp

    def read(self, idx: np.ndarray) -> Any:
        return self._all[np.asarray(idx)] if backend.is_numpy(self.xp) else self._all[backend.to_device(idx, self.xp)]


def mean_counts(patterns: Any, idx: np.ndarray | None = None) -> float:
    """N_e: mean total counts per frame (physics.md §3.4), read chunk by chunk on the host."""
    n = patterns.shape[0]
    step = int(getattr(patterns, "chunks", (n,))[0]) or n
    keep = np.ones(n, bool) if idx is None else np.isin(np.arange(n), idx)
    total, count = 0.0, 0
    for a in range(0, n, step):
        sel = keep[a:a + step]
        if sel.any():
            block = np.asarray(patterns[a:a + step], dtype=np.float64)[sel]
            total += float(block.sum())
            count += int(sel.sum())
    return total / max(count, 1)
