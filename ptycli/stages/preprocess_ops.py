"""Frame operations of ``preprocess``, each on a chunk (n, ky, kx) of host frames.

Patterns stay DC-centred (physics.md §1.4: the detector centre is index (M//2, M//2)), so
every geometric operation here keeps the beam axis at the centre pixel: reflection about
that pixel, transpose, centred crop, symmetric pad, and binning in blocks around it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..errors import InputError, RecipeError
from ..physics.detector import bin_pixels


# ----------------------------------------------------------------------------- value checks
def check_finite(frames: np.ndarray, policy: str, where: str) -> np.ndarray:
    """Error on NaN/Inf (default), or replace them with zero (``--nan zero``)."""
    bad = ~np.isfinite(frames)
    if not bad.any():
        return frames
    if policy != "zero":
        j = int(np.argwhere(bad)[0][0])
        raise InputError(f"{where}: {int(bad.sum())} NaN/Inf values (first in frame {j}); "
                         "pass --nan zero to replace them with 0")
    out = np.array(frames, dtype=np.float32 if frames.dtype.kind != "f" else frames.dtype)
    out[bad] = 0
    return out


def check_negative(frames: np.ndarray, clip: bool, where: str) -> np.ndarray:
    """Counts cannot be negative: error, or clip to zero with ``--clip-negatives``."""
    if frames.dtype.kind == "u":
        return frames
    neg = frames < 0
    if not neg.any():
        return frames
    if not clip:
        raise InputError(f"{where}: {int(neg.sum())} negative values (min {float(frames.min()):.4g}); "
                         "pass --clip-negatives to set them to 0")
    return np.maximum(frames, 0)


# ----------------------------------------------------------------------------- bad pixels
def neighbour_median(image: np.ndarray) -> np.ndarray:
    """Median of the 8 neighbours of every pixel (edges replicated)."""
    p = np.pad(image, 1, mode="edge")
    h, w = image.shape
    stack = [p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
             for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    return np.median(np.stack(stack), axis=0)


def find_bad_pixels(mean: np.ndarray, threshold: float) -> np.ndarray:
    """Hot pixels (mean > threshold x its 2nd-brightest neighbour) and dead ones (0 amid signal).

    Judged on the mean pattern: single frames of a counting detector are too sparse for
    a per-frame median to tell a hot pixel from a real count. Comparing with the 2nd-
    brightest neighbour keeps the rim of the bright-field disk (whose neighbour median
    is ~0) and lets a pair of adjacent hot pixels still be found.
    """
    p = np.pad(mean, 1, mode="edge")
    h, w = mean.shape
    neigh = np.sort(np.stack([p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
                              for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]), axis=0)
    positive = mean[mean > 0]
    floor = max(float(np.median(positive)) if positive.size else 0.0, 1e-12) * 1e-3
    hot = mean > threshold * np.maximum(neigh[-2], floor)
    dead = (mean <= 0) & (neigh[3] > 100 * floor)  # lower neighbour median well above zero
    return hot | dead


def repair_pixels(frames: np.ndarray, bad: np.ndarray | None) -> np.ndarray:
    """Replace the flagged pixels of each frame by the median of their 8 neighbours."""
    if bad is None or not bad.any():
        return frames
    iy, ix = np.nonzero(bad)
    p = np.pad(frames, ((0, 0), (1, 1), (1, 1)), mode="edge")
    neigh = np.stack([p[:, iy + 1 + dy, ix + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    out = np.array(frames, dtype=np.result_type(frames.dtype, np.float32))
    out[:, iy, ix] = np.median(neigh, axis=0)
    return out


# ----------------------------------------------------------------------------- geometry
def reflect(frames: np.ndarray, axis: int) -> np.ndarray:
    """Mirror about the centre pixel c = n//2: index i -> (2c - i) mod n, so k -> -k."""
    n = frames.shape[axis]
    flipped = np.flip(frames, axis=axis)
    # A plain reversal mirrors about (n-1)/2, half a pixel short of c for even n: the DC
    # pixel would land on c-1. One roll puts it back; odd n is already centred.
    return flipped if n % 2 else np.roll(flipped, 1, axis=axis)


def orient(frames: np.ndarray, flip_ky: bool, flip_kx: bool, transpose: bool) -> np.ndarray:
    """Exact index operations only: frames are never resampled (physics.md §1.5).

    Each keeps the DC pixel (M//2, M//2) in place: the flips are reflections about it and
    the transpose maps (h//2, w//2) to (w//2, h//2), the centre of the transposed frame.
    """
    if flip_ky:
        frames = reflect(frames, 1)
    if flip_kx:
        frames = reflect(frames, 2)
    if transpose:
        frames = frames.transpose(0, 2, 1)
    return frames


