"""The held-out validation loss evaluates the engines' model (beam current, background,
upsampling), not the plain far-field model.

Oracle: an independent forward computation — ``physics.model.ForwardModel.intensity`` in
complex128 with the state's beam current and background, then ``engines.noise.loss`` under
the stage's noise model — must equal ``Validator`` (float32, as in a run) to rtol 1e-4:
the Poisson loss I - D log I is a small difference of pixel terms ~20x its size, so
float32 rounding (~6e-8 per term) shows up as ~1e-5 relative (measured 1.1e-5). The
neglected features change the loss by > 10 % (checked too), far outside that tolerance.
"""

import numpy as np
import pytest

from ptycli import backend
from ptycli.engines import noise as noise_mod
from ptycli.physics.model import ForwardModel
from ptycli.recipe import load_recipe
from ptycli.stages.reconstruct_validation import Validator
from ptycli.store.state import State

M, J = 16, 7


class _Inputs:
    mask = None
    comp_masks = None


def _state(upsample, rng):
    m = M * upsample
    yy, xx = np.mgrid[:m, :m] - m / 2
    probe = (np.exp(-(yy**2 + xx**2) / (2 * (m / 6) ** 2)) * np.exp(0.3j * rng.standard_normal((m, m))))[None]
    probe = (probe * 30.0).astype(np.complex64)
    obj = np.exp(1j * 0.4 * rng.standard_normal((1, 1, m + 24, m + 24)) - 0.1 * rng.random((1, 1, m + 24, m + 24)))
    positions = m / 2 + 4 + rng.random((J, 2)) * 16  # probe centres in object px, sub-pixel
    return State(probe=probe, object=obj.astype(np.complex64), positions=positions, dx_a=0.3, energy_kev=200.0,
                 beam_current=(0.6 + 0.8 * rng.random(J)).astype(np.float32),
                 background=(5.0 + 3.0 * rng.random((M, M))).astype(np.float32),
                 positions_initial=positions.copy(), upsample=upsample, semiangle_mrad=20.0)


def _independent_loss(state, data, noise):
    model = ForwardModel(state.window, state.dx_a, state.energy_kev * 1e3, upsample=state.upsample)
    intensity = model.intensity(state.probe.astype(np.complex128), state.object.astype(np.complex128),
                                state.positions, beam_scale=state.beam_current.astype(np.float64),
                                background=state.background.astype(np.float64))
    return float(np.sum(noise_mod.loss(intensity, data, noise))) / len(data), intensity


@pytest.mark.parametrize("upsample", [1, 2])
@pytest.mark.parametrize("noise", ["poisson", "amplitude"])
def test_validation_loss_uses_beam_current_and_background(upsample, noise):
    rng = np.random.default_rng(4)
    state = _state(upsample, rng)
    plain = State(**{**state.__dict__, "beam_current": None, "background": None})
    _, intensity = _independent_loss(state, np.ones((J, M, M)), noise)
    data = rng.poisson(intensity).astype(np.float64)  # data the full model fits
    expected, _ = _independent_loss(state, data, noise)
    stage = load_recipe("lbfgs", [f"stage.0.noise.model={noise}"], None).stage[0]
    idx = np.arange(J)

    def read(sel, _stage):
        return data[np.asarray(sel)].astype(np.float32)

    validator = Validator(idx, read, backend.get_xp("cpu"), "single", float(data.sum(axis=(1, 2)).mean()), _Inputs())
    assert validator(state, stage) == pytest.approx(expected, rel=1e-4)
    # The plain model (no beam current, no background) is far off on these data: the
    # comparison above can tell the two apart.
    assert abs(validator(plain, stage) - expected) > 0.1 * abs(expected)
