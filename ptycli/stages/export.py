"""``ptycli export``: a store's arrays as calibrated files for Fiji and other codes.

Selection (what, slices, crop) and display processing (unwrap, ramp, normalise) happen
here; the writers are in exportio.py. Data stores export their patterns, also in the
input layouts of PyPty (HDF5 ``data`` (N, ky, kx)) and PtyRAD (4D (Ny, Nx, ky, kx)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..engines.signals import StopOnSignals
from ..errors import InputError, StoreError, UsageError
from ..store.coords import slice_depths
from ..store.io import check_output
from ..store.state import State, load_state
from . import exportio
from .exportio import Payload
from .phasetools import fit_ramp, illumination, unwrap_phase
from .viewdata import calibration_of, history_of, open_any, parse_crop, parse_slices, scan_shape_of

WHATS = ("object-phase", "object-amplitude", "object-complex", "probe", "probe-fourier",
         "positions", "tilts", "loss", "background", "beam-current", "aberrations", "thickness",
         "detector-blur", "patterns")
STATE_WHATS = WHATS[:-1]
TABLES = ("positions", "tilts", "loss", "beam-current", "aberrations", "thickness", "detector-blur")
VALUE_UNITS = {"object-phase": "radian", "probe": "sqrt(count)", "probe-fourier": "sqrt(count)",
               "background": "count", "patterns": "count"}  # ImageJ's value unit of each image


class ExportOptions(BaseModel):
    """Options of ``ptycli export`` (names = flag names with dashes)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    what: Literal["object-phase", "object-amplitude", "object-complex", "probe", "probe-fourier",
                  "positions", "tilts", "loss", "background", "beam-current", "aberrations", "thickness",
                  "detector-blur", "patterns"] = "object-phase"
    format: str | None = Field(None, description="tif|png|npy|h5|csv; default from the suffix.")
    slices: str | None = Field(None, description="sum|all|i:j (slices, or probe modes); "
                               "default sum for the object, all for the probe.")
    crop: str = Field("scanned", description="scanned|full|y0:y1,x0:x1 in object pixels.")
    object_modes: str = Field("0", description="Object modes: N, i:j or all (a stack along a mode axis).")
    unwrap: bool = Field(False, description="2D-unwrap each phase slice before summing.")
    remove_ramp: bool = Field(False, description="Subtract the illumination-weighted phase plane.")
    normalize: bool = Field(False, description="Real data to [0, 1]; complex divided by max |.|.")
    bit_depth: Literal[8, 16, 32] = Field(32, description="TIFF sample: 8/16-bit scaled or 32-bit float.")
    layout: Literal["pypty", "ptyrad"] | None = Field(None, description="Pattern layout of another code.")
    cmap: str = Field("gray", description="PNG colormap (matplotlib name).")
    overwrite: bool = False


@StopOnSignals("export")
def export(store_path: str | Path, out_path: str | Path, options: ExportOptions | None = None,
           **kwargs: Any) -> Path:
    """Write one array of the store at ``store_path`` to ``out_path``; returns the path."""
    opts = options or ExportOptions(**kwargs)
    out = Path(out_path)
    fmt = exportio.format_of(out, opts.format)
    check_flags(opts, fmt)
    check_output(out, overwrite=opts.overwrite, inputs=[store_path], kind="file")
    group, kind = open_any(store_path)
    payload = _payload(group, kind, opts, fmt, store_path)
    payload.attrs.setdefault("source_store", str(store_path))
    return exportio.write_atomic(out, opts.overwrite, lambda tmp: _write(tmp, fmt, payload, opts))


def check_flags(opts: ExportOptions, fmt: str) -> None:
    """Refuse a flag the chosen output would ignore, before any store is read: a silently
    dropped --bit-depth or --layout leaves a file that is not what was asked for."""
    if opts.crop not in ("scanned", "full") and not opts.what.startswith("object"):
        # a window of object pixels: a probe or the patterns have no object grid to cut
        raise UsageError(f"--crop {opts.crop} applies to the object (--what object-*), not --what {opts.what}")
    if opts.object_modes != "0" and not opts.what.startswith("object"):
        raise UsageError(f"--object-modes {opts.object_modes} applies to the object (--what object-*), "
                         f"not --what {opts.what}")
    if opts.layout and opts.what != "patterns":
        raise UsageError(f"--layout {opts.layout} applies to --what patterns (a data store), "
                         f"not --what {opts.what}")
    if opts.bit_depth != 32 and fmt != "tif" and not (fmt == "png" and opts.bit_depth == 8):
        detail = "PNG is 8-bit colour-mapped" if fmt == "png" else f".{fmt} keeps the values' own dtype"
        raise UsageError(f"--bit-depth {opts.bit_depth} applies to TIFF only ({detail}); write .tif for "
                         f"{opts.bit_depth}-bit integers")
    if opts.cmap != "gray":  # the default: no matplotlib import just to check it
        if fmt != "png":
            raise UsageError(f"--cmap {opts.cmap} applies to PNG only (.{fmt} stores values, not colours)")
        check_cmap(opts.cmap)


