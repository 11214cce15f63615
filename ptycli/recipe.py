"""Recipes: versioned TOML plans of engine stages, validated by pydantic.

A recipe is ``recipe = "ptycli/1"`` plus a list of ``[[stage]]`` tables, each tagged by
``type`` (an engine name). Unknown keys are rejected and every error names its key path
(``stage.1.learning_rate.object: ...``). Schedules (``when``) and learning-rate schedules
are data, never code.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .constraints.problems import validation_problems
from .constraints.schedule import ScheduleValue, When, value_at
from .errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_VERSION = "ptycli/1"
RECIPE_PACKAGE = "ptycli.recipes_data"


# Every float of a recipe must be finite: `beta = inf` or `{object = nan}` would pass a `gt=0` bound
# (or skip it) and only fail iterations later as a numerical error (exit 6) instead of exit 3 here.
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# A documented bound (docs/recipes.md): a count beyond it is a typo (2**63-1, 1e20), not a plan, and
# would run unbounded.
MAX_ITERATIONS = 1_000_000


# ----------------------------------------------------------------------------- schedules
NEVER = When(after=0, every=1, before=0)


def _when(value: Any) -> Any:
    """``true`` = always, ``false`` = never, an int = from that iteration on."""
    if value is True:
        return When()
    if value is False:
        return NEVER.model_copy()
    if isinstance(value, int):  # a table, so a bad N is reported at its key, not raised here
        return {"after": value}
    return value


Rate = Union[float, ScheduleValue]


def rate_value(rate: Rate | None, iteration: int) -> float | None:
    """A learning rate at a stage iteration (None stays None)."""
    return None if rate is None else value_at(rate, iteration)


# ----------------------------------------------------------------------------- parts
class Noise(_Model):
    """Noise model of the data (physics.md §5.2); compressed data use the compressed loss."""

    model: str = Field("amplitude", description="amplitude | intensity | poisson | anscombe | compressed, "
                                              "or a plugin's model (entry point group ptycli.noise_models)")
    eps: float | None = Field(None, gt=0, description="ε_a (amplitude) or ε_p (poisson), counts")

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        from .engines.noise import known_models  # noqa: PLC0415  (plugins load only here)

        if v not in known_models():
            raise ValueError(f"expected one of {', '.join(known_models())}")
        return v


class Grouping(_Model):
    """How positions are split into groups (mini-batches) each iteration."""

    kind: Literal["random", "sparse", "compact"] = "sparse"
    size: Annotated[StrictInt, Field(ge=1)] | Literal["auto"] = Field(32, description=(
        "positions per group, or \"auto\": the largest group that fits the memory budget "
        "(engines/data.py plan_memory), chosen when the run starts"))


EXTRA_VARIABLES = ("tilts", "tilt_global", "thickness", "aberrations", "beam_current", "background",
                   "detector_blur", "subscan_aberrations", "tilts_before",
                   "tilts_after")  # refined by the gradient and lbfgs engines (engines/variables.py)


def _never() -> When:
    return NEVER.model_copy()


class Refine(_Model):
    """When each variable is refined (stage iterations, from 0).

    Beyond object/probe/positions (every engine): per-position ``tilts`` and a global
    ``tilt_global`` (mrad), the shared slice ``thickness`` (Å), probe ``aberrations``
    (Krivanek coefficients of ``aberration_terms``), per-position ``beam_current``, a static
    detector ``background`` (≥ 0), the ``detector_blur`` σ (px), each sub-scan's own
    aberrations (``subscan_aberrations``, same terms) and PyPty's per-position tilts
    ``tilts_before`` / ``tilts_after`` the specimen (mrad); these need the gradient or
    lbfgs engine, except ``background``, which LSQ-ML refines too (its own estimate:
    engines/lsqml_background.py).
    """

    object: When = Field(default_factory=When)
    probe: When = Field(default_factory=lambda: When(after=1))
    positions: When = Field(default_factory=_never)
    tilts: When = Field(default_factory=_never)
    tilt_global: When = Field(default_factory=_never)
    thickness: When = Field(default_factory=_never)
    aberrations: When = Field(default_factory=_never)
    beam_current: When = Field(default_factory=_never)
    background: When = Field(default_factory=_never)
    detector_blur: When = Field(default_factory=_never)
    subscan_aberrations: When = Field(default_factory=_never)
    tilts_before: When = Field(default_factory=_never)
    tilts_after: When = Field(default_factory=_never)

    @field_validator("object", "probe", "positions", *EXTRA_VARIABLES, mode="before")
    @classmethod
    def _coerce(cls, v: Any) -> Any:
        return _when(v)

    def extra_refined(self) -> list[str]:
        """The extra variables this stage refines at some iteration."""
        return [n for n in EXTRA_VARIABLES if getattr(self, n) != NEVER]


class PositionCorrection(_Model):
    """Position refinement limits (pixels) and global-motion removal (physics.md §7.11)."""

    max_step_px: float = Field(0.5, gt=0, description="largest position change per iteration, px")
    remove_drift: bool = Field(True, description="keep the centroid at its nominal value")
    step: float = Field(1.0, gt=0, description="relative step of the engine's position update")


class Constraint(BaseModel):
    """A constraint table; its own keys are validated by the constraints registry."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    type: str
    when: When = Field(default_factory=When)

    @field_validator("when", mode="before")
    @classmethod
    def _coerce(cls, v: Any) -> Any:
        return _when(v)

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items()}


