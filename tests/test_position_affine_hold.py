"""position_affine's ``hold``: in mode project, the named parts of the fitted affine map stay
those of the nominal scan (the shipped multislice recipe holds the rotation: an unknown
detector rotation is otherwise fitted as a scan rotation that turns the reconstruction)."""

import numpy as np
import pytest

from ptycli.constraints import positions as cpos
from ptycli.constraints.base import Context
from ptycli.store.state import State


def _grid(ny=6, nx=8, step=4.0):
    yy, xx = np.mgrid[:ny, :nx] * step + 20.0
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def _distorted(seed, ny=7, nx=7):
    """Nominal grid and positions under scale 1.03, rotation 0.04, anisotropy 0.02, shear -0.01,
    a shift and local noise."""
    r0 = _grid(ny, nx)
    parts = {k: np.asarray(m) for k, m in cpos._PARTS.items()}
    a = 1.03 * parts["scale"] + 0.04 * parts["rotation"] + 0.02 * parts["anisotropy"] - 0.01 * parts["shear"]
    rng = np.random.default_rng(seed)
    pos = (r0 - r0.mean(0)) @ a + r0.mean(0) + [0.4, -0.2] + rng.normal(size=r0.shape) * 0.05
    return r0, pos


def _part(m, name):
    """The coefficient of one part of a 2x2 linear map (the parts are orthogonal, each of norm √2)."""
    return float((np.asarray(m) * np.asarray(cpos._PARTS[name])).sum() / 2)


def _project(pos, r0, hold):
    st = State(probe=np.ones((1, 8, 8), np.complex64), object=np.ones((1, 1, 64, 64), np.complex64),
               positions=pos, positions_initial=r0, dx_a=0.5, energy_kev=300.0)
    return cpos.affine(st, cpos.AffineParams(mode="project", hold=hold), Context()).positions


@pytest.mark.parametrize("hold", [["rotation"], ["scale"], ["rotation", "scale"]])
def test_held_parts_are_nominal_and_the_others_those_of_the_full_fit(hold):
    """On a square raster the parts are orthogonal: holding some leaves the others as fitted."""
    r0, pos = _distorted(3)
    free, _ = cpos.fit_affine(pos, r0)
    out = _project(pos, r0, hold)
    fitted, _ = cpos.fit_affine(out, r0)  # the result is an affine map of the nominal grid
    for name in cpos._PARTS:
        want = (1.0 if name == "scale" else 0.0) if name in hold else _part(free[:2], name)
        assert _part(fitted[:2], name) == pytest.approx(want, abs=1e-10), name
    np.testing.assert_allclose(out.mean(0), pos.mean(0), atol=1e-10)  # the shift is kept
    np.testing.assert_allclose(out, np.concatenate([r0 - r0.mean(0), np.ones((len(r0), 1))], 1) @ fitted,
                               atol=1e-10)


@pytest.mark.parametrize("hold", [["rotation"], ["scale"], ["rotation", "scale"]])
def test_held_fit_is_least_squares_on_a_rectangular_raster(hold):
    """6x8: the residual is orthogonal to every free part and to the shift."""
    r0, pos = _distorted(5, 6, 8)
    out = _project(pos, r0, hold)
    fitted, _ = cpos.fit_affine(out, r0)
    for name in hold:
        assert _part(fitted[:2], name) == pytest.approx(1.0 if name == "scale" else 0.0, abs=1e-10)
    d, res = r0 - r0.mean(0), pos - out
    for name, m in cpos._PARTS.items():
        if name not in hold:
            assert float((res * (d @ np.asarray(m))).sum()) == pytest.approx(0.0, abs=1e-9), name
    np.testing.assert_allclose(res.sum(0), 0.0, atol=1e-9)


def test_without_hold_project_is_the_full_affine_fit():
    r0, pos = _distorted(4)
    t, design = cpos.fit_affine(pos, r0)
    np.testing.assert_allclose(_project(pos, r0, []), design @ t, atol=1e-12)
    assert _part(t[:2], "rotation") == pytest.approx(0.04, abs=5e-3)


@pytest.mark.parametrize("mode", ["remove", "remove_scale"])
def test_hold_outside_project_is_refused(mode):
    with pytest.raises(ValueError, match='applies to mode = "project" only'):
        cpos.AffineParams(mode=mode, hold=["rotation"])
