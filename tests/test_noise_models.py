"""Noise models of physics.md §5.2: reference values at I = 4, D = 9, derivatives, masks."""

from __future__ import annotations

import numpy as np
import pytest

from ptycli.engines import noise
from ptycli.errors import RecipeError

# physics.md §5.2 check at I = 4, D = 9 with ε = 0: (ℓ, ℓ')
EXPECTED = {"amplitude": (1.0, -0.5), "intensity": (25.0, -10.0), "poisson": (2.2984, -1.25),
            "anscombe": (0.94131, -0.46385)}


@pytest.mark.parametrize("model", noise.NOISE_MODELS)
def test_values_at_i4_d9(model: str) -> None:
    i, d = np.full((1, 1, 1), 4.0), np.full((1, 1, 1), 9.0)
    value, slope = EXPECTED[model]
    assert float(noise.loss(i, d, model, eps=0.0)[0]) == pytest.approx(value, rel=1e-4)
    assert float(noise.dloss_dI(i, d, model, eps=0.0)[0, 0, 0]) == pytest.approx(slope, rel=1e-4)


@pytest.mark.parametrize("model", noise.NOISE_MODELS)
def test_derivative_matches_finite_difference_and_minimum_at_data(model: str) -> None:
    rng = np.random.default_rng(0)
    i = rng.uniform(0.5, 20, (2, 4, 4))
    d = rng.poisson(8.0, (2, 4, 4)).astype(float)
    eps = 0.0 if model == "amplitude" else None
    h = 1e-6
    fd = (noise.pixel_loss(i + h, d, model, eps) - noise.pixel_loss(i - h, d, model, eps)) / (2 * h)
    np.testing.assert_allclose(noise.dloss_dI(i, d, model, eps=eps), fd, rtol=1e-7, atol=1e-9)
    at_data = noise.pixel_loss(np.maximum(d, 1e-300), d, model, eps=0.0)
    np.testing.assert_allclose(at_data[d > 0], 0.0, atol=1e-12)  # ℓ = 0 at I = D (Poisson via its constant)


def test_poisson_zero_counts_uses_zero_log_zero() -> None:
    i, d = np.full((1, 1, 1), 2.0), np.zeros((1, 1, 1))
    assert float(noise.loss(i, d, "poisson", eps=0.0)[0]) == pytest.approx(2.0)


def test_grad_farfield_projection_and_mask() -> None:
    rng = np.random.default_rng(1)
    psi = rng.normal(size=(2, 2, 1, 4, 4)) + 1j * rng.normal(size=(2, 2, 1, 4, 4))
    i = np.sum(np.abs(psi) ** 2, axis=(1, 2))
    d = rng.uniform(0, 5, (2, 4, 4))
    mask = np.ones((4, 4))
    mask[0, 0] = 0
    g = noise.grad_farfield(psi, i, d, "amplitude", mask)
    hat = noise.projected(psi, i, d, "amplitude", mask)
    np.testing.assert_allclose(hat, psi - 0.5 * g, rtol=1e-12)
    np.testing.assert_allclose(hat[..., 0, 0], psi[..., 0, 0])  # masked pixel unchanged
    np.testing.assert_allclose(g[..., 0, 0], 0.0)
    # amplitude projection: the corrected modes carry exactly the measured intensity
    proj = noise.projected(psi, i, d, "amplitude", eps=0.0)
    np.testing.assert_allclose(np.sum(np.abs(proj) ** 2, axis=(1, 2)), d, rtol=1e-10)


def test_compressed_loss_and_derivative() -> None:
    rng = np.random.default_rng(2)
    i = rng.uniform(0, 3, (2, 5, 5))
    masks = rng.random((3, 5, 5))
    signals = rng.random((2, 3))
    model = np.einsum("bij,kij->bk", i, masks)
    np.testing.assert_allclose(noise.compressed_loss(i, signals, masks), np.sum((model - signals) ** 2, axis=1))
    h = 1e-6
    e = np.zeros_like(i)
    e[1, 2, 3] = h
    fd = (noise.compressed_loss(i + e, signals, masks) - noise.compressed_loss(i - e, signals, masks))[1] / (2 * h)
    assert noise.compressed_dloss_dI(i, signals, masks)[1, 2, 3] == pytest.approx(fd, rel=1e-7)


def test_unknown_model_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="gaussian"):
        noise.loss(np.ones((1, 2, 2)), np.ones((1, 2, 2)), "gaussian")
