"""EMPAD ``.raw``: 128 x 130 float32 little-endian frames; rows 128-129 are metadata.

The scan shape is not in the file: it comes from calibration, from a name like
``scan_x256_y256.raw`` (as the EMPAD software writes it), or is inferred when square.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import FrameFile, RawSource
from .registry import register

FRAME_ROWS, FRAME_COLS, DATA_ROWS = 130, 128, 128
FRAME_BYTES = FRAME_ROWS * FRAME_COLS * 4


def scan_from_name(path: Path) -> tuple[int, int] | None:
    m = re.search(r"_x(\d+)_y(\d+)", path.name)
    return (int(m.group(2)), int(m.group(1))) if m else None


@register("empad", (".raw",))
def open_empad(path: Path, **_: Any) -> RawSource:
    size = path.stat().st_size
    if size == 0 or size % FRAME_BYTES:
        raise InputError(
            f"{path}: EMPAD file size {size} B is not a whole number of {FRAME_BYTES} B frames "
            f"(128x130 float32); the file is truncated or not EMPAD"
        )
    n = size // FRAME_BYTES
    frames = FrameFile(path, 0, FRAME_BYTES, 0, "<f4", (FRAME_ROWS, FRAME_COLS))
    return RawSource(path=path, format="empad", n_frames=n, frame_shape=(DATA_ROWS, FRAME_COLS),
                     dtype=np.dtype("float32"), scan_shape=scan_from_name(path),
                     read_fn=lambda a, b: frames.read(a, b)[:, :DATA_ROWS, :].astype(np.float32),
                     metadata={"metadata_rows_dropped": FRAME_ROWS - DATA_ROWS}, close_fn=frames.close)
