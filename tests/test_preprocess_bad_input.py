"""Bad input: one-line error, the exit code of errors.py, no traceback, nothing written."""

from __future__ import annotations

import numpy as np
import pytest

from ptycli.errors import ExitCode
from test_readers_formats import counts, write_empad, write_mib

CAL = ["--energy-kev", "300", "--semiangle-mrad", "20", "--dk-mrad", "1", "--scan-step-a", "0.5"]


def check(cli, tmp_path, args, code, *, match):
    out = tmp_path / "out.zarr"
    r = cli("preprocess", *args, "-o", out, "--progress", "none")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == code, r.stderr
    assert len(lines) == 1 and lines[0].startswith("ptycli: error:"), r.stderr
    assert match in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists() and not (tmp_path / "out.zarr.partial").exists()


def npy(tmp_path, data, name="d.npy"):
    np.save(tmp_path / name, data)
    return tmp_path / name


def test_missing_file(cli, tmp_path):
    check(cli, tmp_path, [tmp_path / "nope.npy", *CAL], ExitCode.INPUT, match="no such file")


def test_unknown_format(cli, tmp_path):
    (tmp_path / "d.xyz").write_text("x")
    check(cli, tmp_path, [tmp_path / "d.xyz", *CAL], ExitCode.INPUT, match="unknown format")


@pytest.mark.parametrize("shape", [(8, 8), (1, 2, 2, 8, 8)])
def test_2d_or_5d_array(cli, tmp_path, shape):
    check(cli, tmp_path, [npy(tmp_path, np.ones(shape, np.float32)), *CAL], ExitCode.INPUT, match="D shape")


def test_scan_shape_does_not_match_frame_count(cli, tmp_path):
    path = npy(tmp_path, counts((12, 8, 8)))
    check(cli, tmp_path, [path, *CAL, "--scan-shape", "5x5"], ExitCode.CONFIG, match="has 12 frames")


def test_scan_shape_contradicts_4d_file(cli, tmp_path):
    path = npy(tmp_path, counts((3, 4, 8, 8)))
    check(cli, tmp_path, [path, *CAL, "--scan-shape", "4x3"], ExitCode.CONFIG, match="scan_shape")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_with_default_policy(cli, tmp_path, bad):
    data = counts((2, 2, 8, 8)).astype(np.float32)
    data[1, 1, 3, 3] = bad
    check(cli, tmp_path, [npy(tmp_path, data), *CAL], ExitCode.INPUT, match="NaN/Inf")


def test_negative_counts(cli, tmp_path):
    data = counts((2, 2, 8, 8)).astype(np.float32)
    data[0, 1, 2, 2] = -1.0
    check(cli, tmp_path, [npy(tmp_path, data), *CAL], ExitCode.INPUT, match="--clip-negatives")


def test_missing_calibration(cli, tmp_path):
    path = npy(tmp_path, counts((2, 2, 8, 8)))
    check(cli, tmp_path, [path, "--energy-kev", "300"], ExitCode.CONFIG, match="missing calibration: semiangle_mrad")


def test_contradictory_calibration(cli, tmp_path):
    path = npy(tmp_path, counts((2, 2, 8, 8)))
    check(cli, tmp_path, [path, *CAL, "--dk-inv-a", "0.3"], ExitCode.CONFIG, match="disagree")


def test_impossible_value_and_unknown_key(cli, tmp_path):
    path = npy(tmp_path, counts((2, 2, 8, 8)))
    check(cli, tmp_path, [path, *CAL[2:], "--energy-kev", "-300"], ExitCode.CONFIG, match="energy_kev")
    (tmp_path / "c.toml").write_text("energy_kev = 300\nsemi_angle = 20\n")
    check(cli, tmp_path, [path, "--calibration", tmp_path / "c.toml"], ExitCode.CONFIG, match="semi_angle")


def test_output_exists_without_overwrite(cli, tmp_path):
    path = npy(tmp_path, counts((2, 2, 8, 8)))
    out = tmp_path / "out.zarr"
    assert cli("preprocess", path, "-o", out, *CAL).exit_code == 0
    before = sorted(p.name for p in out.rglob("*"))
    r = cli("preprocess", path, "-o", out, *CAL, "--bin", "2")
    assert r.exit_code == ExitCode.OUTPUT_EXISTS and len(r.stderr.strip().splitlines()) == 1
    assert "--overwrite" in r.stderr and sorted(p.name for p in out.rglob("*")) == before
    assert cli("preprocess", path, "-o", out, *CAL, "--bin", "2", "--overwrite").exit_code == 0


