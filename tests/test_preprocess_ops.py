"""Each preprocess operation against an exact numpy oracle on tiny data (float32 exact)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from ptycli.stages import preprocess as pp
from ptycli.stages import preprocess_ops as ops

CAL = dict(energy_kev=300, semiangle_mrad=20, dk_mrad=1.0, scan_step_a=0.5)


def disk_data(shape=(4, 4, 16, 16), centre=(8.0, 8.0), radius=4.0, level=40.0, seed=0):
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    disk = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2) * level + 1.0
    return np.random.default_rng(seed).poisson(np.broadcast_to(disk, shape)).astype(np.float32)


def run(tmp_path, data, name="o.zarr", **options):
    np.save(tmp_path / "in.npy", data)
    summary = pp.run(tmp_path / "in.npy", tmp_path / name, calibration=dict(CAL), options=options)
    g = zarr.open_group(str(tmp_path / name), mode="r")
    return g["patterns"][...], g, summary


def test_no_options_is_identity(tmp_path):
    data = disk_data()
    pats, g, _ = run(tmp_path, data)
    np.testing.assert_array_equal(pats, data.reshape(16, 16, 16))
    np.testing.assert_allclose(g["mean_pattern"][...], data.reshape(16, 16, 16).mean(0), rtol=1e-6)


def test_flip_transpose_crop_bin_pad_match_numpy(tmp_path):
    data = disk_data()
    opts = dict(crop="2:14,1:13", bin=2, pad="8")
    np.save(tmp_path / "in.npy", data)
    pp.run(tmp_path / "in.npy", tmp_path / "o.zarr", calibration=dict(CAL, flip_ky=True, transpose=True), options=opts)
    got = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["patterns"][...]
    # flip = reflection about the DC pixel 8 (i -> -i mod 16); even bin: blocks centred on the
    # DC pixel with their two edge pixels at half weight (circular, like the model's grid)
    ref = np.roll(data.reshape(16, 16, 16)[:, ::-1, :], 1, axis=1).transpose(0, 2, 1)[:, 2:14, 1:13]
    ref = np.roll(ref, (-6, -6), axis=(1, 2))  # DC pixel 6 -> 0
    ref = 0.5 * (ref + np.roll(ref, -1, axis=1))
    ref = 0.5 * (ref + np.roll(ref, -1, axis=2))
    ref = np.roll(ref, (1, 1), axis=(1, 2)).reshape(16, 6, 2, 6, 2).sum(axis=(2, 4))
    ref = np.roll(ref, (3, 3), axis=(1, 2))  # DC block 0 -> the centre pixel 3
    ref = np.pad(ref, ((0, 0), (1, 1), (1, 1)))
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_centred_crop_keeps_dc_pixel(tmp_path):
    data = np.zeros((4, 16, 16), np.float32)
    data[:, 8, 8] = 5.0  # the DC pixel M//2
    pats, _, _ = run(tmp_path, data, crop="6")
    assert pats.shape == (4, 6, 6) and pats[0, 3, 3] == 5.0


def test_scan_binning_sums_blocks_and_scales_step(tmp_path):
    data = disk_data((4, 6, 8, 8))
    pats, g, s = run(tmp_path, data, bin_scan=2, chunk_mb=0.0005)  # several blocks
    ref = data.reshape(2, 2, 3, 2, 8, 8).sum(axis=(1, 3)).reshape(6, 8, 8)
    np.testing.assert_array_equal(pats, ref)
    assert s["scan_shape"] == [2, 3] and g.attrs["calibration"]["scan_step_a"] == [1.0, 1.0]


@pytest.mark.parametrize("method,atol", [("bilinear", 0.0), ("fourier", 1e-3)])  # fourier: float32 FFT round-off
def test_integer_shift_is_a_roll(tmp_path, method, atol):
    data = disk_data((2, 2, 16, 16))
    pats, _, _ = run(tmp_path, data, shift_px=(2.0, -3.0), shift_method=method)
    ref = np.roll(data.reshape(4, 16, 16), (2, -3), axis=(1, 2))
    np.testing.assert_allclose(pats, ref, atol=atol)


def test_subpixel_shifts_move_the_centroid_exactly(tmp_path):
    yy, xx = np.mgrid[:32, :32]
    disk = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 25) * 40.0  # zero background: nothing wraps round
    data = np.random.default_rng(3).poisson(np.broadcast_to(disk, (2, 2, 32, 32))).astype(np.float32)
    flat = data.reshape(4, 32, 32)
    # bilinear is exact up to float32; Fourier ringing reaches the frame edge and wraps round.
    # The store clips that ringing (counts >= 0, see test_preprocess_centring), so the exact
    # Fourier shift is checked before the clip, and the store against its clipped version.
    fourier = ops.fourier_shift(flat, (0.3, -0.6))
    stored, _, _ = run(tmp_path, data, name="clipped.zarr", shift_px=(0.3, -0.6), shift_method="fourier")
    np.testing.assert_allclose(stored, np.maximum(fourier, 0), atol=1e-3)
    for method, atol in (("bilinear", 1e-4), ("fourier", 1e-2)):
        pats = fourier if method == "fourier" else run(tmp_path, data, name=f"{method}.zarr", shift_px=(0.3, -0.6),
                                                       shift_method=method)[0]
        # f(r - a): the first moment moves by +a (no wrap: the disk is far from the edge)
        dy = (pats * yy).sum((1, 2)) / pats.sum((1, 2)) - (flat * yy).sum((1, 2)) / flat.sum((1, 2))
        dx = (pats * xx).sum((1, 2)) / pats.sum((1, 2)) - (flat * xx).sum((1, 2)) / flat.sum((1, 2))
        np.testing.assert_allclose(dy, 0.3, atol=atol, err_msg=method)
        np.testing.assert_allclose(dx, -0.6, atol=atol, err_msg=method)
        np.testing.assert_allclose(pats.sum((1, 2)), flat.sum((1, 2)), rtol=1e-5)  # counts kept
        if method == "bilinear":
            assert pats.min() >= 0  # no ringing


def test_center_auto_puts_bf_disk_on_dc_pixel(tmp_path):
    data = disk_data((3, 3, 32, 32), centre=(13.4, 18.7), radius=6.0, level=400.0)
    pats, g, _ = run(tmp_path, data, center="auto")
    cy, cx, r = ops.bf_disk(pats.mean(axis=0))
    assert abs(cy - 16) < 0.2 and abs(cx - 16) < 0.2, (cy, cx)
    op = [o for o in g.attrs["ptycli"]["operations"] if o["op"] == "center"][0]
    np.testing.assert_allclose(op["shift_px"], [16 - 13.4, 16 - 18.7], atol=0.15)


def test_repair_replaces_hot_and_dead_pixels_by_neighbour_median(tmp_path):
    data = disk_data((3, 3, 16, 16), level=40.0)
    data[..., 3, 12] = 5000.0  # hot, outside the disk
    data[..., 8, 9] = 0.0  # dead, inside the disk
    pats, g, _ = run(tmp_path, data, repair_threshold=8.0)
    flat = data.reshape(9, 16, 16)
    for (y, x) in ((3, 12), (8, 9)):
        neigh = [flat[:, y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
        np.testing.assert_array_equal(pats[:, y, x], np.median(np.stack(neigh), axis=0))
    op = [o for o in g.attrs["ptycli"]["operations"] if o["op"] == "repair_pixels"][0]
    assert sorted(map(tuple, op["pixels"])) == [(3, 12), (8, 9)]  # nothing else flagged (disk rim kept)


def test_multiply_clip_negatives_nan_zero_and_integer_dtype(tmp_path):
    data = disk_data((2, 2, 8, 8))
    data[0, 0, 0, 0] = -3.0
    data[0, 1, 1, 1] = np.nan
    pats, _, _ = run(tmp_path, data, multiply=2.0, clip_negatives=True, nan="zero", dtype="uint16")
    ref = np.nan_to_num(data.reshape(4, 8, 8), nan=0.0)
    ref = np.maximum(ref, 0) * 2
    assert pats.dtype == np.uint16
    np.testing.assert_array_equal(pats, ref.astype(np.uint16))


def test_estimate_dk_from_bf_disk(tmp_path):
    data = disk_data((3, 3, 64, 64), centre=(32, 32), radius=10.0, level=200.0)
    np.save(tmp_path / "in.npy", data)
    cal = {k: v for k, v in CAL.items() if k != "dk_mrad"}
    s = pp.run(tmp_path / "in.npy", tmp_path / "o.zarr", calibration=cal, options=dict(estimate_dk=True))
    # 317 disk pixels -> sqrt(317/π) = 10.045 px; dk = α / R_BF (physics.md §1.3)
    assert s["calibration"]["dk_mrad"] == pytest.approx(20.0 / 10.045, rel=2e-3)


def test_operations_are_recorded_in_order(tmp_path):
    _, g, _ = run(tmp_path, disk_data(), crop="12", bin=2, multiply=1.5)
    names = [o["op"] for o in g.attrs["ptycli"]["operations"]]
    assert names == ["read", "nan", "negatives", "multiply", "crop", "bin", "dtype"]
