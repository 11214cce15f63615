"""Checkpoints, signals, resume, NaN handling, position subsets and streaming (numpy)."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from ptycli.errors import ExitCode, InputError, Interrupted, NumericalError, OutputExistsError
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
    # deterministic run: the same result as the uninterrupted one, bit for bit
    np.testing.assert_array_equal(_object(out), _object(root / "full.zarr"))
    again = reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True)
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
                        # a finite step so large that 4 halvings cannot save it (a NaN rate is
                        # refused by the recipe check before the run, exit 3)
                        overrides=["stage.0.iterations=3", "stage.0.optimizer=sgd",
                                   "stage.0.learning_rate.object=1e30", "stage.0.refine.probe=0"])
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


# --- audit fixes: resume after --overwrite, checkpoints never silently dropped, resume on the
# same inputs only, calibration checked, progress counted from the resumed iteration

def _interrupt(data, state, out, recipe, **kw):
    """Stop a run in its gradient stage (after 2 of 5 iterations, mid-iteration) as SIGTERM would."""
    with pytest.raises(Interrupted) as exc:
        reconstruct.run(data, state, out, recipe=recipe, device="cpu", seed=3,
                        observers=[SignalAtBatch(9, signal.SIGTERM)], **kw)
    assert exc.value.exit_code == ExitCode.INTERRUPTED and "--resume" in str(exc.value)
    return out


def _iterations(path):
    return int(zarr.open_group(str(path), mode="r")["history/loss"].shape[0])


def test_interrupted_overwrite_run_resumes_and_replaces_out(small, tmp_path):
    root, data, state = small
    out = tmp_path / "ow.zarr"
    reconstruct.run(data, state, out, recipe="quick", device="cpu", overrides=["stage.0.iterations=2"])
    _interrupt(data, state, out, root / "r.toml", overwrite=True)
    assert _iterations(out) == 2  # the old result stays until the new one is complete
    # --resume alone continues: the interrupted run had asked to replace OUT
    done = reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True)
    assert done["status"] == "complete" and done["iterations"] == 5
    assert _iterations(out) == 5 and not (tmp_path / "ow.zarr.partial").exists()
    assert "replaces_output" not in zarr.open_group(str(out), mode="r").attrs


def test_resume_beside_an_output_it_was_not_asked_to_replace(small, tmp_path):
    root, data, state = small
    out = _interrupt(data, state, tmp_path / "o.zarr", root / "r.toml")
    reconstruct.run(data, state, tmp_path / "other.zarr", recipe="quick", device="cpu",
                    overrides=["stage.0.iterations=2"])
    shutil.copytree(tmp_path / "other.zarr", out)  # OUT appeared while the run was stopped
    with pytest.raises(OutputExistsError, match=r"holds a checkpoint at iteration 2.*--resume --overwrite"):
        reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True)
    assert _iterations(out) == 2 and (tmp_path / "o.zarr.partial" / "checkpoint").exists()
    done = reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True,
                           overwrite=True)
    assert done["iterations"] == 5 and _iterations(out) == 5


def test_rerun_without_resume_keeps_the_checkpoint(small, tmp_path, cli):
    root, data, state = small
    out = _interrupt(data, state, tmp_path / "k.zarr", root / "r.toml")
    part = tmp_path / "k.zarr.partial"
    with pytest.raises(OutputExistsError) as exc:
        reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3)
    assert exc.value.exit_code == ExitCode.OUTPUT_EXISTS
    assert str(exc.value) == (f"{part} holds a checkpoint at iteration 2; continue it with --resume, "
                              "or delete it to start over")
    assert (part / "checkpoint").exists()
    # every stage that writes a store keeps it too (one-line error, exit 5)
    for args in (["init", data, "-o", out], ["simulate", out, "--scan-shape", "4x4"],
                 ["constrain", state, "-o", out]):
        res = cli(*args)
        assert res.exit_code == 5, (args, res.stderr)
        assert res.stderr.strip().count("\n") == 0 and "holds a checkpoint at iteration 2" in res.stderr
        assert (part / "checkpoint").exists()
    # --overwrite is about OUT, not the checkpoint: a script that always passes it, requeued
    # without --resume, must not restart from zero
    with pytest.raises(OutputExistsError, match="holds a checkpoint at iteration 2"):
        reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3, overwrite=True)
    assert (part / "checkpoint").exists()
    shutil.rmtree(part)  # the user's own decision to start over
    fresh = reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3, overwrite=True)
    assert fresh["iterations"] == 5 and not part.exists()


def test_resume_refuses_other_data_or_starting_state(small, tmp_path):
    from ptycli.stages import init, simulate

    root, data, state = small
    out = _interrupt(data, state, tmp_path / "sw.zarr", root / "r.toml")
    other_data = simulate.run(tmp_path / "d2.zarr", preset="demo", scan_shape=(8, 8), seed=7)
    other_state = init.run(data, tmp_path / "s2.zarr", defocus_a=60.0)
    with pytest.raises(InputError, match=r"other data .*d2\.zarr.* than the interrupted run") as exc:
        reconstruct.run(other_data, state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True)
    assert exc.value.exit_code == ExitCode.INPUT
    with pytest.raises(InputError, match=r"other starting state .*s2\.zarr"):
        reconstruct.run(data, other_state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True)
    assert (tmp_path / "sw.zarr.partial" / "checkpoint").exists()
    # a copy of the same data store is the same data
    shutil.copytree(data, tmp_path / "copy.zarr")
    done = reconstruct.run(tmp_path / "copy.zarr", state, out, recipe=root / "r.toml", device="cpu", seed=3,
                           resume=True)
    assert done["iterations"] == 5


def test_resume_refuses_another_seed_positions_or_precision(small, tmp_path):
    """The seed draws the validation split, --positions the subset, --precision the dtypes:
    a resume with others would continue a different run."""
    from ptycli.errors import RecipeError

    root, data, state = small
    out = _interrupt(data, state, tmp_path / "o.zarr", root / "r.toml")
    for change, key in (({"seed": 4}, "--seed"), ({"positions": "0:30"}, "--positions"),
                        ({"precision": "double"}, "--precision")):
        args = {"seed": 3, **change}
        with pytest.raises(RecipeError, match=f"{key} .* but the interrupted run had {key} "):
            reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", resume=True, **args)
    assert (tmp_path / "o.zarr.partial" / "checkpoint").exists()
    done = reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True)
    assert done["iterations"] == 5


@pytest.mark.parametrize("change, key, values", [
    ({"energy_kev": 200.0}, "energy_kev", ("200", "300")),
    ({"semiangle_mrad": 20.0}, "semiangle_mrad", ("20", "25")),
    ({"dx_a": 0.2}, "dk_inv_a", ("0.078125", "0.0868056")),
])
def test_calibration_mismatch_between_data_and_state_is_refused(small, tmp_path, change, key, values):
    from ptycli.stages import simulate

    _, _, state = small
    data = simulate.run(tmp_path / "d.zarr", preset="demo", scan_shape=(8, 8), **change)
    with pytest.raises(InputError) as exc:
        reconstruct.run(data, state, tmp_path / "e.zarr", recipe="quick", device="cpu")
    assert exc.value.exit_code == ExitCode.INPUT
    msg = str(exc.value)
    assert key in msg and all(v in msg for v in values), msg
    assert not (tmp_path / "e.zarr.partial").exists()


class _Starts:
    def __init__(self):
        self.done = []

    def on_run_start(self, done):
        self.done.append(done)


def test_progress_counts_on_from_the_resumed_iteration(small, tmp_path, cli):
    root, data, state = small
    out = _interrupt(data, state, tmp_path / "p.zarr", root / "r.toml")
    seen = _Starts()
    reconstruct.run(data, state, tmp_path / "q.zarr", recipe=root / "r.toml", device="cpu", observers=[seen])
    assert seen.done == [0]
    res = cli("reconstruct", data, state, "-o", out, "--recipe", root / "r.toml", "--seed", "3", "--device", "cpu",
              "--resume", "--progress", "lines")
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "reconstruct:" in ln]
    assert lines and " 5/5 " in lines[-1], res.stderr  # the final line, counted on from iteration 2


def test_progress_start_at_sets_count_and_rate_base(capsys, monkeypatch):
    from ptycli.cli import output

    now = [0.0]
    monkeypatch.setattr(output.time, "monotonic", lambda: now[0])
    bar = output.Progress(10, "reconstruct", "lines", every_s=1e9)
    now[0] = 100.0
    bar.start_at(8)  # 8 iterations done by the interrupted run
    now[0] = 101.0
    bar.update(1)
    assert capsys.readouterr().err == ""
    now[0] = 102.0
    bar.update(1)
    line = capsys.readouterr().err
    assert "reconstruct: 10/10 (1/s)" in line, line  # 2 new iterations in 2 s


def test_state_from_init_calibration_file_keeps_its_own_values(small, tmp_path):
    """init --calibration FILE corrects a data store's calibration on purpose: not a mismatch."""
    from ptycli.stages import init

    _, data, _ = small
    cal = tmp_path / "cal.toml"
    cal.write_text("energy_kev = 290.0\n")
    state = init.run(data, tmp_path / "s.zarr", calibration=cal)
    done = reconstruct.run(data, state, tmp_path / "c.zarr", recipe="quick", device="cpu",
                           overrides=["stage.0.iterations=1"])
    assert done["status"] == "complete"


