"""File writers of ``ptycli export``: calibrated TIFF, PNG, NPY, HDF5 and CSV.

Every writer writes to a temporary name beside the target and renames it when complete,
so an existing file is never half-replaced and a killed export leaves no partial file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..errors import UsageError
from ..store.io import check_output

FORMATS = {".tif": "tif", ".tiff": "tif", ".png": "png", ".npy": "npy", ".h5": "h5",
           ".hdf5": "h5", ".csv": "csv"}


@dataclass
class Payload:
    """What to write: an image/stack, a table, or a block of patterns, with calibration."""

    name: str  # dataset name (h5) / description
    data: Any  # numpy array, or a zarr array for patterns (read in chunks)
    kind: str = "image"  # image | table | patterns
    pixel: float | None = None  # pixel size in ``unit``
    unit: str = "Angstrom"
    value_unit: str = ""  # unit of the pixel values (ImageJ ``vunit``): "radian", "count", ...
    stack_axis: str | None = None  # "slice" | "mode" | "pattern" for 3D images, "mode,slice" for 4D
    spacing: float | None = None  # distance between stack planes (slices) [Å]
    columns: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)


def format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        key = fmt.lower().lstrip(".")
        if key in ("tif", "tiff", "png", "npy", "h5", "hdf5", "csv"):
            return {"tiff": "tif", "hdf5": "h5"}.get(key, key)
        raise UsageError(f"--format {fmt!r}: expected tif, png, npy, h5 or csv")
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise UsageError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                         "use .tif .png .npy .h5 .hdf5 .csv or --format") from None


def write_atomic(path: Path, overwrite: bool, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(tmp)`` then rename tmp to ``path``; refuse an existing path without overwrite."""
    path = check_output(path, overwrite=overwrite, kind="file")
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        fill(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------- TIFF
def to_bit_depth(data: np.ndarray, bits: int) -> tuple[np.ndarray, float, float]:
    """Scale real data to 8/16-bit integers over [min, max] (32: float32 unchanged).

    Returns (array, value_min, value_max) so value = min + pixel * (max - min) / (2^bits - 1).
    """
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    if bits == 32:
        return data.astype(np.float32), lo, hi
    if bits not in (8, 16):
        raise UsageError(f"--bit-depth {bits}: expected 8, 16 or 32")
    top = 2**bits - 1
    span = hi - lo if hi > lo else 1.0
    # in float64: float32 arithmetic (NumPy 2 keeps float32 - float as float32) rounds some
    # pixels past the half quantisation step
    scaled = np.rint((np.nan_to_num(np.asarray(data, np.float64), nan=lo) - lo) / span * top)
    return scaled.astype(np.uint8 if bits == 8 else np.uint16), lo, hi


def write_tif(path: Path, p: Payload, bits: int = 32) -> None:
    """ImageJ hyperstack TIFF: pixel size as resolution + unit, planes as Z with spacing."""
    import tifffile  # noqa: PLC0415

    data = np.asarray(p.data)
    if np.iscomplexobj(data):
        raise UsageError(f"{p.name} is complex; TIFF holds real images (use .npy or .h5, or "
                         "--what object-phase / object-amplitude)")
    arr, lo, hi = to_bit_depth(data, bits)
    axes = {2: "YX", 3: "ZYX", 4: "ZCYX"}[arr.ndim]
    if arr.ndim == 4:  # (mode, slice, y, x): ImageJ orders a hyperstack Z before C
        arr = np.ascontiguousarray(arr.transpose(1, 0, 2, 3))
    # ImageJ's min/max are the display range in stored units (raw integers for 8/16-bit)
    meta: dict[str, Any] = {"axes": axes,
                            "min": float(arr.min()), "max": float(arr.max()),
                            "ptycli_what": p.name, "ptycli_version": __version__}
    if bits != 32:
        meta.update(value_min=lo, value_max=hi, value_bits=bits)
        # ImageJ's own value calibration (FileInfo: cf 0 = straight line, value = c0 + c1·pixel),
        # so Fiji shows and measures the values themselves, not raw 0-65535
        meta.update(cf=0, c0=lo, c1=(hi - lo) / (2**bits - 1) if hi > lo else 1.0)
    if p.value_unit:
        meta["vunit"] = p.value_unit
    kwargs: dict[str, Any] = {}
    if p.pixel:
        meta["unit"] = p.unit
        kwargs["resolution"] = (1.0 / p.pixel, 1.0 / p.pixel)
    if p.spacing:
        meta["spacing"] = float(p.spacing)
    tifffile.imwrite(path, arr, imagej=True, metadata=meta, **kwargs)


# ----------------------------------------------------------------------------- PNG
def montage(stack: np.ndarray, gap: int = 2) -> np.ndarray:
    """Planes (N, H, W) tiled on a near-square grid with NaN gaps (drawn as the background)."""
    n, h, w = stack.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float64)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = stack[i]
    return out