def test_truncated_empad(cli, tmp_path):
    path = write_empad(tmp_path / "d.raw", counts((4, 128, 128)))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1000)
    check(cli, tmp_path, [path, *CAL, "--scan-shape", "2x2"], ExitCode.INPUT, match="truncated")


def test_truncated_mib(cli, tmp_path):
    path = write_mib(tmp_path / "d.mib", counts((4, 8, 8)))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 7)
    check(cli, tmp_path, [path, *CAL], ExitCode.INPUT, match="truncated")


def test_bad_operation_value_is_a_config_error(cli, tmp_path):
    path = npy(tmp_path, counts((2, 2, 8, 8)))
    check(cli, tmp_path, [path, *CAL, "--crop", "20"], ExitCode.CONFIG, match="outside")
    check(cli, tmp_path, [path, *CAL, "--bin", "3"], ExitCode.CONFIG, match="bin=3")
    check(cli, tmp_path, [path, *CAL, "--nan", "maybe"], ExitCode.CONFIG, match="nan")


def test_complex_data_is_refused_not_cast_to_its_real_part(cli, tmp_path):
    path = npy(tmp_path, np.ones((16, 8, 8), np.complex64))
    check(cli, tmp_path, [path, *CAL], ExitCode.INPUT, match=f"{path}: complex data; expected real detector counts")


def test_zero_frames_is_an_input_error(cli, tmp_path):
    path = npy(tmp_path, np.ones((0, 8, 8), np.float32))
    check(cli, tmp_path, [path, *CAL], ExitCode.INPUT, match=f"{path}: no frames")


@pytest.mark.parametrize("flag, value, match", [
    ("--scan-step-a", "nan", "calibration.scan_step_a: expected a finite number > 0, got nan"),
    ("--energy-kev", "inf", "calibration.energy_kev: expected a finite number > 0, got inf"),
    ("--energy-kev", "0", "calibration.energy_kev: expected a finite number > 0, got 0.0"),
    ("--dk-mrad", "-inf", "calibration.dk_mrad: expected a finite number > 0, got -inf"),
    ("--scan-rotation-deg", "nan", "calibration.scan_rotation_deg: expected a finite number, got nan"),
    ("--defocus-a", "inf", "calibration.defocus_a: expected a finite number, got inf"),
])
def test_non_finite_or_zero_calibration_flag_is_named(cli, tmp_path, flag, value, match):
    path = npy(tmp_path, counts((2, 2, 8, 8)))
    check(cli, tmp_path, [path, *CAL, flag, value], ExitCode.CONFIG, match=match)


@pytest.mark.parametrize("text, match", [
    ("scan_step_a = nan\n", "calibration.scan_step_a: expected a finite number > 0, got nan"),
    ("energy_kev = inf\n", "calibration.energy_kev: expected a finite number > 0, got inf"),
    ("scan_shape = 2.5\n", "scan_shape=2.5: expected integers N or NxM"),
    ("scan_shape = '2.5x2'\n", "scan_shape='2.5x2': expected integers N or NxM"),
    ("[aberrations]\nCq = 1e4\n", "calibration.aberrations: unknown key 'Cq'"),
    ("[aberrations]\nC30 = inf\n", "calibration.aberrations.C30: expected a finite number"),
])
def test_bad_calibration_file_value_is_named(cli, tmp_path, text, match):
    path = npy(tmp_path, counts((2, 2, 8, 8)))
    (tmp_path / "c.toml").write_text(text)
    check(cli, tmp_path, [path, *CAL, "--calibration", tmp_path / "c.toml"], ExitCode.CONFIG, match=match)


def test_repair_pixels_error_names_the_flag(cli, tmp_path):
    path = npy(tmp_path, counts((2, 2, 8, 8)))
    check(cli, tmp_path, [path, *CAL, "--repair-pixels", "0.5"], ExitCode.CONFIG, match="--repair-pixels: ")
