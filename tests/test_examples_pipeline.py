"""examples/: the Makefile pipeline runs end to end and is incremental; SLURM scripts' logic."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _make(tmp_path, *extra, check=True):
    args = ["make", "-f", str(EXAMPLES / "Makefile"), "OUT=out", f"PTYCLI={sys.executable} -m ptycli", *extra]
    env = {**os.environ, "PTYCLI_FFT": "scipy", "NO_COLOR": "1"}
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300, check=False)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


@needs_make
def test_makefile_runs_end_to_end_then_does_nothing(tmp_path):
    first = _make(tmp_path, "SIMFLAGS=--scan-shape 8x8", "RECONFLAGS=--iterations 2")
    for name in ("sim.zarr", "data.zarr", "state0.zarr", "recon.zarr", "phase.tif", "phase.png"):
        assert (tmp_path / "out" / name).exists(), name
    assert "ptycli reconstruct" in first.stdout.replace("-m ptycli", "ptycli")
    assert _make(tmp_path, "-q", check=False).returncode == 0  # everything up to date
    second = _make(tmp_path)
    assert "Nothing to be done" in second.stdout and "ptycli" not in second.stdout
    # Removing one product re-runs only what depends on it.
    (tmp_path / "out" / "phase.png").unlink()
    third = _make(tmp_path)
    assert "export" in third.stdout and "reconstruct" not in third.stdout


def _fake_bin(tmp_path, ptycli_body):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ptycli").write_text("#!/bin/bash\n" + ptycli_body)
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42"}


@pytest.mark.parametrize("finish_s", ["0", "0.5"])
def test_reconstruct_sbatch_forwards_usr1_and_requeues_on_75(tmp_path, finish_s):
    """A stand-in ptycli that, like the real one, checkpoints on USR1 and exits 75."""
    env = _fake_bin(tmp_path, f"trap 'sleep {finish_s}; exit 75' USR1\necho started > {tmp_path}/started\n"
                              "for i in $(seq 200); do sleep 0.05; done\nexit 0\n")
    proc = subprocess.Popen(["bash", str(EXAMPLES / "slurm" / "reconstruct.sbatch"), "d.zarr", "s.zarr"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if (tmp_path / "started").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 75, out + err
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "42"]


def test_reconstruct_sbatch_passes_success_through(tmp_path):
    env = _fake_bin(tmp_path, "exit 0\n")
    res = subprocess.run(["bash", str(EXAMPLES / "slurm" / "reconstruct.sbatch"), "d.zarr", "s.zarr"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=20, check=False)
    assert res.returncode == 0 and not (tmp_path / "scontrol.log").exists()


def test_tune_workers_sbatch_joins_one_shared_study(tmp_path):
    env = _fake_bin(tmp_path, f'echo "$@" > {tmp_path}/args\n')
    res = subprocess.run(["bash", str(EXAMPLES / "slurm" / "tune-workers.sbatch"), "d.zarr", "s.zarr", "sp.toml"],
                         cwd=tmp_path, env={**env, "TRIALS": "12"}, capture_output=True, text=True, timeout=20, check=False)
    assert res.returncode == 0, res.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[:3] == ["tune", "d.zarr", "s.zarr"] and "--worker" in args
    assert args[args.index("--storage") + 1] == "tune/journal.log" and args[args.index("--trials") + 1] == "12"


@pytest.mark.parametrize("script", sorted((EXAMPLES / "slurm").glob("*.sbatch")), ids=lambda p: p.name)
def test_sbatch_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --job-name" in text


def test_array_sbatch_finds_the_makefile_from_slurms_spooled_copy(tmp_path):
    """Under sbatch the script runs as slurmd's spooled copy, so $0's folder is no guide:
    the Makefile comes from the submit directory, and CAL / RECIPE from the environment."""
    spool = tmp_path / "slurmd" / "job42"
    spool.mkdir(parents=True)
    shutil.copy(EXAMPLES / "slurm" / "array.sbatch", spool / "slurm_script")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > make-args.txt\n')
    (bin_dir / "make").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "datasets.txt").write_text("raw/a.npy\nraw/b.h5\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "2",
           "SLURM_SUBMIT_DIR": str(EXAMPLES.parent), "RECIPE": "multislice"}
    res = subprocess.run(["bash", str(spool / "slurm_script")], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    args = (work / "make-args.txt").read_text().split("\n")
    assert args[:2] == ["-f", str(EXAMPLES / "Makefile")]
    assert "RAW=raw/b.h5" in args and "OUT=runs/b" in args
    assert "RECIPE=multislice" in args and "CAL=calibration.toml" in args


@needs_make
@pytest.mark.slow
def test_makefile_rebuilds_what_is_out_of_date(tmp_path):
    """Issue 23: a touched or regenerated intermediate made the next make stop with exit 5,
    and a regenerated starting state left the old reconstruction in place (--resume: exit 0)."""
    import zarr

    flags = ("SIMFLAGS=--scan-shape 6x6", "RECONFLAGS=--iterations 1")
    _make(tmp_path, *flags)
    out = tmp_path / "out"
    (out / "data.zarr").touch()
    again = _make(tmp_path, *flags)
    assert "init" in again.stdout and "reconstruct" in again.stdout and "export" in again.stdout
    assert _make(tmp_path, "-q", *flags, check=False).returncode == 0  # up to date again

    def state_fingerprint():
        return zarr.open_group(str(out / "recon.zarr"), mode="r").attrs["ptycli"]["inputs"][1]["fingerprint"]

    before = state_fingerprint()
    subprocess.run([sys.executable, "-m", "ptycli", "init", str(out / "data.zarr"), "-o", str(out / "state0.zarr"),
                    "--overwrite", "--defocus-a", "60"], check=True, capture_output=True)
    _make(tmp_path, *flags)
    assert state_fingerprint() != before  # recomputed from the new state, not kept
    assert _make(tmp_path, "-q", *flags, check=False).returncode == 0
