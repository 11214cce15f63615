"""Drive ptycli's engines through their Python API and time each iteration.

The engines run inside the one loop (``ptycli.engines.loop.run``) exactly as
``reconstruct`` runs them, with the data already in memory on the device, so a time per
iteration is the engine's compute and not the store's I/O. Engines are discovered through
``ptycli.engines.registry``; a missing or broken engine is reported, never fatal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KNOWN_ENGINES = ("epie", "lsqml", "gradient", "lbfgs")


def engine_status() -> dict[str, str]:
    """``available`` or ``not available (<why>)`` for every engine the suite knows."""
    try:
        from ptycli.engines.registry import ENGINES
    except Exception as exc:  # noqa: BLE001  (the registry may not exist yet, or fail to import)
        return {name: f"not available (no engine registry: {type(exc).__name__})" for name in KNOWN_ENGINES}
    names = list(dict.fromkeys([*KNOWN_ENGINES, *ENGINES]))
    return {n: "available" if n in ENGINES else "not available (not in the registry)" for n in names}


def available_engines() -> list[str]:
    return [n for n, s in engine_status().items() if s == "available"]


@dataclass
class IterationTimer:
    """Loop observer: wall time of every iteration (as the loop measures it), the loss, and
    the engine's running count of f+∇f evaluations when it keeps one (L-BFGS)."""

    times_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    evaluations: list[float] = field(default_factory=list)
    engines: list[Any] = field(default_factory=list)  # filled by make_run

    def on_iteration_end(self, stage: int, iteration: int, loss: float, time_s: float) -> None:
        self.times_s.append(float(time_s))
        self.losses.append(float(loss))
        ev = getattr(self.engines[-1], "ev", None) if self.engines else None
        if ev is not None and hasattr(ev, "n_evals"):
            self.evaluations.append(float(ev.n_evals))

    def evaluations_per_iteration(self, n_warmup: int) -> float:
        """Mean f+∇f evaluations per timed iteration (1 for engines that do not count)."""
        if len(self.evaluations) <= n_warmup or n_warmup < 1:
            return 1.0
        timed = self.evaluations[n_warmup:]
        return (timed[-1] - self.evaluations[n_warmup - 1]) / len(timed)


def stage_params(engine: str, iterations: int, **overrides: Any) -> Any:
    """The engine's recipe stage with its defaults (as a user's minimal recipe gets)."""
    from ptycli.engines.registry import ENGINES

    return ENGINES[engine].params(type=engine, iterations=iterations, **overrides)


def make_run(engine: str, state: Any, patterns: Any, iterations: int, *, precision: str = "single",
             observers: list[Any] = (), seed: int = 0, **overrides: Any) -> Callable[[], Any]:
    """A zero-argument call running ``iterations`` of ``engine`` on ``state`` (changed in place)."""
    from ptycli import backend
    from ptycli.engines import common, loop
    from ptycli.engines.data import Rows
    from ptycli.engines.registry import ENGINES
    from ptycli.recipe import Recipe

    xp = backend.namespace(state.probe)
    stage = stage_params(engine, iterations, **overrides)
    recipe = Recipe(recipe="ptycli/1", stage=[stage])
    n_e = float(np.mean(np.sum(backend.to_numpy(patterns[: min(64, len(patterns))]), axis=(-2, -1))))
    ctx = common.make_context(state, xp, precision, stage.noise.model, stage.noise.eps, n_e=n_e)
    made = next((o.engines for o in observers if isinstance(o, IterationTimer)), [])

    def make_engine(params: Any, st: Any) -> Any:
        made.append(ENGINES[engine].engine(params, ctx, st))
        return made[-1]

    hooks = loop.RunHooks(
        read_batch=lambda idx, _stage: patterns[idx],
        # resident host patterns reach the engines as the product's do (PatternSource.read_rows)
        read_rows=(lambda idx, _stage: Rows(patterns, idx)) if isinstance(patterns, np.ndarray) else None,
        make_engine=make_engine,
        apply_constraints=lambda st, _stage, _it: st,
        observers=list(observers),
    )
    subset = np.arange(len(patterns))
    return lambda: loop.run(recipe, state, subset, seed, hooks)[0]


def fft_group(engine: str, n_positions: int, overrides: dict[str, Any] | None = None) -> int:
    """Positions transformed in one call: the group, unless it is larger than the scan or the
    engine evaluates it in chunks (L-BFGS's full batch)."""
    stage = stage_params(engine, 1, **(overrides or {}))
    return min(int(stage.grouping.size), n_positions, int(getattr(stage, "chunk", None) or 2**62))


def time_iterations(engine: str, state: Any, patterns: Any, n_timed: int, n_warmup: int = 1,
                    overrides: dict[str, Any] | None = None, observers: tuple[Any, ...] = (),
                    **kw: Any) -> dict[str, Any]:
    """Seconds of each iteration; the first ``n_warmup`` are dropped (plans, caches, pages).
    ``observers`` see every iteration's end after the timer (their work is not timed)."""
    timer = IterationTimer()
    overrides = overrides or {}
    run = make_run(engine, state, patterns, n_warmup + n_timed, observers=[timer, *observers], **kw, **overrides)
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    timed = timer.times_s[n_warmup:]
    stage = stage_params(engine, 1, **overrides)
    group = fft_group(engine, len(patterns), overrides)
    return {
        "times_s": timed, "warmup_s": timer.times_s[:n_warmup],
        "median_s": float(np.median(timed)), "wall_s": wall,
        "group_size": int(stage.grouping.size), "grouping": stage.grouping.kind, "fft_group": group,
        "evaluations_per_iteration": timer.evaluations_per_iteration(n_warmup),
        "loss_first": timer.losses[0] if timer.losses else None,
        "loss_last": timer.losses[-1] if timer.losses else None,
    }
