"""Streamed patterns: host memory bounded by the budget whatever the number of chunks."""

import numpy as np

from ptycli.engines.data import PatternSource


class _Chunked:
    """A (J, M, M) array with a chunk length, counting the chunks decoded."""

    def __init__(self, data: np.ndarray, chunk_len: int):
        self.data, self.shape, self.chunks, self.reads = data, data.shape, (chunk_len,) + data.shape[1:], 0

    def __getitem__(self, key):
        self.reads += 1
        return self.data[key]


def _sparse_groups(n: int, k: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[g::k]) for g in range(k)]


def test_streamed_reads_match_resident_and_cache_stays_within_budget():
    j, m, chunk = 256, 4, 8  # 32 chunks of 8 frames; the budget holds 4 of them
    data = np.random.default_rng(0).random((j, m, m), dtype=np.float32)
    frame_bytes = m * m * 4
    src = PatternSource(_Chunked(data, chunk), np, "float32", stream=True, budget_bytes=4 * chunk * frame_bytes)
    ref = PatternSource(data, np, "float32", stream=False)
    groups = _sparse_groups(j, 8, 1)  # each group of 32 touches ~20 of the 32 chunks
    most_whole = 0
    for g, nxt in zip(groups, groups[1:] + [None]):
        out = src.read_and_prefetch(g, nxt)
        np.testing.assert_array_equal(out, ref.read(g))  # exact: same bytes as a resident read
        if src._pending is not None:
            whole, rows = src._pending.result()
            most_whole = max(most_whole, len(src._cache) + len(whole))
            # frames kept for uncached chunks are the next group's only, never whole chunks
            assert sum(len(p) for p, _ in rows.values()) <= len(nxt)
        assert len(src._cache) <= src.max_chunks
    assert most_whole <= src.max_chunks  # cache + whole chunks in flight within the budget
    src.close()
