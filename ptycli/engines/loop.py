"""The one engine loop: stages, iterations, groups, schedules, constraints, observers.

An engine only says how one group of positions updates the state (``update``). The loop
owns everything around it: seeded grouping, which variables are refined when, position
limits and drift removal, constraints, NaN/divergence checks, observer events, and the
cursor (stage, iteration, group, RNG state) that makes checkpoints resume exactly.

Data-parallel (``RunHooks.comm`` an MPI communicator, engines/distributed.py): every rank
runs this loop with the same seeded groups and hands the engine only its spatially
compact part of each group; the engine all-reduces its sums, the loop shares the refined
positions and makes every stop decision collective, so all ranks keep one identical state.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import backend
from ..errors import Interrupted, NumericalError
from . import backoff, distributed, grouping
from . import positions as pos_mod

DIVERGENCE_FACTOR = 1e3  # a loss this many times the stage's first loss (iteration 0: its first groups') diverged
# Iteration 0's baseline spans at least this many positions (and 5 % of the scan): one
# position's starting loss varied 345x across the demo scan (59 to 20524), so a single
# group of sequential ePIE could make a healthy first iteration look diverged.
BASELINE_POSITIONS = 64


@dataclass
class Cursor:
    """Where a run is: the next group to process, and the RNG state at its iteration's start."""

    stage: int = 0
    iteration: int = 0  # within the stage
    group: int = 0
    rng_state: str | None = None  # JSON of numpy's bit-generator state at iteration start
    loss_partial: float = 0.0  # loss summed over the groups already done in this iteration

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class History:
    loss: list[float] = field(default_factory=list)
    stage: list[int] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    convergence: list[dict[str, Any]] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)  # per iteration, when a split is held out
    early_stop: list[dict[str, Any]] = field(default_factory=list)  # one record per stage stopped early
    # one record per retry with smaller steps (engines/backoff.py): stage, iteration, scale, reason
    backoff: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunHooks:
    """What the stage plugs in: data access, engines, constraints, checkpoints, stop flag."""

    read_batch: Callable[[np.ndarray, Any], Any]  # (indices, stage) -> device data
    make_engine: Callable[[Any, Any], Any]  # (stage params, state) -> engine
    apply_constraints: Callable[[Any, Any, int], Any]  # (state, stage, iteration) -> state
    checkpoint: Callable[..., None] | None = None  # (state, engine, cursor, history, extra)
    stop: Any = None  # signals.StopFlag
    observers: list[Any] = field(default_factory=list)
    checkpoint_every: int = 0  # iterations (global); 0 = only on stop
    validation: Callable[[Any, Any], float] | None = None  # (state, stage) -> held-out loss per position
    early_stop_patience: int = 0  # stop a stage after this many iterations without a better validation loss
    comm: Any = distributed.SERIAL  # data-parallel communicator (engines/distributed.py)
    # (indices, stage) -> None: start reading a group's data in the background while the
    # current group computes; results do not depend on it (it only moves the reading earlier)
    prefetch: Callable[[np.ndarray, Any], None] | None = None
    # (indices, stage) -> the data as read_batch's, or as data.Rows of a resident set, for
    # engines whose kernels read the frames in place (``reads_rows``): no gathered copy
    read_rows: Callable[[np.ndarray, Any], Any] | None = None


def emit(observers: list[Any], event: str, *args: Any) -> None:
    for obs in observers:
        fn = getattr(obs, event, None)
        if fn is not None:
            fn(*args)


