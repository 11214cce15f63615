"""`ptycli demo OUTDIR`: the whole pipeline on built-in data, printing each command.

The demo runs the real subcommands in-process with the same arguments a user would type,
so the printed pipeline can be copied into a shell script or a Makefile verbatim.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import typer

from ..errors import ExitCode
from .app import app
from .options import Json, Overwrite
from .output import handle_errors, log, result


def pipeline(out: Path, recipe: str, seed: int) -> list[list[str]]:
    """The demo's commands: simulate -> preprocess -> init -> reconstruct -> export -> compare."""
    o = str(out)
    return [
        ["simulate", f"{o}/sim.zarr", "--preset", "demo", "--seed", str(seed)],
        ["preprocess", f"{o}/sim.zarr", "-o", f"{o}/data.zarr"],
        ["init", f"{o}/data.zarr", "-o", f"{o}/state0.zarr"],
        ["reconstruct", f"{o}/data.zarr", f"{o}/state0.zarr", "-o", f"{o}/recon.zarr",
         "--recipe", recipe, "--seed", str(seed)],
        ["export", f"{o}/recon.zarr", "-o", f"{o}/phase.png", "--what", "object-phase", "--crop", "scanned"],
        ["export", f"{o}/recon.zarr", "-o", f"{o}/phase.tif", "--what", "object-phase"],
        ["compare", f"{o}/recon.zarr", f"{o}/sim.zarr", "--json"],
    ]


def _run(args: list[str], overwrite: bool) -> str:
    """Run one subcommand in-process; return what it printed on stdout."""
    if overwrite and args[0] not in ("compare",):
        args = [*args, "--overwrite"]
    log("$ ptycli " + shlex.join(args))
    real_stdout, captured = sys.stdout, _Capture()
    sys.stdout = captured
    try:
        code = app(args, prog_name="ptycli", standalone_mode=False)
    finally:
        sys.stdout = real_stdout
    if code not in (None, 0):  # the step printed its own one-line error; keep its exit code
        raise typer.Exit(int(code))
    return captured.text


class _Capture:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.parts)


@app.command("demo")
@handle_errors
def demo(
    outdir: Path = typer.Argument(Path("ptycli-demo"), help="Folder for the demo's stores and pictures."),
    recipe: str = typer.Option("quick", "--recipe", help="Recipe name or file for the reconstruct step."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the simulation and reconstruction."),
    overwrite: bool = Overwrite,
    as_json: bool = Json,
) -> None:
    """Run the demo pipeline (simulate -> preprocess -> init -> reconstruct -> export)."""
    outdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    outputs = [_run(step, overwrite) for step in pipeline(outdir, recipe, seed)]
    metrics = json.loads(outputs[-1])
    corr = metrics.get("correlation", metrics.get("object", {}).get("correlation"))
    summary = {"png": str(outdir / "phase.png"), "tif": str(outdir / "phase.tif"),
               "correlation_with_truth": corr, "elapsed_s": round(time.monotonic() - t0, 1)}
    log(f"phase correlation with the truth: {corr:.4f}; picture: {summary['png']} "
        f"({summary['elapsed_s']} s)" if isinstance(corr, float) else f"picture: {summary['png']}")
    result(summary if as_json else summary["png"], as_json)
    if not isinstance(corr, float):
        raise typer.Exit(int(ExitCode.INTERNAL))