def check_cmap(name: str) -> None:
    """A matplotlib colormap name, else a UsageError naming a few (or the closest) valid ones."""
    import difflib  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415

    if name in matplotlib.colormaps:
        return
    close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=3, cutoff=0.75)
    guess = f"; did you mean {', '.join(close)}?" if close else ""
    raise UsageError(f"--cmap {name!r}: not a matplotlib colormap{guess} (e.g. gray, viridis, inferno, magma, "
                     "cividis, twilight)")


def _write(tmp: Path, fmt: str, p: Payload, opts: ExportOptions) -> None:
    if p.kind == "table" and fmt not in ("csv", "npy", "h5"):
        raise UsageError(f"--what {opts.what} is a table; write it as .csv, .npy or .h5")
    if p.kind != "table" and fmt == "csv":
        raise UsageError(f"--what {opts.what} is an image; .csv holds the tables ({', '.join(TABLES)})")
    if fmt == "tif":
        exportio.write_tif(tmp, p, opts.bit_depth)
    elif fmt == "png":
        exportio.write_png(tmp, p, opts.cmap)
    elif fmt == "npy":
        exportio.write_npy(tmp, p)
    elif fmt == "h5":
        exportio.write_h5(tmp, p)
    else:
        exportio.write_csv(tmp, p)


def _payload(group: Any, kind: str, opts: ExportOptions, fmt: str, path: Any) -> Payload:
    if kind == "data":
        if opts.what != "patterns":
            raise StoreError(f"{path}: is a data store; it exports --what patterns only")
        return _patterns(group, opts, fmt, path)
    if opts.what == "patterns":
        raise StoreError(f"{path}: is a state store; --what patterns needs a data store")
    state = load_state(group)
    if opts.what.startswith("object"):
        p = _object(state, opts)
    elif opts.what.startswith("probe"):
        p = _probe(state, opts, fmt)
    elif opts.what == "background":
        p = _background(state, path)
    else:
        p = _table(state, group, opts.what, path)
    p.attrs.update(energy_kev=state.energy_kev, dx_a=state.dx_a, what=opts.what)
    p.value_unit = VALUE_UNITS.get(opts.what, "")
    return p


# ----------------------------------------------------------------------------- object
def _object(state: State, opts: ExportOptions) -> Payload:
    y0, y1, x0, x1 = parse_crop(opts.crop, state)
    objects = np.asarray(state.object)
    modes = parse_object_modes(opts.object_modes, objects.shape[0])  # default 0: the dominant mode
    mode, sel = parse_slices(opts.slices or "sum", objects.shape[1])
    weights = None
    if opts.remove_ramp:
        weights = illumination(state.probe, state.positions, objects.shape[-2:])[y0:y1, x0:x1]
    planes = [_object_values(objects[q][sel, y0:y1, x0:x1], opts, weights, mode) for q in modes]
    data = planes[0] if len(planes) == 1 else np.stack(planes)  # (modes, [slices,] y, x)
    thickness = _slice_spacing(state, sel) if mode == "all" else None
    if opts.normalize:
        data = _normalize(data)
    axes = (["mode"] if len(modes) > 1 else []) + (["slice"] if mode == "all" else [])  # data's leading axes
    return Payload(name=opts.what.replace("-", "_"), data=data, pixel=state.dx_a,
                   stack_axis=",".join(axes) or None, spacing=thickness,
                   attrs={"crop_px": [y0, y1, x0, x1], "slices": opts.slices or "sum", "object_modes": modes})


def parse_object_modes(spec: str, n: int) -> list[int]:
    """``N`` | ``i:j`` | ``all`` -> object mode indices (of ``n``)."""
    if spec == "all":
        return list(range(n))
    try:
        parts = [int(v) if v else None for v in spec.split(":")]
    except ValueError:
        raise UsageError(f"--object-modes {spec!r}: expected N, i:j or all") from None
    if len(parts) == 1:
        if not -n <= parts[0] < n:  # type: ignore[operator]
            raise InputError(f"--object-modes {spec}: the store has {n} object mode(s) (0..{n - 1})")
        return [parts[0] % n]  # type: ignore[operator]
    if len(parts) != 2:
        raise UsageError(f"--object-modes {spec!r}: expected N, i:j or all")
    picked = list(range(n))[slice(*parts)]
    if not picked:
        raise InputError(f"--object-modes {spec!r}: selects none of the store's {n} object mode(s)")
    return picked


