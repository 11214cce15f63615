"""`--recipe auto`: the recipe picked from the data's dose and the state's slices and modes."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from _helpers import demo_stores

from ptycli.errors import RecipeError
from ptycli.recipe import NEVER, AutoInputs, auto_choice, load_recipe
from ptycli.stages.preprocess_ops import dark_field_fraction


@pytest.mark.parametrize("inputs, name, noise", [
    (AutoInputs(2e3, 1, 1), "low-dose", "poisson"),
    (AutoInputs(2e4, 1, 1), "single-slice", "poisson"),  # the recipe's own noise model
    (AutoInputs(None, 1, 1), "single-slice", "poisson"),
    (AutoInputs(1e5, 10, 1), "multislice", "poisson"),  # with its diffuse background
    (AutoInputs(1e3, 13, 1), "low-dose", "poisson"),
    (AutoInputs(1e5, 1, 3), "mixed-state", "amplitude"),
    (AutoInputs(5e3, 4, 2), "mixed-state", "poisson"),
    (AutoInputs(5e4, 2, 1, 0.032), "single-slice", "poisson"),  # weak scatterer (MoS2 bilayer)
    (AutoInputs(1e5, 5, 1, 0.068), "multislice", "poisson"),  # SrTiO3
    (AutoInputs(1e5, 5, 1, None), "multislice", "poisson"),  # share not measurable
    (AutoInputs(5e3, 18, 1, 0.007), "low-dose", "poisson"),  # the dose rule first
])
def test_auto_picks_by_modes_slices_and_dose(inputs, name, noise):
    picked, _, why = auto_choice(inputs)
    assert picked == name and name in why
    rec = load_recipe("auto", auto=inputs)
    # the object-and-probe stages; single-slice's first stage fits only the probe's aberrations
    # (L-BFGS, the amplitude model, as measured on the corpus) and takes Poisson only at low dose
    fitted = [s for s in rec.stage if not (s.type == "lbfgs" and s.refine.probe == NEVER)]
    assert {s.noise.model for s in fitted} == {noise}
    assert rec.description.startswith(f"auto: {name}")
    # the user's --set wins over what auto set
    other = "amplitude" if noise == "poisson" else "poisson"  # the two models a background allows
    rec = load_recipe("auto", [f'stage.0.noise.model="{other}"'], auto=inputs)
    assert rec.stage[0].noise.model == other


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


def _pattern(n, radius, dark):
    """A disk of ones (radius px) centred in n x n pixels, plus ``dark`` counts spread evenly
    over the pixels beyond 1.5 radii."""
    yy, xx = np.indices((n, n))
    r = np.hypot(yy - n // 2, xx - n // 2)
    mean = (r <= radius).astype(float)
    ring = r > 1.5 * radius
    mean[ring] = dark / ring.sum()
    return mean


def test_dark_field_fraction_of_a_pattern():
    disk = float((_pattern(96, 16, 0.0) > 0).sum())
    mean = _pattern(96, 16, dark=0.1 * disk / 0.9)  # 10 % of the counts outside
    assert dark_field_fraction(mean) == pytest.approx(0.10, abs=0.005)
    assert dark_field_fraction(_pattern(96, 16, 0.0)) == pytest.approx(0.0, abs=1e-12)
    # a detector that ends before two disk radii cannot tell a weak scatterer: None
    assert dark_field_fraction(_pattern(48, 16, 10.0)) is None


def test_auto_reads_the_share_from_the_data_store(tmp_path):
    from ptycli.stages import auto_recipe

    root, data, state = demo_stores(tmp_path, scan_shape=(6, 6))
    inputs = auto_recipe.inputs_of(data, state)
    pats = zarr.open_group(str(data), mode="r")["patterns"]
    assert "mean_pattern" not in zarr.open_group(str(data), mode="r")  # simulated: sampled frames
    assert inputs.dark_field_fraction == pytest.approx(dark_field_fraction(pats[...].mean(axis=0)), rel=1e-6)
