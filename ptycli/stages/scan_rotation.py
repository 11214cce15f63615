"""The scan's rotation relative to the detector, from the patterns' centres of mass
(``ptycli init --scan-rotation-deg auto``).

For a thin specimen the centre of mass (CoM) of a pattern moves with the gradient of the
specimen's phase under the probe (DPC): C(r) ∝ ∇φ(r), a gradient field, so curl-free in
the detector's frame. The scan grid's axes are turned by θ against the detector's
(physics.md §1.5): the CoM read along the scan's own axes, g = (d_y·C, d_x·C) with d the
raster's steps, is the gradient of φ over the scan indices only for the right θ. The steps
are linear in (cos θ, sin θ), so the energy of g's curl part (Helmholtz, in Fourier space)
is a quadratic form in them and the best θ (mod 180°) is its smallest eigenvector: no search.

The 180° twin (C → -C) has the same curl, and no sign rule holds for every specimen: the
phase integrated from the CoM is positively skewed at the atoms of a thin specimen, but
thick crystals reverse it (ptycli's own thin simulations and the abTEM corpus' 40-150 Å
crystals came out on opposite twins by that rule). The estimate is therefore the twin within
±90° of the calibration's rotation. A mirror between scan and detector cannot be turned
away: the other handedness (the raster's x reversed) is tried too and named when it fits
clearly better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..physics import scan

# The other handedness is reported when its best curl is below this share of ours.
MIRROR_RATIO = 0.5
# Above this best/worst curl ratio the data do not determine θ (abTEM corpus: 0.003-0.06 on
# in-focus crystals, 0.42-0.88 on defocused thin specimens whose CoM the wide probe smooths away).
DETERMINED_RATIO = 0.2


@dataclass(frozen=True)
class RotationEstimate:
    rotation_deg: float  # within ±90° of the nominal rotation
    curl_ratio: float  # best / worst curl energy over θ (0 = sharply determined, 1 = no information)
    mirror_curl_ratio: float  # the same with the raster's x reversed (a mirror between scan and detector)

    @property
    def determined(self) -> bool:
        return self.curl_ratio <= DETERMINED_RATIO

    @property
    def mirrored(self) -> bool:
        return self.mirror_curl_ratio < MIRROR_RATIO * self.curl_ratio

    def as_dict(self) -> dict[str, float | bool]:
        return {"rotation_deg": self.rotation_deg, "curl_ratio": self.curl_ratio,
                "mirror_curl_ratio": self.mirror_curl_ratio, "determined": self.determined,
                "mirrored": self.mirrored}


def com_sums(block: np.ndarray) -> np.ndarray:
    """(B, 3) Σ D, Σ D·k_y, Σ D·k_x of each frame of a (B, M, N) block, k in pixels from the DC pixel."""
    m, n = block.shape[-2:]
    ky = np.arange(m, dtype=np.float64) - m // 2
    kx = np.arange(n, dtype=np.float64) - n // 2
    rows = block.sum(axis=2, dtype=np.float64)  # (B, M)
    cols = block.sum(axis=1, dtype=np.float64)  # (B, N)
    return np.stack([rows.sum(axis=1), rows @ ky, cols @ kx], axis=1)


def estimate(sums: np.ndarray, scan_shape: tuple[int, int], step_a: tuple[float, float],
             flip_y: bool = False, flip_x: bool = False, nominal_deg: float = 0.0) -> RotationEstimate:
    """θ from ``com_sums`` of every frame (J, 3) in raster order over ``scan_shape``: the
    curl-free rotation nearest ``nominal_deg`` (mod 180°)."""
    ny, nx = (int(v) for v in scan_shape)
    if ny < 3 or nx < 3:
        raise ValueError(f"scan {ny}x{nx}: the scan rotation needs at least 3x3 positions")
    total = np.where(sums[:, 0] > 0, sums[:, 0], np.inf)
    com = (sums[:, 1:] / total[:, None]).reshape(ny, nx, 2)
    quad = _curl_form(com, step_a, flip_y, flip_x)
    mirror = _curl_form(com, step_a, flip_y, not flip_x)
    (lo, hi), vecs = np.linalg.eigh(quad)
    theta = math.degrees(math.atan2(vecs[1, 0], vecs[0, 0]))
    deg = nominal_deg + (theta - nominal_deg + 90.0) % 180.0 - 90.0  # the twin within ±90° of nominal
    return RotationEstimate(rotation_deg=float(deg), curl_ratio=_ratio(lo, hi),
                            mirror_curl_ratio=_ratio(*np.linalg.eigvalsh(mirror)))


def _ratio(lo: float, hi: float) -> float:
    return float(max(lo, 0.0) / hi) if hi > 0 else 1.0


def _steps(theta: float, step_a: tuple[float, float], flip_y: bool, flip_x: bool) -> tuple[np.ndarray, np.ndarray]:
    """The raster's (y, x) displacement per scan row and per scan column at rotation θ, from
    physics/scan.py itself (so the convention is the one init uses)."""
    corners = scan.raster_positions_a((2, 2), step_a, math.degrees(theta), flip_y, flip_x)
    return corners[2] - corners[0], corners[1] - corners[0]


def _scan_gradient(com: np.ndarray, theta: float, step_a: tuple[float, float], flip_y: bool,
                   flip_x: bool) -> tuple[np.ndarray, np.ndarray]:
    d_row, d_col = _steps(theta, step_a, flip_y, flip_x)
    return com @ d_row, com @ d_col  # ∂φ/∂i_y, ∂φ/∂i_x (up to one common factor)


def _extended_spectra(g: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(f_y, f_x, F[g_row], F[g_col]) of the field extended as the gradient of an evenly
    mirrored φ (g_row odd along rows, g_col odd along columns): no wrap-around edge."""
    g_row, g_col = g
    ny, nx = g_row.shape
    gr = np.concatenate([g_row, -g_row[::-1]], axis=0)
    gr = np.concatenate([gr, gr[:, ::-1]], axis=1)
    gc = np.concatenate([g_col, g_col[::-1]], axis=0)
    gc = np.concatenate([gc, -gc[:, ::-1]], axis=1)
    return np.fft.fftfreq(2 * ny)[:, None], np.fft.fftfreq(2 * nx)[None, :], np.fft.fft2(gr), np.fft.fft2(gc)


