"""The built-in specimen and the scan geometry (physics.md §1.5)."""

import math

import numpy as np
import pytest

from ptycli.errors import InputError
from ptycli.physics import scan, specimen


# ----------------------------------------------------------------------------- specimen
def test_gaussian_atom_integral_and_centroid():
    """∫ peak exp(-r²/2σ²) d²r = 2πσ² peak, and the centroid is the atom's sub-pixel position."""
    dx, sigma, peak = 0.1, 0.35, 700.0
    atom = np.array([[3.237, 2.861, 0.0, peak]])
    v = specimen.gaussian_potential((64, 64), dx, atom, sigma).astype(np.float64)
    assert v.sum() * dx * dx == pytest.approx(2 * math.pi * sigma**2 * peak, rel=1e-4)
    y, x = np.meshgrid(np.arange(64) * dx, np.arange(64) * dx, indexing="ij")
    centroid = np.array([(v * y).sum(), (v * x).sum()]) / v.sum()
    np.testing.assert_allclose(centroid, atom[0, :2], atol=1e-4)
    assert v.max() <= peak


def test_atoms_at_the_canvas_edge_are_cut_not_wrapped():
    atom = np.array([[0.0, 0.0, 0.0, 100.0]])
    v = specimen.gaussian_potential((40, 40), 0.1, atom, 0.3)
    assert v[0, 0] == pytest.approx(100.0, rel=1e-5)
    assert v[-1, -1] == 0.0 and v[-1, 0] == 0.0


def test_every_slice_holds_its_own_sublattice():
    params = specimen.SpecimenParams(amorphous_per_a2=0.0, defects=False)
    atoms, _ = specimen.lattice_atoms((24.0, 24.0), 4, params)
    heavy = atoms[atoms[:, 3] == params.heavy_v_a]
    for s in range(4):  # slice s is the corner lattice shifted by s·a/S along x
        xs = np.mod(heavy[heavy[:, 2] == s, 1] - params.lattice_a / 4, params.lattice_a)
        np.testing.assert_allclose(xs, s * params.lattice_a / 4, atol=1e-12)
    light = atoms[atoms[:, 3] == params.light_v_a]
    assert np.all(light[:, 2] == 2)


def test_defects_vacancy_and_dopant():
    params = specimen.SpecimenParams(amorphous_per_a2=0.0)
    spec = specimen.build_specimen((150, 150), 0.2, 3, params, seed=0)
    vy, vx, vs = spec.defects["vacancy"]
    dy, dx_, ds = spec.defects["dopant"]
    assert (vs, ds) == (0.0, 2.0)
    on_site = np.hypot(spec.atoms[:, 0] - vy, spec.atoms[:, 1] - vx) < 1e-9
    assert not np.any(on_site & (spec.atoms[:, 2] == 0))  # the vacancy is empty in its slice
    assert spec.potential_v_a[0, int(round(vy / 0.2)), int(round(vx / 0.2))] < 1.0
    assert spec.potential_v_a[2, int(round(dy / 0.2)), int(round(dx_ / 0.2))] > params.heavy_v_a


def test_transmission_is_exp_i_sigma_v_in_float32():
    v = np.linspace(0, 1000, 12, dtype=np.float32).reshape(3, 4)
    t = specimen.transmission(v, 6.5262e-4)
    assert t.dtype == np.complex64
    np.testing.assert_allclose(np.angle(t), 6.5262e-4 * v, atol=1e-6)
    np.testing.assert_allclose(np.abs(t), 1.0, atol=1e-6)


def test_specimen_is_deterministic_for_a_seed():
    p = specimen.SpecimenParams()
    a = specimen.build_specimen((80, 80), 0.2, 2, p, seed=3)
    b = specimen.build_specimen((80, 80), 0.2, 2, p, seed=3)
    c = specimen.build_specimen((80, 80), 0.2, 2, p, seed=4)
    np.testing.assert_array_equal(a.potential_v_a, b.potential_v_a)
    assert not np.array_equal(a.potential_v_a, c.potential_v_a)


# ----------------------------------------------------------------------------- scan
def test_raster_is_row_major_centred_with_the_step():
    r = scan.raster_positions_a((3, 4), (0.5, 0.7))
    assert r.shape == (12, 2)
    np.testing.assert_allclose(r.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(r[1] - r[0], [0.0, 0.7])  # j = iy*nx + ix: x runs fastest
    np.testing.assert_allclose(r[4] - r[0], [0.5, 0.0])


def test_rotation_follows_physics_md():
    """(y', x') = (x sin θ + y cos θ, x cos θ - y sin θ): 90° sends (0, 1) to (1, 0)."""
    r = scan.rotate_positions_a(np.array([[0.0, 1.0], [1.0, 0.0]]), 90.0)
    np.testing.assert_allclose(r, [[1.0, 0.0], [0.0, -1.0]], atol=1e-12)
    r30 = scan.rotate_positions_a(np.array([[2.0, 3.0]]), 30.0)
    t = math.radians(30)
    np.testing.assert_allclose(r30, [[3 * math.sin(t) + 2 * math.cos(t), 3 * math.cos(t) - 2 * math.sin(t)]])


def test_flips_reverse_scan_directions():
    r = scan.raster_positions_a((2, 3), (1.0, 1.0))
    f = scan.raster_positions_a((2, 3), (1.0, 1.0), flip_y=True, flip_x=True)
    np.testing.assert_allclose(f, -r)


@pytest.mark.parametrize("rotation", [0.0, 17.0, -120.0])
def test_origin_and_canvas_fit_every_window_with_the_margin(rotation):
    m, dx, margin = 32, 0.17, 5
    r = scan.raster_positions_a((7, 9), (0.45, 0.6), rotation)
    origin = scan.origin_px(r, dx, (m, m), margin)
    assert all(float(o).is_integer() for o in origin)
    p = scan.to_pixels(r, dx, origin)
    shape = scan.object_shape(p, (m, m), margin)
    corner = np.floor(p).astype(int) - m // 2
    assert corner.min(axis=0).tolist() == [margin, margin]  # tight: the integer origin wastes nothing
    assert np.all(corner.max(axis=0) + m + margin == np.asarray(shape))
    assert scan.windows_fit(p, (m, m), shape)
    assert not scan.windows_fit(p + [0, shape[1]], (m, m), shape)
    np.testing.assert_allclose(scan.to_angstrom(p, dx, origin), r, atol=1e-12)


def test_positions_file_csv_with_header_and_npy(tmp_path):
    r = scan.raster_positions_a((2, 2), (0.5, 0.5))
    csv = tmp_path / "pos.csv"
    csv.write_text("y_a,x_a\n" + "\n".join(f"{y},{x}" for y, x in r))
    np.testing.assert_allclose(scan.read_positions_a(csv, 4), r)
    npy = tmp_path / "pos.npy"
    np.save(npy, r)
    np.testing.assert_array_equal(scan.read_positions_a(npy), r)


@pytest.mark.parametrize("content,message", [
    ("1,2,3\n4,5,6\n", "shape"), ("1,2\nx,y\n", "not numeric"), ("1,2\n3,nan\n", "NaN"),
])
def test_bad_positions_files_are_input_errors(tmp_path, content, message):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(InputError, match=message):
        scan.read_positions_a(p)


def test_positions_count_must_match_the_data(tmp_path):
    p = tmp_path / "p.npy"
    np.save(p, np.zeros((3, 2)))
    with pytest.raises(InputError, match="3 positions, but the data has 4"):
        scan.read_positions_a(p, 4)
    with pytest.raises(InputError, match="no such"):
        scan.read_positions_a(tmp_path / "missing.csv")