class Converge(_Model):
    """A stage ends once its loss has stopped falling: the mean relative decrease per
    iteration over the last ``window`` iterations, (L[i-w] - L[i]) / (w·L[i]), is below
    ``loss_change`` (docs/recipes.md). Decided from the stored loss history alone, so a
    resumed run stops where an uninterrupted one does."""

    loss_change: float = Field(gt=0, lt=1, description="relative loss decrease per iteration below which the stage ends")
    window: StrictInt = Field(5, ge=1, le=1000, description="iterations the decrease is averaged over")
    after: StrictInt = Field(0, ge=0, le=MAX_ITERATIONS, description="never before this stage iteration")


class _Stage(_Model):
    # StrictInt throughout: a TOML `true` is not a count (lax ints would read it as 1)
    iterations: StrictInt = Field(10, ge=0, le=MAX_ITERATIONS)
    converge: Converge | None = Field(None, description="end the stage early once its loss stops falling")
    noise: Noise = Field(default_factory=Noise)
    grouping: Grouping = Field(default_factory=Grouping)
    refine: Refine = Field(default_factory=Refine)
    positions: PositionCorrection = Field(default_factory=PositionCorrection)
    constraints: list[Constraint] = Field(default_factory=list)
    regularisers: list[Constraint] = Field(default_factory=list, description=(
        "cost terms (constraints.registry.REGULARISERS or a scan regulariser); gradient and lbfgs only"))
    aberration_terms: list[str] = Field(default_factory=lambda: ["C10", "C12", "C21", "C23", "C30"],
                                        description="polar Krivanek terms refined when refine.aberrations is on")
    nearfield_defocus_a: float | list[float] | None = Field(None, description=(
        "near-field ptychography: detector defocus z [Å] behind the exit plane, one value or one per "
        "measurement (physics/nearfield.py); None = far field"))
    name: str | None = None


