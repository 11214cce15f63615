"""`ptycli init`: stdout is the path, diagnostics on stderr, exit codes, stdin input."""

import json

import numpy as np
import pytest

from ptycli.stages import simulate
from ptycli.store.io import open_store


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return simulate.run(tmp_path_factory.mktemp("d") / "data.zarr", scan_shape=(4, 4), seed=2)  # 64 px demo


def test_writes_state_prints_path_and_diagnostics_on_stderr(cli, data, tmp_path):
    out = tmp_path / "s.zarr"
    r = cli("init", data, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert "sampling:" in r.stderr and "warning" not in r.stderr
    assert open_store(out, "state")["probe"].shape == (1, 64, 64)


def test_reads_the_data_path_from_stdin(cli, data, tmp_path):
    out = tmp_path / "s.zarr"
    r = cli("init", "-", "-o", out, "--json", input=f"{data}\n")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["output"] == str(out) and doc["diagnostics"][0]["kind"] == "info"


def test_options_reach_the_state(cli, data, tmp_path):
    out = tmp_path / "s.zarr"
    r = cli("init", data, "-o", out, "--probe-modes", "2", "--slices", "2", "--slice-thickness-a", "5",
            "--object-modes", "2", "--aberration", "C12=10@45deg", "--probe-from", "pacbed")
    assert r.exit_code == 0, r.stderr
    g = open_store(out, "state")
    assert g["probe"].shape[0] == 2 and g["object"].shape[:2] == (2, 2)
    assert np.isclose(g.attrs["state"]["aberrations"]["phi12"], np.pi / 4)
    assert g.attrs["ptycli"]["options"]["probe_from"] == "pacbed"


def test_calibration_file_overrides_the_store(cli, data, tmp_path):
    toml = tmp_path / "cal.toml"
    toml.write_text("defocus_a = 30.0\nsemiangle_mrad = 20.0\n")
    r = cli("init", data, "-o", tmp_path / "s.zarr", "--calibration", toml)
    assert r.exit_code == 0, r.stderr
    st = open_store(tmp_path / "s.zarr", "state").attrs["state"]
    assert st["semiangle_mrad"] == 20.0 and st["aberrations"]["C10"] == -30.0
    toml.write_text("defocus = 30.0\n")
    r = cli("init", data, "-o", tmp_path / "t.zarr", "--calibration", toml)
    assert r.exit_code == 3 and "defocus" in r.stderr


def test_strict_exits_3_on_undersampling_and_warns_without(cli, data, tmp_path):
    r = cli("init", data, "-o", tmp_path / "w.zarr", "--defocus-a", "300")
    assert r.exit_code == 0 and "warning:" in r.stderr
    r = cli("init", data, "-o", tmp_path / "s.zarr", "--defocus-a", "300", "--strict")
    assert r.exit_code == 3 and "--strict" in r.stderr and r.stdout == ""
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("args,code", [
    (["--aberration", "C12=abc"], 3),
    (["--slices", "3"], 3),
    (["--positions", "missing.csv"], 4),
    (["--probe-from", "missing.zarr"], 4),
])
def test_bad_input_exit_codes(cli, data, tmp_path, args, code):
    r = cli("init", data, "-o", tmp_path / "x.zarr", *args)
    assert r.exit_code == code, r.stderr
    assert r.stderr.startswith("ptycli: error:") or "ptycli: error:" in r.stderr


def test_missing_or_wrong_kind_input_exits_4(cli, data, tmp_path):
    assert cli("init", tmp_path / "none.zarr", "-o", tmp_path / "a.zarr").exit_code == 4
    state = tmp_path / "s.zarr"
    assert cli("init", data, "-o", state).exit_code == 0
    r = cli("init", state, "-o", tmp_path / "b.zarr")
    assert r.exit_code == 4 and "expected a data store" in r.stderr


def test_existing_output_exits_5_unless_overwrite(cli, data, tmp_path):
    out = tmp_path / "s.zarr"
    assert cli("init", data, "-o", out).exit_code == 0
    assert cli("init", data, "-o", out).exit_code == 5
    assert cli("init", data, "-o", out, "--overwrite").exit_code == 0


def _copy_with_calibration(data, dest, **changes):
    import shutil

    import zarr

    shutil.copytree(data, dest)
    g = zarr.open_group(dest, mode="r+")
    g.attrs["calibration"] = {**g.attrs["calibration"], **changes}
    return dest


@pytest.mark.parametrize("changes, match", [
    ({"scan_step_a": [float("nan"), float("nan")]}, "calibration.scan_step_a: expected a finite number > 0, got nan"),
    ({"energy_kev": float("inf")}, "calibration.energy_kev: expected a finite number > 0, got inf"),
])
def test_non_finite_store_calibration_exits_4_naming_the_key(cli, data, tmp_path, changes, match):
    bad = _copy_with_calibration(data, tmp_path / "bad.zarr", **changes)
    r = cli("init", bad, "-o", tmp_path / "s.zarr")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 4, r.stderr
    assert len(lines) == 1 and lines[0] == f"ptycli: error: {bad}: {match}"
    assert not (tmp_path / "s.zarr").exists()


def test_store_aberration_alias_is_read_as_its_krivanek_term(cli, data, tmp_path):
    """Stores written before preprocess normalised aliases may still hold e.g. Cs."""
    old = _copy_with_calibration(data, tmp_path / "cs.zarr", aberrations={"Cs": 1e4})
    r = cli("init", old, "-o", tmp_path / "s.zarr")
    assert r.exit_code == 0, r.stderr
    assert open_store(tmp_path / "s.zarr", "state").attrs["state"]["aberrations"]["C30"] == 1e4


def test_unknown_mode_kind_names_the_flag_and_the_choices(cli, data, tmp_path):
    r = cli("init", data, "-o", tmp_path / "s.zarr", "--mode-kind", "foo", "--probe-modes", "2")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 3, r.stderr
    assert len(lines) == 1 and "--mode-kind" in lines[0] and "'hermite' or 'defocus-spread'" in lines[0]
