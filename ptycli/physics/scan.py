"""Scan geometry: probe positions in Å and in object pixels (physics.md §1.5).

Positions are few (J x 2) and live on the host, so this module works on numpy arrays:
it is index bookkeeping, not hot-path array work. Object pixels are ``p = r/dx + o`` with
one global offset ``o`` chosen so every probe window, plus a margin, lies in the object.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError

DEFAULT_MARGIN_PX = 8  # vacuum border beyond the outermost windows (room for position refinement)


def raster_positions_a(
    scan_shape: tuple[int, int],
    step_a: tuple[float, float],
    rotation_deg: float = 0.0,
    flip_y: bool = False,
    flip_x: bool = False,
) -> np.ndarray:
    """Raster probe centres r_j (J, 2) in Å, (y, x), row-major j = iy*nx + ix.

    The raster is centred on its middle, so rotating it does not move its centroid.
    Flips reverse the scan direction along an axis; the rotation follows physics.md §1.5:
    (y', x') = (x sin θ + y cos θ, x cos θ - y sin θ).
    """
    ny, nx = (int(v) for v in scan_shape)
    if ny <= 0 or nx <= 0:
        raise ValueError(f"scan_shape must be positive, got {scan_shape}")
    iy, ix = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    y = (iy.ravel() - (ny - 1) / 2) * float(step_a[0])
    x = (ix.ravel() - (nx - 1) / 2) * float(step_a[1])
    y = -y if flip_y else y
    x = -x if flip_x else x
    return rotate_positions_a(np.stack([y, x], axis=1), rotation_deg)


def rotate_positions_a(positions_a: np.ndarray, rotation_deg: float) -> np.ndarray:
    """Rotate (J, 2) (y, x) positions by the scan rotation θ_r (physics.md §1.5)."""
    theta = math.radians(rotation_deg)
    c, s = math.cos(theta), math.sin(theta)
    y, x = positions_a[:, 0], positions_a[:, 1]
    return np.stack([x * s + y * c, x * c - y * s], axis=1)


def jitter_positions_a(positions_a: np.ndarray, sigma_a: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian position errors of std ``sigma_a`` [Å], clipped at 3σ.

    The clip bounds how far a window can move, so the object margin can be sized for it.
    """
    if sigma_a <= 0:
        return positions_a.copy()
    noise = np.clip(rng.normal(0.0, sigma_a, size=positions_a.shape), -3 * sigma_a, 3 * sigma_a)
    return positions_a + noise


def origin_px(positions_a: np.ndarray, dx_a: float, window: tuple[int, int],
              margin_px: int = DEFAULT_MARGIN_PX) -> tuple[float, float]:
    """Integer offset o (y, x) so every window top-left corner is >= ``margin_px``.

    An integer offset keeps the sub-pixel part of r/dx, so windows are the same whether
    computed from Å or from pixels.
    """
    lo = np.min(positions_a, axis=0) / dx_a
    return tuple(float(math.ceil(margin_px + w // 2 - v)) for v, w in zip(lo, window))  # type: ignore[return-value]


def to_pixels(positions_a: np.ndarray, dx_a: float, origin: tuple[float, float]) -> np.ndarray:
    """Object-pixel positions p = r/dx + o, (J, 2) float64."""
    return positions_a / dx_a + np.asarray(origin, dtype=np.float64)[None, :]


def to_angstrom(positions_px: np.ndarray, dx_a: float, origin: tuple[float, float]) -> np.ndarray:
    """Inverse of ``to_pixels``: r = (p - o) dx, in Å."""
    return (positions_px - np.asarray(origin, dtype=np.float64)[None, :]) * dx_a


def object_shape(positions_px: np.ndarray, window: tuple[int, int],
                 margin_px: int = DEFAULT_MARGIN_PX) -> tuple[int, int]:
    """(H, W) of an object canvas holding every window plus ``margin_px`` on the far side."""
    hi = np.floor(np.max(positions_px, axis=0)).astype(int)
    return tuple(int(h - w // 2 + w + margin_px) for h, w in zip(hi, window))  # type: ignore[return-value]


def windows_fit(positions_px: np.ndarray, window: tuple[int, int], shape: tuple[int, int]) -> bool:
    """True when every window (top-left floor(p) - M//2) lies inside an object of ``shape``."""
    corner = np.floor(positions_px).astype(int) - np.asarray([w // 2 for w in window])[None, :]
    far = corner + np.asarray(window)[None, :]
    return bool(np.all(corner >= 0) and np.all(far <= np.asarray(shape)[None, :]))


def read_positions_a(path: str | Path, n_expected: int | None = None) -> np.ndarray:
    """Read probe positions (J, 2) in Å, columns (y, x), from .npy or CSV/text.

    A CSV may have one header line; comma, semicolon or whitespace separated.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such positions file")
    try:
        arr = np.load(path) if path.suffix.lower() == ".npy" else _read_text_table(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read positions ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{path}: positions must have shape (J, 2) as (y, x) in Å, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: positions contain NaN or inf")
    if n_expected is not None and arr.shape[0] != n_expected:
        raise InputError(f"{path}: {arr.shape[0]} positions, but the data has {n_expected} patterns")
    return arr


def _read_text_table(path: Path) -> np.ndarray:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    rows = []
    for i, line in enumerate(lines):
        cells = line.replace(",", " ").replace(";", " ").split()
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            if i == 0:
                continue  # a header line
            raise InputError(f"{path}: line {i + 1} is not numeric: {line!r}") from None
    return np.asarray(rows, dtype=np.float64)
