"""Missing Zarr chunks are damage, not zeros.

Zarr reads a chunk that is absent from the store as the array's fill value: a deleted chunk
file, a copy that stopped half-way, or a ``zarr.json`` whose shape was enlarged all read as
frames of zeros, and a reconstruction from them "completes". ``check_chunks`` lists the
array's stored keys (one listing, no chunk reads) and compares them with its chunk grid.

Zarr may also skip a chunk on purpose when every value equals the fill value
(``write_empty_chunks=False``, zarr-python 3's default); ptycli writes every chunk
(store/io.py ``write_array``) so its own stores never do. A raw Zarr input written that way
with a whole chunk of fill values is refused as well: it cannot be told from a lost chunk.
With sharding, the grid checked is that of the shards (chunks inside a shard are in its index).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from ..errors import InputError


async def _collect(it: Any) -> set[str]:
    return {key async for key in it}


def _stored_keys(arr: Any) -> set[str]:
    from zarr.core.sync import sync  # noqa: PLC0415 -- zarr's own bridge to its async store API

    prefix = f"{arr.path}/" if arr.path else ""
    return {key[len(prefix):] for key in sync(_collect(arr.store.list_prefix(prefix)))}


def _grid_chunks(arr: Any) -> tuple[int, ...]:
    meta = arr.metadata
    grid = getattr(meta, "chunk_grid", None)  # v3: the outer (shard) grid
    return tuple(grid.chunk_shape) if grid is not None else tuple(meta.chunks)


def missing_chunk(arr: Any) -> tuple[str, int, int] | None:
    """(key of the first absent chunk, how many are absent, how many there should be), or
    None when all are stored."""
    if arr.size == 0 or arr.ndim == 0:
        return None
    grid = [math.ceil(s / c) for s, c in zip(arr.shape, _grid_chunks(arr))]
    stored = _stored_keys(arr)
    encode = arr.metadata.encode_chunk_key
    absent = [k for k in (encode(c) for c in itertools.product(*map(range, grid))) if k not in stored]
    return (absent[0], len(absent), math.prod(grid)) if absent else None


def check_chunks(arr: Any, where: Any, name: str) -> None:
    """Raise InputError (exit 4) naming the array and its first missing chunk."""
    found = missing_chunk(arr)
    if found is None:
        return
    key, n, total = found
    raise InputError(f"{where}: array '{name}' is missing chunk {key!r} ({n} of {total} absent; "
                     f"zarr would read them as {arr.fill_value}): the store is damaged or its shape was "
                     "enlarged; copy or write it again")
