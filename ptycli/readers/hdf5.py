"""HDF5 (``.h5``/``.hdf5``/``.emd``): ``dataset`` path, else the largest 3D/4D dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import RawSource, source_from_array
from .registry import register


def largest_dataset(h5: Any, path: Path) -> str:
    import h5py  # noqa: PLC0415

    found: list[tuple[int, str]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4):
            found.append((int(np.prod(obj.shape)), name))

    h5.visititems(visit)
    if not found:
        raise InputError(f"{path}: no 3D or 4D dataset found; name one with --dataset PATH")
    return max(found)[1]


@register("hdf5", (".h5", ".hdf5", ".hdf", ".emd"), magic=(b"\x89HDF\r\n\x1a\n",))
def open_hdf5(path: Path, dataset: str | None = None, **_: Any) -> RawSource:
    import h5py  # noqa: PLC0415

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    name = dataset or largest_dataset(h5, path)
    if name not in h5 or not isinstance(h5[name], h5py.Dataset):
        h5.close()
        raise InputError(f"{path}: no dataset {name!r}")
    return source_from_array(path, "hdf5", h5[name], what=f"dataset {name!r}",
                             metadata={"dataset": name}, close_fn=h5.close)
