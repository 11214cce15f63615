"""The search-space schema: clean errors naming the key, parameter split, TOML output."""

import pytest

from ptycli.errors import RecipeError
from ptycli.recipe import parse_toml, validate
from ptycli.stages import tune_report, tune_space

RECIPE = {"recipe": "ptycli/1", "stage": [{"type": "gradient", "iterations": 4,
                                           "learning_rate": {"object": 0.01}}]}


def _load(tmp_path, text):
    p = tmp_path / "space.toml"
    p.write_text(text)
    return tune_space.load_space(p, RECIPE)


def test_valid_space_and_defaults(tmp_path):
    sp = _load(tmp_path, """
[param.defocus_a]
low = 0.0
high = 200.0
[param."stage.0.learning_rate.object"]
low = 1e-3
high = 1e-1
log = true
[param."stage.0.grouping.kind"]
type = "categorical"
choices = ["sparse", "compact"]
[param.slices]
type = "int"
low = 1
high = 4
""")
    assert sp.study.trials == 30 and sp.study.sampler == "tpe" and sp.study.pruner == "hyperband"
    assert sp.init_keys == ["defocus_a", "slices"]
    overrides, init = tune_space.split_params({"defocus_a": 50.0, "stage.0.learning_rate.object": 0.02,
                                              "stage.0.grouping.kind": "compact"})
    assert overrides == ["stage.0.learning_rate.object=0.02", 'stage.0.grouping.kind="compact"']
    assert init == {"defocus_a": 50.0}


@pytest.mark.parametrize("text, match", [
    ('[param."stage.0.learning_rate.object"]\nlow = 0.0\nhigh = 1.0\nlog = true\n',
     r'param\."stage\.0\.learning_rate\.object": Value error, log = true needs low > 0'),
    ('[param.defocus_a]\nlow = 5.0\nhigh = 1.0\n', r"param\.defocus_a: Value error, low 5\.0 must be < high"),
    ('[param.defocus_a]\nlow = 0.0\nhigh = 1.0\nlg = true\n', r"param\.defocus_a\.lg: Extra inputs"),
    ('[param.focus]\nlow = 0.0\nhigh = 1.0\n', r'param\."focus": unknown key'),
    ('[param."stage.0.learning_rate.objekt"]\nlow = 0.1\nhigh = 1.0\n',
     r'param\."stage\.0\.learning_rate\.objekt": value 0\.1 makes the recipe invalid'),
    ('[param."stage.0.iterations"]\ntype = "int"\nlow = -3\nhigh = 2\n', r'param\."stage\.0\.iterations"'),
    ('[param.slices]\nlow = 1.0\nhigh = 3.0\n', r'slices is a count; use type = "int"'),
    ('[param.x]\ntype = "categorical"\n', r"param\.x: Value error, categorical needs"),
    ('[study]\nsampler = "cmaes"\n[param.defocus_a]\nlow = 0.0\nhigh = 1.0\n', r"study\.sampler"),
    ("", r"param: Field required"),
])
def test_errors_name_the_key(tmp_path, text, match):
    with pytest.raises(RecipeError, match=match):
        _load(tmp_path, text)


def test_toml_dump_round_trips_a_recipe():
    data = {"recipe": "ptycli/1", "description": 'say "hi"', "seed": 3,
            "stage": [{"type": "lsqml", "iterations": 5, "grouping": {"kind": "sparse", "size": 16},
                       "refine": {"object": True, "probe": {"after": 1, "every": 2}},
                       "constraints": [{"type": "fix_probe_intensity"}, {"type": "x", "w": [1.5, 2.0]}]},
                      {"type": "gradient", "iterations": 2, "learning_rate": {"object": 1e-3}}]}
    text = tune_report.dump_toml(data)
    assert parse_toml(text, "dump") == data


def test_best_recipe_applies_params_and_stays_valid():
    best = {"number": 7, "value": 0.125, "params": {"stage.0.learning_rate.object": 0.05, "defocus_a": 81.5},
            "state": "T/trials/0007/state0.zarr"}
    text = tune_report.best_recipe_toml(RECIPE, best, "r.toml")
    rec = validate(parse_toml(text, "best"), "best")
    assert rec.stage[0].learning_rate.object == 0.05 and rec.stage[0].iterations == 4
    assert "--defocus-a 81.5" in text and "trial 7" in text
