"""`ptycli reconstruct DATA.zarr STATE.zarr -o OUT.zarr --recipe RECIPE`: run engines."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from pathlib import Path

import typer

from .app import app
from .options import (
    Device,
    Json,
    Output,
    Overwrite,
    Precision,
    ProgressOpt,
    Seed,
    positive,
    read_path_arg,
)
from .output import Progress, handle_errors, log, note_kernel_compile, result, warn

RUN = "Run control"


def shipped_names() -> str:
    """The shipped recipes' names, read from the package data so the help cannot go stale
    (without importing the recipe models: `--help` stays fast)."""
    from importlib import resources  # noqa: PLC0415

    names = sorted(f.name[:-5] for f in resources.files("ptycli.recipes_data").iterdir() if f.name.endswith(".toml"))
    return ", ".join(sorted(names, key=lambda n: n != "quick"))  # the default first


class ProgressObserver:
    """Loop observer -> one progress bar (or heartbeat lines) over all iterations."""

    def __init__(self, total: int, mode: str):
        self.bar = Progress(total, "reconstruct", mode)

    def on_run_start(self, done: int) -> None:
        self.bar.start_at(done)

    def on_iteration_end(self, stage: int, iteration: int, loss: float, time_s: float) -> None:
        self.bar.update(1, stage=stage, loss=loss, its=1.0 / max(time_s, 1e-9))

    def on_stage_stopped(self, stage: int, iteration: int, skipped: int, reason: str) -> None:
        # the bar counts the skipped iterations as done: its total stays the recipe's
        self.bar.update(skipped)
        log(f"stage {stage} ended at iteration {iteration}: {reason}")

    def on_backoff(self, stage: int, iteration: int, scale: float, reason: str) -> None:
        # the loop reports once per stage; every retry is in the output's history attrs
        warn(f"stage {stage} iteration {iteration}: {reason}; retrying the iteration with the steps x {scale:g}")


@app.command("reconstruct")
@handle_errors
def reconstruct(
    data: str = typer.Argument(..., help="Data store (or '-' to read its path from stdin)."),
    state: Path = typer.Argument(..., help="Starting state store (from `ptycli init`)."),
    out: Path = Output,
    recipe: str = typer.Option("quick", "--recipe", "-r", help="Recipe TOML file, or a shipped name "
                               f"({shipped_names()})."),
    set_: list[str] = typer.Option(None, "--set", help="Override one recipe value: stage.0.iterations=5 (repeatable)."),
    iterations: int = typer.Option(None, "--iterations", help="Total iterations; stages scale proportionally."),
    positions: str = typer.Option("all", "--positions", help="all | sub:N | center:NYxNX | FILE of indices."),
    group_size: str = typer.Option(None, "--group-size", metavar="auto|N", help="Positions per group for every "
                                   "stage: N, or 'auto' (the largest group that fits --memory-gb)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", min=0, rich_help_panel=RUN,
                                         help="Checkpoint every K iterations (0: on stop only)."),
    figures_every: int = typer.Option(0, "--figures-every", min=0, rich_help_panel=RUN,
                                      help="Write the summary figure OUT-stem.summary.png every K iterations "
                                      "(0: never)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of OUT.",
                                rich_help_panel=RUN),
    stream: bool = typer.Option(None, "--stream/--no-stream", rich_help_panel=RUN,
                                help="Read patterns per group (default: by memory budget)."),
    memory_gb: float = typer.Option(2.0, "--memory-gb", help="Memory budget for resident patterns and "
                                    "--group-size auto [GB].", callback=positive,
                                    rich_help_panel=RUN),
    validation_fraction: float = typer.Option(0.0, "--validation-fraction", help="Hold out this seeded share of "
                                              "positions from the updates; their loss is recorded each iteration.",
                                              rich_help_panel=RUN),
    early_stop_patience: int = typer.Option(0, "--early-stop-patience", help="End a stage when the validation loss "
                                            "has not improved for N iterations (0: never).", rich_help_panel=RUN),
    distributed: bool = typer.Option(False, "--distributed", help="Data-parallel over MPI ranks (run under "
                                     "mpiexec -n K or srun; needs the 'mpi' extra). Rank 0 writes.",
                                     rich_help_panel=RUN),
    device: str = Device, precision: str = Precision, seed: int = Seed,
    progress: str = ProgressOpt, overwrite: bool = Overwrite, as_json: bool = Json,
) -> None:
    """Reconstruct object, probe and positions; survives SIGTERM (exit 75) with --resume."""
    from ..stages import auto_recipe
    from ..stages import reconstruct as stage

    data_path = read_path_arg(data)
    rec = auto_recipe.load(recipe, data_path, state, list(set_ or []), iterations)  # `auto` reads both stores
    root = stage.is_root(distributed)  # progress and the result come from rank 0 only
    observer = ProgressObserver(rec.total_iterations, progress if root else "none")
    observers: list = [observer]
    if figures_every:
        from ..stages.figures import FiguresEvery, summary_path  # noqa: PLC0415

        observers.append(FiguresEvery(summary_path(out), figures_every, on_error=warn, title=f"{out} (running)"))
    if root:
        note_kernel_compile(device)
    with ranks_report_once(root, distributed, data), _closing(observer.bar):
        summary = stage.run(data_path, state, out, recipe=rec, device=device, precision=precision,
                            seed=seed, checkpoint_every=checkpoint_every, resume=resume, stream=stream,
                            memory_budget_bytes=int(memory_gb * 2**30), positions=positions,
                            overwrite=overwrite, observers=observers, validation_fraction=validation_fraction,
                            early_stop_patience=early_stop_patience, distributed_run=distributed,
                            group_size=group_size)
    if root:
        result(summary if as_json else summary["output"], as_json)


@contextlib.contextmanager
def _closing(bar: Progress) -> Iterator[None]:
    try:
        yield
    finally:
        bar.close()


@contextlib.contextmanager
def ranks_report_once(root: bool, distributed: bool, data: str) -> Iterator[None]:
    """Under MPI every rank raises the same library error: rank 0 alone prints it. An
    unexpected error on one rank ends the whole job (the others would wait forever)."""
    from ..errors import ExitCode, PtycliError, UsageError

    try:
        if distributed and data == "-":
            raise UsageError("--distributed: give DATA as a path; '-' (stdin) reaches rank 0 only")
        yield
    except PtycliError as exc:
        if root or not distributed:
            raise
        raise typer.Exit(int(exc.exit_code)) from None
    except Exception:
        if distributed:
            from ..stages import reconstruct as stage

            traceback.print_exc()
            stage.abort_job(distributed, int(ExitCode.INTERNAL))
        raise
