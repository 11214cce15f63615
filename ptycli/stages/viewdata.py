"""Shared read-side helpers of export, compare, figures, preview and watch.

They open a store (complete, or a running reconstruction's partial store and its
checkpoint), and turn its arrays into the 2D images people look at: the depth-summed
object phase, the scanned region, the mean diffraction pattern. Read-only throughout.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import InputError, StoreError, UsageError
from ..store.calibration import Calibration, load_calibration
from ..store.io import find_checkpoint, open_store, partial_path, read_meta
from ..store.state import State, load_state

MAX_PACBED_FRAMES = 512  # a PACBED from an evenly spaced subset is indistinguishable and cheap


# ----------------------------------------------------------------------------- opening
def open_any(path: str | Path, *, allow_partial: bool = False) -> tuple[zarr.Group, str]:
    """Open a complete store read-only; return (group, kind)."""
    group = open_store(path, allow_partial=allow_partial)
    return group, read_meta(group, path).kind


def running_store(out_path: str | Path) -> Path | None:
    """The store to follow for OUT: OUT.partial while a run writes it, else OUT, else None.

    OUT.partial wins over a complete OUT when it is at least as new: an `--overwrite` or
    resumed run replaces OUT only when it completes, and until then the work in progress is
    in the partial; an older partial beside OUT is a crashed writer's leftover.
    """
    out = Path(out_path)
    part = partial_path(out)
    if (part / "zarr.json").exists() and (not out.exists() or _mtime(part) >= _mtime(out)):
        return part
    if out.exists():
        return out
    return part if part.exists() else None


def _mtime(path: Path) -> float:
    """Newest modification time of a store's root metadata or its checkpoint (what a run rewrites)."""
    ckpt = find_checkpoint(path)
    files = [path / "zarr.json", *([ckpt / "zarr.json"] if ckpt is not None else [])]
    return max((q.stat().st_mtime for q in files if q.exists()), default=path.stat().st_mtime)


def checkpoint_group(group: zarr.Group) -> zarr.Group | None:
    """The newest complete checkpoint subgroup (``checkpoint``, or ``checkpoint.old`` mid-swap)."""
    for name in ("checkpoint", "checkpoint.old"):
        try:
            sub = group[name]
        except KeyError:
            continue
        if isinstance(sub, zarr.Group) and "object" in sub and "state" in sub.attrs:
            return sub
    return None


def state_of(group: zarr.Group) -> State:
    """The state in a store: its own arrays, or (for a running job) its last checkpoint."""
    if "object" in group and "state" in group.attrs:
        return load_state(group)
    ckpt = checkpoint_group(group)
    if ckpt is None:
        raise StoreError(f"{_name(group)}: holds no state yet (no 'object' array and no checkpoint)")
    return load_state(ckpt)


def load_state_store(path: str | Path) -> State:
    group, kind = open_any(path)
    if kind != "state":
        raise StoreError(f"{path}: is a {kind} store; expected a state store")
    return load_state(group)


def history_of(group: zarr.Group) -> dict[str, Any]:
    """loss/stage/time_s (numpy, possibly absent) and ``attrs`` (stages, timings, ...).

    A finished store has ``history/`` arrays; a running one keeps its history as the
    ``history`` attribute of its checkpoint (lists), and its recipe at the root.
    """
    keys = ("loss", "stage", "time_s")
    if "history" in group and isinstance(group["history"], zarr.Group):
        h = group["history"]
        out: dict[str, Any] = {k: np.asarray(h[k][...]) for k in keys if k in h}
        out["attrs"] = dict(h.attrs.get("history", {}))
        return out
    ckpt = checkpoint_group(group)
    raw = ckpt.attrs.get("history") if ckpt is not None else None
    out = {k: np.asarray(raw.get(k, [])) for k in keys} if isinstance(raw, dict) else {}
    recipe = group.attrs.get("recipe")
    stages = recipe.get("stage", []) if isinstance(recipe, dict) else []
    out["attrs"] = {"stages": stages if isinstance(stages, list) else []}
    return out


def stage_label(stages: list[Any], k: int) -> str:
    """Name of stage ``k`` from a history/recipe ``stages`` list (str or {type: ...})."""
    entry = stages[k] if 0 <= k < len(stages) else None
    if isinstance(entry, dict) and entry.get("type"):
        return f"{k}: {entry['type']}"
    return f"{k}: {entry}" if isinstance(entry, str) else f"stage {k}"


def total_iterations(stages: list[Any]) -> int | None:
    n = [s.get("iterations") for s in stages if isinstance(s, dict)]
    return int(sum(n)) if n and all(isinstance(v, int) for v in n) else None


def _name(group: zarr.Group) -> str:
    return str(getattr(group.store, "root", group.store))


