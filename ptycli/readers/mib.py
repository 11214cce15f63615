"""Quantum Detectors Merlin ``.mib``: each frame is an ASCII header then big-endian pixels.

Header fields (comma separated): ``MQ1, frame number, header length [B], chips, width,
height, pixel type (U08/U16/U32/R64), layout, ...``; after ``MQ1A, time stamp, exposure``
comes the counter depth. The ``.hdr`` file the Merlin software writes beside the ``.mib``
gives the scan: ``ScanX``/``ScanY`` when present, else a line-triggered acquisition's
``Frames per Trigger`` (= scan_x).

Orientation: frames are returned as stored, the first row in the file is row 0 (ky = 0 at
the top). RosettaSciIO flips every frame top-to-bottom; ptycli does not: the
docs/conventions.md section "Detector frame orientation" says why.

``R64`` ("raw", undecoded chip data) is decoded for counter depths 1, 6 and 12 on single
chips and on a 2x2 quad, following the raw layout described under :func:`decode_raw`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import FrameFile, RawSource
from .registry import register

DTYPES = {"U01": ">u1", "U08": ">u1", "U16": ">u2", "U32": ">u4"}
# R64 frames hold counter-depth-sized cells packed in 64-bit words: bits per stored pixel
RAW_BITS = {1: 1, 6: 8, 12: 16}
HDR_SHOWN = ("Assembly Size (NX1, 2X2)", "Counter Depth (number)", "Frames in Acquisition (Number)",
             "Frames per Trigger (Number)", "ScanX", "ScanY")


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
    if pixel not in DTYPES and pixel != "R64":
        raise InputError(f"{path}: Merlin pixel type {pixel!r} not supported; expected one of "
                         f"{sorted(DTYPES) + ['R64']}")
    depth = None
    if "MQ1A" in fields:  # extended header: MQ1A, timestamp, exposure, counter depth
        i = fields.index("MQ1A")
        depth = int(fields[i + 3]) if len(fields) > i + 3 and fields[i + 3].strip().isdigit() else None
    return {"header_bytes": header_bytes, "width": width, "height": height, "pixel_type": pixel,
            "chips": fields[3].strip(), "layout": fields[7].strip() if len(fields) > 7 else "",
            "counter_depth": depth}


def read_hdr(path: Path) -> dict[str, str]:
    """The acquisition's ``.hdr`` beside the ``.mib`` as {key: value}; {} when there is none."""
    hdr = path.with_suffix(".hdr")
    if not hdr.is_file():
        return {}
    out: dict[str, str] = {}
    for line in hdr.read_bytes().decode("ascii", errors="replace").replace("\x00", "").splitlines():
        if "\t" in line and not line.startswith(("HDR", "End")):
            key, value = line.split("\t", 1)
            out[key.rstrip(":").strip()] = value.strip()
    return out


