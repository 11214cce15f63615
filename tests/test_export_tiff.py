"""TIFF export: ImageJ calibration (pixel size in Å), stacks, bit depths, atomic overwrite."""

import numpy as np
import pytest
import tifffile
from test_export_data import DX_A, make_state, make_state_store

from ptycli.errors import OutputExistsError
from ptycli.stages.export import export
from ptycli.stages.viewdata import scanned_box


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_state_store(tmp_path_factory.mktemp("tif"))


def _expected_phase_sum(state):
    y0, y1, x0, x1 = scanned_box(state)
    return np.angle(state.object[0, :, y0:y1, x0:x1]).sum(0).astype(np.float32)


def test_float_tiff_reports_pixel_size_in_angstrom_and_round_trips(store, tmp_path):
    out = export(store, tmp_path / "phase.tif", what="object-phase")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        meta = tif.imagej_metadata
        assert meta["unit"] in ("Angstrom", "A")
        x_res = tif.pages[0].tags["XResolution"].value  # (numerator, denominator) pixels per unit
        data = tif.asarray()
    assert abs(x_res[1] / x_res[0] - DX_A) < 1e-6  # pixel size [Å] = 1 / resolution
    np.testing.assert_array_equal(data, _expected_phase_sum(make_state()))  # float32: bit exact


@pytest.mark.parametrize("what, slices, pages", [
    ("object-phase", "all", 2), ("object-amplitude", "1:2", 1), ("probe", None, 2), ("probe-fourier", "0:1", 1),
])
def test_stacks_have_one_page_per_slice_or_mode(store, tmp_path, what, slices, pages):
    out = export(store, tmp_path / "s.tif", what=what, slices=slices)
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == pages
        assert tif.imagej_metadata["images"] == pages
        if what == "object-phase":
            assert tif.imagej_metadata["spacing"] == pytest.approx(5.0)  # slice thickness [Å]
        if what == "probe-fourier":
            assert tif.imagej_metadata["unit"] == "1/Angstrom"


@pytest.mark.parametrize("bits, dtype", [(8, np.uint8), (16, np.uint16)])
def test_integer_tiff_round_trips_within_one_quantisation_step(store, tmp_path, bits, dtype):
    out = export(store, tmp_path / f"p{bits}.tif", what="object-phase", bit_depth=bits)
    with tifffile.TiffFile(out) as tif:
        raw, meta = tif.asarray(), tif.imagej_metadata
    assert raw.dtype == dtype
    truth = _expected_phase_sum(make_state())
    lo, hi = meta["value_min"], meta["value_max"]
    assert (lo, hi) == pytest.approx((truth.min(), truth.max()), rel=1e-6)
    step = (hi - lo) / (2**bits - 1)
    back = lo + raw.astype(np.float64) * step
    assert np.max(np.abs(back - truth)) <= 0.5 * step * (1 + 1e-6)  # rounding error only


def test_existing_file_is_kept_without_overwrite_and_replaced_with_it(store, tmp_path):
    target = tmp_path / "x.tif"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        export(store, target)
    assert target.read_bytes() == b"precious"
    export(store, target, overwrite=True)
    assert tifffile.imread(target).ndim == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]  # no temp file left


def test_cli_export_prints_path_and_refuses_overwrite_with_exit_5(cli, store, tmp_path):
    out = tmp_path / "c.tif"
    r = cli("export", store, "-o", out, "--what", "object-phase", "--slices", "all")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert len(tifffile.TiffFile(out).pages) == 2
    r = cli("export", store, "-o", out)
    assert r.exit_code == 5 and "--overwrite" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("args, match", [
    (["--crop", "foo"], "--crop 'foo': expected scanned, full or y0:y1,x0:x1"),
    (["--crop", "10:5,0:10"], "reversed bounds"),
    (["--slices", "foo"], "--slices 'foo': expected sum, all or i:j"),
])
def test_cli_malformed_crop_or_slices_is_a_usage_error(cli, store, tmp_path, args, match):
    out = tmp_path / "x.tif"
    r = cli("export", store, "-o", out, *args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, r.stderr
    assert len(lines) == 1 and match in lines[0] and not out.exists()
