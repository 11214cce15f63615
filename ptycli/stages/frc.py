"""Registration and Fourier ring correlation: the numerical core of ``compare``.

Host-side numpy on purpose: images compared here are a few hundred pixels on a side and
come from stores, so a device round trip would cost more than it saves.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

ONE_SEVENTH = 1.0 / 7.0


# ----------------------------------------------------------------------------- shifts
def fourier_shift(img: np.ndarray, shift_px: tuple[float, float]) -> np.ndarray:
    """Move the content of ``img`` by +shift (y, x) px (periodic; physics.md §1.4 sign)."""
    uy = np.fft.fftfreq(img.shape[-2])[:, None]
    ux = np.fft.fftfreq(img.shape[-1])[None, :]
    ramp = np.exp(-2j * np.pi * (uy * shift_px[0] + ux * shift_px[1]))
    out = np.fft.ifft2(np.fft.fft2(img) * ramp)
    return out if np.iscomplexobj(img) else out.real.astype(img.dtype, copy=False)


def register_shift(a: np.ndarray, b: np.ndarray, upsample: int = 100) -> tuple[float, float]:
    """Shift s (y, x) px with b(r) ≈ a(r - s), to 1/``upsample`` px.

    scikit-image's upsampled cross-correlation (Guizar-Sicairos et al., Opt. Lett. 33, 156
    (2008)) is the reference implementation; it returns the shift that registers b onto a,
    i.e. -s."""
    from skimage.registration import phase_cross_correlation  # noqa: PLC0415

    with warnings.catch_warnings():  # it warns about its RMS error for zero-mean images; unused here
        warnings.simplefilter("ignore", UserWarning)
        shift, _, _ = phase_cross_correlation(a, b, upsample_factor=max(1, int(upsample)),
                                              normalization=None)
    return float(-shift[0]), float(-shift[1])


# ----------------------------------------------------------------------------- windows
def tukey_window(shape: tuple[int, int], alpha: float = 0.2) -> np.ndarray:
    """Separable Tukey window: flat middle, cosine edges over ``alpha`` of each side.

    Crops of larger images are not periodic; tapering their edges keeps the FFT's
    wrap-around step out of correlations and FRC rings."""
    from scipy.signal.windows import tukey  # noqa: PLC0415

    return np.outer(tukey(shape[0], alpha), tukey(shape[1], alpha))


# ----------------------------------------------------------------------------- FRC
def frc_curve(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Fourier ring correlation of two same-shape images.

    Rings are centred at u = i/N cycles/px (N = the shorter side), i = 0..N/2. Returns
    ``freq_px`` (cycles/px), ``frc`` and ``n_px`` (pixels per ring, for the half-bit curve).
    """
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    n = min(a.shape[-2:])
    uy = np.fft.fftfreq(a.shape[-2])[:, None]
    ux = np.fft.fftfreq(a.shape[-1])[None, :]
    ring = np.rint(np.sqrt(uy**2 + ux**2) * n).astype(np.int64).ravel()
    n_rings = n // 2 + 1
    keep = ring < n_rings
    ring = ring[keep]

    def rsum(v: np.ndarray) -> np.ndarray:
        return np.bincount(ring, weights=v.ravel()[keep], minlength=n_rings)

    num = rsum(np.real(fa * np.conj(fb)))
    den = np.sqrt(rsum(np.abs(fa) ** 2) * rsum(np.abs(fb) ** 2))
    tiny = np.finfo(np.float64).tiny
    frc = np.where(den > tiny, num / np.maximum(den, tiny), 0.0)
    return {"freq_px": np.arange(n_rings) / n, "frc": frc, "n_px": np.bincount(ring, minlength=n_rings)}


def half_bit_threshold(n_px: np.ndarray) -> np.ndarray:
    """van Heel & Schatz, J. Struct. Biol. 151, 250 (2005): the half-bit information curve."""
    s = 1.0 / np.sqrt(np.maximum(n_px, 1))
    return (0.2071 + 1.9102 * s) / (1.2071 + 0.9102 * s)


def crossing_px(freq: np.ndarray, frc: np.ndarray, threshold: Any, min_run: int = 3) -> float | None:
    """Where the FRC falls below the threshold for good (cycles/px, linearly interpolated).

    The crossing that ends the last run of ``min_run`` or more rings at or above the
    threshold (or of the run from ring 1, however short). Not the first dip: the lowest
    rings hold a handful of pixels (the half-bit curve is ~0.7 there) and a phase ramp,
    offset or the window's taper can pull one of them under it, which reported the whole
    field as the resolution. Short runs are skipped too:
    noise rings poke above the curve now and then. Ring 0 (DC) is ignored. None when the
    curve never falls below for good: resolution is then limited by the sampling
    (Nyquist), not by the data.
    """
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), frc.shape)
    d = np.asarray(frc, dtype=np.float64) - thr
    above = d[1:] >= 0
    run, end = 0, None  # end: index (into d) of the last ring of the last long-enough run
    for i, up in enumerate(above, start=1):
        run = run + 1 if up else 0
        if up and (run >= min_run or run == i):  # a run from ring 1 on is signal at any length
            end = i
    if end is None:  # no sustained signal at all: the first ring already fails
        return float(freq[1])
    if end == len(d) - 1:
        return None
    t = d[end] / (d[end] - d[end + 1])
    return float(freq[end] + t * (freq[end + 1] - freq[end]))


def resolution(curve: dict[str, np.ndarray], dx_a: float | None) -> dict[str, Any]:
    """Resolution (period) at the 1/7 and half-bit thresholds, in px and Å."""
    out: dict[str, Any] = {"resolution_px": {}, "resolution_a": {}, "nyquist_limited": {}}
    thresholds = {"one_seventh": ONE_SEVENTH, "half_bit": half_bit_threshold(curve["n_px"])}
    for name, thr in thresholds.items():
        u = crossing_px(curve["freq_px"], curve["frc"], thr)
        limited = u is None
        period_px = 2.0 if limited else 1.0 / u
        out["resolution_px"][name] = period_px
        out["resolution_a"][name] = None if dx_a is None else period_px * dx_a
        out["nyquist_limited"][name] = limited
    return out
