"""Quantum Detectors Merlin ``.mib``: each frame is an ASCII header then big-endian pixels.

Header fields (comma separated): ``MQ1, frame number, header length [B], chips, width,
height, pixel type (U08/U16/U32/R64), layout, ...``. Only the assembled integer types are
read; ``R64`` (raw bit-packed chip data) needs the vendor's unpacking and is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import FrameFile, RawSource
from .registry import register

DTYPES = {"U01": ">u1", "U08": ">u1", "U16": ">u2", "U32": ">u4"}


def parse_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(2048)
    fields = head.decode("ascii", errors="replace").split(",")
    if len(fields) < 7 or fields[0] != "MQ1":
        raise InputError(f"{path}: not a Merlin .mib file (header does not start with 'MQ1,')")
    try:
        header_bytes, width, height = int(fields[2]), int(fields[4]), int(fields[5])
    except ValueError:
        raise InputError(f"{path}: corrupt Merlin header {','.join(fields[:7])!r}") from None
    pixel = fields[6].strip()
    if pixel not in DTYPES:
        raise InputError(f"{path}: Merlin pixel type {pixel!r} not supported; expected one of {sorted(DTYPES)}")
    return {"header_bytes": header_bytes, "width": width, "height": height, "pixel_type": pixel,
            "chips": fields[3].strip(), "layout": fields[7].strip() if len(fields) > 7 else ""}


@register("mib", (".mib",), magic=(b"MQ1,",))
def open_mib(path: Path, **_: Any) -> RawSource:
    h = parse_header(path)
    dtype = np.dtype(DTYPES[h["pixel_type"]])
    frame_bytes = h["header_bytes"] + h["width"] * h["height"] * dtype.itemsize
    size = path.stat().st_size
    if size % frame_bytes:
        raise InputError(
            f"{path}: size {size} B is not a whole number of {frame_bytes} B frames "
            f"({h['header_bytes']} B header + {h['height']}x{h['width']} {h['pixel_type']}); file truncated"
        )
    n = size // frame_bytes
    frames = FrameFile(path, 0, frame_bytes, h["header_bytes"], dtype, (h["height"], h["width"]))
    native = dtype.newbyteorder("=")
    return RawSource(path=path, format="mib", n_frames=n, frame_shape=(h["height"], h["width"]),
                     dtype=native, read_fn=lambda a, b: frames.read(a, b).astype(native),
                     metadata={"mib": h}, close_fn=frames.close)