def _solenoidal(g: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The curl part of g in Fourier space, (f_x ĝ_y - f_y ĝ_x)/|f| (Helmholtz): zero for a
    gradient field, and exact for a band-limited one where finite differences are not (a
    0.4 Å scan samples atomic columns coarsely: central differences biased θ by ~2.5°)."""
    fy, fx, gy, gx = _extended_spectra(g)
    norm = np.sqrt(fy * fy + fx * fx)
    norm[0, 0] = 1.0
    return (fx * gy - fy * gx) / norm


def _linear_fields(shape: tuple[int, int]) -> np.ndarray:
    """Orthonormal basis (n, 6) of the curl parts of every linear field (1, i_y, i_x per
    component): a descan that follows the scan, and the centring's offset, are such fields
    and no specimen signal. Projecting them out (rather than subtracting a fitted plane, which
    also takes the specimen's own linear part and biased θ by up to 1.2° on a pure gradient
    field) keeps a gradient field exactly curl-free."""
    ny, nx = shape
    iy, ix = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    zero = np.zeros(shape)
    cols = [_solenoidal((f, zero) if row else (zero, f)).ravel()
            for row in (True, False) for f in (np.ones(shape), iy, ix)]
    q, _ = np.linalg.qr(np.stack(cols, axis=1))
    return q


def _curl_form(com: np.ndarray, step_a: tuple[float, float], flip_y: bool, flip_x: bool) -> np.ndarray:
    """Q with ‖curl part(θ)‖² = (cos θ, sin θ) Q (cos θ, sin θ)ᵀ (the steps are linear in
    them), linear fields projected out."""
    basis = _linear_fields(com.shape[:2])
    k0, k1 = (_solenoidal(_scan_gradient(com, t, step_a, flip_y, flip_x)).ravel() for t in (0.0, math.pi / 2))
    k0, k1 = (k - basis @ (basis.conj().T @ k) for k in (k0, k1))
    a, b, d = (float(np.real(np.vdot(u, v))) for u, v in ((k0, k0), (k0, k1), (k1, k1)))
    return np.array([[a, b], [b, d]])