def scan_from_hdr(hdr: dict[str, str], n_frames: int, path: Path) -> tuple[int, int] | None:
    """(scan_y, scan_x) the .hdr states; None when it does not (frame-triggered, one frame each)."""
    try:
        if "ScanX" in hdr and "ScanY" in hdr:
            shape = (int(hdr["ScanY"]), int(hdr["ScanX"]))
        else:
            per_line = int(hdr.get("Frames per Trigger (Number)", "1"))
            total = int(hdr.get("Frames in Acquisition (Number)", str(n_frames)))
            # one frame per trigger says nothing about the lines; a line trigger gives scan_x
            if per_line <= 1 or total % per_line:
                return None
            shape = (total // per_line, per_line)
    except ValueError:
        raise InputError(f"{path.with_suffix('.hdr')}: scan fields are not integers "
                         f"(ScanX/ScanY/Frames per Trigger)") from None
    # an interrupted acquisition leaves fewer frames than planned: keep the .hdr out of it
    return shape if shape[0] * shape[1] == n_frames else None


def decode_raw(words: np.ndarray, depth: int, height: int, width: int, quad: bool) -> np.ndarray:
    """R64 frames (n, bytes) -> assembled (n, rows, cols) counts.

    Raw mode streams each chip's counters in 64-bit words whose bytes are in reverse
    order; within a word the cells are then in order (1-bit cells least-significant bit
    first, 12-bit cells as little-endian 16-bit). A 2x2 quad's raw row holds one row of
    each chip as [chip 4 | chip 3 | chip 2 | chip 1]; chips 1, 2 form the top half as
    read, chips 3, 4 the bottom half, each chip rotated by 180 degrees (LiberTEM's Merlin decoder
    documents the same layout).
    """
    n = words.shape[0]
    swapped = words.reshape(n, -1, 8)[:, :, ::-1].reshape(n, -1)
    if depth == 1:
        cells = np.unpackbits(swapped, axis=1, bitorder="little")
    elif depth == 6:
        cells = swapped
    else:
        cells = (swapped.view("<u2") & 0x0FFF).astype(np.uint16)
    cells = cells.reshape(n, height, width)
    if not quad:
        return cells
    chip = width // 4
    c4, c3, c2, c1 = (cells[:, :, k * chip:(k + 1) * chip] for k in range(4))
    top = np.concatenate([c1, c2], axis=2)
    bottom = np.concatenate([c3[:, ::-1, ::-1], c4[:, ::-1, ::-1]], axis=2)  # each chip turned
    return np.concatenate([top, bottom], axis=1)


@register("mib", (".mib",), magic=(b"MQ1,",))
def open_mib(path: Path, **_: Any) -> RawSource:
    h = parse_header(path)
    raw = h["pixel_type"] == "R64"
    if raw:
        depth = h["counter_depth"] or int(read_hdr(path).get("Counter Depth (number)", "0") or 0)
        if depth not in RAW_BITS:
            raise InputError(f"{path}: raw (R64) Merlin frames at counter depth {depth} are not decoded; "
                             "expected depth 1, 6 or 12 (re-save as U08/U16/U32 in the Merlin software)")
        quad = h["layout"] == "2x2"
        if h["chips"] not in ("01", "1", "04", "4") or (h["chips"] in ("04", "4") and not quad):
            raise InputError(f"{path}: raw (R64) frames of layout {h['layout']!r} with {h['chips']} chips "
                             "are not decoded; expected a single chip or a 2x2 quad")
        data_bytes = h["width"] * h["height"] * RAW_BITS[depth] // 8
        frame_shape = (2 * h["height"], h["width"] // 2) if quad else (h["height"], h["width"])
        dtype = np.dtype(np.uint16 if depth == 12 else np.uint8)
    else:
        dtype = np.dtype(DTYPES[h["pixel_type"]])
        data_bytes = h["width"] * h["height"] * dtype.itemsize
        frame_shape = (h["height"], h["width"])
    frame_bytes = h["header_bytes"] + data_bytes
    size = path.stat().st_size
    if size % frame_bytes:
        raise InputError(
            f"{path}: size {size} B is not a whole number of {frame_bytes} B frames "
            f"({h['header_bytes']} B header + {h['height']}x{h['width']} {h['pixel_type']}); file truncated"
        )
    n = size // frame_bytes
    hdr = read_hdr(path)
    kept = {k: v for k, v in hdr.items() if k in HDR_SHOWN}  # the rest is DAC/threshold detail
    meta = {"mib": h, **({"hdr": kept} if kept else {})}
    if raw:
        frames = FrameFile(path, 0, frame_bytes, h["header_bytes"], np.uint8, (data_bytes,))
        return RawSource(path=path, format="mib", n_frames=n, frame_shape=frame_shape, dtype=dtype,
                         read_fn=lambda a, b: decode_raw(frames.read(a, b), depth, h["height"], h["width"], quad),
                         scan_shape=scan_from_hdr(hdr, n, path), metadata=meta, close_fn=frames.close)
    frames = FrameFile(path, 0, frame_bytes, h["header_bytes"], dtype, frame_shape)
    native = dtype.newbyteorder("=")
    return RawSource(path=path, format="mib", n_frames=n, frame_shape=frame_shape,
                     dtype=native, read_fn=lambda a, b: frames.read(a, b).astype(native),
                     scan_shape=scan_from_hdr(hdr, n, path), metadata=meta, close_fn=frames.close)
