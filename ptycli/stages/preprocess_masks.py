"""Virtual-detector masks for ``--compress-masks``: signals = masks · patterns.

``annular:RxS`` splits the detector into R rings of equal width (out to the farthest
corner, so the masks partition the detector) and S azimuthal segments each, with the
azimuth φ = atan2(ky, kx) of physics.md §1.1. ``pca:K`` keeps the K leading principal
directions of a sample of patterns (uncentred, so they also carry the mean pattern).
"""

from __future__ import annotations

import numpy as np

from ..errors import RecipeError


def parse_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    """``annular:8x4`` -> ("annular", (8, 4)); ``pca:16`` -> ("pca", (16,))."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "annular":
            rings, _, segments = arg.lower().partition("x")
            values = (int(rings), int(segments or 1))
        elif kind == "pca":
            values = (int(arg),)
        else:
            raise ValueError
    except ValueError:
        raise RecipeError(f"compress_masks={spec!r}: expected annular:RINGSxSEGMENTS or pca:N") from None
    if min(values) < 1:
        raise RecipeError(f"compress_masks={spec!r}: counts must be >= 1")
    return kind, values


def annular_masks(shape: tuple[int, int], rings: int, segments: int) -> np.ndarray:
    """(rings * segments, ky, kx) 0/1 masks about the DC pixel (M//2, M//2)."""
    h, w = shape
    ky = (np.arange(h) - h // 2)[:, None].astype(np.float64)
    kx = (np.arange(w) - w // 2)[None, :].astype(np.float64)
    r = np.hypot(ky, kx)
    phi = np.mod(np.arctan2(ky, kx), 2 * np.pi)
    ring = np.minimum((r / (r.max() + 1e-9) * rings).astype(int), rings - 1)
    seg = np.minimum((phi / (2 * np.pi) * segments).astype(int), segments - 1)
    label = ring * segments + seg
    return (label[None] == np.arange(rings * segments)[:, None, None]).astype(np.float32)


def pca_masks(sample: np.ndarray, k: int) -> np.ndarray:
    """(k, ky, kx) orthonormal masks: leading right singular vectors of the sample."""
    n, h, w = sample.shape
    if k > min(n, h * w):
        raise RecipeError(f"compress_masks=pca:{k}: at most {min(n, h * w)} components from {n} sampled patterns")
    x = sample.reshape(n, -1).astype(np.float64)
    gram = x @ x.T  # n x n: cheaper than an SVD of the n x M^2 sample
    vals, vecs = np.linalg.eigh(gram)
    order = np.argsort(vals)[::-1][:k]
    s = np.sqrt(np.maximum(vals[order], 1e-30))
    comps = (vecs[:, order].T @ x) / s[:, None]
    return comps.reshape(k, h, w).astype(np.float32)


def sample_indices(n_frames: int, frame_pixels: int, k: int, budget_bytes: int = 64 * 2**20) -> np.ndarray:
    """Evenly spaced frames, as many as fit the memory budget (at least 4k when possible)."""
    n = min(n_frames, max(4 * k, budget_bytes // (8 * frame_pixels)))
    return np.unique(np.linspace(0, n_frames - 1, n).round().astype(int))
