"""Step back-off: what the loop does when an iteration's loss rises or turns NaN/inf.

The loop (engines/loop.py) restores the state from before the iteration, makes the stage's
engine again with every step of the stage scaled by ``FACTOR`` (``scaled_stage``) and runs
the same groups again; after ``MAX_RETRIES`` retries of one iteration a non-finite or
diverged loss is a NumericalError (exit 6) and a merely risen one is accepted. The scale
stays for the rest of the stage and is recorded in the history, so a resumed run makes
the same engine (``stage_scale``).

Why scale the recipe's own step parameters instead of blending each update: one update's
change would have to be snapshotted per group (one object copy per position for
sequential ePIE), while a scaled engine costs nothing until it is needed.
"""

from __future__ import annotations

import math
from typing import Any

FACTOR = 0.5  # each retry halves every step of the stage
MAX_RETRIES = 4  # retries of one iteration (steps down to 1/16) before exit 6
# An iteration loss above RISE x the stage's best iteration loss so far is a step too
# large for the state (a converging run's loss moves by percents per iteration); the
# divergence limit of the loop (1e3 x the stage's first loss) stays the last resort.
RISE = 2.0


def scaled_rate(rate: Any, factor: float) -> Any:
    """A learning rate (a number or a ``ScheduleValue``) times ``factor``."""
    if rate is None:
        return None
    if isinstance(rate, (int, float)):
        return float(rate) * factor
    update = {"start": rate.start * factor}
    if rate.end is not None:
        update["end"] = rate.end * factor
    if rate.points:
        update["points"] = [(i, v * factor) for i, v in rate.points]
    return rate.model_copy(update=update)


def scaled_stage(stage: Any, factor: float) -> Any:
    """``stage`` with every step it takes times ``factor`` (1: the stage itself).

    ePIE: α and β; LSQ-ML: β_LSQ (its optimal steps are scaled, not replaced); gradient:
    every learning rate; L-BFGS keeps its line search (a fresh engine drops its memory,
    which is what a failed search does too)."""
    if factor == 1.0:
        return stage
    if stage.type == "epie":
        return stage.model_copy(update={"alpha": stage.alpha * factor, "beta": stage.beta * factor})
    if stage.type == "lsqml":
        return stage.model_copy(update={"beta_lsq": stage.beta_lsq * factor})
    if stage.type == "gradient":
        lr = stage.learning_rate
        rates = {name: scaled_rate(getattr(lr, name), factor) for name in type(lr).model_fields}
        return stage.model_copy(update={"learning_rate": lr.model_copy(update=rates)})
    return stage


def verdict(loss: float, first: float | None, best: float | None, divergence_factor: float) -> str | None:
    """Why an iteration's ``loss`` needs a smaller step (None: it does not).

    ``first``: the stage's first loss (or iteration 0's baseline), ``best``: its lowest
    iteration loss so far (None in its first iteration)."""
    if not math.isfinite(loss):
        return "NaN/inf"
    if first is not None and loss > divergence_factor * max(first, 1e-30):
        return f"divergence (loss {loss:.4g} > {divergence_factor:g} x {first:.4g})"
    if best is not None and loss > RISE * max(best, 1e-30):
        return f"rising loss ({loss:.4g} > {RISE:g} x the stage's best {best:.4g})"
    return None


def fatal(reason: str) -> bool:
    """A reason that is an error once the retries are spent (a risen loss is accepted)."""
    return not reason.startswith("rising")


def stage_scale(records: list[dict[str, Any]], stage: int) -> float:
    """The step scale of stage ``stage`` after the back-offs in ``records`` (History.backoff)."""
    scale = 1.0
    for rec in records:
        if rec.get("stage") == stage:
            scale = min(scale, float(rec["scale"]))
    return scale
