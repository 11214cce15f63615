"""Held-out validation positions, their per-iteration loss, early stopping, exact resume."""


import numpy as np
import pytest
import zarr

from ptycli.engines import loop
from ptycli.errors import Interrupted, RecipeError, UsageError
from ptycli.stages import reconstruct, reconstruct_validation
from _helpers import SignalAtBatch, demo_stores

RECIPE = """
recipe = "ptycli/1"
[[stage]]
type = "lsqml"
iterations = 3
grouping = {kind = "sparse", size = 16}
[[stage]]
type = "gradient"
iterations = 3
grouping = {kind = "random", size = 12}
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return demo_stores(tmp_path_factory.mktemp("validation"), {"r.toml": RECIPE}, scan_shape=(8, 8))


def test_split_is_seeded_disjoint_and_sized():
    subset = np.arange(100)
    train, val = reconstruct_validation.split(subset, 0.2, seed=5)
    assert len(val) == 20 and len(train) == 80
    assert not set(train) & set(val) and set(train) | set(val) == set(subset)
    _, val2 = reconstruct_validation.split(subset, 0.2, seed=5)
    np.testing.assert_array_equal(val, val2)
    assert not np.array_equal(val, reconstruct_validation.split(subset, 0.2, seed=6)[1])
    assert len(reconstruct_validation.split(np.arange(5), 0.01, 0)[1]) == 1  # never rounds to nothing
    assert len(reconstruct_validation.split(subset, 0.0, 0)[1]) == 0
    with pytest.raises(UsageError):
        reconstruct_validation.split(subset, 1.0, 0)


class Recorder:
    def __init__(self):
        self.seen = []

    def on_validation_end(self, si, it, value):
        self.seen.append((si, it, value))


def test_validation_loss_recorded_and_positions_not_updated(small):
    root, data, state = small
    rec = Recorder()
    out = reconstruct.run(data, state, root / "v.zarr", recipe=root / "r.toml", device="cpu", seed=1,
                          validation_fraction=0.25, observers=[rec],
                          overrides=["stage.1.refine.positions=true"])
    g = zarr.open_group(str(root / "v.zarr"), mode="r")
    vloss = np.asarray(g["history/validation_loss"][...])
    val_idx = np.asarray(g["history/validation_positions"][...])
    assert vloss.shape == (6,) and np.all(np.isfinite(vloss)) and len(val_idx) == 16
    assert [v for *_, v in rec.seen] == pytest.approx(list(vloss), rel=1e-12)
    assert out["positions_refined"] == 48 and out["validation_positions"] == 16
    xr = pytest.importorskip("xarray")  # the held-out indices have their own dimension: the tree opens
    assert xr.open_datatree(str(root / "v.zarr"), engine="zarr")["history"].validation_positions.size == 16
    # The held-out loss falls as the object is learnt from the other positions.
    assert vloss[-1] < 0.8 * vloss[0]
    # Positions refined in stage 1 moved only for training positions.
    start = np.asarray(zarr.open_group(str(state), mode="r")["positions"][...])
    final = np.asarray(g["positions"][...])
    train = np.setdiff1d(np.arange(64), val_idx)
    np.testing.assert_array_equal(final[val_idx], start[val_idx])
    assert np.abs(final[train] - start[train]).max() > 0


def test_validation_loss_equals_independent_forward(small):
    """The recorded value is the amplitude loss of the final state on the held-out patterns."""
    from ptycli.engines import noise
    from ptycli.physics.model import ForwardModel
    from ptycli.store.state import load_state

    root, data, state = small
    reconstruct.run(data, state, root / "w.zarr", recipe=root / "r.toml", device="cpu", seed=2,
                    validation_fraction=0.25, overrides=["stage.1.iterations=0"])
    g = zarr.open_group(str(root / "w.zarr"), mode="r")
    st = load_state(g)
    idx = np.asarray(g["history/validation_positions"][...])
    pats = np.fft.ifftshift(np.asarray(zarr.open_group(str(data), mode="r")["patterns"][...])[idx], axes=(-2, -1))
    model = ForwardModel(shape=st.window, dx_a=st.dx_a, energy_ev=st.energy_kev * 1e3)
    inten = model.intensity(st.probe.astype(np.complex128), st.object.astype(np.complex128), st.positions[idx])
    expected = float(noise.loss(inten, pats.astype(np.float64), "amplitude").mean())
    got = float(g["history/validation_loss"][-1])
    assert got == pytest.approx(expected, rel=1e-4)  # float32 run vs float64 reference


def test_early_stop_rule_and_record():
    h = loop.History(loss=[1] * 6, stage=[0] * 6, validation_loss=[5.0, 4.0, 3.0, 3.5, 3.2, 3.1])
    assert not loop._early_stop(h, 0, 6, 4)  # best at 2, only 3 iterations since
    assert loop._early_stop(h, 0, 6, 3)
    assert h.early_stop[0]["best_iteration"] == 2 and h.early_stop[0]["iteration"] == 6
    assert loop._early_stop(h, 0, 6, 3) and len(h.early_stop) == 1  # recorded once
    assert not loop._early_stop(h, 1, 0, 3)  # another stage has no values yet
    assert not loop._early_stop(h, 0, 6, 0)  # patience 0 = off


class Worsen:
    """Make the validation loss rise after the stage's first iteration (forces a stop)."""

    def __init__(self, inner):
        self.inner, self.calls, self.first = inner, 0, None

    def __call__(self, state, stage):
        self.calls += 1
        value = self.inner(state, stage)
        self.first = value if self.first is None else self.first
        return value if self.calls == 1 else self.first * self.calls


