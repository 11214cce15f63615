"""Near-field ptychography (physics/nearfield.py) through the model and the engines.

Oracles: the detector map and its adjoint satisfy ⟨T a, b⟩ = ⟨a, Tᴴ b⟩ (rtol 1e-12); z = 0
gives W = F⁻¹Ψ = e_S, the exit wave itself (held ifftshifted like a pattern); the gradients through it match central differences (float64, rtol 1e-5); distances beyond
the sampled limit N dx²/λ are refused with the numbers; a known-probe reconstruction of
near-field data with a different defocus per measurement recovers the object phase.
"""

import numpy as np
import pytest

from ptycli.engines import common, lbfgs
from ptycli.engines.variables import Evaluator
from ptycli.errors import InputError
from ptycli.physics import electron
from ptycli.physics.model import ForwardModel
from ptycli.physics.nearfield import NearField, critical_distance_a
from ptycli.recipe import LbfgsStage
from ptycli.store.state import State

WL = electron.wavelength_a(300e3)


def test_adjoint_dot_product_and_zero_distance_is_the_exit_wave():
    rng = np.random.default_rng(0)
    shape, dx = (16, 16), 0.5
    z = np.array([0.0, 100.0, -180.0])
    T = NearField(shape, dx, WL, z, dtype="complex128")
    a = rng.standard_normal((3, 2, 1, 16, 16)) + 1j * rng.standard_normal((3, 2, 1, 16, 16))
    b = rng.standard_normal(a.shape) + 1j * rng.standard_normal(a.shape)
    lhs = np.vdot(T.apply(a), b)
    rhs = np.vdot(a, T.adjoint(b))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    exit_wave = np.fft.ifftshift(np.fft.ifft2(a[0], norm="ortho"), axes=(-2, -1))  # held like a pattern
    np.testing.assert_allclose(T.apply(a)[0], exit_wave, atol=1e-12)


def test_distance_beyond_the_sampling_limit_is_refused():
    limit = critical_distance_a((16, 16), 0.5, WL)
    NearField((16, 16), 0.5, WL, [0.99 * limit])
    with pytest.raises(InputError, match="Fresnel number"):
        NearField((16, 16), 0.5, WL, [1.01 * limit])


def _problem(rng, n=9):
    m, dx = 16, 0.5
    yy, xx = np.mgrid[:m, :m] - m // 2
    probe = (np.exp(-(yy**2 + xx**2) / 30.0) * np.exp(1j * 0.02 * (yy**2 + xx**2)))[None] * 10.0
    phase = 0.4 * np.exp(-((np.mgrid[:26, :26] - 13) ** 2).sum(0) / 20.0) + 0.1 * rng.standard_normal((26, 26))
    obj = np.exp(1j * phase)[None, None]
    g = np.arange(3) * 2.0 + 11.0
    pos = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) + 0.3
    z = np.linspace(40.0, 190.0, n)  # below N dx²/λ = 203 Å
    state = State(probe=probe.astype(np.complex128), object=np.ones_like(obj), positions=pos, dx_a=dx,
                  energy_kev=300.0, positions_initial=pos.copy(), semiangle_mrad=None)
    return state, obj, z


def test_nearfield_gradients_match_central_differences():
    rng = np.random.default_rng(1)
    state, obj, z = _problem(rng)
    state.object = obj * (1 + 0.05 * rng.standard_normal(obj.shape))
    params = LbfgsStage(type="lbfgs", nearfield_defocus_a=z.tolist())
    ev = Evaluator(params, common.make_context(state, np, "double", "amplitude", None, n_e=100.0), state)
    data = np.abs(rng.normal(2.0, 0.5, (9, 16, 16)))
    for names, h in ((("object",), 1e-6), (("probe",), 1e-6), (("positions",), 1e-6), (("beam_current",), 1e-6)):
        x = ev.pack(state, names)
        d = {k: rng.standard_normal(np.shape(v)) * (1 + 1j if np.iscomplexobj(v) else 1) for k, v in x.items()}
        g = ev.evaluate(state, x, np.arange(9), data, 0)[2]
        fd = (ev.evaluate(state, lbfgs.axpy(h, d, x), np.arange(9), data, 0)[1]
              - ev.evaluate(state, lbfgs.axpy(-h, d, x), np.arange(9), data, 0)[1]) / (2 * h)
        assert lbfgs.dot(g, d) == pytest.approx(fd, rel=1e-5), names


def test_lbfgs_recovers_an_object_from_nearfield_data():
    rng = np.random.default_rng(2)
    state, obj, z = _problem(rng)
    model = ForwardModel((16, 16), state.dx_a, 300e3)
    T = NearField((16, 16), state.dx_a, WL, z, dtype="complex128")
    data = model.intensity(state.probe, obj, state.positions, detector_transform=T)
    params = LbfgsStage(type="lbfgs", nearfield_defocus_a=z.tolist(), refine={"object": True, "probe": False})
    engine = lbfgs.LbfgsEngine(params, common.make_context(state, np, "double", "amplitude", None, n_e=1.0), state)
    idx = np.arange(9)
    _, first, _ = engine.ev.evaluate(state, {}, idx, data, 0)
    for it in range(40):
        last = engine.update(state, idx, data, it)
    region = (slice(10, 17), slice(10, 17))  # well illuminated
    truth, rec = np.angle(obj[0, 0][region]), np.angle(state.object[0, 0][region])
    corr = np.corrcoef(truth.ravel(), (rec - np.angle(np.exp(1j * (rec - truth)).mean())).ravel())[0, 1]
    print(f"near-field: loss {first:.4g} -> {last:.4g}, phase correlation {corr:.4f}")
    assert last < 1e-2 * first and corr >= 0.95
