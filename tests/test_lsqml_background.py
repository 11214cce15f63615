"""LSQ-ML's incoherent background (engines/lsqml_background.py, docs/recipes.md).

Oracles: ℓ'' is the finite difference of ℓ'; the Poisson exit-wave step with a background
minimises the loss along its direction (a brute-force scan of β); B's Newton steps with the
waves fixed reach the per-pixel (per-ring) optimum Σ_j ℓ'(I_j + B) = 0 (or B = 0 where the
loss still rises); and on ``simulate`` data with a known constant background, LSQ-ML with
``refine.background`` finds it in the dark field and scores a better object than without.
"""

import numpy as np
import pytest
import zarr

from ptycli.engines import lsqml_background, noise, primitives
from ptycli.recipe import RecipeError, load_recipe
from ptycli.stages import init, reconstruct, simulate
from ptycli.stages.compare import compare_stores


def _patterns(rng, shape=(6, 8, 8), scale=50.0):
    I = rng.gamma(2.0, scale / 2, size=shape)  # noqa: E741
    D = rng.poisson(I + 5.0).astype(np.float64)
    return I, D


@pytest.mark.parametrize("model", ["amplitude", "poisson"])
def test_second_derivative_is_the_finite_difference_of_the_first(model):
    rng = np.random.default_rng(0)
    I, D = _patterns(rng)  # noqa: E741
    I += 1.0  # away from I = 0, where ε dominates  # noqa: E741
    h = 1e-4 * I
    fd = (noise.dloss_dI(I + h, D, model, eps=0.0) - noise.dloss_dI(I - h, D, model, eps=0.0)) / (2 * h)
    np.testing.assert_allclose(noise.d2loss_dI2(I, D, model, eps=0.0), fd, rtol=1e-6, atol=1e-12)
    assert np.all(noise.d2loss_dI2(I, D, model) >= 0)


def test_poisson_step_with_background_minimises_the_loss_along_its_direction():
    rng = np.random.default_rng(1)
    B, P, Q, M, N = 3, 1, 1, 8, 8
    Psi = (rng.normal(size=(B, P, Q, M, N)) + 1j * rng.normal(size=(B, P, Q, M, N))) * 3.0
    I = np.sum(np.abs(Psi) ** 2, axis=(1, 2))  # noqa: E741
    bg = rng.uniform(2.0, 8.0, size=(M, N))
    D = rng.poisson(1.3 * I + bg).astype(np.float64)  # more counts than I + B: an interior β
    step = primitives.lsqml_exit_step(Psi, D, "poisson", None, 1e-3, I=I, background=bg)
    r = D / (I + bg + 1e-3) - 1.0
    beta = -step[:, 0, 0] / (2 * r * Psi[:, 0, 0])  # χ = β r Ψ, step = -2χ
    beta = beta.real.reshape(B, -1).mean(axis=1)
    for b in range(B):
        grid = np.linspace(0.0, 1.0, 2001)
        J = (1 + grid[:, None, None] * r[b]) ** 2 * I[b] + bg + 1e-3
        best = grid[np.argmin(np.sum(J - D[b] * np.log(J), axis=(1, 2)))]
        assert abs(beta[b] - best) <= 2e-3, (b, beta[b], best)


