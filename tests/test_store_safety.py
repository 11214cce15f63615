"""Nothing lost, nothing stale (issue 23): one writer per output, missing chunks refused,
a finished store without its checkpoint."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import zarr

from ptycli.errors import OutputExistsError
from ptycli.store import lock as lockmod
from ptycli.store.io import StoreWriter, partial_path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from _helpers import demo_stores

    return demo_stores(tmp_path_factory.mktemp("safety"), scan_shape=(4, 4), detector_size=32)


def _ptycli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ptycli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


# ----------------------------------------------------------------------------- one writer
def _three_at_once(tmp_path, make_args):
    """Start three runs of one command on one output; exactly one must win."""
    out = tmp_path / "s.zarr"
    procs = [_ptycli(*make_args(out)) for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 5, 5], results
    for code, err in results:
        if code == 5:
            errors = [ln for ln in err.splitlines() if "error" in ln or "Traceback" in ln]  # init's diagnostics precede
            assert len(errors) == 1 and errors[0].startswith("ptycli: error: ") and str(out) in errors[0], err
    meta = zarr.open_group(str(out), mode="r").attrs["ptycli"]
    assert meta["status"] == "complete"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("s.zarr.")]  # no .partial, no .lock left
    return out


def test_three_inits_at_once_one_wins_others_exit_5(demo, tmp_path):
    _, data, _ = demo
    out = _three_at_once(tmp_path, lambda out: ["init", data, "-o", out])
    assert {"object", "probe", "positions"} <= set(zarr.open_group(str(out), mode="r").keys())


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["preprocess", "reconstruct"])
def test_three_runs_at_once_one_wins_others_exit_5(demo, tmp_path, stage):
    _, data, state = demo
    raw = _raw_zarr(tmp_path / "raw.zarr")
    args = {"preprocess": lambda out: ["preprocess", raw, "-o", out, *CAL],
            "reconstruct": lambda out: ["reconstruct", data, state, "-o", out, "--iterations", "2", "--device", "cpu"]}
    out = _three_at_once(tmp_path, args[stage])
    assert ("patterns" if stage == "preprocess" else "object") in zarr.open_group(str(out), mode="r")


def test_second_writer_refused_and_leaves_the_first_alone(tmp_path):
    out = tmp_path / "x.zarr"
    with StoreWriter(out, kind="data", stage="test") as first:
        first.array("a", [1.0, 2.0])
        with pytest.raises(OutputExistsError, match="being written by another ptycli process"):
            StoreWriter(out, kind="data", stage="test", overwrite=True)
        assert (partial_path(out) / "a" / "zarr.json").exists()
        first.finalize()
    assert out.exists() and not lockmod.lock_path(out).exists()


def test_reconstruct_refuses_an_output_being_written(demo, tmp_path):
    from ptycli.stages import reconstruct

    _, data, state = demo
    out = tmp_path / "r.zarr"
    with lockmod.OutputLock(out):
        with pytest.raises(OutputExistsError, match="being written"):
            reconstruct.run(data, state, out, recipe="quick", iterations=1, device="cpu")
    assert not out.exists() and not partial_path(out).exists()


def _write_lock(out, **record):
    path = lockmod.lock_path(out)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "then",
                                "token": "t", **record}))
    return path


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "x.zarr"
    _write_lock(out, pid=dead.pid)
    with StoreWriter(out, kind="data", stage="test") as w:
        w.finalize()
    assert out.exists() and not lockmod.lock_path(out).exists()


def test_lock_of_another_host_held_until_its_heartbeat_stops(tmp_path):
    out = tmp_path / "x.zarr"
    path = _write_lock(out, host="some-other-node", pid=1)
    with pytest.raises(OutputExistsError, match="pid 1 on some-other-node"):
        StoreWriter(out, kind="data", stage="test")
    old = time.time() - lockmod.STALE_AFTER_S - 5
    os.utime(path, (old, old))  # no heartbeat for longer than STALE_AFTER_S: its holder is gone
    with StoreWriter(out, kind="data", stage="test") as w:
        w.finalize()
    assert out.exists() and not path.exists()


def test_heartbeat_keeps_a_long_run_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lockmod, "HEARTBEAT_S", 0.05)
    lk = lockmod.OutputLock(tmp_path / "x.zarr").acquire()
    try:
        old = time.time() - 1000
        os.utime(lk.path, (old, old))
        time.sleep(0.3)
        assert time.time() - lk.path.stat().st_mtime < 10
    finally:
        lk.release()
    assert not lk.path.exists()


def test_a_writer_that_lost_its_lock_does_not_rename(tmp_path):
    out = tmp_path / "x.zarr"
    w = StoreWriter(out, kind="data", stage="test")
    lockmod.lock_path(out).write_text(json.dumps({"host": "h", "pid": 1, "token": "someone else"}))
    with pytest.raises(OutputExistsError, match="lost the write lock"):
        with w:
            w.finalize()
    assert not out.exists() and lockmod.lock_path(out).exists()  # the other holder's lock stays


# ----------------------------------------------------------------------------- missing chunks
CAL = ["--energy-kev", "300", "--semiangle-mrad", "4", "--dk-mrad", "1", "--scan-step-a", "0.5"]


def _raw_zarr(path):
    import numpy as np

    arr = zarr.create_array(str(path), shape=(4, 4, 16, 16), chunks=(1, 4, 16, 16), dtype="f4")
    arr[...] = np.random.default_rng(0).random((4, 4, 16, 16), dtype=np.float32) + 1
    return path


def _exit4_naming(r, *words):
    assert r.exit_code == 4, (r.exit_code, r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("ptycli: error: ") and "missing chunk" in line, r.stderr
    for w in words:
        assert w in line, (w, line)


def test_raw_zarr_with_a_deleted_chunk_is_refused(cli, tmp_path):
    raw = _raw_zarr(tmp_path / "raw.zarr")
    assert cli("preprocess", raw, "-o", tmp_path / "ok.zarr", *CAL).exit_code == 0
    (raw / "c" / "2" / "0" / "0" / "0").unlink()
    _exit4_naming(cli("preprocess", raw, "-o", tmp_path / "d.zarr", *CAL), "raw.zarr", "c/2/0/0/0")
    assert not (tmp_path / "d.zarr").exists()


def test_raw_zarr_with_an_enlarged_shape_is_refused(cli, tmp_path):
    raw = _raw_zarr(tmp_path / "raw.zarr")
    doc = json.loads((raw / "zarr.json").read_text())
    doc["shape"] = [6, 4, 16, 16]
    (raw / "zarr.json").write_text(json.dumps(doc))
    _exit4_naming(cli("preprocess", raw, "-o", tmp_path / "d.zarr", *CAL), "c/4/0/0/0", "2 of 6")


def test_data_store_with_a_deleted_patterns_chunk_is_refused(cli, demo, tmp_path):
    import shutil

    _, data, state = demo
    copy = tmp_path / "d.zarr"
    shutil.copytree(data, copy)
    chunk = next(p for p in (copy / "patterns" / "c").rglob("*") if p.is_file())
    chunk.unlink()
    key = chunk.relative_to(copy / "patterns").as_posix()
    _exit4_naming(cli("init", copy, "-o", tmp_path / "s.zarr"), "'patterns'", key)
    _exit4_naming(cli("reconstruct", copy, state, "-o", tmp_path / "r.zarr", "--iterations", "1"), key)
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "r.zarr").exists()


def test_every_chunk_is_written_also_all_zero_ones(tmp_path):
    import numpy as np

    from ptycli.store.chunks import missing_chunk

    with StoreWriter(tmp_path / "z.zarr", kind="data", stage="test") as w:
        arr = w.array("patterns", np.zeros((4, 8, 8), np.float32), chunks=(1, 8, 8))
        assert missing_chunk(arr) is None
        w.finalize()


def test_lock_of_this_slurm_jobs_earlier_run_is_taken_over(tmp_path, monkeypatch):
    """A job requeued after a node failure starts at once elsewhere: its own old lock is stale."""
    out = tmp_path / "x.zarr"
    path = _write_lock(out, host="dead-node", pid=1, slurm_job="77", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "78")  # another job: its lock holds
    with pytest.raises(OutputExistsError):
        StoreWriter(out, kind="data", stage="test")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # a step of the same run: holds too
    with pytest.raises(OutputExistsError):
        StoreWriter(out, kind="data", stage="test")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with StoreWriter(out, kind="data", stage="test") as w:
        w.finalize()
    assert out.exists() and not path.exists()


def test_checkpoint_with_a_lost_chunk_is_not_resumed(demo, tmp_path):
    import signal

    from _helpers import SignalAtBatch

    from ptycli.errors import InputError, Interrupted
    from ptycli.stages import reconstruct

    _, data, state = demo
    out = tmp_path / "r.zarr"
    kw = dict(recipe="quick", iterations=3, device="cpu", checkpoint_every=1)
    with pytest.raises(Interrupted):
        reconstruct.run(data, state, out, observers=[SignalAtBatch(2, signal.SIGTERM)], **kw)
    ck = partial_path(out) / "checkpoint" / "object"
    next(p for p in (ck / "c").rglob("*") if p.is_file()).unlink()
    with pytest.raises(InputError, match=r"array 'object' is missing chunk") as exc:
        reconstruct.run(data, state, out, resume=True, **kw)
    assert exc.value.exit_code == 4
