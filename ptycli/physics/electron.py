"""Relativistic electron wavelength and interaction parameter (physics.md §2).

Exact CODATA-2018 forms; the 12.2643/sqrt(...) shortcut is only an approximation.
"""

from __future__ import annotations

import math

PLANCK_J_S = 6.62607015e-34
LIGHT_M_S = 299792458.0
ELECTRON_MASS_KG = 9.1093837015e-31
ELEMENTARY_CHARGE_C = 1.602176634e-19
M0C2_EV = ELECTRON_MASS_KG * LIGHT_M_S**2 / ELEMENTARY_CHARGE_C  # 510998.95 eV


def wavelength_a(energy_ev: float) -> float:
    """λ = h c / sqrt(eE (2 m0 c² + eE)) in Å, for kinetic energy E in eV."""
    e_j = float(energy_ev) * ELEMENTARY_CHARGE_C
    mc2_j = ELECTRON_MASS_KG * LIGHT_M_S**2
    return PLANCK_J_S * LIGHT_M_S / math.sqrt(e_j * (2.0 * mc2_j + e_j)) * 1e10


def gamma(energy_ev: float) -> float:
    """Lorentz factor γ = 1 + E / (m0 c²/e)."""
    return 1.0 + float(energy_ev) / M0C2_EV


def sigma_rad_per_v_a(energy_ev: float) -> float:
    """σ = 2π γ m0 e λ / h² in rad/(V·Å): phase per projected potential (V·Å)."""
    lam_m = wavelength_a(energy_ev) * 1e-10
    sigma_per_v_m = 2.0 * math.pi * gamma(energy_ev) * ELECTRON_MASS_KG * ELEMENTARY_CHARGE_C * lam_m / PLANCK_J_S**2
    return sigma_per_v_m * 1e-10


def energy_ev_from_kev(energy_kev: float) -> float:
    return float(energy_kev) * 1e3
