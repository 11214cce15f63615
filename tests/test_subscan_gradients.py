"""Sub-scans: each marked subset of positions uses the shared probe with its own aberration
phase. Oracles: the directional derivative of the probe, the shared aberrations and the
per-sub-scan aberrations equals the central difference (float64, rtol 1e-5); a sub-scan's
probe equals the probe made directly with the summed aberrations (rtol 1e-6 of max |P|)."""

import zlib

import numpy as np
import pytest

from ptycli.engines import common, lbfgs
from ptycli.engines.variables import Evaluator, check_engine
from ptycli.errors import RecipeError
from ptycli.physics import probe as probe_lib
from ptycli.recipe import EpieStage, LbfgsStage
from ptycli.store.state import State

RTOL = 1e-5
AB = {"C10": -40.0}


def _state(rng, m=16):
    p = probe_lib.make_probe((m, m), 0.2, 300e3, 25.0, AB, counts=1e3, dtype="complex128")
    phase = 0.3 * rng.standard_normal((1, 1, 26, 26))
    obj = (0.95 + 0.03 * rng.standard_normal(phase.shape)) * np.exp(1j * phase)
    pos = np.array([[12.3, 12.6], [12.7, 13.4], [13.2, 12.2], [13.6, 13.7], [12.1, 13.1], [13.9, 12.4]])
    return State(probe=p[None], object=obj, positions=pos, dx_a=0.2, energy_kev=300.0, semiangle_mrad=25.0,
                 aberrations=dict(AB), subscan=np.array([0, 1, 2, 0, 1, 2], dtype=np.int32),
                 subscan_aberrations=[{}, {"C10": 15.0}, {"C10": -10.0, "C30": 3e4}])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(6)
    state = _state(rng)
    ctx = common.make_context(state, np, "double", "poisson", None, n_e=1e3)
    data = rng.poisson(4.0, (6, 16, 16)).astype(np.float64)
    params = LbfgsStage(type="lbfgs", aberration_terms=["C10", "C12"])
    return state, Evaluator(params, ctx, state), data, rng


def test_subscan_probe_equals_probe_with_summed_aberrations(problem):
    state, ev, _, _ = problem
    direct = probe_lib.make_probe((16, 16), 0.2, 300e3, 25.0, {"C10": -50.0, "C30": 3e4}, counts=1e3,
                                  dtype="complex128")
    got = ev.probe_of(state, {}, 2)[0]
    assert np.max(np.abs(got - direct)) < 1e-6 * np.max(np.abs(direct))
    assert "C30" in [n[:3] for n in ev.ab_names]  # an offset's term gets a basis row


@pytest.mark.parametrize("names, h", [
    (("probe",), 1e-4), (("aberrations",), 1e-5), (("subscan_aberrations",), 1e-5),
    (("probe", "aberrations", "subscan_aberrations"), 1e-5), (("object", "positions"), 1e-5),
])
def test_subscan_gradients_match_central_difference(problem, names, h):
    state, ev, data, _ = problem
    rng = np.random.default_rng(zlib.crc32(",".join(names).encode()))  # a direction per case, whatever ran before
    x = ev.pack(state, names)
    for k in ("aberrations", "subscan_aberrations"):
        if k in x:
            x[k] = 0.1 * rng.standard_normal(x[k].shape)
    d = {k: rng.standard_normal(np.shape(v)) + (1j * rng.standard_normal(np.shape(v)) if np.iscomplexobj(v) else 0)
         for k, v in x.items()}
    idx = np.array([5, 0, 3, 1, 4, 2])
    _, f0, g = ev.evaluate(state, x, idx, data[idx], 0, chunk=4)
    numeric = (ev.evaluate(state, lbfgs.axpy(h, d, x), idx, data[idx], 0, chunk=4)[1]
               - ev.evaluate(state, lbfgs.axpy(-h, d, x), idx, data[idx], 0, chunk=4)[1]) / (2 * h)
    assert lbfgs.dot(g, d) == pytest.approx(numeric, rel=RTOL, abs=1e-9 * abs(f0)), names


def test_unpack_keeps_offsets_relative(problem):
    state, ev, _, _ = problem
    st = state.copy(subscan_aberrations=[dict(d) for d in state.subscan_aberrations])
    x = ev.pack(st, ("subscan_aberrations",))
    x["subscan_aberrations"][1, ev.ab_names.index("C10")] = ev.ab_norms[ev.ab_names.index("C10")] * 5.0
    ev.unpack(st, x)
    assert st.subscan_aberrations[1]["C10"] == pytest.approx(20.0, rel=1e-9)
    assert st.subscan_aberrations[2]["C10"] == pytest.approx(-10.0, rel=1e-9)
    assert st.aberrations == AB


def test_plain_model_engines_refuse_subscan_states(problem):
    state, _, _, _ = problem
    with pytest.raises(RecipeError, match="sub-scan aberrations"):
        check_engine(EpieStage(type="epie"), state)
    check_engine(LbfgsStage(type="lbfgs"), state)  # accepted
