"""``simulate``: a data store with known truth, made by ptycli's own forward model.

Presets are data (a dict of option values); explicit options override them. The result is
deterministic for a seed: the specimen's amorphous atoms, the position jitter and the
Poisson noise each draw from their own child stream of the seed, so changing e.g. the dose
does not move the atoms.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import backend
from ..errors import InputError, RecipeError
from ..physics import aberrations as ab
from ..physics import electron, multislice, overlap, probe, propagation, scan, specimen
from ..store.calibration import Calibration
from ..store.io import StoreWriter, check_output, default_chunks

NOISE_FREE_COUNTS = 1.0e6  # counts per frame when no dose is given (noise-free data)

PRESETS: dict[str, dict[str, Any]] = {
    # Small but well sampled: 64 px window of 0.18 Å (11.5 Å), BF disk radius ~14.6 px,
    # 4 Å probe (80 Å underfocus x 25 mrad), 0.6 Å steps (85 % linear overlap).
    "demo": dict(energy_kev=300.0, semiangle_mrad=25.0, detector_size=64, dx_a=0.18, defocus_a=80.0,
                 scan_shape=(20, 20), scan_step_a=(0.6, 0.6)),
    # Depth resolution ~λ/α² ≈ 22 Å at 30 mrad, so 4 slices of 25 Å are told apart.
    "multislice": dict(energy_kev=300.0, semiangle_mrad=30.0, detector_size=64, dx_a=0.18, defocus_a=50.0,
                       scan_shape=(20, 20), scan_step_a=(0.6, 0.6), slices=4, slice_thickness_a=25.0),
    "mixed-state": dict(energy_kev=300.0, semiangle_mrad=25.0, detector_size=64, dx_a=0.18, defocus_a=80.0,
                        scan_shape=(20, 20), scan_step_a=(0.6, 0.6), probe_modes=3),
    "low-dose": dict(energy_kev=300.0, semiangle_mrad=25.0, detector_size=64, dx_a=0.18, defocus_a=80.0,
                     scan_shape=(20, 20), scan_step_a=(0.6, 0.6), dose=1.0e3),
    "large": dict(energy_kev=300.0, semiangle_mrad=25.0, detector_size=128, dx_a=0.15, defocus_a=100.0,
                  scan_shape=(64, 64), scan_step_a=(0.5, 0.5)),
}  # fmt: skip


class SimulateOptions(BaseModel):
    """Resolved options of ``simulate`` (lengths Å, angles mrad/deg, energy keV)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    preset: str = "demo"
    energy_kev: float = Field(gt=0)
    semiangle_mrad: float = Field(gt=0)
    detector_size: int = Field(ge=8, description="Detector (and probe window) pixels M.")
    dx_a: float = Field(gt=0, description="Real-space pixel; sets the detector pixel dk = 1/(M dx).")
    defocus_a: float = Field(0.0, description="Δf [Å], positive = underfocus (C10 = -Δf).")
    aberrations: dict[str, float] = Field(default_factory=dict, description="Polar Krivanek terms.")
    scan_shape: tuple[int, int]
    scan_step_a: tuple[float, float]
    scan_rotation_deg: float = 0.0
    slices: int = Field(1, ge=1)
    slice_thickness_a: float = Field(10.0, gt=0)
    probe_modes: int = Field(1, ge=1)
    position_jitter_a: float = Field(0.0, ge=0)
    dose: float | None = Field(None, gt=0, description="e/Å²; Poisson noise. None = noise-free.")
    tilt_mrad: tuple[float, float] = (0.0, 0.0)
    tilt_gradient_mrad: tuple[float, float] = Field((0.0, 0.0), description="Extra tilt at the scan edge.")
    beam_current_fluctuation: float = Field(0.0, ge=0, lt=1, description=(
        "Relative beam-current change per position, uniform in ±this (0.1 = ±10 %)."))
    background_counts: float = Field(0.0, ge=0, description="Constant detector background [counts/pixel].")
    detector_blur_px: float = Field(0.0, ge=0, description="σ of a Gaussian detector PSF [detector px].")
    upsample: int = Field(1, ge=1, le=16, description=(
        "Model the beam on a U·M window (same dx) and bin U×U far-field pixels per detector pixel."))
    subscan_defocus_a: list[float] = Field(default_factory=list, description=(
        "Sub-scans: the scan rows split into this many contiguous blocks, block s with this extra defocus [Å]."))
    tilts_before_mrad: tuple[float, float] = Field((0.0, 0.0), description="Beam tilt before the specimen (y, x).")
    tilts_after_mrad: tuple[float, float] = Field((0.0, 0.0), description="Tilt after the specimen (y, x).")
    margin_px: int = Field(scan.DEFAULT_MARGIN_PX, ge=0)
    seed: int = 0

    @field_validator("scan_step_a", mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _positive(self) -> "SimulateOptions":
        if min(self.scan_shape) < 1 or min(self.scan_step_a) <= 0:
            raise ValueError(f"scan_shape {self.scan_shape} and scan_step_a {self.scan_step_a} must be positive")
        return self

    @property
    def model_window(self) -> tuple[int, int]:
        m = self.detector_size * self.upsample
        return (m, m)

    @property
    def energy_ev(self) -> float:
        return self.energy_kev * 1e3

    @property
    def polar_aberrations(self) -> dict[str, float]:
        """All terms used, with C10 from the defocus unless given as an aberration."""
        return {"C10": -self.defocus_a, **self.aberrations}

    @property
    def counts_per_frame(self) -> float:
        """Dose × scan cell area (physics.md §8.4), or a fixed count when noise-free."""
        return self.dose * self.scan_step_a[0] * self.scan_step_a[1] if self.dose else NOISE_FREE_COUNTS


def parse_aberrations(specs: list[str] | dict[str, float] | None) -> dict[str, float]:
    """``["C12=20@30deg", ...]`` or a dict -> polar dict; bad specs are configuration errors (3)."""
    if not specs:
        return {}
    try:
        if isinstance(specs, dict):
            return ab.validate(specs)
        out: dict[str, float] = {}
        for spec in specs:
            out.update(ab.parse_aberration(spec))
        return out
    except InputError as exc:
        raise RecipeError(str(exc)) from None


def resolve_options(preset: str | None = None, **overrides: Any) -> SimulateOptions:
    """Preset values, then every override that is not None."""
    name = preset or "demo"
    if name not in PRESETS:
        raise RecipeError(f"preset {name!r}: unknown; expected one of {', '.join(PRESETS)}")
    values = {**PRESETS[name], "preset": name}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "aberrations" in values:
        values["aberrations"] = parse_aberrations(values["aberrations"])
    try:
        return SimulateOptions(**values)
    except ValidationError as exc:
        raise RecipeError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors()]
    return "simulate options: " + "; ".join(parts)