def fourier_shift(frames: np.ndarray, shift_px: tuple[float, float]) -> np.ndarray:
    """Shift every frame by +shift (dy, dx) px: f(r - a) <-> F exp(-2πi u·a) (physics.md §1.4)."""
    dy, dx = shift_px
    if dy == 0 and dx == 0:
        return frames
    h, w = frames.shape[-2:]
    uy = np.fft.fftfreq(h)[:, None]
    ux = np.fft.fftfreq(w)[None, :]
    ramp = np.exp(-2j * np.pi * (uy * dy + ux * dx)).astype(np.complex64)
    spec = backend.fft2(np.asarray(frames, dtype=np.complex64))
    return np.real(backend.ifft2(spec * ramp)).astype(np.float32)


def bilinear_shift(frames: np.ndarray, shift_px: tuple[float, float]) -> np.ndarray:
    """Shift every frame by +shift (dy, dx) px (circularly) by linear interpolation.

    Unlike the Fourier shift it cannot ring: counts stay non-negative and their sum is
    kept exactly; the price is a slight blur (a 2x2 kernel) for fractional shifts.
    """
    out = np.asarray(frames, dtype=np.float32)
    for axis, d in ((1, shift_px[0]), (2, shift_px[1])):
        k = int(np.floor(d))
        f = np.float32(d - k)
        rolled = np.roll(out, k, axis=axis)
        out = rolled if f == 0 else (1 - f) * rolled + f * np.roll(rolled, 1, axis=axis)
    return out


def shift(frames: np.ndarray, shift_px: tuple[float, float], method: str = "bilinear") -> np.ndarray:
    return fourier_shift(frames, shift_px) if method == "fourier" else bilinear_shift(frames, shift_px)


def parse_window(spec: str | None, shape: tuple[int, int], what: str = "crop") -> tuple[int, int, int, int] | None:
    """``M``, ``MxN`` (centred on the DC pixel) or ``y0:y1,x0:x1`` -> (y0, y1, x0, x1)."""
    if not spec:
        return None
    h, w = shape
    try:
        if ":" in spec:
            (y0, y1), (x0, x1) = [[int(v) for v in part.split(":")] for part in spec.split(",")]
        else:
            ch, cw = parse_pair(spec, int)
            y0, x0 = h // 2 - ch // 2, w // 2 - cw // 2
            y1, x1 = y0 + ch, x0 + cw
    except ValueError:
        raise RecipeError(f"{what}={spec!r}: expected M, MxN or y0:y1,x0:x1") from None
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise RecipeError(f"{what}={spec!r}: window ({y0}:{y1}, {x0}:{x1}) is outside the {h}x{w} frame")
    return y0, y1, x0, x1


def parse_pair(spec: Any, kind: type = float) -> tuple[Any, Any]:
    """``64``, ``64x32``, ``64,32`` or a 2-sequence -> a pair."""
    if isinstance(spec, (list, tuple)):
        a, b = spec
        return kind(a), kind(b)
    if isinstance(spec, (int, float)):
        return kind(spec), kind(spec)
    parts = str(spec).lower().replace(",", "x").split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"expected one or two numbers, got {spec!r}")
    return kind(parts[0]), kind(parts[1])


def crop(frames: np.ndarray, window: tuple[int, int, int, int] | None) -> np.ndarray:
    if window is None:
        return frames
    y0, y1, x0, x1 = window
    return frames[:, y0:y1, x0:x1]


def bin_half_shift(factor: int) -> float:
    """Sub-pixel shift [px] that even-factor binning needs before its blocks (0 for odd factors).

    Blocks of an even factor b are centred half a pixel before the DC pixel (see
    `bin_detector`); shifting the frame by -0.5 px first puts the DC pixel on the block centre.
    """
    return -0.5 if factor % 2 == 0 else 0.0


def bin_detector(frames: np.ndarray, factor: int, half_shifted: bool = False) -> np.ndarray:
    """Sum factor x factor pixel blocks around the DC pixel, which becomes the centre pixel (M/b)//2.

    The blocks are those of the model's `physics.detector.bin_pixels` (taken on the unshifted
    grid), so data and model bin alike; like the model's grid they are circular, so the
    outermost block may join the two edges of the frame. For odd b the block is centred on
    the DC pixel. For even b no block of whole pixels can be, so the frame is first shifted
    by `bin_half_shift` (bilinear: the b+1 pixels of a block's footprint, the two edge ones
    at half weight, as a detector with b-times larger pixels centred on DC would see them),
    unless the caller already did that inside its own sub-pixel shift (``half_shifted``).
    Counts are kept.
    """
    if factor == 1:
        return frames
    frames = np.asarray(frames, dtype=np.float32)
    half = bin_half_shift(factor)
    if half and not half_shifted:
        frames = bilinear_shift(frames, (half, half))
    unshifted = np.fft.ifftshift(frames, axes=(-2, -1))
    return np.fft.fftshift(bin_pixels(unshifted, factor), axes=(-2, -1))


