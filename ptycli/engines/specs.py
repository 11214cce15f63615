"""What an engine is to the recipe and the loop (``EngineSpec``), and the engines plugin
packages add through the ``ptycli.engines`` entry point group (ptycli/plugins.py), loaded on
first use. The built-in engines are listed in registry.py, which imports the recipe's stage
models; recipe.py validates a plugin stage through this module instead, so neither imports
the other back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineSpec:
    name: str
    params: type
    engine: Any  # class: (params, ctx, state) -> object with update(state, idx, data, it)
    summary: str

    @property
    def Params(self) -> type:
        return self.params


_plugins: dict[str, EngineSpec] = {}
_plugins_loaded = False


def plugin_engines() -> dict[str, EngineSpec]:
    """The plugin packages' engines by recipe ``type`` (entry points read once per process)."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        from .. import plugins  # noqa: PLC0415

        for spec in plugins.specs("ptycli.engines", lambda s: isinstance(s, EngineSpec)):
            _plugins.setdefault(spec.name, spec)
    return _plugins
