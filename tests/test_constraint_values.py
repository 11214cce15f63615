"""Object value constraints (amplitude/phase rules, ramp removal, charge flipping)."""

import numpy as np
import pytest

from ptycli.constraints import object_values as cv
from ptycli.constraints.base import Context
from ptycli.store.state import State




def _state(obj, probe=None):
    probe = np.ones((1, 8, 8), dtype=obj.dtype) if probe is None else probe
    return State(probe=probe, object=obj, positions=np.array([[10.0, 10.0]]), dx_a=0.2, energy_kev=300.0)


def _random_obj(seed=0, shape=(1, 2, 16, 16)):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 1.3, shape) * np.exp(1j * rng.uniform(-1, 1, shape))).astype(np.complex128)


def test_amplitude_threshold_clips_and_relaxes_and_keeps_phase():
    obj = _random_obj()
    out = cv.amplitude_threshold(_state(obj), cv.AmplitudeThresholdParams(min_amplitude=0.8, max_amplitude=1.0),
                                 Context()).object
    assert np.abs(out).min() >= 0.8 - 1e-12 and np.abs(out).max() <= 1.0 + 1e-12
    np.testing.assert_allclose(np.angle(out), np.angle(obj), atol=1e-12)
    half = cv.amplitude_threshold(_state(obj), cv.AmplitudeThresholdParams(relax=0.5), Context()).object
    np.testing.assert_allclose(np.abs(half), 0.5 * np.abs(obj) + 0.5 * np.clip(np.abs(obj), 0, 1), atol=1e-12)


def test_amplitude_threshold_rejects_inverted_bounds():
    with pytest.raises(ValueError, match="min_amplitude"):
        cv.AmplitudeThresholdParams(min_amplitude=1.0, max_amplitude=0.5)


def test_phase_positivity_leaves_no_negative_phase():
    obj = _random_obj(1)
    out = cv.phase_positivity(_state(obj), cv.PositivityParams(), Context()).object
    assert np.angle(out).min() >= 0
    np.testing.assert_allclose(np.abs(out), np.abs(obj), atol=1e-12)
    pos = np.angle(obj) > 0
    np.testing.assert_allclose(np.angle(out)[pos], np.angle(obj)[pos], atol=1e-12)
    relaxed = cv.phase_positivity(_state(obj), cv.PositivityParams(relax=0.25), Context()).object
    np.testing.assert_allclose(np.angle(relaxed)[~pos], 0.25 * np.angle(obj)[~pos], atol=1e-12)


def test_complex_ratio_gives_amplitude_exp_minus_c_phase():
    rng = np.random.default_rng(2)
    phase = rng.uniform(0, 1, (1, 1, 16, 16))
    exact = np.exp(-0.1 * phase) * np.exp(1j * phase)
    out = cv.complex_ratio(_state(exact), cv.ComplexRatioParams(), Context()).object
    np.testing.assert_allclose(out, exact, atol=1e-12)  # already consistent: C = 0.1 recovered
    noisy = exact * rng.uniform(0.9, 1.0, exact.shape)
    out = cv.complex_ratio(_state(noisy), cv.ComplexRatioParams(), Context()).object
    c = -np.log(np.abs(out)) / phase
    assert np.ptp(c) < 1e-10 and c.mean() > 0  # ln|O| exactly proportional to -φ
    fixed = cv.complex_ratio(_state(noisy), cv.ComplexRatioParams(c=0.3), Context()).object
    np.testing.assert_allclose(np.abs(fixed), np.exp(-0.3 * phase), rtol=1e-12)


def test_mirrored_amplitude_formula():
    rng = np.random.default_rng(3)
    phase = rng.uniform(-0.5, 2, (1, 1, 8, 8))
    obj = 0.7 * np.exp(1j * phase)
    out = cv.mirrored_amplitude(_state(obj), cv.MirroredAmplitudeParams(scale=0.03, power=4, relax=0), Context())
    np.testing.assert_allclose(np.abs(out.object), 1 - 0.03 * np.maximum(phase, 0) ** 4, rtol=1e-12)
    np.testing.assert_allclose(np.angle(out.object), phase, atol=1e-12)


def test_charge_flip_multiplies_weak_phase_and_absorption_by_beta():
    phase = np.array([-0.3, 0.05, 0.2, 0.5]).reshape(1, 1, 1, 4)
    absorb = np.array([0.005, 0.02, -0.01, 0.1]).reshape(1, 1, 1, 4)
    obj = np.exp(-absorb) * np.exp(1j * phase)
    out = cv.charge_flip(_state(obj), cv.ChargeFlipParams(), Context()).object
    np.testing.assert_allclose(np.angle(out).ravel(), [0.285, -0.0475, 0.2, 0.5], atol=1e-12)
    np.testing.assert_allclose(-np.log(np.abs(out)).ravel(), [-0.00475, 0.02, 0.0095, 0.1], atol=1e-12)


def _ramp_case(slices=1):
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:32, :32]
    phase = 0.3 * rng.random((1, slices, 32, 32)) + (0.5 + 0.12 * yy - 0.07 * xx) / slices
    return np.exp(1j * phase).astype(np.complex128)


def test_phase_ramp_removal_leaves_zero_mean_gradient_and_compensates_probe():
    obj = _ramp_case()
    rng = np.random.default_rng(5)
    probe = (rng.normal(size=(1, 8, 8)) + 1j * rng.normal(size=(1, 8, 8)))
    st = _state(obj, probe)
    out = cv.phase_ramp(st, cv.PhaseRampParams(), Context())
    phase = np.unwrap(np.unwrap(np.angle(out.object[0, 0]), axis=0), axis=1)
    c, by, bx = cv.fit_plane(phase, np.ones_like(phase))
    assert abs(by) < 1e-10 and abs(bx) < 1e-10  # no ramp left
    # the model O_j ⊙ P at any window is unchanged up to a constant phase
    before = obj[0, 0, 5:13, 9:17] * probe[0]
    after = out.object[0, 0, 5:13, 9:17] * out.probe[0]
    ratio = after / before
    np.testing.assert_allclose(ratio, ratio[0, 0], atol=1e-10)


def test_phase_ramp_removal_multislice_removes_projected_ramp_and_leaves_probe():
    obj = _ramp_case(slices=3)
    st = _state(obj)
    out = cv.phase_ramp(st, cv.PhaseRampParams(), Context())
    total = np.sum(np.angle(out.object[0]), axis=0)
    total = np.unwrap(np.unwrap(total, axis=0), axis=1)
    _, by, bx = cv.fit_plane(total, np.ones_like(total))
    assert abs(by) < 1e-10 and abs(bx) < 1e-10
    assert out.probe is st.probe


def test_phase_ramp_fit_uses_only_illuminated_region():
    obj = _ramp_case()
    ill = np.zeros((32, 32))
    ill[8:24, 8:24] = 1.0
    obj[0, 0, :4] *= np.exp(1j * 2.0)  # unlit rows carry junk that must not bias the fit
    out = cv.phase_ramp(_state(obj), cv.PhaseRampParams(), Context(illumination=ill))
    phase = np.unwrap(np.unwrap(np.angle(out.object[0, 0, 8:24, 8:24]), axis=0), axis=1)
    _, by, bx = cv.fit_plane(phase, np.ones_like(phase))
    assert abs(by) < 1e-8 and abs(bx) < 1e-8
