"""`ptycli tune DATA.zarr STATE.zarr --recipe R.toml --space SPACE.toml -o TUNE/`: Optuna search."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .options import Device, Json, Overwrite, Precision, Seed
from .output import handle_errors, log, note_kernel_compile, result, warn

STUDY = "Study (flags win over SPACE.toml [study])"


@app.command("tune")
@handle_errors
def tune(
    data: Path = typer.Argument(..., help="Data store."),
    state: Path = typer.Argument(..., help="Starting state store (from `ptycli init`)."),
    out: Path = typer.Option(..., "-o", "--output", help="Output directory (study.db, trials/, best-recipe.toml)."),
    recipe: str = typer.Option("quick", "--recipe", "-r", help="Recipe TOML file or shipped name."),
    space: Path = typer.Option(..., "--space", help="Search space TOML ([param.\"KEY\"] low/high/log/type/choices)."),
    trials: int = typer.Option(None, "--trials", help="Total trials in the study.", rich_help_panel=STUDY),
    sampler: str = typer.Option(None, "--sampler", help="tpe (default) | gp | random.", rich_help_panel=STUDY),
    pruner: str = typer.Option(None, "--pruner", help="hyperband (default) | median | none.", rich_help_panel=STUDY),
    objective: str = typer.Option(None, "--objective", help="auto | validation | truth.", rich_help_panel=STUDY),
    iterations: int = typer.Option(None, "--iterations", help="Iterations per trial (recipe scaled).",
                                   rich_help_panel=STUDY),
    validation_fraction: float = typer.Option(None, "--validation-fraction", help="Held-out share of positions.",
                                              rich_help_panel=STUDY),
    storage: str = typer.Option(None, "--storage", help="RDB URL (sqlite:///..., postgresql://...) or an Optuna "
                                "journal file path; default TUNE/study.db.", rich_help_panel=STUDY),
    study_name: str = typer.Option("ptycli-tune", "--study-name", help="Study name in the storage.",
                                   rich_help_panel=STUDY),
    worker: bool = typer.Option(False, "--worker", help="Join a shared study as one of many workers (SLURM array).",
                                rich_help_panel=STUDY),
    device: str = Device, precision: str = Precision, seed: int = Seed,
    overwrite: bool = Overwrite, as_json: bool = Json,
) -> None:
    """Search recipe and init parameters with Optuna; writes the best recipe, trials table and plots."""
    from ..stages import tune as stage

    note_kernel_compile(device)
    summary = stage.run(data, state, out, recipe=recipe, space=space, trials=trials, sampler=sampler, pruner=pruner,
                        objective=objective, iterations=iterations, validation_fraction=validation_fraction,
                        storage=storage, study_name=study_name, worker=worker, seed=seed, device=device,
                        precision=precision, overwrite=overwrite, report=log)
    _print_table(summary["table"])
    for w in summary["warnings"]:
        warn(w)
    result(summary if as_json else summary.get("best_recipe", summary["output"]), as_json)


def _print_table(rows: list[dict]) -> None:
    """The trials table on stderr (stdout keeps only the result)."""
    from rich.table import Table

    from .output import table_console

    if not rows:
        return
    # The CSV has every column; the terminal gets the ones that fit: outcome and parameters.
    columns = ["number", "state", "value", "duration_s"]
    for r in rows:
        columns += [c for c in r if c.startswith("param:") and c not in columns]
    table = Table(title="trials (all columns in trials.csv)")
    for c in columns:
        table.add_column(c.removeprefix("param:"))
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in columns))
    table_console(stderr=True).print(table)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.5g}" if isinstance(value, float) else str(value)
