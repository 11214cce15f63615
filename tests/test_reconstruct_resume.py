"""Checkpoints, signals, resume, NaN handling, position subsets and streaming (numpy)."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from ptycli.errors import ExitCode, Interrupted, NumericalError
from ptycli.stages import reconstruct
from _helpers import SignalAtBatch, demo_stores

RECIPE = """
recipe = "ptycli/1"
[[stage]]
type = "lsqml"
iterations = 2
grouping = {kind = "sparse", size = 24}
[[stage]]
type = "gradient"
iterations = 3
grouping = {kind = "random", size = 12}
refine = {probe = 1, positions = 1}
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return demo_stores(tmp_path_factory.mktemp("resume"), {"r.toml": RECIPE}, scan_shape=(8, 8))



def _object(path):
    return np.asarray(zarr.open_group(str(path), mode="r")["object"][...])


def test_sigterm_checkpoints_and_resume_equals_uninterrupted(small):
    root, data, state = small
    full = reconstruct.run(data, state, root / "full.zarr", recipe=root / "r.toml", device="cpu", seed=3)
    out = root / "cut.zarr"
    # 3 lsqml groups/iteration x 2 + 6 gradient groups: stop inside the gradient stage
    with pytest.raises(Interrupted) as exc:
        reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3,
                        observers=[SignalAtBatch(9, signal.SIGTERM)])
    assert exc.value.exit_code == ExitCode.INTERRUPTED
    assert not out.exists() and (root / "cut.zarr.partial" / "checkpoint").exists()
    meta = zarr.open_group(str(root / "cut.zarr.partial"), mode="r").attrs["ptycli"]
    assert meta["status"] == "interrupted"
    resumed = reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True)
    assert resumed["iterations"] == full["iterations"] == 5
    # deterministic run: same result as the uninterrupted one, to float32 rounding
    np.testing.assert_allclose(_object(out), _object(root / "full.zarr"), rtol=0, atol=1e-5)
    again = reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", resume=True)
    assert again["status"] == "already complete"


def test_sigint_is_not_resumable_exit_130(small):
    root, data, state = small
    with pytest.raises(Interrupted) as exc:
        reconstruct.run(data, state, root / "int.zarr", recipe=root / "r.toml", device="cpu",
                        observers=[SignalAtBatch(2, signal.SIGINT)])
    assert exc.value.exit_code == ExitCode.USER_INTERRUPT
    assert (root / "int.zarr.partial" / "checkpoint").exists()


def test_divergence_keeps_last_good_state_exit_6(small):
    root, data, state = small
    with pytest.raises(NumericalError) as exc:
        reconstruct.run(data, state, root / "nan.zarr", recipe="gradient", device="cpu",
                        overrides=["stage.0.iterations=3", "stage.0.learning_rate.object=nan",
                                   "stage.0.refine.probe=0"])
    assert exc.value.exit_code == ExitCode.NUMERICAL
    ck = zarr.open_group(str(root / "nan.zarr.partial" / "checkpoint"), mode="r")
    assert np.isfinite(ck["object"][...]).all()


def test_history_recipe_and_convergence_written(small):
    root, data, state = small
    summary = reconstruct.run(data, state, root / "h.zarr", recipe=root / "r.toml", device="cpu",
                              checkpoint_every=2)
    g = zarr.open_group(str(root / "h.zarr"), mode="r")
    loss = g["history/loss"][...]
    assert loss.shape == (5,) and list(g["history/stage"][...]) == [0, 0, 1, 1, 1]
    assert loss[-1] < loss[0]
    assert g.attrs["recipe"]["stage"][1]["type"] == "gradient" and len(g.attrs["recipe_hash"]) == 20
    conv = g["history"].attrs["history"]["convergence"]
    assert len(conv) == 2 and "object_phase_signal_rad" in conv[1]
    assert summary["final_loss"] == pytest.approx(float(loss[-1]))


def test_position_subset_keeps_canvas(small):
    root, data, state = small
    reconstruct.run(data, state, root / "sub.zarr", recipe="quick", device="cpu", positions="sub:2",
                    overrides=["stage.0.iterations=2"])
    g0, g1 = zarr.open_group(str(state), mode="r"), zarr.open_group(str(root / "sub.zarr"), mode="r")
    assert g1["object"].shape == g0["object"].shape
    assert g1["positions"].shape == g0["positions"].shape


def test_streaming_equals_resident(small):
    root, data, state = small
    kw = dict(recipe="quick", device="cpu", overrides=["stage.0.iterations=2"])
    reconstruct.run(data, state, root / "mem.zarr", stream=False, **kw)
    reconstruct.run(data, state, root / "str.zarr", stream=True, memory_budget_bytes=40_000, **kw)
    np.testing.assert_array_equal(_object(root / "mem.zarr"), _object(root / "str.zarr"))


def test_cli_sigterm_exit_75_then_resume(small, tmp_path):
    _, data, state = small
    out = tmp_path / "o.zarr"
    cmd = [sys.executable, "-m", "ptycli.cli.main", "reconstruct", str(data), str(state), "-o", str(out),
           "--recipe", "quick", "--set", "stage.0.iterations=40", "--checkpoint-every", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ck = tmp_path / "o.zarr.partial" / "checkpoint"
    while not ck.exists() and proc.poll() is None:  # wait for the first checkpoint (an event)
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "--resume" in err
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)


def test_cli_reconstruct_json_and_usage_errors(small, cli, tmp_path):
    _, data, state = small
    res = cli("reconstruct", data, state, "-o", tmp_path / "j.zarr", "--recipe", "quick", "--iterations", "2",
              "--positions", "center:4x4", "--device", "cpu", "--progress", "lines", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["iterations"] == 2 and doc["positions_refined"] == 16 and doc["output"] == str(tmp_path / "j.zarr")
    assert "reconstruct:" in res.stderr  # heartbeat line on stderr, never on stdout
    again = cli("reconstruct", data, state, "-o", tmp_path / "j.zarr", "--recipe", "quick")
    assert again.exit_code == 5
    bad = cli("reconstruct", data, state, "-o", tmp_path / "k.zarr", "--positions", "center:4by4")
    assert bad.exit_code == 2 and "center:NYxNX" in bad.stderr
    unknown = cli("reconstruct", data, state, "-o", tmp_path / "k.zarr", "--recipe", "nonesuch")
    assert unknown.exit_code == 3 and "shipped" in unknown.stderr
