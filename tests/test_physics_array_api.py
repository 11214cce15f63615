"""Physics kernels under array_api_strict, and a structural check of imports.

array_api_strict rejects every numpy-only call, so a kernel that passes here will also run
on another array-API backend (e.g. CuPy). Results must equal the numpy path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import ptycli
from ptycli import backend
from ptycli.engines import noise
from ptycli.physics import grids, multislice, overlap
from ptycli.physics.aberrations import chi
from ptycli.physics.electron import wavelength_a
from ptycli.physics.probe import aperture, make_probe
from ptycli.physics.propagation import fresnel_propagator



xs = pytest.importorskip("array_api_strict")
LAM = wavelength_a(200e3)
AB = {"C10": -40.0, "C12": 10.0, "phi12": 0.3, "C21": 500.0, "phi21": 1.0, "C30": 1e4}


def _strict(a):
    return xs.asarray(np.asarray(a))


def _host(a):
    return np.asarray(backend.to_numpy(a))


def test_chi_aperture_propagator_probe_under_strict() -> None:
    ky, kx = grids.freq_grid((16, 12), 0.2, xp=xs, dtype="float64")
    ky_np, kx_np = grids.freq_grid((16, 12), 0.2, dtype="float64")
    np.testing.assert_allclose(_host(chi(ky, kx, LAM, AB)), chi(ky_np, kx_np, LAM, AB), rtol=1e-12)
    np.testing.assert_allclose(_host(aperture(ky, kx, LAM, 20.0)), aperture(ky_np, kx_np, LAM, 20.0), atol=1e-12)
    tilts = np.array([[1.0, -2.0], [0.5, 0.0]])
    h = fresnel_propagator((16, 12), 0.2, LAM, 5.0, tilt_mrad=_strict(tilts), xp=xs, dtype="complex64")
    assert h.dtype == xs.complex64 and h.shape == (2, 16, 12)
    ref = fresnel_propagator((16, 12), 0.2, LAM, 5.0, tilt_mrad=tilts, dtype="complex64")
    np.testing.assert_allclose(_host(h), ref, atol=1e-6)
    p = make_probe((16, 12), 0.2, 200e3, 20.0, AB, counts=10.0, xp=xs)
    assert p.dtype == xs.complex64
    np.testing.assert_allclose(_host(p), make_probe((16, 12), 0.2, 200e3, 20.0, AB, counts=10.0), atol=1e-5)


def test_shift_multislice_and_noise_under_strict() -> None:
    rng = np.random.default_rng(0)
    probe = (rng.normal(size=(2, 8, 8)) + 1j * rng.normal(size=(2, 8, 8))).astype(np.complex64)
    frac = rng.random((3, 2)).astype(np.float32)
    patches = np.exp(0.2j * rng.normal(size=(3, 2, 3, 8, 8))).astype(np.complex64)
    h = fresnel_propagator((8, 8), 0.3, LAM, 4.0, dtype="complex64")
    data = rng.uniform(1, 5, (3, 8, 8)).astype(np.float32)

    def run(to):
        psi1 = overlap.shift_probe(to(probe), to(frac))
        Psi, cache = multislice.forward(psi1, to(patches), to(h))
        i = multislice.intensity(Psi)
        grad = noise.grad_farfield(Psi, i, to(data), "poisson")
        g_obj, g_psi = multislice.backward(grad, cache, to(h))
        return [noise.loss(i, to(data), "poisson"), g_obj, overlap.unshift(g_psi[:, :, 0, ...], to(frac))]

    for strict, ref in zip(run(_strict), run(np.asarray)):
        np.testing.assert_allclose(_host(strict), ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())


# Modules that keep small host-side tables (scan positions, atom lists) in numpy by design;
# they still reach the compute device only through ptycli.backend.
HOST_BOOKKEEPING = {"scan.py", "specimen.py"}
FORBIDDEN = {"numpy", "scipy", "cupy"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_physics_and_noise_do_not_import_numpy_or_scipy() -> None:
    root = Path(ptycli.__file__).parent
    files = [p for p in sorted((root / "physics").glob("*.py")) if p.name not in HOST_BOOKKEEPING]
    files.append(root / "engines" / "noise.py")
    assert len(files) >= 10
    offenders = {p.name: sorted(_imports(p) & FORBIDDEN) for p in files if _imports(p) & FORBIDDEN}
    assert not offenders, f"array work must go through ptycli.backend: {offenders}"
    for p in (root / "physics").glob("*.py"):  # even host-bookkeeping modules never use scipy/cupy
        assert not (_imports(p) & {"scipy", "cupy"}), p.name
