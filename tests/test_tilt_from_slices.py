"""``tilt_from_slices``: a global tilt read off the slices, with the patterns unchanged.

Oracle (physics.md §4.1): the tilted propagator moves the wave by Δz·tan t per slice, so
aligned slices O with tilt t and the slices O_s moved by -s·Δz·tan t/dx with no tilt give
the same patterns, up to the window edge (there the tilted wave wraps round the window
while the shifted slices move under a fixed one: a few % here, with a 6.4 Å window). The
second state is what a reconstruction at zero tilt converges to; the constraint must turn
it back into the first: tilt within 0.2 mrad of the truth, slices aligned, and the tilted
truth's patterns. A structure whose slices are shifted by more than the search
limit (no peak inside it) gives no change.
"""

import math

import numpy as np
import pytest

from ptycli.constraints.base import Context
from ptycli.constraints.probe import fourier_shift
from ptycli.constraints.tilts import TiltFromSlicesParams, slice_shift_px, tilt_from_slices
from ptycli.physics import probe as probe_lib
from ptycli.physics.model import ForwardModel
from ptycli.store.state import State

DX, DZ, M, S = 0.2, 25.0, 32, 3


def _column_slice(rng, size=72):
    """One slice of a zone-axis crystal: smooth random phase (the same in every slice)."""
    spec = np.fft.fft2(rng.standard_normal((size, size)))
    u = np.fft.fftfreq(size)
    spec *= np.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / (2 * 0.08**2))
    phase = np.fft.ifft2(spec).real
    return np.exp(0.4j * phase / phase.std())


def _case(tilt_mrad):
    rng = np.random.default_rng(3)
    aligned = np.stack([_column_slice(rng)] * S)[None]  # (Q, S, H, W)
    d = DZ * np.tan(np.asarray(tilt_mrad) * 1e-3) / DX  # px per slice
    untilted = np.stack([fourier_shift(aligned[:, s], (-s * d[0], -s * d[1])) for s in range(S)], axis=1)
    probe = probe_lib.make_probe((M, M), DX, 300e3, 25.0, {"C10": -40.0}, counts=1e4, dtype="complex128")[None]
    grid = np.stack(np.meshgrid(np.arange(28.0, 44.0, 2.5), np.arange(28.0, 44.0, 2.5), indexing="ij"), -1)
    pos = grid.reshape(-1, 2) + 0.3
    state = State(probe=probe, object=untilted, positions=pos, dx_a=DX, energy_kev=300.0,
                  slice_thickness=np.full(S, DZ), positions_initial=pos.copy(), semiangle_mrad=25.0)
    return state, aligned


def _patterns(state, obj, tilts):
    model = ForwardModel(state.window, DX, 300e3)
    t = None if tilts is None else np.asarray(tilts, dtype=np.float64)
    return model.intensity(state.probe, obj, state.positions, dz_a=DZ, tilts_mrad=t)


@pytest.mark.parametrize("tilt", [(8.0, -4.0), (-10.0, 10.0)])
def test_tilt_is_found_and_slices_realigned_with_the_patterns_unchanged(tilt):
    state, aligned = _case(tilt)
    truth = np.tile(np.asarray(tilt), (len(state.positions), 1))
    data = _patterns(state, aligned, truth)
    # the premise: the untilted, shifted slices explain the tilted data (but for the window
    # edge), the untilted aligned ones do not
    assert np.abs(_patterns(state, state.object, None) - data).max() <= 0.06 * data.max()
    assert np.abs(_patterns(state, aligned, None) - data).max() >= 0.3 * data.max()
    out = tilt_from_slices(state, TiltFromSlicesParams(), Context())
    print(f"tilt {tilt} -> {out.tilts.mean(axis=0)}")
    assert np.abs(out.tilts - truth).max() <= 0.2
    region = (slice(20, 52), slice(20, 52))
    for s in range(1, S):
        a, b = out.object[0, 0][region], out.object[0, s][region]
        assert abs(np.vdot(a - a.mean(), b - b.mean())) / (np.linalg.norm(a - a.mean()) * np.linalg.norm(b - b.mean())) > 0.99
    after = _patterns(out, out.object, out.tilts)
    assert np.abs(after - data).max() <= 2e-3 * data.max()


