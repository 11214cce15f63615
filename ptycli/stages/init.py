"""``init``: the starting state of a reconstruction, from a data store.

Probe: from aberrations (calibration, ``--calibration FILE.toml``, ``--defocus-a``,
``--aberration``), from the mean pattern (``pacbed``: sqrt of the PACBED with the phase of
the aberrations) or from an existing state store; always normalised to the data's mean
counts per frame (physics.md §3.4). Positions: the raster of the scan calibration or a
positions file in Å. Object: vacuum sized to hold every window plus a margin, or taken
from a state store (whose object frame, origin included, is then kept).

``--upsample U`` models a beam wider than the detector's window M·dx: the probe window is
U·M at the same dx and the forward model bins U×U far-field pixels per detector pixel.
``--subscans FILE|auto`` marks which sub-scan each position belongs to (FILE: one integer
label per position, .npy/.txt/.csv; auto: the data store's ``subscan`` array); each
sub-scan starts with the shared probe (zero aberration offset) and can refine its own
aberrations (``refine.subscan_aberrations``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engines.data import check_finite_frames
from ..engines.signals import StopOnSignals
from ..errors import InputError, RecipeError
from ..physics import probe as probe_lib
from ..physics import scan
from ..store.calibration import Calibration, load_calibration
from ..store.io import StoreWriter, check_output, input_ref, open_store, provenance_of
from ..store.state import State, load_state, write_state
from . import init_arrays, init_checks, scan_rotation
from .preprocess_calibration import build_calibration, describe
from .simulate import parse_aberrations

Report = Callable[[str, str], None]  # (kind: "info" | "warning", message)
# Extra object modes start weak, 0.25 % of the power each: the amplitude sits in the first
# slice only, the later slices transmit fully, so the share does not fall as 0.0025^S with
# the number of slices (0.05 in every slice left a 4-slice mode 6e-6 of the light at its last
# slice, too little for any update to grow it)
OBJECT_MODE_AMPLITUDE = 0.05


class InitOptions(BaseModel):
    """Options of ``init`` (lengths Å, angles deg)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    probe_from: str = Field("aberrations", description="aberrations | pacbed | PATH of a state store or of "
                            "a complex array file (.npy, .npz[:key], .h5[:dataset], .mat[:variable]).")
    probe_pixel_a: float | None = Field(None, gt=0, description="Pixel [Å] of a --probe-from array file.")
    object_pixel_a: float | None = Field(None, gt=0, description="Pixel [Å] of an --object-from array file.")
    defocus_a: float | None = Field(None, description="Δf [Å], positive = underfocus (C10 = -Δf).")
    aberrations: dict[str, float] = Field(default_factory=dict)
    calibration: Path | None = None
    probe_modes: int | None = Field(None, ge=1)
    mode_kind: Literal["hermite", "defocus-spread"] = "hermite"
    positions: Path | None = None
    scan_flip_y: bool = False
    scan_flip_x: bool = False
    scan_rotation_deg: float | Literal["auto"] | None = Field(None, description=(
        "Scan rotation θ [deg] against the detector, overriding the calibration's; 'auto': the curl-free "
        "rotation of the patterns' centres of mass within ±90° of the calibration's (stages/scan_rotation.py)."))
    slices: int | None = Field(None, ge=1)
    slice_thickness_a: float | None = Field(None, gt=0)
    object_modes: int = Field(1, ge=1)
    object_from: Path | None = None
    margin_px: int = Field(scan.DEFAULT_MARGIN_PX, ge=0)
    upsample: int = Field(1, ge=1, le=16, description="Far-field upsampling U: probe window U·M.")
    subscans: str | None = Field(None, description="FILE of sub-scan labels per position, or 'auto'.")
    strict: bool = False
    seed: int = 0


