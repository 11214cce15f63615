"""``tune``: an Optuna study over recipe values and init-time physics, one trial at a time.

A trial = (init with the trial's physical values) + a short reconstruct with a held-out
validation split; the objective is the validation loss, or the truth error when the data
store carries ``truth/`` (from ``simulate``). Pruning (Hyperband by default) is fed each
iteration's validation loss. The study lives in storage that many processes may share:
embedded SQLite (``TUNE/study.db``) by default, or an RDB URL or Optuna journal file given
with ``storage``; each worker runs trials until the study holds ``trials`` of them. A lock
file in TUNE/ makes "count, then start a trial" atomic, so workers never overshoot.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import InputError, Interrupted, NumericalError, OutputExistsError, RecipeError, UsageError
from ..recipe import find_recipe, parse_toml
from . import tune_report, tune_space, tune_trial

DEFAULT_STUDY = "ptycli-tune"
LOCK_NAME = ".tune.lock"
Report = Callable[[str], None]


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise UsageError("ptycli tune needs Optuna: pip install 'ptycli[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_storage(spec: str | None, out: Path) -> Any:
    """SQLite in OUT by default; a URL with '://' is an RDB URL; anything else a journal file."""
    optuna_module()  # a clear error when Optuna is missing
    if not spec:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if "://" in spec:
        return spec
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(Path(spec).resolve())))


def make_sampler(name: str, seed: int) -> Any:
    optuna = optuna_module()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("--sampler gp needs PyTorch (Optuna's GPSampler); install torch or use tpe") from None
    return optuna.samplers.GPSampler(seed=seed)


def make_pruner(name: str, iterations: int) -> Any:
    optuna = optuna_module()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(iterations, 1), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def worker_id() -> int:
    """This worker's number: the SLURM array task or rank when there is one, else the PID."""
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) + 1
    return os.getpid()


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(data: str | Path, state: str | Path, out: str | Path, *, recipe: str | Path = "quick", space: str | Path,
        trials: int | None = None, sampler: str | None = None, pruner: str | None = None,
        objective: str | None = None, iterations: int | None = None, validation_fraction: float | None = None,
        storage: str | None = None, study_name: str = DEFAULT_STUDY, worker: bool = False, seed: int = 0,
        device: str = "auto", precision: str = "single", overwrite: bool = False,
        report: Report | None = None) -> dict[str, Any]:
    """Run (or join, with ``worker``) the study; returns the JSON summary."""
    optuna = optuna_module()
    out, say = Path(out), report or (lambda msg: None)
    source, text = find_recipe(recipe)
    recipe_data = parse_toml(text, source)
    sp = tune_space.load_space(space, recipe_data)
    flags = {"trials": trials, "sampler": sampler, "pruner": pruner, "objective": objective,
             "iterations": iterations, "validation_fraction": validation_fraction}
    st = sp.study.model_copy(update={k: v for k, v in flags.items() if v is not None})
    st = _checked_flags(st, flags)  # CLI values get the same checks
    _prepare_out(out, overwrite and not worker, [data, state, space, recipe])
    plan = _plan(data, state, out, recipe_data, st, sp, seed, device, precision)
    plan.progress = say
    n_iter = tune_trial.trial_recipe(plan, []).total_iterations
    worker_no = worker_id() if worker else 0
    with _lock(out / LOCK_NAME):
        study = optuna.create_study(study_name=study_name, storage=make_storage(storage, out), direction="minimize",
                                    sampler=make_sampler(st.sampler, _seed(seed, worker_no, 0)),
                                    pruner=make_pruner(st.pruner, n_iter), load_if_exists=True)
        if not worker:
            _fail_stale(study, optuna)
        done = len(study.get_trials(deepcopy=False))
    if done:  # a continued study: a fresh sampler with the same seed would re-propose its first points
        study.sampler = make_sampler(st.sampler, _seed(seed, worker_no, done))
    from ..engines.signals import SignalHandlers, StopFlag  # noqa: PLC0415

    # SIGTERM/SIGUSR1 (a SLURM time limit) and SIGINT stop the trial running at the end of a
    # group (reconstruct's own stop), mark it failed, write the reports and end with 75/130:
    # killed outright, a --worker study kept the trial RUNNING and counted it forever
    plan.stop_flag = StopFlag()
    with SignalHandlers(plan.stop_flag):
        try:
            ran = _optimize(study, sp, plan, st.trials, out, say, optuna)
        except Interrupted as exc:
            _finish(study, sp, plan, st, out, source, recipe_data, 0, storage)
            raise Interrupted(f"tune stopped by a signal; the trial it ran is marked failed; run the same "
                              f"command again to continue the study in {out}", resumable=exc.resumable) from None
    return _finish(study, sp, plan, st, out, source, recipe_data, ran, storage)


def _seed(seed: int, worker_no: int, done: int) -> int:
    """A sampler seed per (seed, worker, trials already in the study); mixed, not added, so
    e.g. consecutive PIDs with different trial counts cannot collide."""
    import numpy as np

    if worker_no == 0 and done == 0:
        return seed
    return int(np.random.SeedSequence([seed, worker_no, done]).generate_state(1)[0])


def _checked_flags(st: Any, flags: dict[str, Any]) -> Any:
    """The study with the command line's values, a bad one a usage error naming its flag."""
    from pydantic import ValidationError  # noqa: PLC0415

    try:
        return tune_space.Study.model_validate(st.model_dump())
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err.get("loc") else "?"
        flag = f"--{key.replace('_', '-')}" if flags.get(key) is not None else f"[study] {key}"
        raise UsageError(f"{flag}: {err['msg']} (got {err.get('input')!r})") from None


