"""PyPty's tilts before / after the specimen (physics/tilt_modes.py), float64.

Oracles: a before- or after-specimen tilt t_x with tan(t)/λ = one detector pixel rolls the
far-field pattern by exactly +1 pixel in k_x; for one slice the two kinds are the
same map (1e-10); with two slices they differ; every gradient matches the central difference
(rtol 1e-5) through ``Evaluator``.
"""

import zlib

import numpy as np
import pytest

from ptycli.engines import common, lbfgs
from ptycli.engines.variables import Evaluator
from ptycli.physics import probe as probe_lib
from ptycli.physics.electron import wavelength_a
from ptycli.physics.model import ForwardModel
from ptycli.recipe import LbfgsStage
from ptycli.store.state import State

RTOL = 1e-5


@pytest.mark.parametrize("kind", ["before", "after"])
def test_tilt_moves_pattern_by_tan_t_over_lambda(kind):
    # tan(t)/λ = one detector pixel 1/(M dx): the ramp is periodic on the window, so the
    # pattern is rolled by exactly +1 pixel in k_x (1e-10 of the peak)
    m, dx = 64, 0.1
    t_mrad = 1e3 * np.arctan(wavelength_a(300e3) / (m * dx))
    p = probe_lib.make_probe((m, m), dx, 300e3, 10.0, {}, counts=1.0, dtype="complex128")[None]
    obj = np.exp(0.2j * np.random.default_rng(2).standard_normal((1, 2, 80, 80)))
    model = ForwardModel((m, m), dx, 300e3)
    pos = np.array([[40.0, 40.0]])
    kw = {f"tilts_{kind}_mrad": np.array([[0.0, t_mrad]])}
    single = obj[:, :1]
    base = model.intensity(p, single, pos)[0]
    moved = model.intensity(p, single, pos, **kw)[0]
    assert np.max(np.abs(moved - np.roll(base, 1, axis=-1))) < 1e-10 * np.max(base)


def test_before_equals_after_for_one_slice_only():
    rng = np.random.default_rng(1)
    m = 16
    p = probe_lib.make_probe((m, m), 0.2, 300e3, 25.0, {"C10": -40.0}, counts=1.0, dtype="complex128")[None]
    obj = np.exp(0.3j * rng.standard_normal((1, 2, 24, 24)))
    pos = np.array([[12.3, 11.6], [11.2, 12.8]])
    t = np.array([[1.5, -2.0], [0.5, 3.0]])
    model = ForwardModel((m, m), 0.2, 300e3)
    one = [model.intensity(p, obj[:, :1], pos, **{k: t}) for k in ("tilts_before_mrad", "tilts_after_mrad")]
    assert np.max(np.abs(one[0] - one[1])) < 1e-10 * np.max(one[0])
    two = [model.intensity(p, obj, pos, dz_a=30.0, **{k: t}) for k in ("tilts_before_mrad", "tilts_after_mrad")]
    assert np.max(np.abs(two[0] - two[1])) > 1e-3 * np.max(two[0])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    m = 16
    p = probe_lib.make_probe((m, m), 0.2, 300e3, 25.0, {"C10": -30.0}, counts=1e3, dtype="complex128")
    obj = np.exp(0.3j * rng.standard_normal((1, 2, 26, 26)))
    pos = np.array([[12.3, 12.6], [12.7, 13.4], [13.2, 12.2], [13.6, 13.7]])
    state = State(probe=p[None], object=obj, positions=pos, dx_a=0.2, energy_kev=300.0,
                  slice_thickness=np.array([20.0, 20.0]), tilts=rng.standard_normal((4, 2)),
                  tilts_before=rng.standard_normal((4, 2)), tilts_after=rng.standard_normal((4, 2)),
                  semiangle_mrad=25.0, aberrations={"C10": -30.0})
    ctx = common.make_context(state, np, "double", "amplitude", None, n_e=1e3)
    data = np.abs(rng.normal(3.0, 1.0, (4, m, m)))
    return state, Evaluator(LbfgsStage(type="lbfgs"), ctx, state), data, rng


@pytest.mark.parametrize("names, h", [
    (("tilts_before",), 1e-4), (("tilts_after",), 1e-4), (("tilts", "tilts_before", "tilts_after"), 1e-4),
    (("probe", "positions", "tilts_before"), 1e-5), (("object", "tilts_after"), 1e-5),
])
def test_tilt_mode_gradients_match_central_difference(problem, names, h):
    state, ev, data, _ = problem
    # a direction of its own per case: drawn from the module's shared generator it depended on
    # which tests of the module ran before on the same worker (pytest-xdist), and one order
    # drew a direction where the central difference's own error exceeded the tolerance
    rng = np.random.default_rng(zlib.crc32(",".join(names).encode()))
    x = ev.pack(state, names)
    d = {k: rng.standard_normal(np.shape(v)) + (1j * rng.standard_normal(np.shape(v)) if np.iscomplexobj(v) else 0)
         for k, v in x.items()}
    idx = np.arange(4)
    _, f0, g = ev.evaluate(state, x, idx, data, 0)
    numeric = (ev.evaluate(state, lbfgs.axpy(h, d, x), idx, data, 0)[1]
               - ev.evaluate(state, lbfgs.axpy(-h, d, x), idx, data, 0)[1]) / (2 * h)
    assert lbfgs.dot(g, d) == pytest.approx(numeric, rel=RTOL, abs=1e-9 * abs(f0)), names
