"""pyproject's dependency floors are honest, and CI installs exactly them (.ci/min-versions)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _floors() -> dict[str, str]:
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "floors.py"), str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("==") for line in out.split())


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def test_every_floor_is_an_exact_release():
    floors = _floors()
    assert {"numpy", "scipy", "zarr", "numcodecs", "pydantic", "numba", "pytest"} <= set(floors)
    # three-part versions: "2023.7" or "13" pin no release that exists (== compares padded versions)
    assert all(len(v.split(".")) >= 2 and v[0].isdigit() for v in floors.values()), floors


def test_numpy_floor_has_the_array_api_functions_physics_uses():
    uses = [p for p in (ROOT / "ptycli").rglob("*.py") if re.search(r"\bxp\.(astype|concat)\(", p.read_text())]
    assert uses  # the reason for the floor
    assert _version(_floors()["numpy"]) >= (2, 0, 0)  # np.astype / np.concat are new in NumPy 2.0


def test_zarr_floor_is_not_a_yanked_release():
    # zarr 3.0.0-3.0.7 were yanked from PyPI: zarr.load() deletes data (zarr-python issue 3061)
    assert _version(_floors()["zarr"]) >= (3, 0, 8)


def test_ci_runs_the_min_versions_step_on_a_smoke_subset():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/min-versions" in ci
    step = (ROOT / ".ci" / "min-versions").read_text()
    assert "-c " in step and "floors.py --check" in step and '-m "not slow"' in step
    for test_file in re.findall(r"tests/test_\w+\.py", step):
        assert (ROOT / test_file).exists(), test_file
