"""Print pip constraints "name==floor" from pyproject.toml's ">=" floors, or check the installed versions.

Used by .ci/min-versions. Only the runtime dependencies and the `fast` and `test` extras are pinned (the
ones the smoke subset installs); a requirement whose environment marker does not apply is skipped.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata

EXTRAS = ("fast", "test")
_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(;.*)?$")


def floors(pyproject: str) -> dict[str, str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    out: dict[str, str] = {}
    for req in reqs:
        m = _REQ.match(req)
        if m is None:
            raise SystemExit(f"{pyproject}: requirement {req!r} has no '>=' floor")
        name, _, version, marker = m.groups()
        if marker and not _marker_applies(marker[1:]):
            continue
        out[name.lower()] = version
    return out


def _marker_applies(marker: str) -> bool:
    m = re.fullmatch(r"\s*python_version\s*<\s*'(\d+)\.(\d+)'\s*", marker)
    if m is None:
        raise SystemExit(f"floors.py: unsupported marker {marker!r}")
    return sys.version_info[:2] < (int(m.group(1)), int(m.group(2)))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    pyproject = [a for a in argv if not a.startswith("--")][0]
    bad = []
    for name, version in floors(pyproject).items():
        if not check:
            print(f"{name}=={version}")
            continue
        got = metadata.version(name)
        if got.split("+")[0] != version and not got.startswith(version + "."):
            bad.append(f"{name} {got} (floor {version})")
    if bad:
        print("not at the floor: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
