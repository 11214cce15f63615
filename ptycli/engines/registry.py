"""Engine registry: recipe ``type`` -> (engine class, params model).

Plugin packages add engines through the ``ptycli.engines`` entry point group (an
``EngineSpec``, specs.py): ``engine_spec`` finds them, loaded on first use."""

from __future__ import annotations

from typing import Any

from ..recipe import EpieStage, GradientStage, LbfgsStage, LsqmlStage
from .specs import EngineSpec, plugin_engines


def _lazy(module: str, cls: str) -> Any:
    def build(params: Any, ctx: Any, state: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(f"ptycli.engines.{module}"), cls)(params, ctx, state)

    return build


class _Engines(dict):
    """The built-in engines; a plugin engine joins on its first lookup (``ENGINES[name]``, as
    the loop makes it, or ``engine_spec``)."""

    def __missing__(self, name: str) -> EngineSpec:
        spec = plugin_engines().get(name)
        if spec is None:
            raise KeyError(name)
        self[name] = spec
        return spec


ENGINES: dict[str, EngineSpec] = _Engines({
    "epie": EngineSpec("epie", EpieStage, _lazy("epie", "EpieEngine"),
                       "ePIE / 3PIE (multislice) with the rPIE option"),
    "lsqml": EngineSpec("lsqml", LsqmlStage, _lazy("lsqml", "LsqmlEngine"),
                        "least-squares maximum likelihood (Odstrčil 2018)"),
    "gradient": EngineSpec("gradient", GradientStage, _lazy("gradient", "GradientEngine"),
                           "Wirtinger gradients with SGD/momentum/Nesterov or Adam"),
    "lbfgs": EngineSpec("lbfgs", LbfgsStage, _lazy("lbfgs", "LbfgsEngine"),
                        "full-batch L-BFGS, strong-Wolfe line search, every refinable variable"),
})
BUILTIN = tuple(ENGINES)


def engine_spec(name: str) -> EngineSpec | None:
    """The engine of recipe ``type = name``: built in, or from a plugin package."""
    try:
        return ENGINES[name]
    except KeyError:
        return None
