"""A group's patterns as rows of the resident set (engines/data.Rows), read in place.

Oracle: the same run with the group's frames gathered into an array (``read_batch``);
the kernels read the very same values, so the states must agree bit for bit.
"""

import numpy as np
import pytest
from test_fused_kernels import _on_fftw_kernels
from test_perf_structure import _patterns, _state

from ptycli import host_fft
from ptycli.engines import common, loop
from ptycli.engines.data import PatternSource, Rows, gathered
from ptycli.engines.registry import ENGINES
from ptycli.recipe import Recipe


def test_rows_slice_and_gather_as_the_array_would():
    frames = np.arange(6 * 2 * 2, dtype=np.float32).reshape(6, 2, 2)
    rows = Rows(frames, np.array([4, 0, 5, 2]))
    assert rows.shape == (4, 2, 2) and rows.ndim == 3 and rows.dtype == np.float32 and len(rows) == 4
    np.testing.assert_array_equal(rows.gather(), frames[[4, 0, 5, 2]])
    np.testing.assert_array_equal(rows[1:3].gather(), frames[[0, 5]])
    np.testing.assert_array_equal(gathered(rows), frames[[4, 0, 5, 2]])
    assert gathered(frames) is frames
    with pytest.raises(TypeError):
        rows[np.array([0, 1])]


def test_batch_gathers_rows_once_and_its_parts_keep_rows():
    frames = np.random.default_rng(0).random((9, 3, 3)).astype(np.float32)
    idx = np.array([7, 1, 3, 8])
    b = common.Batch(idx=idx, y0=np.zeros(4, int), x0=np.zeros(4, int), frac=np.zeros((4, 2)),
                     source=Rows(frames, idx))
    parts = common.split_batch(b, 2)
    got, rows = parts[1].frames_and_rows()
    assert got is frames and rows.tolist() == [3, 8]  # no copy for the kernels
    first = b.data
    np.testing.assert_array_equal(first, frames[idx])
    assert b.data is first  # gathered once
    plain = common.Batch(idx=idx, y0=b.y0, x0=b.x0, frac=b.frac, source=frames[idx])
    got, rows = plain.frames_and_rows()
    assert rows.tolist() == [0, 1, 2, 3] and got is plain.data


def test_pattern_source_reads_rows_of_resident_patterns_only():
    pats = np.random.default_rng(1).random((8, 4, 4)).astype(np.float32)
    resident = PatternSource(pats, np, "float32")
    rows = resident.read_rows(np.array([5, 2]))
    assert isinstance(rows, Rows)
    np.testing.assert_array_equal(rows.gather(), resident.read(np.array([5, 2])))
    streamed = PatternSource(pats, np, "float32", stream=True)
    got = streamed.read_rows(np.array([5, 2]))
    assert not isinstance(got, Rows)
    np.testing.assert_array_equal(got, resident.read(np.array([5, 2])))


def _run(engine, rows, group, extra=None, modes=1):
    state = _state(modes=modes, scan=(4, 4))
    pats = _patterns(state)
    stage = ENGINES[engine].params(type=engine, iterations=2, grouping={"kind": "sparse", "size": group},
                                   refine={"object": True, "probe": True}, **(extra or {}))
    recipe = Recipe(recipe="ptycli/1", stage=[stage])
    ctx = common.make_context(state, np, "single", stage.noise.model, stage.noise.eps,
                              n_e=float(pats.sum(axis=(-2, -1)).mean()))
    seen = []

    def read_rows(idx, _s):
        seen.append(1)
        return Rows(pats, idx)

    hooks = loop.RunHooks(read_batch=lambda idx, _s: pats[idx], read_rows=read_rows if rows else None,
                          make_engine=lambda params, st: ENGINES[engine].engine(params, ctx, st),
                          apply_constraints=lambda st, _s, _it: st)
    out = loop.run(recipe, state, np.arange(len(pats)), 0, hooks)[0]
    assert bool(seen) == rows
    return out


@pytest.mark.parametrize("engine,group,extra,modes", [
    ("lsqml", 8, None, 1),
    ("lsqml", 8, {"noise": {"model": "poisson"}}, 2),  # an array path: Batch.data gathers the rows
    ("gradient", 8, None, 1),
    ("gradient", 8, {"regularisers": [{"type": "tv", "weight": 1e-3}]}, 1),  # the variables path gathers them first
    ("epie", 1, None, 1),  # sequential: one frame, a view of the set
    ("epie", 4, None, 2),
])
@pytest.mark.parametrize("native", [True, False])
def test_engines_reading_rows_in_place_match_gathered_frames(engine, group, extra, modes, native, monkeypatch):
    monkeypatch.setattr(common, "MIN_PART_ELEMENTS", 1)  # two parts: each reads its own rows
    if native:
        _on_fftw_kernels(monkeypatch)
    else:
        monkeypatch.setattr(host_fft, "kernel_fft_plans", lambda m, n, dtype: None)
    in_place = _run(engine, True, group, extra, modes)
    copied = _run(engine, False, group, extra, modes)
    np.testing.assert_array_equal(in_place.object, copied.object)
    np.testing.assert_array_equal(in_place.probe, copied.probe)
    assert not np.array_equal(in_place.object, _state(modes=modes).object)
