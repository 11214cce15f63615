"""A package that declares ptycli entry points is used without changing ptycli: a reader,
an engine and a constraint from a throw-away package (a module plus its
``*.dist-info/entry_points.txt`` on the path, which importlib.metadata discovers as an
installed distribution), run in a fresh interpreter so nothing leaks into other tests."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from _helpers import run_with_plugin_package

PLUGIN = '''
import numpy as np
from pydantic import BaseModel, Field

from ptycli.constraints.base import ConstraintParams, ConstraintSpec
from ptycli.engines.registry import EngineSpec
from ptycli.readers import register
from ptycli.readers.base import source_from_array

CALLS = {"update": 0, "constraint": 0}


@register("demo", (".demo",))
def open_demo(path, **_):
    """8x8 little-endian uint16 frames, nothing else."""
    arr = np.fromfile(path, dtype="<u2").reshape(-1, 8, 8)
    return source_from_array(path, "demo", arr)


class NoopParams(BaseModel):
    model_config = {"extra": "forbid"}
    damping: float = Field(0.5, gt=0)


class NoopEngine:
    def __init__(self, stage, ctx, state):
        self.params = stage.plugin_params()

    def update(self, state, idx, data, it):
        CALLS["update"] += 1
        return 0.0

    def state_dict(self):
        return {}

    def load_state_dict(self, d):
        pass


class TouchParams(ConstraintParams):
    factor: float = 1.0


def touch(state, params, ctx):
    CALLS["constraint"] += 1
    return state


ENGINE = EngineSpec("noop", NoopParams, NoopEngine, "does nothing (plugin test)")
CONSTRAINT = ConstraintSpec("touch", TouchParams, touch, (), "counts its calls (plugin test)")
'''

ENTRY_POINTS = '''
[ptycli.readers]
demo = ptycli_demo_plugin

[ptycli.engines]
noop = ptycli_demo_plugin:ENGINE

[ptycli.constraints]
touch = ptycli_demo_plugin:CONSTRAINT
'''

SCRIPT = '''
import json, sys
import numpy as np
from pathlib import Path
tmp = Path(sys.argv[1])
out = {}
from ptycli.readers import formats, open_raw
frames = np.arange(3 * 64, dtype="<u2").reshape(3, 8, 8)
frames.tofile(tmp / "x.demo")
with open_raw(tmp / "x.demo") as src:
    out["reader"] = [src.format, src.n_frames, int(src.read(0, 3).sum())]
out["formats"] = "demo" in formats()
from ptycli.recipe import validate
try:
    validate({"recipe": "ptycli/1", "stage": [{"type": "noop", "damping": -1}]})
except Exception as exc:
    out["bad_param"] = str(exc)
from ptycli.stages import init, reconstruct, simulate
data = simulate.run(tmp / "d.zarr", scan_shape=(3, 3), seed=1)
state = init.run(data, tmp / "s.zarr")
(tmp / "r.toml").write_text(
    'recipe = "ptycli/1"\\n[[stage]]\\ntype = "noop"\\niterations = 2\\ndamping = 0.25\\n'
    '[[stage.constraints]]\\ntype = "touch"\\nfactor = 2.0\\n')
reconstruct.run(data, state, tmp / "o.zarr", recipe=str(tmp / "r.toml"))
import ptycli_demo_plugin as p
out["calls"] = p.CALLS
print(json.dumps(out))
'''


def test_plugin_package_is_used_without_code_changes(tmp_path):
    proc = run_with_plugin_package(tmp_path, "ptycli_demo_plugin", PLUGIN, textwrap.dedent(ENTRY_POINTS), SCRIPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["reader"] == ["demo", 3, int(np.arange(3 * 64).sum())]
    assert out["formats"]
    assert "stage.0" in out["bad_param"] and "damping" in out["bad_param"]
    assert out["calls"]["update"] > 0 and out["calls"]["constraint"] == 2  # one per iteration


def test_without_the_package_the_names_are_unknown():
    from ptycli.errors import RecipeError
    from ptycli.recipe import validate

    with pytest.raises(RecipeError, match=r"stage\.0\.type: unknown engine 'noop'"):
        validate({"recipe": "ptycli/1", "stage": [{"type": "noop"}]})
    with pytest.raises(RecipeError, match=r"stage\.0\.constraints\.0\.type: unknown constraint 'touch'"):
        validate({"recipe": "ptycli/1", "stage": [{"type": "lsqml", "constraints": [{"type": "touch"}]}]})
