"""Schedules as data: when a constraint runs, and values that change over iterations.

``When`` says on which iterations a constraint or regulariser is active
(``{after = 5, every = 2, before = 100}``); ``ScheduleValue`` is a number that follows a
curve (``{schedule = "cosine", start = 1e-2, end = 1e-4, iterations = 100}``). Both are
plain pydantic data, never code to evaluate, so recipes stay safe and diffable.
"""

from __future__ import annotations

import math
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator


class When(BaseModel):
    """Active on iterations ``after <= it < before`` with ``(it - after) % every == 0``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # StrictInt: TOML `true` is not an iteration number (lax ints would read it as 1)
    after: StrictInt = Field(0, ge=0, description="First iteration (0-based) on which it runs.")
    every: StrictInt = Field(1, ge=1, description="Run every this many iterations.")
    before: StrictInt | None = Field(None, ge=0, description="Stop before this iteration (exclusive); None = never.")

    @model_validator(mode="after")
    def _not_empty(self) -> "When":
        # {after = 0, before = 0} is how `false` (never) is written out, so it must read back;
        # any other empty window is a typo that would silently switch the part off.
        if self.before is not None and self.before <= self.after and (self.after, self.before) != (0, 0):
            raise ValueError(f"empty window: before = {self.before} must exceed after = {self.after} "
                             "(false switches it off)")
        return self

    def active(self, iteration: int) -> bool:
        if iteration < self.after:
            return False
        if self.before is not None and iteration >= self.before:
            return False
        return (iteration - self.after) % self.every == 0


class ScheduleValue(BaseModel):
    """A value over iterations.

    ``constant``: ``start``. ``linear`` / ``cosine`` / ``exponential`` (geometric): from
    ``start`` at iteration ``offset`` to ``end`` at ``offset + iterations``, then held.
    ``piecewise``: linear interpolation through ``points = [[iteration, value], ...]``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    schedule: Literal["constant", "linear", "cosine", "exponential", "piecewise"]
    start: float = 0.0
    end: float | None = None
    iterations: StrictInt = Field(100, ge=1, description="Length of the ramp in iterations.")
    offset: StrictInt = Field(0, ge=0, description="Iteration at which the ramp starts.")
    points: list[tuple[StrictInt, float]] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ScheduleValue":
        if self.schedule == "piecewise" and not self.points:
            raise ValueError("schedule 'piecewise' needs points = [[iteration, value], ...]")
        if self.schedule == "exponential" and (self.start <= 0 or (self.end or 0) <= 0):
            raise ValueError("schedule 'exponential' needs start > 0 and end > 0")
        if self.schedule in ("linear", "cosine", "exponential") and self.end is None:
            raise ValueError(f"schedule {self.schedule!r} needs an end value")
        return self

    def at(self, iteration: int) -> float:
        if self.schedule == "constant":
            return float(self.start)
        if self.schedule == "piecewise":
            return _piecewise(self.points or [], iteration)
        t = min(max((iteration - self.offset) / self.iterations, 0.0), 1.0)
        a, b = float(self.start), float(self.end)  # type: ignore[arg-type]
        if self.schedule == "linear":
            return a + (b - a) * t
        if self.schedule == "cosine":
            return b + 0.5 * (a - b) * (1.0 + math.cos(math.pi * t))
        return a * (b / a) ** t


def _piecewise(points: list[tuple[int, float]], iteration: int) -> float:
    pts = sorted(points)
    if iteration <= pts[0][0]:
        return float(pts[0][1])
    for (i0, v0), (i1, v1) in zip(pts, pts[1:]):
        if iteration <= i1:
            return float(v0 + (v1 - v0) * (iteration - i0) / max(i1 - i0, 1))
    return float(pts[-1][1])


Scheduled = Union[float, ScheduleValue]


def check_nonnegative(value: Scheduled) -> Scheduled:
    """A weight that never goes below 0: a number, or every value a schedule can take."""
    if isinstance(value, ScheduleValue):
        ends = [value.start, value.end] + [v for _, v in value.points or []]
        if any(v is not None and v < 0 for v in ends):
            raise ValueError("a weight schedule should stay greater than or equal to 0")
    elif value < 0:  # a negative weight would reward what the term penalises
        raise ValueError("Input should be greater than or equal to 0")
    return value


def value_at(value: Scheduled, iteration: int) -> float:
    """The number a (possibly scheduled) value takes at ``iteration``."""
    return value.at(iteration) if isinstance(value, ScheduleValue) else float(value)
