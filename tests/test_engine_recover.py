"""Each engine recovers the `demo` truth (single slice), on every available backend.

Oracle: ``compare_stores`` registers the reconstruction on the truth (sub-pixel shift,
constant phase offset) and returns the Pearson correlation of the phase in the scanned
area. Thresholds are the issue's: ≥ 0.95 for every engine, loss falling on average.
"""

import numpy as np
import pytest
import zarr

from ptycli.stages import init, reconstruct, simulate
from ptycli.stages.compare import compare_stores

# "array-path": the code CuPy runs (kernels off, one part per group, array_api_strict as the
# device namespace), so that a CPU machine checks the GPU path recovers the truth too
BACKENDS = ["cpu", "array-path", pytest.param("cuda", marks=pytest.mark.cupy)]
ENGINES = {
    "epie": ["stage.0.iterations=6"],
    "lsqml": ["stage.0.iterations=8"],
    "gradient": ["stage.0.iterations=15", "stage.0.learning_rate.object=1e-2"],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    simulate.run(root / "d.zarr", preset="demo", scan_shape=(12, 12))
    init.run(root / "d.zarr", root / "s.zarr")
    return root


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_engine_recovers_demo(demo, engine, device, monkeypatch):
    out = demo / f"{engine}-{device}.zarr"
    if device == "array-path":
        xps = pytest.importorskip("array_api_strict")
        from ptycli import backend, parallel

        real_get_xp = backend.get_xp
        monkeypatch.setattr(backend, "_kernels_mode", "0")
        monkeypatch.setattr(parallel, "host_threads", lambda: 1)
        monkeypatch.setattr(backend, "get_xp", lambda d="cpu": xps if d == "array-path" else real_get_xp(d))
    reconstruct.run(demo / "d.zarr", demo / "s.zarr", out, recipe=engine, overrides=ENGINES[engine],
                    device=device)
    corr = compare_stores(out, demo / "d.zarr")["correlation"]
    loss = zarr.open_group(str(out), mode="r")["history/loss"][...]
    assert corr >= 0.95, f"{engine}: correlation {corr:.4f}"
    half = len(loss) // 2
    assert loss[half:].mean() < loss[:half].mean() and loss[-1] < loss[0]
    assert np.isfinite(loss).all()


def test_float32_by_default_and_double_on_request(demo):
    kw = dict(recipe="quick", overrides=["stage.0.iterations=1"], device="cpu")
    reconstruct.run(demo / "d.zarr", demo / "s.zarr", demo / "f.zarr", **kw)
    reconstruct.run(demo / "d.zarr", demo / "s.zarr", demo / "dd.zarr", precision="double", **kw)
    f = zarr.open_group(str(demo / "f.zarr"), mode="r")["object"][...]
    d = zarr.open_group(str(demo / "dd.zarr"), mode="r")["object"][...]
    assert f.dtype == np.complex64 and d.dtype == np.complex128
    pf, pd = np.angle(f).ravel(), np.angle(d).ravel()
    assert 0 < np.abs(pf - pd).max() and np.corrcoef(pf, pd)[0, 1] > 0.99  # same algorithm, other rounding
