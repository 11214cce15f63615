"""Every regulariser's gradient against central finite differences in float64.

Oracle: for a random direction v, dR(z + t v)/dt at t = 0 equals Re Σ conj(∇_z R) v
(§5.1 convention), for object and probe. Tolerance rtol 1e-6 with step 1e-6.
"""

import numpy as np
import pytest

from ptycli.constraints.registry import REGULARISERS, regularise, validate_regularisers
from ptycli.store.state import State



CASES = [
    ("l2", {}), ("l2", {"variable": "probe"}), ("l1", {}), ("l1", {"variable": "probe"}),
    ("phase_l1", {}), ("absorption_l1", {}), ("spectrum_l1", {}),
    ("tv", {}), ("tv", {"part": "phase"}), ("tv", {"variable": "probe", "part": "phase"}),
    ("tikhonov", {}), ("tikhonov", {"part": "phase"}), ("tikhonov", {"variable": "probe"}),
    ("atv", {"p": 1.0, "q": 0.05}), ("atv", {"p": 2.0, "q": 1.0, "part": "phase"}),
    ("atv", {"p": 1.5, "q": 0.2, "variable": "probe", "part": "phase"}),
    ("depth_tv", {}), ("depth_tv", {"part": "phase"}), ("depth_tikhonov", {}), ("depth_tikhonov", {"part": "phase"}),
    ("mixed_variance", {"sigma_per_px": 0.2}), ("probe_window_penalty", {"radius_a": 0.4, "taper_a": 0.3}),
    ("probe_fourier_penalty", {"radius_mrad": 15.0, "width_mrad": 2.0}),
]


def _state(seed=0):
    rng = np.random.default_rng(seed)
    shape = (2, 3, 8, 8)
    obj = rng.uniform(0.7, 1.0, shape) * np.exp(1j * rng.uniform(-0.8, 0.8, shape))
    probe = (rng.normal(size=(2, 8, 8)) + 1j * rng.normal(size=(2, 8, 8))) + 0.5
    return State(probe=probe, object=obj, positions=np.zeros((1, 2)), dx_a=0.2, energy_kev=300.0,
                 semiangle_mrad=20.0, iteration=3)


def _value(spec, params, state):
    return float(spec.value_and_grad(state, params)[0])


def test_every_regulariser_is_covered():
    assert {name for name, _ in CASES} == set(REGULARISERS)


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in CASES])
def test_gradient_matches_finite_difference(name, kw):
    spec = REGULARISERS[name]
    params = spec.params(weight=0.7, **kw)
    st = _state()
    value, grads = spec.value_and_grad(st, params)
    assert np.isfinite(float(value))
    rng = np.random.default_rng(1)
    for field, grad in grads.items():
        z = getattr(st, field)
        assert grad.shape == z.shape and grad.dtype == z.dtype
        v = rng.normal(size=z.shape) + 1j * rng.normal(size=z.shape)
        h = 1e-6
        plus = _value(spec, params, st.copy(**{field: z + h * v}))
        minus = _value(spec, params, st.copy(**{field: z - h * v}))
        fd = (plus - minus) / (2 * h)
        analytic = float(np.real(np.sum(np.conj(grad) * v)))
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-8 * max(1.0, abs(float(value))))


def test_known_values():
    st = _state()
    lam = 0.5
    v, _ = REGULARISERS["l2"].value_and_grad(st, REGULARISERS["l2"].params(weight=lam))
    assert float(v) == pytest.approx(lam * np.sum(np.abs(st.object - 1) ** 2), rel=1e-12)
    v, g = REGULARISERS["tikhonov"].value_and_grad(st, REGULARISERS["tikhonov"].params(weight=lam))
    o = st.object
    lap = sum(np.roll(o, s, a) for s in (1, -1) for a in (-1, -2)) - 4 * o
    np.testing.assert_allclose(g["object"], -2 * lam * lap, atol=1e-12)  # 2λ D^H D u = -2λ Δu
    v, g = REGULARISERS["depth_tikhonov"].value_and_grad(st, REGULARISERS["depth_tikhonov"].params(weight=lam))
    expected = 2 * lam * np.stack([o[:, 0] - o[:, 1], 2 * o[:, 1] - o[:, 0] - o[:, 2], o[:, 2] - o[:, 1]], 1)
    np.testing.assert_allclose(g["object"], expected, atol=1e-12)  # one-sided at the ends (§7.12)


def test_scheduled_weight_and_when_in_regularise():
    pairs = validate_regularisers([
        {"type": "l2", "weight": {"schedule": "linear", "start": 1.0, "end": 0.0, "iterations": 10}},
        {"type": "l2", "variable": "probe", "weight": 2.0, "when": {"after": 5}},
    ])
    st = _state()
    base = float(np.sum(np.abs(st.object - 1) ** 2))
    total, grads = regularise(st, pairs)  # iteration 3: weight 0.7, probe term not yet active
    assert float(total) == pytest.approx(0.7 * base, rel=1e-12)
    assert set(grads) == {"object"}
    total, grads = regularise(st.copy(iteration=6), pairs)
    assert float(total) == pytest.approx(0.4 * base + 2 * np.sum(np.abs(st.probe) ** 2), rel=1e-12)
    assert set(grads) == {"object", "probe"}
