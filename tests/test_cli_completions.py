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


def test_zsh_compdef_is_the_first_line():
    """compinit reads only line 1 for `#compdef`; a header above it hid the whole script."""
    assert (ROOT / "completions" / "_ptycli").read_text().splitlines()[0] == "#compdef ptycli"


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_compinit_registers_ptycli(tmp_path):
    shutil.copy(ROOT / "completions" / "_ptycli", tmp_path / "_ptycli")
    subprocess.run(["zsh", "-n", str(tmp_path / "_ptycli")], check=True)
    script = (f"fpath=({tmp_path} $fpath); autoload -U compinit; "
              f"compinit -D -u -d {tmp_path}/zcompdump; print -r -- ${{_comps[ptycli]}}")
    out = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "_ptycli"


def _bash_complete(*words: str) -> list[str]:
    """COMPREPLY of the committed bash script for the command line `ptycli WORDS...`."""
    line = " ".join(f"'{w}'" for w in ("ptycli", *words))
    script = (f"source {ROOT / 'completions' / 'ptycli.bash'}; COMP_WORDS=({line}); "
              f"COMP_CWORD={len(words)}; _ptycli; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_values_are_completed():
    from ptycli.recipe import shipped_recipes
    from ptycli.stages.export import WHATS
    from ptycli.stages.simulate import PRESETS

    assert _bash_complete("export", "s.zarr", "--what", "") == list(WHATS)
    assert _bash_complete("export", "s.zarr", "--what", "probe") == ["probe", "probe-fourier"]
    assert set(_bash_complete("reconstruct", "i.zarr", "--recipe", "")) == set(shipped_recipes())
    assert _bash_complete("simulate", "o.zarr", "--preset", "") == list(PRESETS)
    assert _bash_complete("reconstruct", "i.zarr", "--precision", "") == ["single", "double"]
    assert _bash_complete("bench", "") == ["fft"]
    assert "--verbose" in _bash_complete("export", "--ver")  # global flags also after the subcommand
    zsh = (ROOT / "completions" / "_ptycli").read_text()
    assert f"'--what:what:({' '.join(WHATS)})'" in zsh and "'1:target:(fft)'" in zsh
    fish = (ROOT / "completions" / "ptycli.fish").read_text()
    assert f"-l preset -x -a '{' '.join(PRESETS)}'" in fish


def test_one_completion_mechanism(cli):
    """The static scripts are the only completion: no click --install-completion beside them."""
    out = cli("--help").stdout
    assert "--install-completion" not in out and "--show-completion" not in out
