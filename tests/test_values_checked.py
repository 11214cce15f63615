"""Values that pass a type check but are not a plausible run (issue 23): non-finite floats, unbounded
iteration counts, implausible calibrations, NaN/all-zero/non-numeric data. Each is one line with the
documented exit code (3 recipe/calibration, 4 data), never a traceback and never exit 6 later."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import zarr

from ptycli.errors import ExitCode
from ptycli.recipe import MAX_ITERATIONS
from ptycli.stages import init, simulate
from ptycli.store.calibration import Calibration, implausible
from ptycli.store.io import open_store


def one_line_error(r, code, match):
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == code, r.stderr
    assert lines and lines[-1].startswith("ptycli: error:") and match in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- recipes
@pytest.mark.parametrize(("recipe", "setting", "match"), [
    ("epie", "stage.0.beta=inf", "stage.0.beta: Input should be a finite number"),
    ("gradient", "stage.0.learning_rate={object=nan}", "stage.0.learning_rate.object: Input should be a finite"),
    ("lsqml", "stage.0.delta=inf", "stage.0.delta: Input should be a finite number"),
    ("gradient", 'stage.0.learning_rate.probe={schedule="linear",start=1.0,end=nan}', "learning_rate.probe.end"),
    ("lsqml", f"stage.0.iterations={2**63 - 1}", f"less than or equal to {MAX_ITERATIONS}"),
])
def test_recipe_values_must_be_finite_and_bounded(cli, recipe, setting, match):
    one_line_error(cli("validate", recipe, "--set", setting), ExitCode.CONFIG, match)


def test_iterations_flag_is_bounded(cli):
    one_line_error(cli("validate", "lsqml", "--iterations", str(10**20)), ExitCode.CONFIG,
                   f"expected a count from 0 to {MAX_ITERATIONS}")
    assert cli("validate", "lsqml", "--iterations", str(MAX_ITERATIONS)).exit_code == 0


def test_constraint_table_values_must_be_finite(tmp_path, cli):
    path = tmp_path / "r.toml"
    path.write_text('recipe = "ptycli/1"\n[[stage]]\ntype = "lsqml"\niterations = 2\n'
                    '[[stage.constraints]]\ntype = "object_amplitude_threshold"\nmax_amplitude = inf\n')
    r = cli("validate", path)
    assert r.exit_code == ExitCode.CONFIG and "stage.0.constraints.0" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- flags
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return simulate.run(tmp_path_factory.mktemp("d") / "data.zarr", scan_shape=(4, 4), detector_size=32, seed=2)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_init_defocus_must_be_finite(cli, demo, tmp_path, value):
    out = tmp_path / "s.zarr"
    one_line_error(cli("init", demo, "-o", out, f"--defocus-a={value}"), ExitCode.CONFIG, "--defocus-a")
    assert not out.exists() and not (tmp_path / "s.zarr.partial").exists()


def test_simulate_floats_must_be_finite(cli, tmp_path):
    one_line_error(cli("simulate", tmp_path / "x.zarr", "--dx-a", "nan"), ExitCode.CONFIG, "dx_a")
    # no bound to trip over: was an internal error (exit 1) deep in the scan geometry
    one_line_error(cli("simulate", tmp_path / "x.zarr", "--scan-rotation-deg", "nan"), ExitCode.CONFIG,
                   "scan_rotation_deg")


# ----------------------------------------------------------------------------- calibration
M, R = 32, 5.0  # detector pixels, BF disk radius [px]


def disk_frames(n=16, radius=R, value=100.0):
    yy, xx = np.mgrid[:M, :M] - M // 2
    disk = (yy**2 + xx**2 <= radius**2).astype(np.float32) * value
    return np.broadcast_to(disk, (n, M, M)).reshape(4, 4, M, M).copy()


def preprocess(cli, tmp_path, data, *flags):
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "out.zarr"
    return cli("preprocess", tmp_path / "d.npy", "-o", out, "--scan-step-a", "0.5", "--progress", "none", *flags), out


def cal_flags(energy="300", alpha=20.0, dk=None):
    area_radius = np.sqrt((disk_frames()[0, 0] > 0).sum() / np.pi)  # what the BF-disk measurement sees
    dk = alpha / area_radius if dk is None else dk
    return ["--energy-kev", energy, "--semiangle-mrad", str(alpha), "--dk-mrad", str(dk)]


def test_consistent_calibration_passes_without_warning(cli, tmp_path):
    r, out = preprocess(cli, tmp_path, disk_frames(), *cal_flags())
    assert r.exit_code == 0, r.stderr
    assert "warning" not in r.stderr and out.exists()


@pytest.mark.parametrize(("flags", "match"), [
    (cal_flags(energy="80000"), "energy_kev=80000 is outside"),
    (cal_flags(energy="1e9"), "energy_kev=1e+09 is outside"),
    (cal_flags(alpha=0.0214), "semiangle_mrad=0.0214 is outside"),
    (cal_flags(alpha=500, dk=60 / (M / 2)), "semiangle_mrad=500 is outside"),  # on a 60 mrad detector
    # dk a unit slip (12x) off the disk the data show
    (cal_flags(dk=20 / R / 12), "disagrees with the bright-field disk"),
])
def test_implausible_calibration_is_refused(cli, tmp_path, flags, match):
    r, out = preprocess(cli, tmp_path, disk_frames(), *flags)
    one_line_error(r, ExitCode.CONFIG, match)
    assert "--force" in r.stderr
    assert not out.exists() and not (tmp_path / "out.zarr.partial").exists()


def test_force_keeps_it_reported_and_recorded(cli, tmp_path):
    r, out = preprocess(cli, tmp_path, disk_frames(), *cal_flags(alpha=500, dk=60 / (M / 2)), "--force")
    assert r.exit_code == 0, r.stderr
    assert "warning: calibration:" in r.stderr and "--estimate-dk would use it" in r.stderr
    history = json.dumps(dict(open_store(out, "data").attrs))
    assert "calibration_doubts" in history and "beyond the detector edge" in history


def test_dk_somewhat_off_the_bf_disk_is_a_warning(cli, tmp_path):
    alpha = 20.0
    r, out = preprocess(cli, tmp_path, disk_frames(), *cal_flags(alpha=alpha, dk=1.5 * alpha / R))
    assert r.exit_code == 0, r.stderr
    assert "disagrees with the bright-field disk" in r.stderr and out.exists()


def test_a_disk_filling_the_detector_is_not_measured():
    cal = Calibration(energy_kev=300, semiangle_mrad=20, dk_mrad=1)
    assert implausible(cal, detector_shape=(16, 16)) == ([], [])


def test_all_zero_data_is_an_input_error(cli, tmp_path):
    r, out = preprocess(cli, tmp_path, np.zeros((4, 4, M, M), np.float32), *cal_flags())
    one_line_error(r, ExitCode.INPUT, "every pattern is zero")
    assert not out.exists() and not (tmp_path / "out.zarr.partial").exists()


# ----------------------------------------------------------------------------- data
def test_nan_in_a_data_store_is_an_input_error(cli, demo, tmp_path):
    state = init.run(demo, tmp_path / "s.zarr")
    bad = tmp_path / "bad.zarr"
    shutil.copytree(demo, bad)
    patterns = zarr.open_array(bad / "patterns", mode="r+")
    frame = patterns[3]
    frame[1, 2] = np.nan
    patterns[3] = frame
    one_line_error(cli("init", bad, "-o", tmp_path / "s2.zarr"), ExitCode.INPUT, "patterns: frame 3 holds NaN")
    r = cli("reconstruct", bad, state, "-o", tmp_path / "r.zarr", "--recipe", "quick", "--iterations", "1",
            "--progress", "none")
    one_line_error(r, ExitCode.INPUT, "patterns: frame 3 holds NaN")


@pytest.mark.parametrize("kind", ["npy-str", "npy-bytes", "h5-bytes"])
def test_string_dtype_input_is_an_input_error(cli, tmp_path, kind):
    data = np.full((4, 4, 8, 8), "7" if kind == "npy-str" else b"7")
    if kind.startswith("npy"):
        path = tmp_path / "d.npy"
        np.save(path, data)
    else:
        path = tmp_path / "d.h5"
        with h5py.File(path, "w") as f:
            f["data"] = data
    r = cli("preprocess", path, "-o", tmp_path / "o.zarr", *cal_flags(), "--scan-step-a", "0.5")
    one_line_error(r, ExitCode.INPUT, "is not numeric")


@pytest.mark.parametrize("dtype", ["int64", "bool", "string"])
def test_zarr_json_with_an_edited_dtype_is_an_input_error(cli, demo, tmp_path, dtype):
    bad = tmp_path / "bad.zarr"
    shutil.copytree(demo, bad)
    for meta in (bad / "zarr.json", bad / "patterns" / "zarr.json"):  # consolidated copy and the array's own
        doc = json.loads(meta.read_text())
        target = doc.get("consolidated_metadata", {}).get("metadata", {}).get("patterns", doc)
        target["data_type"] = dtype
        meta.write_text(json.dumps(doc))
    for args in (("inspect", bad), ("init", bad, "-o", tmp_path / "s.zarr")):
        r = cli(*args)
        assert r.exit_code == ExitCode.INPUT, (args, r.stderr)
        assert "internal error" not in r.stderr and str(bad) in r.stderr
