"""Refinement from realistic starts (issue 22, part 5) on ``simulate`` data with known truth.

Oracles:
- probe aberrations: defocus 30 % off, no C12 (truth 20 Å) and C30 25 % off, refined by the
  lbfgs engine through the Cartesian χ coefficients (probe pixels fixed) from the flat
  starting object: C10 within 8 Å, C12 within 5 Å and 15°, C30 within 10 %, each error at
  least halved;
- positions: with 0.2 Å rms scan jitter and the starting defocus 25 % off (60, 100 Å for
  80), the shipped ``single-slice`` recipe removes at least half of the rms position error;
  40 % off (48, 112 Å) it never ends above the nominal scan's (it had: the positions took
  the probe's defocus error as a scan magnification, 0.28 -> 0.37 / 0.52 Å on this scan);
- thickness: a multislice object from scratch with Δz 20 % off (20 Å for 25) ends within
  5 % with the shipped ``tilted-multislice`` recipe;
- global tilt in srtio3_tilted's geometry (a 39 Å zone-axis crystal, thinner than the depth
  resolution): LSQ-ML that ties the slices every 3 iterations after reading their shift
  into the tilt finds (6, -4) mrad within 1 mrad; the shipped recipe (free slices) does not
  (it found (0.6, -0.6) and (-1.4, 0.4) in two runs): xfail, benchmarks/RESULTS_refinement.md finding 3.
"""

import math

import numpy as np
import pytest
import zarr

from ptycli.engines.positions import rms_error
from ptycli.physics.aberrations import polar_to_cartesian
from ptycli.physics import specimen
from ptycli.stages import init, reconstruct, simulate


@pytest.mark.slow
def test_defocus_twofold_astigmatism_and_spherical_aberration_from_a_wrong_start(tmp_path):
    data, state, out = tmp_path / "d.zarr", tmp_path / "s.zarr", tmp_path / "o.zarr"
    truth = {"C10": -80.0, "C12": 20.0, "phi12": math.radians(30.0), "C30": 1e5}
    simulate.run(data, preset="demo", scan_shape=(10, 10), aberrations={"C12": 20.0, "phi12": truth["phi12"],
                                                                        "C30": 1e5})
    init.run(data, state, defocus_a=104.0, aberrations={"C30": 0.75e5})
    reconstruct.run(data, state, out, recipe="lbfgs", device="cpu",
                    overrides=["stage.0.iterations=25", "stage.0.refine.aberrations=0", "stage.0.refine.probe=false"])
    ab = zarr.open_group(str(out), mode="r").attrs["state"]["aberrations"]
    cart, want = polar_to_cartesian(ab), polar_to_cartesian(truth)
    c12_err = math.hypot(cart["C12a"] - want["C12a"], cart["C12b"] - want["C12b"])
    angle = math.degrees((ab.get("phi12", 0.0) - truth["phi12"] + math.pi / 2) % math.pi - math.pi / 2)
    print(f"C10 {ab['C10']:.2f} (truth -80, start -104), C12 {ab.get('C12', 0):.2f} Å at "
          f"{math.degrees(ab.get('phi12', 0)):.1f}° (truth 20 at 30°, start 0), C30 {ab['C30']:.0f} (truth 1e5)")
    assert abs(ab["C10"] + 80.0) <= 8.0
    assert c12_err <= 5.0 and abs(angle) <= 15.0
    assert abs(ab["C30"] - 1e5) <= 1e4


@pytest.fixture(scope="module")
def jittered(tmp_path_factory):
    root = tmp_path_factory.mktemp("jitter")
    simulate.run(root / "d.zarr", preset="demo", scan_shape=(12, 12), position_jitter_a=0.2, seed=1)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("defocus_a, most", [(60.0, 0.5), (100.0, 0.5), (48.0, 1.0), (112.0, 1.0)])
def test_position_refinement_with_a_defocus_error_never_makes_positions_worse(jittered, defocus_a, most):
    data, state, out = jittered / "d.zarr", jittered / f"s{defocus_a:g}.zarr", jittered / f"o{defocus_a:g}.zarr"
    init.run(data, state, defocus_a=defocus_a)
    reconstruct.run(data, state, out, recipe="single-slice", device="cpu")
    truth = zarr.open_group(str(data), mode="r")["truth/positions"][...]
    group = zarr.open_group(str(out), mode="r")
    before = rms_error(group["positions_initial"][...], truth)
    after = rms_error(group["positions"][...], truth)
    print(f"defocus {defocus_a:g} Å (truth 80): rms position error {before * 0.18:.3f} -> {after * 0.18:.3f} Å")
    assert after <= most * before


