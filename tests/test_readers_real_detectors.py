"""Readers on files real detectors wrote (../shared/real-detectors), checked against what
RosettaSciIO 0.15 reads from each (rosettasciio_reference.json): frame count and shape,
dtype, total counts, and orientation (first rows/columns sums and the brightest pixel).

Orientation (docs/conventions.md "Detector frame orientation"): Merlin frames are kept
as stored, which is RosettaSciIO's frame flipped top-to-bottom; TIA frames are flipped
to top-first, as RosettaSciIO does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ptycli.errors import InputError
from ptycli.readers import open_raw

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".." / "shared" / "real-detectors"
pytestmark = pytest.mark.skipif(not (REAL / "rosettasciio_reference.json").is_file(),
                                reason="../shared/real-detectors is not present")


def _reference() -> dict:
    path = REAL / "rosettasciio_reference.json"
    return json.loads(path.read_text()) if path.is_file() else {}


READABLE = sorted(k for k, v in _reference().items() if "error" not in v)
# RosettaSciIO narrows ARINA's stored uint32 to uint16 (the counts fit); ptycli keeps the file's type
STORED_DTYPE = {"arina/test_00_master.h5": "uint32"}


@pytest.mark.parametrize("name", READABLE)
def test_real_file_matches_rosettasciio(name):
    ref = _reference()[name]
    with open_raw(REAL / name) as src:
        frames = src.read(0, src.n_frames)
        dtype = src.dtype
    frame_shape = tuple(ref["shape"][-2:])
    assert frames.shape == (int(np.prod(ref["shape"][:-2] or [1])), *frame_shape)
    assert dtype == np.dtype(STORED_DTYPE.get(name, ref["dtype"])).newbyteorder("=")
    assert float(frames.sum(dtype=np.float64)) == ref["sum"]
    first = frames[0].astype(np.float64)
    if name.endswith(".mib"):  # kept as stored: RosettaSciIO's frame upside down
        first = first[::-1]
    assert list(first.sum(axis=1)[:8]) == ref["frame0_row_sums_first8"]
    assert list(first.sum(axis=0)[:8]) == ref["frame0_col_sums_first8"]
    if first.max() > 0:
        assert list(np.unravel_index(int(np.argmax(first)), first.shape)) == ref["frame0_argmax_yx"]


def test_merlin_hot_pixel_sits_where_the_file_name_says():
    """The recording named hot_pixel_52x_39y has its one hot pixel at x=52, y=39 as stored
    (RosettaSciIO puts it at y=88): the stored row order is the detector's own."""
    name = "quantumdetector/002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib"
    with open_raw(REAL / name) as src:
        first = src.read(0, 1)[0]
    assert np.unravel_index(int(np.argmax(first)), first.shape) == (39, 52)


@pytest.mark.parametrize("name, scan", [
    ("quantumdetector/002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib", (2, 4)),  # ScanX/ScanY
    ("quantumdetector/Single_9_Frame_CounterDepth_6_Rows_256.mib", (1, 9)),  # line trigger: 9 per line
    ("quantumdetector/001_4x2_6bit.mib", None),  # one frame per trigger: the .hdr cannot tell
    ("tia/new/16x16-diffraction_imagel_5x5x256x256_EDS_2.ser", (5, 5)),
    ("arina/test_00_master.h5", (4, 4)),  # from test_00.h5's STEM Metadata
])
def test_scan_shape_from_the_files_beside(name, scan):
    with open_raw(REAL / name) as src:
        assert src.scan_shape == scan


@pytest.mark.parametrize("kind", ["Single_1", "Single_9", "Quad_1", "Quad_9"])
def test_merlin_raw_mode_decodes_like_the_assembled_recording(kind):
    """R64 1-bit frames decode to the same detector picture as the U08 recording taken
    just after (same chips, same defects): >99.9 % of pixels equal, the flipped picture
    only ~96 %. The quad's chips land in the right quadrants, each the right way round."""
    qd = REAL / "quantumdetector"
    with open_raw(qd / f"{kind}_Frame_CounterDepth_1_Rows_256RAW.mib") as raw, \
            open_raw(qd / f"{kind}_Frame_CounterDepth_1_Rows_256.mib") as assembled:
        a, b = raw.read(0, raw.n_frames), assembled.read(0, assembled.n_frames)
    assert a.shape == b.shape and a.dtype == np.uint8
    assert (a == b).mean() > 0.999
    assert (a == b[:, ::-1]).mean() < 0.97


