"""A first run compiles in two processes (issue 25 item 4, ptycli/_kernels/helper.py): a helper
makes the same run on a few positions and compiles every kernel but the one the run compiles
itself. The run gets the same numbers bit for bit as when it compiles everything itself; a helper
that cannot start or fails leaves the compiling to the run, silently; and the cache's file lock
is free while a process compiles, so two processes compile at once (compile_guard.py)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np
import pytest
from numba.core import event

from ptycli import backend

pytestmark = pytest.mark.skipif(backend.kernels(np) is None, reason="compiled kernels need Numba")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def helper(monkeypatch):
    from ptycli._kernels import compile_guard, helper

    monkeypatch.setattr(helper, "_spec", None)
    monkeypatch.setattr(helper, "_proc", None)
    monkeypatch.setattr(helper, "enabled", lambda: True)
    yield helper
    helper._end()
    compile_guard.install()[1].callbacks.pop(helper._start, None)
    compile_guard.before_lookups(None)


def _compile_fake_kernel(offset: int, name: str = "single_slice_part") -> None:
    def f(x):
        return x + offset

    f.__module__, f.__name__ = "ptycli._kernels.fake", name
    nb.njit(f)(1)  # no cache: always a real compile, announced as a ptycli kernel's


def test_the_helper_needs_a_second_core_and_an_idle_one_unless_asked(monkeypatch):
    from ptycli._kernels import helper

    monkeypatch.setattr(helper.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for setting, load, expected in (("0", 0.0, False), ("1", 5.0, True), ("auto", 0.9, True), ("auto", 1.5, False)):
        monkeypatch.setenv(helper.ENV, setting)
        monkeypatch.setattr(helper.os, "getloadavg", lambda load=load: (load, load, load))
        assert helper.enabled() is expected, (setting, load)
    monkeypatch.setattr(helper.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setenv(helper.ENV, "1")
    assert helper.enabled() is False  # one core: nothing to compile on beside the run


@pytest.mark.parametrize("n,sizes,expected", [
    (400, [32], 61),  # 13 groups of 30 or 31: the helper makes one of each
    (64, [32, 32], 64),  # 2 groups of 32
    (20, [32], 20),  # one group of all
    (5000, [8000], 1024),  # one big group: at most MAX_POSITIONS (the same part count)
    (100, [None], 64),  # no grouped stage: POSITIONS
])
def test_the_helper_takes_positions_for_groups_like_the_runs(n, sizes, expected):
    from ptycli._kernels import helper

    assert helper.helper_positions(n, sizes) == expected


def test_a_helper_that_cannot_start_leaves_compiling_here_silently(helper, monkeypatch, capfd):
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise OSError("no processes left")

    monkeypatch.setattr(helper.subprocess, "Popen", refuse)
    helper.plan("ptycli.stages.compile_helper", {"data": "d", "state": "s"})
    _compile_fake_kernel(10, "extract")  # a small kernel first: no helper for it
    assert started == []
    _compile_fake_kernel(11)  # a part kernel: the helper would start here
    assert len(started) == 1
    assert not helper.running() and helper._proc is None
    helper.wait()  # nothing to wait for
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_failing_helper_ends_and_the_run_goes_on(helper, capfd, tmp_path):
    # the helper's module exists but its run fails at once (no such stores): status 1, no output
    helper.plan("ptycli.stages.compile_helper", {
        "data": str(tmp_path / "none.zarr"), "state": str(tmp_path / "none-state.zarr"),
        "recipe": {"recipe": "ptycli/1", "stage": []}, "positions": [0], "precision": "single", "seed": 0})
    _compile_fake_kernel(12)
    assert helper._proc is not None
    start = time.monotonic()
    helper.wait()  # returns once the helper has ended (it never compiles)
    assert time.monotonic() - start < 120
    assert helper._proc.wait(timeout=60) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_the_cache_lock_is_free_while_a_process_compiles():
    from ptycli._kernels import compile_guard

    path = compile_guard.install()[0].path
    free = []

    class Probe(event.Listener):
        def on_start(self, ev):
            if (getattr(getattr(ev.data.get("dispatcher"), "py_func", None), "__name__", "") == "probed"):
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a+") as other:  # another open file: as another process would
                    try:
                        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        free.append(True)
                        fcntl.flock(other, fcntl.LOCK_UN)
                    except BlockingIOError:
                        free.append(False)

        def on_end(self, ev):
            pass

    def probed(x):
        return x * 2

    probe = Probe()
    event.register("numba:compile", probe)
    try:
        nb.njit(probed)(2)
    finally:
        event.unregister("numba:compile", probe)
    assert free == [True]


def _cli(*args, env, cwd):
    return subprocess.run([sys.executable, "-m", "ptycli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_first_run_with_the_helper_reconstructs_bit_for_bit_as_without(tmp_path):
    """Two first runs of the quick recipe, each with an empty Numba cache: one compiles with the
    helper, one alone (PTYCLI_COMPILE_HELPER=0); the same object and probe bit for bit."""
    import zarr

    # FFTW plans by estimate: measured ones can differ from run to run in the last bits
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PTYCLI_THREADS": "2", "PTYCLI_FFTW_PLANNER": "estimate"}
    for name in ("PTYCLI_COMPILE_HELPER", "PTYCLI_FFT"):  # FFTW: the part kernels (conftest: scipy)
        env.pop(name, None)
    for args in (("simulate", "sim.zarr", "--preset", "demo", "--seed", "1"),
                 ("preprocess", "sim.zarr", "-o", "data.zarr"), ("init", "data.zarr", "-o", "state.zarr")):
        r = _cli(*args, "-q", env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    out = {}
    for name, extra in (("helper", {"PTYCLI_COMPILE_HELPER": "1", "PTYCLI_COMPILE_HELPER_LOG": str(tmp_path / "helper.log")}),
                        ("alone", {"PTYCLI_COMPILE_HELPER": "0"})):
        run_env = {**env, **extra, "NUMBA_CACHE_DIR": str(tmp_path / f"numba-{name}")}
        r = _cli("reconstruct", "data.zarr", "state.zarr", "-o", f"{name}.zarr", "--recipe", "quick",
                 "--iterations", "3", "--seed", "1", env=run_env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
        out[name] = zarr.open(str(tmp_path / f"{name}.zarr"), mode="r")
        if name == "helper":
            assert "compiling kernels in 2 processes" in r.stderr
            said = (tmp_path / "helper.log").read_text()
            assert "ptycli compile helper: compiled lsqml_tail_part" in said, said[-2000:]
            assert "Traceback" not in said
        else:
            assert "compiling kernels (" in r.stderr
    for key in ("object", "probe"):
        np.testing.assert_array_equal(np.asarray(out["helper"][key]), np.asarray(out["alone"][key]))
