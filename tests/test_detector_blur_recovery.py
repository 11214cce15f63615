"""Detector blur: simulate with a Gaussian PSF of σ = 0.8 px, refine σ from 0.4 px (lbfgs).

The blur's gradient vanishes at σ = 0 (G_σ is even in σ), so a refinement starts from a
guess. As in tests/test_lbfgs_variables.py the object starts at the truth (as after an
earlier reconstruction) and is freed after 5 iterations; the probe is fixed. Poisson noise
model: with the amplitude model, pixels where the blurred model is zero but the data are not
make ℓ' = 1 - sqrt(D/I) unbounded (docs/recipes.md). Oracles: σ ends within 2 % of 0.8 px
(observed 0.8001) and the object correlates better than a run that keeps σ = 0.4
(observed 1.000 vs 0.886).
"""

import pytest
import zarr

from ptycli.stages import init, reconstruct, simulate
from ptycli.stages.compare import compare_stores

TRUE_SIGMA_PX = 0.8


def test_detector_blur_is_recovered(tmp_path):
    data, state = tmp_path / "d.zarr", tmp_path / "s.zarr"
    simulate.run(data, preset="demo", detector_size=32, dx_a=0.2, scan_shape=(8, 8), scan_step_a=(0.6, 0.6),
                 defocus_a=60.0, detector_blur_px=TRUE_SIGMA_PX)
    init.run(data, state)
    group = zarr.open_group(str(state), mode="r+")
    group["object"][...] = zarr.open_group(str(data), mode="r")["truth/object"][...]
    group.attrs["state"] = {**group.attrs["state"], "detector_blur_px": 0.4}
    base = ["stage.0.iterations=20", "stage.0.refine.probe=false", "stage.0.refine.object=5",
            "stage.0.noise.model=poisson"]
    out = {}
    for tag, extra in (("refined", ["stage.0.refine.detector_blur=0"]), ("fixed", [])):
        reconstruct.run(data, state, tmp_path / f"{tag}.zarr", recipe="lbfgs", overrides=base + extra, device="cpu")
        sigma = zarr.open_group(str(tmp_path / f"{tag}.zarr"), mode="r").attrs["state"]["detector_blur_px"]
        out[tag] = (sigma, compare_stores(tmp_path / f"{tag}.zarr", data)["correlation"])
    print(f"(sigma px, object correlation): {out}")
    assert out["refined"][0] == pytest.approx(TRUE_SIGMA_PX, rel=0.02)
    assert out["fixed"][0] == pytest.approx(0.4)
    assert out["refined"][1] > out["fixed"][1]