# ----------------------------------------------------------------------------- geometry
def geometry(opts: SimulateOptions) -> dict[str, Any]:
    """Nominal and true positions (Å and px), origin, canvas and tilts."""
    rng = np.random.default_rng([opts.seed, 1])
    window = opts.model_window
    nominal_a = scan.raster_positions_a(opts.scan_shape, opts.scan_step_a, opts.scan_rotation_deg)
    true_a = scan.jitter_positions_a(nominal_a, opts.position_jitter_a, rng)
    # The canvas is laid out from the nominal scan (what `init` sees), with room for 3σ jitter.
    margin = opts.margin_px + int(math.ceil(3 * opts.position_jitter_a / opts.dx_a))
    origin = scan.origin_px(nominal_a, opts.dx_a, window, margin)
    nominal_px = scan.to_pixels(nominal_a, opts.dx_a, origin)
    shape = scan.object_shape(nominal_px, window, margin)
    return dict(nominal_a=nominal_a, positions_a=true_a, origin=origin, object_shape=shape,
                positions_px=scan.to_pixels(true_a, opts.dx_a, origin), tilts=tilt_field(opts, nominal_a),
                beam_current=beam_current(opts, len(nominal_a)), subscan=subscans(opts))


def subscans(opts: SimulateOptions) -> np.ndarray | None:
    """Sub-scan label per position (J,): the raster rows split into len(subscan_defocus_a) blocks."""
    n = len(opts.subscan_defocus_a)
    if n == 0:
        return None
    ny, nx = opts.scan_shape
    if n > ny:
        raise RecipeError(f"subscan_defocus_a: {n} sub-scans but only {ny} scan rows")
    rows = np.arange(ny) * n // ny
    return np.repeat(rows, nx).astype(np.int32)


def beam_current(opts: SimulateOptions, n: int) -> np.ndarray | None:
    """Relative beam current per position (J,), uniform in 1 ± fluctuation (own seed stream)."""
    if not opts.beam_current_fluctuation:
        return None
    rng = np.random.default_rng([opts.seed, 3])
    return 1.0 + opts.beam_current_fluctuation * rng.uniform(-1.0, 1.0, n)


def tilt_field(opts: SimulateOptions, positions_a: np.ndarray) -> np.ndarray | None:
    """Smooth per-position beam tilt (J, 2) mrad: uniform part plus a linear ramp over the scan.

    The ramp is ``tilt_gradient_mrad`` at the scan edge (positions normalised to [-1, 1]).
    """
    if not any(opts.tilt_mrad) and not any(opts.tilt_gradient_mrad):
        return None
    centred = positions_a - positions_a.mean(axis=0)
    half = np.maximum(np.abs(centred).max(axis=0), 1e-12)
    return np.asarray(opts.tilt_mrad)[None, :] + np.asarray(opts.tilt_gradient_mrad)[None, :] * centred / half


