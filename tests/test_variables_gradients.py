"""Finite-difference checks (float64) of every refinable variable's gradient.

Oracle: for a random direction d, the analytic directional derivative ⟨∇f, d⟩ (physics.md
§5.1 packing) equals the central difference (f(x + h d) - f(x - h d)) / 2h to rtol 1e-5.
The evaluation runs through ``engines.variables.Evaluator`` on a two-slice, two-mode
problem with the amplitude noise model, so every chain rule (aberrations through the
probe, tilts through the propagator, blur through the objective) is exercised.
"""

import zlib

import numpy as np
import pytest

from ptycli.engines import common, lbfgs
from ptycli.engines import scan_regularisers as scan_reg
from ptycli.engines.variables import Evaluator
from ptycli.physics import probe as probe_lib
from ptycli.recipe import LbfgsStage
from ptycli.store.state import State

RTOL = 1e-5


def _state(rng):
    m = 16
    p = probe_lib.make_probe((m, m), 0.2, 300e3, 25.0, {"C10": -30.0, "C30": 2e4}, counts=1e3, dtype="complex128")
    probe = np.stack([p, 0.3 * np.roll(p, 1, axis=-1)])
    phase = 0.3 * rng.standard_normal((1, 2, 26, 26))
    obj = (0.95 + 0.03 * rng.standard_normal(phase.shape)) * np.exp(1j * phase)
    pos = np.array([[12.3, 12.6], [12.7, 13.4], [13.2, 12.2], [13.6, 13.7], [12.5, 14.3], [14.4, 12.8]])
    return State(probe=probe, object=obj, positions=pos, dx_a=0.2, energy_kev=300.0,
                 slice_thickness=np.array([20.0, 20.0]), tilts=0.5 * rng.standard_normal((6, 2)),
                 beam_current=1 + 0.05 * rng.standard_normal(6), background=np.full((m, m), 0.5),
                 positions_initial=pos.copy(), semiangle_mrad=25.0, aberrations={"C10": -30.0, "C30": 2e4},
                 detector_blur_px=0.7)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(4)
    state = _state(rng)
    params = LbfgsStage(type="lbfgs", regularisers=[{"type": "tv", "weight": 0.3},
                                                    {"type": "position_acceleration", "weight": 0.2,
                                                     "scan_shape": [2, 3]},
                                                    {"type": "tilt_acceleration", "weight": 0.2,
                                                     "scan_shape": [2, 3]}])
    ctx = common.make_context(state, np, "double", "amplitude", None, n_e=1e3)
    data = np.abs(rng.normal(3.0, 1.0, (6, 16, 16)))
    return state, Evaluator(params, ctx, state), data, rng


def _random_like(x, rng):
    out = {}
    for k, v in x.items():
        d = rng.standard_normal(np.shape(v))
        if np.iscomplexobj(v):
            d = d + 1j * rng.standard_normal(np.shape(v))
        out[k] = d
    return out


@pytest.mark.parametrize("names, h", [
    (("object",), 1e-5), (("probe",), 1e-4), (("positions",), 1e-5), (("tilts",), 1e-4),
    (("tilt_global",), 1e-4), (("thickness",), 1e-4), (("aberrations",), 1e-5), (("beam_current",), 1e-6),
    (("background",), 1e-4), (("detector_blur",), 1e-5), (("probe", "aberrations"), 1e-5),
])
def test_directional_derivative_matches_central_difference(problem, names, h):
    state, ev, data, _ = problem
    rng = np.random.default_rng(zlib.crc32(",".join(names).encode()))  # a direction per case, whatever ran before
    idx = np.arange(6)
    x = ev.pack(state, names)
    if "aberrations" in names:  # away from c = 0 so the probe-through-aberrations chain is general
        x["aberrations"] = 0.1 * rng.standard_normal(x["aberrations"].shape)
    d = _random_like(x, rng)
    _, f0, g = ev.evaluate(state, x, idx, data, 0)
    analytic = lbfgs.dot(g, d)
    fp = ev.evaluate(state, lbfgs.axpy(h, d, x), idx, data, 0)[1]
    fm = ev.evaluate(state, lbfgs.axpy(-h, d, x), idx, data, 0)[1]
    numeric = (fp - fm) / (2 * h)
    assert np.isfinite(f0)
    assert analytic == pytest.approx(numeric, rel=RTOL, abs=1e-9 * abs(f0)), names


def test_chunked_evaluation_equals_one_call(problem):
    state, ev, data, _ = problem
    x = ev.pack(state, ("object", "probe", "tilts", "beam_current"))
    a = ev.evaluate(state, x, np.arange(6), data, 0)
    b = ev.evaluate(state, x, np.arange(6), data, 0, chunk=4)
    assert a[1] == pytest.approx(b[1], rel=1e-12)
    for k in x:
        assert np.allclose(a[2][k], b[2][k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("axes", ["both", "fast", "slow"])
def test_scan_acceleration_gradient_and_zero_on_affine_grid(axes):
    rng = np.random.default_rng(1)
    v = rng.standard_normal((12, 2))
    _, grad = scan_reg.acceleration(v, (3, 4), axes)
    d = rng.standard_normal(v.shape)
    h = 1e-6
    fd = (scan_reg.acceleration(v + h * d, (3, 4), axes)[0] - scan_reg.acceleration(v - h * d, (3, 4), axes)[0]) / (2 * h)
    assert float((grad * d).sum()) == pytest.approx(fd, rel=1e-7)
    yy, xx = np.mgrid[0:3, 0:4]
    grid = np.stack([1.3 * yy + 0.2 * xx + 5, -0.1 * yy + 0.9 * xx + 2], axis=-1).reshape(12, 2)
    assert scan_reg.acceleration(grid, (3, 4), axes)[0] == pytest.approx(0.0, abs=1e-20)


def test_affine_pull_gradient_and_zero_for_affine_positions():
    rng = np.random.default_rng(2)
    p0 = np.stack(np.mgrid[0:4, 0:5], axis=-1).reshape(-1, 2).astype(float)
    affine = p0 @ np.array([[1.02, 0.05], [-0.03, 0.98]]) + [3.0, -1.0]
    assert scan_reg.affine_pull(affine, p0)[0] == pytest.approx(0.0, abs=1e-20)
    p = affine + 0.1 * rng.standard_normal(p0.shape)
    _, grad = scan_reg.affine_pull(p, p0)
    d = rng.standard_normal(p.shape)
    h = 1e-6
    fd = (scan_reg.affine_pull(p + h * d, p0)[0] - scan_reg.affine_pull(p - h * d, p0)[0]) / (2 * h)
    assert float((grad * d).sum()) == pytest.approx(fd, rel=1e-6)


def test_scan_shape_is_inferred_from_a_row_major_raster():
    p0 = np.stack(np.mgrid[0:3, 0:5], axis=-1).reshape(-1, 2) * 2.5 + 10
    assert scan_reg.infer_scan_shape(p0) == (3, 5)
