"""examples/slurm/*.sbatch run for real on a one-node SLURM on localhost (scripts/slurm-local.sh).

Opt-in: `PTYCLI_SLURM_TEST=1 python -m pytest -m slurm tests/test_slurm_local.py` (needs root and
Debian's slurm-wlm + munge: `apt-get install -y slurm-wlm munge`); skipped otherwise, with the reason.
Takes a few minutes: the reconstruct job is stopped by its time limit (SIGUSR1 before it), checkpoints,
requeues itself and completes with --resume.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "examples" / "slurm"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("PTYCLI_SLURM_TEST") != "1",
                       reason="opt-in: set PTYCLI_SLURM_TEST=1 (starts a local SLURM; needs root, slurm-wlm, munge)"),
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [c for c in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(c) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install -y slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root")
    conf_dir = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-local.sh"), "start", str(conf_dir)],
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stdout + start.stderr
    env = {**os.environ, "SLURM_CONF": str(conf_dir / "slurm.conf"), "PTYCLI": f"{sys.executable} -m ptycli",
           "PTYCLI_FFT": "scipy", "NO_COLOR": "1"}
    yield env
    subprocess.run(["bash", str(ROOT / "scripts" / "slurm-local.sh"), "stop", str(conf_dir)], timeout=60)


def sbatch(env, cwd, *args) -> str:
    r = subprocess.run(["sbatch", "--parsable", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job_field(env, job: str, field: str) -> str:
    r = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True)
    for item in r.stdout.split():
        if item.startswith(field + "="):
            return item.split("=", 1)[1]
    return ""


def wait_for(env, job: str, states: set[str], timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = job_field(env, job, "JobState")
        if state in states:
            return state
        time.sleep(2)
    raise AssertionError(f"job {job} not in {states} after {timeout} s (last {job_field(env, job, 'JobState')!r})")


def ptycli(env, cwd, *args):
    r = subprocess.run([sys.executable, "-m", "ptycli", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def stores(slurm, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    ptycli(slurm, work, "simulate", "d.zarr", "--scan-shape", "12x12")
    ptycli(slurm, work, "init", "d.zarr", "-o", "s.zarr")
    return work


def test_reconstruct_sbatch_requeues_at_its_time_limit_and_completes(slurm, stores):
    work = stores
    # Iterations for a few minutes of work on this machine, timed from two short runs (their difference
    # cancels the start-up; under load the longer run alone bounds it), so the first run (SIGUSR1 when
    # less than 55 s of its one minute are left, so 5-35 s in) cannot finish and the requeued one can.
    took = []
    for n in (2, 22):
        t0 = time.monotonic()
        ptycli(slurm, work, "reconstruct", "d.zarr", "s.zarr", "-o", "timing.zarr", "--recipe", "quick",
               "--iterations", n, "--progress", "none", "--overwrite")
        took.append(time.monotonic() - t0)
    per_iteration = max((took[1] - took[0]) / 20, took[1] / 22 / 4)
    iterations = min(max(int(120 / per_iteration), 40), 5000)
    (work / "long.toml").write_text(f'recipe = "ptycli/1"\n[[stage]]\ntype = "lsqml"\niterations = {iterations}\n'
                                    'grouping = {kind = "sparse", size = 32}\n')
    env = {**slurm, "RECIPE": str(work / "long.toml"), "CHECKPOINT_EVERY": "5"}
    job = sbatch(env, work, "--time=1", "--signal=B:USR1@55", "--output=recon.log",
                 SLURM / "reconstruct.sbatch", "d.zarr", "s.zarr", "recon.zarr")
    # the first run's script gets USR1, ptycli checkpoints and exits 75, the script requeues the job
    end = time.monotonic() + 300
    while int(job_field(env, job, "Restarts") or 0) < 1:
        assert time.monotonic() < end, (work / "recon.log").read_text()
        assert job_field(env, job, "JobState") not in ("COMPLETED", "FAILED", "TIMEOUT"), (
            (work / "recon.log").read_text())
        time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], env=env, check=True)
    state = wait_for(env, job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 900)
    log = (work / "recon.log").read_text()
    assert state == "COMPLETED", log
    assert "checkpoint written; requeueing job" in log
    assert (work / "recon.zarr").exists() and not (work / "recon.zarr.partial").exists()


def test_array_sbatch_runs_the_pipeline_per_dataset_submitted_from_elsewhere(slurm, stores, tmp_path):
    """Submitted from a folder outside the repository: the Makefile is found from the submitted path."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        ptycli(slurm, tmp_path, "simulate", raw / f"{name}.zarr", "--scan-shape", "6x6", "--seed", seed)
    (tmp_path / "datasets.txt").write_text("raw/a.zarr\nraw/b.zarr\n")
    (tmp_path / "calibration.toml").write_text("scan_rotation_deg = 0.0\n")
    env = {**slurm, "RECIPE": "quick", "RECONFLAGS": "--iterations 2", "CAL": "calibration.toml"}
    job = sbatch(env, tmp_path, "--array=1-2", "--output=array-%A_%a.log", SLURM / "array.sbatch")
    for task in ("1", "2"):
        state = wait_for(env, f"{job}_{task}", {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 900)
        logs = "".join(p.read_text() for p in tmp_path.glob("array-*.log"))
        assert state == "COMPLETED", logs
    for name in ("a", "b"):
        assert (tmp_path / "runs" / name / "phase.tif").exists()


def test_tune_workers_sbatch_share_one_study(slurm, stores):
    work = stores
    (work / "space.toml").write_text("[param.defocus_a]\nlow = 40.0\nhigh = 80.0\n")
    env = {**slurm, "RECIPE": "quick", "TRIALS": "3", "ITERATIONS": "2", "TUNE": "tune"}
    job = sbatch(env, work, "--array=1-2", "--output=tune-%A_%a.log", SLURM / "tune-workers.sbatch",
                 "d.zarr", "s.zarr", "space.toml")
    for task in ("1", "2"):
        state = wait_for(env, f"{job}_{task}", {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 900)
        logs = "".join(p.read_text() for p in work.glob("tune-*.log"))
        assert state == "COMPLETED", logs
    rows = (work / "tune" / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3, rows  # header + exactly TRIALS trials between the two workers
    assert (work / "tune" / "best-recipe.toml").exists()
