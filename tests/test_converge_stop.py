"""A stage's `converge` rule: it ends once its loss stops falling (recipe key `converge`).

Oracles: the rule on hand-made loss histories (flat, rising, falling, other stages, the
window and `after` bounds); a real run with a rule that must fire stops after exactly
`window` iterations, records why, reports it on the CLI and resumes to the same place."""

import json

import numpy as np
import pytest
import zarr

from ptycli.engines import loop
from ptycli.errors import Interrupted, RecipeError
from ptycli.recipe import load_recipe
from ptycli.stages import reconstruct
from _helpers import SignalAtBatch, demo_stores

RECIPE = """
recipe = "ptycli/1"
[[stage]]
type = "lsqml"
iterations = 8
grouping = {kind = "sparse", size = 16}
converge = {loss_change = 0.5, window = 2}
[[stage]]
type = "gradient"
iterations = 2
grouping = {kind = "random", size = 12}
"""


def _load(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return load_recipe(path)


def _stage(tmp_path, loss_change=1e-3, window=3, after=0):
    rule = f"converge = {{loss_change = {loss_change}, window = {window}, after = {after}}}"
    return _load(tmp_path, RECIPE.replace("converge = {loss_change = 0.5, window = 2}", rule)).stage[0]


def test_rule_on_loss_histories(tmp_path):
    st = _stage(tmp_path, loss_change=1e-3, window=3)
    flat = loop.History(loss=[100.0, 99.99, 99.98, 99.97], stage=[0] * 4)
    assert loop._converged(flat, 0, 4, st)  # 0.01 % per iteration < 0.1 %
    assert "converged" in flat.early_stop[0]["reason"] and flat.early_stop[0]["iteration"] == 4
    assert loop._converged(flat, 0, 4, st) and len(flat.early_stop) == 1  # recorded once
    rising = loop.History(loss=[100.0, 101.0, 102.0, 103.0], stage=[0] * 4)
    assert loop._converged(rising, 0, 4, st)
    falling = loop.History(loss=[100.0, 98.0, 96.0, 94.0], stage=[0] * 4)
    assert not loop._converged(falling, 0, 4, st)  # 2 % per iteration
    short = loop.History(loss=[100.0, 100.0, 100.0], stage=[0] * 3)
    assert not loop._converged(short, 0, 3, st)  # needs window + 1 losses of the stage
    other = loop.History(loss=[100.0] * 4 + [50.0, 40.0], stage=[0] * 4 + [1] * 2)
    assert not loop._converged(other, 1, 2, st)  # stage 1 has two losses only
    assert not loop._converged(flat, 0, 4, _stage(tmp_path, window=3, after=6))  # not before `after`
    nan = loop.History(loss=[100.0, 100.0, 100.0, float("nan")], stage=[0] * 4)
    assert not loop._converged(nan, 0, 4, st)  # non-finite losses are the back-off's business
    assert not loop._converged(flat, 0, 4, st.model_copy(update={"converge": None}))


@pytest.mark.parametrize("bad, key", [("loss_change = 0", "loss_change"), ("loss_change = 1e-3, window = 0", "window"),
                                      ("loss_change = 1e-3, patience = 2", "patience")])
def test_bad_rule_names_the_key(tmp_path, bad, key):
    with pytest.raises(RecipeError, match=key):
        _load(tmp_path, RECIPE.replace("loss_change = 0.5, window = 2", bad))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return demo_stores(tmp_path_factory.mktemp("converge"), {"r.toml": RECIPE}, scan_shape=(8, 8))


def test_run_stops_the_stage_and_records_why(small, cli):
    """Falls under 50 % per iteration come within a few of the 8 iterations on the demo."""
    root, data, state = small
    res = cli("reconstruct", data, state, "-o", root / "cv.zarr", "--recipe", root / "r.toml", "--device", "cpu",
              "--json", "--progress", "lines")
    out = json.loads(res.stdout)
    rec = out["early_stop"][0]
    n0 = rec["iteration"]
    assert rec["stage"] == 0 and 2 <= n0 < 8 and "converged" in rec["reason"]
    assert out["iterations"] == n0 + 2  # stage 1 runs whole
    assert f"stage 0 ended at iteration {n0}: converged" in res.stderr
    h = zarr.open_group(str(root / "cv.zarr"), mode="r")["history"]
    loss = h["loss"][...][:n0]
    assert list(h["stage"][...]) == [0] * n0 + [1, 1]
    assert (loss[n0 - 3] - loss[n0 - 1]) / (2 * loss[n0 - 1]) < 0.5  # the rule held when it stopped
    assert h.attrs["history"]["early_stop"] == out["early_stop"]


def test_resume_stops_at_the_same_place(small):
    root, data, state = small
    kw = {"recipe": root / "r.toml", "device": "cpu", "seed": 3}
    full = reconstruct.run(data, state, root / "full.zarr", **kw)
    with pytest.raises(Interrupted):
        reconstruct.run(data, state, root / "cut.zarr", observers=[SignalAtBatch(5)], **kw)
    resumed = reconstruct.run(data, state, root / "cut.zarr", resume=True, **kw)
    assert resumed["iterations"] == full["iterations"] < 8 + 2
    assert resumed["early_stop"] == full["early_stop"]
    a = zarr.open_group(str(root / "full.zarr"), mode="r")
    b = zarr.open_group(str(root / "cut.zarr"), mode="r")
    np.testing.assert_allclose(b["object"][...], a["object"][...], rtol=0, atol=1e-5)
