"""compare_images: registration, phase offset, correlation/RMSE and FRC with exact oracles."""

import numpy as np
import pytest
from test_export_data import smooth_phase

from ptycli.stages.compare import compare_images, phase_correlation
from ptycli.stages.frc import crossing_px, fourier_shift, frc_curve, half_bit_threshold, register_shift


def _object(n=96, seed=0):
    return (0.95 * np.exp(1j * smooth_phase((n, n), seed, sigma_px=1.5, rms=0.5))).astype(np.complex64)


def test_self_comparison_gives_correlation_one_and_frc_one():
    o = _object()
    res = compare_images(o, o, dx_a=0.2)
    assert res["correlation"] == pytest.approx(1.0, abs=1e-12)
    assert res["rmse"] == pytest.approx(0.0, abs=1e-7)
    assert res["shift_px"] == [0.0, 0.0]
    assert min(res["frc"]["frc"][1:]) == pytest.approx(1.0, abs=1e-9)
    assert res["nyquist_limited"] == {"one_seventh": True, "half_bit": True}
    assert res["resolution_a"]["one_seventh"] == pytest.approx(0.4)  # 2 dx: sampling-limited


def test_shift_and_constant_phase_offset_are_recovered():
    o = _object()
    b = fourier_shift(o.astype(np.complex128), (3.4, -1.7)) * np.exp(1j * 0.7)
    res = compare_images(o, b, dx_a=0.2)
    assert res["shift_px"][0] == pytest.approx(3.4, abs=0.05)
    assert res["shift_px"][1] == pytest.approx(-1.7, abs=0.05)
    assert res["phase_offset"] == pytest.approx(0.7, abs=1e-3)
    assert res["correlation"] > 0.999


def test_shift_of_a_real_phase_image_with_additive_offset_and_gain():
    a = smooth_phase((80, 72), 3, sigma_px=2.0)
    b = 1.3 * fourier_shift(a, (-2.25, 5.6)) + 0.4
    res = compare_images(a, b, scale=True)
    assert res["shift_px"] == pytest.approx([-2.25, 5.6], abs=0.02)
    assert res["scale"] == pytest.approx(1 / 1.3, rel=1e-3)
    assert res["correlation"] == pytest.approx(1.0, abs=1e-6)


def test_frc_of_truth_and_low_passed_truth_crosses_one_seventh_at_the_cutoff():
    n, cutoff = 128, 0.25  # cycles/px
    rng = np.random.default_rng(5)
    truth = rng.standard_normal((n, n))
    u = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    blurred = np.fft.ifft2(np.fft.fft2(truth) * (u <= cutoff)).real
    blurred += 1e-3 * rng.standard_normal((n, n))  # a detector never measures exact zeros
    res = compare_images(truth, blurred, phase=False, dx_a=0.5)
    u7 = 0.5 / res["resolution_a"]["one_seventh"]  # back to cycles/px
    assert u7 == pytest.approx(cutoff, abs=1.5 / n)  # within 1.5 rings of the cutoff
    assert res["resolution_a"]["half_bit"] == pytest.approx(0.5 / cutoff, rel=0.05)


def test_frc_with_gaussian_blur_and_noise_crosses_where_theory_says():
    # FRC(u) = G S / sqrt(S (G^2 S + N)) for white signal S, white noise N on the copy and
    # blur G = exp(-u^2 / (2 s^2)): 1/7 is crossed where G^2 = N / (48 S).
    n, s, noise = 256, 0.12, 0.05
    rng = np.random.default_rng(7)
    truth = rng.standard_normal((n, n))
    u = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    g = np.exp(-(u**2) / (2 * s**2))
    copy = np.fft.ifft2(np.fft.fft2(truth) * g).real + noise * rng.standard_normal((n, n))
    curve = frc_curve(truth, copy)
    u_theory = s * np.sqrt(-np.log(noise**2 / 48.0))
    assert crossing_px(curve["freq_px"], curve["frc"], 1 / 7) == pytest.approx(u_theory, abs=0.01)


def test_half_bit_threshold_reference_values():
    # van Heel & Schatz 2005: T -> 0.2071/1.2071 for large rings, T = 1 for a one-pixel ring
    assert half_bit_threshold(np.array([1]))[0] == pytest.approx(1.0, abs=1e-4)
    assert half_bit_threshold(np.array([10**12]))[0] == pytest.approx(0.171568, abs=1e-5)


def test_crossing_is_linearly_interpolated():
    freq = np.arange(6) / 10
    frc = np.array([1.0, 0.9, 0.5, 0.1, 0.05, 0.0])
    assert crossing_px(freq, frc, 0.3) == pytest.approx(0.25)
    assert crossing_px(freq, np.ones(6), 0.3) is None


def test_register_shift_is_exact_for_integer_and_precise_for_subpixel():
    a = smooth_phase((64, 64), 11)
    assert register_shift(a, np.roll(a, (5, -9), axis=(0, 1))) == pytest.approx((5.0, -9.0), abs=1e-9)
    assert register_shift(a, fourier_shift(a, (0.37, 0.81))) == pytest.approx((0.37, 0.81), abs=0.011)


def test_phase_correlation_of_stacked_objects_over_a_region():
    o = np.stack([_object(64, 1), _object(64, 2)])[None]
    shifted = fourier_shift(o.astype(np.complex128), (1.5, 2.0))
    assert phase_correlation(o, shifted, region=(8, 56, 8, 56)) > 0.98
    unrelated = np.stack([_object(64, 3), _object(64, 4)])[None]
    assert abs(phase_correlation(o, unrelated)) < 0.3


def test_mask_restricts_the_statistics():
    a = smooth_phase((48, 48), 4)
    b = a.copy()
    b[:, 40:] += 5.0 * np.random.default_rng(0).standard_normal((48, 8))  # garbage outside the mask
    mask = np.zeros((48, 48))
    mask[:, :36] = 1
    assert compare_images(a, b, mask=mask)["correlation"] > 0.999
    assert compare_images(a, b)["correlation"] < 0.9


def test_half_bit_resolution_ignores_a_low_frequency_dip():
    """A reconstruction good to ~3 px whose lowest rings differ from the reference (a broad
    background, a ramp): the old crossing took ring 1's dip under the half-bit curve (~0.6
    there) and reported the whole field (128 px) as the resolution."""
    from ptycli.stages.compare import compare_images

    n = 128
    rng = np.random.default_rng(3)
    u = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    truth = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * (u < 0.3)).real
    y, x = np.mgrid[:n, :n] / n
    background = 3.0 * truth.std() * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y)
    recon = truth + 0.05 * truth.std() * rng.standard_normal((n, n)) + background
    res = compare_images(recon, truth, phase=True, dx_a=0.1, apodize=True)
    assert res["frc"]["frc"][1] < res["frc"]["half_bit"][1]  # the dip is there
    for name in ("half_bit", "one_seventh"):
        assert 2.5 < res["resolution_px"][name] < 4.0, (name, res["resolution_px"])
        assert not res["nyquist_limited"][name]


def test_short_noise_runs_above_the_threshold_are_not_signal():
    freq = np.arange(12) / 24
    frc = np.array([1.0, 0.9, 0.8, 0.7, 0.1, 0.05, 0.5, 0.5, 0.0, 0.1, 0.0, 0.0])  # rings 6-7: noise
    assert crossing_px(freq, frc, 0.3) == pytest.approx((3 + 0.4 / 0.6) / 24)
    assert crossing_px(freq, frc, 0.3, min_run=2) == pytest.approx((7 + 0.2 / 0.5) / 24)
