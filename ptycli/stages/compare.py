"""``ptycli compare``: the one quality metric of ptycli (tests and benchmarks use it).

Two images are registered (sub-pixel shift, constant phase offset, optionally a gain),
then compared: Pearson correlation, RMSE, and the Fourier ring correlation with the
resolution at the 1/7 and half-bit thresholds. ``compare_stores`` finds the images: the
depth-summed object phase of a state store over its scanned area, against another state
store, a reference image file, or (for data from ``simulate``) the ``truth/`` arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, StoreError, UsageError
from .frc import fourier_shift, frc_curve, register_shift, resolution, tukey_window
from .viewdata import open_any, phase_sum, scanned_box, state_of

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------- images
def compare_images(
    a: Any,
    b: Any,
    *,
    mask: Any = None,
    phase: bool = True,
    dx_a: float | None = None,
    scale: bool = False,
    apodize: bool = False,
    upsample: int = 100,
) -> dict[str, Any]:
    """Register ``b`` onto ``a`` and measure how alike they are.

    a, b: 2D images of one shape: complex transmissions, or real (phase) images.
    mask: optional (H, W) weights (1 = compare, 0 = ignore) for the statistics.
    phase: treat values as phases: remove a constant phase offset (complex: a global
      phase factor; real: an additive constant) and report RMSE in rad.
    scale: also fit a gain g with a ≈ g·b (b is scaled onto a; e.g. a phase scaled by a
      wrong thickness): ``scale`` = g.
    apodize: taper the edges (Tukey window) before correlating; use it for crops of
      larger, non-periodic images.
    Returns correlation, rmse, shift_px (y, x) of b relative to a, phase_offset, scale,
    frc {freq_px, freq_inv_a, frc, half_bit}, resolution_px / resolution_a {one_seventh,
    half_bit}, and the registered images under ``images`` (a, b) for figures.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"compare: images must be 2D of one shape; got {a.shape} and {b.shape}")
    cplx = np.iscomplexobj(a) or np.iscomplexobj(b)
    work = np.complex128 if cplx else np.float64
    a, b = a.astype(work), b.astype(work)
    w = np.ones(a.shape) if mask is None else np.asarray(mask, dtype=np.float64)
    win = tukey_window(a.shape) * w if apodize else w
    shift = register_shift(_centred(a, w) * win, _centred(b, w) * win, upsample)
    b_reg = fourier_shift(b, (-shift[0], -shift[1]))
    if apodize:
        shift, b_reg = _refine(a, b, shift, win, upsample)
        w = w * _inside(a.shape, shift)
    va, vb, offset = _remove_offset(a, b_reg, w, phase, cplx)
    gain = _gain(va, vb, w) if scale else 1.0
    vb = vb * gain if scale else vb
    out = {
        "correlation": _pearson(va, vb, w),
        "rmse": float(np.sqrt(np.sum(w * (va - vb) ** 2) / np.sum(w))),
        "shift_px": [shift[0], shift[1]],
        "phase_offset": offset,
        "scale": gain,
    }
    out.update(_frc_metrics(va, vb, win, dx_a))
    out["images"] = (va, vb)
    return out


def _refine(a: np.ndarray, b: np.ndarray, shift: tuple[float, float], win: np.ndarray,
            upsample: int, rounds: int = 4) -> tuple[tuple[float, float], np.ndarray]:
    """Re-register after undoing the current estimate: a window pulls a correlation peak
    towards zero shift, a bias that vanishes as the residual shift goes to zero."""
    for _ in range(rounds):
        b_reg = fourier_shift(b, (-shift[0], -shift[1]))
        wt = win * _inside(a.shape, shift)
        dy, dx = register_shift(_centred(a, wt) * wt, _centred(b_reg, wt) * wt, upsample)
        shift = (shift[0] + dy, shift[1] + dx)
        if abs(dy) < 0.5 / upsample and abs(dx) < 0.5 / upsample:
            break
    return shift, fourier_shift(b, (-shift[0], -shift[1]))


def _inside(shape: tuple[int, ...], shift: tuple[float, float]) -> np.ndarray:
    """0 on the border a non-periodic image wraps into when shifted by ``shift``, else 1."""
    valid = np.ones(shape)
    by, bx = (int(np.ceil(abs(s))) + 1 for s in shift)
    valid[:by], valid[-by:], valid[:, :bx], valid[:, -bx:] = 0, 0, 0, 0
    return valid if valid.sum() > 0 else np.ones(shape)