class _FixedVariablesStage(_Stage):
    """Engines without updates for the extra variables or cost terms reject them by key."""

    OWN_VARIABLES: ClassVar[tuple[str, ...]] = ()  # extra variables this engine refines itself

    @field_validator("refine")
    @classmethod
    def _no_extra(cls, v: Refine) -> Refine:
        extra = [name for name in v.extra_refined() if name not in cls.OWN_VARIABLES]
        if extra:
            raise ValueError(f"{', '.join(extra)}: not refined by this engine; use type = \"gradient\" or \"lbfgs\"")
        return v

    @field_validator("regularisers")
    @classmethod
    def _no_cost(cls, v: list[Constraint]) -> list[Constraint]:
        if v:
            raise ValueError("cost regularisers need the gradient or lbfgs engine")
        return v

    @field_validator("nearfield_defocus_a")
    @classmethod
    def _far_field_only(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError("near-field data need the gradient or lbfgs engine")
        return v


class EpieStage(_FixedVariablesStage):
    """ePIE (single slice) / 3PIE (multislice); rPIE when ``rpie_gamma`` is set (§6.1-6.2)."""

    type: Literal["epie"]
    alpha: float = Field(1.0, gt=0, description="object step")
    beta: float = Field(1.0, gt=0, description="probe step")
    rpie_gamma: float | None = Field(None, gt=0, le=1, description="rPIE γ; None = ePIE")
    grouping: Grouping = Field(default_factory=lambda: Grouping(kind="random", size=1))


class LsqmlStage(_FixedVariablesStage):
    """LSQ-ML (Odstrčil 2018, physics.md §6.3)."""

    type: Literal["lsqml"]
    # δ = 0 divides by the unlit object's zero illumination: NaN on the first update
    delta: float = Field(0.1, gt=0, description="preconditioner regularisation δ")
    beta_lsq: float = Field(0.9, gt=0, le=1, description="step damping β_LSQ")
    trim: float = Field(0.1, ge=0, lt=0.5, description="trimmed-mean fraction of the batch steps")
    multislice_step: float = Field(4.0, gt=0, description=(
        "multiplier of the decoupled per-slice object step ½α/S (physics.md §6.3.6); 4 gives 2α/S, "
        "which converged about twice as fast as 1 on the multislice preset and 8 diverged"))
    # refine.background: an incoherent detector background B ≥ 0 in the model intensity I + B,
    # one Newton step per iteration (engines/lsqml_background.py, docs/recipes.md)
    OWN_VARIABLES: ClassVar[tuple[str, ...]] = ("background",)
    background_shape: Literal["radial", "pixel"] = Field("radial", description=(
        "the refined background: one value per detector ring |k| (radial: thermal diffuse "
        "scattering is radially symmetric) or per pixel"))

    @model_validator(mode="after")
    def _background_model(self) -> LsqmlStage:
        if self.refine.background != NEVER and self.noise.model not in ("amplitude", "poisson"):
            raise ValueError(f"refine.background with noise.model = {self.noise.model!r}: "
                             "LSQ-ML estimates a background under the amplitude or poisson model only")
        return self


class LearningRates(_Model):
    """Adam/SGD learning rates in the variable's units (physics.md §6.4).

    ``object`` is in transmission units; ``object_amplitude``/``object_phase`` (rad), when
    set, replace it by separate steps on |O| and angle(O); ``probe`` is relative to rms|P|;
    ``positions`` is in pixels.
    """

    object: Rate = 1e-2
    object_amplitude: Rate | None = None
    object_phase: Rate | None = None
    probe: Rate = 1e-2
    positions: Rate = 5e-2
    tilts: Rate = Field(0.1, description="mrad per step")
    tilt_global: Rate = Field(0.1, description="mrad per step")
    thickness: Rate = Field(0.5, description="Å per step")
    aberrations: Rate = Field(0.2, description="rad of phase at the aperture edge per step")
    beam_current: Rate = Field(5e-3, description="relative intensity per step")
    background: Rate = Field(0.1, description="sqrt(counts) per pixel per step (background = b²)")
    detector_blur: Rate = Field(0.02, description="detector px per step")
    subscan_aberrations: Rate = Field(0.2, description="rad of phase at the aperture edge per step")
    tilts_before: Rate = Field(0.1, description="mrad per step")
    tilts_after: Rate = Field(0.1, description="mrad per step")


class GradientStage(_Stage):
    """Wirtinger-gradient descent: SGD (momentum/Nesterov) or Adam (physics.md §6.4)."""

    type: Literal["gradient"]
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    learning_rate: LearningRates = Field(default_factory=LearningRates)
    grouping: Grouping = Field(default_factory=lambda: Grouping(kind="random", size=16))


class LbfgsScale(_Model):
    """Multipliers of each variable's L-BFGS scale (its unit in the stacked vector).

    Defaults (physics.md §6.5): object 1, probe rms|P_0|, positions 1 px, tilts 1 mrad,
    thickness 1 Å, aberrations 1 rad at the aperture edge, beam current 1, background
    sqrt(N_e/(M N)) (it works on sqrt(background)), detector blur 1 px. A larger multiplier lets a variable move further
    per unit of the search direction.
    """

    object: float = Field(1.0, gt=0)
    probe: float = Field(1.0, gt=0)
    positions: float = Field(1.0, gt=0)
    tilts: float = Field(1.0, gt=0)
    tilt_global: float = Field(1.0, gt=0)
    thickness: float = Field(1.0, gt=0)
    aberrations: float = Field(1.0, gt=0)
    beam_current: float = Field(1.0, gt=0)
    background: float = Field(1.0, gt=0)
    detector_blur: float = Field(1.0, gt=0)
    subscan_aberrations: float = Field(1.0, gt=0)
    tilts_before: float = Field(1.0, gt=0)
    tilts_after: float = Field(1.0, gt=0)


class LbfgsStage(_Stage):
    """Full-batch L-BFGS with a strong-Wolfe line search on the stacked, scaled variables (§6.5)."""

    type: Literal["lbfgs"]
    history: StrictInt = Field(10, ge=0, description="memory m: 0 = gradient descent, 1 = CG-like, >1 L-BFGS")
    c1: float = Field(1e-4, gt=0, lt=1, description="sufficient-decrease constant")
    c2: float = Field(0.9, gt=0, lt=1, description="curvature constant (strong Wolfe)")
    max_evaluations: StrictInt = Field(20, ge=2, le=100, description="f+∇f evaluations per line search")
    chunk: StrictInt = Field(256, ge=1, description="positions per forward/adjoint call (memory only)")
    scale: LbfgsScale = Field(default_factory=LbfgsScale)
    grouping: Grouping = Field(default_factory=lambda: Grouping(kind="compact", size=1_000_000))

    @field_validator("c2")
    @classmethod
    def _order(cls, v: float, info: Any) -> float:
        if v <= info.data.get("c1", 0.0):
            raise ValueError(f"c2 = {v} must exceed c1 = {info.data.get('c1')}")
        return v


STAGE_TYPES = ("epie", "lsqml", "gradient", "lbfgs")


class PluginStage(_Stage):
    """A stage run by a plugin package's engine (entry point group ``ptycli.engines``,
    ptycli/plugins.py): the keys every stage has are checked here, the engine's own keys by
    its spec's params model (``plugin_params()`` gives them parsed)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    type: str

    @field_validator("type")
    @classmethod
    def _known(cls, v: str) -> str:
        from .engines.specs import plugin_engines  # noqa: PLC0415  (plugins load on first use)

        if v in STAGE_TYPES or v not in plugin_engines():
            raise ValueError(f"unknown engine {v!r}; expected one of {', '.join([*STAGE_TYPES, *plugin_engines()])}")
        return v

    @model_validator(mode="after")
    def _own_keys(self) -> "PluginStage":
        try:
            self.plugin_params()
        except ValidationError as exc:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        return self

    def plugin_params(self) -> Any:
        from .engines.specs import plugin_engines  # noqa: PLC0415

        return plugin_engines()[self.type].params.model_validate(self.model_extra or {})


def _stage_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in STAGE_TYPES else "plugin"


Stage = Annotated[Union[Annotated[EpieStage, Tag("epie")], Annotated[LsqmlStage, Tag("lsqml")],
                        Annotated[GradientStage, Tag("gradient")], Annotated[LbfgsStage, Tag("lbfgs")],
                        Annotated[PluginStage, Tag("plugin")]], Discriminator(_stage_tag)]


class Recipe(_Model):
    recipe: Literal["ptycli/1"]
    description: str = ""
    seed: StrictInt | None = Field(None, description="overrides --seed when set")
    stage: list[Stage] = Field(min_length=1)

    @property
    def total_iterations(self) -> int:
        return sum(s.iterations for s in self.stage)


# ----------------------------------------------------------------------------- loading
class RecipeErrors(RecipeError):
    """A recipe with bad keys; ``errors`` lists every one as ``{"key": path, "message": ...}``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.errors = [{"key": key, "message": msg} for key, msg in problems]
        super().__init__(f"{source}: " + "; ".join(f"{key}: {msg}" for key, msg in problems))


def validate(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a recipe dict; RecipeError lists every bad key by path."""
    if not isinstance(data.get("recipe"), str) or data.get("recipe") != RECIPE_VERSION:
        raise RecipeErrors(source, [("recipe", f"expected {RECIPE_VERSION!r}, got {data.get('recipe')!r}")])
    problems: list[tuple[str, str]] = []
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, data)
    # constraint tables are checked even when the stages around them are not valid, so
    # one run of `validate` lists every bad key
    problems = sorted(_unique(problems + _table_problems(data.get("stage"))), key=_stage_of)
    if problems:
        raise RecipeErrors(source, problems)
    return recipe


def _stage_of(problem: tuple[str, str]) -> int:
    """Order by stage only (stable), so each stage's errors stay together and in field order."""
    parts = problem[0].split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "stage" and parts[1].isdigit() else -1


def _unique(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for key, msg in problems:
        seen.setdefault(key, msg)
    return list(seen.items())


def _table_problems(stages: Any) -> list[tuple[str, str]]:
    """Bad keys of the constraint and regulariser tables of raw stage dicts."""
    out: list[tuple[str, str]] = []
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(stage, dict):
            continue
        tables = stage.get("constraints")
        if isinstance(tables, list):
            out += _constraint_problems(tables, f"stage.{i}.constraints")
        tables = stage.get("regularisers")
        # ePIE and LSQ-ML refuse every regulariser: the stage's own error says so
        if isinstance(tables, list) and stage.get("type") not in ("epie", "lsqml"):
            out += _regulariser_problems(tables, f"stage.{i}.regularisers")
    return out


def _coerced(table: dict[str, Any]) -> dict[str, Any]:
    # the `when` shorthands (true / false / N) are the recipe's, not the registry's
    out = dict(table)
    if isinstance(out.get("when"), (bool, int)):
        out["when"] = _when(out["when"])
    return out


def _constraint_problems(tables: list[Any], where: str) -> list[tuple[str, str]]:
    from .constraints.registry import CONSTRAINTS, check_items

    return check_items([_coerced(t) if isinstance(t, dict) else t for t in tables], CONSTRAINTS,
                       "constraint", where)[1]


def _regulariser_problems(tables: list[Any], where: str) -> list[tuple[str, str]]:
    from .constraints.registry import REGULARISERS, check_items
    from .engines.scan_regularisers import SCAN_REGULARISERS, ScanRegulariserParams

    out: list[tuple[str, str]] = []
    for k, table in enumerate(tables):
        if isinstance(table, dict) and table.get("type") in SCAN_REGULARISERS:
            data = _coerced(table)
            try:
                ScanRegulariserParams.model_validate(data)
            except ValidationError as exc:
                out += validation_problems(exc, data, f"{where}.{k}")
        else:  # check_items numbers from 0: give it the recipe's index
            found = check_items([_coerced(table) if isinstance(table, dict) else table], REGULARISERS,
                                "regulariser", where)[1]
            out += [(f"{where}.{k}" + key[len(f"{where}.0"):], msg) for key, msg in found]
    return out


def check_constraints(recipe: Recipe, source: str) -> None:
    """Validate ``[[stage.constraints]]`` (and regularisers) through the registries."""
    problems = _table_problems(recipe.model_dump()["stage"])
    if problems:
        raise RecipeErrors(source, problems)


def check_regularisers(stage: Any, where: str) -> None:
    """Validate ``[[stage.regularisers]]``: cost terms of the registry or scan regularisers."""
    problems = _regulariser_problems(stage.model_dump()["regularisers"], where)
    if problems:
        raise RecipeError("; ".join(f"{key}: {msg}" for key, msg in problems))


def constraint_params(spec: Any, table: Constraint) -> Any:
    """The registry's params model instance for one constraint table (``when`` included)."""
    model = getattr(spec, "Params", None) or spec.params
    data = table.params()
    if "when" in model.model_fields:
        data["when"] = table.when.model_dump()
    return model.model_validate(data)


def _constraint_registry() -> dict[str, Any]:
    try:
        from .constraints.registry import CONSTRAINTS
    except ImportError:
        return {}
    return CONSTRAINTS


def find_recipe(name_or_path: str | Path) -> tuple[str, str]:
    """(source name, TOML text) of a recipe file, or of a shipped recipe by name."""
    p = Path(name_or_path)
    names = shipped_recipes()
    # a directory is never a recipe file: `mkdir quick` must not hide the shipped `quick`
    if p.is_dir() and str(name_or_path) not in names:
        raise RecipeError(f"{p}: is a directory, not a recipe file")
    if p.suffix == ".toml" or (p.exists() and not p.is_dir()):
        if not p.exists():
            raise RecipeError(f"{p}: no such recipe file")
        try:
            return str(p), p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{p}: cannot read the recipe file ({getattr(exc, 'strerror', None) or exc})") from None
    if str(name_or_path) not in names:
        raise RecipeError(f"recipe {str(name_or_path)!r}: not a file and not a shipped recipe "
                          f"(shipped: {', '.join(sorted(names))})")
    return f"{name_or_path}.toml", names[str(name_or_path)].read_text()


def shipped_recipes() -> dict[str, Any]:
    """Shipped recipes by name (package data ``ptycli/recipes_data``)."""
    root = resources.files(RECIPE_PACKAGE)
    return {f.name[:-5]: f for f in root.iterdir() if f.name.endswith(".toml")}


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source}: not valid TOML: {exc}") from None


def load_recipe(name_or_path: str | Path, overrides: list[str] = (), iterations: int | None = None,
                auto: AutoInputs | None = None) -> Recipe:
    """Read, override (``--set``), scale (``--iterations``) and validate a recipe.

    ``auto``: what ``--recipe auto`` picks from (``auto_choice``); needed for that name only."""
    if str(name_or_path) == AUTO:
        if auto is None:
            raise RecipeError("recipe 'auto' is chosen from the data and the state: use it with reconstruct "
                              "DATA STATE, or validate auto --data DATA --state STATE")
        name, auto_sets, why = auto_choice(auto)
        source, text = find_recipe(name)
        data = parse_toml(text, source)
        data["description"] = f"auto: {why}"
        source = f"auto ({source})"
        overrides = [*auto_sets, *overrides]  # the user's --set win
    else:
        source, text = find_recipe(name_or_path)
        data = parse_toml(text, source)
    for item in overrides:
        data = apply_override(data, item)
    recipe = validate(data, source)
    return scale_iterations(recipe, iterations) if iterations is not None else recipe


# ----------------------------------------------------------------------------- auto
AUTO = "auto"
# Below this dose the Poisson likelihood is the noise model (docs/recipes.md): at 2e3 e/Å²
# a bright-field pixel holds ~0.5 counts and the amplitude model's sqrt is biased.
LOW_DOSE_E_PER_A2 = 1e4
# A specimen that sends less than this share of the counts outside the bright-field disk is
# a weak scatterer: its multislice state is reconstructed with the single-slice recipe (Poisson
# LSQ-ML, positions, Adam; on the state's slices). abTEM corpus (share, single-slice vs
# multislice): MoS2 bilayer 80 kV (3.2 %) 0.976 vs 0.954; SrTiO3 non-ideal (6.7 %) 0.71 vs
# 0.82, tilted (9.1 %) 0.98 vs 0.98, Au (15 %) 0.51 vs 0.97. Strong scatterers need the depth
# regularisation of `multislice`. Since `multislice` fits a diffuse background with Poisson
# noise (session 16) it reaches 0.980 on the bilayer too: the rule keeps single-slice's 0.977
# there (the same within noise) and its cheaper model.
WEAK_DARK_FIELD_FRACTION = 0.05


@dataclass(frozen=True)
class AutoInputs:
    """What ``--recipe auto`` reads from the data and the state (stages/auto_recipe.py)."""

    dose_e_per_a2: float | None  # counts per frame / scan step area; None when unknown
    n_slices: int
    n_probe_modes: int
    dark_field_fraction: float | None = None  # share of the mean pattern's counts outside the disk


def auto_choice(inputs: AutoInputs) -> tuple[str, list[str], str]:
    """(shipped recipe, its ``--set`` overrides, why) for ``--recipe auto``: probe modes
    pick ``mixed-state`` (Poisson noise under LOW_DOSE_E_PER_A2), else a dose under it
    ``low-dose`` (one slice or several), else the slices ``multislice`` or ``single-slice``;
    several slices of a weak scatterer (dark-field share under WEAK_DARK_FIELD_FRACTION) also
    ``single-slice``, which then runs on those slices.

    Why low-dose for thick low-dose data too: on abTEM Si (9 slices, 5e3 e/Å²) ``multislice``
    with Poisson noise fell from 0.96 to 0.905 over 40 iterations, ``low-dose`` held 0.95."""
    low = inputs.dose_e_per_a2 is not None and inputs.dose_e_per_a2 < LOW_DOSE_E_PER_A2
    dose = "dose unknown" if inputs.dose_e_per_a2 is None else f"dose {inputs.dose_e_per_a2:.3g} e/Å²"
    noise = f"{dose} < {LOW_DOSE_E_PER_A2:g}" if low else dose
    slices = f"{inputs.n_slices} slice{'s' if inputs.n_slices > 1 else ''}"
    df = inputs.dark_field_fraction
    weak = df is not None and df < WEAK_DARK_FIELD_FRACTION
    if inputs.n_probe_modes > 1:
        name, what = "mixed-state", f"{inputs.n_probe_modes} probe modes"
    elif low:
        name, what = "low-dose", slices
    elif inputs.n_slices > 1 and weak:
        name, what = "single-slice", f"{slices}, weak scatterer: dark field {df:.1%} < {WEAK_DARK_FIELD_FRACTION:.0%}"
    else:
        name, what = ("multislice" if inputs.n_slices > 1 else "single-slice"), slices
    sets: list[str] = []
    if low and name != "low-dose":
        data = parse_toml(find_recipe(name)[1], name)
        sets = [f'stage.{i}.noise.model="poisson"' for i in range(len(data.get("stage", [])))]
    return name, sets, f"{name} ({what}, {noise})"


# ----------------------------------------------------------------------------- overrides
def apply_override(data: dict[str, Any], item: str) -> dict[str, Any]:
    """``stage.0.iterations=5``: set one value (TOML syntax; bare words are strings)."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY.PATH=VALUE")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set {item!r}: empty key path")
    out = copy.deepcopy(data)
    node: Any = out
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]))
    _assign(node, parts[-1], _parse_value(raw.strip()), key)
    return out


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise RecipeError(f"--set {path}: no such list index (length {len(node)})")
        return node[int(part)]
    if not isinstance(node, dict):
        raise RecipeError(f"--set {path}: not a table")
    return node.setdefault(part, {})


def _assign(node: Any, part: str, value: Any, path: str) -> None:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise RecipeError(f"--set {path}: no such list index (length {len(node)})")
        node[int(part)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise RecipeError(f"--set {path}: parent is not a table")


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


# ----------------------------------------------------------------------------- scaling
def scale_iterations(recipe: Recipe, total: int) -> Recipe:
    """Set the total iteration count, scaling each stage proportionally.

    Stage counts are rounded by the largest-remainder method so they sum to ``total``;
    schedules (``when``) are left as written, in stage iterations.
    """
    if not 0 <= total <= MAX_ITERATIONS:
        raise RecipeError(f"--iterations {total}: expected a count from 0 to {MAX_ITERATIONS}")
    old = [s.iterations for s in recipe.stage]
    base = sum(old)
    shares = [total * n / base for n in old] if base else [total / len(old)] * len(old)
    counts = [int(math.floor(s)) for s in shares]
    order = sorted(range(len(old)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    out = recipe.model_copy(deep=True)
    for stage, n in zip(out.stage, counts):
        stage.iterations = n
    return out


def resolved(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe (defaults filled in) as JSON-able data."""
    return recipe.model_dump(mode="json")
