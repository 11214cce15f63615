"""A package that declares a ``ptycli.noise_models`` entry point adds a noise model that
recipes name like a built-in one (issue 24). The throw-away package is a module plus its
``*.dist-info/entry_points.txt`` on the path, run in a fresh interpreter (as in
test_plugins.py). Oracle: the plugin re-states the amplitude model's ℓ and ℓ', so a run with
it must give the loss history of the built-in amplitude model run through the same
array-API code (``PTYCLI_KERNELS=0``), to float32 rounding; and a model scaled by 2 must give
twice the first loss (one group per iteration: iteration 0's loss is the starting state's).
"""

from __future__ import annotations

import json

import pytest
from _helpers import run_with_plugin_package

PLUGIN = '''
from ptycli import backend
from ptycli.engines.noise import NoiseModelSpec


def _loss(I, D, eps, scale=1.0):
    xp = backend.namespace(I, D)
    return scale * (xp.sqrt(I) - xp.sqrt(D)) ** 2


def _dloss(I, D, eps, scale=1.0):
    xp = backend.namespace(I, D)
    return scale * (1.0 - xp.sqrt(D) / (xp.sqrt(I) + eps))


SPECS = [
    NoiseModelSpec("root-gaussian", _loss, _dloss, default_eps=1e-6),
    NoiseModelSpec("double-root", lambda I, D, e: _loss(I, D, e, 2.0), lambda I, D, e: _dloss(I, D, e, 2.0),
                   default_eps=1e-6),
]
'''

SCRIPT = r'''
import json, sys
from pathlib import Path
import zarr
from ptycli import backend
from ptycli.errors import RecipeError
from ptycli.recipe import validate
from ptycli.stages import init, reconstruct, simulate

root = Path(sys.argv[1])
simulate.run(root / "d.zarr", preset="demo", scan_shape=(6, 6))
init.run(root / "d.zarr", root / "s.zarr")
losses = {}
for model in ("root-gaussian", "double-root", "amplitude"):
    # one group: iteration 0's loss is the loss of the starting state, before any update
    over = ["stage.0.iterations=2", "stage.0.grouping.size=64", f"stage.0.noise.model={model}"]
    if model == "amplitude":
        backend.set_kernels(False)  # the same array-API code the plugin runs on
    reconstruct.run(root / "d.zarr", root / "s.zarr", root / f"{model}.zarr", recipe="lsqml", overrides=over,
                    device="cpu")
    backend.set_kernels(True)
    losses[model] = [float(v) for v in zarr.open_group(str(root / f"{model}.zarr"), mode="r")["history/loss"][...]]
try:
    validate({"recipe": "ptycli/1", "stage": [{"type": "lsqml", "noise": {"model": "nope"}}]})
    bad = ""
except RecipeError as exc:
    bad = str(exc)
print(json.dumps({"losses": losses, "bad": bad, "kernels_after": backend._kernels_mode}))
'''

ENTRY_POINTS = "[ptycli.noise_models]\nroot = ptycli_noise_plugin:SPECS\n"


@pytest.mark.slow
def test_plugin_noise_model_is_named_in_recipes_and_runs(tmp_path):
    proc = run_with_plugin_package(tmp_path, "ptycli_noise_plugin", PLUGIN, ENTRY_POINTS, SCRIPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    plugin, builtin, double = out["losses"]["root-gaussian"], out["losses"]["amplitude"], out["losses"]["double-root"]
    assert plugin == pytest.approx(builtin, rel=1e-4)  # the same model through the plugin seam
    assert double[0] == pytest.approx(2 * builtin[0], rel=1e-3) and double[1] < double[0]
    assert "stage.0.noise.model" in out["bad"] and "root-gaussian" in out["bad"]  # the key and the choices
    assert out["kernels_after"] == "auto"  # the array path was only for the plugin's runs


def test_unknown_noise_model_names_the_key_and_the_built_in_choices():
    from ptycli.errors import RecipeError
    from ptycli.recipe import validate

    with pytest.raises(RecipeError, match=r"stage\.0\.noise\.model.*amplitude, intensity, poisson, anscombe"):
        validate({"recipe": "ptycli/1", "stage": [{"type": "lsqml", "noise": {"model": "gaussian"}}]})
