"""`ptycli simulate OUT.zarr`: a data store with known truth (for the demo, tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .app import app
from .options import Json, Overwrite, Seed, aberration_option, defocus_option
from .output import handle_errors, log, result

GEOMETRY = "Geometry"
OPTICS = "Optics"
SPECIMEN = "Specimen and noise"


def _pair(value: str | None, kind: type, flag: str) -> tuple | None:
    """'20x20', '20', '0.5,0.5' -> a pair; bad text is a configuration error (exit 3)."""
    if value is None:
        return None
    from ..errors import RecipeError  # noqa: PLC0415

    parts = value.lower().replace(",", "x").split("x")
    try:
        a, b = (kind(p) for p in (parts * 2 if len(parts) == 1 else parts))
    except (ValueError, TypeError):
        raise RecipeError(f"{flag} {value!r}: expected N or NxM") from None
    return a, b


def _check_tilt(opts: Any) -> None:
    """The tilt enters only the propagator between slices, and one slice has none (nothing is
    propagated after the last slice), so a single-slice tilt would be written as truth yet never
    change a pattern."""
    from ..errors import UsageError  # noqa: PLC0415

    if opts.slices > 1:
        return
    for flag, value in (("--tilt-mrad", opts.tilt_mrad), ("--tilt-gradient-mrad", opts.tilt_gradient_mrad)):
        if any(value):
            raise UsageError(f"{flag} needs a multislice object (--slices 2 or more with --slice-thickness-a); "
                             "with one slice the tilt has no effect")


@app.command("simulate")
@handle_errors
def simulate(
    out: Path = typer.Argument(..., help="Output data store (e.g. sim.zarr)."),
    preset: str = typer.Option("demo", "--preset", help="demo|multislice|mixed-state|low-dose|large; flags override."),
    scan_shape: str = typer.Option(None, "--scan-shape", help="Raster NYxNX, e.g. 20x20.", rich_help_panel=GEOMETRY),
    scan_step_a: str = typer.Option(None, "--scan-step-a", help="Scan step [Å] (or SYxSX).", rich_help_panel=GEOMETRY),
    scan_rotation_deg: float = typer.Option(None, "--scan-rotation-deg", help="Scan rotation [deg].",
                                            rich_help_panel=GEOMETRY),
    detector_size: int = typer.Option(None, "--detector-size", help="Detector pixels M (MxM).",
                                      rich_help_panel=GEOMETRY),
    dx_a: float = typer.Option(None, "--dx-a", help="Real-space pixel [Å]; detector pixel dk = 1/(M dx).",
                               rich_help_panel=GEOMETRY),
    position_jitter_a: float = typer.Option(None, "--position-jitter-a", help="Std of true-position errors [Å].",
                                            rich_help_panel=GEOMETRY),
    energy_kev: float = typer.Option(None, "--energy-kev", help="Beam energy [keV].", rich_help_panel=OPTICS),
    semiangle_mrad: float = typer.Option(None, "--semiangle-mrad", help="Convergence semi-angle [mrad].",
                                         rich_help_panel=OPTICS),
    defocus_a: float = defocus_option(OPTICS),
    aberration: list[str] = aberration_option(OPTICS),
    probe_modes: int = typer.Option(None, "--probe-modes", help="Incoherent probe modes (partial coherence).",
                                    rich_help_panel=OPTICS),
    tilt_mrad: str = typer.Option(None, "--tilt-mrad", help="Beam tilt TYxTX [mrad] (multislice only).",
                                  rich_help_panel=OPTICS),
    tilt_gradient_mrad: str = typer.Option(None, "--tilt-gradient-mrad", help="Extra tilt TYxTX [mrad] at the scan "
                                           "edge: a smooth per-position tilt field.", rich_help_panel=OPTICS),
    slices: int = typer.Option(None, "--slices", help="Object slices S.", rich_help_panel=SPECIMEN),
    slice_thickness_a: float = typer.Option(None, "--slice-thickness-a", help="Slice thickness [Å].",
                                            rich_help_panel=SPECIMEN),
    dose: float = typer.Option(None, "--dose", help="Dose [e/Å²] with Poisson noise (omit: noise-free).",
                               rich_help_panel=SPECIMEN),
    upsample: int = typer.Option(None, "--upsample", help="Model the beam on a U·M window and bin U×U far-field "
                                 "pixels per detector pixel.", rich_help_panel=OPTICS),
    seed: int = Seed,
    overwrite: bool = Overwrite,
    as_json: bool = Json,
) -> None:
    """Simulate 4D-STEM data of a built-in specimen (lattice, vacancy, dopant, amorphous atoms).

    Writes patterns plus truth/ (object, probe, positions, noise-free patterns); deterministic for --seed.
    """
    from ..stages import simulate as stage  # noqa: PLC0415  (keeps `ptycli --help` fast)

    opts = stage.resolve_options(
        preset, scan_shape=_pair(scan_shape, int, "--scan-shape"),
        scan_step_a=_pair(scan_step_a, float, "--scan-step-a"),
        scan_rotation_deg=scan_rotation_deg, detector_size=detector_size, dx_a=dx_a, energy_kev=energy_kev,
        semiangle_mrad=semiangle_mrad, defocus_a=defocus_a, aberrations=aberration or None, probe_modes=probe_modes,
        tilt_mrad=_pair(tilt_mrad, float, "--tilt-mrad"), position_jitter_a=position_jitter_a, dose=dose, seed=seed,
        tilt_gradient_mrad=_pair(tilt_gradient_mrad, float, "--tilt-gradient-mrad"), slices=slices,
        slice_thickness_a=slice_thickness_a, upsample=upsample)
    _check_tilt(opts)
    log(f"simulate: preset {opts.preset}, {opts.scan_shape[0]}x{opts.scan_shape[1]} scan, "
        f"{opts.detector_size}² detector, {opts.counts_per_frame:.4g} counts/frame", level=1)
    path = stage.run(out, overwrite=overwrite, options=opts)
    result({"output": str(path), **opts.model_dump(mode="json"), "counts_per_frame": opts.counts_per_frame}
           if as_json else path, as_json)
