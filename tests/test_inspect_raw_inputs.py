"""inspect on awkward inputs and outside a terminal; Zarr --dataset paths.

CliRunner's stdout is not a TTY, which is exactly the pipe / file / SLURM-log case.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import zarr
from test_export_data import make_data_store, make_state_store

from ptycli.errors import ExitCode, InputError
from ptycli.readers import open_raw

ANSI = re.compile(r"\x1b\[")


def _disk_frames(shape=(3, 4, 16, 16)):
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    disk = (((yy - shape[-2] // 2) ** 2 + (xx - shape[-1] // 2) ** 2) <= 9) * 10.0
    return np.broadcast_to(disk, shape).astype(np.float32)


def _one_line_error(r, code):
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("ptycli: error:"), r.stderr
    assert "internal error" not in r.stderr and "Warning" not in r.stderr


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("insp")
    data = make_data_store(tmp)
    return data, make_state_store(tmp, data=data)


# ----------------------------------------------------------------------------- not a TTY: full width
def test_tables_are_not_cut_to_80_columns_outside_a_terminal(cli, stores, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    r = cli("inspect", stores[1])
    assert r.exit_code == 0, r.stderr
    assert "…" not in r.stdout and r.stdout.splitlines()[0] == str(stores[1])  # the path is never folded
    doc = json.loads(cli("inspect", stores[1], "--json").stdout)
    for name, a in doc["arrays"].items():
        row = next(line for line in r.stdout.splitlines() if f" {name} " in line)
        assert "(" + ", ".join(map(str, a["shape"])) + ")" in row and a["dtype"] in row
        assert a["units"] is None or a["units"] in row
    assert any(len(line) > 80 for line in r.stdout.splitlines())  # laid out wider than rich's default


def test_table_console_fits_a_terminal_but_not_a_pipe(monkeypatch):
    from ptycli.cli.output import UNBOUNDED_WIDTH, table_console

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert table_console().width == UNBOUNDED_WIDTH  # pytest's stdout is captured: not a terminal
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "72")
    assert table_console().width == 72


# ----------------------------------------------------------------------------- --preview colour
def test_preview_has_no_escape_codes_with_no_color(cli, stores, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("FORCE_COLOR", "1")  # NO_COLOR still wins
    for store in stores:
        r = cli("inspect", store, "--preview")
        assert r.exit_code == 0, r.stderr
        assert not ANSI.search(r.stdout)
        assert any(c in r.stdout for c in ".:-=+*#%@")  # an image was still drawn


def test_preview_is_plain_text_in_a_pipe_unless_forced(cli, stores, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert not ANSI.search(cli("inspect", stores[1], "--preview").stdout)
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert re.search(r"\x1b\[38;5;\d+m", cli("inspect", stores[1], "--preview").stdout)


def test_text_preview_has_the_requested_size(stores):
    from ptycli.stages.preview import image_to_text, render

    for width, height in [(40, 12), (7, 3), (1, 1)]:
        lines = render(stores[0], width, height, colour=False).split("\n")
        assert len(lines) == height and all(len(line) == width for line in lines)
    assert image_to_text(np.array([[0.0, 0.0], [1.0, 1.0]]), 2, 1) == "=="  # a cell: mean of its two pixel rows
    assert image_to_text(np.array([[0.0, 1.0], [0.0, 1.0]]), 2, 1) == " @"


# ----------------------------------------------------------------------------- raw inputs
def test_plain_zarr_array_is_described_with_chunks(cli, tmp_path):
    data = _disk_frames()
    z = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=data.shape, dtype="f4", chunks=(1, 4, 16, 16))
    z[:] = data
    r = cli("inspect", tmp_path / "plain.zarr", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "raw" and doc["format"] == "zarr" and doc["dtype"] == "float32"
    assert doc["shape"] == [3, 4, 16, 16] and doc["chunks"] == [1, 4, 16, 16] and doc["scan_shape"] == [3, 4]
    assert doc["derived"]["counts_per_frame"] == pytest.approx(290.0)


@pytest.mark.parametrize("make", [
    lambda: np.full((4, 8, 8), np.nan),
    lambda: np.zeros((0, 8, 8)),
    lambda: np.zeros((2, 0, 8)),
], ids=["all-nan", "no-frames", "empty-frames"])
def test_unusable_raw_data_is_an_input_error(cli, tmp_path, make):
    np.save(tmp_path / "bad.npy", make())
    _one_line_error(cli("inspect", tmp_path / "bad.npy"), ExitCode.INPUT)


def test_complex_raw_data_is_not_a_crash(cli, tmp_path):
    np.save(tmp_path / "c.npy", _disk_frames((2, 16, 16)).astype(np.complex64))
    r = cli("inspect", tmp_path / "c.npy", "--json")
    # complex frames are refused by the readers (exit 4); were they let through, inspect
    # would describe them without intensity statistics
    if r.exit_code == 0:
        assert json.loads(r.stdout)["derived"]["values"] == "complex"
    else:
        _one_line_error(r, ExitCode.INPUT)


def test_some_nan_frames_still_give_statistics(cli, tmp_path):
    data = _disk_frames((4, 16, 16)).copy()
    data[0] = np.nan
    np.save(tmp_path / "n.npy", data)
    r = cli("inspect", tmp_path / "n.npy", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)["derived"]
    assert d["has_nonfinite"] and d["counts_per_frame"] == pytest.approx(290.0)
    assert d["bf_radius_px"] == pytest.approx(np.sqrt(29 / np.pi))


# ----------------------------------------------------------------------------- zarr --dataset
def test_zarr_dataset_naming_a_group_is_an_input_error(cli, tmp_path):
    g = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w")
    g.create_group("a").create_array("b", data=_disk_frames())
    r = cli("inspect", tmp_path / "grp.zarr", "--dataset", "a")
    _one_line_error(r, ExitCode.INPUT)
    assert "no dataset 'a'" in r.stderr
    r = cli("preprocess", tmp_path / "grp.zarr", "-o", tmp_path / "x.zarr", "--energy-kev", "300",
            "--semiangle-mrad", "25", "--dk-inv-a", "0.0868056", "--scan-step-a", "0.6", "--dataset", "a")
    _one_line_error(r, ExitCode.INPUT)
    assert "no dataset 'a'" in r.stderr and not (tmp_path / "x.zarr").exists()


def test_zarr_dataset_on_a_plain_array_is_an_input_error(tmp_path):
    z = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(2, 8, 8), dtype="f4")
    z[:] = 1.0
    with pytest.raises(InputError, match="no dataset 'nope'"):
        open_raw(tmp_path / "plain.zarr", dataset="nope")
    with open_raw(tmp_path / "plain.zarr", dataset="/") as src:  # the root is the array itself
        assert src.n_frames == 2


def test_zarr_finds_the_largest_array_at_any_depth(tmp_path):
    g = zarr.open_group(str(tmp_path / "deep.zarr"), mode="w")
    g.create_group("x").create_group("y").create_array("z", data=_disk_frames())
    g.create_array("small", data=np.zeros((2, 4, 4), np.float32))
    with open_raw(tmp_path / "deep.zarr") as src:
        assert src.metadata["dataset"] == "x/y/z" and src.n_frames == 12