def test_a_second_application_changes_nothing():
    state, _ = _case((6.0, 3.0))
    once = tilt_from_slices(state, TiltFromSlicesParams(), Context())
    twice = tilt_from_slices(once, TiltFromSlicesParams(), Context())
    np.testing.assert_allclose(twice.tilts, once.tilts, atol=0.02)


def test_shift_beyond_the_search_limit_gives_no_estimate():
    state, aligned = _case((0.0, 0.0))
    limit_px = DZ * math.tan(5e-3) / DX  # 0.62 px
    shifted = np.stack([fourier_shift(aligned[:, s], (0.0, 3.0 * s)) for s in range(S)], axis=1)
    region = (slice(20, 52), slice(20, 52))
    assert slice_shift_px(shifted, region, 4.0)[1] > 2.5  # (the taper pulls one estimate towards 0)
    assert slice_shift_px(shifted, region, limit_px) == (0.0, 0.0)
    out = tilt_from_slices(state.copy(object=shifted), TiltFromSlicesParams(max_tilt_mrad=5.0), Context())
    assert out.tilts is None and out.object is shifted  # left alone
    wide = tilt_from_slices(state.copy(object=shifted), TiltFromSlicesParams(max_tilt_mrad=40.0), Context())
    expected = -math.atan(3.0 * DX / DZ) * 1e3  # content moving +x with depth: tilt towards -x
    np.testing.assert_allclose(wide.tilts, np.tile([0.0, expected], (len(wide.tilts), 1)), atol=0.05)


def test_one_slice_is_left_alone():
    state, _ = _case((0.0, 0.0))
    one = state.copy(object=state.object[:, :1], slice_thickness=np.array([DZ]))
    assert tilt_from_slices(one, TiltFromSlicesParams(), Context()) is one


@pytest.mark.slow
def test_global_tilt_is_found_from_scratch_by_the_tilted_multislice_recipe(tmp_path, monkeypatch):
    """Multislice data of a zone-axis crystal tilted by (8, -4) mrad, reconstructed from the
    flat object at zero tilt by the LSQ-ML stage of ``tilted-multislice``: the tilt within
    1 mrad (before the constraint it stayed at 0)."""
    import zarr

    from ptycli.physics import specimen
    from ptycli.stages import init, reconstruct, simulate

    preset = specimen.lattice_atoms

    def zone_axis(extent_a, n_slices, params):  # one slice's columns in every slice (the preset shifts them)
        atoms, defects = preset(extent_a, 1, params)
        rows = [np.concatenate([atoms[:, :2], np.full((len(atoms), 1), float(s)), atoms[:, 3:]], axis=1)
                for s in range(n_slices)]
        return np.concatenate(rows), defects

    monkeypatch.setattr(specimen, "lattice_atoms", zone_axis)
    data, state, out = tmp_path / "d.zarr", tmp_path / "s.zarr", tmp_path / "o.zarr"
    simulate.run(data, preset="multislice", scan_shape=(10, 10), tilt_mrad=(8.0, -4.0))
    init.run(data, state, slices=4, slice_thickness_a=25.0)
    reconstruct.run(data, state, out, recipe="tilted-multislice", overrides=["stage.1.iterations=0"], device="cpu")
    tilts = zarr.open_group(str(out), mode="r")["tilts"][...]
    print(f"tilt from scratch: {tilts.mean(axis=0)} mrad (truth (8, -4))")
    assert np.ptp(tilts, axis=0).max() < 1e-3  # one global tilt
    np.testing.assert_allclose(tilts.mean(axis=0), [8.0, -4.0], atol=1.0)
