"""``grouping.size = "auto"`` and ``--group-size``: the group size a run actually uses.

"auto" asks ``engines.data.plan_memory`` for the largest group (and whether to stream the
patterns) that fits the memory budget, once, when the run starts. The chosen numbers are
stored in the output (root attribute ``group_plan``) and reused by ``--resume``, so a
resumed run draws the same groups even when the free memory has changed meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engines.data import plan_memory
from ..errors import UsageError
from ..recipe import Recipe
from ..store.io import partial_path

AUTO = "auto"


def parse_group_size(value: int | str) -> int | str:
    """``N`` (>= 1) or ``"auto"``; UsageError naming the value otherwise."""
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UsageError(f"--group-size {value!r}: expected a positive integer or 'auto'")


def with_group_size(rec: Recipe, group_size: int | str | None) -> Recipe:
    """``rec`` with every stage's ``grouping.size`` set to ``group_size`` (None: unchanged)."""
    if group_size is None:
        return rec
    value = parse_group_size(group_size)
    out = rec.model_copy(deep=True)
    for stage in out.stage:
        stage.grouping.size = value
    return out


def plan(rec: Recipe, state: Any, xp: Any, precision: str, budget_bytes: int | None, comm: Any,
         stored_plan: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """{group_size, stream, budget_bytes, ...} when a stage asks for "auto", else None.

    Under MPI each rank holds only its 1/K share of a group, so the group is K times what
    the tightest rank fits (capped at the number of positions); every rank uses that size.
    """
    if not any(stage.grouping.size == AUTO for stage in rec.stage):
        return None
    if stored_plan is not None:
        return dict(stored_plan)
    found = plan_memory(state, xp, precision, budget_bytes=budget_bytes)
    per_rank = min(int(g) for g in comm.allgather(int(found["group_size"])))
    group = min(per_rank * comm.size, len(state.positions))
    return {**found, "group_size": int(group)}


def apply(rec: Recipe, group_plan: dict[str, Any] | None) -> Recipe:
    """``rec`` with each "auto" group size replaced by the planned one."""
    if group_plan is None:
        return rec
    out = rec.model_copy(deep=True)
    for stage in out.stage:
        if stage.grouping.size == AUTO:
            stage.grouping.size = int(group_plan["group_size"])
    return out


def public(group_plan: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a plan (summary and store attribute)."""
    return {"group_size": int(group_plan["group_size"]), "stream": bool(group_plan["stream"]),
            "budget_bytes": int(group_plan["budget_bytes"])}


def stored(out: Path) -> dict[str, Any] | None:
    """The plan recorded by the interrupted run of ``out`` (None when it had none)."""
    part = partial_path(out)
    if not part.exists():
        return None
    import zarr

    value = zarr.open_group(str(part), mode="r").attrs.get("group_plan")
    return dict(value) if value else None