def test_bitshuffle_filter_missing_is_one_line(monkeypatch):
    """Without hdf5plugin the ARINA frames cannot be decoded: say what to install."""
    import h5py

    from ptycli.readers import hdf5 as h5reader

    monkeypatch.setattr(h5reader, "load_filters", lambda: None)
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda code: False)
    with pytest.raises(InputError, match="install hdf5plugin"):
        open_raw(REAL / "arina" / "test_00_master.h5")


def test_tia_spectra_are_refused_by_name():
    with pytest.raises(InputError, match=r"data type 0x4120; expected 2D images"):
        open_raw(REAL / "tia" / "new" / "16x16-diffraction_imagel_5x5x256x256_EDS_1.ser")


# ----------------------------------------------------------------------------- synthetic layouts
def write_ser(path: Path, frames: np.ndarray, scan: tuple[int, int], y_fast: bool = False,
              version: int = 0x0210) -> Path:
    """A TIA series as TIA writes one: header, two scan dimensions (the fast one first), offset and tag
    tables, then per element a 50-byte calibration header and the rows bottom first."""
    import struct

    ny, nx = scan
    n, h, w = frames.shape
    wide = version >= 0x0220
    off_fmt, off_size = ("<q", 8) if wide else ("<i", 4)
    dims = b""
    for size, desc in (((ny, b"Position"), (nx, b"Position")) if y_fast else ((nx, b"Position"), (ny, b"Position"))):
        dims += struct.pack("<iddii", size, 0.0, 1e-9, 0, len(desc)) + desc + struct.pack("<i", 6) + b"meters"
    head_len = 22 + off_size + 4
    table_at = head_len + len(dims)
    data_at = table_at + 2 * n * off_size
    elem = 50 + h * w * 4
    tags_at = data_at + n * elem
    head = struct.pack("<2sHHIIII", b"II", 0x0197, version, 0x4122, 0x4142, n, n)
    head += struct.pack(off_fmt, table_at) + struct.pack("<i", 2)
    order = [(j % ny) * nx + j // ny if y_fast else j for j in range(n)]  # element -> row-major frame
    with open(path, "wb") as f:
        f.write(head + dims)
        f.write(b"".join(struct.pack(off_fmt, data_at + k * elem) for k in range(n)))
        f.write(b"".join(struct.pack(off_fmt, tags_at + k * 24) for k in range(n)))
        for k in range(n):
            f.write(struct.pack("<ddiddihii", 0.0, 1.0, 0, 0.0, 1.0, 0, 6, w, h))
            f.write(frames[order[k]][::-1].astype("<i4").tobytes())  # stored bottom row first
        for k in range(n):
            iy, ix = divmod(order[k], nx)
            f.write(struct.pack("<IIdd", 0x4142, 0, ix * 1e-9, -iy * 1e-9))
    return path


@pytest.mark.parametrize("y_fast, version", [(False, 0x0210), (True, 0x0220)])
def test_ser_layouts(tmp_path, y_fast, version):
    frames = np.random.default_rng(1).integers(-5, 100, (6, 4, 5)).astype(np.int32)
    with open_raw(write_ser(tmp_path / "s.ser", frames, (2, 3), y_fast, version)) as src:
        assert src.scan_shape == (2, 3) and src.frame_shape == (4, 5)
        assert np.array_equal(src.read(0, 6), frames)  # row-major scan, top row first
        assert np.array_equal(src.read(2, 5), frames[2:5])


def _raw_words(cells: np.ndarray, bits: int) -> bytes:
    """Chip cells (rows, cols) packed as Merlin's raw mode sends them: 64-bit words, bytes reversed."""
    if bits == 1:
        packed = np.packbits(cells.reshape(-1).astype(np.uint8), bitorder="little")
    elif bits == 8:
        packed = cells.reshape(-1).astype(np.uint8)
    else:
        packed = cells.reshape(-1).astype("<u2").view(np.uint8)
    return packed.reshape(-1, 8)[:, ::-1].tobytes()


@pytest.mark.parametrize("depth, bits", [(6, 8), (12, 16)])
def test_merlin_raw_6_and_12_bit(tmp_path, depth, bits):
    """Counter depths the shared recordings lack in raw mode: the same word layout, wider cells."""
    rng = np.random.default_rng(depth)
    frames = rng.integers(0, 2**depth, (2, 256, 256))
    path = tmp_path / "raw.mib"
    with open(path, "wb") as f:
        for i, fr in enumerate(frames):
            head = (f"MQ1,{i + 1:06d},00384,01,0256,0256,R64,   1x1,01,2024-01-01 00:00:00.000,0.001,0,0,0,"
                    f"MQ1A,2024-01-01T00:00:00Z,1000ns,{depth},")
            f.write(head.encode().ljust(384, b"\x00") + _raw_words(fr, bits))
    with open_raw(path) as src:
        assert np.array_equal(src.read(0, 2), frames)