def _object_values(stack: np.ndarray, opts: ExportOptions, weights: Any, mode: str) -> np.ndarray:
    if opts.what == "object-amplitude":
        amp = np.abs(stack)
        return amp.prod(axis=0) if mode == "sum" else amp  # projected amplitude = product
    phase = np.angle(stack).astype(np.float64)
    if opts.unwrap:
        phase = np.stack([unwrap_phase(s) for s in phase])
    if mode == "sum":
        phase = phase.sum(axis=0, keepdims=True)
    if opts.remove_ramp:
        phase = np.stack([s - fit_ramp(s, weights) for s in phase])
    if opts.what == "object-phase":
        out = phase[0] if mode == "sum" else phase
        return out.astype(np.float32)
    amp = np.abs(stack).prod(axis=0, keepdims=True) if mode == "sum" else np.abs(stack)
    out = (amp * np.exp(1j * phase)).astype(np.complex64)
    return out[0] if mode == "sum" else out


def _slice_spacing(state: State, sel: slice) -> float | None:
    if state.slice_thickness is None:
        return None
    t = np.asarray(state.slice_thickness, dtype=np.float64)[sel]
    return float(t.mean()) if t.size else None


def _normalize(data: np.ndarray) -> np.ndarray:
    if np.iscomplexobj(data):
        top = float(np.abs(data).max())
        return data / top if top > 0 else data
    lo, hi = float(data.min()), float(data.max())
    return ((data - lo) / (hi - lo)).astype(data.dtype) if hi > lo else np.zeros_like(data)


# ----------------------------------------------------------------------------- probe
def _probe(state: State, opts: ExportOptions, fmt: str) -> Payload:
    probe = np.asarray(state.probe)
    mode, sel = parse_slices(opts.slices or "all", probe.shape[0])
    probe = probe[sel]
    m = probe.shape[-1]
    pixel, unit = state.dx_a, "Angstrom"
    if opts.what == "probe-fourier":
        # ψ(k) = F[ifftshift(P)] (the probe is stored centred, physics.md §3.4), unitary,
        # with DC moved to the centre as for every displayed spectrum (§1.4)
        centred = np.fft.ifftshift(probe, axes=(-2, -1))
        probe = np.fft.fftshift(np.fft.fft2(centred, norm="ortho"), axes=(-2, -1))
        pixel, unit = 1.0 / (m * state.dx_a), "1/Angstrom"
    real_only = fmt in ("tif", "png")
    if mode == "sum":  # incoherent total: sqrt(Σ_p |P_p|²)
        data = np.sqrt(np.sum(np.abs(probe) ** 2, axis=0)).astype(np.float32)
    else:
        data = np.abs(probe).astype(np.float32) if real_only else probe.astype(np.complex64)
    if opts.normalize:
        data = _normalize(data)
    powers = np.sum(np.abs(np.asarray(state.probe)) ** 2, axis=(-2, -1))
    return Payload(name=opts.what.replace("-", "_"), data=data, pixel=pixel, unit=unit,
                   stack_axis="mode" if data.ndim == 3 else None,
                   attrs={"mode_powers": (powers / powers.sum()).tolist(),
                          "values": "amplitude" if real_only or mode == "sum" else "complex"})


# ----------------------------------------------------------------------------- background
def _background(state: State, path: Any) -> Payload:
    if state.background is None:
        raise StoreError(f"{path}: has no 'background' array (the background was not refined)")
    # in memory the background has the engines' FFT layout; files show it as the patterns are, DC-centred
    data = np.fft.fftshift(np.asarray(state.background, dtype=np.float32))
    return Payload(name="background", data=data, pixel=1.0 / (data.shape[-1] * state.dx_a), unit="1/Angstrom",
                   attrs={"dc_centred": True})


# ----------------------------------------------------------------------------- tables
def _table(state: State, group: Any, what: str, path: Any) -> Payload:
    if what == "positions":
        return _positions_table(state)
    if what == "tilts":
        return _tilts_table(state, path)
    if what in ("beam-current", "aberrations", "thickness", "detector-blur"):
        return _variable_table(state, what, path)
    hist = history_of(group)
    if "loss" not in hist or hist["loss"].size == 0:
        raise StoreError(f"{path}: has no history/loss (not made by reconstruct)")
    n = hist["loss"].size
    cols = [np.arange(1, n + 1), hist.get("stage", np.zeros(n)), hist["loss"], hist.get("time_s", np.full(n, np.nan))]
    return Payload(name="loss", data=np.column_stack(cols), kind="table",
                   columns=["iteration", "stage", "loss", "time_s"])


