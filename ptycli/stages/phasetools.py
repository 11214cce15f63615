"""Display-side phase tools: 2D unwrapping, weighted ramp removal, illumination map.

physics.md §7.10: for S > 1 the ramp is removed only from exported/displayed phases, so
these act on copies for export and figures, never on a state.
"""

from __future__ import annotations

import numpy as np

from .. import backend


def wrap(phi: np.ndarray) -> np.ndarray:
    return (phi + np.pi) % (2 * np.pi) - np.pi


def unwrap_phase(phi: np.ndarray) -> np.ndarray:
    """Unwrap a 2D phase with scikit-image's reliability-guided algorithm (Herráez et al.,
    Appl. Opt. 41, 7437 (2002)); values differ from ``phi`` by whole multiples of 2π."""
    from skimage.restoration import unwrap_phase as sk_unwrap  # noqa: PLC0415

    p = np.asarray(phi)
    return sk_unwrap(p.astype(np.float64)).astype(p.dtype)


def fit_ramp(phi: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The plane c + b·r fitted to ``phi`` by weighted least squares (physics.md §7.10)."""
    h, w = phi.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    wt = np.ones((h, w)) if weights is None else np.asarray(weights, dtype=np.float64)
    sw = np.sqrt(wt).ravel()
    design = np.stack([np.ones(h * w), y.ravel(), x.ravel()], axis=1) * sw[:, None]
    coef, *_ = np.linalg.lstsq(design, np.asarray(phi, np.float64).ravel() * sw, rcond=None)
    return coef[0] + coef[1] * y + coef[2] * x


def illumination(probe: np.ndarray, positions_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Σ_j Σ_p |P_p|² placed at every scan position (the weights of §7.10), (H, W)."""
    intensity = np.sum(np.abs(np.asarray(probe)) ** 2, axis=0)
    m, n = intensity.shape
    pos = np.asarray(positions_px, dtype=np.float64)
    y0 = np.floor(pos[:, 0]).astype(np.int64) - m // 2
    x0 = np.floor(pos[:, 1]).astype(np.int64) - n // 2
    ok = (y0 >= 0) & (x0 >= 0) & (y0 + m <= shape[0]) & (x0 + n <= shape[1])
    target = np.zeros(shape, dtype=np.float64)
    patches = np.broadcast_to(intensity, (int(ok.sum()), m, n))
    return backend.scatter_add_patches(target, y0[ok], x0[ok], patches)
