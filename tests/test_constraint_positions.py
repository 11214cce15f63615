"""Position and tilt constraints."""

import numpy as np
import pytest

from ptycli.constraints import positions as cpos
from ptycli.constraints import tilts as ct
from ptycli.constraints.base import Context
from ptycli.errors import RecipeError
from ptycli.store.state import State




def _grid(n=6, step=4.0):
    yy, xx = np.mgrid[:n, :n] * step + 20.0
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def _state(pos, r0, **kw):
    return State(probe=np.ones((1, 8, 8), np.complex64), object=np.ones((1, 1, 64, 64), np.complex64),
                 positions=pos, positions_initial=r0, dx_a=0.5, energy_kev=300.0, **kw)


def test_recenter_restores_nominal_centroid():
    r0 = _grid()
    rng = np.random.default_rng(0)
    pos = r0 + rng.normal(size=r0.shape) * 0.3 + [1.7, -2.2]
    out = cpos.recenter(_state(pos, r0), cpos.RecenterParams(), Context()).positions
    np.testing.assert_allclose(out.mean(0), r0.mean(0), atol=1e-12)
    np.testing.assert_allclose(out - pos, np.broadcast_to((out - pos)[0], pos.shape), atol=1e-12)  # a pure shift


def test_recenter_without_reference_names_what_is_missing():
    with pytest.raises(RecipeError, match="initial positions"):
        cpos.recenter(_state(_grid(), None), cpos.RecenterParams(), Context())


def test_max_update_clips_displacement_length_keeping_direction():
    r0 = _grid()
    d = np.zeros_like(r0)
    d[0] = [3.0, 4.0]  # 5 px = 2.5 Å
    d[1] = [0.3, 0.4]  # 0.5 px: inside the limit
    out = cpos.max_update(_state(r0 + d, r0), cpos.MaxUpdateParams(max_distance_a=1.0, reference="initial"),
                          Context()).positions
    np.testing.assert_allclose(out[0] - r0[0], [1.2, 1.6], atol=1e-12)  # 2 px along (3, 4)
    np.testing.assert_allclose(out[1:], (r0 + d)[1:], atol=1e-12)
    prev = r0 + 0.5
    out2 = cpos.max_update(_state(r0 + d, r0), cpos.MaxUpdateParams(max_distance_a=0.1),
                           Context(positions_before=prev)).positions
    assert np.hypot(*(out2 - prev).T).max() <= 0.2 + 1e-12


def test_affine_project_and_remove():
    r0 = _grid()
    c0 = r0.mean(0)
    a = np.array([[1.02, 0.03], [-0.01, 0.97]])
    affine_pos = (r0 - c0) @ a.T + c0 + [0.4, -0.2]
    rng = np.random.default_rng(1)
    noise = rng.normal(size=r0.shape) * 0.05
    st = _state(affine_pos + noise, r0)
    projected = cpos.affine(st, cpos.AffineParams(mode="project"), Context()).positions
    t, design = cpos.fit_affine(affine_pos + noise, r0)
    np.testing.assert_allclose(projected, design @ t, atol=1e-12)
    assert np.abs(projected - affine_pos).max() < 0.05
    removed = cpos.affine(st, cpos.AffineParams(mode="remove"), Context()).positions
    t2, _ = cpos.fit_affine(removed, r0)
    np.testing.assert_allclose(t2[:2], np.eye(2), atol=1e-10)  # no rotation/scale/shear left
    # what remains: the nominal grid at the fitted translation plus the non-affine residual
    np.testing.assert_allclose(removed, (r0 - c0) + t[2] + (affine_pos + noise - design @ t), atol=1e-12)


def test_affine_remove_scale_keeps_all_but_the_isotropic_scale():
    """A probe's defocus error shows as a scan magnification; a real distortion (anisotropic
    scale, shear, rotation, drift) and the local corrections must survive."""
    r0 = _grid()
    c0 = r0.mean(0)
    a = np.array([[1.06, 0.03], [-0.01, 1.00]])  # isotropic scale 1.03
    rng = np.random.default_rng(2)
    pos = (r0 - c0) @ a.T + c0 + [0.4, -0.2] + rng.normal(size=r0.shape) * 0.05
    out = cpos.affine(_state(pos, r0), cpos.AffineParams(mode="remove_scale"), Context()).positions
    t, _ = cpos.fit_affine(pos, r0)
    t_out, _ = cpos.fit_affine(out, r0)
    s = 0.5 * (t[0, 0] + t[1, 1])
    np.testing.assert_allclose(t_out[:2], t[:2] - (s - 1) * np.eye(2), atol=1e-10)
    assert 0.5 * np.trace(t_out[:2]) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(t_out[2], t[2], atol=1e-12)  # translation kept
    np.testing.assert_allclose(out - pos, -(s - 1) * (r0 - c0), atol=1e-12)  # nothing else moved


def test_tilt_smooth_keeps_constant_and_damps_alternating_tilts():
    r0 = _grid(8)
    const = np.tile([[1.5, -0.5]], (64, 1))
    st = _state(r0, r0, tilts=const)
    np.testing.assert_allclose(ct.tilt_smooth(st, ct.TiltSmoothParams(), Context()).tilts, const, atol=1e-12)
    checker = ((np.arange(64) // 8 + np.arange(64) % 8) % 2 * 2 - 1.0)[:, None] * [1.0, 1.0]
    out = ct.tilt_smooth(_state(r0, r0, tilts=checker), ct.TiltSmoothParams(sigma_steps=1.0), Context()).tilts
    assert np.abs(out).max() < 0.5 * np.abs(checker).max()
    assert ct.scan_step_px(r0) == pytest.approx(4.0)
