"""`simulate` stage: determinism, dose, truth layout, and the forward model it used."""

import numpy as np
import pytest
import zarr

from ptycli.physics import electron
from ptycli.stages import simulate
from ptycli.store.calibration import load_calibration
from ptycli.store.io import open_store

SMALL = dict(scan_shape=(5, 6), detector_size=32, seed=7)  # 30 positions of 32x32: a few ms each


def _open(path):
    return open_store(path, "data")


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = simulate.run(tmp_path / "a.zarr", preset="low-dose", position_jitter_a=0.1, **SMALL)
    b = simulate.run(tmp_path / "b.zarr", preset="low-dose", position_jitter_a=0.1, **SMALL)
    c = simulate.run(tmp_path / "c.zarr", preset="low-dose", position_jitter_a=0.1, **{**SMALL, "seed": 8})
    ga, gb, gc = _open(a), _open(b), _open(c)
    for name in ("patterns", "truth/object", "truth/probe", "truth/positions", "truth/atoms"):
        np.testing.assert_array_equal(ga[name][...], gb[name][...], err_msg=name)
    assert not np.array_equal(ga["patterns"][...], gc["patterns"][...])
    assert not np.array_equal(ga["truth/positions"][...], gc["truth/positions"][...])


def test_counts_match_the_dose(tmp_path):
    dose, step = 2.0e4, 0.6
    g = _open(simulate.run(tmp_path / "d.zarr", dose=dose, scan_step_a=step, **SMALL))
    n_e = dose * step * step  # counts per frame = dose x scan cell area (physics.md §8.4)
    assert load_calibration(dict(g.attrs)).counts_per_frame == pytest.approx(n_e, rel=1e-12)
    clean = g["truth/patterns_noiseless"][...].astype(np.float64)
    # A phase object (|t| = 1) and a unitary FFT conserve the probe power exactly (float32 sums).
    np.testing.assert_allclose(clean.sum(axis=(1, 2)), n_e, rtol=1e-5)
    noisy = g["patterns"][...]
    assert np.all(noisy == np.round(noisy)) and noisy.min() >= 0  # Poisson counts
    total, expected = noisy.sum(dtype=np.float64), n_e * noisy.shape[0]
    assert abs(total - expected) < 5 * np.sqrt(expected)  # 5 sigma of the Poisson total


def test_noise_free_without_dose(tmp_path):
    g = _open(simulate.run(tmp_path / "n.zarr", **SMALL))
    np.testing.assert_array_equal(g["patterns"][...], g["truth/patterns_noiseless"][...])
    np.testing.assert_allclose(g["patterns"][...].sum(axis=(1, 2)), simulate.NOISE_FREE_COUNTS, rtol=1e-5)


def test_truth_shapes_dims_and_attrs(tmp_path):
    path = simulate.run(tmp_path / "t.zarr", preset="multislice", probe_modes=2, slices=3,
                        tilt_gradient_mrad=(1.0, -2.0), **SMALL)
    g = _open(path)
    truth = g.attrs["truth"]
    j, m = 30, 32
    assert g["patterns"].shape == (j, m, m) and g["patterns"].dtype == np.float32
    obj = g["truth/object"]
    assert obj.shape[:2] == (1, 3) and obj.dtype == np.complex64
    assert obj.metadata.dimension_names == ("object_mode", "slice", "y", "x")
    assert g["truth/probe"].shape == (2, m, m)
    assert g["truth/positions"].shape == (j, 2) and g["truth/tilts"].shape == (j, 2)
    tilts = g["truth/tilts"][...]
    np.testing.assert_allclose(np.abs(tilts).max(axis=0), [1.0, 2.0], rtol=1e-12)  # ramp value at the edge
    assert truth["n_slices"] == 3 and truth["slice_thickness_a"] == 25.0
    cal = g.attrs["calibration"]
    assert cal["detector_shape"] == [m, m] and cal["scan_shape"] == [5, 6]
    assert cal["aberrations"]["C10"] == -cal["defocus_a"]  # abTEM sign: defocus = -C10
    probe_power = (np.abs(g["truth/probe"][...]) ** 2).sum()
    assert probe_power == pytest.approx(cal["counts_per_frame"], rel=1e-5)