def _tilts_table(state: State, path: Any) -> Payload:
    """Tilts inside the specimen, and PyPty's before/after tilts when the store has them [mrad]."""
    named = {"": state.tilts, "_before": state.tilts_before, "_after": state.tilts_after}
    present = {k: np.asarray(v, np.float64) for k, v in named.items() if v is not None}
    if not present:
        raise StoreError(f"{path}: has no 'tilts' array (tilts were not refined)")
    n = len(next(iter(present.values())))
    cols, names = [np.arange(n)], ["index"]
    for suffix, t in present.items():
        cols.append(t)
        names += [f"ty{suffix}_mrad", f"tx{suffix}_mrad"]
    return Payload(name="tilts", data=np.column_stack(cols), kind="table", columns=names)


def _variable_table(state: State, what: str, path: Any) -> Payload:
    """beam-current (index, relative current), thickness (slice, Δz, entrance depth z [Å]),
    detector-blur (the refined PSF's σ in detector pixels; 0 when never refined) or aberrations
    (one row for the shared probe, subscan -1, and one per sub-scan's own change)."""
    if what == "detector-blur":
        return Payload(name="detector_blur", data=np.asarray([[float(state.detector_blur_px)]]), kind="table",
                       columns=["sigma_px"])
    if what == "beam-current":
        if state.beam_current is None:
            raise StoreError(f"{path}: has no 'beam_current' array (the beam current was not refined)")
        b = np.asarray(state.beam_current, np.float64)
        return Payload(name="beam_current", data=np.column_stack([np.arange(b.size), b]), kind="table",
                       columns=["index", "beam_current"])
    if what == "thickness":
        if state.slice_thickness is None:
            raise StoreError(f"{path}: has no 'slice_thickness' array")
        t = np.asarray(state.slice_thickness, np.float64)
        return Payload(name="thickness", data=np.column_stack([np.arange(t.size), t, slice_depths(t)]), kind="table",
                       columns=["slice", "thickness_a", "z_a"])
    rows = [dict(state.aberrations), *[dict(d) for d in state.subscan_aberrations]]
    keys = sorted({k for r in rows for k in r})
    if not keys:
        raise StoreError(f"{path}: has no aberrations (none were given or refined)")
    data = [[-1 + i, *(float(r.get(k, np.nan)) for k in keys)] for i, r in enumerate(rows)]
    return Payload(name="aberrations", data=np.asarray(data, np.float64), kind="table", columns=["subscan", *keys],
                   attrs={"units": "C_nm in angstrom, phi_nm in radian (Krivanek)"})


def _positions_table(state: State) -> Payload:
    pos = np.asarray(state.positions, dtype=np.float64)
    origin = np.asarray(state.origin_px, dtype=np.float64)
    cols = [np.arange(len(pos)), pos, (pos - origin) * state.dx_a]
    names = ["index", "y_px", "x_px", "y_a", "x_a"]
    if state.positions_initial is not None:
        cols.append((np.asarray(state.positions_initial, np.float64) - origin) * state.dx_a)
        names += ["y0_a", "x0_a"]
    return Payload(name="positions", data=np.column_stack(cols), kind="table", columns=names)


# ----------------------------------------------------------------------------- patterns
def _patterns(group: Any, opts: ExportOptions, fmt: str, path: Any) -> Payload:
    if "patterns" not in group:
        raise StoreError(f"{path}: data store has no 'patterns' array")
    arr = group["patterns"]
    cal = calibration_of(group)
    attrs = {k: v for k, v in cal.to_attrs().items() if v is not None and not isinstance(v, dict)}
    attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}
    attrs["dc_centred"] = True
    name, data = "patterns", arr
    if opts.layout == "pypty":
        if fmt != "h5":
            raise UsageError("--layout pypty writes an HDF5 file (.h5) with dataset 'data'")
        name = "data"
    elif opts.layout == "ptyrad":
        if fmt not in ("h5", "npy"):
            raise UsageError("--layout ptyrad writes .hdf5/.h5 (dataset 'dp') or .npy, 4D")
        shape = scan_shape_of(group, arr.shape[0])
        if shape is None:
            raise StoreError(f"{path}: no scan_shape to make the 4D (Ny, Nx, ky, kx) PtyRAD layout")
        name, data = "dp", _Reshaped(arr, (*shape, *arr.shape[1:]))
    elif fmt in ("tif", "png"):
        data = np.asarray(arr[...], dtype=np.float32)
    pixel = cal.pixel_inv_a
    return Payload(name=name, data=data, kind="patterns", pixel=pixel, unit="1/Angstrom",
                   stack_axis="pattern", attrs=attrs)


class _Reshaped:
    """A (J, M, M) zarr array seen as (Ny, Nx, M, M), read in row slabs (no full load)."""

    def __init__(self, arr: Any, shape: tuple[int, ...]):
        self.arr, self.shape, self.dtype = arr, shape, arr.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = key[0] if isinstance(key, tuple) else key
        lo, hi, _ = rows.indices(self.shape[0])
        nx = self.shape[1]
        return np.asarray(self.arr[lo * nx:hi * nx]).reshape(hi - lo, *self.shape[1:])
