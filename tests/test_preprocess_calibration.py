"""Calibration: TOML flat keys, flags win, unknown keys and impossible values named."""

from __future__ import annotations

import pytest

from ptycli.errors import RecipeError
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
