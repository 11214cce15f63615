"""`init` stage: positions, probe normalisation, object, provenance (physics.md §1.5, §3.4)."""

import numpy as np
import pytest

from ptycli.errors import InputError, RecipeError
from ptycli.physics import scan
from ptycli.stages import init, simulate
from ptycli.store.io import open_store
from ptycli.store.state import load_state

SMALL = dict(scan_shape=(5, 6), detector_size=32, seed=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small noise-free demo dataset with a rotated scan (known truth)."""
    return simulate.run(tmp_path_factory.mktemp("d") / "data.zarr", scan_rotation_deg=20.0, **SMALL)


def _state(path):
    return load_state(open_store(path, "state"))


def _mean_counts(data_path):
    return float(open_store(data_path, "data")["patterns"][...].astype(np.float64).sum(axis=(1, 2)).mean())


def test_round_trip_positions_and_frame_match_the_truth(data, tmp_path):
    s = _state(init.run(data, tmp_path / "s.zarr"))
    g = open_store(data, "data")
    np.testing.assert_allclose(s.positions, g["truth/positions"][...], atol=1e-9)
    np.testing.assert_array_equal(s.positions_initial, s.positions)
    assert list(s.origin_px) == g.attrs["truth"]["origin_px"]
    assert s.object.shape == g["truth/object"].shape
    np.testing.assert_array_equal(s.object, 1.0)  # vacuum
    assert s.dx_a == pytest.approx(g.attrs["truth"]["dx_a"], rel=1e-12)


def test_probe_from_aberrations_equals_the_truth_probe(data, tmp_path):
    s = _state(init.run(data, tmp_path / "s.zarr"))
    truth = open_store(data, "data")["truth/probe"][...]
    np.testing.assert_allclose(s.probe, truth, atol=1e-5 * np.abs(truth).max())
    assert s.probe.dtype == np.complex64


@pytest.mark.parametrize("options", [
    dict(), dict(probe_from="pacbed"), dict(probe_modes=3), dict(probe_modes=2, mode_kind="defocus-spread"),
    dict(defocus_a=30.0, aberrations=["C30=2e4"]),
])
def test_probe_is_normalised_to_the_mean_counts(data, tmp_path, options):
    s = _state(init.run(data, tmp_path / "s.zarr", **options))
    power = (np.abs(s.probe.astype(np.complex128)) ** 2).sum()
    assert power == pytest.approx(_mean_counts(data), rel=1e-5)
    if s.probe.shape[0] > 1:  # incoherent modes start orthogonal
        flat = s.probe.reshape(s.probe.shape[0], -1).astype(np.complex128)
        gram = flat @ flat.conj().T
        assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-4 * np.abs(gram).max()


def test_pacbed_probe_has_the_mean_pattern_as_its_spectrum(data, tmp_path):
    """P = fftshift(F⁻¹[ψ]) so |F[ifftshift(P)]|² is the DC-centred mean pattern (unitary FFT)."""
    s = _state(init.run(data, tmp_path / "s.zarr", probe_from="pacbed"))
    mean = open_store(data, "data")["patterns"][...].astype(np.float64).mean(axis=0)
    spectrum = np.abs(np.fft.fft2(np.fft.ifftshift(s.probe[0].astype(np.complex128)), norm="ortho")) ** 2
    np.testing.assert_allclose(np.fft.fftshift(spectrum), mean, atol=1e-4 * mean.max())


def test_aberrations_merge_calibration_then_flags(data, tmp_path):
    s = _state(init.run(data, tmp_path / "s.zarr", defocus_a=40.0, aberrations=["C12=5@10deg"]))
    assert s.aberrations["C10"] == -40.0 and s.aberrations["C12"] == 5.0
    assert s.aberrations["phi12"] == pytest.approx(np.deg2rad(10.0))
    assert _state(init.run(data, tmp_path / "t.zarr")).aberrations["C10"] == -80.0  # from the data


def test_slices_modes_and_thickness(data, tmp_path):
    s = _state(init.run(data, tmp_path / "s.zarr", slices=3, slice_thickness_a=12.0, object_modes=2))
    assert s.object.shape[:2] == (2, 3)
    np.testing.assert_array_equal(s.slice_thickness, [12.0] * 3)
    np.testing.assert_array_equal(s.object[0], 1.0)
    # the extra mode's weak amplitude in its first slice only: 0.25 % of the power at any depth
    np.testing.assert_allclose(np.abs(s.object[1, 0]), init.OBJECT_MODE_AMPLITUDE, rtol=1e-6)
    np.testing.assert_array_equal(s.object[1, 1:], 1.0)
    assert np.ptp(np.angle(s.object[1, 0])) > 1.0  # random phases break the tie with mode 0
    with pytest.raises(RecipeError, match="slice-thickness-a"):
        init.run(data, tmp_path / "u.zarr", slices=2)


def test_positions_file_in_angstrom(data, tmp_path):
    r = scan.raster_positions_a((5, 6), (0.6, 0.6), 20.0) + 0.3
    csv = tmp_path / "p.csv"
    csv.write_text("y,x\n" + "\n".join(f"{y:.12f},{x:.12f}" for y, x in r))
    s = _state(init.run(data, tmp_path / "s.zarr", positions=csv))
    np.testing.assert_allclose(scan.to_angstrom(s.positions, s.dx_a, s.origin_px), r, atol=1e-9)
    np.save(tmp_path / "short.npy", r[:-1])
    with pytest.raises(InputError, match="29 positions"):
        init.run(data, tmp_path / "t.zarr", positions=tmp_path / "short.npy")


def test_from_state_keeps_object_frame_and_renormalises_probe(data, tmp_path):
    first = init.run(data, tmp_path / "a.zarr", probe_from="pacbed", slices=2, slice_thickness_a=8.0)
    s = _state(init.run(data, tmp_path / "b.zarr", probe_from=str(first), object_from=first))
    a = _state(first)
    np.testing.assert_array_equal(s.object, a.object)
    assert s.origin_px == a.origin_px
    np.testing.assert_array_equal(s.slice_thickness, a.slice_thickness)
    np.testing.assert_allclose(s.probe, a.probe, atol=1e-6 * np.abs(a.probe).max())
    with pytest.raises(InputError, match="no such store"):
        init.run(data, tmp_path / "c.zarr", probe_from="pacbd")


def test_state_store_records_its_data_store(data, tmp_path):
    path = init.run(data, tmp_path / "s.zarr")
    g, d = open_store(path, "state"), open_store(data, "data")
    meta, dmeta = g.attrs["ptycli"], d.attrs["ptycli"]
    assert g.attrs["data"] == {"path": str(data), "fingerprint": dmeta["fingerprint"]}
    assert meta["inputs"][0]["fingerprint"] == dmeta["fingerprint"] and meta["inputs"][0]["kind"] == "data"
    assert [p["stage"] for p in meta["provenance"]] == ["simulate"]
    assert meta["stage"] == "init" and meta["kind"] == "state"


def test_diagnostics_are_reported_not_printed(data, tmp_path, capsys):
    notes = []
    init.run(data, tmp_path / "s.zarr", report=lambda kind, msg: notes.append((kind, msg)))
    assert notes[0][0] == "info" and "window/probe" in notes[0][1] and "R_ptych" in notes[0][1]
    # 32 px x 0.18 Å = 5.8 Å window for a 4 Å probe (80 Å x 25 mrad): below the 2x oversampling.
    assert [k for k, m in notes if "detector undersampled" in m] == ["warning"]
    assert capsys.readouterr() == ("", "")
    notes.clear()
    init.run(data, tmp_path / "t.zarr", defocus_a=30.0, report=lambda kind, msg: notes.append((kind, msg)))
    assert [k for k, _ in notes] == ["info"]  # a 1.5 Å probe is well sampled: no warning


def test_strict_fails_on_an_undersampled_setup(data, tmp_path):
    with pytest.raises(RecipeError, match="undersampled"):
        init.run(data, tmp_path / "s.zarr", strict=True)
    assert not (tmp_path / "s.zarr").exists()
    init.run(data, tmp_path / "s.zarr", strict=True, defocus_a=30.0)  # well sampled: passes


def test_strict_fails_on_a_probe_wider_than_its_window(data, tmp_path):
    notes = []
    init.run(data, tmp_path / "w.zarr", defocus_a=400.0, report=lambda k, m: notes.append((k, m)))
    assert any(k == "warning" and "wider than its window" in m for k, m in notes)
    with pytest.raises(RecipeError, match="--strict"):
        init.run(data, tmp_path / "s.zarr", defocus_a=400.0, strict=True)
    assert not (tmp_path / "s.zarr").exists()
