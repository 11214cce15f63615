"""The search space of ``ptycli tune``: a TOML file validated by pydantic.

```toml
space = "ptycli-tune/1"
[study]                              # defaults; the CLI flags win
trials = 30
sampler = "tpe"                      # tpe | gp | random
pruner = "hyperband"                 # hyperband | median | none
objective = "auto"                   # auto (truth if the data has truth/, else validation) | validation | truth
iterations = 10                      # iterations per trial (recipe scaled); default: the recipe's
validation_fraction = 0.1

[param.defocus_a]                    # an init-time physical key: re-runs init for the trial
low = 0.0
high = 200.0
[param."stage.0.learning_rate.object"]   # a recipe key by path
low = 1e-3
high = 1e-1
log = true
[param."stage.0.iterations"]
type = "int"
low = 5
high = 20
[param."stage.0.grouping.kind"]
type = "categorical"
choices = ["sparse", "compact"]
```

Init keys (lengths Å, angles deg): ``defocus_a`` (Δf, + = underfocus), aberrations ``C<nm>``
and their angles ``phi<nm>`` (deg), ``slices``, ``slice_thickness_a``, ``probe_modes``,
``scan_step_a``, ``scan_rotation_deg``. Every other key must be a recipe path
(``stage.N.…`` or ``seed``) and is checked against the recipe before any trial runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import RecipeError
from ..physics.aberrations import TERMS, angle_key
from ..recipe import apply_override, parse_toml, validate

SPACE_VERSION = "ptycli-tune/1"
ABERRATION_KEYS = set(TERMS) | {angle_key(n) for n, (_, m) in TERMS.items() if m}
INIT_KEYS = {"defocus_a", "slices", "slice_thickness_a", "probe_modes", "scan_step_a", "scan_rotation_deg"}
INT_KEYS = {"slices", "probe_modes"}
CALIBRATION_KEYS = {"scan_step_a", "scan_rotation_deg"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Param(_Model):
    """One searched value: a float/int range (optionally log-spaced or stepped) or choices."""

    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be < high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("int ranges need integer low/high")
        return self


class Study(_Model):
    """Study defaults (CLI flags win)."""

    trials: int = Field(30, ge=1)
    sampler: Literal["tpe", "gp", "random"] = "tpe"
    pruner: Literal["hyperband", "median", "none"] = "hyperband"
    objective: Literal["auto", "validation", "truth"] = "auto"
    iterations: int | None = Field(None, ge=1, description="iterations per trial (the recipe is scaled)")
    validation_fraction: float = Field(0.1, gt=0, lt=1)


class Space(_Model):
    space: Literal["ptycli-tune/1"] = SPACE_VERSION
    study: Study = Field(default_factory=Study)
    param: dict[str, Param] = Field(min_length=1)

    @property
    def init_keys(self) -> list[str]:
        return [k for k in self.param if is_init_key(k)]


def is_init_key(key: str) -> bool:
    return key in INIT_KEYS or key in ABERRATION_KEYS


def load_space(path: str | Path, recipe_data: dict[str, Any]) -> Space:
    """Read and validate SPACE.toml; every recipe path is tried on ``recipe_data``."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: search-space file not found")
    data = parse_toml(p.read_text(), str(p))
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        parts = [f"{'.'.join(_loc(e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()]
        raise RecipeError(f"{p}: " + "; ".join(parts)) from None
    for key, param in space.param.items():
        _check_key(p, key, param, recipe_data)
    return space


def _loc(loc: tuple) -> list[str]:
    # param."stage.0.x" reads better quoted, as in the TOML file
    return [f'"{part}"' if isinstance(part, str) and "." in part else str(part) for part in loc]


def _check_key(path: Path, key: str, param: Param, recipe_data: dict[str, Any]) -> None:
    where = f'{path}: param."{key}"'
    if is_init_key(key):
        if param.type == "categorical":
            raise RecipeError(f"{where}: init key {key} needs a float or int range, not choices")
        if key in INT_KEYS and param.type != "int":
            raise RecipeError(f'{where}: {key} is a count; use type = "int"')
        if key in INT_KEYS and (param.low or 0) < 1:
            raise RecipeError(f"{where}: {key} low must be >= 1")
        return
    if not (key.startswith("stage.") or key == "seed"):
        raise RecipeError(f"{where}: unknown key; expected a recipe path (stage.N.…, seed) or an init key "
                          f"({', '.join(sorted(INIT_KEYS))}, C<nm>, phi<nm>)")
    for value in probe_values(param):
        try:
            validate(apply_override(recipe_data, f"{key}={toml_value(value)}"), "recipe")
        except RecipeError as exc:
            raise RecipeError(f"{where}: value {value!r} makes the recipe invalid: {exc}") from None


def probe_values(param: Param) -> list[Any]:
    if param.type == "categorical":
        return list(param.choices or [])
    cast = int if param.type == "int" else float
    return [cast(param.low), cast(param.high)]


def toml_value(value: Any) -> str:
    """A scalar as TOML (what ``--set`` parses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"value {value}: not finite")
    return repr(value)


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """Draw every parameter of ``space`` for an Optuna trial."""
    out: dict[str, Any] = {}
    for key, p in space.param.items():
        if p.type == "categorical":
            out[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            out[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
    return out


def split_params(params: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(recipe ``--set`` overrides, init-time values)."""
    overrides = [f"{k}={toml_value(v)}" for k, v in params.items() if not is_init_key(k)]
    init = {k: v for k, v in params.items() if is_init_key(k)}
    return overrides, init
