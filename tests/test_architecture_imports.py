"""Imports flow one way: cli -> stages -> {engines, constraints, store, readers, recipe} ->
physics -> backend. Nothing imports cli; store never imports physics or engines; only
backend imports cupy; compute code never imports scipy."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ptycli"

ALLOWED = {
    "errors": set(),
    "backend": {"errors", "_fftw", "_kernels", "_pool"},
    "_fftw": set(),  # the backend's FFTW plan cache (private to the backend seam)
    # the backend's fused CPU kernels (Numba; private to the backend seam), in two files:
    # _kernels re-exports the multislice ones, which build on its helpers
    "_kernels": {"_kernels_multislice"},
    "_kernels_multislice": {"_kernels"},
    "_pool": set(),  # the backend's host threads for a group's parts (private to the backend seam)
    "physics": {"backend", "errors", "physics"},
    "store": {"errors", "store", "__init__"},
    "plugins": set(),  # entry-point discovery (importlib.metadata only)
    "readers": {"errors", "readers", "store", "backend", "plugins"},
    "recipe": {"errors", "engines", "constraints", "recipe", "store"},
    "constraints": {"backend", "errors", "physics", "constraints", "store", "plugins"},
    "engines": {"backend", "errors", "physics", "engines", "constraints", "store", "recipe", "plugins"},
    "stages": {"backend", "errors", "physics", "engines", "constraints", "store", "readers",
               "recipe", "stages", "__init__"},
}
COMPUTE = ("physics", "engines", "constraints")


def _area(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py") if rel.parts else ""


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, 0
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, node.level
        elif isinstance(node, ast.ImportFrom):  # `from .. import backend`: the names are modules
            for a in node.names:
                yield a.name, node.level


def _target(path: Path, module: str, level: int) -> str | None:
    if level == 0:
        if module == "ptycli":
            return "__init__"
        return module.split(".")[1] if module.startswith("ptycli.") else None
    base = path.relative_to(PKG).parts[:-1]
    up = base[: len(base) - (level - 1)] if level > 1 else base
    parts = [*up, *(module.split(".") if module else [])]
    if not parts or parts[0] == "__version__":
        return "__init__"
    return parts[0].removesuffix(".py")


def test_layering():
    bad = []
    for path in PKG.rglob("*.py"):
        area = _area(path)
        if area in ("cli", "__main__", "__init__"):
            continue
        for module, level in _imports(path):
            target = _target(path, module, level)
            if target is None:
                continue
            if target == "cli" or (area in ALLOWED and target not in ALLOWED[area] | {area}):
                bad.append(f"{path.relative_to(PKG)} imports {target} ({module or '.'})")
    assert not bad, "import direction violated:\n" + "\n".join(bad)


def test_only_backend_imports_cupy_and_compute_never_imports_scipy():
    bad = []
    for path in PKG.rglob("*.py"):
        area = _area(path)
        for module, level in _imports(path):
            if level:
                continue
            root = module.split(".")[0]
            if root in ("cupy", "cupyx") and path.name != "backend.py":
                bad.append(f"{path.relative_to(PKG)} imports {module}")
            if root == "scipy" and area in COMPUTE:
                bad.append(f"{path.relative_to(PKG)} imports {module} (compute code)")
    assert not bad, "\n".join(bad)
