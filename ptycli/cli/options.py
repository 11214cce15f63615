"""Options shared by several commands, defined once so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path

import typer

OUTPUT_PANEL = "Output"
PROGRESS_MODES = ("auto", "bar", "lines", "none")
PRECISIONS = ("single", "double")


def one_of(*choices: str):
    """A callback refusing any other value as a usage error (exit 2), naming the choices."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r}: expected one of {'|'.join(choices)}")
        return value

    check.choices = choices  # type: ignore[attr-defined]  # read by the shell completions
    return check


def positive(value: float | None) -> float | None:
    """A callback for amounts that must be > 0 (and finite)."""
    import math  # noqa: PLC0415

    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value:g}: expected a number > 0")
    return value


Output = typer.Option(..., "-o", "--output", help="Output store or file (written atomically).",
                      rich_help_panel=OUTPUT_PANEL)
Overwrite = typer.Option(False, "--overwrite", help="Replace an existing output.", rich_help_panel=OUTPUT_PANEL)
Json = typer.Option(False, "--json", help="Print one JSON document on stdout instead of the path.",
                    rich_help_panel=OUTPUT_PANEL)
ProgressOpt = typer.Option("auto", "--progress", help="auto|bar|lines|none (lines: heartbeat log lines).",
                           callback=one_of(*PROGRESS_MODES), rich_help_panel=OUTPUT_PANEL)
Device = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N.")
Precision = typer.Option("single", "--precision", help="single (float32, default) or double.",
                         callback=one_of(*PRECISIONS))
Seed = typer.Option(0, "--seed", help="Random seed (runs are deterministic for a seed).")


def defocus_option(panel: str):
    """``--defocus-a`` with abTEM's sign, shared by simulate and init."""
    return typer.Option(None, "--defocus-a", help="Defocus [Å], positive = underfocus (C10 = -defocus).",
                        rich_help_panel=panel)


def aberration_option(panel: str):
    """Repeatable ``--aberration`` in Krivanek notation, shared by simulate and init."""
    return typer.Option(None, "--aberration", help="Krivanek term, e.g. C30=1e4 or C12=20@30deg "
                        "(Å, angle in deg; repeatable).", rich_help_panel=panel)


def read_path_arg(value: str) -> Path:
    """An input given as '-' is read as one path from stdin, so stages pipe."""
    import sys  # noqa: PLC0415

    if value == "-":
        line = sys.stdin.readline().strip()
        if not line:
            from ..errors import UsageError  # noqa: PLC0415

            raise UsageError("input '-' given but stdin had no path")
        return Path(line)
    return Path(value)
