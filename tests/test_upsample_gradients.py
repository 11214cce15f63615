"""Far-field upsampling: the binning operator and every gradient through it (float64).

Oracles: (1) bin_pixels/bin_adjoint are adjoint, <B a, b> = <a, B^T b> to 1e-12 relative;
binning keeps the total counts; a DC-only model pattern lands in detector pixel [0, 0].
(2) For a random direction d the analytic directional derivative equals the central
difference to rtol 1e-5 through ``Evaluator`` with U = 2 (16 px model window, 8 px detector).
"""

import zlib

import numpy as np
import pytest

from ptycli.engines import common, lbfgs
from ptycli.engines.variables import Evaluator
from ptycli.physics import probe as probe_lib
from ptycli.physics.detector import bin_adjoint, bin_pixels
from ptycli.recipe import LbfgsStage
from ptycli.store.state import State

RTOL = 1e-5


@pytest.mark.parametrize("factor", [2, 3])
def test_binning_adjoint_and_counts(factor):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 6 * factor, 4 * factor))
    b = rng.standard_normal((3, 6, 4))
    lhs = np.sum(bin_pixels(a, factor) * b)
    rhs = np.sum(a * bin_adjoint(b, factor))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    assert np.sum(bin_pixels(a, factor)) == pytest.approx(np.sum(a), rel=1e-12)
    dc = np.zeros((6 * factor, 4 * factor))
    dc[0, 0] = 1.0
    assert bin_pixels(dc, factor)[0, 0] == 1.0
    # a model pixel at -1 (one finer step below DC) joins DC's detector pixel for every U >= 2
    neg = np.zeros_like(dc)
    neg[-1, 0] = 1.0
    assert bin_pixels(neg, factor)[0, 0] == 1.0


def _state(rng, m=16):
    p = probe_lib.make_probe((m, m), 0.2, 300e3, 25.0, {"C10": -60.0}, counts=1e3, dtype="complex128")
    phase = 0.3 * rng.standard_normal((1, 2, 26, 26))
    obj = (0.95 + 0.03 * rng.standard_normal(phase.shape)) * np.exp(1j * phase)
    pos = np.array([[12.3, 12.6], [12.7, 13.4], [13.2, 12.2], [13.6, 13.7]])
    return State(probe=p[None], object=obj, positions=pos, dx_a=0.2, energy_kev=300.0,
                 slice_thickness=np.array([20.0, 20.0]), tilts=0.5 * rng.standard_normal((4, 2)),
                 beam_current=1 + 0.05 * rng.standard_normal(4), background=np.full((m // 2, m // 2), 0.5),
                 semiangle_mrad=25.0, aberrations={"C10": -60.0}, detector_blur_px=0.6, upsample=2)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(5)
    state = _state(rng)
    ctx = common.make_context(state, np, "double", "poisson", None, n_e=1e3)
    data = rng.poisson(20.0, (4, 8, 8)).astype(np.float64)
    return state, Evaluator(LbfgsStage(type="lbfgs"), ctx, state), data, rng


@pytest.mark.parametrize("names, h", [
    (("object",), 1e-5), (("probe",), 1e-4), (("positions",), 1e-5), (("tilts",), 1e-4),
    (("thickness",), 1e-4), (("aberrations",), 1e-5), (("beam_current",), 1e-6), (("background",), 1e-4),
    (("detector_blur",), 1e-5),
])
def test_upsampled_gradients_match_central_difference(problem, names, h):
    state, ev, data, _ = problem
    rng = np.random.default_rng(zlib.crc32(",".join(names).encode()))  # a direction per case, whatever ran before
    x = ev.pack(state, names)
    d = {k: rng.standard_normal(np.shape(v)) + (1j * rng.standard_normal(np.shape(v)) if np.iscomplexobj(v) else 0)
         for k, v in x.items()}
    idx = np.arange(4)
    _, f0, g = ev.evaluate(state, x, idx, data, 0)
    assert g["background"].shape == (8, 8) if "background" in g else True
    numeric = (ev.evaluate(state, lbfgs.axpy(h, d, x), idx, data, 0)[1]
               - ev.evaluate(state, lbfgs.axpy(-h, d, x), idx, data, 0)[1]) / (2 * h)
    assert lbfgs.dot(g, d) == pytest.approx(numeric, rel=RTOL, abs=1e-9 * abs(f0)), names
