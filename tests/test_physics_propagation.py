"""Fresnel propagator: adjoint, norm conservation, focus and tilt conventions, band limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ptycli import backend
from ptycli.physics import grids
from ptycli.physics.electron import wavelength_a
from ptycli.physics.probe import make_probe
from ptycli.physics.propagation import band_limit, fresnel_propagator, propagate, propagate_adjoint



LAM300 = wavelength_a(300e3)


def _rand(rng, shape):
    return rng.normal(size=shape) + 1j * rng.normal(size=shape)


def test_propagator_adjoint_dot_product_complex128() -> None:
    rng = np.random.default_rng(0)
    h = fresnel_propagator((24, 20), 0.2, LAM300, 7.0, tilt_mrad=np.array([[1.0, -2.0], [0.5, 3.0]]),
                           dtype="complex128")
    assert h.shape == (2, 24, 20)
    x, y = _rand(rng, (2, 24, 20)), _rand(rng, (2, 24, 20))
    lhs = np.vdot(y, propagate(x, h))
    rhs = np.vdot(propagate_adjoint(y, h), x)
    assert abs(lhs - rhs) <= 1e-13 * abs(lhs)


def test_propagation_conserves_norm_inside_band_limit() -> None:
    rng = np.random.default_rng(1)
    b = band_limit((32, 32), 0.2, style="hard", dtype="float64")
    psi = backend.ifft2(b * _rand(rng, (32, 32)))  # band-limited wave: B does nothing to it
    h = fresnel_propagator((32, 32), 0.2, LAM300, 50.0, tilt_mrad=np.array([3.0, -1.0]), dtype="complex128")
    out = propagate(psi, h)
    assert np.sum(np.abs(out) ** 2) == pytest.approx(np.sum(np.abs(psi) ** 2), rel=1e-12)


def test_physics_md_phase_checks() -> None:
    # §4.1: 300 kV, Δz = 10 Å, |k| = 1/Å: -πλΔz k² = -0.61850; t_x = 1 mrad, k_x = 1: -0.062832.
    n, dx = 40, 0.05  # k = 1/Å is bin 2 (dk = 0.5/Å), well inside the 2/3 band limit (6.67/Å)
    h = fresnel_propagator((n, n), dx, LAM300, 10.0, dtype="complex128")
    assert np.angle(h[0, 2]) == pytest.approx(-0.61850, rel=1e-4)
    ht = fresnel_propagator((n, n), dx, LAM300, 10.0, tilt_mrad=np.array([0.0, 1.0]), dtype="complex128")
    assert np.angle(ht[0, 2] / h[0, 2]) == pytest.approx(-0.062832, rel=1e-4)
    # §4.1: M = 256, dx = 0.1 Å: k_max = 3.3333/Å
    b = band_limit((256, 256), 0.1, style="hard", dtype="float64")
    k = np.fft.fftfreq(256, 0.1)
    assert b[0, np.argmin(np.abs(k - 3.3))] == 1.0 and b[0, np.argmin(np.abs(k - 3.4))] == 0.0


def test_tilt_moves_centroid_towards_plus_x() -> None:
    # §4.1 check: t_x = +10 mrad over 100 Å moves the probe centroid by +1.000 Å in x.
    y, x = grids.real_coords_a((128, 128), 0.1, dtype="float64")
    p = np.exp(-(x**2 + y**2) / 2.0) + 0j  # a Gaussian beam: no Airy tails wrapping around the window
    h = fresnel_propagator((128, 128), 0.1, LAM300, 100.0, tilt_mrad=np.array([0.0, 10.0]),
                           band_limit="none", dtype="complex128")

    def centroid(w):
        i = np.abs(w) ** 2
        return np.sum(i * y) / i.sum(), np.sum(i * x) / i.sum()

    (y0, x0), (y1, x1) = centroid(p), centroid(propagate(p, h))
    assert x1 - x0 == pytest.approx(100.0 * math.tan(0.010), rel=1e-6) and abs(y1 - y0) < 1e-6


def test_underfocused_probe_focuses_downstream() -> None:
    # §3.1: C10 = -100 Å (underfocus) has its highest peak after propagating +100 Å.
    p = make_probe((128, 128), 0.1, 300e3, 20.0, {"C10": -100.0}, dtype="complex128")
    peaks = {dz: np.abs(propagate(p, fresnel_propagator((128, 128), 0.1, LAM300, dz, dtype="complex128"))).max()
             for dz in (-100.0, 0.0, 60.0, 100.0, 140.0)}
    assert max(peaks, key=peaks.get) == 100.0


def test_abtem_band_limit_taper() -> None:
    dx = 0.1
    b = band_limit((256, 256), dx, style="abtem", dtype="float64")
    k = np.abs(np.fft.fftfreq(256, dx))
    kc, w = 0.6666666 / (2 * dx), 0.01 / dx
    row = b[0]
    expected = np.where(k <= kc - w, 1.0, np.where(k > kc, 0.0, 0.5 * (1 + np.cos(math.pi * (k - kc + w) / w))))
    np.testing.assert_allclose(row, expected, atol=1e-12)
    assert np.any((row > 0.01) & (row < 0.99))  # the taper is sampled
