"""Built-in synthetic specimen: Gaussian atomic potentials on a lattice, sliced in depth.

Easy to judge by eye and by test: a square lattice whose atoms sit at a known depth, one
vacancy and one heavy substitution (defects a reconstruction must show), and a sparse
amorphous background (so the object is not purely periodic). Projected potentials are in
V·Å; a slice transmits ``t = exp(i σ V)`` (physics.md §4.2).

Layout of one lattice cell (spacing a): slice s holds a "heavy" atom at (0, s·a/S) from
the cell corner, so in projection every cell shows a row of S atoms and each sits in its
own slice; a "light" atom at the cell centre sits in slice S//2. Atom placement is host
bookkeeping (a few hundred atoms); the potential itself is rendered on the array
namespace ``xp`` by scatter-adding small Gaussian patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from .. import backend

ATOM_COLUMNS = ("y_a", "x_a", "slice", "peak_v_a")


@dataclass(frozen=True)
class SpecimenParams:
    """Parameters of the synthetic specimen (lengths in Å, potentials as peak V·Å)."""

    lattice_a: float = 3.0
    sigma_a: float = 0.35  # Gaussian width of one atom's projected potential
    heavy_v_a: float = 1000.0  # peak projected potential of a lattice atom (0.65 rad at 300 kV)
    light_v_a: float = 400.0
    dopant_v_a: float = 1400.0  # the heavy substitution
    amorphous_per_a2: float = 0.03  # background atoms per Å² (summed over slices)
    amorphous_v_a: float = 120.0
    defects: bool = True


@dataclass
class Specimen:
    potential_v_a: Any  # (S, H, W) projected potential per slice [V·Å]
    atoms: np.ndarray  # (N, 4) host table: y_a, x_a, slice, peak_v_a (canvas Å, pixel 0 at 0 Å)
    defects: dict[str, list[float]] = field(default_factory=dict)  # name -> [y_a, x_a, slice]


def lattice_atoms(extent_a: tuple[float, float], n_slices: int, params: SpecimenParams) -> tuple[np.ndarray, dict]:
    """Atom table (N, 4) of the crystal over a canvas of ``extent_a`` (y, x) Å, with defects."""
    a = params.lattice_a
    ny, nx = (int(math.floor(e / a)) for e in extent_a)
    iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    corners = np.stack([iy.ravel() * a + a / 4, ix.ravel() * a + a / 4], axis=1)
    rows = []
    for s in range(n_slices):
        rows.append(_column(corners + [0.0, s * a / max(n_slices, 2)], s, params.heavy_v_a))
    rows.append(_column(corners + [a / 2, a / 2], n_slices // 2, params.light_v_a))
    atoms = np.concatenate(rows, axis=0)
    defects: dict[str, list[float]] = {}
    if params.defects and len(corners):
        atoms, defects = _add_defects(atoms, extent_a, n_slices, params)
    return atoms, defects


def _column(yx: np.ndarray, slice_index: int, peak_v_a: float) -> np.ndarray:
    n = yx.shape[0]
    return np.concatenate([yx, np.full((n, 1), float(slice_index)), np.full((n, 1), peak_v_a)], axis=1)


def _add_defects(atoms: np.ndarray, extent_a: tuple[float, float], n_slices: int,
                 params: SpecimenParams) -> tuple[np.ndarray, dict]:
    """A vacancy near the centre (slice 0) and a dopant one cell away (last slice)."""
    centre = np.asarray(extent_a) / 2
    defects = {}
    top = np.flatnonzero((atoms[:, 2] == 0) & (atoms[:, 3] == params.heavy_v_a))
    vac = top[np.argmin(np.sum((atoms[top, :2] - centre) ** 2, axis=1))]
    defects["vacancy"] = [*atoms[vac, :2].tolist(), 0.0]
    last = n_slices - 1
    bottom = np.flatnonzero((atoms[:, 2] == last) & (atoms[:, 3] == params.heavy_v_a))
    target = centre + params.lattice_a
    dop = bottom[np.argmin(np.sum((atoms[bottom, :2] - target) ** 2, axis=1))]
    atoms = atoms.copy()
    atoms[dop, 3] = params.dopant_v_a
    defects["dopant"] = [*atoms[dop, :2].tolist(), float(last)]
    return np.delete(atoms, vac, axis=0), defects


def amorphous_atoms(extent_a: tuple[float, float], n_slices: int, params: SpecimenParams,
                    rng: np.random.Generator) -> np.ndarray:
    """Randomly placed weak atoms, uniformly over the canvas and the slices."""
    n = int(round(params.amorphous_per_a2 * extent_a[0] * extent_a[1]))
    yx = rng.uniform(0.0, 1.0, size=(n, 2)) * np.asarray(extent_a)[None, :]
    slices = rng.integers(0, n_slices, size=(n, 1)).astype(np.float64)
    return np.concatenate([yx, slices, np.full((n, 1), params.amorphous_v_a)], axis=1)


def gaussian_potential(shape: tuple[int, int], dx_a: float, atoms: np.ndarray, sigma_a: float, *,
                       xp: ModuleType = np, dtype: Any = "float32") -> Any:
    """Sum of Gaussians ``peak exp(-|r - r_n|²/(2σ²))`` on an (H, W) grid of pixel ``dx_a``.

    Each atom is rendered in a box of ±4σ and scatter-added; atoms whose box leaves the
    canvas are cut at its edge (the canvas is padded by one box, then cropped).
    """
    half = int(math.ceil(4 * sigma_a / dx_a))
    m = 2 * half + 1
    canvas = xp.zeros((shape[0] + 2 * m, shape[1] + 2 * m), dtype=dtype)
    if atoms.shape[0] == 0:
        return canvas[m:-m, m:-m]
    centre_px = atoms[:, :2] / dx_a
    corner = np.floor(centre_px).astype(np.int64) - half
    keep = np.all((corner > -m) & (corner < np.asarray(shape)[None, :]), axis=1)
    frac = backend.to_device(centre_px[keep] - np.floor(centre_px[keep]), xp, dtype)
    peak = backend.to_device(atoms[keep, 3], xp, dtype)
    offs = backend.to_device(np.arange(m, dtype=np.float64) - half, xp, dtype)
    dy = (offs[None, :] - frac[:, 0:1]) * dx_a
    dx = (offs[None, :] - frac[:, 1:2]) * dx_a
    inv = 1.0 / (2.0 * sigma_a**2)
    patches = peak[:, None, None] * xp.exp(-(dy[:, :, None] ** 2) * inv) * xp.exp(-(dx[:, None, :] ** 2) * inv)
    backend.scatter_add_patches(canvas, corner[keep, 0] + m, corner[keep, 1] + m, patches)
    return canvas[m:-m, m:-m]


def build_specimen(shape: tuple[int, int], dx_a: float, n_slices: int, params: SpecimenParams, *,
                   seed: int | None = 0, xp: ModuleType = np, dtype: Any = "float32") -> Specimen:
    """The specimen's per-slice projected potential (S, H, W) [V·Å] and its atom table."""
    extent_a = (shape[0] * dx_a, shape[1] * dx_a)
    crystal, defects = lattice_atoms(extent_a, n_slices, params)
    background = amorphous_atoms(extent_a, n_slices, params, backend.host_rng(seed))
    atoms = np.concatenate([crystal, background], axis=0)
    slices = [gaussian_potential(shape, dx_a, atoms[atoms[:, 2] == s], params.sigma_a, xp=xp, dtype=dtype)
              for s in range(n_slices)]
    return Specimen(potential_v_a=xp.stack(slices, axis=0), atoms=atoms, defects=defects)


def transmission(potential_v_a: Any, sigma_rad_per_v_a: float) -> Any:
    """Slice transmission t = exp(i σ V) (physics.md §4.2), complex64 for float32 input."""
    xp = backend.namespace(potential_v_a)
    # A Python scalar keeps the array's precision (NEP 50): float32 in, complex64 out.
    return xp.exp(1j * (potential_v_a * float(sigma_rad_per_v_a)))
