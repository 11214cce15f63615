"""Object filters: each test checks the filter's defining property."""

import numpy as np
import pytest
import scipy.fft

from ptycli.constraints import object as co
from ptycli.constraints.base import Context, unwrap_phase, wavelength_a
from ptycli.errors import InputError
from ptycli.store.state import State




def _state(obj, probe=None, **kw):
    probe = np.ones((1, 8, 8), dtype=obj.dtype) if probe is None else probe
    pos = np.array([[10.0, 10.0]])
    kw.setdefault("slice_thickness", np.full(obj.shape[1], 10.0))
    return State(probe=probe, object=obj, positions=pos, dx_a=0.2, energy_kev=300.0, **kw)


def _phase_obj(phase, amp=1.0):
    return (amp * np.exp(1j * phase)).astype(np.complex128)


def test_kz_weight_check_values():
    # physics.md §7.9 checks (β = 1): W(u_z=.5, u_x=.1) = 0.027993, Wa = 0.027715, W(.1, .25) = 0.90056
    w = co.kz_weight(np.array(0.0), np.array(0.1), np.array(0.5), 1.0, 0.0)
    wa = co.kz_weight(np.array(0.0), np.array(0.1), np.array(0.5), 1.0, 1.0)
    w2 = co.kz_weight(np.array(0.0), np.array(0.25), np.array(0.1), 1.0, 0.0)
    assert float(w) == pytest.approx(0.027993, rel=1e-4)
    assert float(wa) == pytest.approx(0.027715, rel=1e-4)
    assert float(w2) == pytest.approx(0.90056, rel=1e-4)
    assert float(co.kz_weight(np.array(0.3), np.array(0.2), np.array(0.0), 1.0, 0.0)) == 1.0


def test_kz_filter_leaves_depth_uniform_phase_object_and_damps_alternating_one():
    rng = np.random.default_rng(1)
    lateral = 0.3 * rng.random((16, 16))
    uniform = _phase_obj(np.broadcast_to(lateral, (1, 4, 16, 16)))
    params = co.KzFilterParams(beta=1.0, alpha=0.0)
    out = co.kz_filter(_state(uniform), params, Context()).object
    np.testing.assert_allclose(out, uniform, atol=1e-10)  # u_z = 0 only: W = 1, |O| = 1 kept
    sign = np.array([1, -1, 1, -1])[None, :, None, None]
    alternating = _phase_obj(0.2 + 0.1 * sign * np.ones((1, 4, 16, 16)))
    out = co.kz_filter(_state(alternating), params, Context()).object
    before = np.ptp(np.angle(alternating)[0, :, 5, 5])
    after = np.ptp(np.angle(out)[0, :, 5, 5])
    assert after < 0.05 * before  # W(u_z = .5, lateral DC) = 1 - (2/π) arctan(62.5) ≈ 0.01


def test_lateral_blur_matches_gaussian_fourier_filter_and_keeps_mean():
    rng = np.random.default_rng(2)
    obj = (1 + 0.1 * rng.normal(size=(1, 2, 16, 16))) * np.exp(1j * rng.random((1, 2, 16, 16)))
    out = co.lateral_blur(_state(obj), co.BlurParams(sigma_px=1.0), Context()).object
    u = np.fft.fftfreq(16)
    g = np.exp(-2 * np.pi**2 * (u[:, None] ** 2 + u[None, :] ** 2))
    np.testing.assert_allclose(np.fft.fft2(out), np.fft.fft2(obj) * g, atol=1e-9)
    half = co.lateral_blur(_state(obj), co.BlurParams(sigma_px=1.0, weight=0.5), Context()).object
    np.testing.assert_allclose(half, 0.5 * (obj + out), atol=1e-12)


def test_lateral_blur_phase_part_leaves_amplitude():
    rng = np.random.default_rng(3)
    obj = 0.9 * np.exp(1j * 0.5 * rng.random((1, 1, 16, 16)))
    out = co.lateral_blur(_state(obj), co.BlurParams(sigma_px=1.0, part="phase"), Context()).object
    np.testing.assert_allclose(np.abs(out), 0.9, rtol=1e-12)
    assert np.std(np.angle(out)) < 0.5 * np.std(np.angle(obj))


