"""Starting probe and object from array files other codes write, for ``init``.

``--probe-from`` / ``--object-from`` accept, besides a state store, a complex array in
``FILE.npy``, ``FILE.npz[:key]``, ``FILE.h5[:dataset]`` (also .hdf5/.hdf) or
``FILE.mat[:variable]`` (MATLAB v5 via scipy.io; v7.3 is HDF5, read with h5py, its
column-major arrays transposed back and its ``{real, imag}`` compound made complex).
Without ``:name`` the file must hold exactly one complex array.

Probe: (M, M) or (P, M, M) in real space, centred. Object: (H, W), (S, H, W) or
(Q, S, H, W). An array whose pixel (``--probe-pixel-a`` / ``--object-pixel-a``, else the
dataset's ``dx_a`` / ``pixel_size_a`` attribute, else the data's) differs from the data's
is resampled (cubic, about its centre). The probe is cut or zero-padded to the model
window; the object is centred on the scan and padded with vacuum to hold every window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..physics import scan

ARRAY_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", ".hdf", ".mat")
PIXEL_ATTRS = ("dx_a", "pixel_size_a")


def split_spec(spec: str | Path) -> tuple[Path, str | None]:
    """'FILE.h5:/entry/probe' -> (FILE.h5, '/entry/probe'); 'FILE.npy' -> (FILE.npy, None)."""
    text = str(spec)
    for suffix in ARRAY_SUFFIXES:
        i = text.lower().find(suffix + ":")
        if i > 0:
            return Path(text[: i + len(suffix)]), text[i + len(suffix) + 1 :] or None
    return Path(text), None


def is_array_file(spec: str | Path) -> bool:
    path, _ = split_spec(spec)
    return path.suffix.lower() in ARRAY_SUFFIXES


def load_array(spec: str | Path, flag: str) -> tuple[np.ndarray, float | None]:
    """(complex128 array, pixel size in Å stored with it or None) from ``spec``."""
    path, name = split_spec(spec)
    if not path.is_file():
        raise InputError(f"{path} ({flag}): no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if name:
            raise InputError(f"{path} ({flag}): a .npy file holds one array; drop ':{name}'")
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{path} ({flag}): not a readable .npy array ({exc})") from None
        return _complex(arr, str(path), flag), None
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return _complex(_pick(dict(z.items()), name, path, flag), f"{path}:{name or ''}", flag), None
    if suffix == ".mat" and not _is_hdf5(path):
        return _load_mat5(path, name, flag), None
    return _load_hdf5(path, name, flag, matlab=suffix == ".mat")


def _is_hdf5(path: Path) -> bool:
    import h5py  # noqa: PLC0415

    return bool(h5py.is_hdf5(path))


def _pick(arrays: dict[str, Any], name: str | None, path: Path, flag: str) -> Any:
    if name is not None:
        if name not in arrays:
            raise InputError(f"{path} ({flag}): no array {name!r}; it holds {', '.join(sorted(arrays)) or 'none'}")
        return arrays[name]
    # by dtype only: an HDF5 dataset is not read to be chosen
    complex_ones = [k for k, v in arrays.items()
                    if np.issubdtype(getattr(v, "dtype", np.dtype(float)), np.complexfloating) or _is_compound(v)]
    if len(complex_ones) != 1:
        raise InputError(f"{path} ({flag}): {len(complex_ones)} complex arrays ({', '.join(complex_ones) or 'none'});"
                         f" name one as {path}:NAME")
    return arrays[complex_ones[0]]


def _is_compound(arr: Any) -> bool:
    names = getattr(getattr(arr, "dtype", None), "names", None) or ()
    return {"real", "imag"} <= set(names) or {"r", "i"} <= set(names)


def _complex(arr: Any, where: str, flag: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.names:  # {real, imag} compound (MATLAB v7.3, some HDF5 writers)
        re, im = ("real", "imag") if "real" in arr.dtype.names else ("r", "i")
        arr = arr[re] + 1j * arr[im]
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise InputError(f"{where} ({flag}): dtype {arr.dtype}; expected a complex (or real) numeric array")
    arr = arr.astype(np.complex128)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{where} ({flag}): holds NaN or infinite values")
    return arr


def _load_mat5(path: Path, name: str | None, flag: str) -> np.ndarray:
    from scipy.io import loadmat  # noqa: PLC0415

    try:
        content = loadmat(path)
    except (ValueError, NotImplementedError, TypeError) as exc:
        raise InputError(f"{path} ({flag}): not a readable MATLAB file ({exc})") from None
    arrays = {k: v for k, v in content.items() if not k.startswith("__")}
    return _complex(_pick(arrays, name, path, flag), f"{path}:{name or ''}", flag)


def _load_hdf5(path: Path, name: str | None, flag: str, matlab: bool) -> tuple[np.ndarray, float | None]:
    import h5py  # noqa: PLC0415

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path} ({flag}): not a readable HDF5 file ({exc})") from None
    with f:
        found: dict[str, Any] = {}
        f.visititems(lambda k, v: found.setdefault(k, v) if isinstance(v, h5py.Dataset) and v.ndim >= 2 else None)
        key = name.strip("/") if name else None
        dset = _pick({key: f[key]} if key is not None and key in f else found, key, path, flag)
        if not isinstance(dset, h5py.Dataset):
            raise InputError(f"{path} ({flag}): {name!r} is not a dataset")
        arr = _complex(dset[()], f"{path}:{dset.name}", flag)
        # MATLAB v7.3 writes column-major arrays: h5py sees the dimensions reversed
        if matlab or "MATLAB_class" in dset.attrs:
            arr = arr.transpose()
        pixel = next((float(np.ravel(dset.attrs[a])[0]) for a in PIXEL_ATTRS if a in dset.attrs), None)
        return arr, pixel


def resample(img: np.ndarray, ratio: float, shape: tuple[int, int]) -> np.ndarray:
    """Complex (..., h, w) onto a (..., *shape) grid of pixels ``ratio`` times the old one,
    both centred at pixel (n//2): cubic on real and imaginary parts, zero outside."""
    from scipy.ndimage import map_coordinates  # noqa: PLC0415

    h, w = img.shape[-2:]
    y = (np.arange(shape[0]) - shape[0] // 2) * ratio + h // 2
    x = (np.arange(shape[1]) - shape[1] // 2) * ratio + w // 2
    coords = np.stack(np.meshgrid(y, x, indexing="ij"))
    flat = img.reshape(-1, h, w)
    out = np.empty((len(flat), *shape), dtype=np.complex128)
    for k, plane in enumerate(flat):
        out[k] = (map_coordinates(plane.real, coords, order=3, mode="constant", cval=0.0)
                  + 1j * map_coordinates(plane.imag, coords, order=3, mode="constant", cval=0.0))
    return out.reshape(*img.shape[:-2], *shape)


def _pixel(given: float | None, stored: float | None, data_dx: float, spec: Any, flag: str) -> float:
    dx = given if given is not None else stored if stored is not None else data_dx
    if not (np.isfinite(dx) and dx > 0):
        raise InputError(f"{spec} ({flag}): pixel size {dx!r} Å; expected a number > 0")
    return float(dx)


def probe_from_file(spec: Any, window: tuple[int, int], dx_a: float, pixel_a: float | None) -> np.ndarray:
    """Probe modes (P, M, M) complex on the model window at ``dx_a`` (not yet normalised)."""
    arr, stored = load_array(spec, "--probe-from")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"{spec} (--probe-from): shape {arr.shape}; expected (M, M) or (P, M, M) complex")
    dx_file = _pixel(pixel_a, stored, dx_a, spec, "--probe-from")
    ratio = dx_a / dx_file
    if abs(ratio - 1) < 1e-9 and tuple(arr.shape[-2:]) == tuple(window):
        out = arr
    else:  # other pixel or window: resample / cut / zero-pad about the centre
        out = resample(arr, ratio, window)
    if not np.any(np.abs(out) > 0):
        raise InputError(f"{spec} (--probe-from): no probe intensity left on the {window} window at {dx_a:.4g} Å")
    return out.astype(np.complex64)


def object_from_file(spec: Any, window: tuple[int, int], dx_a: float, pixel_a: float | None,
                     pos_a: np.ndarray, margin_px: int) -> tuple[np.ndarray, tuple[float, float], np.ndarray]:
    """(object (Q, S, H, W), origin, positions px): the array resampled to ``dx_a``, centred
    on the scan, padded with vacuum (1) so every probe window lies inside."""
    arr, stored = load_array(spec, "--object-from")
    while arr.ndim < 4:
        arr = arr[None]
    if arr.ndim != 4:
        raise InputError(f"{spec} (--object-from): shape {arr.shape}; expected (H, W), (S, H, W) or (Q, S, H, W)")
    ratio = dx_a / _pixel(pixel_a, stored, dx_a, spec, "--object-from")
    if abs(ratio - 1) > 1e-9:
        shape = tuple(max(1, int(round(n / ratio))) for n in arr.shape[-2:])
        arr = resample(arr, ratio, shape)  # type: ignore[arg-type]
    origin = scan.origin_px(pos_a, dx_a, window, margin_px)
    pos_px = scan.to_pixels(pos_a, dx_a, origin)
    need = np.asarray(scan.object_shape(pos_px, window, margin_px))
    size = np.asarray(arr.shape[-2:])
    top = np.rint(pos_px.mean(axis=0) - size // 2).astype(int)  # the array's centre on the scan's
    lo = np.minimum(top, 0)
    hi = np.maximum(need, top + size)
    canvas = np.ones((*arr.shape[:2], *(hi - lo)), dtype=np.complex64)
    t = top - lo
    canvas[..., t[0]:t[0] + size[0], t[1]:t[1] + size[1]] = arr
    origin = (float(origin[0] - lo[0]), float(origin[1] - lo[1]))
    return canvas, origin, scan.to_pixels(pos_a, dx_a, origin)
