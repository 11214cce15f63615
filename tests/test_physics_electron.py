"""λ and σ against abTEM's reference values and physics.md §2 (rel 1e-5)."""

from __future__ import annotations

import json

import pytest
from _helpers import SHARED

from ptycli.physics.electron import gamma, sigma_rad_per_v_a, wavelength_a

REFERENCE = SHARED / "reference" / "wavelengths.json"


@pytest.mark.skipif(not REFERENCE.exists(), reason=f"abTEM reference not present at {REFERENCE}")
def test_wavelength_and_sigma_match_abtem_reference() -> None:
    values = json.loads(REFERENCE.read_text())["values"]
    assert len(values) >= 5
    for v in values:
        assert wavelength_a(v["energy_eV"]) == pytest.approx(v["wavelength_A"], rel=1e-5)
        assert sigma_rad_per_v_a(v["energy_eV"]) == pytest.approx(v["sigma_rad_per_V_A"], rel=1e-5)


@pytest.mark.parametrize(
    ("kv", "lam_a", "sigma", "gam"),
    [(60, 0.048661, 1.1357e-3, 1.11742), (80, 0.041757, 1.0087e-3, 1.15656),
     (200, 0.025079, 7.2884e-4, 1.39139), (300, 0.019687, 6.5262e-4, 1.58709)],
)  # fmt: skip
def test_physics_md_table(kv: float, lam_a: float, sigma: float, gam: float) -> None:
    # Table of physics.md §2, rounded to 5 significant figures (half an ulp of 0.019687 is 2.5e-5 rel).
    assert wavelength_a(kv * 1e3) == pytest.approx(lam_a, rel=3e-5)
    assert sigma_rad_per_v_a(kv * 1e3) == pytest.approx(sigma, rel=1e-4)
    assert gamma(kv * 1e3) == pytest.approx(gam, rel=1e-5)
