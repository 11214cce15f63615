"""One trial of ``ptycli tune``: (init with the trial's physical values) -> reconstruct -> score.

Init-time values (defocus, aberrations, slices, thickness, probe modes, scan step and
rotation) re-run ``init`` for the trial into ``TUNE/trials/NNNN/state0.zarr``, starting
from the options the given STATE store was made with, so everything not searched stays as
the user set it. Recipe values become ``--set`` overrides. The per-iteration validation
loss is reported to Optuna, whose pruner may stop the trial early.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..recipe import apply_override, scale_iterations, validate
from . import tune_space

TRUTH_METRIC = "1 - correlation of the object phase with the truth"


@dataclass
class TrialPlan:
    """Everything a trial needs that does not change between trials."""

    data: Path
    state: Path
    root: Path  # TUNE/trials
    recipe_data: dict[str, Any]  # the recipe as read (before scaling)
    iterations: int | None
    objective: str  # "validation" | "truth"
    validation_fraction: float
    seed: int
    device: str
    precision: str
    init_options: Any = None  # InitOptions of STATE (only when init keys are searched)
    progress: Any = None  # (message) -> None: a trial's iterations, every PROGRESS_EVERY_S at most
    stop_flag: Any = None  # engines.signals.StopFlag set by tune's SIGTERM/SIGUSR1/SIGINT handlers


def base_init_options(state: Path) -> Any:
    """The InitOptions that made ``state`` (init keys need a state written by ``init``)."""
    from ..store.io import open_store
    from .init import InitOptions

    meta = dict(open_store(state, "state").attrs.get("ptycli") or {})
    if meta.get("stage") != "init":
        raise InputError(f"{state}: written by {meta.get('stage')!r}, not init; searching init keys "
                         "(defocus, slices, ...) needs the state store from `ptycli init`")
    return InitOptions.model_validate(meta.get("options") or {})


def trial_init_options(base: Any, values: dict[str, float], trial_dir: Path) -> Any:
    """``base`` with the trial's init values (angles deg -> rad; scan keys via a calibration file)."""
    from .preprocess_calibration import read_toml

    upd: dict[str, Any] = {}
    aberrations = dict(base.aberrations)
    for key, value in values.items():
        if key == "defocus_a":
            upd["defocus_a"] = float(value)
            aberrations.pop("C10", None)  # an explicit C10 would win over --defocus-a
        elif key.startswith("phi"):
            aberrations[key] = math.radians(float(value))
        elif key in tune_space.ABERRATION_KEYS:
            aberrations[key] = float(value)
            if key == "C10":
                upd["defocus_a"] = None
        elif key in tune_space.INIT_KEYS - tune_space.CALIBRATION_KEYS:
            upd[key] = int(value) if key in tune_space.INT_KEYS else float(value)
    upd["aberrations"] = aberrations
    if "slice_thickness_a" not in values and "slices" in values and base.slice_thickness_a is None:
        raise InputError("searching slices needs slice_thickness_a (in init or in the space)")
    scan = {k: float(v) for k, v in values.items() if k in tune_space.CALIBRATION_KEYS}
    if scan:
        cal = read_toml(base.calibration) if base.calibration else {}
        cal.update(scan)
        path = trial_dir / "calibration.toml"
        path.write_text("".join(f"{k} = {tune_space.toml_value(v)}\n" for k, v in cal.items()))
        upd["calibration"] = path
    return base.model_copy(update=upd)


def trial_recipe(plan: TrialPlan, overrides: list[str]) -> Any:
    """The base recipe scaled to the per-trial iterations, then the trial's overrides."""
    rec = validate(plan.recipe_data, "recipe")
    if plan.iterations is not None:
        rec = scale_iterations(rec, plan.iterations)
    data = rec.model_dump(mode="json", exclude_none=True)
    for item in overrides:
        data = apply_override(data, item)
    return validate(data, "recipe")


class ReportToTrial:
    """Loop observer: each validation loss is an intermediate value; prune on request."""

    def __init__(self, trial: Any):
        self.trial, self.step = trial, 0

    def on_validation_end(self, stage: int, iteration: int, value: float) -> None:
        import optuna

        self.trial.report(value, self.step)
        self.step += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at iteration {self.step} (validation loss {value:.6g})")


PROGRESS_EVERY_S = 10.0


class TrialProgress:
    """Loop observer: "trial N: iteration i/n, loss L" at most every PROGRESS_EVERY_S, and
    at the first and last iteration; a first trial that also compiles the kernels ran for
    minutes with nothing on the screen."""

    def __init__(self, say: Any, number: int, total: int, clock: Any = None):
        import time  # noqa: PLC0415

        self.say, self.number, self.total, self.done = say, number, total, 0
        self.clock = clock or time.monotonic
        self.last = -float("inf")

    def on_iteration_end(self, stage: int, iteration: int, loss: float, time_s: float) -> None:
        self.done += 1
        now = self.clock()
        if self.done in (1, self.total) or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.say(f"trial {self.number}: iteration {self.done}/{self.total}, loss {loss:.6g}")


def run_trial(plan: TrialPlan, trial: Any, params: dict[str, Any]) -> float:
    """Run one trial; returns the objective (lower is better)."""
    from . import init as init_stage
    from . import reconstruct

    trial_dir = plan.root / f"{trial.number:04d}"
    if trial_dir.exists():  # a trial number is never reused; leftovers come from --overwrite races
        shutil.rmtree(trial_dir)
    trial_dir.mkdir(parents=True)
    overrides, init_values = tune_space.split_params(params)
    state = plan.state
    if init_values:
        opts = trial_init_options(plan.init_options, init_values, trial_dir)
        state = init_stage.run(plan.data, trial_dir / "state0.zarr", options=opts)
    rec = trial_recipe(plan, overrides)
    out = trial_dir / "recon.zarr"
    try:
        summary = reconstruct.run(plan.data, state, out, recipe=rec, device=plan.device, precision=plan.precision,
                                  seed=plan.seed, validation_fraction=plan.validation_fraction,
                                  observers=[ReportToTrial(trial), *_progress(plan, trial, rec)],
                                  handle_signals=False,
                                  stop_flag=plan.stop_flag)
    finally:
        shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    trial.set_user_attr("validation_loss", summary.get("final_validation_loss"))
    trial.set_user_attr("final_loss", summary.get("final_loss"))
    if plan.objective == "truth":
        from .compare import compare_stores

        metrics = compare_stores(out)
        trial.set_user_attr("truth_correlation", metrics["correlation"])
        trial.set_user_attr("truth_rmse_rad", metrics["rmse"])
        return 1.0 - float(metrics["correlation"])
    return float(summary["final_validation_loss"])


def has_truth(data: Path) -> bool:
    from .compare import _find_truth

    return _find_truth(Path(data)) is not None


def _progress(plan: TrialPlan, trial: Any, rec: Any) -> list[Any]:
    return [] if plan.progress is None else [TrialProgress(plan.progress, trial.number, rec.total_iterations)]
