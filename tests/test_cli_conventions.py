"""CLI conventions of style.md: version flags, fast start, exit-code table, stdout/stderr."""

import subprocess
import sys

from ptycli import __version__
from ptycli.errors import EXIT_CODE_MEANINGS, ExitCode


def test_version_is_bare(cli):
    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == __version__


def test_show_versions_lists_dependencies(cli):
    r = cli("--show-versions")
    assert r.exit_code == 0
    for dep in ("numpy", "zarr", "typer", "pydantic"):
        assert dep in r.stdout


def test_help_lists_subcommands_without_heavy_imports():
    code = (
        "import sys, io, contextlib\n"
        "from ptycli.cli.main import app\n"
        "buf = io.StringIO()\n"
        "try:\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        app(['--help'], prog_name='ptycli')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('zarr', 'scipy', 'cupy', 'matplotlib', 'h5py') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "print(buf.getvalue())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for cmd in ("simulate", "preprocess", "init", "reconstruct", "constrain", "export", "inspect"):
        assert cmd in out, f"`ptycli --help` does not list {cmd}"


def test_exit_code_table_is_complete():
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode)
    assert (ExitCode.INTERRUPTED, ExitCode.USER_INTERRUPT) == (75, 130)
