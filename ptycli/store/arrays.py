"""Writing one array of a store: its chunks, compression, dimension names and units (the
layer under io.py and coords.py, which both write arrays)."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
import zarr.codecs

from .schema import DIMS, UNITS

TARGET_CHUNK_BYTES = 16 * 2**20  # 8-64 MB chunks keep reads large and the file count low


def compressor() -> Any:
    """Blosc/zstd with bit-shuffle: fast, and 2-5x on counting-detector data."""
    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def default_chunks(shape: tuple[int, ...], dtype: Any, lead_axis: int = 0) -> tuple[int, ...]:
    """Chunk along the leading axis so one chunk holds about TARGET_CHUNK_BYTES."""
    if not shape:
        return ()
    itemsize = np.dtype(dtype).itemsize
    per_lead = int(np.prod(shape[lead_axis + 1 :], dtype=np.int64)) * itemsize or 1
    n = max(1, min(shape[lead_axis], TARGET_CHUNK_BYTES // per_lead))
    return tuple(shape[:lead_axis]) + (n,) + tuple(shape[lead_axis + 1 :])


def write_array(
    group: zarr.Group,
    name: str,
    data: Any = None,
    *,
    shape: tuple[int, ...] | None = None,
    dtype: Any = None,
    chunks: tuple[int, ...] | None = None,
    dims: tuple[str, ...] | None = None,
    units: str | None = None,
    attrs: dict[str, Any] | None = None,
) -> zarr.Array:
    """Create ``name`` (may contain '/') in ``group``; replaces an existing array."""
    if data is not None:
        data = np.asarray(data)
        shape, dtype = data.shape, data.dtype
    if shape is None or dtype is None:
        raise ValueError("write_array needs data, or shape and dtype")
    base = name.rsplit("/", 1)[-1]  # checkpoint/probe has the dims of probe
    dims = dims or DIMS.get(name) or DIMS.get(base) or tuple(f"dim_{i}" for i in range(len(shape)))
    if len(dims) != len(shape):
        raise ValueError(f"{name}: {len(dims)} dimension names for a {len(shape)}-D array")
    arr = group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks or default_chunks(tuple(shape), dtype),
        compressors=[compressor()],
        dimension_names=tuple(dims),
        overwrite=True,
        # every chunk on disk, also one of zeros: a missing chunk then always means damage (chunks.py)
        config={"write_empty_chunks": True},
    )
    arr.attrs.update({"units": units or UNITS.get(name, UNITS.get(base, "1")), **(attrs or {})})
    if data is not None and data.size:
        arr[...] = data
    return arr
