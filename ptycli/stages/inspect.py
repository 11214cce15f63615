"""``inspect``: what a store (or raw file) holds, its calibration and derived quantities.

Returns one JSON-able document; the CLI renders it as a table, as JSON, or picks one
value (``get_value(doc, "derived.dx_a")``). Reads are bounded: array metadata, root
attributes, the stored mean pattern (or a streamed mean), never a whole array at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from ..store.calibration import Calibration, wavelength_a
from . import preprocess_ops as ops

RAW_SAMPLE_FRAMES = 256  # frames averaged for a raw file's mean pattern


def run(path: str | Path, *, dataset: str | None = None) -> dict[str, Any]:
    """Describe a data store, a state store or a raw file as one document."""
    p = Path(path)
    if not p.exists():
        from ..store.io import open_store  # noqa: PLC0415  (names a left-over .partial store)

        open_store(p)
    if p.is_dir() and (p / "zarr.json").exists():
        import zarr  # noqa: PLC0415

        from ..store.io import is_ptycli_store  # noqa: PLC0415

        try:
            node = zarr.open(str(p), mode="r")
        except Exception:  # noqa: BLE001  (the raw reader names what is wrong with it)
            node = None
        # a plain Zarr array (no group, no ptycli attributes) is raw data like any .npy
        if isinstance(node, zarr.Group) and is_ptycli_store(node):
            return inspect_store(p)
        if isinstance(node, zarr.Group) and isinstance(node.attrs.get("cursor"), dict):
            # a checkpoint holds a state and a cursor, not detector data: read as raw data it
            # would be "complex data", which says nothing useful
            parent = p.resolve().parent.name
            out = parent.removesuffix(".partial") if parent.endswith(".partial") else "OUT.zarr"
            raise InputError(f"{p}: a checkpoint of a running or interrupted reconstruction; "
                             f"use `ptycli watch {out}` or resume it")
    return inspect_raw(p, dataset)


# ----------------------------------------------------------------------------- stores
def inspect_store(path: Path) -> dict[str, Any]:
    from ..store.io import walk_arrays, open_store, read_meta  # noqa: PLC0415

    group = open_store(path)
    meta = read_meta(group, path)
    doc: dict[str, Any] = {
        "path": str(path), "kind": meta.kind, "schema_version": meta.schema_version, "stage": meta.stage,
        "status": meta.status, "ptycli_version": meta.ptycli_version, "fingerprint": meta.fingerprint,
        "arrays": {name: array_info(a) for name, a in sorted(walk_arrays(group))},
    }
    if meta.kind == "data":
        doc["scan_shape"] = group.attrs.get("scan_shape")
        doc["calibration"] = dict(group.attrs.get("calibration", {}))
        doc["derived"] = derive_data(group, doc["calibration"])
    else:
        doc["state"] = dict(group.attrs.get("state", {}))
        doc["data"] = group.attrs.get("data")
        doc["derived"] = derive_state(group, doc["state"])
    doc["provenance"] = [r.model_dump(mode="json") for r in [*meta.provenance, meta.as_record()]]
    return doc


def array_info(arr: Any) -> dict[str, Any]:
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "chunks": list(arr.chunks),
            "dims": list(arr.metadata.dimension_names or ()), "units": arr.attrs.get("units")}


def mean_pattern(group: Any, max_bytes: int = 64 * 2**20) -> np.ndarray:
    """The stored ``mean_pattern``, else a streamed mean over ``patterns``."""
    if "mean_pattern" in group:
        return np.asarray(group["mean_pattern"][...], dtype=np.float64)
    pats = group["patterns"]
    step = max(1, max_bytes // (int(np.prod(pats.shape[1:])) * 8))
    total = np.zeros(pats.shape[1:], dtype=np.float64)
    for s in range(0, pats.shape[0], step):
        total += np.asarray(pats[s : s + step], dtype=np.float64).sum(axis=0)
    return total / max(pats.shape[0], 1)


def derive_data(group: Any, cal_attrs: dict[str, Any]) -> dict[str, Any]:
    """Wavelength, pixel sizes, BF disk, probe size and overlap, dose (None when unknown)."""
    cal = Calibration.model_validate(cal_attrs)
    out: dict[str, Any] = {}
    m = int(group["patterns"].shape[-1]) if "patterns" in group else None
    if cal.energy_kev:
        out["wavelength_a"] = cal.wavelength_a
        out["dk_inv_a"] = cal.pixel_inv_a
        out["dk_mrad"] = cal.dk_mrad if cal.dk_mrad is not None else (
            cal.pixel_inv_a * cal.wavelength_a * 1e3 if cal.pixel_inv_a else None)
        out["dx_a"] = cal.dx_a(m)
    if "patterns" in group:
        mean = mean_pattern(group)
        out.update(bf_quantities(mean, cal))
        out["counts_per_frame"] = float(mean.sum())
        out["n_positions"] = int(group["patterns"].shape[0])
    out.update(probe_overlap(cal, out.get("wavelength_a")))
    if out.get("counts_per_frame") is not None and cal.scan_step_a:
        units = group["patterns"].attrs.get("units") if "patterns" in group else None
        if units in ("count", "counts"):  # schema 2 (UDUNITS), schema 1
            out["dose_e_per_a2"] = out["counts_per_frame"] / (cal.scan_step_a[0] * cal.scan_step_a[1])
    if "compressed/masks" in group and m:
        out["compression_ratio"] = m * m / int(group["compressed/masks"].shape[0])
    return out


def bf_quantities(mean: np.ndarray, cal: Calibration) -> dict[str, Any]:
    try:
        cy, cx, radius = ops.bf_disk(mean)
    except InputError:
        return {"bf_radius_px": None}
    out = {"bf_radius_px": radius, "bf_centre_px": [cy, cx],
           "bf_offset_px": [cy - mean.shape[0] // 2, cx - mean.shape[1] // 2],
           "dark_field_fraction": ops.dark_field_fraction(mean, (cy, cx, radius))}
    if cal.semiangle_mrad:
        out["dk_mrad_from_bf"] = cal.semiangle_mrad / radius  # physics.md §1.3: α_pix = α / R_BF
    return out


def probe_overlap(cal: Calibration, wavelength: float | None) -> dict[str, Any]:
    """Probe diameter (geometric 2|Δf|α, at least the Airy 1.22λ/α) and 1 - step/diameter."""
    if not (wavelength and cal.semiangle_mrad):
        return {}
    alpha = cal.semiangle_mrad * 1e-3
    diameter = max(2 * abs(cal.defocus_a or 0.0) * alpha, 1.22 * wavelength / alpha)
    out: dict[str, Any] = {"probe_diameter_a": diameter}
    if cal.scan_step_a:
        out["probe_overlap"] = max(0.0, 1.0 - max(cal.scan_step_a) / diameter)
    return out


def derive_state(group: Any, attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if attrs.get("energy_kev"):
        out["wavelength_a"] = wavelength_a(float(attrs["energy_kev"]) * 1e3)
    dx = attrs.get("dx_a")
    if "probe" in group:
        probe = np.asarray(group["probe"][...])
        power = (np.abs(probe) ** 2).sum(axis=(-2, -1))
        out["probe_modes"] = int(probe.shape[0])
        out["probe_counts"] = float(power.sum())
        out["probe_mode_fractions"] = [float(v) for v in power / max(power.sum(), 1e-30)]
        if dx:
            out["probe_diameter_a"] = energy_diameter_px(np.abs(probe) ** 2) * dx
    if "positions" in group and dx:
        step = median_step_px(np.asarray(group["positions"][...], dtype=np.float64))
        if step is not None:
            out["scan_step_a"] = step * dx
            if out.get("probe_diameter_a"):
                out["probe_overlap"] = max(0.0, 1.0 - out["scan_step_a"] / out["probe_diameter_a"])
    if "object" in group:
        out["object_extent_a"] = [s * dx for s in group["object"].shape[-2:]] if dx else None
    if "history/loss" in group and group["history/loss"].shape[0]:
        out["final_loss"] = float(group["history/loss"][-1])
    return out


def energy_diameter_px(intensity: np.ndarray, fraction: float = 0.9) -> float:
    """Diameter of the centred circle holding ``fraction`` of the (mode-summed) intensity."""
    img = intensity.reshape(-1, *intensity.shape[-2:]).sum(axis=0)
    h, w = img.shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx = (img * yy).sum() / img.sum(), (img * xx).sum() / img.sum()
    r = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(r)
    cum = np.cumsum(img.ravel()[order]) / img.sum()
    return 2.0 * float(r[order][np.searchsorted(cum, fraction)])


def median_step_px(pos: np.ndarray, max_points: int = 2000) -> float | None:
    """Median nearest-neighbour distance of (a sample of) the scan positions."""
    if len(pos) < 2:
        return None
    pos = pos[:: max(1, len(pos) // max_points)]
    d = np.hypot(pos[:, None, 0] - pos[None, :, 0], pos[:, None, 1] - pos[None, :, 1])
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(axis=1)))


# ----------------------------------------------------------------------------- raw files
def inspect_raw(path: Path, dataset: str | None = None) -> dict[str, Any]:
    """Shape and dtype of any readable file, plus pattern statistics where they mean something.

    A file with no frames, or with nothing finite in the sampled frames, is an InputError:
    no statistic can be made from it and no stage could use it.
    """
    from ..readers import open_raw  # noqa: PLC0415

    with open_raw(path, dataset=dataset) as src:
        doc: dict[str, Any] = {"path": str(path), "kind": "raw", **src.describe()}
        doc.setdefault("shape", [*(src.scan_shape or (src.n_frames,)), *src.frame_shape])
        if src.n_frames == 0 or 0 in src.frame_shape:
            raise InputError(f"{path}: holds no data (shape {tuple(doc['shape'])}); nothing to inspect")
        idx = np.unique(np.linspace(0, src.n_frames - 1, min(src.n_frames, RAW_SAMPLE_FRAMES)).astype(int))
        is_complex = np.dtype(src.dtype).kind == "c"
        total = np.zeros(src.frame_shape, dtype=np.float64)
        count = np.zeros(src.frame_shape, dtype=np.int64)
        for i in idx:
            frame = src.read(int(i), int(i) + 1)[0]
            ok = np.isfinite(frame)
            count += ok
            if not is_complex:
                total += np.where(ok, np.asarray(frame, dtype=np.float64), 0.0)
    if not count.any():
        raise InputError(f"{path}: every value of the {len(idx)} sampled frames is NaN or infinite")
    has_nonfinite = bool((count < len(idx)).any())
    if is_complex:  # patterns are real intensities: a mean pattern or BF disk of complex values means nothing
        doc["derived"] = {"sampled_frames": int(len(idx)), "values": "complex", "has_nonfinite": has_nonfinite}
        return doc
    # mean over each pixel's finite samples: one NaN frame must not blank the whole pattern
    finite = count > 0
    mean = np.where(finite, total / np.maximum(count, 1), 0.0)
    doc["derived"] = {"sampled_frames": int(len(idx)), "counts_per_frame": float(mean[finite].sum()),
                      "has_nonfinite": has_nonfinite, "min_of_mean": float(mean[finite].min())}
    with np.errstate(all="ignore"):
        doc["derived"].update(bf_quantities(mean, Calibration()))
    return doc


# ----------------------------------------------------------------------------- --get
def get_value(doc: dict[str, Any], key: str) -> Any:
    """A dotted path into the document: ``calibration.energy_kev``, ``arrays.patterns.shape.0``."""
    node: Any = doc
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            if isinstance(node, dict):
                keys = ", ".join(sorted(node))
            else:
                keys = f"{len(node)} items" if isinstance(node, list) else "a value"
            raise UsageError(f"--get {key}: no {part!r} here (available: {keys})")
    return node


def format_value(value: Any) -> str:
    """One bare value for shell scripts: strings as-is, numbers in full, the rest as JSON."""
    import json  # noqa: PLC0415

    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return json.dumps(value)