# What a study writes into its folder: --overwrite removes these and nothing else.
TUNE_OUTPUTS = ("trials", "study.db", "trials.csv", "best-recipe.toml", "history.png", "importance.png", LOCK_NAME)


def _prepare_out(out: Path, overwrite: bool, inputs: list[Any]) -> None:
    from ..store.io import check_not_input  # noqa: PLC0415

    check_not_input(out, inputs, replacing=overwrite)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory")
    # a study's folder holds its lock, database or trials (a worker starting beside another may
    # see only trials/); any other non-empty folder is someone else's: a study never moves in,
    # so --overwrite can never reach the user's own files
    if out.exists() and any(out.iterdir()) and not any((out / n).exists() for n in (LOCK_NAME, "study.db", "trials")):
        raise OutputExistsError(f"{out}: exists and is not a ptycli tune directory; not used "
                                "(choose a new or empty folder)")
    if overwrite and out.exists():
        for name in TUNE_OUTPUTS:  # the study's own files only
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    try:
        (out / "trials").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output directory: {exc.strerror or exc}") from None


def _plan(data: Any, state: Any, out: Path, recipe_data: dict, st: tune_space.Study, sp: tune_space.Space,
          seed: int, device: str, precision: str) -> tune_trial.TrialPlan:
    data, state = Path(data), Path(state)
    objective = st.objective
    if objective == "auto":
        objective = "truth" if tune_trial.has_truth(data) else "validation"
    elif objective == "truth" and not tune_trial.has_truth(data):
        raise RecipeError(f"objective truth: {data} has no truth/ (only `ptycli simulate` stores do)")
    plan = tune_trial.TrialPlan(data=data, state=state, root=out / "trials", recipe_data=recipe_data,
                                iterations=st.iterations, objective=objective,
                                validation_fraction=st.validation_fraction, seed=seed, device=device,
                                precision=precision)
    if sp.init_keys:
        plan.init_options = tune_trial.base_init_options(state)
    return plan


def _fail_stale(study: Any, optuna: Any) -> None:
    """A single-process study resumed after a crash: its RUNNING trials will never finish."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def _optimize(study: Any, sp: tune_space.Space, plan: tune_trial.TrialPlan, n_trials: int, out: Path,
              say: Report, optuna: Any) -> int:
    """Ask/run/tell until the study holds ``n_trials`` trials; returns how many this process ran."""
    ran = 0
    while True:
        if plan.stop_flag is not None and plan.stop_flag.requested:  # a signal between two trials
            raise Interrupted("tune stopped by a signal", resumable=plan.stop_flag.resumable)
        with _lock(out / LOCK_NAME):
            if len(study.get_trials(deepcopy=False)) >= n_trials:
                return ran
            trial = study.ask()
        params = tune_space.suggest(trial, sp)
        say(f"trial {trial.number}: started " + " ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
        state, value = _one(study, trial, plan, params, optuna)
        ran += 1
        shown = "" if value is None else f" value {value:.6g}"
        say(f"trial {trial.number}: {state}{shown} " + " ".join(f"{k}={_fmt(v)}" for k, v in params.items()))


def _one(study: Any, trial: Any, plan: tune_trial.TrialPlan, params: dict, optuna: Any) -> tuple[str, float | None]:
    TS = optuna.trial.TrialState
    try:
        value = tune_trial.run_trial(plan, trial, params)
    except optuna.TrialPruned as exc:
        trial.set_user_attr("pruned", str(exc))
        study.tell(trial, state=TS.PRUNED)
        return "pruned", None
    except NumericalError as exc:  # a diverging trial is information, not a reason to stop the study
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TS.FAIL)
        return "failed", None
    except BaseException:
        study.tell(trial, state=TS.FAIL)
        raise
    study.tell(trial, value)
    return "complete", value


def _fmt(v: Any) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def _finish(study: Any, sp: tune_space.Space, plan: tune_trial.TrialPlan, st: tune_space.Study, out: Path,
            source: str, recipe_data: dict, ran: int, storage: str | None) -> dict[str, Any]:
    rows = tune_report.trial_rows(study)
    tune_report.write_csv(out / "trials.csv", rows)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")}
    summary: dict[str, Any] = {
        "output": str(out), "study": study.study_name, "storage": storage or str(out / "study.db"),
        "objective": plan.objective if plan.objective == "validation" else f"truth ({tune_trial.TRUTH_METRIC})",
        "sampler": st.sampler, "pruner": st.pruner, "trials": len(rows), "ran_here": ran, **counts,
        "trials_csv": str(out / "trials.csv"), "table": rows}
    if counts["complete"]:
        best = study.best_trial
        doc = {"number": best.number, "value": best.value, "params": best.params,
               "state": str(plan.root / f"{best.number:04d}" / "state0.zarr") if sp.init_keys else str(plan.state),
               "reconstruction": str(plan.root / f"{best.number:04d}" / "recon.zarr")}
        text = tune_report.best_recipe_toml(recipe_data, doc, source)
        tune_report._atomic_write(out / "best-recipe.toml", lambda fh: fh.write(text))
        summary.update(best=doc, best_recipe=str(out / "best-recipe.toml"))
    summary["plots"], summary["warnings"] = tune_report.write_plots(study, out)
    return summary
