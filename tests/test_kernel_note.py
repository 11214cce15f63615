"""The first run after an install compiles the kernels it uses: it says so when a compile
starts (and never when they load from the cache); tune shows each trial's progress instead of
nothing for minutes."""

from __future__ import annotations

import types

import numba as nb
import numpy as np
import pytest

from ptycli import backend
from ptycli.stages import kernel_note
from ptycli.stages.tune_trial import PROGRESS_EVERY_S, TrialProgress


def _compiled_in(module: str, offset: int):
    def f(x):
        return x + offset

    f.__module__ = module
    return nb.njit(f)(1)  # no cache: always a real compile


@pytest.mark.skipif(backend.kernels(np) is None, reason="compiled kernels need Numba")
def test_note_when_a_ptycli_kernel_starts_compiling_once():
    said = []
    assert kernel_note.on_compile(said.append)
    assert kernel_note.on_compile(said.append)  # a second run in the process: still one note
    _compiled_in("someone_else", 1)  # another package's compile: not ours to announce
    assert said == []
    _compiled_in("ptycli._kernels.fake", 2)
    _compiled_in("ptycli._kernels.fake", 3)
    assert said == [kernel_note.message("f")]  # the kernel compiling, without a helper process
    assert said[0].startswith("compiling kernels (f, then the others")


@pytest.mark.skipif(backend.kernels(np) is None, reason="compiled kernels need Numba")
def test_a_helper_started_after_the_note_is_said_too(monkeypatch):
    from ptycli._kernels import helper

    said = []
    monkeypatch.setattr(helper, "_on_start", [])
    assert kernel_note.on_compile(said.append)
    _compiled_in("ptycli._kernels.fake", 4)
    assert len(said) == 1 and "2 processes" not in said[0]
    for callback in helper._on_start:  # what helper._start does once its process runs
        callback("single_slice_part")
    assert said[1] == kernel_note.message("single_slice_part", True)
    assert said[1].startswith("compiling kernels in 2 processes (single_slice_part here")


def test_no_note_without_kernels(monkeypatch):
    monkeypatch.setattr(backend, "kernels", lambda xp: None)
    assert kernel_note.on_compile(print) is False


def test_reconstruct_says_it_compiles(monkeypatch, tmp_path, cli):
    # kernels that start compiling as soon as the run asks to hear about it
    monkeypatch.setattr(backend, "kernels", lambda xp: types.SimpleNamespace(on_first_compile=lambda cb, key: cb()))
    r = cli("reconstruct", tmp_path / "none.zarr", tmp_path / "none-state.zarr", "-o", tmp_path / "o.zarr")
    assert r.exit_code != 0  # no such stores; the note came first
    assert "compiling kernels (" in r.stderr
    r = cli("reconstruct", tmp_path / "none.zarr", tmp_path / "s.zarr", "-o", tmp_path / "o.zarr", "--device", "cuda")
    assert "compiling kernels" not in r.stderr


def test_trial_progress_is_throttled():
    said, now = [], [0.0]
    p = TrialProgress(said.append, 3, total=50, clock=lambda: now[0])
    for i in range(50):
        now[0] = i * 1.0  # one iteration a second
        p.on_iteration_end(0, i, 1.0 / (i + 1), 1.0)
    assert said[0] == "trial 3: iteration 1/50, loss 1"
    assert said[-1].startswith("trial 3: iteration 50/50")
    assert len(said) == 2 + 49 // int(PROGRESS_EVERY_S)  # first, every 10 s, last
