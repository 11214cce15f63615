"""Calibration of a data store: the microscope and scan settings, units in every name.

Stored as the root attribute ``calibration`` of a data store (JSON). Derived quantities
(wavelength, real-space pixel) are computed here from the stored ones, with the formulas of
physics.md §1.3 and §2 (kept numpy-free on purpose: the store must not import physics).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# CODATA-2018 (physics.md §2)
_H = 6.62607015e-34
_C = 299792458.0
_M0 = 9.1093837015e-31
_E = 1.602176634e-19


def wavelength_a(energy_ev: float) -> float:
    """Relativistic electron wavelength in Å (physics.md §2)."""
    e_j = _E * energy_ev
    return _H * _C / math.sqrt(e_j * (2 * _M0 * _C**2 + e_j)) * 1e10


class Calibration(BaseModel):
    """Calibration keys (also the keys of ``--calibration FILE.toml`` and the flag names)."""

    # finite values: checked with the key's bound by stages.preprocess_calibration.check_values
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    energy_kev: float | None = Field(None, gt=0, description="Beam energy [keV].")
    semiangle_mrad: float | None = Field(None, gt=0, description="Probe convergence semi-angle [mrad].")
    dk_mrad: float | None = Field(None, gt=0, description="Detector pixel [mrad].")
    dk_inv_a: float | None = Field(None, gt=0, description="Detector pixel [1/Å].")
    scan_shape: tuple[int, int] | None = Field(None, description="Raster scan (ny, nx).")
    scan_step_a: tuple[float, float] | None = Field(None, description="Scan step (y, x) [Å].")
    scan_rotation_deg: float = Field(0.0, description="Scan rotation relative to the detector [deg].")
    flip_ky: bool = Field(False, description="Detector frames were flipped along ky.")
    flip_kx: bool = Field(False, description="Detector frames were flipped along kx.")
    transpose: bool = Field(False, description="Detector frames were transposed.")
    detector_shape: tuple[int, int] | None = Field(None, description="Detector pixels (ky, kx).")
    counts_per_frame: float | None = Field(None, ge=0, description="Mean total counts per pattern.")
    defocus_a: float | None = Field(None, description="Nominal defocus Δf [Å], positive = underfocus.")
    aberrations: dict[str, float] = Field(default_factory=dict,
                                          description="Krivanek C_nm [Å] and phi_nm [rad].")

    @model_validator(mode="before")
    @classmethod
    def _scalars_to_pairs(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("scan_step_a"), (int, float)):
            values = {**values, "scan_step_a": (values["scan_step_a"],) * 2}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "Calibration":
        if self.scan_step_a is not None and min(self.scan_step_a) <= 0:
            raise ValueError(f"scan_step_a: must be > 0, got {self.scan_step_a}")
        if self.scan_shape is not None and min(self.scan_shape) <= 0:
            raise ValueError(f"scan_shape: must be positive, got {self.scan_shape}")
        if self.dk_mrad is not None and self.dk_inv_a is not None and self.energy_kev:
            derived = self.dk_mrad * 1e-3 / self.wavelength_a
            if abs(derived - self.dk_inv_a) > 1e-3 * self.dk_inv_a:
                raise ValueError(
                    f"dk_mrad={self.dk_mrad} and dk_inv_a={self.dk_inv_a} disagree "
                    f"(dk_mrad gives {derived:.6g} 1/Å at {self.energy_kev} keV); give one of them"
                )
        return self

    # -- derived quantities
    @property
    def energy_ev(self) -> float:
        return float(self.energy_kev) * 1e3  # type: ignore[arg-type]

    @property
    def wavelength_a(self) -> float:
        return wavelength_a(self.energy_ev)

    @property
    def pixel_inv_a(self) -> float | None:
        """Detector pixel in 1/Å (from dk_inv_a, or dk_mrad and the energy)."""
        if self.dk_inv_a is not None:
            return self.dk_inv_a
        if self.dk_mrad is not None and self.energy_kev:
            return self.dk_mrad * 1e-3 / self.wavelength_a
        return None

    def dx_a(self, window: int | None = None) -> float | None:
        """Real-space pixel dx = 1/(M dk) [Å] for an M-pixel window (physics.md §1.3)."""
        m = window or (self.detector_shape[0] if self.detector_shape else None)
        dk = self.pixel_inv_a
        return None if (m is None or dk is None) else 1.0 / (m * dk)

    def missing(self, *keys: str) -> list[str]:
        return [k for k in keys if getattr(self, k) is None]

    def to_attrs(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_calibration(attrs: dict[str, Any]) -> Calibration:
    return Calibration.model_validate(attrs.get("calibration", {}))


# ----------------------------------------------------------------------------- plausibility
# Documented in docs/conventions.md ("Calibration checks"); `--force` lets an expert past the refusals.
# 1 keV (SEM ptychography) to 1.5 MeV (HVEM): 80000 is eV typed as keV, 1e9 a slip.
ENERGY_KEV_RANGE = (1.0, 1500.0)
# 0.1 mrad (Lorentz / low-mag) to 200 mrad: 0.0214 is radians typed as mrad.
SEMIANGLE_MRAD_RANGE = (0.1, 200.0)
# The BF disk's measured radius gives dk = α / R_BF (physics.md §1.3). A given dk further than
# BF_DK_DOUBT (relative) from it is reported; one off by BF_DK_REFUSE times or more is a unit slip
# (rad for mrad, 1/Å for mrad) and refused, as is an α beyond the detector edge by that much.
BF_DK_DOUBT = 0.2
BF_DK_REFUSE = 10.0


def implausible(cal: Calibration, detector_shape: tuple[int, int] | None = None,
                bf_radius_px: float | None = None) -> tuple[list[str], list[str]]:
    """(refused, doubtful): values that are valid numbers but not a plausible microscope, each as one
    phrase naming the key. Refused ones stop a stage unless forced; doubtful ones are reported.

    ``bf_radius_px`` (the BF disk measured whole inside the mean pattern, in the calibration's pixels) adds
    the checks of dk against the disk and, with ``detector_shape``, of α against the detector edge: data
    whose disk fills the detector are consistent with any α beyond its edge, so that needs the disk seen.
    """
    refused: list[str] = []
    doubtful: list[str] = []
    lo, hi = ENERGY_KEV_RANGE
    if cal.energy_kev is not None and not lo <= cal.energy_kev <= hi:
        refused.append(f"energy_kev={cal.energy_kev:g} is outside {lo:g}..{hi:g} keV (eV given as keV?)")
    lo, hi = SEMIANGLE_MRAD_RANGE
    alpha = cal.semiangle_mrad
    if alpha is not None and not lo <= alpha <= hi:
        refused.append(f"semiangle_mrad={alpha:g} is outside {lo:g}..{hi:g} mrad (rad given as mrad?)")
    dk = cal.dk_mrad if cal.dk_mrad is not None else (
        cal.dk_inv_a * cal.wavelength_a * 1e3 if cal.dk_inv_a is not None and cal.energy_kev else None)
    if alpha is None or dk is None or not bf_radius_px:
        return refused, doubtful
    from_bf = alpha / bf_radius_px
    ratio = max(dk / from_bf, from_bf / dk)
    if detector_shape is not None and alpha > dk * min(detector_shape) / 2:
        edge = dk * min(detector_shape) / 2
        (refused if alpha > BF_DK_REFUSE * edge else doubtful).append(
            f"semiangle_mrad={alpha:g} is beyond the detector edge ({edge:.4g} mrad = dk {dk:.4g} mrad x "
            f"{min(detector_shape)}/2 px), yet the data show the whole BF disk inside it")
    if ratio > 1 + BF_DK_DOUBT:
        (refused if ratio >= BF_DK_REFUSE else doubtful).append(
            f"dk {dk:.4g} mrad disagrees with the bright-field disk: its radius {bf_radius_px:.3g} px and "
            f"semiangle_mrad={alpha:g} give dk_mrad={from_bf:.4g} (--estimate-dk would use it)")
    return refused, doubtful
