"""`ptycli preprocess INPUT -o OUT.zarr`: a raw 4D-STEM file -> a calibrated data store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .app import app
from .options import Json, Output, Overwrite, ProgressOpt, read_path_arg
from .output import Progress, handle_errors, log, result, warn

CAL = "Calibration (flags win over --calibration)"
OPS = "Operations (applied in this order)"


def _opt(default: Any, *names: str, help: str, panel: str = OPS) -> Any:
    return typer.Option(default, *names, help=help, rich_help_panel=panel)


def _calibration_flags(**flags: Any) -> dict[str, Any]:
    """Only flags actually given, so the calibration file is not overridden by defaults.

    None is "not given" for a value flag; 0 and 0.0 are real values (`v not in (None, False)` dropped
    them, as 0 == False). A switch left off (False) is "not given" too: it cannot unset the file's True.
    """
    return {k: v for k, v in flags.items() if v is not None and v is not False}


@app.command()
@handle_errors
def preprocess(
    input: str = typer.Argument(..., help="Raw file (.npy .h5 .zarr EMPAD .raw Merlin .mib .tif) or '-' (stdin)."),
    output: Path = Output,
    calibration: Optional[Path] = _opt(None, "--calibration", help="TOML file of flat calibration keys.", panel=CAL),
    energy_kev: Optional[float] = _opt(None, "--energy-kev", help="Beam energy [keV].", panel=CAL),
    semiangle_mrad: Optional[float] = _opt(None, "--semiangle-mrad", help="Convergence semi-angle [mrad].", panel=CAL),
    dk_mrad: Optional[float] = _opt(None, "--dk-mrad", help="Raw detector pixel [mrad].", panel=CAL),
    dk_inv_a: Optional[float] = _opt(None, "--dk-inv-a", help="Raw detector pixel [1/Å].", panel=CAL),
    estimate_dk: bool = _opt(False, "--estimate-dk", help="dk from the BF disk radius and the semi-angle.", panel=CAL),
    scan_shape: Optional[str] = _opt(None, "--scan-shape", help="Scan NYxNX (4D inputs give it).", panel=CAL),
    scan_step_a: Optional[str] = _opt(None, "--scan-step-a", help="Scan step [Å], S or SYxSX.", panel=CAL),
    scan_rotation_deg: Optional[float] = _opt(None, "--scan-rotation-deg", help="Scan rotation [deg].", panel=CAL),
    defocus_a: Optional[float] = _opt(None, "--defocus-a", help="Nominal defocus Δf [Å], + = underfocus.", panel=CAL),
    flip_ky: bool = _opt(False, "--flip-ky", help="Flip frames along ky (recorded in calibration).", panel=CAL),
    flip_kx: bool = _opt(False, "--flip-kx", help="Flip frames along kx (recorded in calibration).", panel=CAL),
    transpose: bool = _opt(False, "--transpose", help="Transpose frames (recorded in calibration).", panel=CAL),
    dataset: Optional[str] = _opt(None, "--dataset", help="HDF5/Zarr array path (default: largest 3D/4D)."),
    nan: str = _opt("error", "--nan", help="NaN/Inf policy: error|zero."),
    clip_negatives: bool = _opt(False, "--clip-negatives", help="Set negative input values to 0 (else an error). "
                                "Fourier-shift ringing is clipped to 0 either way (counts are never negative)."),
    multiply: Optional[float] = _opt(None, "--multiply", help="Multiply every frame (e.g. 1/counts per e-)."),
    repair_pixels: Optional[float] = _opt(None, "--repair-pixels",
                                          help="Repair hot/dead pixels; threshold x neighbours."),
    shift: Optional[str] = _opt(None, "--shift", help="Sub-pixel shift DY,DX of every frame [px]."),
    shift_method: str = _opt("bilinear", "--shift-method", help="bilinear (keeps counts >= 0, slight blur) or "
                             "fourier (no blur; its ringing below 0 is clipped to 0 and the amount logged)."),
    center: str = _opt("none", "--center", help="none|auto (centre the BF disk of the mean pattern)."),
    crop: Optional[str] = _opt(None, "--crop", help="Detector window M, MxN (centred) or y0:y1,x0:x1."),
    bin: int = _opt(1, "--bin", help="Detector binning factor: b x b sums around the DC pixel, which stays the "
                    "centre pixel. Even b needs a half-pixel shift: folded into --shift/--center auto, else bilinear."),
    bin_scan: int = _opt(1, "--bin-scan", help="Scan binning factor."),
    pad: Optional[str] = _opt(None, "--pad", help="Zero-pad the detector to M or MxN (centred)."),
    dtype: str = _opt("float32", "--dtype", help="float32|uint8|uint16|uint32|int32."),
    compress_masks: Optional[str] = _opt(None, "--compress-masks", help="annular:RINGSxSEGMENTS or pca:N."),
    scheduler: Optional[str] = _opt(None, "--scheduler", help="Run the blocks as a Dask graph: threads | processes | "
                                     "a dask.distributed address (tcp://host:8786). Default: in-process.", panel="Run"),
    force: bool = _opt(False, "--force", help="Keep a calibration that fails the plausibility checks (energy, "
                       "semi-angle range, semi-angle within the detector, dk against the BF disk).", panel=CAL),
    overwrite: bool = Overwrite,
    json_out: bool = Json,
    progress: str = ProgressOpt,
) -> None:
    """Turn a raw 4D-STEM file into a calibrated, chunked data store (streamed)."""
    from ..stages import preprocess as stage  # noqa: PLC0415
    from ..stages.preprocess_ops import parse_pair  # noqa: PLC0415

    flags = _calibration_flags(energy_kev=energy_kev, semiangle_mrad=semiangle_mrad, dk_mrad=dk_mrad,
                               dk_inv_a=dk_inv_a, scan_shape=scan_shape, scan_step_a=scan_step_a,
                               scan_rotation_deg=scan_rotation_deg, defocus_a=defocus_a, flip_ky=flip_ky,
                               flip_kx=flip_kx, transpose=transpose)
    options = dict(dataset=dataset, crop=crop, bin=bin, bin_scan=bin_scan, pad=pad, center=center, nan=nan,
                   shift_method=shift_method, multiply=multiply, clip_negatives=clip_negatives,
                   repair_threshold=repair_pixels, dtype=dtype, compress_masks=compress_masks, estimate_dk=estimate_dk,
                   force=force,
                   shift_px=_pair(parse_pair, shift))
    options = _checked_options(stage, options)
    job = stage.Preprocess(read_path_arg(input), output, options=options, calibration_file=calibration,
                           calibration=flags, overwrite=overwrite, scheduler=scheduler)
    with Progress(job.work, "preprocess", progress) as bar:
        summary = job.run(progress=bar.update)
    if summary["compression"]:
        c = summary["compression"]
        log(f"compressed to {c['n_masks']} virtual detectors: ratio {c['ratio']:.4g}:1")
    _log_clipped(summary.get("clipped_ringing"))
    for problem in summary.get("calibration_doubts") or ():
        warn(f"calibration: {problem}")
    result(summary if json_out else summary["output"], json_out)


def _log_clipped(clip: Optional[dict]) -> None:
    if not clip or clip["pixels"] == 0:
        return
    if clip["pixels"] is None:
        log("fourier shift: ringing below 0 clipped to 0 (not tallied with --scheduler)")
        return
    share = "" if clip["fraction"] is None else f", {clip['fraction']:.3%} of the total"
    log(f"fourier shift: clipped ringing below 0 to 0 at {clip['pixels']} pixels (+{clip['counts']:.4g} counts"
        f"{share}); --shift-method bilinear does not ring")


# Options whose flag is not the option name with dashes: a message must name what the user typed.
FLAG_OF = {"repair_threshold": "--repair-pixels", "shift_px": "--shift"}


def _checked_options(stage: Any, options: dict[str, Any]) -> Any:
    from pydantic import ValidationError  # noqa: PLC0415

    from ..errors import RecipeError  # noqa: PLC0415

    try:
        return stage.PreprocessOptions.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        flag = FLAG_OF.get(name, "--" + name.replace("_", "-"))
        raise RecipeError(f"{flag}: {err['msg']} (got {err.get('input')!r})") from None


def _pair(parse: Any, spec: Optional[str]) -> Any:
    from ..errors import UsageError  # noqa: PLC0415

    try:
        return None if spec is None else parse(spec, float)
    except ValueError:
        raise UsageError(f"--shift {spec!r}: expected DY,DX in pixels") from None
