"""`--recipe auto`: the recipe picked from the data's dose and the state's slices and modes."""

from __future__ import annotations

import pytest
from _helpers import demo_stores

from ptycli.errors import RecipeError
from ptycli.recipe import AutoInputs, auto_choice, load_recipe


@pytest.mark.parametrize("inputs, name, noise", [
    (AutoInputs(2e3, 1, 1), "low-dose", "poisson"),
    (AutoInputs(2e4, 1, 1), "single-slice", "poisson"),  # the recipe's own noise model
    (AutoInputs(None, 1, 1), "single-slice", "poisson"),
    (AutoInputs(1e5, 10, 1), "multislice", "amplitude"),
    (AutoInputs(1e3, 13, 1), "low-dose", "poisson"),
    (AutoInputs(1e5, 1, 3), "mixed-state", "amplitude"),
    (AutoInputs(5e3, 4, 2), "mixed-state", "poisson"),
])
def test_auto_picks_by_modes_slices_and_dose(inputs, name, noise):
    picked, _, why = auto_choice(inputs)
    assert picked == name and name in why
    rec = load_recipe("auto", auto=inputs)
    assert {s.noise.model for s in rec.stage} == {noise}
    assert rec.description.startswith(f"auto: {name}")
    # the user's --set wins over what auto set
    rec = load_recipe("auto", ['stage.0.noise.model="anscombe"'], auto=inputs)
    assert rec.stage[0].noise.model == "anscombe"


def test_auto_without_stores_names_what_it_needs(cli):
    with pytest.raises(RecipeError, match="--data DATA --state STATE"):
        load_recipe("auto")
    res = cli("validate", "auto")
    assert res.exit_code == 3 and "recipe 'auto'" in res.stderr


def test_validate_and_reconstruct_auto_from_the_stores(cli, tmp_path):
    root, data, state = demo_stores(tmp_path, scan_shape=(6, 6))
    res = cli("validate", "auto", "--data", data, "--state", state, "--print-resolved")
    assert res.exit_code == 0, res.stderr
    assert 'description = "auto: single-slice (1 slice, ' in res.stdout
    res = cli("reconstruct", data, state, "-o", tmp_path / "o.zarr", "--recipe", "auto", "--iterations", "2",
              "--json", "--progress", "none")
    assert res.exit_code == 0, res.stderr
    assert '"iterations": 2' in res.stdout
