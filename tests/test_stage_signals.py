"""SIGTERM/SIGUSR1 to preprocess, init or export mid-write: exit 75 with one line, no OUT.partial or temporary
file left, and the same command run again succeeds (issue 23). Each runs the real CLI in a child process
whose stage sends itself the signal at a point where the output is half written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycli.errors import ExitCode
from ptycli.stages import init, simulate

# Runs `ptycli ARGS...` in the child after wrapping MODULE.NAME so that it signals its own process
# (before the call, or after it with AFTER=1: a temporary file then exists).
CHILD = """
import os, signal, sys, importlib
module, name, signame, after = sys.argv[1:5]
mod = importlib.import_module(module)
owner, attr = (getattr(mod, name.split(".")[0]), name.split(".")[1]) if "." in name else (mod, name)
orig = getattr(owner, attr)
def hooked(*a, **k):
    if after == "0":
        os.kill(os.getpid(), getattr(signal, signame))
    out = orig(*a, **k)
    os.kill(os.getpid(), getattr(signal, signame))
    return out
setattr(owner, attr, hooked)
from ptycli.cli.main import app
sys.argv = ["ptycli", *sys.argv[5:]]
app(prog_name="ptycli")
"""


def run_child(hook: tuple[str, str, str, str], *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "PTYCLI_FFT": "scipy"}
    return subprocess.run([sys.executable, "-c", CHILD, *hook, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def debris(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("sig")
    data = simulate.run(root / "d.zarr", scan_shape=(4, 4), detector_size=32, seed=1)
    state = init.run(data, root / "s.zarr")
    return root, data, state


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_preprocess_stops_cleanly(tmp_path, signame):
    np.save(tmp_path / "raw.npy", np.random.default_rng(0).poisson(3.0, (4, 4, 16, 16)).astype(np.float32))
    args = ("preprocess", "raw.npy", "-o", "out.zarr", "--energy-kev", "300", "--semiangle-mrad", "20",
            "--dk-mrad", "1", "--scan-step-a", "0.5", "--progress", "none")
    r = run_child(("ptycli.stages.preprocess", "Preprocess._write_patterns", signame, "0"), *args, cwd=tmp_path)
    assert r.returncode == ExitCode.INTERRUPTED, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines()[-1] == (f"ptycli: error: preprocess stopped by {signame}; nothing was "
                                                 "written (no checkpoint: run it again)")
    assert debris(tmp_path, {"raw.npy"}) == []
    again = subprocess.run([sys.executable, "-m", "ptycli", *args], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


def test_init_stops_cleanly(stores, tmp_path):
    _, data, _ = stores
    r = run_child(("ptycli.stages.init", "write_state", "SIGTERM", "1"), "init", data, "-o", "s.zarr",
                  cwd=tmp_path)
    assert r.returncode == ExitCode.INTERRUPTED, (r.returncode, r.stderr)
    assert "init stopped by SIGTERM" in r.stderr and "Traceback" not in r.stderr
    assert debris(tmp_path, set()) == []


def test_export_stops_cleanly(stores, tmp_path):
    _, _, state = stores
    r = run_child(("ptycli.stages.exportio", "write_npy", "SIGTERM", "1"), "export", state, "-o", "phase.npy",
                  cwd=tmp_path)
    assert r.returncode == ExitCode.INTERRUPTED, (r.returncode, r.stderr)
    assert "export stopped by SIGTERM" in r.stderr
    assert debris(tmp_path, set()) == []  # neither phase.npy nor its .phase.tmpPID.npy


def test_handlers_are_restored_after_the_stage(stores, tmp_path):
    _, data, _ = stores
    before = signal.getsignal(signal.SIGTERM)
    init.run(data, tmp_path / "s.zarr")
    assert signal.getsignal(signal.SIGTERM) is before
