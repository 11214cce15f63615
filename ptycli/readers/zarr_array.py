"""Zarr: a ptycli data store (patterns + calibration), or a plain 3D/4D array or group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import RawSource, source_from_array
from .registry import register


def _arrays(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every array below ``group`` at any depth, as (path, array), like HDF5's visititems."""
    found = [(f"{prefix}{name}", a) for name, a in group.arrays()]
    for name, sub in group.groups():
        found += _arrays(sub, f"{prefix}{name}/")
    return found


def _largest_array(group: Any, path: Path) -> str:
    found = [(int(np.prod(a.shape)), name) for name, a in _arrays(group) if a.ndim in (3, 4)]
    if not found:
        raise InputError(f"{path}: no 3D or 4D array found; name one with --dataset PATH")
    return max(found)[1]


@register("zarr", (".zarr",), directory=True)
def open_zarr(path: Path, dataset: str | None = None, **_: Any) -> RawSource:
    import zarr  # noqa: PLC0415

    from ..store.chunks import check_chunks  # noqa: PLC0415
    from ..store.io import is_ptycli_store, open_store  # noqa: PLC0415

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for "not zarr"
        raise InputError(f"{path}: not a readable Zarr store ({type(exc).__name__})") from None
    if isinstance(node, zarr.Array):
        if dataset and dataset.strip("/"):  # a lone array has no inner paths: a name here is a mistake
            raise InputError(f"{path}: no dataset {dataset!r} (the store is a single array; omit --dataset)")
        check_chunks(node, path, path.name)  # a missing chunk reads as zeros: refuse it
        return source_from_array(path, "zarr", node)
    meta: dict[str, Any] = {}
    if is_ptycli_store(node):
        node = open_store(path, "data")
        dataset = dataset or "patterns"
        meta = {"calibration": dict(node.attrs.get("calibration", {})), "ptycli_store": True}
    name = dataset or _largest_array(node, path)
    if name not in node or not isinstance(node[name], zarr.Array):
        raise InputError(f"{path}: no dataset {name!r}")
    check_chunks(node[name], path, name)
    source = source_from_array(path, "zarr", node[name], what=f"array {name!r}", metadata={"dataset": name, **meta})
    if source.scan_shape is None and "scan_shape" in node.attrs:
        source.scan_shape = tuple(node.attrs["scan_shape"])  # type: ignore[assignment]
    return source
