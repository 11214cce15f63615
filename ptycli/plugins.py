"""Plugins: packages that declare entry points in these groups extend ptycli without any
change to it (``pyproject.toml`` of the plugin package)::

    [project.entry-points."ptycli.readers"]
    myformat = "mypkg.reader"            # a module whose import calls ptycli.readers.register(...)
    [project.entry-points."ptycli.engines"]
    myengine = "mypkg.engine:SPEC"       # an engines.registry.EngineSpec (recipe type = its name)
    [project.entry-points."ptycli.constraints"]
    myconstraint = "mypkg.constraints:SPEC"  # a ConstraintSpec or RegulariserSpec (or a list)
    [project.entry-points."ptycli.noise_models"]
    mynoise = "mypkg.noise:SPEC"         # an engines.noise.NoiseModelSpec (recipe noise.model = its name)

Entry points are read only when a registry is first used (``ptycli --help`` never loads
them), each once per process. A plugin that fails to import is skipped with a one-line
warning naming it, so one broken package does not break every command.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Any, Callable

GROUPS = ("ptycli.readers", "ptycli.engines", "ptycli.constraints", "ptycli.noise_models")
_loaded: dict[str, dict[str, Any]] = {}


class PluginWarning(UserWarning):
    """A plugin entry point that could not be loaded."""


def load(group: str) -> dict[str, Any]:
    """{entry point name: loaded object} of ``group``, loaded on the first call."""
    if group not in _loaded:
        found: dict[str, Any] = {}
        for ep in entry_points(group=group):
            try:
                found[ep.name] = ep.load()
            except Exception as exc:  # any import-time failure of someone else's package
                warnings.warn(f"plugin {ep.name!r} ({group} = {ep.value}) not loaded: "
                              f"{type(exc).__name__}: {exc}", PluginWarning, stacklevel=2)
        _loaded[group] = found
    return _loaded[group]


def specs(group: str, accept: Callable[[Any], bool]) -> list[Any]:
    """Every object of ``group`` (an entry point may give one or a list) that ``accept`` takes;
    a wrong kind of object is skipped with a warning naming the entry point."""
    out: list[Any] = []
    for name, obj in load(group).items():
        items = obj if isinstance(obj, (list, tuple)) else [obj]
        for item in items:
            if accept(item):
                out.append(item)
            else:
                warnings.warn(f"plugin {name!r} ({group}) gave {type(item).__name__}, not a spec this group takes",
                              PluginWarning, stacklevel=2)
    return out
