"""ePIE with the intensity noise model (issue 22): the projection of the exit wave takes the
amplitude model's ℓ' (noise.projection_lprime), on the array path and in the compiled
positions alike, so the run converges without a back-off; the reported loss stays the
intensity loss. Before, Ψ(1 - 2(I - D)) was a step in counts: NaN in iteration 0, exit 6."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr

from ptycli import backend
from ptycli.engines import noise
from ptycli.stages import init, reconstruct, simulate


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("epie_intensity")
    simulate.run(root / "d.zarr", preset="demo", scan_shape=(8, 8))
    init.run(root / "d.zarr", root / "s1.zarr")
    init.run(root / "d.zarr", root / "s2.zarr", slices=2, slice_thickness_a=5.0)
    return root


@pytest.mark.parametrize("slices", [1, 2])
@pytest.mark.parametrize("kernels", ["auto", "0"])
def test_epie_intensity_converges_without_backoff(case, slices, kernels, monkeypatch):
    out = case / f"r-{slices}-{kernels}.zarr"
    if kernels == "0":  # the array path (CuPy's); else the compiled positions where they apply
        monkeypatch.setenv("PTYCLI_KERNELS", "0")
        monkeypatch.setattr(backend, "_kernels_mode", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow/invalid on the way either
        reconstruct.run(case / "d.zarr", case / f"s{slices}.zarr", out, recipe="epie",
                        overrides=["stage.0.iterations=4", "stage.0.noise.model=intensity"])
    g = zarr.open_group(str(out), mode="r")
    loss = g["history/loss"][...]
    assert np.isfinite(loss).all() and loss[-1] < loss[0]
    assert g["history"].attrs["history"]["backoff"] == []
    assert np.isfinite(g["object"][...]).all()


def test_projection_keeps_the_intensity_loss():
    rng = np.random.default_rng(0)
    I, D = rng.uniform(0, 50, (2, 4, 4)), rng.uniform(0, 50, (2, 4, 4))
    loss, lprime = noise.projection_lprime(I, D, "intensity")
    np.testing.assert_allclose(loss, noise.loss(I, D, "intensity"))
    np.testing.assert_allclose(lprime, noise.dloss_dI(I, D, "amplitude"))
    # the projected far field has the measured intensities: |(1 - ℓ')Ψ|² = D
    np.testing.assert_allclose(I * (1 - lprime) ** 2, D, rtol=1e-4, atol=1e-4)
