"""User-audit fixes: damaged inputs are input errors, every bad recipe key is listed in the
documented format, CLI options are checked before any work, and outputs are not replaced."""

import json
import re
import shutil
from pathlib import Path

import pytest
import zarr

from ptycli.recipe import shipped_recipes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(data store, state store), 4x4 positions, built once; tests copy before damaging them."""
    from ptycli.stages import init, simulate

    root = tmp_path_factory.mktemp("audit")
    data, state = root / "d.zarr", root / "s.zarr"
    simulate.run(data, preset="demo", scan_shape=(4, 4), detector_size=32)
    init.run(data, state)
    return data, state


def _one_line_error(r, code, *words):
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptycli: error: "), r.stderr
    assert "internal error" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- 1. damaged inputs
def test_missing_state_array_is_an_input_error(cli, stores, tmp_path):
    bad = tmp_path / "cor.zarr"
    shutil.copytree(stores[1], bad)
    shutil.rmtree(bad / "probe")
    r = cli("reconstruct", stores[0], bad, "-o", tmp_path / "x.zarr", "--progress", "none")
    _one_line_error(r, 4, str(bad), "array 'probe' missing")
    r = cli("constrain", bad, "-o", tmp_path / "y.zarr", "--apply", "orthogonalize_probe")
    _one_line_error(r, 4, str(bad), "array 'probe' missing")


def test_corrupt_chunk_is_an_input_error(cli, stores, tmp_path):
    bad = tmp_path / "cd.zarr"
    shutil.copytree(stores[0], bad)
    chunk = min(p for p in (bad / "patterns" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"garbage\n")
    _one_line_error(cli("inspect", bad), 4, f"{bad}/patterns: corrupt chunk")
    r = cli("reconstruct", bad, stores[1], "-o", tmp_path / "x.zarr", "--iterations", "1", "--progress", "none")
    _one_line_error(r, 4, f"{bad}/patterns: corrupt chunk")


def test_errors_outside_zarr_reads_stay_bugs(stores, tmp_path):
    from ptycli.store.state import read_error

    try:
        raise RuntimeError("error during blosc decompression: -1")  # raised by our code, not a codec
    except RuntimeError as exc:
        assert read_error(exc) is None
    group = zarr.open_group(str(tmp_path / "w.zarr"), mode="w")  # an output, not an input
    with pytest.raises(KeyError) as info:
        group["nope"]
    assert read_error(info.value) is None
    with pytest.raises(KeyError) as info:
        zarr.open_group(str(stores[1]), mode="r")["nope"]
    assert "array 'nope' missing" in str(read_error(info.value))


# ----------------------------------------------------------------------------- 2, 8. option checks
def test_negative_counts_refused(cli, stores, tmp_path):
    r = cli("constrain", stores[1], "-o", tmp_path / "x.zarr", "--counts", "-5", "--apply", "fix_probe_intensity")
    _one_line_error(r, 2, "--counts")
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("args,words", [
    (["--progress", "bogus"], ["--progress", "auto|bar|lines|none"]),
    (["--precision", "half"], ["--precision", "single|double"]),
    (["--checkpoint-every", "-1"], ["--checkpoint-every"]),
    (["--memory-gb", "0"], ["--memory-gb"]),
])
def test_reconstruct_option_values_are_usage_errors(cli, stores, tmp_path, args, words):
    r = cli("reconstruct", stores[0], stores[1], "-o", tmp_path / "x.zarr", *args)
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    text = " ".join(r.stderr.split()).replace("│", "")
    for w in words:
        assert w in text, (w, r.stderr)
    assert not (tmp_path / "x.zarr").exists()


def test_preprocess_progress_checked(cli, tmp_path):
    r = cli("preprocess", tmp_path / "raw.npy", "-o", tmp_path / "x.zarr", "--progress", "bogus")
    assert r.exit_code == 2 and "auto|bar|lines|none" in r.stderr


# ----------------------------------------------------------------------------- 3, 6, 7. recipe validation
@pytest.mark.parametrize("setting,key", [
    ("stage.0.delta=0", "stage.0.delta"),
    ("stage.0.iterations=true", "stage.0.iterations"),
    ("stage.0.grouping.size=true", "stage.0.grouping.size"),
    ("stage.0.refine.probe={after = 5, before = 2}", "stage.0.refine.probe"),
])
def test_bad_values_refused_by_key(cli, setting, key):
    _one_line_error(cli("validate", "quick", "--set", setting), 3, f"{key}: ")


BAD = """recipe = "ptycli/1"
[[stage]]
type = "lsqml"
iterations = -3
delt = 1
[[stage.constraints]]
type = "kz_filter"
beta = -1
[[stage.constraints]]
type = "object_blur"
sigma_px = "a"
[[stage]]
type = "gradient"
learning_rate = {object = {schedule = "bogus"}}
grouping = {size = 0}
[[stage.regularisers]]
type = "tv"
weight = -1
[[stage.regularisers]]
type = "l2"
when = {after = 5, before = 2}
"""
BAD_KEYS = ["stage.0.iterations", "stage.0.delt", "stage.0.constraints.0.beta", "stage.0.constraints.1.sigma_px",
            "stage.1.learning_rate.object.schedule", "stage.1.grouping.size", "stage.1.regularisers.0.weight",
            "stage.1.regularisers.1.when"]


def test_every_bad_key_listed_in_the_documented_format(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    line = _one_line_error(cli("validate", bad), 3)
    assert "stage.0.constraints.0.beta: Input should be greater than or equal to 0 (got -1)" in line  # docs
    assert "stage.1.grouping.size: Input should be greater than or equal to 1 (got 0)" in line
    for key in BAD_KEYS:
        assert f"{key}: " in line, key
    assert not re.search(r"function-after|constrained-|literal\[|ScheduleValue|\.lsqml\.|\.gradient\.", line), line
    assert "learning_rate.object: " not in line  # the number member of the union does not fit a table


def test_validate_json_lists_the_errors(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    r = cli("validate", bad, "--json")
    assert r.exit_code == 3
    doc = json.loads(r.stdout)
    keys = [e["key"] for e in doc["errors"]]
    assert doc["valid"] is False and sorted(keys) == sorted(BAD_KEYS)
    assert [k.split(".")[1] for k in keys] == sorted(k.split(".")[1] for k in keys)  # stage by stage
    assert all(e["message"] for e in doc["errors"])
    r = cli("validate", tmp_path / "none.toml", "--json")
    assert r.exit_code == 3 and json.loads(r.stdout)["errors"][0]["key"] is None


def test_constrain_apply_errors_name_the_key(cli, stores, tmp_path):
    r = cli("constrain", stores[1], "-o", tmp_path / "x.zarr", "--apply", "kz_filter:beta=-1")
    _one_line_error(r, 3, "beta: Input should be greater than or equal to 0 (got -1)")


# ----------------------------------------------------------------------------- 4. a directory named like a recipe
def test_directory_named_like_a_shipped_recipe(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").mkdir()
    (tmp_path / "mine").mkdir()
    r = cli("validate", "quick")
    assert r.exit_code == 0 and "quick.toml: valid" in r.stdout, r.stderr
    _one_line_error(cli("validate", "mine"), 3, "mine: is a directory, not a recipe file")


# ----------------------------------------------------------------------------- 5, 11. inspect
def test_inspect_preview_json_is_one_document(cli, stores):
    r = cli("inspect", stores[1], "--preview", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "state" and isinstance(doc["preview"], str) and "\x1b[" not in doc["preview"]


def test_inspect_checkpoint_says_what_it_is(cli, tmp_path):
    ckpt = tmp_path / "o.zarr.partial" / "checkpoint"
    group = zarr.open_group(str(ckpt), mode="w")
    group.attrs["cursor"] = {"stage": 0, "iteration": 3, "group": 0}
    group.create_array("probe", shape=(1, 4, 4), dtype="complex64")
    _one_line_error(cli("inspect", ckpt), 4, "a checkpoint of a running or interrupted reconstruction",
                    "ptycli watch o.zarr")


# ----------------------------------------------------------------------------- 9. compare --figure
def test_compare_figure_not_overwritten_without_the_flag(cli, stores, tmp_path):
    fig = tmp_path / "f.png"
    fig.write_bytes(b"keep")
    _one_line_error(cli("compare", stores[1], stores[0], "--figure", fig), 5, str(fig), "--overwrite")
    assert fig.read_bytes() == b"keep"
    r = cli("compare", stores[1], stores[0], "--figure", fig, "--overwrite")
    assert r.exit_code == 0 and fig.read_bytes()[:4] == b"\x89PNG", r.stderr


# ----------------------------------------------------------------------------- 10. shipped recipe lists
def test_help_and_readme_list_every_shipped_recipe(cli):
    # rich may wrap the help after a hyphen ("tilted-" / "multislice")
    text = " ".join(cli("reconstruct", "--help").stdout.replace("│", " ").split()).replace("- ", "-")
    readme = (REPO / "README.md").read_text()
    tour = readme[readme.index("# 3. Reconstruct"):].split("\n\n")[0].replace("#", " ")
    for name in shipped_recipes():
        assert re.search(rf"[ (]{re.escape(name)}[,)]", text), name
        assert re.search(rf"[ (]{re.escape(name)}[,)]", " ".join(tour.split())), name
