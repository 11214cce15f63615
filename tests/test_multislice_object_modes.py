"""Multislice with several object modes (LSQ-ML, 3PIE), and the divergence guard at iteration 0.

Oracle: the `multislice` preset's truth (4 slices, one mode) through ``compare_stores``, the
registered depth-summed phase correlation over the scanned area. A state from
``init --object-modes 2`` with the second mode 0.05·e^{iφ} in every slice used to give NaN in
LSQ-ML's first group and a diverging 3PIE (loss 8e18, correlation -0.22); with one object
mode the same runs reach 0.98 (LSQ-ML) and 0.84 (ePIE), the levels asserted here.
"""

import numpy as np
import pytest
import zarr
from test_fused_kernels import _on_fftw_kernels

from ptycli import backend
from ptycli.engines import backoff, loop
from ptycli.errors import NumericalError
from ptycli.stages import init, reconstruct, simulate
from ptycli.stages.compare import compare_stores

# (recipe, overrides, correlation floor): measured 0.93 (quick, 10 iterations) and 0.84
# (epie, 20) on both paths; the floors leave room for rounding-order differences only.
# The engine's normalisers are under test, not the recipe's depth regulariser (epie's
# kz_filter, which on these noise-free 25 Å slices leaves the loss at 0.23 of its start)
RUNS = {"lsqml": ("quick", [], 0.9), "epie": ("epie", ["stage.0.constraints=[]"], 0.8)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("ms_modes")
    simulate.run(root / "ms.zarr", preset="multislice", scan_shape=(12, 12))
    init.run(root / "ms.zarr", root / "s.zarr", defocus_a=50, slices=4, slice_thickness_a=25, object_modes=2)
    # the weak mode in every slice, as init made it before (now its first slice only): the
    # hardest case for the normalisers, whose light falls as 0.05^(s-1) with depth
    obj = zarr.open_group(str(root / "s.zarr"), mode="r+")["object"]
    weak = obj[1]
    phase = np.random.default_rng(3).uniform(0, 2 * np.pi, size=weak.shape)
    obj[1] = (init.OBJECT_MODE_AMPLITUDE * np.exp(1j * phase)).astype(weak.dtype)
    return root


@pytest.fixture(params=["compiled", "array"])
def path(request, monkeypatch):
    if request.param == "compiled":
        pytest.importorskip("numba")
        _on_fftw_kernels(monkeypatch)
        yield request.param
        return
    backend.set_kernels(False)
    yield request.param
    backend.set_kernels(True)


@pytest.mark.parametrize("engine", sorted(RUNS))
def test_multislice_two_object_modes_recover(stores, engine, path):
    recipe, overrides, floor = RUNS[engine]
    out = stores / f"{engine}-{path}.zarr"
    reconstruct.run(stores / "ms.zarr", stores / "s.zarr", out, recipe=recipe, overrides=overrides, device="cpu")
    g = zarr.open_group(str(out), mode="r")
    loss = g["history/loss"][...]
    obj = g["object"][...]
    corr = compare_stores(out, stores / "ms.zarr")["correlation"]
    assert np.isfinite(loss).all() and np.isfinite(obj).all()
    assert np.all(np.diff(loss[:4]) < 0), loss  # falls from the start, no first-iteration blow-up
    assert loss[-1] < 0.2 * loss[0]
    assert np.abs(obj).max() < 2.0  # weak-phase object: no mode grows without bound
    assert corr >= floor, f"{engine} ({path}): correlation {corr:.4f}"


def _run_fake_engine(update, iterations, scan=(4, 4)):
    """loop.run on a 16-position state (groups of 4) with ``update`` as the engine's."""
    from test_perf_structure import _patterns, _state

    from ptycli.engines.registry import ENGINES
    from ptycli.recipe import Recipe

    state = _state(scan=scan)
    pats = _patterns(state)
    stage = ENGINES["lsqml"].params(type="lsqml", iterations=iterations, grouping={"kind": "compact", "size": 4})
    engine = type("Fake", (), {"update": staticmethod(update)})()
    hooks = loop.RunHooks(read_batch=lambda idx, _s: pats[idx], make_engine=lambda params, st: engine,
                          apply_constraints=lambda st, _s, _it: st)
    before = state.object.copy()
    return state, before, lambda: loop.run(Recipe(recipe="ptycli/1", stage=[stage]), state,
                                           np.arange(len(pats)), 0, hooks)


def test_divergence_in_iteration_zero_is_caught():
    calls = []

    def exploding(st, idx, data, it):
        # each group's loss is its model before its update: the first is the starting
        # state's (1 per position), every later one 1e4 x that, as in the audit's 3PIE run
        calls.append(it)
        st.object = st.object * 2
        return float(len(idx)) * (1.0 if len(calls) == 1 else 1e4)

    state, before, run = _run_fake_engine(exploding, 3)
    with pytest.raises(NumericalError, match="iteration 0: divergence"):
        run()
    # stopped in iteration 0 (not once iteration 1 came in), after the loop's retries with
    # smaller steps (engines/backoff.py) ran its 4 groups again each time
    assert calls == [0] * 4 * (1 + backoff.MAX_RETRIES)
    np.testing.assert_array_equal(state.object, before)  # the state from before the iteration


def test_iteration_zero_within_the_factor_passes():
    losses = iter([4.0, 400.0, 400.0, 400.0] + [4.0] * 4)  # iteration 0: 75.25 < 1000 x 1.0

    _, _, run = _run_fake_engine(lambda st, idx, data, it: next(losses), 2)
    _, history = run()
    assert history.loss == pytest.approx([1204.0 / 16, 1.0])


def test_iteration_zero_baseline_spans_several_groups(monkeypatch):
    """One group's starting loss is no baseline: with groups of one position (sequential
    ePIE) a position far below the scan's mean made a healthy iteration 0 look diverged."""
    monkeypatch.setattr(loop, "BASELINE_POSITIONS", 8)
    # 64 positions in groups of 4: the first group near vacuum (1e-4 per position), the rest 1
    losses = iter([4e-4] + [4.0] * 15 + [4.0] * 16)
    _, _, run = _run_fake_engine(lambda st, idx, data, it: next(losses), 2, scan=(8, 8))
    _, history = run()  # baseline: the first 8 positions (2 groups), 0.5; one group's was 1e-4
    assert history.loss[0] == pytest.approx((4e-4 + 60.0) / 64)
