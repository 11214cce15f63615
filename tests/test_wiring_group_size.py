"""``grouping.size = "auto"`` / ``--group-size auto|N``: the run uses the group size and
streaming of ``engines.data.plan_memory`` within the memory budget, records them, and
``--resume`` reuses the recorded plan (same groups even with another budget)."""

import json
import math

import numpy as np
import pytest
import zarr
from _helpers import demo_stores

from ptycli import backend
from ptycli.engines import data as data_mod
from ptycli.errors import Interrupted, RecipeError, UsageError
from ptycli.recipe import load_recipe
from ptycli.stages import reconstruct
from ptycli.stages import reconstruct_group_plan as group_plan
from ptycli.store.io import open_store
from ptycli.store.state import load_state

RECIPE = """
recipe = "ptycli/1"
[[stage]]
type = "gradient"
iterations = 3
grouping = {kind = "random", size = "auto"}
refine = {probe = 1}
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return demo_stores(tmp_path_factory.mktemp("auto"), {"r.toml": RECIPE}, scan_shape=(6, 6), detector_size=32)


def _budget_for(state_path, group):
    """A budget in which ``plan_memory`` picks a streamed group of ``group`` positions."""
    st = load_state(open_store(state_path, "state"))
    est = data_mod.plan_memory(st, backend.get_xp("cpu"), "single", budget_bytes=2**40)["estimate"]
    frame = est["patterns"] // len(st.positions)
    return est["fixed"] + group * (est["per_position"] + 2 * frame) + 100


class Groups:
    def __init__(self):
        self.n_groups = set()

    def on_batch_end(self, si, it, gi, n_groups):
        self.n_groups.add(n_groups)


def _arrays(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][...]) for k in ("object", "probe", "history/loss")}


def test_recipe_accepts_auto_or_a_positive_int():
    assert load_recipe("quick", ["stage.0.grouping.size=auto"], None).stage[0].grouping.size == "auto"
    assert load_recipe("quick", ["stage.0.grouping.size=7"], None).stage[0].grouping.size == 7
    for bad in ("0", "big", "-3"):
        with pytest.raises(RecipeError, match="size"):
            load_recipe("quick", [f"stage.0.grouping.size={bad}"], None)


def test_group_size_option_parses_and_applies_to_every_stage():
    rec = load_recipe("quick", [], None)
    for value, want in (("auto", "auto"), ("AUTO", "auto"), ("12", 12), (5, 5)):
        assert {s.grouping.size for s in group_plan.with_group_size(rec, value).stage} == {want}
    assert group_plan.with_group_size(rec, None) is rec
    for bad in ("0", "x", "-1", "2.5"):
        with pytest.raises(UsageError, match="--group-size"):
            group_plan.with_group_size(rec, bad)


def test_auto_uses_the_planned_group_and_equals_the_explicit_size(small):
    root, data, state = small
    budget = _budget_for(state, 10)
    st = load_state(open_store(state, "state"))
    plan = data_mod.plan_memory(st, backend.get_xp("cpu"), "single", budget_bytes=budget)
    assert plan["group_size"] == 10 and plan["stream"]  # the budget is tight enough to matter
    seen = Groups()
    auto = reconstruct.run(data, state, root / "auto.zarr", recipe=root / "r.toml", device="cpu",
                           memory_budget_bytes=budget, observers=[seen])
    assert auto["group_plan"] == {"group_size": 10, "stream": True, "budget_bytes": budget}
    assert seen.n_groups == {math.ceil(36 / 10)}
    attrs = zarr.open_group(str(root / "auto.zarr"), mode="r").attrs
    assert attrs["group_plan"]["group_size"] == 10
    assert attrs["recipe"]["stage"][0]["grouping"]["size"] == "auto"  # the recipe as written
    explicit = root / "explicit.zarr"
    reconstruct.run(data, state, explicit, recipe=root / "r.toml", device="cpu", group_size=10, stream=True,
                    memory_budget_bytes=budget)
    a, b = _arrays(root / "auto.zarr"), _arrays(explicit)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_reuses_the_recorded_plan(small):
    root, data, state = small
    budget = _budget_for(state, 10)
    full = root / "full.zarr"
    reconstruct.run(data, state, full, recipe=root / "r.toml", device="cpu", memory_budget_bytes=budget)
    out = root / "cut.zarr"

    class StopAfterIteration:
        def on_iteration_end(self, *args):
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted):
        reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", memory_budget_bytes=budget,
                        observers=[StopAfterIteration()])
    # A budget 8x larger would plan another group size; the resumed run keeps the recorded one.
    seen = Groups()
    summary = reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", resume=True,
                              memory_budget_bytes=8 * budget, observers=[seen])
    assert summary["group_plan"]["group_size"] == 10 and seen.n_groups == {4}
    a, b = _arrays(full), _arrays(out)
    for key in ("object", "probe"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_allclose(a["history/loss"], b["history/loss"], rtol=1e-12)


def test_cli_group_size(cli, small, tmp_path):
    _, data, state = small
    r = cli("reconstruct", data, state, "-o", tmp_path / "o.zarr", "--recipe", "quick", "--set",
            "stage.0.iterations=1", "--group-size", "auto", "--device", "cpu", "--json", "--progress", "none")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["group_plan"]["group_size"] == 36 and doc["group_plan"]["stream"] is False  # 2 GB: all fit
    bad = cli("reconstruct", data, state, "-o", tmp_path / "p.zarr", "--group-size", "many", "--device", "cpu")
    assert bad.exit_code == 2 and "--group-size" in bad.stderr and not (tmp_path / "p.zarr").exists()
