"""Multislice: exact adjoint (P=2, Q=2, S=3) and abTEM's reference (reference/multislice.npz)."""

from __future__ import annotations


import numpy as np
import pytest
from _helpers import SHARED

from ptycli import backend
from ptycli.physics import multislice
from ptycli.physics.electron import sigma_rad_per_v_a, wavelength_a
from ptycli.physics.propagation import band_limit, fresnel_propagator

REF = SHARED / "reference" / "multislice.npz"


def _rand(rng, shape):
    return rng.normal(size=shape) + 1j * rng.normal(size=shape)


@pytest.mark.parametrize("tilted", [False, True])
def test_multislice_adjoint_dot_product(tilted: bool) -> None:
    # The map (ψ1, t) -> Ψ is bilinear; the adjoint is checked in each argument with the other fixed:
    # <A_t ψ1, y> = <ψ1, A_t^H y> and <B_ψ δt, y> for a perturbation linear in one slice at a time.
    rng = np.random.default_rng(0)
    b, p, q, s, m = 2, 2, 2, 3, 12
    tilts = rng.uniform(-3, 3, (b, 2)) if tilted else None
    h = fresnel_propagator((m, m), 0.3, wavelength_a(200e3), 5.0, tilt_mrad=tilts, dtype="complex128")
    psi1, patches, y = _rand(rng, (b, p, m, m)), _rand(rng, (b, q, s, m, m)), _rand(rng, (b, p, q, m, m))
    Psi, cache = multislice.forward(psi1, patches, h)
    grad_patches, grad_psi1 = multislice.backward(y, cache, h)
    # linear in ψ1 (sum over object modes: ψ1 is shared)
    lhs = np.vdot(y, Psi)
    assert abs(lhs - np.vdot(np.sum(grad_psi1, axis=2), psi1)) <= 1e-12 * abs(lhs)
    # linear in each slice: Ψ is linear in t_s with the other slices fixed
    for sl in range(s):
        dt = np.zeros_like(patches)
        dt[:, :, sl] = _rand(rng, (b, q, m, m))
        only = patches.copy()
        only[:, :, sl] = dt[:, :, sl]
        Psi_s, _ = multislice.forward(psi1, only, h)
        lhs_s = np.vdot(y, Psi_s)
        rhs_s = np.vdot(grad_patches[:, :, sl], dt[:, :, sl])
        assert abs(lhs_s - rhs_s) <= 1e-12 * abs(lhs_s)


def test_single_slice_is_product_and_intensity_sums_modes() -> None:
    rng = np.random.default_rng(1)
    psi1, patches = _rand(rng, (3, 2, 8, 8)), _rand(rng, (3, 2, 1, 8, 8))
    Psi, _ = multislice.forward(psi1, patches, None)
    expected = backend.fft2(psi1[:, :, None] * patches[:, None, :, 0])
    np.testing.assert_allclose(Psi, expected, atol=1e-12)
    np.testing.assert_allclose(multislice.intensity(Psi), np.sum(np.abs(expected) ** 2, axis=(1, 2)), rtol=1e-12)


@pytest.mark.skipif(not REF.exists(), reason=f"abTEM reference not present at {REF}")
def test_multislice_matches_abtem_reference() -> None:
    ref = np.load(REF)
    v = ref["potential_slices_VA"].astype(np.float64)
    n, dx, dz = v.shape[-1], float(ref["sampling_A"]), float(ref["slice_thickness_A"])
    energy = float(ref["energy_eV"])
    aa = band_limit((n, n), dx, style="abtem", dtype="float64")
    # abTEM band-limits the transmission and also propagates after the last slice (README recipe);
    # ptycli stops at the last exit wave, so the test applies that final H itself.
    t = backend.ifft2(backend.fft2(np.exp(1j * sigma_rad_per_v_a(energy) * v)) * aa)
    h = fresnel_propagator((n, n), dx, wavelength_a(energy), dz, band_limit="abtem", dtype="complex128")
    psi_in = ref["psi_in"].astype(np.complex128)
    Psi, _ = multislice.forward(psi_in[:, None], np.broadcast_to(t[None, None], (3, 1) + t.shape), h)
    exit_wave = backend.ifft2(Psi[:, 0, 0] * h)
    expected = ref["psi_exit"]
    assert np.abs(exit_wave - expected).max() / np.abs(expected).max() < 1e-3
    # numpy's unnormalised fft2 = n * unitary fft2; abTEM's patterns are DC-centred
    diffraction = backend.fftshift(n * n * np.abs(Psi[:, 0, 0] * h) ** 2)
    err = np.abs(diffraction - ref["diffraction"]).max(axis=(1, 2)) / ref["diffraction"].max(axis=(1, 2))
    assert np.all(err < 1e-3), err
