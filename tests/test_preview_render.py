"""Terminal preview (half blocks, 256 colours) and `ptycli watch` on a running store."""

import json
import re

import numpy as np
import pytest
from test_export_data import make_data_store, make_running_store, make_state_store

from ptycli.stages.preview import colour_table, image_to_ansi, render
from ptycli.stages.watch import snapshot, sparkline, watch

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _visible(text):
    return [ANSI.sub("", line) for line in text.split("\n")]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prev")
    data = make_data_store(tmp)
    return data, make_state_store(tmp, data=data)


@pytest.mark.parametrize("width, height", [(40, 12), (80, 5), (7, 3), (1, 1)])
def test_render_has_the_requested_size_and_256_colour_codes(stores, width, height):
    for store in stores:
        out = render(store, width, height)
        lines = _visible(out)
        assert len(lines) == height
        assert all(len(line) == width for line in lines)
        assert re.search(r"\x1b\[38;5;\d+m", out)
        if height > 1:  # a 1x1 preview holds one pixel: the lower half keeps the terminal background
            assert re.search(r"\x1b\[48;5;\d+m", out)
        assert "\u2580" in out


def test_half_blocks_carry_top_and_bottom_pixels():
    img = np.array([[0.0, 1.0], [1.0, 0.0]])
    out = image_to_ansi(img, 2, 1)
    black, white = colour_table("gray")[[0, -1]]
    assert out.startswith(f"\x1b[38;5;{black}m\x1b[48;5;{white}m\u2580\x1b[38;5;{white}m\x1b[48;5;{black}m\u2580")


def test_gray_table_brightens_monotonically():
    idx = colour_table("gray")
    steps = np.array([0, 95, 135, 175, 215, 255])
    level = [steps[(i - 16) // 36] if i < 232 else 8 + 10 * (i - 232) for i in idx]
    assert np.all(np.diff(level) >= 0) and idx[0] == 16 and idx[-1] == 231


def test_sparkline():
    assert sparkline([1, 2, 3, 4]) == "▁▅▇█"  # log10: 0, .30, .48, .60 -> levels 0, 4, 6, 7
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert len(sparkline(np.arange(1, 100), width=20)) == 20


def test_watch_reads_a_running_reconstruction(tmp_path):
    make_running_store(tmp_path, iteration=5)
    snap = snapshot(tmp_path / "run.zarr", width=30, height=6)
    assert snap["status"] == "running" and snap["iteration"] == 5 and snap["total_iterations"] == 20
    assert snap["eta_s"] == pytest.approx(15 * 0.5)
    assert len(_visible(snap["preview"])) == 6
    frames = []
    watch(tmp_path / "run.zarr", lambda text, s: frames.append(text), once=True, width=30, height=6)
    assert len(frames) == 1 and "iteration 5/20" in frames[0] and "ETA 8s" in frames[0]


def test_watch_waits_for_a_store_that_does_not_exist_yet(tmp_path):
    frames = []
    snap = watch(tmp_path / "later.zarr", lambda t, s: frames.append(t), once=True)
    assert snap["status"] == "waiting" and "waiting" in frames[0]


def test_cli_watch_once_json(cli, tmp_path):
    make_running_store(tmp_path, iteration=3)
    r = cli("watch", tmp_path / "run.zarr", "--once", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["iteration"] == 3 and doc["status"] == "running" and "preview" not in doc


def test_watch_of_a_finished_store_returns_at_once(stores):
    frames = []
    snap = watch(stores[1], lambda t, s: frames.append(t), interval_s=0.01, timeout_s=5)
    assert snap["status"] == "complete" and snap["iteration"] == 12 and len(frames) == 1


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {}])
def test_cli_watch_writes_no_colour_codes_with_no_color_or_into_a_pipe(cli, tmp_path, monkeypatch, env):
    """The runner's stdout is not a terminal: a SLURM log or a pipe gets a plain-text preview."""
    make_running_store(tmp_path, iteration=3)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    r = cli("watch", tmp_path / "run.zarr", "--once")
    assert r.exit_code == 0, r.stderr
    assert "iteration 3/" in r.stdout and "\x1b" not in r.stdout
    assert len(r.stdout.strip().splitlines()) > 3  # the preview is there, as text


def test_watch_follows_the_partial_of_a_run_that_will_replace_a_complete_output(tmp_path, stores):
    """An --overwrite (or resumed) run writes OUT.partial beside a complete OUT until it is
    done: that is the work to show; a partial older than OUT is a leftover and is not."""
    import os
    import shutil

    make_running_store(tmp_path, iteration=3)  # the new run
    shutil.copytree(stores[1], tmp_path / "run.zarr")  # the complete old result

    def age(seconds):
        t = os.path.getmtime(tmp_path / "run.zarr" / "zarr.json") + seconds
        for f in (tmp_path / "run.zarr.partial").rglob("zarr.json"):
            os.utime(f, (t, t))

    age(+100)  # the run's checkpoint is newer than the old OUT
    snap = snapshot(tmp_path / "run.zarr")
    assert snap["store"].endswith("run.zarr.partial") and snap["iteration"] == 3
    age(-100)
    assert snapshot(tmp_path / "run.zarr")["store"].endswith("run.zarr")
