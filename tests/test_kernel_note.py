"""The first run after an install compiles the kernels for 30-90 s: it says so; tune shows
each trial's progress instead of nothing for minutes."""

from __future__ import annotations

import types

from ptycli import backend
from ptycli.cli import output
from ptycli.stages import kernel_note
from ptycli.stages.tune_trial import PROGRESS_EVERY_S, TrialProgress


def _fake_kernels(monkeypatch, tmp_path):
    cache = types.SimpleNamespace(_cache_path=str(tmp_path / "0123456789abcdef" / "ptycli_kernels"))
    module = types.SimpleNamespace(farfield=types.SimpleNamespace(_cache=cache), N=3)
    monkeypatch.setattr(backend, "kernels", lambda xp: module)
    return tmp_path / "0123456789abcdef"


def test_note_only_while_nothing_is_compiled(monkeypatch, tmp_path):
    root = _fake_kernels(monkeypatch, tmp_path)
    note = kernel_note.compile_note()
    assert note.startswith("compiling kernels (one-time") and str(root) in note
    (root / "ptycli_kernels").mkdir(parents=True)
    (root / "ptycli_kernels" / "_kernels.farfield-10.py311.nbi").write_bytes(b"")
    assert kernel_note.compile_note() is None


def test_no_note_without_kernels(monkeypatch):
    monkeypatch.setattr(backend, "kernels", lambda xp: None)
    assert kernel_note.compile_note() is None


def test_reconstruct_says_it_compiles(monkeypatch, tmp_path, cli):
    _fake_kernels(monkeypatch, tmp_path)
    r = cli("reconstruct", tmp_path / "none.zarr", tmp_path / "none-state.zarr", "-o", tmp_path / "o.zarr")
    assert r.exit_code != 0  # no such stores; the note came first
    assert "compiling kernels (one-time" in r.stderr
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
