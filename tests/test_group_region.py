"""LSQ-ML (sums and step) and the gradient engine (object gradient) work on the group's region
of the object grid: the run must equal the one on the whole grid (the sums are zero outside
the windows; the gradient engine's optimiser still steps the whole grid)."""

import numpy as np
import pytest
from test_fused_kernels import _close, _run

from ptycli.engines import common


@pytest.mark.parametrize("engine,kernels,slices,positions", [
    ("lsqml", True, 1, True), ("lsqml", False, 1, False), ("lsqml", True, 2, False),
    ("gradient", True, 1, True), ("gradient", False, 2, False),
])
def test_group_regions_equal_the_whole_grid(engine, kernels, slices, positions, monkeypatch):
    taken = []
    real = common.group_region

    def spy(state, batch, ctx):
        region = real(state, batch, ctx)
        taken.append(region is not None and region.object.shape[-2:] != state.object.shape[-2:])
        return region

    monkeypatch.setattr(common, "group_region", spy)
    monkeypatch.setattr(common, "REGION_FRACTION", 1.0)  # crop every group that is not the whole grid
    cropped, loss_c = _run(engine, kernels, monkeypatch, modes=2, group=2, slices=slices, positions=positions)
    assert any(taken)
    monkeypatch.setattr(common, "REGION_FRACTION", 0.0)  # never crop
    taken.clear()
    whole, loss_w = _run(engine, kernels, monkeypatch, modes=2, group=2, slices=slices, positions=positions)
    assert not any(taken)
    _close(cropped.object, whole.object, 1e-5)
    _close(cropped.probe, whole.probe, 1e-5)
    np.testing.assert_allclose(loss_c, loss_w, rtol=1e-5)
    np.testing.assert_allclose(cropped.positions, whole.positions, rtol=0, atol=1e-5)


def test_random_groups_and_shared_groups_use_the_whole_grid():
    from types import SimpleNamespace

    from ptycli.engines import distributed

    state = SimpleNamespace(window=(8, 8), object=np.zeros((1, 1, 40, 40), np.complex64))
    ctx = SimpleNamespace(extra={})
    spread = common.Batch(idx=np.arange(2), y0=np.array([0, 32]), x0=np.array([0, 32]), frac=None, source=None)
    near = common.Batch(idx=np.arange(2), y0=np.array([4, 6]), x0=np.array([10, 12]), frac=None, source=None)
    assert common.group_region(state, spread, ctx) is None  # most of the object
    region = common.group_region(state, near, ctx)
    assert region.object.shape == (1, 1, 10, 10) and region.object.flags.c_contiguous
    state.object[...] = np.arange(1600).reshape(40, 40)
    region = common.group_region(state, near, ctx)
    np.testing.assert_array_equal(region.object, state.object[..., 4:14, 10:20])
    region.add_to_object(np.ones((1, 1, 10, 10), np.complex64))  # writes reach the state's grid
    assert state.object[0, 0, 4, 10] == 4 * 40 + 10 + 1 and state.object[0, 0, 3, 10] == 3 * 40 + 10
    shifted = region.batch(near)
    assert list(shifted.y0) == [0, 2] and list(shifted.x0) == [0, 2]

    class TwoRanks(distributed.SerialComm):
        size = 2

    assert common.group_region(state, near, SimpleNamespace(extra={"comm": TwoRanks()})) is None
