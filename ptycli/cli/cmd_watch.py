"""`ptycli watch OUT.zarr`: follow a running reconstruction (read-only, beside the job)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .options import Json
from .output import colour_ok, handle_errors, result


@app.command("watch")
@handle_errors
def watch(
    out: Path = typer.Argument(..., help="The -o store of a running `ptycli reconstruct`."),
    once: bool = typer.Option(False, "--once", help="Show the current state once and exit."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between polls."),
    timeout: float = typer.Option(0.0, "--timeout", help="Stop after this many seconds (0: until the job ends)."),
    as_json: bool = Json,
) -> None:
    """Iteration, loss sparkline, ETA and the object phase, refreshed as checkpoints land."""
    import shutil  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from ..stages.watch import watch as follow  # noqa: PLC0415

    cols, rows = shutil.get_terminal_size((80, 24))
    live = sys.stdout.isatty() and not as_json

    def emit(frame: str, _snap: dict) -> None:
        if not as_json:
            sys.stdout.write(("\x1b[H\x1b[2J" if live else "") + frame + "\n")
            sys.stdout.flush()

    snap = follow(out, emit, once=once, interval_s=interval, width=min(cols, 120),
                  height=max(rows - 4, 6), timeout_s=timeout or None, colour=colour_ok())
    if as_json:
        snap.pop("preview", None)
        result(snap, as_json=True)
