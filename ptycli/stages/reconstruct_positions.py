"""Position subsets for quick trials: ``all``, ``sub:N``, ``center:NYxNX``, or a file.

The subset only chooses which positions the engines visit; the object canvas and the
stored positions stay whole, so a later full run continues from the subset result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError


def select(spec: str, n_positions: int, scan_shape: tuple[int, int] | None, positions_px: np.ndarray) -> np.ndarray:
    """Sorted indices of the positions to refine."""
    spec = (spec or "all").strip()
    if spec == "all":
        return np.arange(n_positions)
    if spec.startswith("sub:"):
        return _every(spec, _int(spec[4:], spec), n_positions, scan_shape)
    if spec.startswith("center:"):
        return _center(spec, spec[7:], n_positions, scan_shape, positions_px)
    return _from_file(Path(spec), n_positions)


def _int(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--positions {spec!r}: expected an integer after the colon") from None
    if value < 1:
        raise UsageError(f"--positions {spec!r}: expected a value >= 1")
    return value


def _every(spec: str, n: int, total: int, scan_shape: tuple[int, int] | None) -> np.ndarray:
    """Every n-th position along both scan axes (or every n-th index without a raster)."""
    if scan_shape is None or scan_shape[0] * scan_shape[1] != total:
        return np.arange(0, total, n)
    iy, ix = np.divmod(np.arange(total), scan_shape[1])
    return np.flatnonzero((iy % n == 0) & (ix % n == 0))


def _center(spec: str, size: str, total: int, scan_shape: tuple[int, int] | None, pos: np.ndarray) -> np.ndarray:
    try:
        ny, nx = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--positions {spec!r}: expected center:NYxNX, e.g. center:16x16") from None
    if scan_shape is None or scan_shape[0] * scan_shape[1] != total:
        # No raster: the ny*nx positions nearest the scan centroid (a round patch).
        d = ((pos - pos.mean(axis=0)) ** 2).sum(axis=1)
        return np.sort(np.argsort(d, kind="stable")[: ny * nx])
    sy, sx = scan_shape
    if ny > sy or nx > sx:
        raise UsageError(f"--positions {spec!r}: larger than the {sy}x{sx} scan")
    y0, x0 = (sy - ny) // 2, (sx - nx) // 2
    iy, ix = np.divmod(np.arange(total), sx)
    return np.flatnonzero((iy >= y0) & (iy < y0 + ny) & (ix >= x0) & (ix < x0 + nx))


def _from_file(path: Path, total: int) -> np.ndarray:
    """Indices from a .npy file, or a text file of integers (whitespace/comma separated)."""
    if not path.exists():
        raise UsageError(f"--positions {path}: expected all, sub:N, center:NYxNX or an existing index file")
    if path.suffix == ".npy":
        idx = np.load(path)
    else:
        idx = np.array(path.read_text().replace(",", " ").split(), dtype=np.int64)
    idx = np.unique(np.asarray(idx, dtype=np.int64).ravel())
    if idx.size == 0 or idx.min() < 0 or idx.max() >= total:
        raise UsageError(f"{path}: indices must lie in [0, {total - 1}] and not be empty")
    return idx