def run(recipe: Any, state: Any, subset: np.ndarray, seed: int, hooks: RunHooks,
        cursor: Cursor | None = None, history: History | None = None,
        engine_state: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> tuple[Any, History]:
    """Run every stage of ``recipe`` from ``cursor`` on the positions ``subset``."""
    cursor = cursor or Cursor()
    history = history or History()
    extra = extra if extra is not None else {}
    rng = grouping_rng(seed, cursor)
    # iterations already done (a resumed run's): progress counts on from there, not from 0
    emit(hooks.observers, "on_run_start", len(history.loss))
    for si in range(cursor.stage, len(recipe.stage)):
        stage = recipe.stage[si]
        # a resumed stage that had backed off makes the same smaller steps (backoff.py)
        engine = hooks.make_engine(backoff.scaled_stage(stage, backoff.stage_scale(history.backoff, si)), state)
        if engine_state and si == cursor.stage:
            engine.load_state_dict(engine_state)
        emit(hooks.observers, "on_stage_start", si, stage)
        state = _run_stage(si, stage, engine, state, subset, rng, hooks, cursor, history, extra)
        cursor = Cursor(stage=si + 1)
    return state, history


def grouping_rng(seed: int, cursor: Cursor) -> np.random.Generator:
    rng = backend.host_rng(seed)
    if cursor.rng_state is not None:
        rng.bit_generator.state = json.loads(cursor.rng_state)
    return rng


def _run_stage(si: int, stage: Any, engine: Any, state: Any, subset: np.ndarray, rng: np.random.Generator,
               hooks: RunHooks, cursor: Cursor, history: History, extra: dict[str, Any]) -> Any:
    reference = np.asarray(state.positions_initial)[subset]
    order = subset[grouping.curve_order(reference)]
    comm = hooks.comm
    place = distributed.curve_rank(order, len(state.positions_initial))
    first_loss = _first_stage_loss(history, si)
    # iteration 0's baseline while first_loss is None: the mean loss of the stage's first
    # groups over at least BASELINE_POSITIONS positions (see there)
    # (at most a quarter of the positions: on a small scan the baseline must not become the
    # whole iteration's mean, which a diverging iteration 0 would carry with it)
    base = _Baseline(max(1, min(max(BASELINE_POSITIONS, math.ceil(0.05 * len(subset))), len(subset) // 4)),
                     active=first_loss is None)
    read = hooks.read_rows if hooks.read_rows is not None and getattr(engine, "reads_rows", False) else hooks.read_batch
    scale = backoff.stage_scale(history.backoff, si)
    logged = any(rec.get("stage") == si for rec in history.backoff)
    for it in range(cursor.iteration if cursor.stage == si else 0, stage.iterations):
        # Checked before the iteration (not after) so a run resumed from a checkpoint taken
        # at the stopping iteration stops at the same place and records it once.
        if _early_stop(history, si, it, hooks.early_stop_patience) or _converged(history, si, it, stage):
            why = next((r["reason"] for r in history.early_stop if r.get("stage") == si), "")
            emit(hooks.observers, "on_stage_stopped", si, it, stage.iterations - it, why)
            break
        resuming = cursor.stage == si and cursor.iteration == it and cursor.rng_state is not None
        if resuming:
            rng.bit_generator.state = json.loads(cursor.rng_state)
        start_group = cursor.group if resuming else 0
        loss_sum = cursor.loss_partial if resuming else 0.0
        rng_json = json.dumps(rng.bit_generator.state)
        if start_group == 0 or "positions_iter_start" not in extra:
            extra["positions_iter_start"] = np.array(state.positions, copy=True)
        if start_group == 0 or "last_good" not in extra:
            extra["last_good"] = _snapshot(state)
        emit(hooks.observers, "on_iteration_start", si, it)
        t0 = time.perf_counter()
        for retry in range(backoff.MAX_RETRIES + 1):
            groups = grouping.make_groups(stage.grouping.kind, order, stage.grouping.size, rng)
            distributed.check_split(groups, comm, si, stage.type)
            # NaN/inf are this loop's to handle (back-off, then exit 6): NumPy's overflow/invalid
            # warnings on the way to them only put noise on stderr (issue 22: none may reach it)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                loss_sum, finite = _run_groups(si, it, stage, engine, state, groups, start_group, loss_sum,
                                               rng_json, place, read, order, rng, hooks, history, extra, base)
                base.close()
                if finite:
                    state = _end_iteration(state, engine, stage, it, subset, hooks)
            loss = loss_sum / len(subset) if finite else math.nan
            best = _best_stage_loss(history, si)
            why = backoff.verdict(loss, first_loss if first_loss is not None else base.value, best,
                                  DIVERGENCE_FACTOR)
            if why is None or retry == backoff.MAX_RETRIES:
                break
            # back off: the state from before the iteration, every step of the stage scaled,
            # the same groups again (the grouping RNG back at the iteration's start)
            _restore(state, extra["last_good"])
            extra["positions_iter_start"] = np.array(state.positions, copy=True)
            rng.bit_generator.state = json.loads(rng_json)
            scale *= backoff.FACTOR
            history.backoff.append({"stage": si, "iteration": it, "scale": scale, "reason": why})
            if not logged:  # once per stage: the record lists every retry
                emit(hooks.observers, "on_backoff", si, it, scale, why)
                logged = True
            engine = hooks.make_engine(backoff.scaled_stage(stage, scale), state)
            start_group, loss_sum = 0, 0.0
        if why is not None and backoff.fatal(why):
            _fail(why, state, engine, Cursor(si, it, 0, rng_json), history, hooks, extra)
        state.iteration += 1
        first_loss = first_loss if first_loss is not None else loss
        history.loss.append(loss)
        history.stage.append(si)
        history.time_s.append(time.perf_counter() - t0)
        emit(hooks.observers, "on_iteration_end", si, it, loss, history.time_s[-1])
        if hooks.validation is not None:
            history.validation_loss.append(float(hooks.validation(state, stage)))
            emit(hooks.observers, "on_validation_end", si, it, history.validation_loss[-1])
        emit(hooks.observers, "on_state", state, history)  # the iteration's result (reconstruct --figures-every)
        nxt = Cursor(si, it + 1, 0, json.dumps(rng.bit_generator.state))
        if hooks.checkpoint and hooks.checkpoint_every and len(history.loss) % hooks.checkpoint_every == 0:
            hooks.checkpoint(state, engine, nxt, history, extra)
        if _synced_stop(state, None, hooks, comm):
            _stop(state, engine, nxt, history, hooks, extra)
    return state


@dataclass
class _Baseline:
    """Iteration 0's divergence baseline: the mean loss of the stage's first groups over at
    least ``need`` positions (a group's loss is its model before its update, so the first
    groups' are near the starting state's; an iteration 0 that diverged was its own
    baseline and the check never fired)."""

    need: int
    active: bool  # only while the stage has no first iteration loss
    total: float = 0.0
    count: int = 0
    value: float | None = None

    def add(self, loss_so_far: Any, positions: int) -> None:
        if self.active and self.value is None:
            self.total, self.count = backend.scalar(loss_so_far), self.count + positions
            if self.count >= self.need:
                self.value = self.total / self.count

    def close(self) -> None:
        if self.active and self.value is None and self.count:
            self.value = self.total / self.count


def _run_groups(si: int, it: int, stage: Any, engine: Any, state: Any, groups: list[np.ndarray], start_group: int,
                loss_sum: float, rng_json: str, place: Any, read: Callable[..., Any], order: np.ndarray,
                rng: np.random.Generator, hooks: RunHooks, history: History, extra: dict[str, Any],
                base: _Baseline) -> tuple[float, bool]:
    """One pass over ``groups`` from ``start_group``: (the iteration's summed loss, whether
    it stayed finite). A group whose loss is already a host number and not finite ends the
    pass at once (the rest would only spread the NaN); a device loss is checked at the end."""
    comm = hooks.comm
    loss_dev = 0.0
    moving = stage.refine.positions.active(it)
    for gi in range(start_group, len(groups)):
        mine = distributed.local_part(groups[gi], place, comm)
        data = read(mine, stage)
        if hooks.prefetch is not None:
            nxt_group = _next_group(groups, gi, stage, it, order, rng)
            if nxt_group is not None:
                hooks.prefetch(distributed.local_part(nxt_group, place, comm), stage)  # this rank's share
        group_loss = engine.update(state, mine, data, it)
        if isinstance(group_loss, (float, np.floating, np.ndarray)) and not np.all(np.isfinite(group_loss)):
            return math.nan, False
        loss_dev = loss_dev + group_loss
        base.add(loss_dev, len(mine))
        stop = _synced_stop(state, mine, hooks, comm)
        if moving:  # positions only move when refined (sequential ePIE: one call per position saved)
            pos_mod.limit_step(state, groups[gi], extra["positions_iter_start"], stage.positions.max_step_px)
        emit(hooks.observers, "on_batch_end", si, it, gi, len(groups))
        if stop and gi + 1 < len(groups):
            loss_sum += backend.scalar(loss_dev)
            _stop(state, engine, Cursor(si, it, gi + 1, rng_json, loss_sum), history, hooks, extra)
    loss_sum += backend.scalar(loss_dev)
    return loss_sum, math.isfinite(loss_sum)


def _best_stage_loss(history: History, si: int) -> float | None:
    values = [loss for s, loss in zip(history.stage, history.loss) if s == si]
    return min(values) if values else None


def _next_group(groups: list[np.ndarray], gi: int, stage: Any, it: int, order: np.ndarray,
                rng: np.random.Generator) -> np.ndarray | None:
    """The group read after group ``gi``: the next of this iteration, else the first of the
    next iteration of this stage, drawn from a copy of the grouping RNG (whose state is
    already the one that iteration starts from), so the real RNG does not move."""
    if gi + 1 < len(groups):
        return groups[gi + 1]
    if it + 1 >= stage.iterations:
        return None  # the next stage may group differently; its first read is synchronous
    peek = np.random.Generator(type(rng.bit_generator)())
    peek.bit_generator.state = rng.bit_generator.state
    return grouping.make_groups(stage.grouping.kind, order, stage.grouping.size, peek)[0]


def _synced_stop(state: Any, mine: np.ndarray | None, hooks: RunHooks, comm: Any) -> bool:
    """Share this rank's refined positions (``mine``) and decide a stop together: a signal
    seen by any rank stops all of them at the same group, so their checkpoints agree."""
    signum = hooks.stop.signum if hooks.stop is not None else None
    if comm.size > 1:
        idx = mine if mine is not None else np.zeros(0, dtype=np.int64)
        signum = distributed.sync_positions(state, idx, comm, signum)
        if signum is not None and hooks.stop is not None and not hooks.stop.requested:
            hooks.stop.set(signum)
    return signum is not None


def _end_iteration(state: Any, engine: Any, stage: Any, it: int, subset: np.ndarray, hooks: RunHooks) -> Any:
    end = getattr(engine, "end_iteration", None)
    if end is not None:
        end(state, it)
    if stage.refine.positions.active(it) and stage.positions.remove_drift:
        pos_mod.remove_drift(state, subset)
    return hooks.apply_constraints(state, stage, it)


def _early_stop(history: History, si: int, it: int, patience: int) -> bool:
    """True (and recorded once) when stage ``si``'s validation loss has not improved for
    ``patience`` iterations; decided from the history alone, so resume stays exact."""
    if patience <= 0 or not history.validation_loss:
        return False
    values = _of_stage(history, history.validation_loss, si)
    if len(values) <= patience:
        return False
    best = int(np.argmin(values))
    if len(values) - 1 - best < patience:
        return False
    _record_stop(history, si, it, best_iteration=best, best_validation_loss=values[best],
                 reason=f"validation loss did not improve for {patience} iterations "
                        f"(best {values[best]:.6g} at stage iteration {best})")
    return True


def _of_stage(history: History, values: list[float], si: int) -> list[float]:
    """The entries of a per-iteration history list that belong to stage ``si``."""
    return [v for s, v in zip(history.stage, values) if s == si]


def _record_stop(history: History, si: int, it: int, **record: Any) -> None:
    """Record why stage ``si`` ended early, once (a resumed run re-checks the same rule)."""
    if not any(rec.get("stage") == si for rec in history.early_stop):
        history.early_stop.append({"stage": si, "iteration": it, **record})


def _converged(history: History, si: int, it: int, stage: Any) -> bool:
    """True (and recorded once) when stage ``si``'s loss fell by less than
    ``stage.converge.loss_change`` per iteration, relative and averaged over the last
    ``window`` iterations; from the history alone, so resume stays exact. Why: a stage
    whose loss is flat only spends time, and on counted data it slowly fits the noise
    (abTEM graphene, LSQ-ML: correlation 0.939 at 10 iterations, 0.935 at 30, loss flat
    within 0.1 % from iteration 1)."""
    rule = getattr(stage, "converge", None)
    if rule is None or it < max(rule.after, rule.window):
        return False
    values = _of_stage(history, history.loss, si)
    if len(values) <= rule.window:
        return False
    old, new = values[-1 - rule.window], values[-1]
    if not (math.isfinite(old) and math.isfinite(new)) or new <= 0:
        return False
    rate = (old - new) / (rule.window * new)
    if rate >= rule.loss_change:
        return False
    _record_stop(history, si, it, reason=f"converged: the loss changed {-100 * rate:+.2g} % per iteration over the "
                                         f"last {rule.window} (a fall under {100 * rule.loss_change:g} % ends the stage)")
    return True


def _first_stage_loss(history: History, si: int) -> float | None:
    for s, loss in zip(history.stage, history.loss):
        if s == si:
            return loss
    return None


def _fail(what: str, state: Any, engine: Any, cursor: Cursor, history: History, hooks: RunHooks,
          extra: dict[str, Any]) -> None:
    """Exit 6 after the retries: the state from before the iteration, checkpointed."""
    _restore(state, extra["last_good"])
    if hooks.checkpoint is not None:
        hooks.checkpoint(state, engine, cursor, history, extra)
    raise NumericalError(f"stage {cursor.stage} iteration {cursor.iteration}: {what} after "
                         f"{backoff.MAX_RETRIES} retries with smaller steps; kept the state from before this "
                         "iteration (try smaller steps)")


def _stop(state: Any, engine: Any, cursor: Cursor, history: History, hooks: RunHooks, extra: dict[str, Any]) -> None:
    if hooks.checkpoint is not None:
        hooks.checkpoint(state, engine, cursor, history, extra)
    resumable = hooks.stop.resumable
    raise Interrupted(f"stopped by signal {hooks.stop.signum} at stage {cursor.stage} iteration "
                      f"{cursor.iteration} group {cursor.group}; checkpoint written, continue with --resume",
                      resumable=resumable)


# what an iteration may change (engines/variables.py refines the extra fields)
_SNAPSHOT = ("probe", "object", "positions", "slice_thickness", "tilts", "beam_current", "background",
             "aberrations", "detector_blur_px", "subscan_aberrations", "tilts_before", "tilts_after", "iteration")


def _snapshot(state: Any) -> dict[str, Any]:
    return {name: _copy(getattr(state, name, None)) for name in _SNAPSHOT}


def _restore(state: Any, snap: dict[str, Any]) -> None:
    # copies again: an engine updates the restored arrays in place, and a second retry
    # must find the snapshot as it was
    for name, value in snap.items():
        setattr(state, name, _copy(value))


def _copy(value: Any) -> Any:
    # backend.copy: an array-API array has no .copy(), and a snapshot that aliased the live
    # arrays restored nothing (the array path retried from the diverged state)
    return backend.copy(value)
