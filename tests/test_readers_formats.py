"""Readers: every published layout written here (tiny), read back frame-exact, chunked.

The writer helpers below are also used by the preprocess tests (same layouts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ptycli.errors import InputError
from ptycli.readers import detect_format, formats, open_raw


# ----------------------------------------------------------------------------- layouts
def counts(shape=(3, 4, 8, 8), seed=0, lam=5.0) -> np.ndarray:
    """Integer counts (exact in u8, u16, u32 and float32): the same content in every format."""
    return np.random.default_rng(seed).poisson(lam, size=shape).astype(np.uint16)


def write_empad(path: Path, frames: np.ndarray) -> Path:
    """EMPAD: 128x130 little-endian float32 per frame; rows 128-129 hold metadata."""
    n = frames.shape[0]
    full = np.full((n, 130, 128), -7.0, dtype="<f4")  # metadata rows: junk that must be dropped
    full[:, :128, :] = frames
    full.tofile(path)
    return path


def write_mib(path: Path, frames: np.ndarray, pixel: str = "U16", header_bytes: int = 384) -> Path:
    """Merlin: per frame an ASCII header padded to header_bytes, then big-endian pixels."""
    dt = {"U08": ">u1", "U16": ">u2", "U32": ">u4"}[pixel]
    n, h, w = frames.shape
    with open(path, "wb") as f:
        for i in range(n):
            head = f"MQ1,{i + 1:06d},{header_bytes:05d},01,{w:04d},{h:04d},{pixel},   1x1,01,2024-01-01 00:00:00.000,0.001,0,0,0,"
            f.write(head.encode().ljust(header_bytes, b"\x00"))
            f.write(frames[i].astype(dt).tobytes())
    return path


def write_h5(path: Path, data: np.ndarray, name: str = "entry/data/data", decoy: bool = True) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=data, chunks=(1, *data.shape[1:]))
        if decoy:  # a smaller 3D dataset that the "largest" rule must skip
            f.create_dataset("entry/dark", data=np.zeros((2, 4, 4), np.float32))
    return path


# ----------------------------------------------------------------------------- tests
def test_registry_lists_every_format():
    assert {"npy", "hdf5", "zarr", "empad", "mib", "tiff"} <= set(formats())


@pytest.mark.parametrize("shape", [(12, 8, 8), (3, 4, 8, 8)])
def test_npy_3d_and_4d_memory_mapped(tmp_path, shape):
    data = counts(shape).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    with open_raw(tmp_path / "d.npy") as src:
        assert src.n_frames == 12 and src.frame_shape == (8, 8)
        assert src.scan_shape == (None if len(shape) == 3 else (3, 4))
        got = np.concatenate([c for _, c in src.chunks(5)])
    np.testing.assert_array_equal(got, data.reshape(12, 8, 8))


def test_read_flat_spans_scan_rows(tmp_path):
    data = counts((3, 4, 8, 8))
    np.save(tmp_path / "d.npy", data)
    with open_raw(tmp_path / "d.npy") as src:
        np.testing.assert_array_equal(src.read(3, 9), data.reshape(12, 8, 8)[3:9])


def test_hdf5_largest_dataset_and_named_dataset(tmp_path):
    data = counts()
    write_h5(tmp_path / "d.h5", data)
    with open_raw(tmp_path / "d.h5") as src:
        assert src.metadata["dataset"] == "entry/data/data" and src.scan_shape == (3, 4)
        np.testing.assert_array_equal(src.read(0, 12), data.reshape(12, 8, 8))
    with open_raw(tmp_path / "d.h5", dataset="entry/dark") as src:
        assert src.n_frames == 2


def test_zarr_plain_array(tmp_path):
    import zarr

    data = counts((12, 8, 8))
    z = zarr.open_array(str(tmp_path / "d.zarr"), mode="w", shape=data.shape, dtype=data.dtype, chunks=(5, 8, 8))
    z[...] = data
    with open_raw(tmp_path / "d.zarr") as src:
        np.testing.assert_array_equal(src.read(2, 11), data[2:11])


def test_empad_drops_metadata_rows_and_reads_scan_from_name(tmp_path):
    data = counts((6, 128, 128), lam=2.0)
    path = write_empad(tmp_path / "scan_x3_y2.raw", data)
    with open_raw(path) as src:
        assert src.format == "empad" and src.frame_shape == (128, 128) and src.n_frames == 6
        assert src.scan_shape == (2, 3)  # (ny, nx) from _x3_y2
        np.testing.assert_array_equal(src.read(0, 6), data.astype(np.float32))


@pytest.mark.parametrize("pixel", ["U08", "U16", "U32"])
def test_mib_header_parsed_for_each_depth(tmp_path, pixel):
    data = counts((5, 6, 8), lam=3.0)
    path = write_mib(tmp_path / "d.mib", data, pixel)
    with open_raw(path) as src:
        assert (src.n_frames, src.frame_shape) == (5, (6, 8))
        assert src.metadata["mib"]["header_bytes"] == 384
        assert src.dtype == np.dtype({"U08": "u1", "U16": "u2", "U32": "u4"}[pixel])
        np.testing.assert_array_equal(src.read(1, 4), data[1:4])


def test_tiff_stack_one_page_per_frame(tmp_path):
    import tifffile

    data = counts((7, 8, 8))
    tifffile.imwrite(tmp_path / "d.tif", data)
    with open_raw(tmp_path / "d.tif") as src:
        assert src.n_frames == 7
        np.testing.assert_array_equal(np.concatenate([c for _, c in src.chunks(3)]), data)


def test_magic_bytes_identify_a_misnamed_file(tmp_path):
    write_h5(tmp_path / "d.bin", counts())
    assert detect_format(tmp_path / "d.bin").name == "hdf5"


# ----------------------------------------------------------------------------- bad files
def test_unknown_format(tmp_path):
    (tmp_path / "d.xyz").write_bytes(b"hello")
    with pytest.raises(InputError, match="unknown format"):
        open_raw(tmp_path / "d.xyz")


@pytest.mark.parametrize("shape", [(8, 8), (2, 2, 2, 8, 8)])
def test_2d_and_5d_arrays_rejected(tmp_path, shape):
    np.save(tmp_path / "d.npy", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match=f"{len(shape)}D shape"):
        open_raw(tmp_path / "d.npy")


def test_truncated_empad_and_mib(tmp_path):
    empad = write_empad(tmp_path / "d.raw", counts((2, 128, 128)))
    with open(empad, "r+b") as f:
        f.truncate(empad.stat().st_size - 100)
    with pytest.raises(InputError, match="truncated"):
        open_raw(empad)
    mib = write_mib(tmp_path / "d.mib", counts((3, 6, 8)))
    with open(mib, "r+b") as f:
        f.truncate(mib.stat().st_size - 10)
    with pytest.raises(InputError, match="truncated"):
        open_raw(mib)


def test_mib_raw_bitpacked_refused(tmp_path):
    path = tmp_path / "d.mib"
    path.write_bytes(b"MQ1,000001,00384,01,0256,0256,R64,   2x2,".ljust(384, b"\x00"))
    with pytest.raises(InputError, match="R64"):
        open_raw(path)
