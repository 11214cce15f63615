"""Imports flow one way: cli -> stages -> {engines, constraints, store, readers, recipe} ->
physics -> {parallel, backend -> host_fft}. Nothing imports cli; store never imports physics or
engines; only backend imports cupy; compute code never imports scipy; and no module imports,
even lazily inside a function, a module that imports it back (no cycles)."""

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ptycli"

ALLOWED = {
    "errors": set(),
    "backend": {"errors", "host_fft", "_kernels"},
    "host_fft": {"errors", "_fftw"},  # the host's FFT library and the kernels' FFTW plans
    "_fftw": set(),  # FFTW plans and wisdom through pyFFTW (private to host_fft)
    "_kernels": set(),  # the fused CPU kernels (Numba; a package reached through backend.kernels)
    "parallel": {"errors", "host_fft"},  # host threads for a group's parts (concurrent.futures)
    "host_allocator": set(),  # ptycli --reuse-heap (glibc mallopt), called by the command line only
    "physics": {"backend", "errors", "physics"},
    "store": {"errors", "store", "__init__"},
    "plugins": set(),  # entry-point discovery (importlib.metadata only)
    "readers": {"errors", "readers", "store", "backend", "plugins"},
    "recipe": {"errors", "engines", "constraints", "recipe", "store"},
    "constraints": {"backend", "errors", "physics", "constraints", "store", "plugins"},
    "engines": {"backend", "host_fft", "parallel", "errors", "physics", "engines", "constraints", "store",
                "recipe", "plugins"},
    "stages": {"backend", "host_fft", "parallel", "errors", "physics", "engines", "constraints", "store",
               "readers", "recipe", "stages", "__init__"},
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


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the ptycli modules it imports, anywhere in its source (a function-level
    import is a dependency too): ``from pkg import name`` counts the submodule when ``name``
    is one, else the package."""
    modules = {_module(p): p for p in PKG.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.split(".")[0] == "ptycli"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                elif (node.module or "").split(".")[0] == "ptycli":
                    base = node.module
                else:
                    continue
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else owner(base) for a in node.names}
        graph[mod] = {d for d in deps if d and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert "ptycli._kernels.multislice" in graph["ptycli._kernels"]  # the graph sees submodules
    found = cycles(graph)
    assert not found, "modules that import each other (directly or through others):\n" + "\n".join(
        " <-> ".join(c) for c in found)
