"""Calibration: TOML flat keys, flags win, unknown keys and impossible values named."""

from __future__ import annotations

import numpy as np
import pytest

from ptycli.errors import InputError, RecipeError
from ptycli.stages.preprocess_calibration import build_calibration


def test_toml_then_flags_win(tmp_path):
    (tmp_path / "c.toml").write_text('energy_kev = 200\nsemiangle_mrad = 21.5\nscan_shape = "8x4"\nscan_step_a = 0.5\n')
    cal = build_calibration(tmp_path / "c.toml", {"energy_kev": 300.0, "scan_step_a": "0.4x0.6"})
    assert cal.energy_kev == 300 and cal.semiangle_mrad == 21.5
    assert cal.scan_shape == (8, 4) and cal.scan_step_a == (0.4, 0.6)
    assert cal.wavelength_a == pytest.approx(0.019687, rel=1e-4)  # physics.md §2 table


@pytest.mark.parametrize("text,key", [
    ("energy_kev = 300\nenergy_kv = 300\n", "energy_kv"),
    ("energy_kev = -300\n", "energy_kev"),
    ("scan_step_a = 0\n", "scan_step_a"),
    ("scan_shape = '8x'\n", "scan_shape"),
])
def test_unknown_or_impossible_key_named(tmp_path, text, key):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(RecipeError, match=key):
        build_calibration(tmp_path / "c.toml")


def test_contradictory_detector_pixel():
    with pytest.raises(RecipeError, match="dk_mrad=1.0 and dk_inv_a=0.1 disagree"):
        build_calibration(None, {"energy_kev": 300, "dk_mrad": 1.0, "dk_inv_a": 0.1})
    ok = build_calibration(None, {"energy_kev": 300, "dk_mrad": 1.0, "dk_inv_a": 1e-3 / 0.0196875})
    assert ok.pixel_inv_a == pytest.approx(0.050794, rel=1e-4)


def _cal_of(out):
    from ptycli.store.io import open_store

    return open_store(out, "data").attrs["calibration"]


def test_zero_flags_win_over_the_file(cli, tmp_path):
    """0 is a value, not "not given": it must override the file like any other flag."""
    np.save(tmp_path / "d.npy", np.ones((2, 2, 8, 8), np.float32))
    (tmp_path / "c.toml").write_text("energy_kev = 300\nsemiangle_mrad = 20\ndk_mrad = 1\nscan_step_a = 0.5\n"
                                     "scan_rotation_deg = 12.0\ndefocus_a = 150\n")
    args = ["preprocess", tmp_path / "d.npy", "--calibration", tmp_path / "c.toml", "--progress", "none"]
    r = cli(*args, "-o", tmp_path / "z.zarr", "--scan-rotation-deg", "0", "--defocus-a", "0")
    assert r.exit_code == 0, r.stderr
    cal = _cal_of(tmp_path / "z.zarr")
    assert cal["scan_rotation_deg"] == 0.0 and cal["defocus_a"] == 0.0
    r = cli(*args, "-o", tmp_path / "e.zarr", "--energy-kev", "0")
    assert r.exit_code == 3 and "calibration.energy_kev: expected a finite number > 0, got 0.0" in r.stderr
    assert not (tmp_path / "e.zarr").exists()


def test_aberration_aliases_are_stored_under_krivanek_names(cli, tmp_path):
    np.save(tmp_path / "d.npy", np.ones((2, 2, 8, 8), np.float32))
    (tmp_path / "c.toml").write_text("[aberrations]\nCs = 1e4\nastigmatism = 5.0\nphi12 = 0.5\n")
    r = cli("preprocess", tmp_path / "d.npy", "-o", tmp_path / "z.zarr", "--calibration", tmp_path / "c.toml",
            "--energy-kev", "300", "--semiangle-mrad", "20", "--dk-mrad", "1", "--scan-step-a", "0.5")
    assert r.exit_code == 0, r.stderr
    assert _cal_of(tmp_path / "z.zarr")["aberrations"] == {"C30": 1e4, "C12": 5.0, "phi12": 0.5}


def test_same_aberration_twice_is_refused():
    with pytest.raises(RecipeError, match="both set C30"):
        build_calibration(None, {"aberrations": {"Cs": 1e4, "C30": 2e4}})


def test_bad_base_value_is_an_input_error_naming_the_source():
    with pytest.raises(InputError, match=r"^in\.zarr: calibration\.energy_kev: expected a finite number > 0, got inf"):
        build_calibration(None, None, {"energy_kev": float("inf")}, "in.zarr")