def test_zero_background_keeps_the_plain_poisson_step():
    rng = np.random.default_rng(2)
    Psi = (rng.normal(size=(2, 1, 1, 8, 8)) + 1j * rng.normal(size=(2, 1, 1, 8, 8))) * 3.0
    I = np.sum(np.abs(Psi) ** 2, axis=(1, 2))  # noqa: E741
    D = rng.poisson(1.2 * I).astype(np.float64)
    plain = primitives.lsqml_exit_step(Psi, D, "poisson", None, 1e-3, I=I)
    with_zero = primitives.lsqml_exit_step(Psi, D, "poisson", None, 1e-3, I=I, background=np.zeros((8, 8)))
    np.testing.assert_allclose(with_zero, plain, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("model", ["amplitude", "poisson"])
@pytest.mark.parametrize("form", ["pixel", "radial"])
def test_newton_steps_reach_the_optimum_of_the_background(model, form):
    rng = np.random.default_rng(3)
    I, D = _patterns(rng, shape=(40, 8, 8))  # noqa: E741
    D[:, 0, 1] = 0  # a pixel with no counts: its optimum is B = 0
    bg = lsqml_background.Background(np, (8, 8), np.float64, form)
    for _ in range(30):
        bg.add(*bg.sums(I, D, model, None, None))
        bg.update()
    g = np.sum(noise.dloss_dI(I + bg.value, D, model), axis=0)
    if form == "radial":
        labels, n = lsqml_background._rings((8, 8))
        g = np.bincount(labels, weights=g.ravel(), minlength=n)[labels].reshape(8, 8)
        value = bg.value.ravel()
        for ring in range(n):  # one value per ring
            assert np.ptp(value[labels == ring]) == 0
    assert bg.value.min() >= 0
    free = bg.value > 0
    assert free.any()
    np.testing.assert_allclose(g[free], 0.0, atol=1e-6 * len(I))
    assert np.all(g[~free] >= -1e-9)  # at B = 0 the loss does not fall into B > 0


def test_background_needs_amplitude_or_poisson():
    with pytest.raises(RecipeError, match="refine.background with noise.model = 'intensity'"):
        load_recipe("lsqml", ["stage.0.refine.background=0", 'stage.0.noise.model="intensity"'])


def test_constant_background_is_found_and_improves_the_object(tmp_path):
    data, state = tmp_path / "d.zarr", tmp_path / "s.zarr"
    simulate.run(data, preset="demo", scan_shape=(10, 10), background_counts=20.0)
    init.run(data, state)
    base = ["stage.0.iterations=30", 'stage.0.noise.model="poisson"']
    reconstruct.run(data, state, tmp_path / "b.zarr", recipe="lsqml", device="cpu",
                    overrides=base + ["stage.0.refine.background=5", 'stage.0.background_shape="pixel"'])
    reconstruct.run(data, state, tmp_path / "n.zarr", recipe="lsqml", device="cpu", overrides=base)
    bg = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["background"][...]  # DC-centred
    m = bg.shape[0]
    yy, xx = np.mgrid[:m, :m] - m // 2
    r_bf = 25e-3 / (0.019687 * (1 / (m * 0.18)))  # semiangle / (λ dk), px (test_lbfgs_variables)
    dark = np.hypot(yy, xx) > 1.2 * r_bf
    c_bg = compare_stores(tmp_path / "b.zarr", data)["correlation"]
    c_none = compare_stores(tmp_path / "n.zarr", data)["correlation"]
    print(f"dark-field background {bg[dark].mean():.3f} (20); object {c_bg:.5f} with vs {c_none:.5f} without")
    assert abs(float(bg[dark].mean()) - 20.0) <= 0.05 * 20.0
    assert bg.min() >= 0.0
    assert c_bg > c_none


@pytest.mark.parametrize("model", ["amplitude", "poisson"])
def test_fused_farfield_with_background_matches_the_array_code(model):
    """``_kernels.single_slice.farfield`` with a background (what the compiled parts call)
    against the array code: χ, the loss with I + B, and B's Newton sums."""
    from ptycli import backend

    k = backend.kernels(np)
    if k is None:
        pytest.skip("no Numba kernels")
    rng = np.random.default_rng(4)
    B, K, M, N = 3, 2, 16, 16
    Psi = ((rng.normal(size=(B, K, M, N)) + 1j * rng.normal(size=(B, K, M, N))) * 2.0).astype(np.complex64)
    I = np.sum(np.abs(Psi) ** 2, axis=1).astype(np.float32)  # noqa: E741
    bg = rng.uniform(1.0, 6.0, size=(M, N)).astype(np.float32)
    D = rng.poisson(1.2 * I + bg).astype(np.float32)
    mask = np.ones((M, N), np.float32)
    mask[0, :3] = 0
    code = k.LSQML_STEP_CODES["poisson"] if model == "poisson" else k.NOISE_CODES["amplitude"]
    eps = noise.DEFAULT_EPS[model]
    buf = np.zeros((3, M, N), np.float32)
    buf[0] = bg
    out, loss = np.empty_like(Psi), np.empty(B, np.float32)
    f32 = np.float32
    k.farfield(Psi, D, mask, code, f32(eps), f32(0), f32(2), f32(1), out, loss, True, buf)
    # the array code, in float64
    P64, I64, D64, b64, m64 = (x.astype(np.complex128 if x.dtype.kind == "c" else np.float64)
                               for x in (Psi, I, D, bg, mask))
    P5 = P64[:, :, None, ...]
    if model == "poisson":
        want = primitives.lsqml_exit_step(P5, D64, "poisson", m64, eps, I=I64, background=b64)[:, :, 0]
    else:
        want = primitives.farfield_update(P5, D64, "amplitude", m64, eps, 0.0, 2.0, I=I64 + b64)[1][:, :, 0]
    np.testing.assert_allclose(out, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    np.testing.assert_allclose(loss, noise.loss(I64 + b64, D64, model, m64, eps), rtol=1e-4)
    est = lsqml_background.Background(np, (M, N), np.float64, "pixel", b64)
    g, h = est.sums(I64, D64, model, m64, eps)
    np.testing.assert_allclose(buf[1], g, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(buf[2], h, rtol=1e-4, atol=1e-8)
    np.testing.assert_array_equal(buf[0], bg)
