"""No machine path in the project: tests find the shared material as ../shared from the repository root."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# An absolute path into a particular machine's home or work directory (a string literal that starts so).
MACHINE_PATH = re.compile(r"""["'](/work/|/root/|/home/[^/"']+/|/Users/)""")


def test_no_source_or_test_names_a_machine_path():
    found = []
    for folder in ("ptycli", "tests", "benchmarks", "examples", "scripts", ".ci"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in {".py", ".sh", ".sbatch", ".toml", ""} or not path.is_file():
                continue
            if path == Path(__file__).resolve():
                continue
            text = path.read_text(errors="replace")
            found += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
                      for m in MACHINE_PATH.finditer(text)]
    assert not found, "machine paths (resolve ../shared from the repository root instead): " + ", ".join(found)


def test_shared_reference_resolves_beside_the_repository():
    from _helpers import SHARED

    assert SHARED == ROOT.parent / "shared"
