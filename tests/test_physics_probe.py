"""Probes against abTEM (reference/probes.npz) after the docs/conventions.md mapping, and modes.

Mapping (docs/conventions.md): reference arrays are already (y, x); abTEM's real-space probe
has Σ|ψ|² = 1/(M N), ours Σ|P|² = counts, so P = ψ_abTEM · sqrt(M N) for counts = 1;
both are centred at pixel (M//2, N//2). Spectra: abTEM stores A exp(-iχ) fftshifted and
unnormalised; ours is fft2(ifftshift(P)) (unitary), i.e. ifftshift(ctf)/sqrt(Σ|ctf|²).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _helpers import SHARED

from ptycli import backend
from ptycli.physics import grids
from ptycli.physics.aberrations import chi, from_abtem
from ptycli.physics.electron import wavelength_a
from ptycli.physics.probe import (aperture, init_modes, make_probe, mode_occupancies, orthogonalize_modes,
                                  probe_from_pacbed)



REF = SHARED / "reference"
needs_ref = pytest.mark.skipif(not (REF / "probes.npz").exists(), reason=f"abTEM reference not present at {REF}")


def _settings():
    params = json.loads((REF / "probes_params.json").read_text())
    return params, np.load(REF / "probes.npz")


@needs_ref
def test_probes_match_abtem_real_and_fourier_space() -> None:
    params, ref = _settings()
    n, dx = params["gpts"], params["sampling_A"]
    assert len(params["settings"]) == 6
    for s in params["settings"]:
        ab = from_abtem(s["abtem_kwargs"])
        assert ab == pytest.approx(s["krivanek_nonzero"])  # the keyword mapping itself
        probe = make_probe((n, n), dx, params["energy_eV"], params["semiangle_cutoff_mrad"], ab, counts=1.0)
        expected = ref[s["name"] + "__psi"] * n  # sqrt(M N) = n for a square grid
        err = np.abs(probe - expected).max() / np.abs(expected).max()
        assert err < 1e-4, (s["name"], "real", err)
        ctf = np.fft.ifftshift(ref[s["name"] + "__ctf_k"])
        ours_k = backend.fft2(backend.ifftshift(probe))
        expected_k = ctf / np.sqrt(np.sum(np.abs(ctf) ** 2))
        err_k = np.abs(ours_k - expected_k).max() / np.abs(expected_k).max()
        assert err_k < 1e-4, (s["name"], "fourier", err_k)


@needs_ref
def test_aperture_and_chi_match_abtem() -> None:
    params, ref = _settings()
    n, dx = params["gpts"], params["sampling_A"]
    lam = wavelength_a(params["energy_eV"])
    ky, kx = grids.freq_grid((n, n), dx, dtype="float64")
    a = aperture(ky, kx, lam, params["semiangle_cutoff_mrad"])
    inside = lam * np.sqrt(ky**2 + kx**2) < 2 * params["semiangle_cutoff_mrad"] * 1e-3
    for s in params["settings"]:
        np.testing.assert_allclose(a, np.fft.ifftshift(ref[s["name"] + "__aperture_k"]), atol=1e-6)
        ours = chi(ky, kx, lam, from_abtem(s["abtem_kwargs"]))
        expected = np.fft.ifftshift(ref[s["name"] + "__chi"])
        assert np.abs(ours - expected)[inside].max() < 1e-4 * max(1.0, np.abs(expected[inside]).max())


def test_probe_counts_centre_and_dtype() -> None:
    p = make_probe((64, 48), 0.1, 300e3, 25.0, {"C10": 0.0}, counts=1e5)
    assert p.dtype == np.complex64 and p.shape == (64, 48)
    assert np.sum(np.abs(p.astype(np.complex128)) ** 2) == pytest.approx(1e5, rel=1e-5)
    assert np.unravel_index(np.argmax(np.abs(p)), p.shape) == (32, 24)
    # physics.md §3.4: N_e = 1e5 with M = 256 gives rms|P| = 1.2353
    big = make_probe((256, 256), 0.1, 300e3, 20.0, counts=1e5)
    assert np.sqrt(np.mean(np.abs(big.astype(np.complex128)) ** 2)) == pytest.approx(1.2353, rel=1e-4)


def test_aperture_edge_is_linear_ramp_of_given_width() -> None:
    lam = wavelength_a(200e3)
    ky, kx = grids.freq_grid((256, 256), 0.05, dtype="float64")
    alpha = lam * np.sqrt(ky**2 + kx**2)
    for edge_mrad in (None, 3.0):  # None: one reciprocal pixel λ·dk
        w = max(edge_mrad or 0.0, 0.0) * 1e-3 or lam / (256 * 0.05)
        a = aperture(ky, kx, lam, 20.0, edge_mrad=edge_mrad)
        assert np.all(a[alpha <= 0.020 - w / 2] == 1.0) and np.all(a[alpha >= 0.020 + w / 2] == 0.0)
        ramp = np.abs(alpha - 0.020) < w / 2
        assert ramp.sum() > 8
        np.testing.assert_allclose(a[ramp], 0.5 + (0.020 - alpha[ramp]) / w, atol=1e-12)


def _probe64() -> np.ndarray:
    return make_probe((64, 64), 0.2, 200e3, 20.0, {"C10": -80.0, "C30": 1e5}, counts=1e4, dtype="complex128")


@pytest.mark.parametrize("kind", ["hermite", "defocus-spread"])
def test_init_modes_orthogonal_geometric_and_keeps_power(kind: str) -> None:
    p = _probe64()
    modes = init_modes(p, 4, kind, decay=0.5, dx_a=0.2, energy_ev=200e3)
    flat = modes.reshape(4, -1)
    gram = flat @ flat.conj().T
    powers = np.real(np.diag(gram))
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9 * powers.max())
    np.testing.assert_allclose(powers / powers.sum(), np.array([8, 4, 2, 1]) / 15, rtol=1e-10)
    assert powers.sum() == pytest.approx(1e4, rel=1e-10)
    overlap = abs(np.vdot(modes[0], p)) / (np.linalg.norm(modes[0]) * np.linalg.norm(p))
    assert overlap == pytest.approx(1.0, abs=1e-12)  # mode 1 is the aberrated probe


def test_orthogonalize_modes_keeps_incoherent_sum() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 16, 16)) + 1j * rng.normal(size=(3, 16, 16))
    b = orthogonalize_modes(a)
    np.testing.assert_allclose(np.sum(np.abs(b) ** 2, axis=0), np.sum(np.abs(a) ** 2, axis=0), rtol=1e-10)
    gram = b.reshape(3, -1) @ b.reshape(3, -1).conj().T
    lam = np.real(np.diag(gram))
    assert np.all(np.diff(lam) <= 0)
    np.testing.assert_allclose(np.abs(gram - np.diag(np.diag(gram))), 0, atol=1e-9 * lam[0])
    np.testing.assert_allclose(mode_occupancies(a), lam / lam.sum(), rtol=1e-10)


def test_probe_from_pacbed_recovers_probe_of_vacuum_pattern() -> None:
    ab = {"C10": -50.0, "C12": 20.0, "phi12": 0.3}
    p = make_probe((64, 64), 0.2, 200e3, 20.0, ab, counts=500.0, dtype="complex128")
    pacbed = backend.fftshift(np.abs(backend.fft2(p)) ** 2)  # DC-centred vacuum pattern
    q = probe_from_pacbed(pacbed, 0.2, 200e3, ab)
    np.testing.assert_allclose(q, p, atol=1e-10 * np.abs(p).max())


def test_band_limited_probe_keeps_counts_and_cuts_beyond_two_thirds_nyquist() -> None:
    # 40 mrad at 200 kV on dx = 0.3 Å: the 2/3 band limit (27.9 mrad) cuts the aperture.
    p = make_probe((64, 64), 0.3, 200e3, 40.0, counts=50.0, band_limit="hard", dtype="complex128")
    assert np.sum(np.abs(p) ** 2) == pytest.approx(50.0, rel=1e-12)
    k = np.sqrt(sum(g**2 for g in grids.freq_grid((64, 64), 0.3, dtype="float64")))
    spectrum = backend.fft2(backend.ifftshift(p))
    assert np.abs(spectrum[k > (2 / 3) / (2 * 0.3)]).max() < 1e-14 * np.abs(spectrum).max()  # FFT round-off
    assert np.abs(spectrum[k < 0.5]).min() > 0