def test_early_stopping_ends_stage_and_records_why(small, monkeypatch):
    root, data, state = small
    real = reconstruct_validation.Validator
    monkeypatch.setattr(reconstruct_validation, "Validator", lambda *a: Worsen(real(*a)))
    out = reconstruct.run(data, state, root / "es.zarr", recipe=root / "r.toml", device="cpu", seed=1,
                          validation_fraction=0.25, early_stop_patience=1, overrides=["stage.1.iterations=0"])
    assert out["iterations"] == 2  # iteration 0 best, iteration 1 worse -> stop before iteration 2
    rec = out["early_stop"][0]
    assert rec["stage"] == 0 and rec["best_iteration"] == 0 and "did not improve for 1" in rec["reason"]
    attrs = zarr.open_group(str(root / "es.zarr"), mode="r")["history"].attrs["history"]
    assert attrs["early_stop"] == out["early_stop"]


def test_patience_without_validation_is_an_error(small):
    root, data, state = small
    with pytest.raises(RecipeError, match="validation-fraction"):
        reconstruct.run(data, state, root / "x.zarr", recipe=root / "r.toml", device="cpu", early_stop_patience=2)



def test_resume_with_validation_is_exact(small):
    root, data, state = small
    kw = {"recipe": root / "r.toml", "device": "cpu", "seed": 4, "validation_fraction": 0.25,
          "early_stop_patience": 2}
    full = reconstruct.run(data, state, root / "full.zarr", **kw)
    with pytest.raises(Interrupted):
        reconstruct.run(data, state, root / "cut.zarr", observers=[SignalAtBatch(8)], **kw)
    with pytest.raises(RecipeError, match="validation"):
        reconstruct.run(data, state, root / "cut.zarr", resume=True, **{**kw, "validation_fraction": 0.5})
    resumed = reconstruct.run(data, state, root / "cut.zarr", resume=True, **kw)
    assert resumed["iterations"] == full["iterations"]
    a = zarr.open_group(str(root / "full.zarr"), mode="r")
    b = zarr.open_group(str(root / "cut.zarr"), mode="r")
    np.testing.assert_allclose(b["history/validation_loss"][...], a["history/validation_loss"][...], rtol=1e-5)
    np.testing.assert_allclose(b["object"][...], a["object"][...], rtol=0, atol=1e-5)


def test_cli_flags(small, cli):
    root, data, state = small
    res = cli("reconstruct", data, state, "-o", root / "cli.zarr", "--recipe", root / "r.toml", "--device", "cpu",
              "--validation-fraction", "0.2", "--early-stop-patience", "50", "--json", "--progress", "none")
    assert res.exit_code == 0, res.stderr
    import json

    doc = json.loads(res.stdout)
    assert doc["validation_positions"] == 13 and doc["early_stop"] == []
