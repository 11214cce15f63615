"""Score a reconstructed phase against a corpus set's truth (benchmarks/corpus/README.md).

    python benchmarks/corpus/score.py SET_DIR RECON [--pixel-size-a P] [--json]
        SET_DIR  a corpus set (holds truth.npz, meta.json) or a tests/fixtures/abtem/*.npz file
        RECON    a ptycli state store (object read with zarr, phase summed over slices, pixel
                 size from the store) or a .npy phase (2D, or (S, H, W) summed) with --pixel-size-a

    from score import score_phase
    m = score_phase(phase, pixel_size_a, truth_phase, truth_pixel_size_a)

Metrics (on the central scanned region, after resampling both to the coarser pixel and a
sub-pixel registration): `pearson` of the slice-summed phase, `scale_a` / `offset_b` of the
fit truth ≈ a·recon + b (a = 1 when the phase is quantitatively right), `frc_halfbit_a`
(1 / the highest spatial frequency whose Fourier ring correlation with the truth reaches
the half-bit threshold, among the rings where the truth has power; inf if none), `shift_a` (registration). Needs numpy, scipy,
scikit-image and (for stores) zarr: all ptycli dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ORIENTATIONS = ("identity", "flip_y", "flip_x", "rot180", "transpose", "rot90", "rot270", "antitranspose")
EXIT_USAGE, EXIT_INPUT = 2, 4          # ptycli/errors.py exit codes


class ScoreError(Exception):
    """Bad input: the message names the file/key/value and what was expected."""


def orient(img: np.ndarray, name: str) -> np.ndarray:
    """One of the 8 ways a (y, x) image can be mirrored or rotated by a convention mismatch."""
    ops = {"identity": lambda a: a, "flip_y": lambda a: a[::-1], "flip_x": lambda a: a[:, ::-1],
           "rot180": lambda a: a[::-1, ::-1], "transpose": lambda a: a.T, "rot90": lambda a: np.rot90(a),
           "rot270": lambda a: np.rot90(a, -1), "antitranspose": lambda a: a[::-1, ::-1].T}
    return np.ascontiguousarray(ops[name](img))


def lowpass_resample(img: np.ndarray, px_from: float, px_to: float) -> np.ndarray:
    """Resample to pixel `px_to` [Å]; when coarsening, first cut the spectrum at the new Nyquist
    (a hard square in Fourier space) so the result holds exactly the coarser band."""
    img = np.asarray(img, np.float64)
    if abs(px_to / px_from - 1) < 1e-9:
        return img.copy()
    if px_to > px_from:
        ky = np.fft.fftfreq(img.shape[0], px_from)[:, None]
        kx = np.fft.fftfreq(img.shape[1], px_from)[None, :]
        nyq = 0.5 / px_to
        keep = (np.abs(ky) <= nyq) & (np.abs(kx) <= nyq)
        img = np.fft.ifft2(np.fft.fft2(img) * keep).real
    shape = np.floor(np.array(img.shape) * px_from / px_to).astype(int)
    yy, xx = np.meshgrid(np.arange(shape[0]) * px_to / px_from, np.arange(shape[1]) * px_to / px_from,
                         indexing="ij")
    return ndimage.map_coordinates(img, [yy, xx], order=3, mode="nearest")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-300))


def register(window: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, float]:
    """Sub-pixel top-left corner (y, x) of `window` inside `truth` (normalised cross-correlation
    over every placement, parabola refinement of the peak) and the peak correlation."""
    from skimage.feature import match_template
    cc = match_template(truth, window)
    iy, ix = np.unravel_index(np.argmax(cc), cc.shape)
    peak = float(cc[iy, ix])
    sub = []
    for i, axis_len, line in ((iy, cc.shape[0], cc[:, ix]), (ix, cc.shape[1], cc[iy, :])):
        if 0 < i < axis_len - 1:
            lo, mid, hi = line[i - 1], line[i], line[i + 1]
            den = lo - 2 * mid + hi
            sub.append(i + (0.5 * (lo - hi) / den if den < 0 else 0.0))
        else:
            sub.append(float(i))
    return np.array(sub), peak


def frc(a: np.ndarray, b: np.ndarray, pixel_a: float) -> dict:
    """Fourier ring correlation of a reconstruction `a` with the truth `b` (equal size,
    Hann-apodised) against the half-bit threshold (van Heel & Schatz 2005). A crystal's
    power sits in its Bragg rings and the rings between hold almost none, where any FRC is
    noise; so only rings holding at least 1e-3 of the truth's strongest ring count, and the
    resolution is 1 / the highest such ring whose FRC reaches the threshold."""
    n = min(a.shape)
    a, b = a[:n, :n] - a[:n, :n].mean(), b[:n, :n] - b[:n, :n].mean()
    w = np.outer(np.hanning(n), np.hanning(n))
    A, B = np.fft.fftshift(np.fft.fft2(a * w)), np.fft.fftshift(np.fft.fft2(b * w))
    y, x = np.indices((n, n)) - n // 2
    ring = np.round(np.hypot(y, x)).astype(int).ravel()
    nr = n // 2
    m = ring < nr
    num = np.bincount(ring[m], (A * B.conj()).real.ravel()[m], nr)
    pa = np.bincount(ring[m], (np.abs(A) ** 2).ravel()[m], nr)
    pb = np.bincount(ring[m], (np.abs(B) ** 2).ravel()[m], nr)
    curve = num / (np.sqrt(pa * pb) + 1e-300)
    npix = np.bincount(ring[m], minlength=nr).astype(float)
    halfbit = (0.2071 + 1.9102 / np.sqrt(npix)) / (1.2071 + 0.9102 / np.sqrt(npix))
    freq = np.arange(nr) / (n * pixel_a)                  # [1/Å]
    informative = np.zeros(nr, bool)
    informative[1:] = pb[1:] >= 1e-3 * pb[1:].max()
    good = np.where(informative & (curve >= halfbit))[0]
    res = 1.0 / freq[good[-1]] if good.size else float("inf")
    return {"frc_halfbit_a": float(res), "frc_at_nyquist": bool(good.size and good[-1] == nr - 1),
            "frc_freq_inv_a": freq.tolist(), "frc": curve.tolist(), "frc_threshold": halfbit.tolist(),
            "frc_informative": informative.tolist()}


def score_phase(phase: np.ndarray, pixel_size_a: float, truth_phase: np.ndarray, truth_pixel_size_a: float,
                *, region: tuple[slice, slice] | None = None, orientation: str = "identity",
                try_orientations: bool = True) -> dict:
    """Score a 2D phase (slice-summed, radians) of pixel `pixel_size_a` [Å] against the truth.

    `region`: the part of `phase` to score (the central scanned region; default the central
    half of the array in each axis). Both images are resampled to the coarser pixel, the
    region is registered inside the truth (sub-pixel), then: pearson, scale_a / offset_b
    (least squares truth ≈ a·recon + b), FRC half-bit resolution. With `try_orientations`
    the result also lists the peak correlation of the 8 mirrored/rotated variants
    (`orientations`), which names a convention mismatch instead of just scoring low."""
    phase = np.asarray(phase, np.float64)
    truth_phase = np.asarray(truth_phase, np.float64)
    if phase.ndim != 2 or truth_phase.ndim != 2:
        raise ScoreError(f"phase must be 2D (y, x); got shapes {phase.shape} and {truth_phase.shape}")
    if not (np.isfinite(pixel_size_a) and pixel_size_a > 0):
        raise ScoreError(f"pixel size {pixel_size_a!r} Å: expected a positive number")
    if not np.all(np.isfinite(phase)):
        raise ScoreError("the reconstructed phase holds NaN or Inf values")
    if region is None:
        h, w = phase.shape
        region = (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))
    window = phase[region]
    px = max(pixel_size_a, truth_pixel_size_a)
    win = lowpass_resample(window, pixel_size_a, px)
    tru = lowpass_resample(truth_phase, truth_pixel_size_a, px)
    if min(win.shape) < 8:
        raise ScoreError(f"scored region is {win.shape} pixels at {px:.3f} Å; expected at least 8x8")
    if win.shape[0] >= tru.shape[0] or win.shape[1] >= tru.shape[1]:
        raise ScoreError(f"scored region {win.shape} is not smaller than the truth {tru.shape} (pixel {px:.3f} Å)")

    variants = {}
    if try_orientations:
        for name in ORIENTATIONS:
            v = orient(win, name)
            if v.shape[0] < tru.shape[0] and v.shape[1] < tru.shape[1]:
                variants[name] = round(register(v, tru)[1], 4)
    win = orient(win, orientation)
    corner, peak = register(win, tru)
    yy, xx = np.indices(win.shape, dtype=np.float64)
    ref = ndimage.map_coordinates(tru, [yy + corner[0], xx + corner[1]], order=3, mode="nearest")
    r = _pearson(win, ref)
    A = np.stack([win.ravel(), np.ones(win.size)], 1)
    (a, b), *_ = np.linalg.lstsq(A, ref.ravel(), rcond=None)
    f = frc(win, ref, px)
    out = {"pearson": r, "scale_a": float(a), "offset_b": float(b), "frc_halfbit_a": f["frc_halfbit_a"],
           "frc_at_nyquist": f["frc_at_nyquist"],
           "frc_crossed": not f["frc_at_nyquist"], "pixel_a": px, "region_px": list(win.shape),
           "shift_a": (corner * px).tolist(), "orientation": orientation, "frc": f}
    if variants:
        out["orientations"] = variants
        best = max(variants, key=variants.get)
        out["best_orientation"] = best
    return out


# ------------------------------------------------------------------ file handling
def load_truth(set_path: Path) -> tuple[dict, dict]:
    """(meta, truth) from a corpus set folder or a fixture .npz."""
    set_path = Path(set_path)
    if set_path.suffix == ".npz":
        with np.load(set_path) as z:
            meta = json.loads(str(z["meta"]))
            truth = {k: z[k] for k in z.files if k not in ("meta", "data")}
    else:
        for f in ("truth.npz", "meta.json"):
            if not (set_path / f).exists():
                raise ScoreError(f"{set_path / f}: missing; expected a corpus set folder made by make.py")
        meta = json.loads((set_path / "meta.json").read_text())
        with np.load(set_path / "truth.npz") as z:
            truth = {k: z[k] for k in z.files}
    truth["pixel_size_a"] = float(truth["pixel_size_a"])
    return meta, truth


def _object_phase(obj: np.ndarray) -> np.ndarray:
    """Slice-summed phase of the first object mode; each slice unwrapped if it wraps."""
    from skimage.restoration import unwrap_phase
    total = 0.0
    for s in range(obj.shape[1]):
        ph = np.angle(obj[0, s])
        if np.abs(ph).max() > 0.95 * np.pi:
            ph = unwrap_phase(ph)
        total = total + ph
    return total


def read_recon(path: Path, pixel_size_a: float | None, meta: dict) -> tuple[np.ndarray, float, tuple]:
    """(phase, pixel size [Å], scored region) from a ptycli state store or a .npy phase."""
    path = Path(path)
    if path.suffix == ".npy":
        if pixel_size_a is None:
            raise ScoreError(f"{path}: a .npy phase needs --pixel-size-a")
        phase = np.load(path)
        if np.iscomplexobj(phase):
            phase = np.angle(phase)
        if phase.ndim == 3:
            phase = phase.sum(0)
        if phase.ndim != 2:
            raise ScoreError(f"{path}: phase of shape {phase.shape}; expected (H, W) or (S, H, W)")
        # no positions: the scanned region is the centred scan extent of the set
        span = [(n - 1) * meta["scan_step_a"] / pixel_size_a for n in meta["scan_shape"]]
        c = np.array(phase.shape) / 2
        region = tuple(slice(max(int(c[i] - span[i] / 2), 0), min(int(c[i] + span[i] / 2) + 1, phase.shape[i]))
                       for i in range(2))
        return phase, float(pixel_size_a), region
    try:
        import zarr
        g = zarr.open_group(str(path), mode="r")
        attrs = dict(g.attrs)
        obj = np.asarray(g["object"][...])
        pos = np.asarray(g["positions"][...], np.float64)
    except Exception as e:  # zarr raises many kinds for a path that is not a state store
        raise ScoreError(f"{path}: not a readable ptycli state store with 'object' and 'positions' "
                         f"({type(e).__name__}: {e}); a .npy phase needs --pixel-size-a") from None
    dx = pixel_size_a or (attrs.get("state") or {}).get("dx_a")
    if not dx:
        raise ScoreError(f"{path}: attribute state.dx_a missing; give --pixel-size-a")
    if obj.ndim != 4:
        raise ScoreError(f"{path}: object of shape {obj.shape}; expected (Q, S, H, W)")
    phase = _object_phase(obj)
    lo, hi = np.floor(pos.min(0)).astype(int), np.ceil(pos.max(0)).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, phase.shape)
    return phase, float(dx), (slice(lo[0], hi[0]), slice(lo[1], hi[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set_dir", type=Path, help="corpus set folder (or a fixture .npz)")
    ap.add_argument("recon", type=Path, help="ptycli state store, or a .npy phase with --pixel-size-a")
    ap.add_argument("--pixel-size-a", type=float, help="pixel of a .npy phase [Å] (overrides a store's)")
    ap.add_argument("--orientation", default="identity", choices=ORIENTATIONS,
                    help="mirror/rotate the reconstruction before scoring (peer codes' axis conventions)")
    ap.add_argument("--json", action="store_true", help="print one JSON document (with the FRC curve)")
    args = ap.parse_args(argv)
    try:
        meta, truth = load_truth(args.set_dir)
        phase, px, region = read_recon(args.recon, args.pixel_size_a, meta)
        m = score_phase(phase, px, truth["phase"], truth["pixel_size_a"], region=region,
                        orientation=args.orientation)
    except (ScoreError, OSError, KeyError, ValueError) as e:
        print(f"score.py: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    m["set"] = meta["name"]
    if args.json:
        print(json.dumps(m))
    else:
        print(f"{meta['name']}: pearson {m['pearson']:.3f}  scale a {m['scale_a']:.3f}  "
              f"FRC half-bit {m['frc_halfbit_a']:.2f} Å{' (Nyquist)' if m['frc_at_nyquist'] else ''}  "
              f"region {m['region_px'][0]}x{m['region_px'][1]} px at {m['pixel_a']:.3f} Å  "
              f"best orientation {m.get('best_orientation', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
