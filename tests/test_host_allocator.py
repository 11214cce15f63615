"""glibc's allocator is changed only when asked for (``ptycli --reuse-heap``), never by a run
itself (issue 25: nothing process-wide behind the user's back)."""

from __future__ import annotations

import numpy as np

from ptycli import host_allocator
from ptycli.engines import common


def test_only_the_option_changes_the_allocator(monkeypatch, cli, tmp_path):
    import ctypes

    loaded = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: loaded.append(name))  # how mallopt is reached
    calls = []
    monkeypatch.setattr(host_allocator, "reuse_heap", lambda: calls.append(1) or True)
    state = type("S", (), {"window": (8, 8), "n_slices": 1})()
    common.make_context(state, np, "single", "amplitude", None)  # a CPU run's context: no change
    assert calls == [] and loaded == []
    missing = tmp_path / "none.zarr"
    cli("inspect", missing)
    assert calls == []
    r = cli("--reuse-heap", "inspect", missing)
    assert r.exit_code != 0 and calls == [1]  # applied before the command ran (and failed)


def test_reuse_heap_sets_the_thresholds_on_glibc():
    import platform

    got = host_allocator.reuse_heap()
    assert got is (platform.libc_ver()[0] == "glibc")