def _centred(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x - np.sum(w * x) / np.sum(w)


def _remove_offset(a: np.ndarray, b: np.ndarray, w: np.ndarray, phase: bool, cplx: bool):
    """Real images to compare, and the constant removed from b (None if not a phase)."""
    if not phase:
        return (np.abs(a), np.abs(b), None) if cplx else (a, b, None)
    if cplx:
        # the global phase factor that best maps b onto a (least squares)
        offset = float(np.angle(np.sum(w * b * np.conj(a))))
        pa = np.angle(a)
        pb = pa + np.angle(b * np.exp(-1j * offset) * np.conj(a))  # b's phase, unwrapped about a's
        return pa, pb, offset
    offset = float(np.sum(w * (b - a)) / np.sum(w))
    return a, b - offset, offset


def _gain(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    ca, cb = _centred(a, w), _centred(b, w)
    den = float(np.sum(w * cb * cb))
    return float(np.sum(w * ca * cb) / den) if den > 0 else 1.0


def _pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    ca, cb = _centred(a, w), _centred(b, w)
    den = np.sqrt(np.sum(w * ca * ca) * np.sum(w * cb * cb))
    return float(np.sum(w * ca * cb) / den) if den > 0 else 0.0


def _frc_metrics(a: np.ndarray, b: np.ndarray, win: np.ndarray, dx_a: float | None) -> dict[str, Any]:
    from .frc import half_bit_threshold  # noqa: PLC0415

    curve = frc_curve(_centred(a, win) * win, _centred(b, win) * win)
    frc = {
        "freq_px": curve["freq_px"].tolist(),
        "freq_inv_a": None if dx_a is None else (curve["freq_px"] / dx_a).tolist(),
        "frc": curve["frc"].tolist(),
        "half_bit": half_bit_threshold(curve["n_px"]).tolist(),
    }
    return {"frc": frc, **resolution(curve, dx_a)}


def phase_correlation(obj_a: Any, obj_b: Any, region: Box | None = None) -> float:
    """Registered phase correlation of two objects (complex (…, H, W) or phase images).

    Objects with slices (Q, S, H, W) or (S, H, W) are reduced to their depth-summed phase.
    ``region`` = (y0, y1, x0, x1) restricts the comparison (e.g. the scanned area).
    """
    pa, pb = _as_phase(obj_a), _as_phase(obj_b)
    if region is not None:
        y0, y1, x0, x1 = region
        pa, pb = pa[y0:y1, x0:x1], pb[y0:y1, x0:x1]
    return compare_images(pa, pb, phase=True, apodize=region is not None)["correlation"]


def _as_phase(obj: Any) -> np.ndarray:
    o = np.asarray(obj)
    if not np.iscomplexobj(o):
        return o.astype(np.float64)
    while o.ndim < 4:
        o = o[None]
    return phase_sum(o).astype(np.float64)


# ----------------------------------------------------------------------------- stores
def compare_stores(
    path_a: str | Path,
    path_b: str | Path | None = None,
    *,
    scale: bool = False,
    margin_px: int = 0,
    return_images: bool = False,
    b_pixel_a: float | None = None,
    b_origin_a: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Compare the object phase of state store A with B over A's scanned area.

    B is another state store, a data store with ``truth/`` (from ``simulate``), a
    reference image (.npy, .tif: a phase image on A's object grid or of the scanned
    area's size), or None: then the data store A was reconstructed from (root attr
    ``data``) supplies its truth. Against a truth, position and probe errors are added.

    An image of another field of view or pixel: ``b_pixel_a`` is its pixel size [Å] and
    ``b_origin_a`` (y, x) [Å] where its pixel (0, 0) lies in A's object frame (A's pixel
    (0, 0) at (0, 0)); it is resampled onto A's pixels and compared where both overlap.
    """
    group_a, kind = open_any(path_a)
    if kind != "state":
        raise StoreError(f"{path_a}: is a {kind} store; compare needs a state store first")
    state = state_of(group_a)
    box = scanned_box(state, margin_px)
    ref = _reference(group_a, path_a, path_b)
    if b_pixel_a is not None or b_origin_a is not None:
        if ref["kind"] != "image":
            raise UsageError(f"--b-pixel-size/--b-origin place a reference image (.npy/.tif); "
                             f"{ref['path']} is a {ref['kind']} store, placed by its own positions")
        placed = _place_image(ref, state, box, b_pixel_a or state.dx_a, b_origin_a or (0.0, 0.0))
        box, pb = placed
    else:
        pb = _reference_phase(ref, state, box)
    pa = phase_sum(np.asarray(state.object)[..., box[0]:box[1], box[2]:box[3]]).astype(np.float64)
    out = {"a": str(path_a), "b": ref["path"], "reference": ref["kind"], "region_px": list(box),
           "dx_a": state.dx_a}
    metrics = compare_images(pa, pb, phase=True, dx_a=state.dx_a, scale=scale, apodize=True)
    images = metrics.pop("images")
    out.update(metrics)
    if ref["kind"] == "truth":
        out["positions"] = _position_errors(state, ref)
        out["probe"] = _probe_metrics(state, ref)
    if return_images:
        out["images"] = images
    return out


def _reference(group_a: Any, path_a: Any, path_b: Any) -> dict[str, Any]:
    if path_b is None:
        return _truth(_data_path(group_a, path_a))
    p = Path(path_b)
    if p.suffix.lower() in (".npy", ".tif", ".tiff"):
        return {"kind": "image", "path": str(p), "image": _read_image(p)}
    _, kind = open_any(p)
    if kind == "data":
        return _truth(p)
    other = state_of(open_any(p)[0])
    return {"kind": "state", "path": str(p), "state": other}


def _data_path(group_a: Any, path_a: Any) -> Path:
    data = dict(group_a.attrs.get("data") or {})
    if not data.get("path"):
        raise StoreError(f"{path_a}: has no 'data' attribute naming its data store; give B explicitly")
    p = Path(data["path"])
    if not p.exists() and not p.is_absolute():
        p = Path(path_a).parent / p
    return p


def _truth(path: Path) -> dict[str, Any]:
    found = _find_truth(Path(path))
    if found is None:
        raise StoreError(f"{path}: has no truth/object, nor has any data store it was made from "
                         "(only stores from `ptycli simulate` carry a truth)")
    path, group = found
    t = group["truth"]
    attrs = dict(t.attrs.get("truth") or group.attrs.get("truth") or {})
    if "dx_a" not in attrs:
        raise StoreError(f"{path}: truth attribute lacks dx_a")
    arrays = {k: np.asarray(t[k][...]) for k in ("object", "probe", "positions") if k in t}
    return {"kind": "truth", "path": str(path), "dx_a": float(attrs["dx_a"]), **arrays}


def _find_truth(path: Path, depth: int = 6) -> tuple[Path, Any] | None:
    """The data store with ``truth/``: this one, or the nearest ancestor in its ``inputs``
    (``preprocess`` writes a new data store from the simulated one)."""
    group, kind = open_any(path)
    if kind == "data" and "truth" in group and "object" in group["truth"]:
        return path, group
    if depth == 0:
        return None
    from ..store.io import read_meta  # noqa: PLC0415

    for ref in read_meta(group, path).inputs:
        p = Path(ref.path)
        if ref.kind == "data" and (p.exists() or (path.parent / p).exists()):
            hit = _find_truth(p if p.exists() else path.parent / p, depth - 1)
            if hit is not None:
                return hit
    return None


def _read_image(p: Path) -> np.ndarray:
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.suffix.lower() == ".npy":
        img = np.load(p)
    else:
        import tifffile  # noqa: PLC0415

        img = tifffile.imread(p)
    img = np.squeeze(img)
    if img.ndim != 2:
        raise InputError(f"{p}: reference image must be 2D, got shape {img.shape}")
    return img


def _reference_phase(ref: dict[str, Any], state: Any, box: Box) -> np.ndarray:
    """B's phase image resampled onto A's scanned-area pixels."""
    if ref["kind"] == "image":
        return _image_on_box(ref["image"], state, box, ref["path"])
    if ref["kind"] == "truth":
        obj, pos_b, dx_b = ref["object"], ref.get("positions"), ref["dx_a"]
    else:
        other = ref["state"]
        obj, pos_b, dx_b = other.object, _nominal(other), other.dx_a
    if pos_b is None:
        raise StoreError(f"{ref['path']}: no positions to place its object on A's grid")
    return _resample(phase_sum(obj).astype(np.float64), _nominal(state), pos_b, state.dx_a, dx_b, box)


def _image_on_box(img: np.ndarray, state: Any, box: Box, path: str) -> np.ndarray:
    y0, y1, x0, x1 = box
    img = np.angle(img) if np.iscomplexobj(img) else img.astype(np.float64)
    if img.shape == tuple(state.object.shape[-2:]):
        return img[y0:y1, x0:x1]
    if img.shape == (y1 - y0, x1 - x0):
        return img
    raise InputError(f"{path}: image shape {img.shape} matches neither A's object "
                     f"{tuple(state.object.shape[-2:])} nor its scanned area {(y1 - y0, x1 - x0)}; "
                     "for another field of view give --b-pixel-size and --b-origin")


def _place_image(ref: dict[str, Any], state: Any, box: Box, dx_b: float,
                 origin: tuple[float, float]) -> tuple[Box, np.ndarray]:
    """A's box cut to where image B (pixel dx_b Å, pixel (0, 0) at ``origin`` Å in A's
    frame) covers it, and B's phase resampled onto those pixels (cubic)."""
    from scipy.ndimage import map_coordinates  # noqa: PLC0415

    if not (np.isfinite(dx_b) and dx_b > 0) or not all(np.isfinite(origin)):
        raise UsageError(f"--b-pixel-size {dx_b:g}, --b-origin {origin}: expected a pixel size > 0 Å "
                         "and a finite origin")
    img = ref["image"]
    img = np.angle(img) if np.iscomplexobj(img) else img.astype(np.float64)
    dx_a = state.dx_a
    # A's pixels whose centres fall inside B's pixel centres' span
    lo = [int(np.ceil(origin[k] / dx_a - 1e-9)) for k in (0, 1)]
    hi = [int(np.floor((origin[k] + (img.shape[k] - 1) * dx_b) / dx_a + 1e-9)) + 1 for k in (0, 1)]
    cut = (max(box[0], lo[0]), min(box[1], hi[0]), max(box[2], lo[1]), min(box[3], hi[1]))
    if cut[1] - cut[0] < 8 or cut[3] - cut[2] < 8:
        raise InputError(f"{ref['path']}: placed at origin {tuple(origin)} Å with {dx_b:g} Å pixels it covers "
                         f"{max(0, cut[1] - cut[0])}x{max(0, cut[3] - cut[2])} px of A's scanned area {tuple(box)}; expected "
                         "at least 8x8 (check --b-origin and --b-pixel-size)")
    y, x = np.mgrid[cut[0]:cut[1], cut[2]:cut[3]].astype(np.float64)
    coords = np.stack([(y * dx_a - origin[0]) / dx_b, (x * dx_a - origin[1]) / dx_b])
    return cut, map_coordinates(img, coords, order=3, mode="nearest")


def _nominal(state: Any) -> np.ndarray:
    pos = state.positions_initial if state.positions_initial is not None else state.positions
    return np.asarray(pos, dtype=np.float64)


def _resample(img_b: np.ndarray, pos_a: np.ndarray, pos_b: np.ndarray, dx_a: float, dx_b: float,
              box: Box) -> np.ndarray:
    """Sample B's image at A's pixels: both scans share their physical centroid."""
    from scipy.ndimage import map_coordinates  # noqa: PLC0415

    ca, cb = pos_a.mean(axis=0), pos_b.mean(axis=0)
    ratio = dx_a / dx_b
    y, x = np.mgrid[box[0]:box[1], box[2]:box[3]].astype(np.float64)
    if abs(ratio - 1) < 1e-6:
        # same pixel: shift by whole pixels (exact); registration finds the sub-pixel rest
        dy, dx = np.rint(cb - ca)
        coords = np.stack([y + dy, x + dx])
    else:
        coords = np.stack([(y - ca[0]) * ratio + cb[0], (x - ca[1]) * ratio + cb[1]])
    return map_coordinates(img_b, coords, order=3, mode="nearest")


def _position_errors(state: Any, ref: dict[str, Any]) -> dict[str, Any]:
    truth = ref.get("positions")
    if truth is None or len(truth) != len(state.positions):
        return {}

    def rms(p: np.ndarray, dx: float) -> float:
        d = (p - p.mean(axis=0)) * dx - (truth - truth.mean(axis=0)) * ref["dx_a"]
        return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))

    out = {"rmse_a": rms(np.asarray(state.positions, np.float64), state.dx_a)}
    if state.positions_initial is not None:
        out["initial_rmse_a"] = rms(np.asarray(state.positions_initial, np.float64), state.dx_a)
    return out


def _probe_metrics(state: Any, ref: dict[str, Any]) -> dict[str, Any]:
    truth = ref.get("probe")
    if truth is None or truth.shape[-2:] != state.probe.shape[-2:]:
        return {}
    ia = np.sum(np.abs(np.asarray(state.probe)) ** 2, axis=0)
    ib = np.sum(np.abs(truth) ** 2, axis=0)
    res = compare_images(ib, ia, phase=False)
    return {"intensity_correlation": res["correlation"], "shift_px": res["shift_px"],
            "power_ratio": float(ia.sum() / ib.sum()) if ib.sum() > 0 else None}
