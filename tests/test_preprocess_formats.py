"""Done-when: .npy, .h5, EMPAD .raw and Merlin .mib of the same content -> identical stores."""

from __future__ import annotations

import json

import numpy as np
import zarr

from test_readers_formats import counts, write_empad, write_h5, write_mib

CAL = ["--energy-kev", "300", "--semiangle-mrad", "25", "--dk-mrad", "1.0", "--scan-step-a", "0.4"]


def test_four_formats_give_identical_data_stores(tmp_path, cli):
    data = counts((3, 4, 128, 128), lam=1.5)
    flat = data.reshape(12, 128, 128)
    np.save(tmp_path / "d.npy", data)
    inputs = {
        "npy": (tmp_path / "d.npy", []),
        "h5": (write_h5(tmp_path / "d.h5", data), []),
        "empad": (write_empad(tmp_path / "d.raw", flat), ["--scan-shape", "3x4"]),
        "mib": (write_mib(tmp_path / "d.mib", flat, "U16"), ["--scan-shape", "3x4"]),
    }
    stores = {}
    for name, (path, extra) in inputs.items():
        out = tmp_path / f"{name}.zarr"
        r = cli("preprocess", path, "-o", out, *CAL, *extra, "--progress", "none")
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip() == str(out)  # stdout is the result: the output path
        stores[name] = zarr.open_group(str(out), mode="r")
    ref = stores["npy"]
    np.testing.assert_array_equal(ref["patterns"][...], flat.astype(np.float32))
    for name, g in stores.items():
        assert g["patterns"].dtype == np.float32 and g["patterns"].shape == (12, 128, 128)
        np.testing.assert_array_equal(g["patterns"][...], ref["patterns"][...], err_msg=name)
        np.testing.assert_array_equal(g["mean_pattern"][...], ref["mean_pattern"][...], err_msg=name)
        assert json.dumps(g.attrs["calibration"], sort_keys=True) == json.dumps(ref.attrs["calibration"], sort_keys=True)
        assert g.attrs["scan_shape"] == [3, 4]
        assert g.attrs["ptycli"]["inputs"][0]["kind"].startswith("raw:")


def test_store_opens_with_xarray_dimension_names(tmp_path, cli):
    import xarray as xr

    np.save(tmp_path / "d.npy", counts((2, 2, 8, 8)).astype(np.float32))
    r = cli("preprocess", tmp_path / "d.npy", "-o", tmp_path / "o.zarr", *CAL, "--compress-masks", "annular:2x2")
    assert r.exit_code == 0, r.stderr
    ds = xr.open_zarr(tmp_path / "o.zarr", consolidated=False)
    assert ds["patterns"].dims == ("position", "ky", "kx")
    assert ds["mean_pattern"].dims == ("ky", "kx")
    sub = xr.open_zarr(tmp_path / "o.zarr", group="compressed", consolidated=False)
    assert sub["signals"].dims == ("position", "mask")


def test_preprocess_of_a_data_store_keeps_calibration_and_provenance(tmp_path, cli):
    np.save(tmp_path / "d.npy", counts((2, 2, 8, 8)).astype(np.float32))
    assert cli("preprocess", tmp_path / "d.npy", "-o", tmp_path / "a.zarr", *CAL).exit_code == 0
    r = cli("preprocess", tmp_path / "a.zarr", "-o", tmp_path / "b.zarr", "--bin", "2", "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["calibration"]["dk_mrad"] == 2.0  # binning doubles the detector pixel
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert [p["stage"] for p in g.attrs["ptycli"]["provenance"]] == ["preprocess"]
    assert g.attrs["ptycli"]["inputs"][0]["kind"] == "data"