# ----------------------------------------------------------------------------- model
def truth_object(opts: SimulateOptions, shape: tuple[int, int]) -> tuple[Any, specimen.Specimen]:
    """Transmission (1, S, H, W) complex64 of the built-in specimen."""
    spec = specimen.build_specimen(shape, opts.dx_a, opts.slices, specimen.SpecimenParams(), seed=opts.seed)
    t = specimen.transmission(spec.potential_v_a, electron.sigma_rad_per_v_a(opts.energy_ev))
    return t[None, ...], spec


def truth_probe(opts: SimulateOptions) -> Any:
    """Probe modes (P, M, M), Σ|P|² = counts per frame; partial coherence as a defocus spread."""
    p = probe.make_probe(opts.model_window, opts.dx_a, opts.energy_ev, opts.semiangle_mrad, opts.polar_aberrations,
                         counts=opts.counts_per_frame)
    if opts.probe_modes == 1:
        return p[None, ...]
    return probe.init_modes(p, opts.probe_modes, kind="defocus-spread", dx_a=opts.dx_a, energy_ev=opts.energy_ev)


def propagator(opts: SimulateOptions, tilts: np.ndarray | None) -> Any:
    if opts.slices == 1:
        return None
    return propagation.fresnel_propagator(opts.model_window, opts.dx_a, electron.wavelength_a(opts.energy_ev),
                                          opts.slice_thickness_a, tilt_mrad=tilts, xp=np)


def far_field_intensity(probe_modes: Any, obj: Any, positions_px: np.ndarray, H: Any) -> Any:
    """Noise-free intensities (B, M, M), unshifted, for a batch of positions."""
    window = tuple(probe_modes.shape[-2:])
    y0, x0, frac = overlap.split_positions(positions_px, window)
    psi1 = overlap.shift_probe(probe_modes, frac)
    Psi, _ = multislice.forward(psi1, overlap.extract(obj, y0, x0, window), H)
    return multislice.intensity(Psi)


def subscan_probe(opts: SimulateOptions, probe_modes: Any, s: int) -> Any:
    """Sub-scan s's probe: the shared probe with its extra defocus (C10 = -Δf)."""
    from ..physics import aberration_probe as abp

    names = ["C10"]
    basis, norms = abp.basis(opts.model_window, opts.dx_a, electron.wavelength_a(opts.energy_ev), names,
                             opts.semiangle_mrad, xp=np, dtype="float64")
    coeffs = np.array([-opts.subscan_defocus_a[s] * norms[0]])
    return abp.apply(abp.spectrum(probe_modes), coeffs, basis).astype(probe_modes.dtype)


def model_intensity(opts: SimulateOptions, geo: dict, probe_modes: Any, obj: Any, sl: slice, H: Any) -> Any:
    """Intensities of positions ``sl`` on the detector grid: sub-scan probes, PyPty's tilts
    before/after the specimen, then U×U binning (physics/model.py does the same)."""
    if geo["subscan"] is None and not any(opts.tilts_before_mrad) and not any(opts.tilts_after_mrad) \
            and opts.upsample == 1:
        return far_field_intensity(probe_modes, obj, geo["positions_px"][sl], H)
    from ..physics.model import ForwardModel

    model = ForwardModel(opts.model_window, opts.dx_a, opts.energy_ev, upsample=opts.upsample)
    pos = geo["positions_px"][sl]
    n = len(pos)
    labels = np.zeros(n, dtype=np.int32) if geo["subscan"] is None else geo["subscan"][sl]
    tilts = None if geo["tilts"] is None else geo["tilts"][sl]
    kw = {k: np.broadcast_to(np.asarray(getattr(opts, k), dtype=np.float64), (n, 2)) if any(getattr(opts, k))
          else None for k in ("tilts_before_mrad", "tilts_after_mrad")}
    out = np.zeros((n, opts.detector_size, opts.detector_size))
    for s in np.unique(labels):
        rows = np.nonzero(labels == s)[0]
        p = probe_modes if geo["subscan"] is None else subscan_probe(opts, probe_modes, int(s))
        out[rows] = model.intensity(p, obj, pos[rows], dz_a=opts.slice_thickness_a,
                                    tilts_mrad=None if tilts is None else tilts[rows],
                                    **{k: None if v is None else v[rows] for k, v in kw.items()})
    return out


# ----------------------------------------------------------------------------- stage
def calibration(opts: SimulateOptions) -> Calibration:
    m = opts.detector_size
    return Calibration(
        energy_kev=opts.energy_kev, semiangle_mrad=opts.semiangle_mrad, dk_inv_a=1.0 / (m * opts.dx_a),
        scan_shape=opts.scan_shape, scan_step_a=opts.scan_step_a, scan_rotation_deg=opts.scan_rotation_deg,
        detector_shape=(m, m), counts_per_frame=opts.counts_per_frame, defocus_a=opts.defocus_a,
        aberrations=opts.polar_aberrations,
    )


