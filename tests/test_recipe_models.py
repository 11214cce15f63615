"""Recipes: validation with key paths, overrides, iteration scaling, shipped recipes, CLI."""

import json
from pathlib import Path

import pytest

from ptycli.errors import RecipeError
from ptycli.recipe import (
    GradientStage,
    LsqmlStage,
    apply_override,
    load_recipe,
    scale_iterations,
    shipped_recipes,
    validate,
)
from ptycli.stages import validate as validate_stage

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("quick", "single-slice", "multislice", "mixed-state", "low-dose", "epie", "lsqml", "gradient")


def _recipe(**stage):
    return {"recipe": "ptycli/1", "stage": [{"type": "lsqml", "iterations": 30}, {"type": "gradient", **stage}]}


def test_discriminated_union_and_defaults():
    rec = validate(_recipe(iterations=10))
    assert isinstance(rec.stage[0], LsqmlStage) and isinstance(rec.stage[1], GradientStage)
    assert rec.stage[0].delta == 0.1 and rec.stage[0].beta_lsq == 0.9  # physics.md §6.3
    assert rec.stage[1].learning_rate.object == 1e-2 and rec.total_iterations == 40


@pytest.mark.parametrize("stage,path", [
    ({"learning_rate": {"object": "fast"}}, "stage.1.learning_rate.object"),
    ({"learning_rat": 1}, "stage.1.learning_rat"),
    ({"grouping": {"kind": "spiral"}}, "stage.1.grouping.kind"),
    ({"iterations": -1}, "stage.1.iterations"),
])
def test_errors_name_the_key_path(stage, path):
    with pytest.raises(RecipeError) as exc:
        validate(_recipe(**stage), "r.toml")
    assert f"r.toml: {path}:" in str(exc.value)


def test_unknown_engine_and_version_rejected():
    with pytest.raises(RecipeError, match="stage.0"):
        validate({"recipe": "ptycli/1", "stage": [{"type": "magic"}]})
    with pytest.raises(RecipeError, match="ptycli/1"):
        validate({"recipe": "ptycli/2", "stage": [{"type": "lsqml"}]})


def test_constraints_validated_through_registry():
    bad = _recipe(iterations=1, constraints=[{"type": "fix_probe_intensity", "count": 3}])
    with pytest.raises(RecipeError, match=r"stage\.1\.constraints\.0.*count"):
        validate(bad)
    with pytest.raises(RecipeError, match=r"stage\.1\.constraints\.0\.type: unknown"):
        validate(_recipe(constraints=[{"type": "nope"}]))
    ok = validate(_recipe(constraints=[{"type": "orthogonalize_probe", "when": {"after": 2, "every": 3}}]))
    assert ok.stage[1].constraints[0].when.active(5) and not ok.stage[1].constraints[0].when.active(4)


def test_set_override_parses_toml_values():
    data = _recipe(iterations=10)
    out = apply_override(data, "stage.1.learning_rate.object=5e-3")
    out = apply_override(out, "stage.0.grouping.kind=compact")
    assert out["stage"][1]["learning_rate"]["object"] == 5e-3 and out["stage"][0]["grouping"]["kind"] == "compact"
    assert data["stage"][1] == {"type": "gradient", "iterations": 10}  # input untouched
    with pytest.raises(RecipeError, match="no such list index"):
        apply_override(data, "stage.5.iterations=1")
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        apply_override(data, "stage.0.iterations")


def test_iterations_scale_proportionally_and_sum_exactly():
    rec = validate(_recipe(iterations=10))  # 30 + 10
    assert [s.iterations for s in scale_iterations(rec, 8).stage] == [6, 2]
    assert [s.iterations for s in scale_iterations(rec, 7).stage] == [5, 2]  # 5.25 + 1.75
    assert sum(s.iterations for s in scale_iterations(rec, 101).stage) == 101


def test_when_coercions():
    rec = validate(_recipe(refine={"probe": 3, "positions": True, "object": False}))
    r = rec.stage[1].refine
    assert not r.probe.active(2) and r.probe.active(3) and r.positions.active(0) and not r.object.active(0)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_valid_and_identical_to_repo_copy(name):
    rec = load_recipe(name)
    assert rec.total_iterations > 0
    packaged = shipped_recipes()[name].read_text()
    assert (REPO / "recipes" / f"{name}.toml").read_text() == packaged, "recipes/ and ptycli/recipes_data/ differ"


def test_exactly_the_shipped_names():
    assert set(SHIPPED) <= set(shipped_recipes())
    assert {p.stem for p in (REPO / "recipes").glob("*.toml")} == set(shipped_recipes())


def test_print_resolved_round_trips():
    summary = validate_stage.run("single-slice")
    text = validate_stage.to_toml(summary["resolved"])
    import tomllib

    again = validate(tomllib.loads(text))
    assert again.model_dump() == load_recipe("single-slice").model_dump()


def test_cli_validate(cli, tmp_path):
    ok = cli("validate", "quick", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["valid"] is True
    bad = tmp_path / "bad.toml"
    bad.write_text('recipe = "ptycli/1"\n[[stage]]\ntype = "lsqml"\nbeta_lsq = 2\n')
    res = cli("validate", bad)
    assert res.exit_code == 3 and "stage.0.beta_lsq" in res.stderr and res.stdout == ""
    res = cli("validate", "quick", "--set", "stage.0.iterations=3", "--print-resolved")
    assert res.exit_code == 0 and "iterations = 3" in res.stdout
