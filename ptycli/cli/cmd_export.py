"""`ptycli export STORE -o FILE`: calibrated TIFF/PNG/NPY/HDF5/CSV, or other codes' layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app
from .options import Overwrite, read_path_arg
from .output import handle_errors, log, result

WHAT_HELP = ("object-phase | object-amplitude | object-complex | probe | probe-fourier | background | "
             "positions | tilts | loss | beam-current | aberrations | thickness | patterns (data store).")


@app.command("export")
@handle_errors
def export(
    store: str = typer.Argument(..., help="State or data store; '-' reads the path from stdin."),
    output: Path = typer.Option(..., "-o", "--output", help="Output file; format from the suffix."),
    what: str = typer.Option("object-phase", "--what", help=WHAT_HELP),
    fmt: Optional[str] = typer.Option(None, "--format", help="tif|png|npy|h5|csv (default: from the suffix)."),
    slices: Optional[str] = typer.Option(None, "--slices", help="sum|all|i:j (probe: modes; default sum/all)."),
    crop: str = typer.Option("scanned", "--crop", help="scanned|full|y0:y1,x0:x1 (object pixels)."),
    object_modes: str = typer.Option("0", "--object-modes", help="Object modes: N, i:j or all (a mode axis)."),
    unwrap: bool = typer.Option(False, "--unwrap", help="2D-unwrap each phase slice."),
    remove_ramp: bool = typer.Option(False, "--remove-ramp", help="Subtract the illumination-weighted phase plane."),
    normalize: bool = typer.Option(False, "--normalize", help="Scale real values to [0, 1] (complex: max |.| = 1)."),
    bit_depth: int = typer.Option(32, "--bit-depth", help="TIFF: 8|16 (scaled integers) or 32 (float)."),
    layout: Optional[str] = typer.Option(None, "--layout", help="Patterns for pypty (.h5 'data') or ptyrad (4D)."),
    cmap: str = typer.Option("gray", "--cmap", help="PNG colormap (matplotlib name)."),
    overwrite: bool = Overwrite,
) -> None:
    """Write one array of a store to a calibrated file (pixel size in Å in TIFF/HDF5)."""
    from pydantic import ValidationError  # noqa: PLC0415

    from ..errors import UsageError  # noqa: PLC0415
    from ..stages.export import ExportOptions, export as run  # noqa: PLC0415

    try:
        opts = ExportOptions(what=what, format=fmt, slices=slices, crop=crop, object_modes=object_modes, unwrap=unwrap,
                             remove_ramp=remove_ramp, normalize=normalize, bit_depth=bit_depth,
                             layout=layout, cmap=cmap, overwrite=overwrite)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UsageError(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}") from None
    path = run(read_path_arg(store), output, opts)
    log(f"wrote {path}", level=1)
    result(path)