def run(out: str | Path, *, overwrite: bool = False, **options: Any) -> Path:
    """Simulate a dataset and write it (plus ``truth/``) to the data store ``out``."""
    opts = options.pop("options", None) or resolve_options(**options)
    check_output(out, overwrite=overwrite)  # before the simulation, not after it
    geo = geometry(opts)
    obj, spec = truth_object(opts, geo["object_shape"])
    probe_modes = truth_probe(opts)
    with StoreWriter(out, kind="data", stage="simulate", options=opts.model_dump(mode="json"),
                     overwrite=overwrite) as writer:
        _write_patterns(writer, opts, geo, obj, probe_modes)
        _write_truth(writer, opts, geo, obj, probe_modes, spec)
        writer.set_attrs(calibration=calibration(opts).to_attrs(), scan_shape=list(opts.scan_shape))
        writer.record("simulate", preset=opts.preset, noise="poisson" if opts.dose else "none")
        return writer.finalize()


def _write_patterns(writer: StoreWriter, opts: SimulateOptions, geo: dict, obj: Any, probe_modes: Any) -> None:
    """Patterns (DC-centred) and truth/patterns_noiseless, one chunk of positions at a time."""
    n, m = geo["positions_px"].shape[0], opts.detector_size
    chunks = default_chunks((n, m, m), np.float32)
    noisy = writer.array("patterns", shape=(n, m, m), dtype="float32", chunks=chunks)
    clean = writer.array("truth/patterns_noiseless", shape=(n, m, m), dtype="float32", chunks=chunks,
                         dims=("position", "ky", "kx"), units="count")
    rng = np.random.default_rng([opts.seed, 2])
    tilts = geo["tilts"]
    H = propagator(opts, None) if tilts is None else None
    for start in range(0, n, chunks[0]):
        sl = slice(start, min(start + chunks[0], n))
        h = H if tilts is None else propagator(opts, tilts[sl])
        intensity = detector_response(opts, geo, sl, model_intensity(opts, geo, probe_modes, obj, sl, h))
        intensity = backend.fftshift(intensity)
        clean[sl] = intensity
        noisy[sl] = rng.poisson(np.maximum(intensity, 0.0)).astype(np.float32) if opts.dose else intensity


def detector_response(opts: SimulateOptions, geo: dict, sl: slice, intensity: Any) -> Any:
    """Beam current per position, constant background, then the detector PSF (physics/detector.py)."""
    from ..physics.detector import blur

    if geo["beam_current"] is not None:
        intensity = intensity * geo["beam_current"][sl, None, None]
    intensity = intensity + opts.background_counts
    return blur(intensity, opts.detector_blur_px)


def _write_truth(writer: StoreWriter, opts: SimulateOptions, geo: dict, obj: Any, probe_modes: Any,
                 spec: specimen.Specimen) -> None:
    writer.array("truth/object", backend.to_numpy(obj), dims=("object_mode", "slice", "y", "x"),
                 chunks=(1, 1, *obj.shape[2:]))  # units and long names: store.schema
    writer.array("truth/probe", backend.to_numpy(probe_modes), dims=("probe_mode", "probe_y", "probe_x"))
    writer.array("truth/positions", geo["positions_px"], dims=("position", "yx"))
    writer.array("truth/atoms", spec.atoms, dims=("atom", "column"), units="1",
                 attrs={"columns": list(specimen.ATOM_COLUMNS),
                        "column_units": ["angstrom", "angstrom", "1", "V*angstrom"]})
    if geo["tilts"] is not None:
        writer.array("truth/tilts", geo["tilts"], dims=("position", "yx"))
    if geo["subscan"] is not None:
        writer.array("subscan", geo["subscan"], dims=("position",))
    if geo["beam_current"] is not None:
        writer.array("truth/beam_current", geo["beam_current"], dims=("position",))
    writer.set_attrs(truth={
        "dx_a": opts.dx_a, "slice_thickness_a": opts.slice_thickness_a, "n_slices": opts.slices,
        "origin_px": list(geo["origin"]), "probe_modes": opts.probe_modes,
        "counts_per_frame": opts.counts_per_frame, "dose_e_per_a2": opts.dose,
        "defects": spec.defects, "energy_kev": opts.energy_kev, "aberrations": opts.polar_aberrations,
        "background_counts": opts.background_counts, "detector_blur_px": opts.detector_blur_px,
        "upsample": opts.upsample,
        "subscan_aberrations": [{"C10": -d} for d in opts.subscan_defocus_a],
        "tilts_before_mrad": list(opts.tilts_before_mrad), "tilts_after_mrad": list(opts.tilts_after_mrad),
    })
