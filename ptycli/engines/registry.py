"""Engine registry: recipe ``type`` -> (engine class, params model).

Plugin packages add engines through the ``ptycli.engines`` entry point group (an
``EngineSpec``; ptycli/plugins.py): ``engine_spec`` finds them, loaded on first use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..recipe import EpieStage, GradientStage, LbfgsStage, LsqmlStage


@dataclass(frozen=True)
class EngineSpec:
    name: str
    params: type
    engine: Any  # class: (params, ctx, state) -> object with update(state, idx, data, it)
    summary: str

    @property
    def Params(self) -> type:
        return self.params


def _lazy(module: str, cls: str) -> Any:
    def build(params: Any, ctx: Any, state: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(f"ptycli.engines.{module}"), cls)(params, ctx, state)

    return build


ENGINES: dict[str, EngineSpec] = {
    "epie": EngineSpec("epie", EpieStage, _lazy("epie", "EpieEngine"),
                       "ePIE / 3PIE (multislice) with the rPIE option"),
    "lsqml": EngineSpec("lsqml", LsqmlStage, _lazy("lsqml", "LsqmlEngine"),
                        "least-squares maximum likelihood (Odstrčil 2018)"),
    "gradient": EngineSpec("gradient", GradientStage, _lazy("gradient", "GradientEngine"),
                           "Wirtinger gradients with SGD/momentum/Nesterov or Adam"),
    "lbfgs": EngineSpec("lbfgs", LbfgsStage, _lazy("lbfgs", "LbfgsEngine"),
                        "full-batch L-BFGS, strong-Wolfe line search, every refinable variable"),
}
BUILTIN = tuple(ENGINES)
_plugins_added = False


def engine_spec(name: str) -> EngineSpec | None:
    """The engine of recipe ``type = name``: built in, or from a plugin package."""
    global _plugins_added
    if name not in ENGINES and not _plugins_added:
        _plugins_added = True
        from .. import plugins  # noqa: PLC0415

        for spec in plugins.specs("ptycli.engines", lambda s: isinstance(s, EngineSpec)):
            ENGINES.setdefault(spec.name, spec)
    return ENGINES.get(name)
