"""`ptycli compare A [B]`: registered correlation, RMSE, FRC resolution (the quality metric)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app
from .options import Json, Overwrite, positive, read_path_arg
from .output import handle_errors, log, result


@app.command("compare")
@handle_errors
def compare(
    a: str = typer.Argument(..., help="State store; '-' reads the path from stdin."),
    b: Optional[str] = typer.Argument(None, help="State store, simulated data store (truth/), or a "
                                      ".npy/.tif phase image; default: A's own data store's truth."),
    scale: bool = typer.Option(False, "--scale", help="Also fit a phase gain g with A ≈ g·B (reported as scale)."),
    b_pixel: Optional[float] = typer.Option(None, "--b-pixel-size", callback=positive,
                                            help="Pixel size of a reference image B [Å] (default: A's)."),
    b_origin: Optional[str] = typer.Option(None, "--b-origin", metavar="Y,X",
                                           help="Where image B's pixel (0, 0) lies in A's object frame [Å] "
                                           "(default 0,0); B is resampled onto A and compared where both overlap."),
    margin: int = typer.Option(0, "--margin", help="Widen the scanned area by this many pixels."),
    figure: Optional[Path] = typer.Option(None, "--figure", help="Write A, B, A−B and the FRC as a PNG."),
    as_json: bool = Json,
    overwrite: bool = Overwrite,
) -> None:
    """Compare object phases after sub-pixel registration; print the correlation (or all, --json)."""
    from ..stages.compare import compare_stores  # noqa: PLC0415

    path_a = read_path_arg(a)
    if figure is not None:  # refuse a bad or existing figure path before comparing (as inspect does)
        from ..stages.figures import figure_format  # noqa: PLC0415
        from ..store.io import check_output  # noqa: PLC0415

        figure_format(figure)
        check_output(figure, overwrite=overwrite, inputs=[p for p in (path_a, b) if p is not None], kind="file")
    origin = _pair(b_origin) if b_origin is not None else None
    res = compare_stores(path_a, b, scale=scale, margin_px=margin, return_images=figure is not None,
                         b_pixel_a=b_pixel, b_origin_a=origin)
    if figure is not None:
        from ..stages.figures import compare_figure  # noqa: PLC0415

        compare_figure(res, figure, overwrite=overwrite)
        log(f"wrote {figure}")
    res.pop("images", None)
    r = res["resolution_a"]
    log(f"correlation {res['correlation']:.4f}  rmse {res['rmse']:.4g} rad  shift {res['shift_px']} px  "
        f"resolution {r['one_seventh']:.3g} Å (1/7), {r['half_bit']:.3g} Å (half-bit)")
    result(res if as_json else f"{res['correlation']:.6f}", as_json)


def _pair(text: str) -> tuple[float, float]:
    """'Y,X' in Å -> (y, x); a usage error (exit 2) otherwise."""
    import math  # noqa: PLC0415

    from ..errors import UsageError  # noqa: PLC0415

    try:
        y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--b-origin {text!r}: expected Y,X in Å, e.g. 12.5,-3") from None
    if not (math.isfinite(y) and math.isfinite(x)):
        raise UsageError(f"--b-origin {text!r}: expected finite numbers Y,X in Å")
    return y, x