@dataclass
class DataSummary:
    """What ``init`` needs from the data: calibration, window and frame statistics."""

    calibration: Calibration
    window: tuple[int, int]
    n_frames: int
    counts_per_frame: float  # N_e = mean_j Σ_k D_j(k)
    mean_pattern: np.ndarray  # DC-centred (M, M)
    dx_a: float
    upsample: int = 1
    com_sums: np.ndarray | None = None  # (J, 3) Σ D, Σ D k_y, Σ D k_x per frame (scan_rotation.com_sums)
    rotation_estimate: dict | None = None  # --scan-rotation-deg auto's result (scan_rotation.RotationEstimate)

    @property
    def model_window(self) -> tuple[int, int]:
        """The probe window: the detector's times the upsampling factor (same dx)."""
        return (self.window[0] * self.upsample, self.window[1] * self.upsample)


def resolve_options(**options: Any) -> InitOptions:
    values = {k: v for k, v in options.items() if v is not None}
    if "aberrations" in values:
        values["aberrations"] = parse_aberrations(values["aberrations"])
    try:
        return InitOptions(**values)
    except ValidationError as exc:
        parts = [f"{_flag_named(e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
        raise RecipeError("init options: " + "; ".join(parts)) from None


def _flag_named(loc: tuple) -> str:
    """'mode_kind (--mode-kind)': the option and the flag a CLI user typed."""
    key = ".".join(str(p) for p in loc)
    if not loc or loc[0] not in InitOptions.model_fields or loc[0] == "margin_px":
        return key
    flag = "--aberration" if loc[0] == "aberrations" else "--" + str(loc[0]).replace("_", "-")
    return f"{key} ({flag})"


# ----------------------------------------------------------------------------- data
def summarize_data(group: zarr.Group, path: Path, opts: InitOptions) -> DataSummary:
    """Calibration (store < file) and one streaming pass for N_e and the mean pattern."""
    if "patterns" not in group:
        raise InputError(f"{path}: data store has no 'patterns' array")
    patterns = group["patterns"]
    if patterns.ndim != 3 or patterns.shape[0] == 0:
        raise InputError(f"{path}/patterns: shape {patterns.shape}; expected (J, M, M) with J >= 1")
    try:
        base = load_calibration(dict(group.attrs)).model_dump(exclude_none=True)
    except ValidationError as exc:
        raise InputError(f"{path}: calibration: {describe(exc)}") from None
    cal = build_calibration(opts.calibration, None, base, str(path))
    missing = cal.missing("energy_kev", "semiangle_mrad") + ([] if cal.pixel_inv_a else ["dk_inv_a or dk_mrad"])
    if missing:
        raise InputError(f"{path}: calibration lacks {', '.join(missing)}; add it with --calibration FILE.toml")
    window = tuple(int(v) for v in patterns.shape[1:])
    total, mean, com = _frame_stats(patterns, f"{path}/patterns", opts.scan_rotation_deg == "auto")
    if total <= 0:
        raise InputError(f"{path}/patterns: every pattern is zero (no counts); nothing to reconstruct")
    return DataSummary(cal, window, patterns.shape[0], total, mean, float(cal.dx_a(window[0])), opts.upsample,
                       com)


def _frame_stats(patterns: zarr.Array, where: str, with_com: bool) -> tuple[float, np.ndarray, np.ndarray | None]:
    """(N_e, mean pattern, per-frame CoM sums or None) in one streaming pass."""
    step = patterns.chunks[0]
    acc = np.zeros(patterns.shape[1:], dtype=np.float64)
    com = []
    for start in range(0, patterns.shape[0], step):
        block = np.asarray(patterns[start : start + step], dtype=np.float64)
        check_finite_frames(block.reshape(len(block), -1).sum(axis=1), start, where)
        acc += block.sum(axis=0)
        if with_com:
            com.append(scan_rotation.com_sums(block))
    mean = acc / patterns.shape[0]
    return float(mean.sum()), mean, np.concatenate(com) if with_com else None


# ----------------------------------------------------------------------------- variables
def aberrations_of(cal: Calibration, opts: InitOptions) -> dict[str, float]:
    """Calibration terms < calibration defocus < --defocus-a < --aberration."""
    out = dict(cal.aberrations)
    if cal.defocus_a is not None:
        out["C10"] = -cal.defocus_a
    if opts.defocus_a is not None:
        out["C10"] = -opts.defocus_a
    out.update(opts.aberrations)
    return out


def make_probe(data: DataSummary, opts: InitOptions, aberrations: dict[str, float]) -> np.ndarray:
    """Probe modes (P, M, M) complex64, Σ|P|² = N_e."""
    cal, m = data.calibration, data.model_window
    n_e = data.counts_per_frame
    if not n_e > 0:
        raise InputError("data: mean counts per frame is not positive; cannot normalise the probe")
    if opts.probe_from == "aberrations":
        single = probe_lib.make_probe(m, data.dx_a, cal.energy_ev, cal.semiangle_mrad, aberrations, counts=n_e)
    elif opts.probe_from == "pacbed":
        single = probe_lib.probe_from_pacbed(_upsampled_mean(data), data.dx_a, cal.energy_ev, aberrations, n_e)
        single = single.astype(np.complex64)
    else:
        return _probe_from_state(Path(opts.probe_from), data, opts)
    n_modes = opts.probe_modes or 1
    if n_modes == 1:
        return single[None, ...]
    return probe_lib.init_modes(single, n_modes, kind=opts.mode_kind, dx_a=data.dx_a, energy_ev=cal.energy_ev)


def _probe_from_state(path: Path, data: DataSummary, opts: InitOptions) -> np.ndarray:
    if init_arrays.is_array_file(path):  # another code's probe: resampled onto the model window
        modes = init_arrays.probe_from_file(opts.probe_from, data.model_window, data.dx_a, opts.probe_pixel_a)
    else:
        modes = np.asarray(_load_state_for(path, data, "--probe-from").probe, dtype=np.complex64)
    if tuple(modes.shape[-2:]) != data.model_window:
        raise InputError(f"{path}: probe window {modes.shape[-2:]} differs from the data's {data.model_window}"
                         + (f" (detector x upsample {data.upsample})" if data.upsample > 1 else ""))
    if opts.probe_modes and opts.probe_modes != modes.shape[0]:
        modes = probe_lib.init_modes(probe_lib.orthogonalize_modes(modes)[0], opts.probe_modes,
                                     kind=opts.mode_kind, dx_a=data.dx_a, energy_ev=data.calibration.energy_ev)
    return probe_lib.normalize(modes, data.counts_per_frame).astype(np.complex64)


def _load_state_for(path: Path, data: DataSummary, flag: str) -> State:
    state = load_state(open_store(path, "state"))
    if abs(state.dx_a - data.dx_a) > 1e-6 * data.dx_a:
        raise InputError(f"{path} ({flag}): pixel {state.dx_a:.6g} Å differs from the data's {data.dx_a:.6g} Å")
    return state


def positions_a(data: DataSummary, opts: InitOptions, group: zarr.Group,
                report: Report | None = None) -> np.ndarray:
    """Probe centres (J, 2) in Å: a positions file, or the calibrated raster."""
    if opts.positions is not None:
        if opts.scan_rotation_deg is not None:
            raise RecipeError("--scan-rotation-deg turns the calibrated raster; --positions gives the positions "
                              "themselves: give one of them")
        return scan.read_positions_a(opts.positions, data.n_frames)
    cal = data.calibration
    shape = cal.scan_shape or group.attrs.get("scan_shape")
    if shape is None or cal.scan_step_a is None:
        raise InputError("data: no scan_shape/scan_step_a in the calibration; give --positions FILE (Å)")
    if int(shape[0]) * int(shape[1]) != data.n_frames:
        raise InputError(f"data: scan_shape {tuple(shape)} has {shape[0] * shape[1]} points, "
                         f"but patterns has {data.n_frames} frames")
    rotation = cal.scan_rotation_deg if opts.scan_rotation_deg is None else opts.scan_rotation_deg
    if rotation == "auto":
        rotation = estimated_rotation(data, opts, tuple(int(v) for v in shape), report)
    return scan.raster_positions_a(tuple(shape), cal.scan_step_a, rotation, opts.scan_flip_y, opts.scan_flip_x)


def estimated_rotation(data: DataSummary, opts: InitOptions, shape: tuple[int, int],
                       report: Report | None) -> float:
    """``--scan-rotation-deg auto``: the CoM estimate, refused where the data do not determine it."""
    cal = data.calibration
    step = tuple(cal.scan_step_a) if np.ndim(cal.scan_step_a) else (cal.scan_step_a, cal.scan_step_a)
    try:
        est = scan_rotation.estimate(data.com_sums, shape, step, opts.scan_flip_y, opts.scan_flip_x,
                                     nominal_deg=cal.scan_rotation_deg)
    except ValueError as exc:
        raise InputError(f"--scan-rotation-deg auto: {exc}") from None
    if not est.determined:
        raise InputError(f"--scan-rotation-deg auto: the patterns' centres of mass do not determine the scan "
                         f"rotation (curl ratio {est.curl_ratio:.2f}, needs <= {scan_rotation.DETERMINED_RATIO}: "
                         "a defocused probe or a weak specimen); give the rotation in degrees")
    if report is not None:
        report("info", f"scan rotation {est.rotation_deg:.2f} deg from the centres of mass (curl ratio "
                       f"{est.curl_ratio:.3f}; calibration {cal.scan_rotation_deg:g} deg; the 180 deg twin is "
                       "not told apart)")
        if est.mirrored:
            flag = "--scan-flip-x" if not opts.scan_flip_x else "no --scan-flip-x"
            report("warning", f"the centres of mass fit a mirrored scan better (curl ratio {est.mirror_curl_ratio:.3f} "
                              f"against {est.curl_ratio:.3f}): try {flag}")
    data.rotation_estimate = est.as_dict()
    return est.rotation_deg


def make_object(data: DataSummary, opts: InitOptions, pos_a: np.ndarray) -> tuple[np.ndarray, Any, tuple, np.ndarray]:
    """(object (Q, S, H, W), slice_thickness (S,) or None, origin, positions px)."""
    if opts.object_from is not None and init_arrays.is_array_file(opts.object_from):
        obj, origin, pos_px = init_arrays.object_from_file(opts.object_from, data.model_window, data.dx_a,
                                                           opts.object_pixel_a, pos_a, opts.margin_px)
        if obj.shape[1] > 1 and opts.slice_thickness_a is None:
            raise RecipeError(f"{opts.object_from}: {obj.shape[1]} slices need --slice-thickness-a")
        thickness = None if opts.slice_thickness_a is None else np.full(obj.shape[1], opts.slice_thickness_a,
                                                                         np.float32)
        return obj, thickness, origin, pos_px
    if opts.object_from is not None:
        return _object_from_state(opts.object_from, data, pos_a)
    slices = opts.slices or 1
    if slices > 1 and opts.slice_thickness_a is None:
        raise RecipeError(f"--slices {slices} needs --slice-thickness-a")
    origin = scan.origin_px(pos_a, data.dx_a, data.model_window, opts.margin_px)
    pos_px = scan.to_pixels(pos_a, data.dx_a, origin)
    shape = scan.object_shape(pos_px, data.model_window, opts.margin_px)
    obj = np.ones((opts.object_modes, slices, *shape), dtype=np.complex64)
    if opts.object_modes > 1:
        rng = np.random.default_rng([opts.seed, 3])
        # Identical modes would get identical updates forever; weak random phases break the tie.
        phase = rng.uniform(0, 2 * np.pi, size=(opts.object_modes - 1, *shape))
        obj[1:, 0] = (OBJECT_MODE_AMPLITUDE * np.exp(1j * phase)).astype(np.complex64)
    thickness = None if opts.slice_thickness_a is None else np.full(slices, opts.slice_thickness_a, np.float32)
    return obj, thickness, origin, pos_px


def _object_from_state(path: Path, data: DataSummary, pos_a: np.ndarray) -> tuple:
    state = _load_state_for(path, data, "--object-from")
    pos_px = scan.to_pixels(pos_a, data.dx_a, state.origin_px)
    obj = np.asarray(state.object, dtype=np.complex64)
    if not scan.windows_fit(pos_px, data.model_window, tuple(obj.shape[-2:])):
        raise InputError(f"{path}: object {obj.shape[-2:]} does not hold every probe window of this scan")
    return obj, state.slice_thickness, tuple(state.origin_px), pos_px


def _upsampled_mean(data: DataSummary) -> np.ndarray:
    """The PACBED on the U× finer model grid: each detector pixel's counts shared by its U×U
    model pixels (the adjoint of binning / U², so the total is kept), DC-centred."""
    if data.upsample == 1:
        return data.mean_pattern
    from ..physics.detector import bin_adjoint

    fine = bin_adjoint(np.fft.ifftshift(data.mean_pattern), data.upsample) / data.upsample**2
    return np.fft.fftshift(fine)


def subscan_labels(spec: str | None, group: zarr.Group, n_frames: int) -> np.ndarray | None:
    """Sub-scan index per position (J,) int32, numbered 0..n-1 in order of first label, or None."""
    if spec is None:
        return None
    if spec == "auto":
        if "subscan" not in group:
            raise InputError("--subscans auto: the data store has no 'subscan' array; give a FILE with one "
                             "integer label per position")
        raw, where = np.asarray(group["subscan"][...]), "data store 'subscan'"
    else:
        path = Path(spec)
        if not path.exists():
            raise InputError(f"--subscans {spec}: no such file (expected 'auto' or a FILE of labels)")
        try:
            raw = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter="," if path.suffix == ".csv"
                                                                          else None)
        except ValueError as exc:
            raise InputError(f"{path}: not a list of integer sub-scan labels ({exc})") from None
        where = str(path)
    raw = np.asarray(raw).reshape(-1)
    if raw.size != n_frames or not np.all(np.equal(np.mod(raw, 1), 0)):
        raise InputError(f"{where}: {raw.size} labels; expected {n_frames} integers (one per position)")
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # number sub-scans by first appearance in the scan
    return order[inverse].astype(np.int32)


