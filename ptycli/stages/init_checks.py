"""Sampling checks of ``init`` (physics.md §8): report the numbers, warn, or fail under --strict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import RecipeError
from ..physics import sampling

# (key, label, format) of the numbers shown to the user, in this order.
SHOWN = (
    ("dx_a", "pixel", "{:.4g} Å"), ("window_a", "window", "{:.4g} Å"),
    ("probe_diameter_a", "probe diameter", "{:.4g} Å"), ("oversampling", "window/probe", "{:.3g}"),
    ("bf_radius_px", "BF disk radius", "{:.3g} px"), ("max_angle_mrad", "max angle", "{:.4g} mrad"),
    ("step_a", "step", "{:.4g} Å"), ("linear_overlap", "linear overlap", "{:.3g}"),
    ("r_ptych", "R_ptych", "{:.3g}"), ("dose_e_per_a2", "dose", "{:.4g} e/Å²"),
    ("max_slice_thickness_a", "max slice thickness", "{:.4g} Å"),
)  # fmt: skip


def typical_step_a(positions_a: np.ndarray, step_a: tuple[float, float] | None) -> float:
    """The scan step: the calibrated raster's larger step, else the median hop between positions."""
    if step_a is not None:
        return float(max(step_a))
    if positions_a.shape[0] < 2:
        return 0.0
    return float(np.median(np.hypot(*np.diff(positions_a, axis=0).T)))


def diagnostics(summary: Any, aberrations: dict[str, float], positions_a: np.ndarray,
                thickness: Any) -> dict[str, Any]:
    cal = summary.calibration
    step = typical_step_a(positions_a, cal.scan_step_a)
    n_slices = 1 if thickness is None else len(thickness)
    kw = {"energy_ev": cal.energy_ev, "semiangle_mrad": cal.semiangle_mrad, "dx_a": summary.dx_a,
          "step_a": step if step > 0 else None, "c10_a": aberrations.get("C10", 0.0),
          "counts_per_frame": summary.counts_per_frame,
          "slice_thickness_a": None if thickness is None else float(thickness[0]), "n_slices": n_slices}
    diag = sampling.sampling_diagnostics(window_px=summary.window[0], **kw)
    upsample = int(getattr(summary, "upsample", 1))
    return diag if upsample == 1 else _upsampled(diag, sampling.sampling_diagnostics(
        window_px=summary.window[0] * upsample, **kw))


def _upsampled(detector: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """With ``--upsample U`` the probe lives in the U·M window (same dx) while the detector
    keeps M pixels: the window/probe numbers come from the model window, everything the
    detector samples (pixel angle, BF radius, R_ptych) stays on the detector grid."""
    out = dict(detector, window_a=model["window_a"], oversampling=model["oversampling"])
    # sampling._warnings puts the window/probe warning first, and only then.
    warnings = list(detector["warnings"])
    if detector["oversampling"] < sampling.MIN_OVERSAMPLING:
        warnings = warnings[1:]
    if model["oversampling"] < sampling.MIN_OVERSAMPLING:
        warnings = [model["warnings"][0]] + warnings
    out["warnings"] = warnings
    return out


def format_line(diag: dict[str, Any]) -> str:
    parts = [f"{label} {fmt.format(diag[key])}" for key, label, fmt in SHOWN if diag.get(key) is not None]
    return "sampling: " + ", ".join(parts)


def check(summary: Any, aberrations: dict[str, float], positions_a: np.ndarray, thickness: Any, *,
          strict: bool = False, report: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Report the sampling numbers and warnings; under ``strict`` any warning is an error (exit 3)."""
    diag = diagnostics(summary, aberrations, positions_a, thickness)
    if report is not None:
        report("info", format_line(diag))
    if strict and diag["warnings"]:
        raise RecipeError("sampling check failed (--strict): " + "; ".join(diag["warnings"]))
    for message in diag["warnings"] if report is not None else ():
        report("warning", message)
    return diag