def nice_length(target: float) -> float:
    """1, 2 or 5 times a power of ten, at most ``target``."""
    exp = np.floor(np.log10(target))
    for m in (5, 2, 1):
        if m * 10**exp <= target:
            return float(m * 10**exp)
    return float(10**exp)


def write_png(path: Path, p: Payload, cmap: str = "gray", scale_bar: bool = True, colorbar: bool = True) -> None:
    """8-bit colour-mapped image at one screen pixel per data pixel (small images enlarged
    by a whole factor), with a scale bar in Å when the pixel size is known and a colour bar
    in the values' unit in a strip on the right."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    data = np.asarray(p.data)
    if np.iscomplexobj(data):
        raise UsageError(f"{p.name} is complex; PNG holds real images (use .npy or .h5)")
    img = montage(data.reshape(-1, *data.shape[-2:])) if data.ndim > 2 else data.astype(np.float64)
    zoom = max(1, int(np.ceil(256 / min(img.shape))))
    img = np.kron(img, np.ones((zoom, zoom)))
    h, w = img.shape
    strip = COLORBAR_STRIP_PX if colorbar else 0
    dpi = 100
    fig = Figure(figsize=((w + strip) / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, w / (w + strip), 1))
    ax.set_axis_off()
    finite = img[np.isfinite(img)]
    im = ax.imshow(img, cmap=cmap, interpolation="nearest", vmin=finite.min(), vmax=finite.max())
    if scale_bar and p.pixel and p.unit == "Angstrom":
        _scale_bar(ax, w, h, p.pixel / zoom, Rectangle)
    if strip:
        cax = fig.add_axes(((w + 8) / (w + strip), 0.08, 12 / (w + strip), 0.84))
        bar = fig.colorbar(im, cax=cax)
        bar.ax.tick_params(labelsize=7)
        unit = {"radian": "rad"}.get(p.value_unit, p.value_unit)
        bar.set_label(p.name.replace("_", " ") + (f" [{unit}]" if unit else ""), fontsize=8)
    fig.savefig(path, dpi=dpi, format="png", metadata={"Description": f"ptycli {p.name}"})


COLORBAR_STRIP_PX = 90  # room for the colour bar, its tick labels and its label


def _scale_bar(ax: Any, w: int, h: int, px_a: float, rectangle: Any) -> None:
    length_a = nice_length(0.25 * w * px_a)
    length_px = length_a / px_a
    x0, y0 = 0.05 * w, 0.92 * h
    bar_h = max(2.0, 0.015 * h)
    ax.add_patch(rectangle((x0, y0), length_px, bar_h, facecolor="white", edgecolor="black", lw=0.8))
    label = f"{length_a:g} Å" if length_a >= 1 else f"{length_a * 100:g} pm"
    ax.text(x0 + length_px / 2, y0 - 0.01 * h, label, color="white", ha="center", va="bottom",
            fontsize=max(7, min(14, h / 30)), fontweight="bold")


# ----------------------------------------------------------------------------- NPY / HDF5 / CSV
def write_npy(path: Path, p: Payload) -> None:
    src = p.data
    if isinstance(src, np.ndarray):
        with open(path, "wb") as fh:
            np.save(fh, src)
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=src.dtype, shape=src.shape)
    for sl in _chunks(src):
        out[sl] = src[sl]
    out.flush()
    del out


def write_h5(path: Path, p: Payload) -> None:
    import h5py  # noqa: PLC0415

    with h5py.File(path, "w") as fh:
        src = p.data
        ds = fh.create_dataset(p.name, shape=src.shape, dtype=src.dtype,
                               chunks=_h5_chunks(src.shape), compression="gzip", compression_opts=4)
        for sl in _chunks(src):
            ds[sl] = np.asarray(src[sl])
        if p.pixel:
            ds.attrs["pixel_size"] = p.pixel
            ds.attrs["pixel_unit"] = p.unit
        if p.value_unit:
            ds.attrs["value_unit"] = p.value_unit
        if p.stack_axis:
            ds.attrs["stack_axis"] = p.stack_axis
        if p.columns:
            ds.attrs["columns"] = p.columns
        for key, value in {**p.attrs, "ptycli_version": __version__}.items():
            if value is not None:
                fh.attrs[key] = value


def _h5_chunks(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    if len(shape) < 3:
        return None
    return (1,) * (len(shape) - 2) + tuple(shape[-2:])


def _chunks(src: Any) -> list[tuple[slice, ...]]:
    """Slabs along the leading axes, about 64 MB each, so big pattern sets stream."""
    shape = src.shape
    if len(shape) < 3:
        return [tuple(slice(None) for _ in shape)]
    per = int(np.prod(shape[1:])) * np.dtype(src.dtype).itemsize
    step = max(1, (64 * 2**20) // max(per, 1))
    return [(slice(i, min(i + step, shape[0])),) for i in range(0, shape[0], step)]


def write_csv(path: Path, p: Payload) -> None:
    data = np.asarray(p.data, dtype=np.float64)
    np.savetxt(path, data, delimiter=",", header=",".join(p.columns), comments="", fmt="%.9g")
