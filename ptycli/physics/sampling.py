"""Sampling diagnostics (physics.md §8): numbers and warnings, no printing.

``sampling_diagnostics(...)`` returns a flat dict of floats (units in the key names) plus
``"warnings"``: a list of one-line strings. ``init`` and ``check`` print it; ``--strict``
turns warnings into errors there.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import InputError
from .electron import wavelength_a as _wavelength_a

MIN_LINEAR_OVERLAP = 0.6  # physics.md §8.2 ptycli convention
MIN_OVERSAMPLING = 2.0  # M dx / d, Nyquist for the probe window (§8.3)


def probe_diameter_a(wavelength_a: float, semiangle_mrad: float, c10_a: float = 0.0) -> float:
    """Geometric diameter max(2|C10|α, 1.22 λ/α) in Å."""
    alpha = semiangle_mrad * 1e-3
    return max(2.0 * abs(c10_a) * alpha, 1.22 * wavelength_a / alpha)


def area_overlap(step_a: float, diameter_a: float) -> float:
    """Overlap area fraction of two disks of diameter d at spacing s."""
    r = diameter_a / 2.0
    if step_a >= 2.0 * r:
        return 0.0
    lens = 2.0 * r * r * math.acos(step_a / (2.0 * r)) - (step_a / 2.0) * math.sqrt(4.0 * r * r - step_a**2)
    return lens / (math.pi * r * r)


def sampling_diagnostics(*, energy_ev: float, semiangle_mrad: float, window_px: int, dx_a: float | None = None,
                         detector_pixel_mrad: float | None = None, step_a: float | None = None,
                         c10_a: float = 0.0, counts_per_frame: float | None = None,
                         slice_thickness_a: float | None = None, n_slices: int = 1,
                         resolution_a: float | None = None) -> dict[str, Any]:
    """Physics.md §8 numbers for one geometry; give ``dx_a`` or ``detector_pixel_mrad``."""
    lam = _wavelength_a(energy_ev)
    m = int(window_px)
    if dx_a is None and detector_pixel_mrad is None:
        raise InputError("sampling diagnostics need dx_a or detector_pixel_mrad")
    alpha_pix = detector_pixel_mrad * 1e-3 if detector_pixel_mrad is not None else lam / (m * dx_a)
    dx = dx_a if dx_a is not None else lam / (m * alpha_pix)
    dk = 1.0 / (m * dx)
    d = probe_diameter_a(lam, semiangle_mrad, c10_a)
    out: dict[str, Any] = {
        "wavelength_a": lam, "dx_a": dx, "dk_inv_a": dk, "detector_pixel_mrad": alpha_pix * 1e3,
        "max_angle_mrad": (m / 2) * alpha_pix * 1e3, "window_a": m * dx, "probe_diameter_a": d,
        "oversampling": m * dx / d, "bf_radius_px": semiangle_mrad * 1e-3 / alpha_pix,
        "band_limit_mrad": lam * (2.0 / 3.0) / (2.0 * dx) * 1e3,
        "ronchigram_a_per_px": abs(c10_a) * alpha_pix,
    }  # fmt: skip
    if step_a is not None:
        out.update(_scan_numbers(step_a, d, dk, counts_per_frame))
    if slice_thickness_a is not None and n_slices > 1:
        # Default target: the 2α aperture limit, the resolution ptychography routinely reaches.
        k_max = 1.0 / resolution_a if resolution_a else 2.0 * semiangle_mrad * 1e-3 / lam
        out["max_slice_thickness_a"] = 1.0 / (lam * k_max**2)
        out["total_thickness_a"] = slice_thickness_a * n_slices
    out["warnings"] = _warnings(out, semiangle_mrad, m, slice_thickness_a if n_slices > 1 else None)
    return out


def _scan_numbers(step_a: float, diameter_a: float, dk: float, counts: float | None) -> dict[str, float]:
    out = {
        "step_a": step_a,
        "linear_overlap": 1.0 - step_a / diameter_a,
        "area_overlap": area_overlap(step_a, diameter_a),
        "r_ptych": 1.0 / (2.0 * step_a * dk),
    }
    if counts is not None:
        out["dose_e_per_a2"] = counts / step_a**2
    return out


def _warnings(v: dict[str, Any], semiangle_mrad: float, m: int, dz_a: float | None) -> list[str]:
    w = []
    if v["oversampling"] < 1.0:
        w.append(f"probe diameter {v['probe_diameter_a']:.3g} Å is wider than its window {v['window_a']:.3g} Å")
    elif v["oversampling"] < MIN_OVERSAMPLING:
        w.append(f"detector undersampled: window/probe = {v['oversampling']:.3g} < {MIN_OVERSAMPLING}")
    if v["bf_radius_px"] >= m / 2:
        w.append(f"bright-field disk radius {v['bf_radius_px']:.3g} px lies outside the {m} px detector")
    if v["band_limit_mrad"] < semiangle_mrad:
        w.append(f"2/3 band limit {v['band_limit_mrad']:.3g} mrad cuts the {semiangle_mrad:.3g} mrad probe")
    if "linear_overlap" in v and v["linear_overlap"] < MIN_LINEAR_OVERLAP:
        w.append(f"linear probe overlap {v['linear_overlap']:.3g} < {MIN_LINEAR_OVERLAP}")
    if "r_ptych" in v and v["r_ptych"] <= 1.0:
        w.append(f"ptychographic sampling R_ptych = {v['r_ptych']:.3g} <= 1")
    if dz_a is not None and dz_a > v["max_slice_thickness_a"]:
        w.append(f"slice thickness {dz_a:.3g} Å exceeds the depth of field {v['max_slice_thickness_a']:.3g} Å")
    return w
