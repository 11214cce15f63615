"""Diffraction data for the engines: resident on the device, or streamed chunk by chunk.

Patterns are stored DC-centred and chunked along the position axis; the engines want
unshifted spectra on the compute device. A store that fits the memory budget is moved to
the device once; otherwise each group reads only the chunks it touches, through a small
LRU cache of decoded chunks (so ``sparse`` groups, which touch many chunks, still read
each chunk about once per iteration when the cache holds them all).
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import backend
from ..errors import DeviceError, InputError

DEFAULT_BUDGET_BYTES = 2 * 2**30


class Rows:
    """A group's patterns as rows of the resident set, ``frames[rows]``, without the copy.

    Why: gathering a group's frames copied ~2 MB per LSQ-ML group of benchmark case A
    (~250 us, 3-4 % of the group) that the compiled kernels then read once more; they read
    ``frames[rows[b]]`` in place instead. Array code gets the gathered copy (``gathered``,
    or ``Batch.data``), made when first asked for. Slicing with a slice gives the rows of a
    part of the group (views, as an array's slices)."""

    __slots__ = ("frames", "rows")

    def __init__(self, frames: Any, rows: np.ndarray):
        self.frames, self.rows = frames, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.frames.shape[1:])

    @property
    def ndim(self) -> int:
        return self.frames.ndim

    @property
    def dtype(self) -> Any:
        return self.frames.dtype

    def __getitem__(self, part: slice) -> Rows:
        if not isinstance(part, slice):
            raise TypeError("Rows takes slices only; gather() the frames for other indexing")
        return Rows(self.frames, self.rows[part])

    def gather(self) -> Any:
        return self.frames[self.rows]


def gathered(data: Any) -> Any:
    """``data`` as an array: a ``Rows``' frames gathered, an array unchanged."""
    return data.gather() if isinstance(data, Rows) else data


def frames_and_rows(data: Any) -> tuple[Any, np.ndarray]:
    """(frames, rows) with data[b] = frames[rows[b]]: a ``Rows``' own, else (data, 0..B-1)."""
    if isinstance(data, Rows):
        return data.frames, data.rows
    return data, np.arange(len(data), dtype=np.int64)


