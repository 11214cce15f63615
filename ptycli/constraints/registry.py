"""Registries of constraints and regularisers, recipe validation, and one-call application.

Recipes name parts by ``type``: ``{type = "kz_filter", beta = 1.0, when = {after = 1}}``.
``validate_constraints`` turns such dicts into (spec, params) pairs and reports every bad
key by its full path (``stage.0.constraints.1.beta: ...``).

Constraints that change variables break L-BFGS curvature pairs (physics.md §6): the
``changed`` list returned by ``apply_constraints`` tells an engine to reset its memory.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from pydantic import ValidationError

from ..errors import RecipeError
from . import object as _object
from . import object_values as _values
from . import positions as _positions
from . import probe as _probe
from . import regularisers as _reg
from . import slices as _slices
from . import tilts as _tilts
from .base import (
    ConstraintParams,
    ConstraintSpec,
    Context,
    RegulariserParams,
    RegulariserSpec,
)
from .problems import validation_problems

CONSTRAINTS: dict[str, ConstraintSpec] = {
    s.name: s for s in [*_probe.SPECS, *_object.SPECS, *_values.SPECS, *_positions.SPECS, *_slices.SPECS,
              *_tilts.SPECS]
}
REGULARISERS: dict[str, RegulariserSpec] = {s.name: s for s in _reg.SPECS}

# physics.md §7: probe (7.1 → 7.2 → 7.3/7.4), then object, then ramp/positions (7.10/7.11).
ORDER = [
    "orthogonalize_probe", "orthogonalize_object_modes", "fix_probe_intensity", "probe_fourier_mask",
    "probe_window", "probe_centre", "object_amplitude_threshold", "object_blur", "object_depth_blur",
    "kz_filter", "object_lowpass", "object_dct_threshold", "complex_ratio", "mirrored_amplitude",
    "charge_flip", "object_z_recenter", "phase_ramp_removal", "phase_positivity",
    "position_max_update", "position_affine", "position_recenter", "tilt_smooth",
    # the shift between slices is read into the tilt before the slices are tied (which erases it)
    "tilt_from_slices", "tie_slices",
]


def _validate(items: Iterable[dict[str, Any]], registry: dict[str, Any], what: str,
              path_prefix: str) -> list[tuple[Any, Any]]:
    out, problems = check_items(items, registry, what, path_prefix)
    if problems:
        raise RecipeError("; ".join(f"{key}: {msg}" for key, msg in problems))
    return out


def add_plugins() -> None:
    """Constraints and regularisers of plugin packages (entry points ``ptycli.constraints``),
    added once; every recipe check comes here first, so a run finds them by name too."""
    global _plugins_added
    if _plugins_added:
        return
    _plugins_added = True
    from .. import plugins  # noqa: PLC0415

    for spec in plugins.specs("ptycli.constraints", lambda s: isinstance(s, (ConstraintSpec, RegulariserSpec))):
        table = CONSTRAINTS if isinstance(spec, ConstraintSpec) else REGULARISERS
        table.setdefault(spec.name, spec)  # a built-in keeps its name


_plugins_added = False


def check_items(items: Iterable[dict[str, Any]], registry: dict[str, Any], what: str,
                path_prefix: str) -> tuple[list[tuple[Any, Any]], list[tuple[str, str]]]:
    """([(spec, params)] of the good items, [(key path, message)] of every bad key)."""
    add_plugins()
    out: list[tuple[Any, Any]] = []
    problems: list[tuple[str, str]] = []
    for i, raw in enumerate(items):
        where = f"{path_prefix}.{i}" if path_prefix else str(i)
        if not isinstance(raw, dict) or "type" not in raw:
            problems.append((f"{where}.type", f"missing; expected one of {', '.join(sorted(registry))}"))
            continue
        name = raw["type"]
        if not isinstance(name, str) or name not in registry:
            problems.append((f"{where}.type",
                             f"unknown {what} {name!r}; expected one of {', '.join(sorted(registry))}"))
            continue
        spec = registry[name]
        data = {k: v for k, v in raw.items() if k != "type"}
        try:
            params = spec.params.model_validate(data)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, data, where))
            continue
        out.append((spec, params))
    return out, problems


def validate_constraints(items: Iterable[dict[str, Any]], path_prefix: str = "constraints"
                         ) -> list[tuple[ConstraintSpec, ConstraintParams]]:
    """Recipe dicts -> [(spec, params)], or RecipeError naming every bad key path."""
    return _validate(items, CONSTRAINTS, "constraint", path_prefix)


def validate_regularisers(items: Iterable[dict[str, Any]], path_prefix: str = "regularisers"
                          ) -> list[tuple[RegulariserSpec, RegulariserParams]]:
    return _validate(items, REGULARISERS, "regulariser", path_prefix)


def ordered(pairs: list[tuple[ConstraintSpec, ConstraintParams]]) -> list[tuple[ConstraintSpec, ConstraintParams]]:
    """Sort into the physics.md §7 order (stable for repeats of one type)."""
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(pairs, key=lambda p: rank.get(p[0].name, len(ORDER)))


def apply_constraints(state: Any, pairs: list[tuple[ConstraintSpec, ConstraintParams]], ctx: Context,
                      *, force: bool = False) -> tuple[Any, list[str]]:
    """Apply the constraints active at ``ctx.iteration`` (all of them with ``force``).

    Returns (new state, names of the State fields that changed). A non-empty list means
    the variables were projected: L-BFGS must reset its history.
    """
    changed: list[str] = []
    for spec, params in pairs:
        if not (force or params.when.active(ctx.iteration)):
            continue
        new = spec.apply(state, params, ctx)
        changed.extend(f for f in spec.modifies if getattr(new, f) is not getattr(state, f) and f not in changed)
        state = new
    return state, changed


def regularise(state: Any, pairs: list[tuple[RegulariserSpec, RegulariserParams]]) -> tuple[Any, dict[str, Any]]:
    """Sum of the active cost terms at ``state.iteration`` and their summed gradients."""
    total: Any = 0.0
    grads: dict[str, Any] = {}
    for spec, params in pairs:
        if not params.when.active(int(state.iteration)):
            continue
        value, g = spec.value_and_grad(state, params)
        total = total + value
        for key, arr in g.items():
            grads[key] = arr if key not in grads else grads[key] + arr
    return total, grads


def parse_apply(text: str) -> dict[str, Any]:
    """``NAME:key=value,key=value`` (CLI ``--apply``) -> a recipe-style dict.

    Values are read as JSON when they parse (numbers, true/false, [lists]); otherwise
    they stay strings. Nested keys use dots: ``when.after=3``.
    """
    name, _, rest = text.partition(":")
    out: dict[str, Any] = {"type": name.strip()}
    for item in _split_top(rest):
        if "=" not in item:
            raise RecipeError(f"--apply {text!r}: {item!r} is not key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        target = out
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = _parse_value(value)
    return out


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside [...] or {...}."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p for p in (s.strip() for s in parts) if p]


def _parse_value(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
