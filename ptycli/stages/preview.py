"""Terminal preview: an image drawn with Unicode half blocks in xterm 256 colours.

Each character cell shows two pixels stacked vertically: '▀' with the top pixel as the
foreground and the bottom one as the background colour. Terminal cells are about twice as
tall as wide, so pixels come out square. Works over plain SSH (no graphics protocol).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .viewdata import object_phase_image, open_any, pacbed, running_store, state_of

UPPER_HALF = "\u2580"
RESET = "\x1b[0m"
# colormap control points (RGB 0-255), interpolated linearly
CMAPS = {
    "gray": [(0, 0, 0), (255, 255, 255)],
    "inferno": [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
    "viridis": [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
}
LEVELS = 64
TEXT_RAMP = " .:-=+*#%@"  # dark to bright, plain ASCII so any log or pager shows it


def _xterm_palette() -> np.ndarray:
    """RGB of xterm colours 16-255: the 6x6x6 cube, then the 24-step grey ramp."""
    steps = np.array([0, 95, 135, 175, 215, 255])
    cube = np.array([(steps[r], steps[g], steps[b]) for r in range(6) for g in range(6) for b in range(6)])
    grey = np.array([(8 + 10 * i,) * 3 for i in range(24)])
    return np.concatenate([cube, grey]).astype(np.float64)


def colour_table(cmap: str = "gray") -> np.ndarray:
    """xterm colour index (16-255) for each of LEVELS equally spaced values in [0, 1]."""
    if cmap not in CMAPS:
        raise InputError(f"preview colormap {cmap!r}: expected one of {', '.join(CMAPS)}")
    points = np.asarray(CMAPS[cmap], dtype=np.float64)
    t = np.linspace(0, 1, LEVELS)
    x = np.linspace(0, 1, len(points))
    rgb = np.stack([np.interp(t, x, points[:, c]) for c in range(3)], axis=1)
    palette = _xterm_palette()
    dist = ((rgb[:, None, :] - palette[None, :, :]) ** 2).sum(axis=2)
    return 16 + np.argmin(dist, axis=1)


def _resample(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area mean when shrinking, nearest neighbour when enlarging (reduceat returns the
    single element at a repeated index)."""
    def bins(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        edges = np.linspace(0, n_in, n_out + 1).astype(int)
        starts = np.minimum(edges[:-1], n_in - 1)
        return starts, np.maximum(np.diff(edges), 1)

    ys, ny = bins(img.shape[0], out_h)
    xs, nx = bins(img.shape[1], out_w)
    rows = np.add.reduceat(img, ys, axis=0)
    both = np.add.reduceat(rows, xs, axis=1)
    return both / ny[:, None] / nx[None, :]


def _levels(img: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int]:
    """``img`` fitted into width x 2*height pixels (aspect kept), as levels 0..LEVELS-1
    between its 1st and 99th percentiles; returns (levels, fitted width)."""
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape
    scale = min(width / w, 2 * height / h)
    out_w, out_h = max(1, min(width, round(w * scale))), max(1, min(2 * height, round(h * scale)))
    small = _resample(np.nan_to_num(img, nan=np.nanmin(img)), out_h, out_w)
    lo, hi = np.percentile(small, [1, 99]) if small.size > 4 else (small.min(), small.max())
    return np.clip((small - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * (LEVELS - 1), out_w


def image_to_ansi(img: np.ndarray, width: int, height: int, cmap: str = "gray") -> str:
    """``height`` lines of exactly ``width`` cells showing ``img`` (aspect kept, centred)."""
    if width < 1 or height < 1:
        raise InputError(f"preview size {width}x{height}: expected at least 1x1 cells")
    level, out_w = _levels(img, width, height)
    colours = colour_table(cmap)[np.rint(level).astype(int)]
    out_h = level.shape[0]
    if out_h % 2:
        colours = np.vstack([colours, np.full((1, out_w), -1)])  # -1: terminal background
    pad_top = (height - colours.shape[0] // 2) // 2
    pad_left = (width - out_w) // 2
    blank = " " * width
    lines = [blank] * pad_top
    for r in range(0, colours.shape[0], 2):
        cells = "".join(_cell(t, b) for t, b in zip(colours[r], colours[r + 1]))
        lines.append(" " * pad_left + cells + RESET + " " * (width - out_w - pad_left))
    lines += [blank] * (height - len(lines))
    return "\n".join(lines)


def image_to_text(img: np.ndarray, width: int, height: int) -> str:
    """``image_to_ansi`` without colour codes (NO_COLOR, pipes, logs): one character of a
    brightness ramp per cell, each cell covering two pixel rows as the half blocks do."""
    if width < 1 or height < 1:
        raise InputError(f"preview size {width}x{height}: expected at least 1x1 cells")
    level, out_w = _levels(img, width, height)
    if level.shape[0] % 2:
        level = np.vstack([level, level[-1:]])
    cells = (level[0::2] + level[1::2]) / 2 / (LEVELS - 1)
    chars = np.asarray(list(TEXT_RAMP))[np.rint(cells * (len(TEXT_RAMP) - 1)).astype(int)]
    pad_top = (height - chars.shape[0]) // 2
    pad_left = (width - out_w) // 2
    blank = " " * width
    lines = [blank] * pad_top
    lines += [" " * pad_left + "".join(row) + " " * (width - out_w - pad_left) for row in chars]
    lines += [blank] * (height - len(lines))
    return "\n".join(lines)


def _cell(top: int, bottom: int) -> str:
    bg = "\x1b[49m" if bottom < 0 else f"\x1b[48;5;{bottom}m"
    return f"\x1b[38;5;{top}m{bg}{UPPER_HALF}"


def render(store_path: str | Path, width: int, height: int, colour: bool = True) -> str:
    """Object phase (state store, or a running job's checkpoint) or log PACBED (data store)
    as ``height`` lines of ``width`` terminal cells; ``colour=False``: no escape codes."""
    img, cmap = preview_image(store_path)
    return image_to_ansi(img, width, height, cmap) if colour else image_to_text(img, width, height)


def preview_image(store_path: str | Path) -> tuple[np.ndarray, str]:
    path = Path(store_path)
    if not path.exists() or path.name.endswith(".partial"):
        import zarr  # noqa: PLC0415

        found = running_store(path)
        if found is None:
            raise InputError(f"{path}: no such store (nor a running {path.name}.partial)")
        return object_phase_image(state_of(zarr.open_group(str(found), mode="r"))), "gray"
    group, kind = open_any(path)
    if kind == "data":
        return np.log10(pacbed(group) + 1.0), "inferno"
    return object_phase_image(state_of(group)), "gray"
