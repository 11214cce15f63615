"""-q/-v work after the subcommand too, and help shows no value type on flags."""

from __future__ import annotations

import re

from ptycli.cli.app import hoist_global_flags


def test_flags_after_the_subcommand_are_hoisted():
    assert hoist_global_flags(["reconstruct", "in.zarr", "-o", "o.zarr", "-vv"]) == \
        ["-vv", "reconstruct", "in.zarr", "-o", "o.zarr"]
    assert hoist_global_flags(["-q", "export", "s", "--quiet", "--what", "probe"]) == \
        ["-q", "--quiet", "export", "s", "--what", "probe"]
    # after `--` everything is an argument; numbers and option values are left alone
    assert hoist_global_flags(["inspect", "--", "-v"]) == ["inspect", "--", "-v"]
    assert hoist_global_flags(["simulate", "o", "--seed", "-1"]) == ["simulate", "o", "--seed", "-1"]


def test_verbose_after_subcommand_gives_tracebacks(cli, tmp_path):
    before = cli("-vv", "inspect", str(tmp_path / "missing.zarr"))
    after = cli("inspect", str(tmp_path / "missing.zarr"), "-vv")
    assert before.exit_code == after.exit_code != 0
    assert "Traceback" in before.stderr and "Traceback" in after.stderr
    assert "Traceback" not in cli("inspect", str(tmp_path / "missing.zarr")).stderr


def test_quiet_after_subcommand(cli, tmp_path):
    res = cli("inspect", str(tmp_path / "missing.zarr"), "-q")
    assert res.exit_code != 0 and "No such option" not in res.stderr


def test_help_shows_no_type_on_flags(cli):
    for cmd in ("export", "reconstruct", "init", "preprocess", "compare"):
        text = re.sub(r"\s+", " ", cli(cmd, "--help").stdout)
        for flag in ("--overwrite", "--help", "--json"):
            if flag in text:
                assert not re.search(re.escape(flag) + r"\s+(-\w\s+)?<(bool|int)>", text), (cmd, flag)
    text = re.sub(r"\s+", " ", cli("export", "--help").stdout)
    assert re.search(r"--bit-depth\s+<int>", text)  # options that take a value keep their type
