"""`ptycli simulate`: exit codes, stdout/stderr, flags reaching the store."""

import json

import numpy as np

from ptycli.store.io import open_store

SMALL = ["--scan-shape", "4x5", "--detector-size", "32"]


def test_writes_the_store_and_prints_only_its_path(cli, tmp_path):
    out = tmp_path / "sim.zarr"
    r = cli("simulate", out, *SMALL, "--seed", "3")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    g = open_store(out, "data")
    assert g["patterns"].shape == (20, 32, 32)


def test_flags_override_the_preset(cli, tmp_path):
    out = tmp_path / "f.zarr"
    r = cli("simulate", out, "--preset", "mixed-state", *SMALL, "--energy-kev", "200", "--semiangle-mrad", "20",
            "--defocus-a", "60", "--aberration", "C30=1e4", "--aberration", "C12=20@30deg", "--dose", "1e4",
            "--scan-step-a", "0.5", "--slices", "2", "--slice-thickness-a", "10", "--tilt-mrad", "1x2", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["output"] == str(out) and doc["probe_modes"] == 3
    cal = open_store(out, "data").attrs["calibration"]
    assert cal["energy_kev"] == 200 and cal["semiangle_mrad"] == 20 and cal["scan_step_a"] == [0.5, 0.5]
    assert cal["aberrations"]["C10"] == -60 and cal["aberrations"]["C30"] == 1e4
    assert np.isclose(cal["aberrations"]["phi12"], np.pi / 6)
    assert np.isclose(cal["counts_per_frame"], 1e4 * 0.25)
    g = open_store(out, "data")
    np.testing.assert_allclose(g["truth/tilts"][...], np.tile([1.0, 2.0], (20, 1)))
    assert g["truth/object"].shape[1] == 2


def test_unknown_preset_is_a_configuration_error(cli, tmp_path):
    r = cli("simulate", tmp_path / "x.zarr", "--preset", "huge")
    assert r.exit_code == 3
    assert "preset 'huge'" in r.stderr and r.stdout == ""
    assert not (tmp_path / "x.zarr").exists()


def test_bad_aberration_is_a_configuration_error(cli, tmp_path):
    for spec in ("C12=20@@30", "C99=3", "C30=1furlong", "C10=5@30deg"):
        r = cli("simulate", tmp_path / "x.zarr", *SMALL, "--aberration", spec)
        assert r.exit_code == 3, (spec, r.stderr)
        assert "aberration" in r.stderr


def test_bad_values_are_configuration_errors(cli, tmp_path):
    for args in (["--scan-shape", "4xq"], ["--detector-size", "2"], ["--dose", "-1"], ["--slices", "0"]):
        r = cli("simulate", tmp_path / "x.zarr", *args)
        assert r.exit_code == 3, (args, r.stderr)


def test_existing_output_needs_overwrite(cli, tmp_path):
    out = tmp_path / "o.zarr"
    assert cli("simulate", out, *SMALL).exit_code == 0
    r = cli("simulate", out, *SMALL, "--seed", "1")
    assert r.exit_code == 5 and "--overwrite" in r.stderr
    r = cli("simulate", out, *SMALL, "--seed", "1", "--overwrite")
    assert r.exit_code == 0
    assert open_store(out, "data").attrs["ptycli"]["options"]["seed"] == 1


def test_tilt_with_one_slice_is_refused_naming_the_flag(cli, tmp_path):
    for flag in ("--tilt-mrad", "--tilt-gradient-mrad"):
        r = cli("simulate", tmp_path / "t.zarr", *SMALL, flag, "1")
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2, r.stderr
        assert len(lines) == 1 and lines[0].startswith(f"ptycli: error: {flag} needs a multislice object")
        assert not (tmp_path / "t.zarr").exists()
