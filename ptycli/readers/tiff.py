"""TIFF stacks (``.tif``/``.tiff``): one frame per page, read a page range at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import RawSource, check_ndim
from .registry import register


@register("tiff", (".tif", ".tiff"), magic=(b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"))
def open_tiff(path: Path, **_: Any) -> RawSource:
    import tifffile  # noqa: PLC0415

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
    except Exception as exc:  # tifffile raises several types for a bad file
        raise InputError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    shape = tuple(int(s) for s in series.shape)
    check_ndim(path, shape, "TIFF series")
    n = int(np.prod(shape[:-2]))
    if len(series.pages) != n:
        tif.close()
        raise InputError(f"{path}: TIFF with {len(series.pages)} pages for {n} frames; expected one page per frame")

    def read(a: int, b: int) -> np.ndarray:
        return tif.asarray(key=range(a, b), series=0).reshape(b - a, *shape[-2:])

    return RawSource(path=path, format="tiff", n_frames=n, frame_shape=shape[-2:], dtype=np.dtype(series.dtype),
                     read_fn=read, scan_shape=shape[:2] if len(shape) == 4 else None, close_fn=tif.close)
