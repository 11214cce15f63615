"""Background prefetch of the next group's patterns: the loop asks for exactly the group it
reads next (also across iterations and for each MPI rank's share), and a streamed
reconstruction gives bit-identical results with and without prefetching, also after a
SIGTERM + resume."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from ptycli.engines import data as data_mod
from ptycli.engines import distributed, loop
from ptycli.errors import Interrupted
from ptycli.recipe import validate
from ptycli.stages import init, reconstruct, simulate
from _helpers import SignalAtBatch

J = 23
BUDGET = 3 * 4 * 32 * 32 * 4  # bytes: 3 of the 9 chunks (4 patterns of 32x32 float32 each) fit the cache


class _Engine:
    def update(self, state, idx, data, it):
        return 0.0

    def state_dict(self):
        return {}


class _Rank(distributed.SerialComm):
    """Rank ``rank`` of ``size``: the loop hands it its share of each group (no peers here)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def _run_loop(comm, kind="random"):
    rec = validate({"recipe": "ptycli/1", "stage": [
        {"type": "gradient", "iterations": 3, "grouping": {"kind": kind, "size": 5}},
        {"type": "gradient", "iterations": 2, "grouping": {"kind": "sparse", "size": 8}}]})
    pos = np.random.default_rng(0).random((J, 2)) * 50
    state = SimpleNamespace(positions=pos.copy(), positions_initial=pos.copy(), iteration=0,
                            probe=np.ones((1, 4, 4), np.complex64), object=np.ones((1, 1, 8, 8), np.complex64))
    events = []
    hooks = loop.RunHooks(read_batch=lambda idx, stage: events.append(("read", tuple(idx))),
                          prefetch=lambda idx, stage: events.append(("prefetch", tuple(idx))),
                          make_engine=lambda stage, s: _Engine(), apply_constraints=lambda s, stage, it: s,
                          comm=comm)
    loop.run(rec, state, np.arange(J), 7, hooks)
    return events


@pytest.mark.parametrize("kind", ["random", "sparse"])
def test_prefetch_names_the_next_read(kind):
    events = _run_loop(distributed.SERIAL, kind)
    reads = [e[1] for e in events if e[0] == "read"]
    assert len(reads) == 3 * 5 + 2 * 3  # ceil(23/5) groups x 3, ceil(23/8) x 2
    for a, b in itertools.pairwise(events):
        if a[0] == "prefetch":
            assert b == ("read", a[1])  # always the very next read, next iteration included
    # every read but the first of each stage was prefetched
    assert sum(e[0] == "prefetch" for e in events) == len(reads) - 2


def test_each_rank_prefetches_its_own_share():
    per_rank = [_run_loop(_Rank(r, 2)) for r in range(2)]
    for events in per_rank:
        for a, b in itertools.pairwise(events):
            if a[0] == "prefetch":
                assert b == ("read", a[1])
    pre = [[set(e[1]) for e in events if e[0] == "prefetch"] for events in per_rank]
    serial = [set(e[1]) for e in _run_loop(distributed.SERIAL) if e[0] == "prefetch"]
    assert len(pre[0]) == len(pre[1]) == len(serial) > 0
    for share0, share1, whole in zip(*pre, serial):  # disjoint shares that together make the group
        assert share0 and share1 and not share0 & share1
        assert share0 | share1 == whole


# ----------------------------------------------------------------------------- end to end
RECIPE = """
recipe = "ptycli/1"
[[stage]]
type = "lsqml"
iterations = 2
grouping = {kind = "sparse", size = 16}
[[stage]]
type = "gradient"
iterations = 2
grouping = {kind = "random", size = 12}
refine = {probe = 1, positions = 1}
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefetch")
    data, state = root / "d.zarr", root / "s.zarr"
    simulate.run(data, preset="demo", scan_shape=(6, 6), detector_size=32)
    _rechunk(data, rows=4)  # 9 chunks, so groups touch different chunks and prefetching has work
    init.run(data, state)
    (root / "r.toml").write_text(RECIPE)
    return root, data, state


def _rechunk(path, rows):
    group = zarr.open_group(str(path), mode="r+")
    old = group["patterns"]
    values, attrs, dims = old[...], dict(old.attrs), old.metadata.dimension_names
    del group["patterns"]
    new = group.create_array("patterns", shape=values.shape, dtype=values.dtype,
                             chunks=(rows,) + values.shape[1:], dimension_names=dims)
    new[...] = values
    new.attrs.update(attrs)


def _arrays(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][...]) for k in ("object", "probe", "positions", "history/loss")}


class _CountPrefetch:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = data_mod.PatternSource.prefetch

        def spy(source, idx):
            self.calls += 1
            return original(source, idx)

        monkeypatch.setattr(data_mod.PatternSource, "prefetch", spy)


def test_streamed_results_identical_with_and_without_prefetch(small, monkeypatch):
    root, data, state = small
    kw = {"recipe": root / "r.toml", "device": "cpu", "seed": 2, "stream": True, "memory_budget_bytes": BUDGET}
    counter = _CountPrefetch(monkeypatch)
    reconstruct.run(data, state, root / "off.zarr", prefetch=False, **kw)
    assert counter.calls == 0
    reconstruct.run(data, state, root / "on.zarr", **kw)
    assert counter.calls > 0
    off, on = _arrays(root / "off.zarr"), _arrays(root / "on.zarr")
    for key in off:
        np.testing.assert_array_equal(on[key], off[key], err_msg=key)



def test_prefetch_with_sigterm_and_resume_equals_uninterrupted(small):
    root, data, state = small
    kw = {"recipe": root / "r.toml", "device": "cpu", "seed": 2, "stream": True, "memory_budget_bytes": BUDGET}
    reconstruct.run(data, state, root / "full.zarr", prefetch=False, **kw)
    out = root / "cut.zarr"
    with pytest.raises(Interrupted):
        reconstruct.run(data, state, out, observers=[SignalAtBatch(4)], **kw)  # 3 lsqml groups/it: in iteration 2
    reconstruct.run(data, state, out, resume=True, **kw)
    full, resumed = _arrays(root / "full.zarr"), _arrays(out)
    for key in ("object", "probe", "positions"):  # the same updates from the same bytes
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)
    # The interrupted iteration's loss is summed in two parts (before and after the stop):
    # float64 association only, ~1e-8 relative (measured 2.3e-8).
    np.testing.assert_allclose(resumed["history/loss"], full["history/loss"], rtol=1e-6)