@pytest.mark.slow
def test_slice_thickness_from_scratch_within_five_percent(tmp_path):
    data, state, out = tmp_path / "d.zarr", tmp_path / "s.zarr", tmp_path / "o.zarr"
    simulate.run(data, preset="multislice", scan_shape=(10, 10))  # 4 slices of 25 Å
    init.run(data, state, slices=4, slice_thickness_a=20.0)
    reconstruct.run(data, state, out, recipe="tilted-multislice", device="cpu")
    dz = zarr.open_group(str(out), mode="r")["slice_thickness"][...]
    print(f"thickness 20 -> {dz[0]:.2f} Å (truth 25)")
    assert np.ptp(dz) == 0 and abs(dz[0] - 25.0) <= 0.05 * 25.0


# LSQ-ML as in tilted-multislice, with the slices tied every 3 iterations once their common
# shift has been read into the tilt (tilt_from_slices runs before tie_slices: registry.ORDER)
TIED_CYCLES = """recipe = "ptycli/1"
[[stage]]
type = "lsqml"
iterations = 50
grouping = {kind = "sparse", size = 32}
refine = {object = true, probe = 2}
[[stage.constraints]]
type = "fix_probe_intensity"
[[stage.constraints]]
type = "tilt_from_slices"
when = {after = 4, every = 3}
[[stage.constraints]]
type = "tie_slices"
when = {after = 4, every = 3}
"""
TILT_39A = (6.0, -4.0)


@pytest.fixture(scope="module")
def thin_crystal(tmp_path_factory):
    """srtio3_tilted's geometry (200 kV, 20 mrad, 10 slices of 3.905 Å: 39 Å against
    λ/α² ≈ 63 Å; 0.2375 Å pixels, 0.4 Å steps) on a smaller scan and detector, tilted by
    TILT_39A. The preset's lattice with one slice's atoms in every slice: columns along the
    beam (the preset itself shifts its heavy atoms from slice to slice, an inclined column)."""
    root = tmp_path_factory.mktemp("thin")
    preset = specimen.lattice_atoms

    def columns(extent_a, n_slices, params):
        atoms, defects = preset(extent_a, 1, params)
        rows = [np.concatenate([atoms[:, :2], np.full((len(atoms), 1), float(s)), atoms[:, 3:]], axis=1)
                for s in range(n_slices)]
        return np.concatenate(rows), defects

    mp = pytest.MonkeyPatch()
    mp.setattr(specimen, "lattice_atoms", columns)
    try:
        simulate.run(root / "d.zarr", preset="multislice", energy_kev=200.0, semiangle_mrad=20.0, slices=10,
                     slice_thickness_a=3.905, tilt_mrad=TILT_39A, scan_shape=(14, 14), scan_step_a=(0.4, 0.4),
                     detector_size=64, dx_a=0.2375, dose=1e5)
    finally:
        mp.undo()
    init.run(root / "d.zarr", root / "s.zarr", slices=10, slice_thickness_a=3.905)
    return root


def _tilt_found(root, recipe, name):
    reconstruct.run(root / "d.zarr", root / "s.zarr", root / name, recipe=recipe, device="cpu")
    tilt = zarr.open_group(str(root / name), mode="r")["tilts"][...].mean(axis=0)
    print(f"{name}: tilt {tilt} mrad (truth {TILT_39A})")
    return tilt


@pytest.mark.slow
def test_global_tilt_in_a_crystal_thinner_than_the_depth_resolution_with_tied_slices(thin_crystal, tmp_path):
    (tmp_path / "tied.toml").write_text(TIED_CYCLES)
    np.testing.assert_allclose(_tilt_found(thin_crystal, str(tmp_path / "tied.toml"), "tied.zarr"), TILT_39A, atol=1.0)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="free slices take up most of a global tilt in a 39 Å crystal "
                   "(benchmarks/RESULTS_refinement.md finding 3): (0.6, -0.6), (-1.4, 0.4) mrad for (6, -4)")
def test_global_tilt_in_a_crystal_thinner_than_the_depth_resolution_shipped(thin_crystal):
    np.testing.assert_allclose(_tilt_found(thin_crystal, "tilted-multislice", "shipped.zarr"), TILT_39A, atol=1.0)
