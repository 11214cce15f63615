"""Cost regularisers in recipes (``[[stage.regularisers]]``) reach the gradient and lbfgs engines.

Oracles: validation names the bad key path; an inactive term (``when`` after the last
iteration) leaves a deterministic lbfgs run bit-identical; a strong TV term lowers the
object's total variation relative to the same run without it, in both engines; engines
without cost terms or extra variables (epie, lsqml) reject them.
"""

import numpy as np
import pytest
import zarr

from ptycli.errors import RecipeError
from ptycli.recipe import validate
from ptycli.stages import init, reconstruct, simulate


def _recipe(engine, iterations, regularisers=(), **extra):
    stage = {"type": engine, "iterations": iterations, "refine": {"object": True, "probe": 1}, **extra}
    stage["regularisers"] = list(regularisers)
    return validate({"recipe": "ptycli/1", "stage": [stage]})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    simulate.run(root / "d.zarr", preset="demo", scan_shape=(8, 8))
    init.run(root / "d.zarr", root / "s.zarr")
    return root


def _tv(path):
    phase = np.angle(zarr.open_group(str(path), mode="r")["object"][0, 0])
    return float(np.abs(np.diff(phase, axis=0)).sum() + np.abs(np.diff(phase, axis=1)).sum())


def test_recipe_errors_name_the_regulariser_key():
    with pytest.raises(RecipeError, match=r"stage\.0\.regularisers\.1\.weight"):
        _recipe("lbfgs", 2, [{"type": "tv", "weight": 1.0}, {"type": "tikhonov", "weight": "heavy"}])
    with pytest.raises(RecipeError, match=r"stage\.0\.regularisers\.0\.type: unknown regulariser 'tvv'"):
        _recipe("gradient", 2, [{"type": "tvv"}])
    with pytest.raises(RecipeError, match=r"stage\.0\.regularisers\.0.*axes"):
        _recipe("lbfgs", 2, [{"type": "position_acceleration", "axes": "diagonal"}])


@pytest.mark.parametrize("engine", ["epie", "lsqml"])
def test_engines_without_cost_terms_reject_them(engine):
    with pytest.raises(RecipeError, match="regularisers"):
        _recipe(engine, 2, [{"type": "tv"}])
    with pytest.raises(RecipeError, match=r"refine.*tilts"):
        validate({"recipe": "ptycli/1", "stage": [{"type": engine, "refine": {"tilts": 2}}]})


def test_inactive_regulariser_changes_nothing(demo):
    kw = {"device": "cpu"}
    reconstruct.run(demo / "d.zarr", demo / "s.zarr", demo / "plain.zarr", recipe=_recipe("lbfgs", 4), **kw)
    late = _recipe("lbfgs", 4, [{"type": "tv", "weight": 50.0, "when": {"after": 10}}])
    reconstruct.run(demo / "d.zarr", demo / "s.zarr", demo / "late.zarr", recipe=late, **kw)
    a = zarr.open_group(str(demo / "plain.zarr"), mode="r")["object"][...]
    b = zarr.open_group(str(demo / "late.zarr"), mode="r")["object"][...]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("engine, extra", [("lbfgs", {}), ("gradient", {"grouping": {"kind": "random", "size": 64}})])
def test_tv_term_smooths_the_object(demo, engine, extra):
    plain = _recipe(engine, 6, **extra)
    tv = _recipe(engine, 6, [{"type": "tv", "weight": 2000.0, "part": "phase"}], **extra)
    reconstruct.run(demo / "d.zarr", demo / "s.zarr", demo / f"{engine}-plain.zarr", recipe=plain, device="cpu")
    reconstruct.run(demo / "d.zarr", demo / "s.zarr", demo / f"{engine}-tv.zarr", recipe=tv, device="cpu")
    tv_plain, tv_reg = _tv(demo / f"{engine}-plain.zarr"), _tv(demo / f"{engine}-tv.zarr")
    print(f"{engine}: phase TV {tv_plain:.4g} without, {tv_reg:.4g} with the TV term")
    assert tv_reg < 0.9 * tv_plain