class PatternSource:
    """Reads groups of patterns (B, M, M), unshifted, on the device of ``xp``.

    Streamed sources overlap I/O with compute: ``prefetch(next_idx)`` reads and decodes
    the next group's missing chunks in a background thread while the current group
    computes; ``read(next_idx)`` then only moves them to the device. Results are the
    same bytes as a synchronous read (prefetching only changes when the reading happens).

    Host memory is bounded independently of the number of positions: cache and whole
    prefetched chunks together hold at most ``budget`` bytes; of every other chunk it
    decodes, a prefetch keeps only the group's frames. Without that bound a sparse group
    touching G chunks held G decoded chunks at once on top of a full cache.
    """

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
        self.max_whole_in_flight = max(1, self.max_chunks // 4)
        self._rows: dict[int, tuple[np.ndarray, Any]] = {}  # prefetched frames of uncached chunks
        self._cache: OrderedDict[int, Any] = OrderedDict()  # touched by the calling thread only
        self._pending: Future | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._all = None if self.stream else self._decode(np.asarray(patterns[...]))

    def _host(self, block: np.ndarray) -> np.ndarray:
        return np.fft.ifftshift(np.asarray(block, dtype=self.dtype), axes=(-2, -1))

    def _decode(self, block: np.ndarray) -> Any:
        return backend.to_device(self._host(block), self.xp, dtype=self.dtype)

    def _chunks_of(self, idx: np.ndarray) -> np.ndarray:
        return np.unique(idx // self.chunk_len)

    def prefetch(self, idx: np.ndarray) -> None:
        """Start reading the chunks of ``idx`` that are not cached (no-op when resident)."""
        if self._all is not None:
            return
        self._absorb_prefetched()  # one read in flight at a time
        idx = np.asarray(idx)
        missing = [int(c) for c in self._chunks_of(idx) if int(c) not in self._cache]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptycli-prefetch")
        room = min(self.max_whole_in_flight, self.max_chunks - len(self._cache))
        self._pending = self._pool.submit(self._read_host_chunks, missing, np.unique(idx), room)

    def _read_host_chunks(self, chunks: list[int], wanted: np.ndarray, room: int) -> tuple[dict, dict]:
        """(whole chunks for the cache's free ``room``, {chunk: (positions, frames)} for the
        rest); each chunk is cut down before the next is decoded. A full cache takes no
        more whole chunks: with a sparse order an LRU hit rate is no better than a fixed
        set's, and whole chunks in flight on top of a full cache are what grew with J."""
        whole, rows = {}, {}
        for c in chunks:
            raw = self.array[c * self.chunk_len:(c + 1) * self.chunk_len]
            if len(whole) < room:
                whole[c] = self._host(raw)
            else:  # cut before the shift: no chunk-sized shifted copy
                pos = wanted[wanted // self.chunk_len == c]
                rows[c] = (pos, self._host(np.asarray(raw)[pos - c * self.chunk_len]))
        return whole, rows

    def read(self, idx: np.ndarray) -> Any:
        idx = np.asarray(idx)
        if self._all is not None:
            return self._all[idx] if backend.is_numpy(self.xp) else self.xp.take(self._all, backend.to_device(idx, self.xp), axis=0)
        # Prefetched whole chunks join the cache only after this group is cut out, so their
        # insertion cannot evict a chunk the group still needs (a second, synchronous decode).
        fresh = self._take_prefetched()
        parts, where = [], []
        for c in self._chunks_of(idx):
            sel = np.flatnonzero(idx // self.chunk_len == c)
            parts.append(self._frames(int(c), idx[sel], fresh))
            where.append(sel)
        self._rows = {}  # prefetched frames serve the group they were read for only
        for c, block in fresh.items():
            self._store(c, block)
        out = self.xp.concatenate(parts, axis=0)
        inverse = np.argsort(np.concatenate(where), kind="stable")  # back to the order of idx
        return out[inverse] if backend.is_numpy(self.xp) else self.xp.take(out, backend.to_device(inverse, self.xp), axis=0)

    def read_rows(self, idx: np.ndarray) -> Any:
        """``read(idx)``, as ``Rows`` of the resident set on the host (no copy; for engines
        whose kernels read frames by index), else as ``read``."""
        if self._all is not None and backend.is_numpy(self.xp):
            return Rows(self._all, idx)
        return self.read(idx)

    def _absorb_prefetched(self) -> None:
        """Wait for the read in flight and cache its chunks on the device. Decoded chunks
        are valid whatever group asked for them, so a mispredicted prefetch still helps."""
        for c, block in self._take_prefetched().items():
            self._store(c, block)

    def _take_prefetched(self) -> dict[int, Any]:
        """Wait for the read in flight; keep its rows, return its whole chunks on the device."""
        pending, self._pending = self._pending, None
        if pending is None:
            return {}
        whole, self._rows = pending.result()
        return {c: backend.to_device(block, self.xp, dtype=self.dtype) for c, block in whole.items()}

    def _frames(self, c: int, positions: np.ndarray, fresh: dict[int, Any]) -> Any:
        """Frames ``positions`` (all in chunk ``c``): from the cache, the prefetch or a read."""
        if c in fresh:
            return fresh[c][positions - c * self.chunk_len]
        if c not in self._cache and c in self._rows:
            have, frames = self._rows[c]
            at = np.searchsorted(have, positions)
            if np.all(at < len(have)) and np.array_equal(have[np.minimum(at, len(have) - 1)], positions):
                return backend.to_device(frames[at], self.xp, dtype=self.dtype)
        return self._chunk(c)[positions - c * self.chunk_len]

    def _chunk(self, c: int) -> Any:
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        return self._store(c, self._decode(self.array[c * self.chunk_len:(c + 1) * self.chunk_len]))

    def _store(self, c: int, block: Any) -> Any:
        self._cache[c] = block
        self._cache.move_to_end(c)
        if len(self._cache) > self.max_chunks:
            self._cache.popitem(last=False)
        return block

    def read_and_prefetch(self, idx: np.ndarray, next_idx: np.ndarray | None) -> Any:
        """``read(idx)``, then start reading ``next_idx`` while the caller computes."""
        out = self.read(idx)
        if next_idx is not None:
            self.prefetch(next_idx)
        return out

    def close(self) -> None:
        """Stop the prefetch thread (also done at interpreter exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            self._pending = None


class SignalSource:
    """Compressed signals (J, K): small, always resident."""

    def __init__(self, signals: Any, xp: Any, dtype: str):
        self._all = backend.to_device(np.asarray(signals[...], dtype=dtype), xp, dtype=dtype)
        self.xp = xp

    def read(self, idx: np.ndarray) -> Any:
        return self._all[np.asarray(idx)] if backend.is_numpy(self.xp) else self.xp.take(self._all, backend.to_device(idx, self.xp), axis=0)


def mean_counts(patterns: Any, idx: np.ndarray | None = None, where: str = "patterns") -> float:
    """N_e: mean total counts per frame (physics.md §3.4), read chunk by chunk on the host.

    Every frame is read (the held-out ones too: validation uses them), so a NaN/Inf anywhere in the
    data is an input error naming ``where`` here, not a numerical failure iterations later.
    """
    n = patterns.shape[0]
    step = int(getattr(patterns, "chunks", (n,))[0]) or n
    keep = np.ones(n, bool) if idx is None else np.isin(np.arange(n), idx)
    total, count = 0.0, 0
    for a in range(0, n, step):
        block = np.asarray(patterns[a:a + step], dtype=np.float64)
        sums = block.reshape(len(block), -1).sum(axis=1)
        check_finite_frames(sums, a, where)
        sel = keep[a:a + step]
        total += float(sums[sel].sum())
        count += int(sel.sum())
    return total / max(count, 1)


def check_finite_frames(frame_sums: np.ndarray, start: int, where: str) -> None:
    """InputError (exit 4) naming the first frame whose sum (so some pixel) is NaN or Inf."""
    bad = ~np.isfinite(frame_sums)
    if bad.any():
        raise InputError(f"{where}: frame {start + int(np.argmax(bad))} holds NaN or Inf ({int(bad.sum())} such "
                         f"frames from {start}); patterns must be finite (preprocess --nan zero replaces them)")


# ----------------------------------------------------------------------------- memory plan
# Complex arrays of batch size alive at the peak of one group's update, per mode pair and
# slice: the forward cache (incident wave per slice), the far field, its gradient and
# ~3 elementwise temporaries; per object mode and slice: windows, their gradient, the
# per-position update direction and the illumination windows.
BUFFERS_PER_PAIR_SLICE = 2
BUFFERS_PER_PAIR = 6
BUFFERS_PER_OBJECT_SLICE = 4
REAL_BUFFERS = 4  # I, data, ℓ', mask-sized temporaries (per position, M x N)


def memory_estimate(window: tuple[int, int], *, n_probe_modes: int = 1, n_object_modes: int = 1,
                    n_slices: int = 1, object_shape: tuple[int, int] = (0, 0), n_positions: int = 0,
                    precision: str = "single", resident_patterns: bool = True) -> dict[str, int]:
    """Bytes a reconstruction needs on its device.

    ``per_position``: batch-sized working memory per position of a group (Np x Nq x S x
    M x N x complex size x buffers); ``fixed``: object, its gradient/accumulators and
    probe; ``patterns``: the resident data (0 when streamed). Group memory is
    ``per_position x group size``.
    """
    real, cplx = backend.dtypes(precision)
    c, r = np.dtype(cplx).itemsize, np.dtype(real).itemsize
    m, n = window
    k, q, s = n_probe_modes * n_object_modes, n_object_modes, n_slices
    per_pos = m * n * (c * (k * (BUFFERS_PER_PAIR_SLICE * s + BUFFERS_PER_PAIR) + BUFFERS_PER_OBJECT_SLICE * q * s)
                       + r * REAL_BUFFERS)
    h, w = object_shape
    fixed = c * (4 * q * s * h * w + 4 * n_probe_modes * m * n) + r * q * s * h * w
    patterns = r * m * n * n_positions if resident_patterns else 0
    return {"per_position": int(per_pos), "fixed": int(fixed), "patterns": int(patterns)}


def auto_group_size(estimate: dict[str, int], budget_bytes: int, n_positions: int, *,
                    max_group: int = 1024, min_group: int = 1) -> tuple[int, bool]:
    """(group size, stream patterns) that fit ``budget_bytes``.

    Patterns stay resident when they fit next to the fixed arrays and a group of at least
    ``min(64, n_positions)``; otherwise they are streamed (two groups' worth in flight).
    Raises DeviceError when not even ``min_group`` positions fit.
    """
    per, fixed, pats = estimate["per_position"], estimate["fixed"], estimate["patterns"]
    stream = fixed + pats + per * min(64, max(1, n_positions)) > budget_bytes
    frame = pats // max(1, n_positions)
    room = budget_bytes - fixed - (0 if stream else pats)
    group = room // max(1, per + (2 * frame if stream else 0))
    group = int(min(group, max_group, max(1, n_positions)))
    if group < min_group:
        need = fixed + min_group * per
        raise DeviceError(f"reconstruction needs about {need / 2**30:.2f} GiB for a group of {min_group} "
                          f"but the memory budget is {budget_bytes / 2**30:.2f} GiB; use a smaller window, "
                          "fewer modes/slices or a bigger device")
    return group, stream



def plan_memory(state: Any, xp: Any, precision: str = "single", *, n_positions: int | None = None,
                budget_bytes: int | None = None, max_group: int = 1024) -> dict[str, Any]:
    """Group size and streaming that fit the device, from ``memory_estimate``.

    For ``grouping.size = "auto"``: ``budget_bytes`` defaults to 80 % of the free memory
    of the device of ``xp`` (GPU: free + pooled), so a run never starts out of memory.
    Returns {group_size, stream, budget_bytes, estimate}; raises DeviceError when not even
    one position fits.
    """
    n_probe, m, n = (int(v) for v in state.probe.shape)
    n_obj, n_slices, h, w = (int(v) for v in state.object.shape)
    j = int(n_positions if n_positions is not None else len(state.positions))
    est = memory_estimate((m, n), n_probe_modes=n_probe, n_object_modes=n_obj, n_slices=n_slices,
                                  object_shape=(h, w), n_positions=j, precision=precision)
    budget = int(budget_bytes if budget_bytes is not None else 0.8 * backend.available_memory_bytes(xp))
    group, stream = auto_group_size(est, budget, j, max_group=max_group)
    return {"group_size": group, "stream": stream, "budget_bytes": budget, "estimate": est}
