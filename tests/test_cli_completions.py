"""The committed shell completions match the app; they are regenerated, never hand-edited."""

import shutil
import subprocess
from pathlib import Path

import pytest

from ptycli.cli.completions import render_all

ROOT = Path(__file__).resolve().parents[1]


def test_completions_are_current():
    for name, text in render_all().items():
        committed = (ROOT / "completions" / name).read_text()
        assert committed == text, (
            f"completions/{name} is stale: run `python -m ptycli.cli.completions completions/`"
        )


def test_every_subcommand_is_completed():
    from ptycli.cli.completions import command_tree

    tree = command_tree()
    bash = render_all()["ptycli.bash"]
    for cmd in tree:
        if cmd:
            assert f"    {cmd}) opts=" in bash


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "completions" / "ptycli.bash")], check=True)
