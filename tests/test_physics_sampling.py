"""Sampling diagnostics: the worked example of physics.md §8 (rtol 1e-4) and warnings."""

from __future__ import annotations

import pytest

from ptycli.physics.sampling import sampling_diagnostics


def test_worked_example_of_physics_md() -> None:
    d = sampling_diagnostics(energy_ev=300e3, semiangle_mrad=21.4, window_px=256, detector_pixel_mrad=21.4 / 26,
                             step_a=0.41, c10_a=200.0, counts_per_frame=1e5)
    expected = {"detector_pixel_mrad": 0.82308, "dk_inv_a": 0.041807, "dx_a": 0.093435, "max_angle_mrad": 105.35,
                "window_a": 23.919, "probe_diameter_a": 8.5600, "linear_overlap": 0.95210,
                "area_overlap": 0.93904, "oversampling": 2.7943, "r_ptych": 29.170, "dose_e_per_a2": 5.9488e5,
                "ronchigram_a_per_px": 0.16462}
    for key, value in expected.items():
        assert d[key] == pytest.approx(value, rel=1e-4), key
    assert d["warnings"] == []


def _warnings(**kw) -> str:
    base = dict(energy_ev=300e3, semiangle_mrad=20.0, window_px=128, dx_a=0.1)
    return " ".join(sampling_diagnostics(**{**base, **kw})["warnings"])


def test_warnings_for_bad_geometry() -> None:
    assert _warnings(step_a=0.3) == ""
    assert "wider than its window" in _warnings(window_px=32, c10_a=-300.0)
    assert "undersampled" in _warnings(c10_a=-200.0)  # 12.8 Å window, 8 Å probe: ratio 1.6 < 2
    assert "outside" in _warnings(dx_a=0.6) and "band limit" in _warnings(dx_a=0.6)
    assert "linear probe overlap" in _warnings(step_a=1.0)
    assert "R_ptych" in _warnings(window_px=128, dx_a=0.1, step_a=7.0)
    assert "slice thickness" in _warnings(slice_thickness_a=50.0, n_slices=4)
    assert "slice thickness" not in _warnings(slice_thickness_a=50.0, n_slices=1)
