"""Probe constraints: each test checks the constraint's defining property."""

import numpy as np
import pytest

from ptycli.constraints import probe as cp
from ptycli.constraints.base import Context, fresnel, propagate, wavelength_a
from ptycli.store.state import State



M = 32


def _probe(n_modes=3, seed=0, dtype=np.complex128):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:M, :M] - M // 2
    base = np.exp(-(yy**2 + xx**2) / 20.0)
    modes = [base * (rng.normal() + 1j * rng.normal()) * (1 + 0.3 * rng.normal(size=(M, M))) for _ in range(n_modes)]
    return np.asarray(modes, dtype=dtype)


def _state(probe, **kw):
    obj = np.ones((1, 1, 64, 64), dtype=probe.dtype)
    pos = np.array([[30.0, 30.0], [31.5, 33.25]])
    return State(probe=probe, object=obj, positions=pos, dx_a=0.2, energy_kev=300.0, semiangle_mrad=20.0, **kw)


def test_orthogonalize_gives_orthonormal_modes_with_powers_and_intensity_preserved():
    probe = _probe()
    st = _state(probe)
    out = cp.orthogonalize(st, cp.OrthogonalizeParams(), Context.from_state(st)).probe
    a = out.reshape(3, -1)
    gram = a @ a.conj().T
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-10 * np.abs(gram).max()  # orthogonal (float64 round-off)
    powers = np.real(np.diag(gram))
    assert np.all(np.diff(powers) <= 0)  # strongest first
    np.testing.assert_allclose(powers.sum(), np.sum(np.abs(probe) ** 2), rtol=1e-12)
    # Σ_p |P_p(r)|² unchanged pointwise: the forward model does not change (§7.1)
    np.testing.assert_allclose((np.abs(out) ** 2).sum(0), (np.abs(probe) ** 2).sum(0), rtol=1e-10, atol=1e-12)


def test_orthogonalize_keeps_complex64():
    st = _state(_probe(dtype=np.complex64))
    assert cp.orthogonalize(st, cp.OrthogonalizeParams(), Context()).probe.dtype == np.complex64


def test_fix_intensity_sets_total_power_to_counts():
    st = _state(_probe())
    out = cp.fix_intensity(st, cp.FixIntensityParams(), Context(counts_per_frame=1e5)).probe
    np.testing.assert_allclose(np.sum(np.abs(out) ** 2), 1e5, rtol=1e-12)
    out2 = cp.fix_intensity(st, cp.FixIntensityParams(counts=7.0), Context()).probe
    np.testing.assert_allclose(np.sum(np.abs(out2) ** 2), 7.0, rtol=1e-12)


def test_fix_intensity_without_counts_is_a_recipe_error():
    from ptycli.errors import RecipeError

    with pytest.raises(RecipeError, match="counts per frame"):
        cp.fix_intensity(_state(_probe()), cp.FixIntensityParams(), Context())


def test_fourier_mask_removes_spectrum_outside_radius_of_dominant_modes_only():
    probe = _probe(2)
    probe /= np.sqrt(np.sum(np.abs(probe) ** 2, axis=(1, 2), keepdims=True))
    probe[1] *= 0.1  # mode 1 holds 1 % of the power
    st = _state(probe)
    ctx = Context.from_state(st)
    params = cp.FourierMaskParams(radius_mrad=10.0, width_mrad=0.05, power_fraction=0.9)
    out = cp.fourier_mask(st, params, ctx).probe
    ky = np.fft.fftfreq(M, 0.2)
    alpha = ctx.wavelength_a * 1e3 * np.hypot(ky[:, None], ky[None, :])
    spec = np.fft.fft2(out[0], norm="ortho")
    assert np.abs(spec[alpha > 11]).max() < 1e-6 * np.abs(spec).max()
    inside = alpha < 9
    np.testing.assert_allclose(spec[inside], np.fft.fft2(probe[0], norm="ortho")[inside], rtol=1e-6)
    np.testing.assert_array_equal(out[1], probe[1])  # weak mode left free


def test_window_is_applied_at_focal_plane_found_by_search():
    # A probe defocused by 200 Å: its focused form is compact; the window must act there.
    lam = wavelength_a(300e3)
    yy, xx = np.mgrid[:M, :M] - M // 2
    focused = np.exp(-(yy**2 + xx**2) / 8.0).astype(np.complex128)
    h = fresnel((M, M), 0.2, lam, [-200.0], np, np.complex128)[0]
    probe = propagate(focused, h)[None]  # focus lies 200 Å downstream
    z = cp.focal_plane_a(probe[0], 0.2, lam, 400.0, 81)
    assert z == pytest.approx(200.0, abs=10.0)
    st = _state(probe)
    out = cp.window(st, cp.WindowParams(radius_a=1.0, order=4, z_range_a=400.0, z_steps=81), Context.from_state(st))
    back = fresnel((M, M), 0.2, lam, [z], np, np.complex128)[0]
    at_focus = propagate(out.probe[0], back)
    r = np.hypot(yy, xx)
    assert np.abs(at_focus[r > 10]).max() < 1e-6  # nothing outside the window at focus
    centre_before = np.abs(propagate(probe[0], back)[M // 2, M // 2])
    assert np.abs(at_focus[M // 2, M // 2]) == pytest.approx(centre_before, rel=1e-3)  # centre kept


def test_centre_moves_centroid_to_window_centre_and_positions_follow():
    yy, xx = np.mgrid[:M, :M]
    probe = np.exp(-((yy - 14.3) ** 2 + (xx - 18.6) ** 2) / 6.0)[None].astype(np.complex128)
    st = _state(probe)
    out = cp.centre(st, cp.CentreParams(), Context())
    cy, cx = cp.centroid_px(np.abs(out.probe[0]) ** 2)
    assert (cy, cx) == pytest.approx((M // 2, M // 2), abs=1e-6)
    np.testing.assert_allclose(out.positions - st.positions, [[14.3 - 16, 18.6 - 16]] * 2, atol=1e-6)
