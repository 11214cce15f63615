"""Splitting scan positions into groups (mini-batches), reshuffled every iteration.

``sparse`` groups spread over the field of view so overlapping positions rarely share a
group (what LSQ-ML wants); ``compact`` groups are spatially contiguous; ``random`` ignores
geometry. Both geometric kinds order positions once along a Z-order (Morton) curve, an
O(N log N) sort, instead of an O(N^2) distance-based clustering.
"""

from __future__ import annotations

import numpy as np

GROUPINGS = ("random", "sparse", "compact")
_BITS = 10  # a 1024 x 1024 grid is far finer than any scan step


def curve_order(positions_px: np.ndarray) -> np.ndarray:
    """Indices sorting host positions (J, 2) along a Z-order curve."""
    p = np.asarray(positions_px, dtype=np.float64)
    span = np.ptp(p, axis=0)
    span[span == 0] = 1.0
    q = ((p - p.min(axis=0)) / span * (2**_BITS - 1)).astype(np.int64)
    code = np.zeros(len(p), dtype=np.int64)
    for bit in range(_BITS):
        code |= ((q[:, 0] >> bit) & 1) << (2 * bit + 1)
        code |= ((q[:, 1] >> bit) & 1) << (2 * bit)
    return np.argsort(code, kind="stable")


def n_groups(n_positions: int, size: int) -> int:
    return max(1, -(-n_positions // max(1, size)))


def make_groups(kind: str, order: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Groups of position indices for one iteration, in a seeded random order."""
    n = len(order)
    k = n_groups(n, size)
    if kind == "random":
        # Draw from the positions themselves (not 0..n-1): a subset must stay a subset.
        perm = np.sort(order)[rng.permutation(n)]
        groups = [np.sort(perm[g::k]) for g in range(k)]
    elif kind == "sparse":
        start = int(rng.integers(n))  # rotate the curve so group membership changes
        rolled = np.roll(order, -start)
        groups = [np.sort(rolled[g::k]) for g in range(k)]
    elif kind == "compact":
        bounds = np.linspace(0, n, k + 1).round().astype(int)
        groups = [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        raise ValueError(f"unknown grouping {kind!r}; expected one of {GROUPINGS}")
    return [groups[i] for i in rng.permutation(len(groups)) if len(groups[i])]
