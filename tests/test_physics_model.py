"""Finite-difference checks of ForwardModel.loss_and_grads (float64, rel err < 1e-6).

Each gradient is checked as a directional derivative: dL/dε along a random direction δ
equals Re Σ conj(∇) δ (physics.md §5.1), central differences with h = 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest


from ptycli.engines.noise import NOISE_MODELS, objective
from ptycli.physics.model import ForwardModel



M = 16
DZ_A = 4.0
H_STEP = 1e-5  # truncation O(h²) ~ 1e-10; roundoff ~ 1e-16 L/h stays below 1e-8
REL_TOL = 1e-6


def _problem(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    model = ForwardModel((M, M), 0.25, 200e3, band_limit="hard")
    probe = rng.normal(size=(2, M, M)) + 1j * rng.normal(size=(2, M, M))
    obj = np.exp(0.3j * rng.normal(size=(2, 3, 36, 36)) - 0.05 * rng.random((2, 3, 36, 36)))
    positions = np.array([[12.3, 14.6], [17.55, 11.4], [20.7, 19.35]])
    tilts = rng.uniform(-2, 2, size=(3, 2))
    background = 0.3 + rng.random((M, M))
    scale = np.array([1.0, 0.9, 1.1])
    probe *= np.sqrt(2000.0 / np.sum(np.abs(probe) ** 2))
    # Data near the model (a perturbed object, Poisson noise) keeps L small, so FD roundoff is too.
    truth = model.intensity(probe, obj * np.exp(0.1j * rng.normal(size=obj.shape)), positions, dz_a=DZ_A)
    data = rng.poisson(truth).astype(float) + 1.0
    mask = (rng.random((M, M)) > 0.2).astype(float)
    return dict(model=model, probe=probe, obj=obj, positions=positions, tilts=tilts, data=data,
                background=background, scale=scale, mask=mask, rng=rng)


def _objective(p: dict, noise: str, compressed=None):
    if compressed is not None:
        return objective(compressed[1], compressed_masks=compressed[0])
    return objective(p["data"], noise, p["mask"], eps=0.0 if noise == "amplitude" else None)


def _total(p: dict, noise: str, compressed=None, **over) -> float:
    kw = dict(probe=p["probe"], obj=p["obj"], positions=p["positions"], tilts_mrad=p["tilts"],
              background=p["background"], beam_scale=p["scale"], dz_a=DZ_A)
    kw.update(over)
    loss, _ = p["model"].loss_and_grads(kw.pop("probe"), kw.pop("obj"), kw.pop("positions"),
                                        _objective(p, noise, compressed), want=(), **kw)
    return float(np.sum(loss))


def _grads(p: dict, noise: str, compressed=None) -> dict:
    want = ("object", "probe", "positions", "tilts", "thickness", "beam_scale", "background")
    _, g = p["model"].loss_and_grads(p["probe"], p["obj"], p["positions"], _objective(p, noise, compressed),
                                     dz_a=DZ_A, tilts_mrad=p["tilts"], background=p["background"],
                                     beam_scale=p["scale"], want=want)
    return g


def _fd(p: dict, noise: str, name: str, delta, compressed=None) -> float:
    key = {"object": "obj", "probe": "probe", "positions": "positions", "tilts": "tilts_mrad",
           "beam_scale": "beam_scale", "background": "background"}.get(name)
    if name == "thickness":
        plus = _total(p, noise, compressed, dz_a=DZ_A + H_STEP)
        minus = _total(p, noise, compressed, dz_a=DZ_A - H_STEP)
    else:
        base = {"obj": p["obj"], "probe": p["probe"], "positions": p["positions"], "tilts_mrad": p["tilts"],
                "beam_scale": p["scale"], "background": p["background"]}[key]
        plus = _total(p, noise, compressed, **{key: base + H_STEP * delta})
        minus = _total(p, noise, compressed, **{key: base - H_STEP * delta})
    return (plus - minus) / (2 * H_STEP)


def _direction(p: dict, name: str, grad):
    rng = p["rng"]
    if name == "thickness":
        return 1.0
    shape = np.shape(grad)
    real = rng.normal(size=shape)
    return real + 1j * rng.normal(size=shape) if np.iscomplexobj(grad) else real


def _check_all(p: dict, noise: str, compressed=None) -> None:
    grads = _grads(p, noise, compressed)
    assert set(grads) == {"object", "probe", "positions", "tilts", "thickness", "beam_scale", "background"}
    for name, g in grads.items():
        delta = _direction(p, name, g)
        analytic = float(np.sum(np.real(np.conj(g) * delta)))
        numeric = _fd(p, noise, name, delta, compressed)
        assert abs(analytic - numeric) <= REL_TOL * max(abs(numeric), 1e-300), (name, analytic, numeric)


@pytest.mark.parametrize("noise", NOISE_MODELS)
def test_loss_gradients_match_finite_differences(noise: str) -> None:
    _check_all(_problem(1), noise)


def test_compressed_loss_gradients_match_finite_differences() -> None:
    p = _problem(2)
    rng = p["rng"]
    masks = rng.random((4, M, M))
    signals = rng.random((3, 4)) * 100.0
    _check_all(p, "amplitude", compressed=(masks, signals))


def test_single_slice_has_zero_geometry_gradients_and_matches_fd() -> None:
    p = _problem(3)
    p["obj"] = p["obj"][:, :1]
    grads = _grads(p, "poisson")
    assert float(grads["thickness"]) == 0.0 and not np.any(grads["tilts"])
    for name in ("object", "probe", "positions"):
        delta = _direction(p, name, grads[name])
        analytic = float(np.sum(np.real(np.conj(grads[name]) * delta)))
        assert abs(analytic - _fd(p, "poisson", name, delta)) <= REL_TOL * abs(analytic)


def test_float32_inputs_stay_float32() -> None:
    p = _problem(4)
    probe = p["probe"].astype(np.complex64)
    obj = p["obj"].astype(np.complex64)
    data = p["data"].astype(np.float32)
    loss, g = p["model"].loss_and_grads(probe, obj, p["positions"].astype(np.float32), objective(data), dz_a=DZ_A,
                                        want=("object", "probe", "positions"))
    assert loss.dtype == np.float32
    assert g["object"].dtype == np.complex64 and g["probe"].dtype == np.complex64
    assert g["positions"].dtype == np.float32
