"""Engine registry: recipe ``type`` -> (engine class, params model)."""

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
