"""LSQ-ML's group after phase 1 as a launch of threads that wait for each other at barriers
(``_kernels.lsqml_tail_part``: direction, step terms, steps, object step).

Oracle: the same run step by step (both off: phase 1, the direction, the terms kernels, the
steps and the object step as separate calls). Every pixel and position goes through the
same operations, but not through the same machine code: the kernels are compiled with
reassociation allowed, and LLVM may order a sum's terms differently where a kernel is
called from another one. With a cold Numba cache under pytest-xdist the states differed
in the last bit (2.4e-7 relative after two iterations), so they are compared to 1e-5 of
the largest value, not bit for bit.
"""

import numpy as np
import pytest
from test_fused_kernels import _close, _on_fftw_kernels
from test_perf_structure import _patterns, _state

from ptycli import backend, parallel
from ptycli.engines import common, loop, lsqml
from ptycli.engines.registry import ENGINES
from ptycli.recipe import Recipe

pytest.importorskip("numba")


def _run(kind, refine, modes=1):
    state = _state(modes=modes, scan=(5, 5))
    pats = _patterns(state)
    stage = ENGINES["lsqml"].params(type="lsqml", iterations=2, grouping={"kind": kind, "size": 9}, refine=refine)
    recipe = Recipe(recipe="ptycli/1", stage=[stage])
    ctx = common.make_context(state, np, "single", stage.noise.model, stage.noise.eps,
                              n_e=float(pats.sum(axis=(-2, -1)).mean()))
    hooks = loop.RunHooks(read_batch=lambda idx, _s: pats[idx],
                          make_engine=lambda params, st: ENGINES["lsqml"].engine(params, ctx, st),
                          apply_constraints=lambda st, _s, _it: st)
    return loop.run(recipe, state, np.arange(len(pats)), 0, hooks)[0]


@pytest.mark.parametrize("kind,refine,modes,parts", [
    ("sparse", {"object": True, "probe": True}, 1, 2),  # the object step in the launch (whole grid)
    ("compact", {"object": True, "probe": True}, 1, 2),  # a region: the step after it, in Python
    ("sparse", {"object": True, "probe": False}, 1, 2),
    ("sparse", {"object": False, "probe": True}, 1, 2),
    ("sparse", {"object": True, "probe": True}, 2, 3),  # two probe modes, three threads
    ("sparse", {"object": True, "probe": True}, 1, 1),  # one thread: its barriers pass at once
])
def test_barrier_launches_match_the_step_by_step_path(kind, refine, modes, parts, monkeypatch):
    _on_fftw_kernels(monkeypatch)
    monkeypatch.setattr(common, "n_parts", lambda ctx, b, e=1: min(parts, b))
    k = backend.kernels(np)
    launched = []
    real = k.lsqml_tail_part
    monkeypatch.setattr(k, "lsqml_tail_part", lambda *a: launched.append(a[1]) or real(*a))
    fused = _run(kind, refine, modes)
    assert sorted(set(launched)) == list(range(parts))  # every thread ran its share
    monkeypatch.setattr(lsqml.LsqmlEngine, "_kernel_tail", lambda self, *a: None)
    steps = _run(kind, refine, modes)
    _close(fused.object, steps.object, rtol=1e-5)
    _close(fused.probe, steps.probe, rtol=1e-5)
    assert not np.array_equal(fused.object if refine["object"] else fused.probe,
                              _state(modes=modes).object if refine["object"] else _state(modes=modes).probe)


def test_tail_is_not_launched_where_its_threads_could_not_run_together(monkeypatch):
    """While another caller's launches hold the pool's threads the parts may not all run at
    once: the step-by-step path runs instead (threads waiting at a barrier would wait forever)."""
    _on_fftw_kernels(monkeypatch)
    monkeypatch.setattr(common, "n_parts", lambda ctx, b, e=1: min(2, b))
    k = backend.kernels(np)
    launched = []
    real = k.lsqml_tail_part
    monkeypatch.setattr(k, "lsqml_tail_part", lambda *a: launched.append(a[1]) or real(*a))
    with parallel._busy:
        _run("sparse", {"object": True, "probe": True})
    assert not launched