# ----------------------------------------------------------------------------- stage
@StopOnSignals("init")
def run(data: str | Path, out: str | Path, *, overwrite: bool = False, report: Report | None = None,
        **options: Any) -> Path:
    """Write the initial state store ``out`` for the data store ``data``."""
    opts = options.pop("options", None) or resolve_options(**options)
    data_path = Path(data)
    read = (data_path, opts.calibration, opts.positions, opts.object_from, opts.probe_from, opts.subscans)
    check_output(out, overwrite=overwrite, inputs=read)  # before the sampling report and the probe/object
    group = open_store(data_path, "data")
    summary = summarize_data(group, data_path, opts)
    aberrations = aberrations_of(summary.calibration, opts)
    probe_modes = make_probe(summary, opts, aberrations)
    pos_a = positions_a(summary, opts, group, report)
    obj, thickness, origin, pos_px = make_object(summary, opts, pos_a)
    init_checks.check(summary, aberrations, pos_a, thickness, strict=opts.strict, report=report)
    state = State(probe=probe_modes, object=obj, positions=pos_px, dx_a=summary.dx_a,
                  energy_kev=float(summary.calibration.energy_kev), slice_thickness=thickness,
                  positions_initial=pos_px.copy(), origin_px=tuple(float(v) for v in origin),
                  semiangle_mrad=summary.calibration.semiangle_mrad, aberrations=aberrations,
                  upsample=opts.upsample)
    labels = subscan_labels(opts.subscans, group, summary.n_frames)
    if labels is not None:
        state.subscan, state.subscan_aberrations = labels, [{} for _ in range(int(labels.max()) + 1)]
    ref = input_ref(group, data_path)
    with StoreWriter(out, kind="state", stage="init", options=opts.model_dump(mode="json"), inputs=[ref],
                     provenance=provenance_of(group), overwrite=overwrite) as writer:
        write_state(writer, state)
        writer.set_attrs(data={"path": str(data_path), "fingerprint": ref.fingerprint})
        writer.record("init", probe_from=opts.probe_from, counts_per_frame=summary.counts_per_frame,
                      **({"scan_rotation": summary.rotation_estimate} if summary.rotation_estimate else {}))
        return writer.finalize()
