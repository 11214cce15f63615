"""The README's test command is the one CI runs, and the README opens with the two commands."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_opens_with_demo_and_test_commands():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert "ptycli demo" in blocks[0]
    assert "pytest" in blocks[1]


def test_ci_runs_the_readme_test_command():
    readme_cmd = _bash_blocks((ROOT / "README.md").read_text())[1].strip()
    tail = readme_cmd.split("&&", 2)[2].strip()  # after creating and activating the venv
    ci = (ROOT / ".ci" / "run").read_text()
    assert tail in ci, f".ci/run does not run the README's test command: {tail}"
