"""Export of every refined variable (object modes, background, beam current, aberrations,
thickness, detector blur, before/after tilts) and ImageJ's value calibration of 8/16-bit TIFFs."""

import h5py
import numpy as np
import pytest
import tifffile
from test_export_data import DX_A, M, make_state

from ptycli.errors import InputError, StoreError, UsageError
from ptycli.stages.export import export
from ptycli.store.io import StoreWriter
from ptycli.store.state import write_state


def _store(tmp_path, **changes):
    st = make_state()
    obj = np.concatenate([st.object, 0.5 * st.object.conj()])  # two object modes
    st = st.copy(object=obj, **changes)
    path = tmp_path / "s.zarr"
    with StoreWriter(path, kind="state", stage="reconstruct") as w:
        write_state(w, st)
        w.finalize()
    return path, st


@pytest.mark.parametrize("bits", [8, 16])
def test_integer_tiff_carries_imagej_value_calibration_in_radians(tmp_path, bits):
    path, _ = _store(tmp_path)
    out = export(path, tmp_path / "p.tif", what="object-phase", bit_depth=bits)
    with tifffile.TiffFile(out) as tif:
        raw, meta = tif.asarray(), tif.imagej_metadata
    float_out = tifffile.imread(export(path, tmp_path / "f.tif", what="object-phase"))
    assert meta["cf"] == 0 and meta["vunit"] == "radian"  # ImageJ: straight line, value unit
    values = meta["c0"] + meta["c1"] * raw.astype(np.float64)  # what Fiji shows
    assert np.max(np.abs(values - float_out)) <= 0.5 * meta["c1"] * (1 + 1e-6)


def test_object_modes_all_is_a_mode_stack_and_a_hyperstack(tmp_path):
    path, st = _store(tmp_path)
    both = np.load(export(path, tmp_path / "m.npy", what="object-phase", object_modes="all"))
    assert both.shape[0] == 2
    y, x = both.shape[1:]
    one = np.load(export(path, tmp_path / "m1.npy", what="object-phase", object_modes="1"))
    np.testing.assert_allclose(one, both[1])
    np.testing.assert_allclose(both[1], -both[0], atol=1e-5)  # mode 1 is the conjugate of mode 0
    out = export(path, tmp_path / "m.tif", what="object-phase", object_modes="all", slices="all")
    with tifffile.TiffFile(out) as tif:
        assert tif.imagej_metadata["channels"] == 2 and tif.imagej_metadata["slices"] == 2
        assert tif.series[0].shape == (2, 2, y, x)


@pytest.mark.parametrize("spec, error", [("2", InputError), ("x", UsageError), ("1:1", InputError)])
def test_bad_object_modes_name_the_flag(tmp_path, spec, error):
    path, _ = _store(tmp_path)
    with pytest.raises(error, match="--object-modes"):
        export(path, tmp_path / "m.npy", what="object-phase", object_modes=spec)


def test_object_modes_refused_for_other_whats(tmp_path):
    path, _ = _store(tmp_path)
    with pytest.raises(UsageError, match="--object-modes all applies to the object"):
        export(path, tmp_path / "p.npy", what="probe", object_modes="all")


def test_background_exports_dc_centred_in_inverse_angstrom(tmp_path):
    b = np.zeros((M, M), np.float32)
    b[0, 0] = 7.0  # FFT layout in memory: DC at [0, 0]
    path, _ = _store(tmp_path, background=b)
    out = export(path, tmp_path / "b.tif", what="background")
    with tifffile.TiffFile(out) as tif:
        img, meta = tif.asarray(), tif.imagej_metadata
        x_res = tif.pages[0].tags["XResolution"].value
    assert img[M // 2, M // 2] == 7.0 and img.sum() == 7.0
    assert meta["unit"] == "1/Angstrom" and meta["vunit"] == "count"
    assert x_res[1] / x_res[0] == pytest.approx(1 / (M * DX_A), rel=1e-6)
    with h5py.File(export(path, tmp_path / "b.h5", what="background"), "r") as fh:
        assert fh["background"].attrs["value_unit"] == "count" and fh["background"].attrs["pixel_unit"] == "1/Angstrom"


def test_refined_scalars_export_as_tables(tmp_path):
    j = make_state().positions.shape[0]
    current = np.linspace(0.9, 1.1, j)
    path, _ = _store(tmp_path, beam_current=current, aberrations={"C10": -50.0, "C12": 3.0},
                     subscan_aberrations=[{"C10": 1.0}], tilts_before=np.ones((j, 2)),
                     tilts=np.zeros((j, 2)))
    bc = np.loadtxt(export(path, tmp_path / "bc.csv", what="beam-current"), delimiter=",", skiprows=1)
    np.testing.assert_allclose(bc[:, 1], current)
    out = export(path, tmp_path / "ab.csv", what="aberrations")
    header = out.read_text().splitlines()[0]
    rows = np.loadtxt(out, delimiter=",", skiprows=1)
    assert header == "subscan,C10,C12"
    np.testing.assert_allclose(rows[0], [-1, -50.0, 3.0])
    assert rows[1][0] == 0 and rows[1][1] == 1.0 and np.isnan(rows[1][2])
    th = export(path, tmp_path / "t.csv", what="thickness")
    assert th.read_text().splitlines()[0] == "slice,thickness_a,z_a"
    t = np.asarray(make_state().slice_thickness, np.float64)
    np.testing.assert_allclose(np.loadtxt(th, delimiter=",", skiprows=1, ndmin=2)[:, 2], np.cumsum(t) - t)
    tilts = export(path, tmp_path / "tl.csv", what="tilts")
    assert tilts.read_text().splitlines()[0] == "index,ty_mrad,tx_mrad,ty_before_mrad,tx_before_mrad"


def test_detector_blur_exports_its_sigma(tmp_path):
    path, _ = _store(tmp_path, detector_blur_px=0.75)
    out = export(path, tmp_path / "blur.csv", what="detector-blur")
    assert out.read_text().splitlines()[0] == "sigma_px"
    assert float(np.loadtxt(out, delimiter=",", skiprows=1)) == 0.75


@pytest.mark.parametrize("what", ["background", "beam-current", "aberrations"])
def test_absent_variable_is_a_one_line_store_error(tmp_path, what):
    path, _ = _store(tmp_path)
    with pytest.raises(StoreError, match=f"{path}: has no"):
        export(path, tmp_path / ("x.tif" if what == "background" else "x.csv"), what=what)
