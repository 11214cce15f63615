"""Coordinate arrays and consolidated metadata (schema 2): stores that xarray reads with axes.

``finish_layout`` runs when a store is finalised. It writes the coordinate arrays of the
dimensions the store's arrays use (Å, 1/Å and mrad, from the calibration or the state's
pixel size), a ``long_name`` beside each standard array's UDUNITS ``units``, and the group
attribute ``coordinates`` that names the non-dimension coordinates, so that
``xr.open_datatree(store, engine="zarr")`` shows physical axes. ``consolidate`` then writes
the consolidated metadata that xarray looks for first. docs/store-format.md §1.1 lists them.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import zarr

from .calibration import Calibration, wavelength_a
from .arrays import write_array
from .schema import LONG_NAMES, ROOT_ATTR

COORDS_ATTR = "coordinates"  # CF: the names of the non-dimension coordinates of a group


def k_axis(n: int, dk_inv_a: float) -> np.ndarray:
    """Spatial frequency [1/Å] of each pixel of a DC-centred axis: DC at index n // 2."""
    return (np.arange(n) - n // 2) * float(dk_inv_a)


def slice_depths(thickness: np.ndarray) -> np.ndarray:
    """Depth [Å] of each slice's entrance plane: 0, t0, t0 + t1, ..."""
    t = np.asarray(thickness, np.float64)
    return np.concatenate([[0.0], np.cumsum(t)[:-1]]) if t.size else t


def finish_layout(group: zarr.Group) -> None:
    """Write the coordinates and long names of a complete store (before its fingerprint)."""
    kind = (group.attrs.get(ROOT_ATTR) or {}).get("kind")
    if kind == "data":
        _data_coords(group)
        truth = group.attrs.get("truth")
        if "truth" in group and isinstance(truth, dict) and truth.get("dx_a"):
            _object_coords(group["truth"], float(truth["dx_a"]), truth.get("origin_px") or (0.0, 0.0), None)
    elif kind == "state":
        _state_coords(group)
    _long_names(group)


def consolidate(path: str | os.PathLike) -> None:
    """Consolidated metadata in the root zarr.json: xarray's default open reads one file and
    no longer warns. Zarr warns that v3 consolidation is not in the spec yet; zarr-python and
    xarray read it, and a reader that ignores it sees the ordinary per-array metadata."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))


# ----------------------------------------------------------------------------- data store
def _data_coords(group: zarr.Group) -> None:
    try:
        cal = Calibration.model_validate(group.attrs.get("calibration") or {})
    except ValueError:
        return  # a store without a valid calibration keeps index axes (the stage checked it)
    dims = _dim_sizes(group)
    extra: list[str] = []
    dk = cal.pixel_inv_a
    if dk is not None:
        lam = cal.wavelength_a if cal.energy_kev else None
        extra += _k_coords(group, dims, dk, lam)
    n = dims.get("position")
    shape = group.attrs.get("scan_shape") or cal.scan_shape
    if n and shape and cal.scan_step_a and int(shape[0]) * int(shape[1]) == n:
        iy, ix = np.divmod(np.arange(n), int(shape[1]))  # j = iy * nx + ix (row-major raster)
        for name, index, step, axis in (("scan_y", iy, cal.scan_step_a[0], "y"),
                                        ("scan_x", ix, cal.scan_step_a[1], "x")):
            _coord(group, name, index * float(step), ("position",), "angstrom",
                   f"nominal scan position {axis} of the raster point (scan frame)")
            extra.append(name)
    _name_coords(group, extra)


def _k_coords(group: zarr.Group, dims: dict[str, int], dk: float, lam: float | None) -> list[str]:
    """ky/kx [1/Å] as dimension coordinates, and ky_mrad/kx_mrad beside them when λ is known."""
    extra = []
    for axis in ("ky", "kx"):
        if axis not in dims:
            continue
        k = k_axis(dims[axis], dk)
        _coord(group, axis, k, (axis,), "1/angstrom", f"detector spatial frequency {axis} (DC-centred)")
        if lam is not None:
            _coord(group, f"{axis}_mrad", k * lam * 1e3, (axis,), "mrad", f"scattering angle along {axis}")
            extra.append(f"{axis}_mrad")
    return extra


# ----------------------------------------------------------------------------- state store
def _state_coords(group: zarr.Group) -> None:
    st = group.attrs.get("state") or {}
    if not st.get("dx_a"):
        return
    dx = float(st["dx_a"])
    thickness = np.asarray(group["slice_thickness"][...], np.float64) if "slice_thickness" in group else None
    extra = _object_coords(group, dx, st.get("origin_px") or (0.0, 0.0), thickness)
    dims = _dim_sizes(group)
    if "kx" in dims:  # the background, on the detector grid: dk = 1/(M_detector dx)
        lam = wavelength_a(float(st["energy_kev"]) * 1e3) if st.get("energy_kev") else None
        extra += _k_coords(group, dims, 1.0 / (dims["kx"] * dx), lam)
    _name_coords(group, extra)


def _object_coords(group: zarr.Group, dx: float, origin: Any, thickness: np.ndarray | None) -> list[str]:
    """y/x [Å] of the object (r = (p - origin)·dx, the positions' own rule), probe_y/probe_x [Å]
    from the window centre, and z [Å] of each slice's entrance plane."""
    dims = _dim_sizes(group)
    for axis, o in (("y", origin[0]), ("x", origin[1])):
        if axis in dims:
            _coord(group, axis, (np.arange(dims[axis]) - float(o)) * dx, (axis,), "angstrom",
                   f"object {axis} (0 at the scan origin)")
    for axis in ("probe_y", "probe_x"):
        if axis in dims:
            _coord(group, axis, k_axis(dims[axis], dx), (axis,), "angstrom",
                   f"{axis.replace('_', ' ')} from the window centre")
    extra = []
    if "slice" in dims:
        t = thickness if thickness is not None and thickness.size == dims["slice"] else np.zeros(dims["slice"])
        _coord(group, "z", slice_depths(t), ("slice",), "angstrom",
               "depth of the slice's entrance plane")
        extra.append("z")
    if extra:
        _name_coords(group, extra)
    return extra


# ----------------------------------------------------------------------------- helpers
def _dim_sizes(group: zarr.Group) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for _, arr in group.arrays():
        for name, size in zip(arr.metadata.dimension_names or (), arr.shape):
            if name is not None:
                sizes.setdefault(name, int(size))
    return sizes


def _coord(group: zarr.Group, name: str, values: np.ndarray, dims: tuple[str, ...], units: str, long_name: str) -> None:
    write_array(group, name, np.asarray(values, np.float64), dims=dims, units=units, attrs={"long_name": long_name})


def _name_coords(group: zarr.Group, names: list[str]) -> None:
    known = str(group.attrs.get(COORDS_ATTR, "")).split()
    group.attrs[COORDS_ATTR] = " ".join(dict.fromkeys([*known, *names]))


def _long_names(group: zarr.Group, prefix: str = "") -> None:
    for name, member in group.members():
        full = f"{prefix}{name}"
        if isinstance(member, zarr.Array):
            base = full.rsplit("/", 1)[-1]
            long_name = LONG_NAMES.get(full) or LONG_NAMES.get(base)
            if long_name and "long_name" not in member.attrs:
                member.attrs["long_name"] = long_name
        elif not name.endswith((".tmp", ".old")):
            _long_names(member, full + "/")