def test_a_run_refused_before_its_first_checkpoint_leaves_no_partial(small, tmp_path, monkeypatch):
    """A recipe refused at run time (here: an error raised as the loop starts) has nothing to
    resume: no OUT.partial for later commands to call an interrupted stage."""
    from ptycli.engines import loop
    from ptycli.errors import RecipeError

    root, data, state = small
    out = tmp_path / "refused.zarr"

    def refuse(*_a, **_k):
        raise RecipeError("stage.0: refused")

    monkeypatch.setattr(loop, "run", refuse)
    with pytest.raises(RecipeError):
        reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3)
    assert not out.exists() and not (tmp_path / "refused.zarr.partial").exists()


# --- issue 23: --resume on a finished store checks it is the same run; no checkpoint kept

def test_resume_on_a_finished_output_is_done_only_for_the_same_run(small, tmp_path, cli):
    from ptycli.errors import RecipeError
    from ptycli.stages import init

    root, data, state = small
    out = tmp_path / "f.zarr"
    reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3)
    other_state = init.run(data, tmp_path / "s2.zarr", defocus_a=60.0)
    with pytest.raises(InputError, match=r"other starting state .*s2\.zarr.* than the run that wrote it") as exc:
        reconstruct.run(data, other_state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True)
    assert exc.value.exit_code == ExitCode.INPUT and "--overwrite" in str(exc.value)
    with pytest.raises(RecipeError, match="different recipe than the run that wrote it") as exc:
        reconstruct.run(data, state, out, recipe="quick", device="cpu", seed=3, resume=True)
    assert exc.value.exit_code == ExitCode.CONFIG
    res = cli("reconstruct", data, state, "-o", out, "--recipe", root / "r.toml", "--seed", "3", "--iterations", "1",
              "--device", "cpu", "--resume")
    assert res.exit_code == 3 and res.stderr.strip().count("\n") == 0, res.stderr
    assert reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3,
                           resume=True)["status"] == "already complete"
    # --resume --overwrite (the example Makefile's rule) recomputes a stale output
    before = zarr.open_group(str(out), mode="r").attrs["ptycli"]["inputs"][1]["fingerprint"]
    done = reconstruct.run(data, other_state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True,
                           overwrite=True)
    assert done["status"] == "complete" and done["iterations"] == 5
    after = zarr.open_group(str(out), mode="r").attrs["ptycli"]["inputs"][1]["fingerprint"]
    assert after != before


