"""PNG, NPY, HDF5 and CSV exports, display processing, and the PyPty/PtyRAD layouts."""

import csv

import h5py
import numpy as np
import pytest
from PIL import Image
from test_export_data import DX_A, M, SCAN, make_data_store, make_state, make_state_store

from ptycli.errors import InputError, StoreError, UsageError
from ptycli.stages.export import export
from ptycli.stages.phasetools import unwrap_phase, wrap
from ptycli.stages.viewdata import scanned_box


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fmt")
    data = make_data_store(tmp)
    return data, make_state_store(tmp, data=data)


def test_npy_object_complex_is_the_projected_transmission(stores, tmp_path):
    out = export(stores[1], tmp_path / "o.npy", what="object-complex", crop="full")
    got = np.load(out)
    expected = make_state().object[0].prod(axis=0)  # projection approximation: product of slices
    assert got.dtype == np.complex64
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_h5_carries_calibration_attributes(stores, tmp_path):
    out = export(stores[1], tmp_path / "p.h5", what="probe")
    with h5py.File(out, "r") as fh:
        ds = fh["probe"]
        assert ds.shape == (2, M, M) and ds.dtype == np.complex64
        assert ds.attrs["pixel_size"] == pytest.approx(DX_A) and ds.attrs["pixel_unit"] == "Angstrom"
        assert fh.attrs["energy_kev"] == 300.0
        np.testing.assert_allclose(ds[...], make_state().probe)


def test_csv_positions_in_angstrom_from_the_origin(stores, tmp_path):
    out = export(stores[1], tmp_path / "pos.csv", what="positions")
    rows = list(csv.DictReader(open(out)))
    st = make_state()
    assert len(rows) == SCAN[0] * SCAN[1]
    r = rows[7]
    assert float(r["y_a"]) == pytest.approx((st.positions[7, 0] - 24.0) * DX_A, rel=1e-6)
    assert float(r["x0_a"]) == pytest.approx((st.positions_initial[7, 1] - 22.0) * DX_A, rel=1e-6)


def test_csv_loss_has_one_row_per_iteration(stores, tmp_path):
    data = np.loadtxt(export(stores[1], tmp_path / "loss.csv", what="loss"), delimiter=",", skiprows=1)
    assert data.shape == (12, 4)
    np.testing.assert_allclose(data[:, 2], np.exp(-np.arange(12) / 4.0) + 0.1)


def test_png_is_8bit_colour_mapped_and_not_blank(stores, tmp_path):
    out = export(stores[1], tmp_path / "phase.png", what="object-phase", cmap="viridis")
    img = np.asarray(Image.open(out))
    assert img.dtype == np.uint8 and img.ndim == 3 and min(img.shape[:2]) >= 256
    assert img[..., :3].std() > 20  # the image has contrast, not a flat field


def test_pypty_layout_is_h5_data_n_ky_kx(stores, tmp_path):
    out = export(stores[0], tmp_path / "pypty.h5", what="patterns", layout="pypty")
    with h5py.File(out, "r") as fh:
        assert list(fh) == ["data"]
        assert fh["data"].shape == (SCAN[0] * SCAN[1], M, M)
        src = np.asarray(__import__("zarr").open_group(str(stores[0]), mode="r")["patterns"][...])
        np.testing.assert_array_equal(fh["data"][...], src)


@pytest.mark.parametrize("suffix", [".hdf5", ".npy"])
def test_ptyrad_layout_is_4d_scan_then_detector(stores, tmp_path, suffix):
    out = export(stores[0], tmp_path / f"ptyrad{suffix}", what="patterns", layout="ptyrad")
    if suffix == ".npy":
        dp = np.load(out)
    else:
        with h5py.File(out, "r") as fh:
            dp = fh["dp"][...]
    src = np.asarray(__import__("zarr").open_group(str(stores[0]), mode="r")["patterns"][...])
    assert dp.shape == (*SCAN, M, M)
    np.testing.assert_array_equal(dp[2, 3], src[2 * SCAN[1] + 3])  # row-major j = iy*Nx + ix


def test_unwrap_recovers_a_steep_ramp_up_to_a_constant_2pi_multiple():
    y, x = np.mgrid[0:40, 0:50]
    true = 0.45 * x + 0.3 * y + 0.2 * np.sin(y / 3.0)  # spans ~30 rad
    got = unwrap_phase(wrap(true))
    k = (got - true) / (2 * np.pi)
    np.testing.assert_allclose(k, np.rint(k[0, 0]), atol=1e-9)


def test_remove_ramp_flattens_a_tilted_phase(tmp_path):
    y, x = np.mgrid[0:64, 0:60]
    plane = 0.02 * y - 0.03 * x + 0.1
    obj = np.exp(1j * plane)[None, None].astype(np.complex64)
    st = make_state(obj)
    st.slice_thickness = np.array([5.0])
    store = make_state_store(tmp_path, st)
    flat = np.load(export(store, tmp_path / "f.npy", what="object-phase", remove_ramp=True, unwrap=True))
    assert np.max(np.abs(flat)) < 1e-4  # rad: a plane is removed exactly
    raw = np.load(export(store, tmp_path / "r.npy", what="object-phase"))
    assert np.ptp(raw) > 0.5


def test_normalize_and_crop(stores, tmp_path):
    out = np.load(export(stores[1], tmp_path / "n.npy", what="object-amplitude", normalize=True,
                         crop="10:30,5:25"))
    assert out.shape == (20, 20) and out.min() == 0.0 and out.max() == pytest.approx(1.0)
    assert scanned_box(make_state()) == (23, 41, 21, 36)  # the default crop: probe centres' box


@pytest.mark.parametrize("kwargs, error", [
    ({"what": "object-complex", "out": "c.tif"}, UsageError),
    ({"what": "object-phase", "out": "p.csv"}, UsageError),
    ({"what": "object-phase", "out": "p.tif", "crop": "0:999,0:5"}, InputError),
    ({"what": "object-phase", "out": "p.xyz"}, UsageError),
])
def test_bad_requests_fail_with_typed_errors(stores, tmp_path, kwargs, error):
    out = tmp_path / kwargs.pop("out")
    with pytest.raises(error):
        export(stores[1], out, **kwargs)
    assert not out.exists()


def test_store_kind_mismatch_and_missing_tilts(stores, tmp_path):
    with pytest.raises(StoreError, match="data store"):
        export(stores[0], tmp_path / "x.tif", what="object-phase")
    st = make_state(tilts=False)
    with pytest.raises(StoreError, match="tilts"):
        export(make_state_store(tmp_path, st, name="nt.zarr"), tmp_path / "t.csv", what="tilts")
