"""`ptycli constrain`: apply constraints and resampling once to a state store."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError
from .app import app
from .options import Device, Json, Output, Overwrite, read_path_arg
from .output import handle_errors, log, result

RESAMPLE = "Resampling"


@app.command("constrain")
@handle_errors
def constrain(
    state: str = typer.Argument(..., help="Input state store ('-' reads the path from stdin)."),
    output: Path = Output,
    apply: list[str] = typer.Option([], "--apply", "-a", help="NAME[:key=value,...]; repeatable, applied in order."),
    recipe: Optional[Path] = typer.Option(None, "--recipe",
                                          help="TOML file with a constraints list (\\[\\[constraints]] tables)."),
    slices: Optional[int] = typer.Option(None, "--slices", min=1, help="New slice count.", rich_help_panel=RESAMPLE),
    slice_thickness_a: Optional[float] = typer.Option(None, "--slice-thickness-a", min=0.0,
                                                      help="New slice thickness in Å.", rich_help_panel=RESAMPLE),
    pad_px: int = typer.Option(0, "--pad-px", help="Pad each side with this many vacuum px; negative crops.",
                               rich_help_panel=RESAMPLE),
    probe_modes: Optional[int] = typer.Option(None, "--probe-modes", min=1, help="New probe mode count.",
                                              rich_help_panel=RESAMPLE),
    counts: Optional[float] = typer.Option(None, "--counts", help="Counts per frame N_e for fix_probe_intensity."),
    overwrite: bool = Overwrite,
    device: str = Device,
    as_json: bool = Json,
) -> None:
    """Apply constraints (e.g. phase_ramp_removal, orthogonalize_probe) and resampling once.

    Resampling (--slices/--slice-thickness-a, --pad-px, --probe-modes) runs first, then the
    constraints of --recipe, then those of --apply. The output feeds `ptycli reconstruct`.
    """
    from ..stages.constrain import ConstrainOptions, run  # noqa: PLC0415  (keep --help fast)

    # the same rule as fix_probe_intensity's own `counts` (> 0): sqrt(N_e / power) of a
    # negative N_e is an all-NaN probe
    if counts is not None and not (math.isfinite(counts) and counts > 0):
        raise UsageError(f"--counts {counts:g}: expected counts per frame > 0")
    opts = ConstrainOptions(apply=apply, recipe=recipe, slices=slices, slice_thickness_a=slice_thickness_a,
                            pad_px=pad_px, probe_modes=probe_modes, counts_per_frame=counts)
    path = run(read_path_arg(state), output, opts, overwrite=overwrite, device=device,
               report=lambda m: log(m, level=1))
    result({"output": str(path), "options": opts.as_json()} if as_json else path, as_json)