def test_a_finished_store_keeps_no_checkpoint(small, tmp_path):
    root, data, state = small
    out = _interrupt(data, state, tmp_path / "c.zarr", root / "r.toml", checkpoint_every=1)
    part = tmp_path / "c.zarr.partial"
    # killed mid-swap after its last checkpoint: both the checkpoint and its .old are there
    shutil.copytree(part / "checkpoint", part / "checkpoint.old")
    reconstruct.run(data, state, out, recipe=root / "r.toml", device="cpu", seed=3, resume=True)
    assert not [p.name for p in out.iterdir() if p.name.startswith("checkpoint")]
    assert not [k for k in zarr.open_group(str(out), mode="r").group_keys() if k.startswith("checkpoint")]
    full = tmp_path / "full.zarr"
    reconstruct.run(data, state, full, recipe=root / "r.toml", device="cpu", seed=3, checkpoint_every=1)
    assert not (full / "checkpoint").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_epie_resumes_bit_exactly(small, tmp_path, sig):
    """Issue 23: sequential ePIE carries the probe's spectrum from position to position; a
    resume that transformed the probe afresh differed by ~1e-6 once the probe was refined."""
    root, data, state = small
    kw = dict(recipe="epie", iterations=4, device="cpu", seed=5)
    full = tmp_path / "full.zarr"
    reconstruct.run(data, state, full, **kw)
    out = tmp_path / "cut.zarr"
    with pytest.raises(Interrupted):  # 64 positions an iteration: stop in the 3rd, probe refined since the 2nd
        reconstruct.run(data, state, out, observers=[SignalAtBatch(64 * 2 + 20, sig)], **kw)
    assert (tmp_path / "cut.zarr.partial" / "checkpoint").exists()
    reconstruct.run(data, state, out, resume=True, **kw)
    for name in ("object", "probe", "positions"):
        a = np.asarray(zarr.open_group(str(out), mode="r")[name][...])
        np.testing.assert_array_equal(a, np.asarray(zarr.open_group(str(full), mode="r")[name][...]), err_msg=name)


@pytest.mark.slow
def test_epie_resumes_bit_exactly_after_sigkill(small, tmp_path):
    """SIGKILL leaves the last periodic checkpoint (--checkpoint-every 1), past iteration 2."""
    from ptycli.store.io import checkpoint_iterations

    root, data, state = small
    out = tmp_path / "k.zarr"
    args = [str(data), str(state), "-o", str(out), "--recipe", "epie", "--iterations", "8", "--seed", "2",
            "--device", "cpu", "--checkpoint-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "ptycli", "reconstruct", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = tmp_path / "k.zarr.partial"
    while proc.poll() is None and (checkpoint_iterations(part) or 0) < 3:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not out.exists() and (checkpoint_iterations(part) or 0) >= 3
    done = subprocess.run([sys.executable, "-m", "ptycli", "reconstruct", *args, "--resume"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    full = tmp_path / "full.zarr"
    reconstruct.run(data, state, full, recipe="epie", iterations=8, seed=2, device="cpu", checkpoint_every=1)
    for name in ("object", "probe"):
        np.testing.assert_array_equal(np.asarray(zarr.open_group(str(out), mode="r")[name][...]),
                                      np.asarray(zarr.open_group(str(full), mode="r")[name][...]), err_msg=name)
