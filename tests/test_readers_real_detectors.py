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
