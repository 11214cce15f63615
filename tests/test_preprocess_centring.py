"""preprocess keeps the DC pixel on the centre pixel M//2 (physics.md §1.4) through flips,
transpose and detector binning, and never stores negative counts after a Fourier shift."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from ptycli.stages import preprocess as pp
from ptycli.stages import preprocess_ops as ops

CAL = dict(energy_kev=300, semiangle_mrad=20, dk_mrad=1.0, scan_step_a=0.5)


def run(tmp_path, data, name="o.zarr", cal=None, **options):
    np.save(tmp_path / "in.npy", data)
    summary = pp.run(tmp_path / "in.npy", tmp_path / name, calibration=dict(CAL, **(cal or {})), options=options,
                     overwrite=True)
    g = zarr.open_group(str(tmp_path / name), mode="r")
    return g["patterns"][...], g, summary


def disk(m, centre=None, radius=None, n=(2, 2)):
    """A hard-edged disk (sharp, so a Fourier shift rings) exactly symmetric about ``centre``."""
    cy, cx = (m // 2, m // 2) if centre is None else centre
    yy, xx = np.mgrid[:m, :m]
    d = (((yy - cy) ** 2 + (xx - cx) ** 2) <= (radius or m / 5) ** 2).astype(np.float32) * 50.0
    return np.broadcast_to(d, (*n, m, m)).copy()


def gaussian(m, centre, sigma=2.0, n=(2, 2)):
    """A smooth blob: its sampled centre of mass is its centre to ~1e-9 px, even off the grid."""
    yy, xx = np.mgrid[:m, :m]
    g = 1000.0 * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))
    return np.broadcast_to(g.astype(np.float32), (*n, m, m)).copy()


def com_offset(frames):
    """Centre of mass of the mean frame minus the centre pixel (M//2, M//2) [px]."""
    f = np.asarray(frames, dtype=np.float64).mean(axis=0)
    yy, xx = np.mgrid[: f.shape[0], : f.shape[1]]
    return (f * yy).sum() / f.sum() - f.shape[0] // 2, (f * xx).sum() / f.sum() - f.shape[1] // 2


def area_binned(frame, b):
    """Oracle: each output pixel integrates a b-times larger pixel centred on c + b (q - q_c).

    Input pixel p spans [p - 1/2, p + 1/2]; the footprint wraps round the frame (circular grid).
    """
    m_old = frame.shape[-1]
    m, c = m_old // b, m_old // 2
    w = np.zeros((m, m_old))
    for q in range(m):
        lo = c + b * (q - m // 2) - b / 2
        for p in range(int(np.floor(lo)) - 1, int(np.ceil(lo + b)) + 2):
            w[q, p % m_old] += max(0.0, min(lo + b, p + 0.5) - max(lo, p - 0.5))
    return w @ frame @ w.T


# ----------------------------------------------------------------------------- flips
@pytest.mark.parametrize("m", [16, 15])
@pytest.mark.parametrize("flips", [(True, False, False), (False, True, False), (True, True, True)])
def test_flips_reflect_about_the_dc_pixel(tmp_path, m, flips):
    flip_ky, flip_kx, transpose = flips
    data = np.random.default_rng(1).poisson(5.0, (2, 2, m, m)).astype(np.float32)
    pats, g, _ = run(tmp_path, data, cal=dict(flip_ky=flip_ky, flip_kx=flip_kx, transpose=transpose))
    i = np.arange(m)
    c = m // 2
    ref = data.reshape(4, m, m)
    ref = ref[:, (2 * c - i) % m, :] if flip_ky else ref  # k -> -k: the DC pixel c maps to itself
    ref = ref[:, :, (2 * c - i) % m] if flip_kx else ref
    ref = ref.transpose(0, 2, 1) if transpose else ref
    np.testing.assert_array_equal(pats, ref)
    dy, dx = com_offset(run(tmp_path, disk(m), name="d.zarr", cal=dict(flip_ky=flip_ky, flip_kx=flip_kx,
                                                                         transpose=transpose))[0])
    assert abs(dy) < 1e-6 and abs(dx) < 1e-6, (dy, dx)


def test_center_auto_with_flip_measures_the_flipped_disk(tmp_path):
    # the BF disk sits 2 px above the centre pixel 12; after the ky flip it is 2 px below
    pats, g, _ = run(tmp_path, gaussian(24, (10.0, 12.0)), cal=dict(flip_ky=True), center="auto")
    op = [o for o in g.attrs["ptycli"]["operations"] if o["op"] == "center"][0]
    np.testing.assert_allclose(op["bf_centre_px"], [14.0, 12.0], atol=1e-6)
    np.testing.assert_allclose(com_offset(pats), (0, 0), atol=1e-3)


# ----------------------------------------------------------------------------- binning
SIZES = [(16, 2), (16, 4), (18, 2), (18, 3), (15, 3), (12, 4), (20, 4)]


@pytest.mark.parametrize("m,b", SIZES)
def test_detector_bin_keeps_dc_on_the_centre_pixel(tmp_path, m, b):
    pats, g, s = run(tmp_path, disk(m), bin=b)
    assert pats.shape[-1] == m // b
    np.testing.assert_allclose(com_offset(pats), (0, 0), atol=0.05)
    np.testing.assert_allclose(pats.sum((1, 2)), disk(m).reshape(4, m, m).sum((1, 2)), rtol=1e-6)  # counts kept
    assert s["calibration"]["dk_mrad"] == pytest.approx(1.0 * b)


@pytest.mark.parametrize("m,b", SIZES)
def test_detector_bin_integrates_pixels_centred_on_dc(tmp_path, m, b):
    data = np.random.default_rng(2).poisson(7.0, (1, 2, m, m)).astype(np.float32)
    pats, _, _ = run(tmp_path, data, bin=b)
    for j in range(2):
        np.testing.assert_allclose(pats[j], area_binned(data[0, j].astype(np.float64), b), rtol=1e-5)


@pytest.mark.parametrize("m,b", [(16, 2), (16, 4), (18, 3), (15, 3)])
def test_flip_then_bin_keeps_dc_centred(tmp_path, m, b):
    pats, _, _ = run(tmp_path, disk(m), bin=b, cal=dict(flip_ky=True, flip_kx=True))
    np.testing.assert_allclose(com_offset(pats), (0, 0), atol=0.05)


@pytest.mark.parametrize("method", ["bilinear", "fourier"])
@pytest.mark.parametrize("m,b", [(32, 2), (32, 4), (30, 3)])
def test_subpixel_shift_then_bin_lands_on_the_centre_pixel(tmp_path, method, m, b):
    # the blob is 0.3, -0.6 px off the DC pixel; shifting it back and binning must centre it
    c = m // 2
    data = gaussian(m, (c + 0.3, c - 0.6))
    pats, g, _ = run(tmp_path, data, bin=b, shift_px=(-0.3, 0.6), shift_method=method)
    np.testing.assert_allclose(com_offset(pats), (0, 0), atol=2e-3)
    np.testing.assert_allclose(pats.sum(), data.sum(), rtol=1e-4)


@pytest.mark.parametrize("b", [2, 3, 4])
def test_center_auto_then_bin_puts_bf_disk_on_the_centre_pixel(tmp_path, b):
    m = 24
    data = gaussian(m, (m // 2 + 2, m // 2 - 3))
    pats, g, _ = run(tmp_path, data, bin=b, center="auto")
    np.testing.assert_allclose(com_offset(pats), (0, 0), atol=0.05)
    cy, cx, _ = ops.bf_disk(pats.mean(axis=0))
    assert abs(cy - (m // b) // 2) < 0.05 and abs(cx - (m // b) // 2) < 0.05, (cy, cx)


def test_center_auto_targets_the_centre_of_an_explicit_crop_window(tmp_path):
    data = gaussian(32, (9.0, 20.0))  # the beam is off the frame centre; the window is around it
    pats, _, _ = run(tmp_path, data, center="auto", crop="1:17,12:28")
    assert pats.shape[-1] == 16
    np.testing.assert_allclose(com_offset(pats), (0, 0), atol=1e-3)


# ----------------------------------------------------------------------------- negatives
def test_fourier_shift_never_stores_negative_counts(tmp_path):
    data = disk(32, radius=6)
    flat = data.reshape(4, 32, 32)
    assert ops.fourier_shift(flat, (0.5, 0.5)).min() < -1  # a sharp disk rings
    pats, g, s = run(tmp_path, data, shift_px=(0.5, 0.5), shift_method="fourier")
    assert pats.min() >= 0
    clip = s["clipped_ringing"]
    assert clip["pixels"] > 0 and clip["counts"] > 0 and 0 < clip["fraction"] < 0.1
    added = pats.astype(np.float64).sum() - flat.astype(np.float64).sum()  # the Fourier shift keeps the sum
    assert added == pytest.approx(clip["counts"], rel=1e-3)
    op = [o for o in g.attrs["ptycli"]["operations"] if o["op"] == "shift"][0]
    assert op["clip_ringing"] is True
    # an integer dtype no longer trips over negatives the input never had
    ints, _, _ = run(tmp_path, data, name="u16.zarr", shift_px=(0.5, 0.5), shift_method="fourier", dtype="uint16")
    assert ints.dtype == np.uint16
    np.testing.assert_array_equal(ints, np.rint(pats).astype(np.uint16))


def test_fourier_ringing_is_clipped_after_binning(tmp_path):
    """Binning sums neighbouring lobes of opposite sign: clipped after it, less (here nothing
    or far less) is added than clipping each pixel before binning would add."""
    data = disk(32, radius=6)
    _, _, unbinned = run(tmp_path, data, name="u.zarr", shift_px=(0.5, 0.5), shift_method="fourier")
    pats, _, s = run(tmp_path, data, shift_px=(0.5, 0.5), shift_method="fourier", bin=2)
    before = unbinned["clipped_ringing"]["counts"]  # what clipping before binning adds
    after = (s["clipped_ringing"] or {}).get("counts", 0.0)
    assert pats.min() >= 0 and before > 0 and after < 0.5 * before, (before, after)


def test_bilinear_shift_needs_no_clipping(tmp_path):
    pats, _, s = run(tmp_path, disk(32, radius=6), shift_px=(0.5, 0.5))
    assert pats.min() >= 0 and s["clipped_ringing"] is None


def test_cli_logs_the_clipped_ringing(tmp_path, cli):
    np.save(tmp_path / "d.npy", disk(32, radius=6))
    args = ["--energy-kev", "300", "--semiangle-mrad", "20", "--dk-mrad", "1", "--scan-step-a", "0.5"]
    r = cli("preprocess", tmp_path / "d.npy", "-o", tmp_path / "o.zarr", *args, "--shift", "0.5,0.5",
            "--shift-method", "fourier", "--dtype", "uint16")
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "clipped ringing" in ln]
    assert len(lines) == 1 and "pixels" in lines[0], r.stderr


def test_input_negatives_still_need_clip_negatives(tmp_path):
    from ptycli.errors import InputError

    data = disk(16)
    data[0, 0, 0, 0] = -2.0
    with pytest.raises(InputError, match="--clip-negatives"):
        run(tmp_path, data)
    pats, _, _ = run(tmp_path, data, name="c.zarr", clip_negatives=True, shift_px=(0.5, 0.5), shift_method="fourier")
    assert pats.min() >= 0
