"""NumPy ``.npy``: 3D (N, ky, kx) or 4D (sy, sx, ky, kx), read a block of frames at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import FrameFile, RawSource, check_ndim, source_from_array
from .registry import register


def read_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) from the .npy header, nothing else read."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
            return tuple(shape), fortran, np.dtype(dtype), f.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None


@register("npy", (".npy",), magic=(b"\x93NUMPY",))
def open_npy(path: Path, **_: Any) -> RawSource:
    shape, fortran, dtype, offset = read_header(path)
    check_ndim(path, shape)
    if dtype.hasobject:
        raise InputError(f"{path}: object arrays are not readable (dtype {dtype})")
    if fortran:  # frames are not contiguous: fall back to a memory map
        return source_from_array(path, "npy", np.load(path, mmap_mode="r"))
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < need:
        raise InputError(f"{path}: file is {path.stat().st_size} B, header says {need} B (truncated)")
    frames = FrameFile(path, offset, int(np.prod(shape[-2:])) * dtype.itemsize, 0, dtype, shape[-2:])
    return RawSource(path=path, format="npy", n_frames=int(np.prod(shape[:-2])), frame_shape=shape[-2:],
                     dtype=dtype.newbyteorder("="), read_fn=lambda a, b: frames.read(a, b).astype(dtype.newbyteorder("="), copy=False),
                     scan_shape=shape[:2] if len(shape) == 4 else None, close_fn=frames.close)
