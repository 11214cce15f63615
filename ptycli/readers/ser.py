"""FEI/Thermo Fisher TIA ``.ser`` series of 2D diffraction images (the ``.emi`` beside it
holds only display metadata and is not needed).

Layout (TIA's "Series Data File" description): a header (byte order ``II``, series id
0x0197, version 0x0210 with 32-bit or 0x0220 with 64-bit file offsets, data type 0x4122
= 2D elements), the scan dimensions (size, calibration offset and delta, description,
units), then an array of file offsets, one per element. Each element is a 50-byte
calibration header (x and y offset/delta/element, a data-type code, size x, size y)
followed by size_y rows of size_x pixels, x fastest.

Scan: a 4D acquisition has two dimensions, the first the fast one (x); the scan is
(dims[1], dims[0]) in ptycli's row-major order. When the per-element position tags say
y is the fast axis instead (dims[0] is then y), frames are re-ordered to row-major.

Orientation: TIA's image y axis points up (calibration delta > 0 from row 0), so its first
stored row is the bottom of the image as TIA shows it; frames are flipped so that row 0 is
the top, as for every other format (docs/conventions.md "Detector frame orientation").
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import RawSource
from .registry import register

SERIES_ID = 0x0197
IMAGE_2D = 0x4122
# TIA's data-type codes (little-endian)
DTYPES = {1: "<u1", 2: "<u2", 3: "<u4", 4: "<i1", 5: "<i2", 6: "<i4", 7: "<f4", 8: "<f8", 9: "<c8", 10: "<c16"}
ELEMENT_HEADER = struct.Struct("<ddiddihii")  # x: offset, delta, element; y: same; type; size x, size y


def _read_header(f: Any, path: Path) -> tuple[int, list[dict[str, Any]], np.ndarray]:
    head = f.read(30)
    if len(head) < 30 or head[:2] != b"II" or struct.unpack_from("<H", head, 2)[0] != SERIES_ID:
        raise InputError(f"{path}: not a TIA .ser file (expected byte order 'II' and series id 0x0197)")
    version, data_type, _tag, total, valid = struct.unpack_from("<HIIII", head, 4)
    if data_type != IMAGE_2D:
        raise InputError(f"{path}: TIA series of data type {data_type:#06x}; expected 2D images (0x4122)")
    wide = version >= 0x0220  # 0x0220 stores file offsets as 64-bit integers
    f.seek(22)
    offset_array = struct.unpack("<q" if wide else "<i", f.read(8 if wide else 4))[0]
    (ndim,) = struct.unpack("<i", f.read(4))
    dims = []
    for _ in range(ndim):
        size, cal_offset, cal_delta, _elem, desc_len = struct.unpack("<iddii", f.read(28))
        desc = f.read(desc_len).decode("latin-1")
        (units_len,) = struct.unpack("<i", f.read(4))
        units = f.read(units_len).decode("latin-1")
        dims.append({"size": size, "offset": cal_offset, "delta": cal_delta, "description": desc, "units": units})
    f.seek(offset_array)
    table = np.frombuffer(f.read(2 * total * (8 if wide else 4)), dtype="<i8" if wide else "<i4")
    offsets, tags = table[:total], table[total:]
    if len(offsets) < valid or valid == 0:
        raise InputError(f"{path}: TIA offset table holds {len(offsets)} of {valid} elements (truncated)")
    return valid, dims, offsets[:valid].astype(np.int64), tags[:2].astype(np.int64)


def _y_fast(f: Any, tags: np.ndarray) -> bool:
    """True when the first two elements' position tags (type 0x4142) differ in y, not x."""
    pos = []
    for t in tags:
        f.seek(int(t))
        raw = f.read(24)
        if len(raw) < 24 or struct.unpack_from("<H", raw)[0] != 0x4142:
            return False  # time-only tags: no positions, keep the stored order
        pos.append(struct.unpack_from("<dd", raw, 8))
    return len(pos) == 2 and pos[0][0] == pos[1][0] and pos[0][1] != pos[1][1]


@register("ser", (".ser",), magic=(b"II\x97\x01",))
def open_ser(path: Path, **_: Any) -> RawSource:
    f = open(path, "rb")
    try:
        n, dims, offsets, tags = _read_header(f, path)
        y_fast = len(dims) == 2 and _y_fast(f, tags)
        f.seek(int(offsets[0]))
        element = ELEMENT_HEADER.unpack(f.read(ELEMENT_HEADER.size))
    except (struct.error, ValueError):
        f.close()
        raise InputError(f"{path}: TIA .ser header is truncated or corrupt") from None
    except InputError:
        f.close()
        raise
    code, nx, ny = element[6], element[7], element[8]
    if code not in DTYPES:
        f.close()
        raise InputError(f"{path}: TIA data-type code {code}; expected one of {sorted(DTYPES)}")
    dtype = np.dtype(DTYPES[code])
    nbytes = nx * ny * dtype.itemsize

    def read(a: int, b: int) -> np.ndarray:
        out = np.empty((b - a, ny, nx), dtype=dtype.newbyteorder("="))
        for k, off in enumerate(offsets[a:b]):
            f.seek(int(off) + ELEMENT_HEADER.size)
            buf = f.read(nbytes)
            if len(buf) < nbytes:
                raise InputError(f"{path}: file ended inside frame {a + k} (truncated)")
            out[k] = np.frombuffer(buf, dtype=dtype).reshape(ny, nx)[::-1]
        return out

    scan = (dims[1]["size"], dims[0]["size"]) if len(dims) == 2 else None
    if y_fast and scan is not None:  # column-major scan: element (iy, ix) is at ix * ny + iy
        scan = (dims[0]["size"], dims[1]["size"])
        j = np.arange(n)
        offsets = offsets[(j % scan[1]) * scan[0] + j // scan[1]] if scan[0] * scan[1] == n else offsets
    if scan is not None and scan[0] * scan[1] != n:
        scan = None  # an interrupted acquisition: the user gives the scan
    meta = {"ser": {"dimensions": dims, "pixel_delta": [element[4], element[1]]}}
    return RawSource(path=path, format="ser", n_frames=n, frame_shape=(ny, nx), dtype=dtype.newbyteorder("="),
                     read_fn=read, scan_shape=scan, metadata=meta, close_fn=f.close)
