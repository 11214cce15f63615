"""Schema 2: each store kind opens in xarray with physical axes, UDUNITS units and consolidated
metadata; a virtual BF image is one xarray expression; the background is stored DC-centred."""

import json
import warnings

import numpy as np
import pytest
import zarr

from ptycli.store import StoreWriter, open_store
from ptycli.store.calibration import wavelength_a
from ptycli.store.state import State, load_state, write_state

xr = pytest.importorskip("xarray")

NY, NX, M = 3, 4, 8
STEP = (0.5, 0.25)


def _data_store(path, compressed=False):
    patterns = np.random.default_rng(0).random((NY * NX, M, M)).astype(np.float32)
    with StoreWriter(path, kind="data", stage="preprocess") as w:
        w.array("patterns", patterns)
        if compressed:
            w.array("compressed/masks", np.ones((2, M, M), np.float32))
            w.array("compressed/signals", patterns.sum(axis=(1, 2))[:, None].repeat(2, 1))
        w.set_attrs(scan_shape=[NY, NX], calibration={"energy_kev": 200.0, "semiangle_mrad": 20.0, "dk_mrad": 2.0,
                                                      "scan_shape": [NY, NX], "scan_step_a": list(STEP),
                                                      "detector_shape": [M, M]})
        w.finalize()
    return patterns


def _state(background=None):
    return State(probe=np.ones((2, M, M), np.complex64), object=np.ones((1, 3, 12, 16), np.complex64),
                 positions=np.zeros((NY * NX, 2)), dx_a=0.4, energy_kev=200.0, origin_px=(4.0, 6.0),
                 slice_thickness=np.array([2.0, 3.0, 5.0], np.float32), background=background)


def _state_store(path, st):
    with StoreWriter(path, kind="state", stage="init") as w:
        write_state(w, st)
        w.finalize()


def _open_tree(path):
    with warnings.catch_warnings():
        # a store without consolidated metadata warns on a default open ("Failed to open Zarr store
        # with consolidated metadata"); other warnings are not this test's business
        warnings.filterwarnings("error", message=".*consolidated metadata")
        return xr.open_datatree(str(path), engine="zarr")


def test_data_store_has_physical_axes_and_udunits(tmp_path):
    _data_store(tmp_path / "d.zarr", compressed=True)
    ds = _open_tree(tmp_path / "d.zarr").to_dataset()
    lam = wavelength_a(200e3)
    dk = 2e-3 / lam
    np.testing.assert_allclose(ds.kx.values, (np.arange(M) - M // 2) * dk)
    np.testing.assert_allclose(ds.ky_mrad.values, (np.arange(M) - M // 2) * 2.0)
    assert ds.ky_mrad.values[M // 2] == 0  # DC on the centre pixel
    assert ds.kx.attrs["units"] == "1/angstrom" and ds.kx_mrad.attrs["units"] == "mrad"
    np.testing.assert_allclose(ds.scan_y.values, np.repeat(np.arange(NY), NX) * STEP[0])
    np.testing.assert_allclose(ds.scan_x.values, np.tile(np.arange(NX), NY) * STEP[1])
    assert ds.scan_x.attrs["units"] == "angstrom"
    assert ds.patterns.attrs["units"] == "count" and "long_name" in ds.patterns.attrs
    cs = xr.open_zarr(str(tmp_path / "d.zarr"), group="compressed")  # the default open: consolidated
    assert cs.signals.dims == ("position", "mask")


def test_virtual_bf_is_one_xarray_expression(tmp_path):
    patterns = _data_store(tmp_path / "d.zarr")
    ds = xr.open_zarr(str(tmp_path / "d.zarr"))
    bf = (ds.patterns.where(np.hypot(ds.ky_mrad, ds.kx_mrad) <= 4.0).sum(("ky", "kx"))
          .set_index(position=["scan_y", "scan_x"]).unstack("position"))
    assert bf.dims == ("scan_y", "scan_x") and bf.shape == (NY, NX)
    np.testing.assert_allclose(bf.scan_x.values, np.arange(NX) * STEP[1])
    k = np.hypot(*np.mgrid[0:M, 0:M] - M // 2) * 2.0
    expect = (patterns * (k <= 4.0)).sum(axis=(1, 2)).reshape(NY, NX)
    np.testing.assert_allclose(bf.values, expect, rtol=1e-5)


def test_state_store_has_object_probe_and_depth_axes(tmp_path):
    _state_store(tmp_path / "s.zarr", _state(background=np.zeros((M, M), np.float32)))
    ds = _open_tree(tmp_path / "s.zarr").to_dataset()
    np.testing.assert_allclose(ds.y.values, (np.arange(12) - 4.0) * 0.4)  # r = (p - origin)·dx
    np.testing.assert_allclose(ds.x.values, (np.arange(16) - 6.0) * 0.4)
    np.testing.assert_allclose(ds.probe_x.values, (np.arange(M) - M // 2) * 0.4)
    np.testing.assert_allclose(ds.z.values, [0.0, 2.0, 5.0])
    np.testing.assert_allclose(ds.kx.values, (np.arange(M) - M // 2) / (M * 0.4))
    assert {ds[n].attrs["units"] for n in ("y", "x", "probe_y", "z")} == {"angstrom"}
    assert ds.object.attrs["units"] == "1" and ds.positions.attrs["units"] == "1"
    assert "object pixels" in ds.positions.attrs["long_name"]
    meta = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    assert meta["attributes"]["ptycli"]["schema_version"] == "2.0" and "consolidated_metadata" in meta


def test_background_is_stored_dc_centred_and_read_back(tmp_path):
    b = np.zeros((M, M), np.float32)
    b[0, 0] = 5.0  # the engines' FFT layout: DC at [0, 0]
    _state_store(tmp_path / "s.zarr", _state(background=b))
    g = open_store(tmp_path / "s.zarr", "state")
    assert g["background"][M // 2, M // 2] == 5.0 and g["background"].attrs["layout"] == "dc_centred"
    np.testing.assert_array_equal(load_state(g).background, b)


def test_schema1_background_is_read_in_its_own_layout(tmp_path):
    g = zarr.open_group(str(tmp_path / "v1"), mode="w", zarr_format=3)
    st = _state()
    for name in ("probe", "object", "positions"):
        g.create_array(name, data=np.asarray(getattr(st, name)))
    b = np.zeros((M, M), np.float32)
    b[0, 0] = 5.0
    g.create_array("background", data=b)  # schema 1: unshifted, no layout attribute
    g.attrs["state"] = st.attrs()
    np.testing.assert_array_equal(load_state(g).background, b)
