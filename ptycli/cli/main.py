"""The typer app: global flags, and the list of subcommands (one module each).

Nothing heavy is imported here: `ptycli --help` must start fast, so command modules
import their stage (and zarr, scipy, ...) inside the command body.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from .. import __version__
from .app import app
from .output import VERBOSITY

# Each module defines its command(s) on `app`; the order here is the order in --help.
COMMAND_MODULES = (
    "simulate", "preprocess", "init", "reconstruct", "constrain", "export",
    "inspect", "compare", "validate", "demo", "watch", "bench", "tune",
)

DEPENDENCIES = ("typer", "rich", "numpy", "scipy", "zarr", "numcodecs", "pydantic", "h5py",
                "tifffile", "matplotlib", "pyfftw", "cupy", "optuna", "mpi4py", "dask")


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


def _show_versions(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        typer.echo(f"ptycli {__version__}")
        typer.echo(f"python {sys.version.split()[0]}")
        for dep in DEPENDENCIES:
            try:
                typer.echo(f"{dep} {version(dep if dep != 'pyfftw' else 'pyFFTW')}")
            except PackageNotFoundError:
                typer.echo(f"{dep} (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, show_default=False,
                                 help="More log output (-vv: tracebacks); also after the subcommand."),
    quiet: int = typer.Option(0, "-q", "--quiet", count=True, show_default=False,
                               help="Less log output (-q: warnings only); also after the subcommand."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    show_versions: bool = typer.Option(False, "--show-versions", callback=_show_versions, is_eager=True,
                                       help="Print the versions of ptycli and its dependencies."),
    reuse_heap: bool = typer.Option(False, "--reuse-heap", help="glibc only: keep freed arrays on the heap "
                                    "for reuse (mallopt; faster CPU iterations: benchmarks/RESULTS.md); "
                                    "changes the process's allocator, so off unless asked."),
) -> None:
    """Electron ptychography from the command line: 4D-STEM data to phase images.

    Stages pass Zarr stores: simulate/preprocess -> init -> reconstruct -> export.
    """
    VERBOSITY["level"] = verbose - quiet
    if reuse_heap:
        from ..host_allocator import reuse_heap as tune  # noqa: PLC0415

        tune()
    if os.environ.get("NO_COLOR"):
        os.environ.setdefault("TERM", os.environ.get("TERM", "xterm"))


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"ptycli.cli.cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ptycli.cli.cmd_{name}":
                raise


_load_commands()


def run() -> None:
    """Console-script entry point."""
    app(prog_name="ptycli")


if __name__ == "__main__":
    run()