def bin_scan(frames: np.ndarray, nx: int, factor: int) -> np.ndarray:
    """Sum factor x factor blocks of scan positions; ``frames`` holds whole scan rows."""
    if factor == 1:
        return frames
    n, h, w = frames.shape
    rows = n // nx
    blocks = frames.reshape(rows // factor, factor, nx // factor, factor, h, w)
    return blocks.sum(axis=(1, 3), dtype=np.float32).reshape(-1, h, w)


def pad_to(frames: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """Zero-pad symmetrically so the DC pixel moves to the new centre (M//2, M//2)."""
    if shape is None or shape == frames.shape[-2:]:
        return frames
    (h, w), (H, W) = frames.shape[-2:], shape
    top, left = H // 2 - h // 2, W // 2 - w // 2
    return np.pad(frames, ((0, 0), (top, H - h - top), (left, W - w - left)))


def clip_ringing(frames: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Clip the negative lobes of Fourier-shift ringing: -> (frames, n pixels clipped, counts added)."""
    neg = frames < 0
    n = int(neg.sum())
    if not n:
        return frames, 0, 0.0
    return np.maximum(frames, 0), n, float(-frames[neg].sum(dtype=np.float64))


def to_dtype(frames: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """float32 (default) or integer counts (rounded; out-of-range values are an error)."""
    target = np.dtype(dtype)
    if target.kind == "f":
        return np.asarray(frames, dtype=target)
    rounded = np.rint(frames)
    info = np.iinfo(target)
    if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
        raise InputError(f"{where}: values {rounded.min():.6g}..{rounded.max():.6g} do not fit --dtype {dtype}")
    return rounded.astype(target)


# ----------------------------------------------------------------------------- BF disk
def bf_disk(mean: np.ndarray, level: float = 0.5) -> tuple[float, float, float]:
    """Bright-field disk of a mean pattern: centre (y, x) [px] and radius [px].

    The disk is every pixel above ``level`` of the peak (the peak taken after a 3x3
    median, so a hot pixel cannot set it); radius = sqrt(area / π).
    """
    mean = np.asarray(mean, dtype=np.float64)
    peak = float(neighbour_median(mean).max())
    if not np.isfinite(peak) or peak <= 0:
        raise InputError("mean pattern has no positive signal; cannot find the bright-field disk")
    disk = mean > level * peak
    yy, xx = np.nonzero(disk)
    w = mean[yy, xx]
    return float((yy * w).sum() / w.sum()), float((xx * w).sum() / w.sum()), float(np.sqrt(disk.sum() / np.pi))


# Beyond this multiple of the bright-field radius a pixel is dark field: the disk's edge is
# blurred by the source size and the detector (its 50 % contour is what bf_disk measures).
DARK_FIELD_RADIUS = 1.1
# The share is measured only on a detector that reaches this multiple of the radius on every
# side: a detector cut just outside the disk misses most of a strong scatterer's dark field.
DARK_FIELD_REACH = 2.0


def dark_field_fraction(mean: np.ndarray, disk: tuple[float, float, float] | None = None) -> float | None:
    """Share of a mean pattern's counts outside the bright-field disk (radius x
    DARK_FIELD_RADIUS): how strongly the specimen scatters (abTEM: graphene 0.1 %, MoS2
    bilayer 3 %, SrTiO3 7-11 %, Au 16 %). None when the detector does not reach
    DARK_FIELD_REACH radii from the disk's centre on every side. ``disk``: ``bf_disk(mean)``
    where the caller has it already."""
    mean = np.asarray(mean, dtype=np.float64)
    cy, cx, radius = bf_disk(mean) if disk is None else disk
    reach = min(cy, cx, mean.shape[0] - 1 - cy, mean.shape[1] - 1 - cx)
    total = float(mean.sum())
    if reach < DARK_FIELD_REACH * radius or total <= 0:
        return None
    yy, xx = np.indices(mean.shape)
    outside = np.hypot(yy - cy, xx - cx) > DARK_FIELD_RADIUS * radius
    return float(mean[outside].sum() / total)