# ----------------------------------------------------------------------------- object images
def parse_slices(spec: str, n_slices: int) -> tuple[str, slice]:
    """``sum`` | ``all`` | ``i:j`` -> (mode, slice of the slice axis)."""
    if spec in ("sum", "all"):
        return spec, slice(0, n_slices)
    try:
        lo, hi = (int(v) if v else None for v in spec.split(":"))
    except ValueError:  # malformed flag text is a usage error; a range the store lacks is an input one
        raise UsageError(f"--slices {spec!r}: expected sum, all or i:j") from None
    sel = slice(lo, hi)
    if len(range(n_slices)[sel]) == 0:
        raise InputError(f"--slices {spec!r}: selects no slice of {n_slices}")
    return "all", sel


def scanned_box(state: State, margin_px: int = 0) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the probe centres' bounding box, clipped to the object."""
    pos = np.asarray(state.positions, dtype=np.float64)
    h, w = state.object.shape[-2:]
    y0 = max(int(math.floor(pos[:, 0].min())) - margin_px, 0)
    x0 = max(int(math.floor(pos[:, 1].min())) - margin_px, 0)
    y1 = min(int(math.ceil(pos[:, 0].max())) + 1 + margin_px, h)
    x1 = min(int(math.ceil(pos[:, 1].max())) + 1 + margin_px, w)
    if y1 - y0 < 2 or x1 - x0 < 2:
        return 0, h, 0, w
    return y0, y1, x0, x1


def parse_crop(spec: str, state: State) -> tuple[int, int, int, int]:
    """``scanned`` | ``full`` | ``y0:y1,x0:x1`` -> (y0, y1, x0, x1) in object pixels."""
    h, w = state.object.shape[-2:]
    if spec == "scanned":
        return scanned_box(state)
    if spec == "full":
        return 0, h, 0, w
    try:
        ys, xs = spec.split(",")
        (y0, y1), (x0, x1) = ([int(v) for v in s.split(":")] for s in (ys, xs))
    except ValueError:
        raise UsageError(f"--crop {spec!r}: expected scanned, full or y0:y1,x0:x1") from None
    if y0 >= y1 or x0 >= x1:
        raise UsageError(f"--crop {spec!r}: empty or reversed bounds; expected y0 < y1 and x0 < x1")
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise InputError(f"--crop {spec!r}: outside the {h}x{w} object")
    return y0, y1, x0, x1


def phase_sum(obj: Any) -> np.ndarray:
    """Depth-summed phase of object mode 0: Σ_s angle(O_s), the projected phase (H, W)."""
    o = np.asarray(obj)
    return np.angle(o[0]).sum(axis=0).astype(np.float32)


def object_phase_image(state: State, crop: str = "scanned") -> np.ndarray:
    y0, y1, x0, x1 = parse_crop(crop, state)
    return phase_sum(np.asarray(state.object)[..., y0:y1, x0:x1])


# ----------------------------------------------------------------------------- data stores
def calibration_of(group: zarr.Group) -> Calibration:
    try:
        return load_calibration(dict(group.attrs))
    except Exception as exc:
        raise StoreError(f"{_name(group)}: bad 'calibration' attribute: {exc}") from None


def pattern_subset(group: zarr.Group) -> np.ndarray:
    """An evenly spaced subset (<= MAX_PACBED_FRAMES) of the patterns, DC-centred, float32."""
    if "patterns" not in group:
        raise StoreError(f"{_name(group)}: data store has no 'patterns' array")
    arr = group["patterns"]
    step = max(1, arr.shape[0] // MAX_PACBED_FRAMES)
    return np.asarray(arr[::step], dtype=np.float32)


def pacbed(group: zarr.Group) -> np.ndarray:
    """Position-averaged CBED (M, M), DC-centred."""
    return pattern_subset(group).mean(axis=0)


def scan_shape_of(group: zarr.Group, n: int) -> tuple[int, int] | None:
    shape = group.attrs.get("scan_shape") or calibration_of(group).scan_shape
    if shape and int(shape[0]) * int(shape[1]) == n:
        return int(shape[0]), int(shape[1])
    side = int(round(math.sqrt(n)))
    return (side, side) if side * side == n else None


def bf_radius_px(cal: Calibration) -> float | None:
    """Radius of the bright-field disk in detector pixels (α / α_pix)."""
    if cal.semiangle_mrad is None:
        return None
    if cal.dk_mrad is not None:
        return cal.semiangle_mrad / cal.dk_mrad
    if cal.dk_inv_a is not None and cal.energy_kev:
        return cal.semiangle_mrad * 1e-3 / cal.wavelength_a / cal.dk_inv_a
    return None


def dk_mrad_of(cal: Calibration) -> float | None:
    if cal.dk_mrad is not None:
        return cal.dk_mrad
    if cal.dk_inv_a is not None and cal.energy_kev:
        return cal.dk_inv_a * cal.wavelength_a * 1e3
    return None
