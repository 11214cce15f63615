"""χ (Krivanek) reference values of physics.md §3.1, Cartesian/CEOS conversions, parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ptycli.errors import InputError
from ptycli.physics.aberrations import (cartesian_to_polar, chi, from_abtem, from_ceos, parse_aberration,
                                        polar_to_cartesian)
from ptycli.physics.electron import wavelength_a

LAM = wavelength_a(300e3)


def _chi_at(alpha_rad: float, phi_rad: float, ab: dict) -> float:
    k = alpha_rad / LAM
    ky = np.array([[k * math.sin(phi_rad)]])
    kx = np.array([[k * math.cos(phi_rad)]])
    return float(chi(ky, kx, LAM, ab)[0, 0])


def test_chi_reference_values_of_physics_md() -> None:
    # physics.md §3.1 checks at 300 kV, rtol 1e-4.
    assert _chi_at(0.020, 0.3, {"C10": -100.0}) == pytest.approx(-6.3829, rel=1e-4)
    assert _chi_at(0.010, 1.0, {"C30": 1e7}) == pytest.approx(7.9787, rel=1e-4)
    assert _chi_at(0.020, 0.0, {"C12": 50.0, "phi12": 0.0}) == pytest.approx(3.1915, rel=1e-4)
    assert _chi_at(0.020, math.pi / 2, {"C12": 50.0, "phi12": 0.0}) == pytest.approx(-3.1915, rel=1e-4)
    assert _chi_at(0.020, 0.7, {"C21": 1000.0, "phi21": 0.7}) == pytest.approx(0.85106, rel=1e-4)


def test_cartesian_form_equals_polar_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    polar = {"C10": 12.0, "C12": 30.0, "phi12": 0.4, "C21": 500.0, "phi21": -1.0, "C23": 300.0, "phi23": 0.2,
             "C30": 1e4, "C34": 2e4, "phi34": 0.3, "C56": 1e8, "phi56": 0.1}
    cart = polar_to_cartesian(polar)
    back = cartesian_to_polar(cart)
    for key, value in polar.items():
        assert back[key] == pytest.approx(value, rel=1e-12, abs=1e-12)
    # physics.md §3.2 polynomial for the low orders equals χ from the polar form.
    ty, tx = rng.uniform(-0.02, 0.02, size=2)
    low = {k: polar[k] for k in ("C10", "C12", "phi12", "C21", "phi21", "C23", "phi23", "C30")}
    c = polar_to_cartesian(low)
    r2 = tx * tx + ty * ty
    poly = (0.5 * c["C10"] * r2 + 0.5 * c["C12a"] * (tx * tx - ty * ty) + c["C12b"] * tx * ty
            + r2 * (c["C21a"] * tx + c["C21b"] * ty) / 3 + c["C23a"] * (tx**3 - 3 * tx * ty * ty) / 3
            + c["C23b"] * (3 * tx * tx * ty - ty**3) / 3 + 0.25 * c["C30"] * r2 * r2) * 2 * math.pi / LAM
    got = float(chi(np.array([[ty / LAM]]), np.array([[tx / LAM]]), LAM, low)[0, 0])
    assert got == pytest.approx(poly, rel=1e-10)


def test_parse_aberration() -> None:
    assert parse_aberration("C12=20@30deg") == pytest.approx({"C12": 20.0, "phi12": math.radians(30)})
    assert parse_aberration("defocus=100") == {"C10": -100.0}
    assert parse_aberration("C30=1.2mm") == pytest.approx({"C30": 1.2e7})
    assert parse_aberration("C21=5nm@0.5rad") == pytest.approx({"C21": 50.0, "phi21": 0.5})
    for bad in ("C99=1", "C12=abc", "C30=1@10deg", "C10=3parsec"):
        with pytest.raises(InputError):
            parse_aberration(bad)


def test_from_ceos_factors_and_angle_options() -> None:
    got = from_ceos({"C1": -20.0, "A1": (10.0, 30.0), "B2": (100.0, 60.0), "S3": (5.0, 0.0), "R5": (1.0, 40.0)})
    assert got["C10"] == -20.0 and got["C12"] == 10.0 and got["C21"] == 300.0
    assert got["C32"] == 20.0 and got["C54"] == 6.0
    assert got["phi12"] == pytest.approx(math.radians(30)) and got["phi21"] == pytest.approx(math.radians(60))
    arg = from_ceos({"A2": (7.0, 90.0)}, angle_is_arg=True, flip_angles=True)
    assert arg["phi23"] == pytest.approx(-math.radians(30))


def test_from_abtem_keywords() -> None:
    got = from_abtem({"defocus": 100.0, "Cs": 3e5, "astigmatism": 50.0, "astigmatism_angle": 0.5,
                      "coma": 3000.0, "coma_angle": 1.0, "trefoil": 10.0, "trefoil_angle": 0.2})
    assert got == {"C10": -100.0, "C30": 3e5, "C12": 50.0, "phi12": 0.5, "C21": 3000.0, "phi21": 1.0,
                   "C23": 10.0, "phi23": 0.2}
