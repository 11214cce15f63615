"""What every reader returns: a frame source that yields chunks, never the whole file.

A ``RawSource`` knows the frame count, the frame shape, the dtype, the scan shape when the
file says it, and reads frames ``[start, stop)`` in row-major scan order
(``j = iy * nx + ix``, physics.md §1.1). Formats differ only in how they open the file.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import InputError


@dataclass
class RawSource:
    """Frames of one raw file, readable a chunk at a time."""

    path: Path
    format: str
    n_frames: int
    frame_shape: tuple[int, int]
    dtype: np.dtype
    read_fn: Callable[[int, int], np.ndarray]
    scan_shape: tuple[int, int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    close_fn: Callable[[], None] | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as an (n, ky, kx) host array."""
        start, stop = max(0, start), min(self.n_frames, stop)
        return np.asarray(self.read_fn(start, stop)).reshape(stop - start, *self.frame_shape)

    def chunks(self, frames_per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.n_frames, max(1, frames_per_chunk)):
            yield start, self.read(start, start + frames_per_chunk)

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.format, "n_frames": self.n_frames, "frame_shape": list(self.frame_shape),
            "dtype": str(np.dtype(self.dtype)),
            "scan_shape": list(self.scan_shape) if self.scan_shape else None, **self.metadata,
        }

    def close(self) -> None:
        if self.close_fn is not None:
            self.close_fn()
            self.close_fn = None

    def __enter__(self) -> "RawSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_ndim(path: Path, shape: tuple[int, ...], what: str = "array") -> None:
    if len(shape) not in (3, 4):
        raise InputError(
            f"{path}: {what} has {len(shape)}D shape {tuple(shape)}; expected 3D (N, ky, kx) "
            "or 4D (scan_y, scan_x, ky, kx)"
        )


def source_from_array(path: Path, fmt: str, arr: Any, *, what: str = "array",
                      metadata: dict[str, Any] | None = None,
                      close_fn: Callable[[], None] | None = None) -> RawSource:
    """A source over any sliceable 3D/4D array (numpy memmap, h5py, zarr): slices only."""
    shape = tuple(int(s) for s in arr.shape)
    check_ndim(path, shape, what)
    scan = shape[:2] if len(shape) == 4 else None
    n = int(np.prod(shape[:-2]))
    chunks = getattr(arr, "chunks", None)  # None: contiguous HDF5 / numpy
    layout: dict[str, Any] = {"shape": list(shape), **({"chunks": [int(c) for c in chunks]} if chunks else {})}
    return RawSource(path=path, format=fmt, n_frames=n, frame_shape=shape[-2:], dtype=np.dtype(arr.dtype),
                     read_fn=lambda a, b: read_flat(arr, a, b), scan_shape=scan,  # type: ignore[arg-type]
                     metadata={**layout, **(metadata or {})}, close_fn=close_fn)


def read_flat(arr: Any, start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) of a 3D or 4D array in flattened scan order, reading whole rows."""
    if arr.ndim == 3:
        return np.asarray(arr[start:stop])
    nx = arr.shape[1]
    r0, r1 = start // nx, -(-stop // nx)
    block = np.asarray(arr[r0:r1]).reshape(-1, *arr.shape[-2:])
    return block[start - r0 * nx : stop - r0 * nx]


def square_scan(n_frames: int) -> tuple[int, int] | None:
    side = math.isqrt(n_frames)
    return (side, side) if side * side == n_frames else None


def file_fingerprint(path: Path, sample_bytes: int = 1 << 20) -> str:
    """Size plus the first and last MiB: tells files apart without reading 100 GB."""
    h = hashlib.blake2b(digest_size=12)
    if path.is_dir():
        for p in sorted(path.rglob("*"))[:64]:
            if p.is_file():
                h.update(f"{p.relative_to(path)}:{p.stat().st_size}".encode())
                if p.name in ("zarr.json", ".zarray"):
                    h.update(p.read_bytes())
        return h.hexdigest()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(sample_bytes))
        if size > sample_bytes:
            f.seek(max(sample_bytes, size - sample_bytes))
            h.update(f.read(sample_bytes))
    return h.hexdigest()


class FrameFile:
    """Fixed-stride frames of a flat binary file, read with positioned reads.

    Positioned reads rather than a memory map: a map of a 100 GB file counts against an
    address-space limit (``ulimit -v``, cluster job caps) even though it is never
    touched, while a read of one block costs only that block.
    """

    def __init__(self, path: Path, offset: int, stride: int, skip: int, dtype: Any, shape: tuple[int, ...]):
        self.f = open(path, "rb")
        self.offset, self.stride, self.skip = offset, stride, skip
        self.dtype, self.shape = np.dtype(dtype), shape
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        self.f.seek(self.offset + start * self.stride)
        buf = self.f.read(n * self.stride)
        if len(buf) < n * self.stride:
            raise InputError(f"{self.f.name}: file ended at frame {start + len(buf) // self.stride} (truncated)")
        rows = np.frombuffer(buf, dtype=np.uint8).reshape(n, self.stride)[:, self.skip : self.skip + self.nbytes]
        return np.ascontiguousarray(rows).view(self.dtype).reshape(n, *self.shape)

    def close(self) -> None:
        self.f.close()
