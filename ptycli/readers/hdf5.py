"""HDF5 (``.h5``/``.hdf5``/``.emd``): ``dataset`` path, else the largest 3D/4D dataset.

A Dectris (ARINA, EIGER) NeXus master file is recognised by its ``entry/data/data_NNNNNN``
external links: the linked data files' frames are read in order as one series. Their
chunks are bitshuffle-LZ4 compressed (HDF5 filter 32008), decoded by the ``hdf5plugin``
package's filters. The scan shape comes from the ``NumPixelsY``/``NumPixelsX`` attributes
of the ``STEM Metadata`` group in ``<name>.h5`` beside ``<name>_master.h5`` when present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import RawSource, check_ndim, source_from_array
from .registry import register

BITSHUFFLE_LZ4 = 32008


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


def load_filters() -> None:
    """Register the compression filters of hdf5plugin (bitshuffle-LZ4 and others) with h5py."""
    try:
        import hdf5plugin  # noqa: F401, PLC0415
    except ImportError:  # plain HDF5 files read without it; a compressed one says so below
        pass


def _dectris_parts(h5: Any) -> list[str]:
    """The ``entry/data/data_NNNNNN`` links of a Dectris master file, in order ([] if none)."""
    group = h5.get("entry/data")
    if group is None or not hasattr(group, "keys"):
        return []
    return sorted(f"entry/data/{k}" for k in group.keys() if k.startswith("data_") and k[5:].isdigit())


def _dectris_scan(path: Path) -> tuple[int, int] | None:
    import h5py  # noqa: PLC0415

    side = path.with_name(path.name.replace("_master.h5", ".h5"))
    if side == path or not side.is_file():
        return None
    try:
        with h5py.File(side, "r") as f:
            attrs = f["STEM Metadata"].attrs if "STEM Metadata" in f else {}
            if "NumPixelsY" in attrs and "NumPixelsX" in attrs:
                return int(np.ravel(attrs["NumPixelsY"])[0]), int(np.ravel(attrs["NumPixelsX"])[0])
    except (OSError, KeyError, ValueError):
        return None
    return None


def _open_dectris(path: Path, h5: Any, parts: list[str]) -> RawSource:
    import h5py  # noqa: PLC0415

    arrays = []
    for name in parts:
        try:
            arrays.append(h5[name])
        except KeyError:  # a dangling external link: the data file is missing
            link = h5["entry/data"].get(name.rsplit("/", 1)[1], getlink=True)
            h5.close()
            raise InputError(f"{path}: {name} links to {getattr(link, 'filename', '?')}, which is missing") from None
    check_ndim(path, arrays[0].shape, f"dataset {parts[0]!r}")
    frame_shape = tuple(int(s) for s in arrays[0].shape[-2:])
    if any(tuple(a.shape[-2:]) != frame_shape or a.ndim != 3 for a in arrays):
        h5.close()
        raise InputError(f"{path}: Dectris data files differ in frame shape; expected (n, {frame_shape[0]}, {frame_shape[1]}) each")
    if any(str(BITSHUFFLE_LZ4) in (a._filters or {}) for a in arrays) and not h5py.h5z.filter_avail(BITSHUFFLE_LZ4):
        h5.close()
        raise InputError(f"{path}: frames are bitshuffle-LZ4 compressed (HDF5 filter 32008); "
                         "install hdf5plugin (pip install hdf5plugin) to read them")
    counts = np.array([a.shape[0] for a in arrays])
    starts = np.concatenate([[0], np.cumsum(counts)])

    def read(a: int, b: int) -> np.ndarray:
        blocks = []
        for k, arr in enumerate(arrays):
            lo, hi = max(a, starts[k]), min(b, starts[k + 1])
            if lo < hi:
                blocks.append(np.asarray(arr[lo - starts[k] : hi - starts[k]]))
        return np.concatenate(blocks) if len(blocks) != 1 else blocks[0]

    n = int(starts[-1])
    scan = _dectris_scan(path)
    return RawSource(path=path, format="hdf5", n_frames=n, frame_shape=frame_shape, dtype=np.dtype(arrays[0].dtype),
                     read_fn=read, scan_shape=scan if scan and scan[0] * scan[1] == n else None,
                     metadata={"dataset": "entry/data/data_*", "dectris_files": len(parts)}, close_fn=h5.close)


@register("hdf5", (".h5", ".hdf5", ".hdf", ".emd"), magic=(b"\x89HDF\r\n\x1a\n",))
def open_hdf5(path: Path, dataset: str | None = None, **_: Any) -> RawSource:
    import h5py  # noqa: PLC0415

    load_filters()
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    parts = [] if dataset else _dectris_parts(h5)
    if parts:
        return _open_dectris(path, h5, parts)
    name = dataset or largest_dataset(h5, path)
    if name not in h5 or not isinstance(h5[name], h5py.Dataset):
        h5.close()
        raise InputError(f"{path}: no dataset {name!r}")
    return source_from_array(path, "hdf5", h5[name], what=f"dataset {name!r}",
                             metadata={"dataset": name}, close_fn=h5.close)