def test_depth_blur_keeps_uniform_and_matches_reflected_kernel():
    rng = np.random.default_rng(4)
    lateral = np.exp(1j * rng.random((8, 8)))
    uniform = np.broadcast_to(lateral, (1, 5, 8, 8)).astype(np.complex128)
    out = co.depth_blur(_state(uniform), co.DepthBlurParams(sigma_slices=1.0), Context()).object
    np.testing.assert_allclose(out, uniform, atol=1e-12)
    spike = np.zeros((1, 5, 1, 1), dtype=np.complex128)
    spike[0, 0] = 1.0
    res = co.depth_gaussian(spike, 1.0)[0, :, 0, 0].real
    g = np.exp(-np.arange(-3, 4) ** 2 / 2.0)
    g /= g.sum()
    # reflected boundary: index -1 maps to 0, so slice 0 gathers g(0) + g(1)
    assert res[0] == pytest.approx(g[3] + g[4])
    assert res[1] == pytest.approx(g[2] + g[5])  # offsets -1 and -2 (reflected to 0) land on 0
    assert res.sum() == pytest.approx(1.0)


def test_lowpass_removes_frequencies_beyond_cutoff():
    rng = np.random.default_rng(5)
    obj = np.exp(1j * 0.2 * rng.normal(size=(1, 1, 32, 32)))
    out = co.lowpass(_state(obj), co.LowpassParams(resolution_a=1.0, width_frac=0.01), Context()).object
    k = np.fft.fftfreq(32, 0.2)
    kk = np.hypot(k[:, None], k[None, :])
    spec = np.fft.fft2(out[0, 0])
    assert np.abs(spec[kk > 1.1]).max() < 1e-4 * np.abs(spec).max()
    np.testing.assert_allclose(spec[kk < 0.9], np.fft.fft2(obj[0, 0])[kk < 0.9], rtol=1e-3)


def test_dct_threshold_keeps_only_the_requested_fraction_of_coefficients():
    rng = np.random.default_rng(6)
    img = rng.normal(size=(1, 1, 12, 10))
    out = co.dct_threshold_2d(img, 0.1).real
    coef_in = scipy.fft.dctn(img[0, 0], norm="ortho")
    coef_out = scipy.fft.dctn(out[0, 0], norm="ortho")
    kept = np.abs(coef_out) > 1e-9
    assert kept.sum() == int(np.ceil(0.1 * 120))
    strongest = np.argsort(np.abs(coef_in).ravel())[-kept.sum():]
    np.testing.assert_array_equal(np.sort(np.flatnonzero(kept)), np.sort(strongest))
    np.testing.assert_allclose(coef_out[kept], coef_in[kept], rtol=1e-9)


def test_z_recenter_centres_object_and_refocuses_probe():
    obj = np.ones((1, 6, 8, 8), dtype=np.complex128)
    obj[0, 0:2] = np.exp(0.5j)  # structure in the top two slices: CoM = 0.5
    yy, xx = np.mgrid[:8, :8] - 4
    probe = np.exp(-(yy**2 + xx**2) / 3.0)[None].astype(np.complex128)
    st = _state(obj, probe, aberrations={"C10": 0.0})
    out = co.z_recenter(st, co.ZRecenterParams(percentile=0.0), Context.from_state(st))
    com = co.depth_centroid(np.angle(out.object), 0.0)
    assert abs(com - 2.5) <= 0.5
    n = 2  # round(2.5 - 0.5)
    assert out.aberrations["C10"] == pytest.approx(-n * 10.0)  # focus n Δz deeper (C10 < 0)
    np.testing.assert_allclose(out.object[0, 2:4], np.exp(0.5j))
    np.testing.assert_allclose(out.object[0, :2], 1.0)
    # the new probe, propagated n Δz, is the old probe: same beam at the moved structure
    from ptycli.constraints.base import propagate_probe

    back = propagate_probe(out.probe, 0.2, wavelength_a(300e3), n * 10.0)
    np.testing.assert_allclose(back, probe, atol=1e-12)


def test_unwrap_phase_recovers_smooth_phase_beyond_pi():
    yy, xx = np.mgrid[:32, :32]
    for true in (0.9 * xx - 0.4 * yy, 3 * np.pi * np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / 60.0)):
        got = unwrap_phase(np.angle(np.exp(1j * true)))
        np.testing.assert_allclose(got - got.mean(), true - true.mean(), atol=1e-6)


