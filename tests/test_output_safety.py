"""What a stage may write over: only its own kind of output, never an input, never a stranger's
folder or file; a bad output location is a one-line error found before any computation."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from ptycli.errors import OutputExistsError
from ptycli.store.io import StoreWriter, open_store

SMALL = ["--scan-shape", "4x4", "--detector-size", "32"]
CAL = ["--energy-kev", "300", "--semiangle-mrad", "20", "--dk-mrad", "1", "--scan-step-a", "0.5"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(raw 4D .npy, data store, state store), built once: the tests below never change them."""
    from ptycli.stages import init, simulate

    root = tmp_path_factory.mktemp("stores")
    raw = root / "raw.npy"
    np.save(raw, np.random.default_rng(0).random((4, 4, 32, 32), dtype=np.float32))
    data, state = root / "sim.zarr", root / "s.zarr"
    simulate.run(data, preset="demo", scan_shape=(4, 4), detector_size=32)
    init.run(data, state)
    return raw, data, state


def _one_line_error(r, code, *words):
    assert r.exit_code == code, (r.exit_code, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptycli: error: "), r.stderr
    assert "internal error" not in r.stderr and r.stdout == ""
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _commands(stores, out):
    raw, data, state = stores
    return {
        "simulate": ["simulate", out, *SMALL],
        "preprocess": ["preprocess", raw, "-o", out, *CAL],
        "init": ["init", data, "-o", out],
        "constrain": ["constrain", state, "-o", out],
    }


@pytest.mark.parametrize("stage", ["simulate", "preprocess", "init", "constrain"])
def test_overwrite_keeps_a_folder_that_is_not_a_store(cli, stores, tmp_path, stage):
    out = tmp_path / "somedir"
    out.mkdir()
    (out / "f").write_text("a")
    line = _one_line_error(cli(*_commands(stores, out)[stage], "--overwrite"), 5, str(out), "not a ptycli store")
    assert "sampling" not in line
    assert (out / "f").read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == ["somedir"]


@pytest.mark.parametrize("stage", ["simulate", "preprocess", "init", "constrain"])
def test_overwrite_keeps_a_regular_file(cli, stores, tmp_path, stage):
    out = tmp_path / "target.txt"
    out.write_text("hi\n")
    r = cli(*_commands(stores, out)[stage], "--overwrite")
    _one_line_error(r, 5, str(out), "not a ptycli store")
    assert out.read_text() == "hi\n" and sorted(p.name for p in tmp_path.iterdir()) == ["target.txt"]


def test_overwrite_still_replaces_a_ptycli_store(cli, stores, tmp_path):
    out = tmp_path / "s.zarr"
    assert cli("init", stores[1], "-o", out).exit_code == 0
    r = cli("init", stores[1], "-o", out, "--overwrite", "--seed", "5")
    assert r.exit_code == 0, r.stderr
    assert open_store(out, "state").attrs["ptycli"]["options"]["seed"] == 5


def test_output_that_is_an_input_is_refused_and_the_input_kept(cli, stores, tmp_path):
    copy = tmp_path / "simcopy.zarr"
    shutil.copytree(stores[1], copy)
    state = tmp_path / "s.zarr"
    shutil.copytree(stores[2], state)
    for args in (["preprocess", copy, "-o", copy, "--overwrite"],
                 ["preprocess", copy, "-o", tmp_path / "." / "simcopy.zarr", *CAL, "--overwrite"],
                 ["init", copy, "-o", copy, "--overwrite"],
                 ["init", copy, "-o", copy],
                 ["constrain", state, "-o", state, "--overwrite"],
                 ["export", copy, "-o", copy / "p.npy", "--what", "patterns"]):
        _one_line_error(cli(*args), 2, "input")
    assert (copy / "truth").is_dir() and not (copy / "p.npy").exists()
    open_store(copy, "data")
    open_store(state, "state")


@pytest.mark.parametrize("stage", ["simulate", "preprocess", "init", "constrain", "export"])
def test_output_under_a_file_is_an_input_error(cli, stores, tmp_path, stage):
    blocker = tmp_path / "d3.npy"
    np.save(blocker, np.ones((3, 4, 4)))
    out = blocker / ("x.tif" if stage == "export" else "x.zarr")
    args = ["export", stores[2], "-o", out] if stage == "export" else _commands(stores, out)[stage]
    line = _one_line_error(cli(*args), 4, str(out), "not a directory")
    assert "sampling" not in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("stage", ["simulate", "preprocess", "init", "export"])
def test_unwritable_output_location_is_an_input_error(cli, stores, tmp_path, stage):
    out = Path("/proc/ptycli-test.tif" if stage == "export" else "/proc/ptycli-test.zarr")
    args = ["export", stores[2], "-o", out] if stage == "export" else _commands(stores, out)[stage]
    _one_line_error(cli(*args), 4, str(out))


def test_init_refuses_an_existing_output_before_computing(cli, stores, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(stores[2], out)
    line = _one_line_error(cli("init", stores[1], "-o", out), 5, str(out), "--overwrite")
    assert "sampling" not in line


@pytest.mark.parametrize("cmd", ["init", "export"])
def test_raw_file_where_a_store_is_expected(cli, stores, tmp_path, cmd):
    r = cli(cmd, stores[0], "-o", tmp_path / ("s.zarr" if cmd == "init" else "x.tif"))
    _one_line_error(r, 4, str(stores[0]), "not a ptycli store", "ptycli preprocess")


def test_inspect_figure_is_not_overwritten_without_the_flag(cli, stores, tmp_path):
    fig = tmp_path / "f.png"
    fig.write_bytes(b"precious")
    _one_line_error(cli("inspect", stores[2], "--figure", fig, "--json"), 5, str(fig), "--overwrite")
    assert fig.read_bytes() == b"precious"
    r = cli("inspect", stores[2], "--figure", fig, "--json", "--overwrite")
    assert r.exit_code == 0, r.stderr
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_figure_format_follows_the_suffix(cli, stores, tmp_path):
    for name, magic in (("fig.jpg", b"\xff\xd8"), ("fig.pdf", b"%PDF")):
        r = cli("inspect", stores[2], "--figure", tmp_path / name, "--json")
        assert r.exit_code == 0, r.stderr
        assert (tmp_path / name).read_bytes().startswith(magic), name
    _one_line_error(cli("inspect", stores[2], "--figure", tmp_path / "fig.bmp", "--json"), 2, "fig.bmp", ".png")
    assert not (tmp_path / "fig.bmp").exists()


def test_store_writer_never_removes_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="not a ptycli store"):
        StoreWriter(out, kind="data", stage="test", overwrite=True)
    assert (out / "notes.txt").read_text() == "keep"
    assert not (tmp_path / "mine.partial").exists()


def test_store_writer_rechecks_the_target_when_finishing(tmp_path):
    """A folder that appears at OUT during a long run is neither replaced nor merged into."""
    out = tmp_path / "o.zarr"
    with pytest.raises(OutputExistsError):
        with StoreWriter(out, kind="data", stage="test") as w:
            w.array("x", np.zeros(3))
            out.mkdir()
            (out / "f").write_text("a")
            w.finalize()
    assert (out / "f").read_text() == "a" and not (tmp_path / "o.zarr.partial").exists()


def test_tune_overwrite_keeps_a_folder_that_never_held_a_study(stores, tmp_path):
    from ptycli.stages import tune

    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep").write_text("a")
    with pytest.raises(OutputExistsError, match="not a ptycli tune directory"):
        tune._prepare_out(out, True, [stores[1], stores[2]])
    assert (out / "keep").read_text() == "a"


def test_tune_never_moves_into_a_foreign_folder_and_overwrite_keeps_other_files(stores, tmp_path):
    """A first run into a non-empty folder that holds no study is refused, so a later
    --overwrite (which removes the study's own files only) can never reach the user's."""
    from ptycli.stages import tune

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "lab.txt").write_text("a")
    with pytest.raises(OutputExistsError, match="not a ptycli tune directory"):
        tune._prepare_out(notes, False, [stores[1], stores[2]])
    study = tmp_path / "study"
    tune._prepare_out(study, False, [])  # a new folder: made, with its trials/
    (study / "study.db").write_text("db")
    (study / "trials" / "0000").mkdir()
    (study / "mine.txt").write_text("b")  # put there by the user later
    tune._prepare_out(study, True, [])
    assert (study / "mine.txt").read_text() == "b"
    assert not (study / "study.db").exists() and list((study / "trials").iterdir()) == []


def test_tune_bad_flag_values_are_usage_errors_naming_the_flag(stores, tmp_path, cli):
    space = tmp_path / "space.toml"
    space.write_text('[study]\ntrials = 1\niterations = 1\n[param.defocus_a]\nlow = 40.0\nhigh = 120.0\n')
    for flag in ("--sampler", "--pruner", "--objective"):
        res = cli("tune", stores[1], stores[2], "--space", space, "-o", tmp_path / "t", flag, "foo")
        assert res.exit_code == 2, (flag, res.stderr)
        assert flag in res.stderr and res.stderr.strip().count("\n") == 0
        assert not (tmp_path / "t").exists()  # nothing made before the check
