"""The Evaluator's compiled path (engines/compiled_eval.py) against the array model.

Oracle: physics/model.py, whose gradients the finite-difference tests check
(test_variables_gradients.py). Where the compiled parts apply (object, probe, positions
and tilts only, the plain far-field model), the loss and the gradients must equal the array model's to
float32 rounding; everywhere else the Evaluator must fall back to it.
"""

import numpy as np
import pytest
from test_fused_kernels import _on_fftw_kernels

from ptycli import backend
from ptycli.engines import common, compiled_eval
from ptycli.engines.variables import Evaluator
from ptycli.physics import probe as probe_lib
from ptycli.recipe import LbfgsStage
from ptycli.store.state import State

pytestmark = pytest.mark.skipif(backend.kernels(np) is None, reason="compiled kernels need Numba")


@pytest.fixture(autouse=True)
def _fftw_kernels(monkeypatch):
    """FFTW as the host FFT (the kernels run their FFTs through its plans), else skip."""
    _on_fftw_kernels(monkeypatch)


def _state(rng, slices, modes, tilts=False):
    m = 32
    p = probe_lib.make_probe((m, m), 0.2, 300e3, 25.0, {"C10": -40.0}, counts=1e3, dtype="complex64")
    probe = np.stack([p] + [0.3 * np.roll(p, k, axis=-1) for k in range(1, modes)]).astype(np.complex64)
    phase = 0.2 * rng.standard_normal((1, slices, 60, 60))
    obj = ((0.95 + 0.03 * rng.standard_normal(phase.shape)) * np.exp(1j * phase)).astype(np.complex64)
    iy, ix = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    pos = 17.37 + 4.3 * np.stack([iy.ravel(), ix.ravel()], axis=1)  # probe centres, px
    return State(probe=probe, object=obj, positions=pos, dx_a=0.2, energy_kev=300.0,
                 slice_thickness=np.full(slices, 15.0), positions_initial=pos.copy(),
                 tilts=(0.8 * rng.standard_normal((len(pos), 2))).astype(np.float32) if tilts else None,
                 semiangle_mrad=25.0, aberrations={"C10": -40.0})


def _evaluate(monkeypatch, state, noise, compiled, data, mask=None, names=("object", "probe"), moved=None,
              thickness=None):
    """Evaluator.evaluate on every position, through the compiled parts or the array model
    (``moved``, ``thickness``: x's positions and Δz other than the state's)."""
    ctx = common.make_context(state, np, "single", noise, None, mask=mask, n_e=1e3)
    ev = Evaluator(LbfgsStage(type="lbfgs"), ctx, state)
    x = ev.pack(state, names)
    if moved is not None:
        x["positions"] = moved
    if thickness is not None:
        x["thickness"] = thickness
    assert compiled_eval.applies(ev, state, x)
    ran = []
    kernel_chunk = compiled_eval.kernel_chunk
    with monkeypatch.context() as m:
        if compiled:
            m.setattr(compiled_eval, "kernel_chunk", lambda *a: ran.append(kernel_chunk(*a)) or ran[-1])
        else:
            m.setattr(compiled_eval, "applies", lambda *a: False)
        out = ev.evaluate(state, x, np.arange(len(data)), data, 0)
    assert (len(ran) > 0 and all(r is not None for r in ran)) if compiled else not ran
    return out


@pytest.mark.parametrize("slices, modes, tilts, noise, names", [
    (1, 2, False, "poisson", ("object", "probe")), (1, 1, False, "amplitude", ("object", "probe")),
    (3, 2, True, "poisson", ("object", "probe")), (2, 1, False, "intensity", ("object", "probe")),
    (1, 2, False, "poisson", ("object", "probe", "positions")), (3, 1, True, "amplitude", ("positions",)),
    (2, 2, False, "anscombe", ("probe", "positions")),
    (3, 2, True, "poisson", ("object", "probe", "tilts")), (2, 1, False, "amplitude", ("tilts", "positions")),
    (3, 1, True, "amplitude", ("object", "tilt_global")), (1, 1, True, "amplitude", ("probe", "tilts")),
    (3, 2, True, "poisson", ("object", "thickness", "tilts")), (2, 1, False, "amplitude", ("thickness",))])
def test_compiled_evaluation_equals_the_array_model(monkeypatch, slices, modes, tilts, noise, names):
    rng = np.random.default_rng(slices * 10 + modes)
    state = _state(rng, slices, modes, tilts)
    data = rng.poisson(30.0, (len(state.positions), 32, 32)).astype(np.float32)
    mask = (rng.random((32, 32)) > 0.1).astype(np.float32)
    # x's positions, not the state's, are the ones evaluated
    moved = state.positions + rng.uniform(-0.4, 0.4, state.positions.shape) if "positions" in names else None
    thicker = np.array([17.5]) if "thickness" in names else None  # x's Δz, not the state's 15 Å
    fast, ref = (_evaluate(monkeypatch, state, noise, c, data, mask, names, moved, thicker) for c in (True, False))
    assert fast[0] == pytest.approx(ref[0], rel=1e-5)
    assert set(fast[2]) == set(ref[2]) == set(names)
    for name in names:
        got, want = np.asarray(fast[2][name]), np.asarray(ref[2][name])
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.linalg.norm(got - want) <= 2e-5 * np.linalg.norm(want), name
    if "thickness" in names:  # the moved Δz changes the loss
        assert ref[0] != pytest.approx(_evaluate(monkeypatch, state, noise, False, data, mask)[0], rel=1e-6)
    if moved is not None:  # the moved positions change the loss
        assert ref[0] != pytest.approx(_evaluate(monkeypatch, state, noise, False, data, mask)[0], rel=1e-6)


def test_the_compiled_path_steps_aside_for_what_it_does_not_model():
    rng = np.random.default_rng(1)
    state = _state(rng, 1, 1)
    ctx = common.make_context(state, np, "single", "poisson", None, n_e=1e3)
    ev = Evaluator(LbfgsStage(type="lbfgs"), ctx, state)
    x = ev.pack(state, ("object", "probe"))
    assert compiled_eval.applies(ev, state, x)
    assert compiled_eval.applies(ev, state, {**x, "positions": np.asarray(state.positions)})
    assert compiled_eval.applies(ev, state, {**x, "tilts": np.zeros((len(state.positions), 2))})
    assert not compiled_eval.applies(ev, state, {**x, "aberrations": np.zeros(3)})
    for change in ({"background": np.full((32, 32), 0.5, np.float32)},
                   {"beam_current": np.full(len(state.positions), 1.1, np.float32)},
                   {"detector_blur_px": 0.5}):
        assert not compiled_eval.applies(ev, state.copy(**change), x), change