def test_patterns_are_dc_centred_far_fields_of_the_truth(tmp_path):
    """Recompute one pattern with numpy: |F[P(r - f) O_window]|², DC moved to (M//2, M//2)."""
    g = _open(simulate.run(tmp_path / "f.zarr", position_jitter_a=0.05, **SMALL))
    probe, obj = g["truth/probe"][0].astype(np.complex128), g["truth/object"][0, 0].astype(np.complex128)
    pos = g["truth/positions"][...]
    m = probe.shape[0]
    u = np.fft.fftfreq(m)
    for j in (0, 17):
        corner = np.floor(pos[j]).astype(int) - m // 2
        f = pos[j] - np.floor(pos[j])
        ramp = np.exp(-2j * np.pi * (u[:, None] * f[0] + u[None, :] * f[1]))
        shifted = np.fft.ifft2(np.fft.fft2(probe) * ramp)
        window = obj[corner[0] : corner[0] + m, corner[1] : corner[1] + m]
        ref = np.fft.fftshift(np.abs(np.fft.fft2(shifted * window, norm="ortho")) ** 2)
        np.testing.assert_allclose(g["patterns"][j], ref, atol=1e-4 * ref.max())


def test_object_phase_is_sigma_times_the_atoms_potential(tmp_path):
    opts = simulate.resolve_options("demo", **SMALL)
    obj, spec = simulate.truth_object(opts, (60, 70))
    sigma = electron.sigma_rad_per_v_a(opts.energy_ev)
    np.testing.assert_allclose(np.angle(obj[0]), sigma * spec.potential_v_a, atol=1e-5)
    assert 0.5 < np.angle(obj).max() < 1.2  # strong but far from wrapping (physics of the demo)


def test_jitter_moves_true_positions_within_three_sigma(tmp_path):
    sigma_a = 0.2
    g = _open(simulate.run(tmp_path / "j.zarr", position_jitter_a=sigma_a, **SMALL))
    opts = simulate.resolve_options("demo", position_jitter_a=sigma_a, **SMALL)
    nominal = simulate.geometry(opts)["nominal_a"] / opts.dx_a + np.asarray(g.attrs["truth"]["origin_px"])
    shift = g["truth/positions"][...] - nominal
    assert 0 < np.abs(shift).max() <= 3 * sigma_a / opts.dx_a + 1e-9


def test_presets_are_data_and_flags_override():
    assert set(simulate.PRESETS) == {"demo", "multislice", "mixed-state", "low-dose", "large"}
    opts = simulate.resolve_options("mixed-state", energy_kev=200.0)
    assert opts.probe_modes == 3 and opts.energy_kev == 200.0
    assert simulate.resolve_options("low-dose").dose <= 1e3
    ms = simulate.resolve_options("multislice")
    assert 4 <= ms.slices <= 8
    opts = simulate.resolve_options("demo", aberrations=["C12=20@30deg", "C30=1e4"], defocus_a=50.0)
    assert opts.polar_aberrations == pytest.approx({"C10": -50.0, "C12": 20.0, "phi12": np.pi / 6, "C30": 1e4})


def test_large_preset_is_not_built_by_resolving_it():
    opts = simulate.resolve_options("large")
    assert opts.scan_shape == (64, 64) and opts.detector_size == 128


def test_store_is_a_complete_data_store(tmp_path):
    path = simulate.run(tmp_path / "s.zarr", **SMALL)
    meta = zarr.open_group(str(path), mode="r").attrs["ptycli"]
    assert meta["kind"] == "data" and meta["stage"] == "simulate" and meta["status"] == "complete"
    assert meta["options"]["seed"] == 7
