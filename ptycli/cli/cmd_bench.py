"""`ptycli bench fft`: the FFT throughput R_FFT that bounds every iteration (physics.md §9)."""

from __future__ import annotations

import typer

from .app import app
from .options import Json, Precision
from .output import console, handle_errors, result

bench_app = typer.Typer(help="Measure this machine: FFT throughput (the FFT-bound limit).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

Library = typer.Option(None, "--library", help="numpy|scipy|pyfftw|pyfftw-planes|backend (repeatable; default: all installed).")


@bench_app.command("fft")
@handle_errors
def fft(
    size: int = typer.Option(128, "--size", min=1, help="Pattern size M (M x M complex FFTs)."),
    batch: int = typer.Option(64, "--batch", min=1, help="FFTs per batched call (the group size x modes)."),
    precision: str = Precision,
    device: str = typer.Option("cpu", "--device", help="cpu|cuda|cuda:N|auto."),
    library: list[str] = Library,
    min_time_s: float = typer.Option(0.2, "--min-time-s", min=0.0, help="Seconds per timed repeat (5 repeats, best kept)."),
    as_json: bool = Json,
) -> None:
    """Batched M x M 2D FFTs per second for every available FFT library; prints the fastest rate.

    Lower bound on an iteration: T >= J * N_FFT / R_FFT (physics.md §9).
    """
    # Imported here so `ptycli --help` never loads scipy or pyfftw.
    from ..stages.bench import run_fft

    report = run_fft(size, batch, precision, device, list(library or []) or None, min_time_s)
    if not as_json:
        out = console()
        for lib, rate in sorted(report["rates_per_s"].items(), key=lambda kv: -kv[1]):
            out.print(f"{lib:>8}  {rate:12.4g} FFT/s  ({size}x{size}, batch {batch}, {precision})", markup=False)
        out.print(f"fastest: {report['fastest']}", markup=False)
    result(report if as_json else report["rate_per_s"], as_json)
