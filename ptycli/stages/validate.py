"""``validate``: load a recipe (file or shipped name), apply overrides, check every key."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..recipe import AUTO, find_recipe, resolved
from ..store.schema import json_hash
from . import auto_recipe


def run(recipe: str | Path, *, overrides: Iterable[str] = (), iterations: int | None = None,
        data: str | Path | None = None, state: str | Path | None = None) -> dict[str, Any]:
    """Summary of a valid recipe; raises RecipeError naming the bad key paths otherwise.
    ``data`` and ``state``: the stores recipe ``auto`` is picked from."""
    rec = auto_recipe.load(recipe, data, state, overrides, iterations)
    source = rec.description if str(recipe) == AUTO else find_recipe(recipe)[0]
    data = resolved(rec)
    return {"source": source, "valid": True, "iterations": rec.total_iterations,
            "stages": [{"type": s.type, "iterations": s.iterations} for s in rec.stage],
            "recipe_hash": json_hash(data), "resolved": data}


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for resolved recipes (tables, arrays of tables, scalars)."""
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).strip()


def _table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    for key, value in data.items():
        if not isinstance(value, (dict, list)) or _inline(value):
            if value is not None:
                lines.append(f"{key} = {_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict) and not _inline(value):
            lines.append(f"\n[{'.'.join([*path, key])}]")
            _table(value, [*path, key], lines)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                lines.append(f"\n[[{'.'.join([*path, key])}]]")
                _table(item, [*path, key], lines)


def _inline(value: Any) -> bool:
    if isinstance(value, list):
        return not (value and all(isinstance(v, dict) for v in value))
    return isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values())


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items() if x is not None) + "}"
    return _value(str(v))
