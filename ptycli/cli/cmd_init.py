"""`ptycli init DATA.zarr -o STATE.zarr`: the starting state of a reconstruction."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .options import Json, Output, Overwrite, Seed, aberration_option, defocus_option, read_path_arg
from .output import handle_errors, log, result, warn

PROBE = "Probe"
OBJECT = "Object and positions"


@app.command("init")
@handle_errors
def init(
    data: str = typer.Argument(..., help="Data store (or '-' to read its path from stdin)."),
    out: Path = Output,
    probe_from: str = typer.Option("aberrations", "--probe-from", help="aberrations | pacbed | STATE.zarr | a "
                                   "complex probe array (M, M) or (P, M, M): FILE.npy, FILE.npz[:key], "
                                   "FILE.h5[:dataset], FILE.mat[:variable]; resampled to the data's pixel.",
                                   rich_help_panel=PROBE),
    probe_pixel_a: float = typer.Option(None, "--probe-pixel-a", help="Pixel size [Å] of a --probe-from array "
                                        "(default: its dx_a attribute, else the data's).", rich_help_panel=PROBE),
    defocus_a: float = defocus_option(PROBE),
    aberration: list[str] = aberration_option(PROBE),
    calibration: Path = typer.Option(None, "--calibration", help="Calibration TOML (overrides the data store's).",
                                     rich_help_panel=PROBE),
    probe_modes: int = typer.Option(None, "--probe-modes", help="Incoherent probe modes P.", rich_help_panel=PROBE),
    mode_kind: str = typer.Option("hermite", "--mode-kind", help="hermite | defocus-spread (extra probe modes).",
                                  rich_help_panel=PROBE),
    positions: Path = typer.Option(None, "--positions", help="Positions file (J x 2, y x in Å; .csv or .npy).",
                                   rich_help_panel=OBJECT),
    scan_flip_y: bool = typer.Option(False, "--scan-flip-y", help="Raster runs towards -y.", rich_help_panel=OBJECT),
    scan_flip_x: bool = typer.Option(False, "--scan-flip-x", help="Raster runs towards -x.", rich_help_panel=OBJECT),
    scan_rotation_deg: str = typer.Option(None, "--scan-rotation-deg", help="Scan rotation [deg] against the "
                                          "detector (overrides the calibration's), or auto: the curl-free rotation "
                                          "of the patterns' centres of mass, within ±90° of the calibration's.",
                                          rich_help_panel=OBJECT),
    slices: int = typer.Option(None, "--slices", help="Object slices S.", rich_help_panel=OBJECT),
    slice_thickness_a: float = typer.Option(None, "--slice-thickness-a", help="Slice thickness [Å].",
                                            rich_help_panel=OBJECT),
    object_modes: int = typer.Option(1, "--object-modes", help="Object modes Q.", rich_help_panel=OBJECT),
    object_from: Path = typer.Option(None, "--object-from", help="Start from a state store's object, or a complex "
                                     "array (H, W), (S, H, W) or (Q, S, H, W) in FILE.npy/.npz/.h5/.mat[:name], "
                                     "centred on the scan and padded with vacuum.", rich_help_panel=OBJECT),
    object_pixel_a: float = typer.Option(None, "--object-pixel-a", help="Pixel size [Å] of an --object-from "
                                         "array (default: its dx_a attribute, else the data's).",
                                         rich_help_panel=OBJECT),
    upsample: int = typer.Option(None, "--upsample", help="Far-field upsampling U for a beam wider than the "
                                 "window: probe window U·M, U×U model pixels binned per detector pixel.",
                                 rich_help_panel=PROBE),
    subscans: str = typer.Option(None, "--subscans", help="Sub-scan label per position: FILE (.npy/.txt/.csv) or "
                                 "auto (the data store's 'subscan' array).", rich_help_panel=OBJECT),
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 3) on any sampling warning."),
    seed: int = Seed,
    overwrite: bool = Overwrite,
    as_json: bool = Json,
) -> None:
    """Initial probe, object and positions; prints the sampling diagnostics on stderr."""
    from ..stages import init as stage  # noqa: PLC0415  (keeps `ptycli --help` fast)

    options = dict(locals())
    for key in ("data", "out", "overwrite", "as_json", "stage"):
        options.pop(key)
    options["aberrations"] = options.pop("aberration") or None
    notes: list[dict[str, str]] = []

    def report(kind: str, message: str) -> None:
        notes.append({"kind": kind, "message": message})
        (warn if kind == "warning" else log)(message)

    path = stage.run(read_path_arg(data), out, overwrite=overwrite, report=report, **options)
    result({"output": str(path), "diagnostics": notes} if as_json else path, as_json)