def test_unwrap_phase_returns_a_phase_without_wraps_as_it_is():
    # no neighbour step reaches π: the least-squares integral is the input, so no solve runs
    # and nothing is rounded (the kz filter unwraps every slice each iteration)
    rng = np.random.default_rng(3)
    phase = (0.5 * rng.standard_normal((3, 24, 24))).astype(np.float32)
    got = unwrap_phase(phase)
    assert got is phase
    wrapped = np.angle(np.exp(1j * (0.9 * np.mgrid[:24, :24][1]))).astype(np.float32)
    assert unwrap_phase(wrapped) is not wrapped


def test_kz_filter_leaves_a_one_slice_object_alone():
    # the multislice recipes carry the kz filter; on a single-slice state it must not
    # turn into a lateral low-pass (its exp(-α|u|²) factor)
    rng = np.random.default_rng(2)
    obj = _phase_obj(0.3 * rng.standard_normal((1, 1, 16, 16)), amp=1 + 0.1 * rng.random((1, 1, 16, 16)))
    st = _state(obj)
    out = co.kz_filter(st, co.KzFilterParams(beta=1.0, alpha=1.0), Context())
    np.testing.assert_array_equal(out.object, obj)


def test_kz_filter_leaves_the_weak_object_modes_alone():
    # the filter relaxes amplitudes towards 1 (a weak specimen's transmission); the second
    # and further object modes are weak incoherent parts (amplitude ~0.05), not specimens
    rng = np.random.default_rng(4)
    main = _phase_obj(0.3 * rng.standard_normal((1, 4, 16, 16)))
    weak = 0.05 * np.exp(1j * rng.uniform(0, 2 * np.pi, (1, 4, 16, 16)))
    obj = np.concatenate([main, weak]).astype(np.complex64)
    out = co.kz_filter(_state(obj, probe=np.ones((1, 8, 8), np.complex64)), co.KzFilterParams(), Context())
    np.testing.assert_array_equal(out.object[1], obj[1])
    assert not np.allclose(out.object[0], obj[0])


def test_kz_filter_in_physical_units_is_the_index_filter_with_the_cone_beta():
    """units = "physical": β_index = β Δx / (α_conv Δz); the filter's edge β|u_z| = |u_r|
    then lies on |k_z| = α_conv |k_r| / β in Å⁻¹ (k_z = u_z/Δz, k_r = u_r/Δx)."""
    rng = np.random.default_rng(5)
    obj = _phase_obj(0.3 * rng.standard_normal((1, 4, 16, 16)), amp=1 + 0.05 * rng.random((1, 4, 16, 16)))
    st = _state(obj, semiangle_mrad=20.0)  # Δx 0.2 Å, Δz 10 Å
    beta_index = co.physical_beta(st, 0.5)
    assert beta_index == pytest.approx(0.5 * 0.2 / (0.020 * 10.0))
    # the edge: β_index u_z = u_r <=> k_z = (α_conv / β) k_r
    u_r, u_z = 0.25, 0.25 / beta_index
    assert u_z / 10.0 == pytest.approx(0.020 / 0.5 * (u_r / 0.2))
    phys = co.kz_filter(st, co.KzFilterParams(beta=0.5, units="physical"), Context()).object
    index = co.kz_filter(st, co.KzFilterParams(beta=beta_index), Context()).object
    np.testing.assert_allclose(phys, index, atol=1e-12)
    # thicker slices (same Δx, α): a weaker depth filter in slice units
    thick = _state(obj, semiangle_mrad=20.0, slice_thickness=np.full(4, 40.0))
    assert co.physical_beta(thick, 0.5) == pytest.approx(beta_index / 4)


def test_kz_filter_in_physical_units_names_what_it_lacks():
    obj = _phase_obj(np.zeros((1, 2, 16, 16)))
    with pytest.raises(InputError, match="semiangle_mrad"):
        co.kz_filter(_state(obj), co.KzFilterParams(units="physical"), Context())
    # one slice: nothing to filter, nothing needed
    one = _state(_phase_obj(np.zeros((1, 1, 16, 16))))
    assert co.kz_filter(one, co.KzFilterParams(units="physical"), Context()) is one
