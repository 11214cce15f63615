"""``init --upsample U``: sampling checks on the U·M probe window, and the lbfgs background
scale on the detector grid (not the U·M window).

Geometry: a 10 Å probe (200 Å underfocus, 25 mrad at 200 kV) with 0.2 Å pixels on a 32 px
detector: the detector window is 6.4 Å (narrower than the probe), the 4x upsampled window
25.6 Å (window/probe ≈ 2.5, well sampled).
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from ptycli import backend
from ptycli.engines import common
from ptycli.engines.lbfgs import LbfgsEngine
from ptycli.physics import electron, sampling
from ptycli.recipe import load_recipe
from ptycli.stages import init, init_checks, reconstruct, simulate
from ptycli.stages.init import DataSummary
from ptycli.store.io import open_store
from ptycli.store.state import load_state

CAL = SimpleNamespace(energy_ev=200e3, semiangle_mrad=25.0, scan_step_a=(0.8, 0.8))
ABERRATIONS = {"C10": -200.0}
POSITIONS_A = np.stack(np.meshgrid(np.arange(6) * 0.8, np.arange(6) * 0.8), -1).reshape(-1, 2)


def _summary(upsample):
    return DataSummary(CAL, (32, 32), 36, 1e4, np.zeros((32, 32)), 0.2, upsample)


def _window_warnings(diag):
    return [w for w in diag["warnings"] if "window" in w]


def test_upsampled_window_is_used_for_the_probe_window_check():
    plain = init_checks.diagnostics(_summary(1), ABERRATIONS, POSITIONS_A, None)
    up = init_checks.diagnostics(_summary(4), ABERRATIONS, POSITIONS_A, None)
    d = sampling.probe_diameter_a(electron.wavelength_a(200e3), 25.0, -200.0)
    assert plain["oversampling"] == pytest.approx(32 * 0.2 / d, rel=1e-12) and plain["oversampling"] < 1
    assert any("wider than its window" in w for w in plain["warnings"])
    assert up["window_a"] == pytest.approx(4 * 32 * 0.2, rel=1e-12)
    assert up["oversampling"] == pytest.approx(4 * 32 * 0.2 / d, rel=1e-12) and up["oversampling"] > 2
    assert _window_warnings(up) == []
    # What the detector samples does not change with the model window.
    for key in ("detector_pixel_mrad", "bf_radius_px", "r_ptych", "max_angle_mrad", "linear_overlap"):
        assert up[key] == pytest.approx(plain[key], rel=1e-12), key
    others = [w for w in plain["warnings"] if w not in _window_warnings(plain)]
    assert [w for w in up["warnings"] if w not in _window_warnings(up)] == others


def test_moderate_upsampling_still_reports_undersampling():
    up = init_checks.diagnostics(_summary(2), ABERRATIONS, POSITIONS_A, None)  # window/probe ≈ 1.3
    assert 1 < up["oversampling"] < sampling.MIN_OVERSAMPLING
    assert [w for w in up["warnings"] if "undersampled" in w]
    assert not [w for w in up["warnings"] if "wider than its window" in w]


@pytest.fixture(scope="module")
def upsampled(tmp_path_factory):
    root = tmp_path_factory.mktemp("up")
    data = root / "d.zarr"
    simulate.run(data, preset="demo", detector_size=32, dx_a=0.2, defocus_a=200.0, scan_shape=(4, 4),
                 scan_step_a=(0.8, 0.8), upsample=4)
    return root, data


def test_init_upsample_does_not_warn_about_the_window(upsampled):
    root, data = upsampled
    seen = []
    init.run(data, root / "s4.zarr", upsample=4, defocus_a=200.0, report=lambda lvl, msg: seen.append((lvl, msg)))
    assert not [m for lvl, m in seen if lvl == "warning" and "window" in m]
    seen.clear()
    init.run(data, root / "s1.zarr", upsample=1, defocus_a=200.0, report=lambda lvl, msg: seen.append((lvl, msg)))
    assert [m for lvl, m in seen if lvl == "warning" and "wider than its window" in m]


def test_lbfgs_background_scale_uses_the_detector_pixels(upsampled):
    root, data = upsampled
    path = root / "s4b.zarr"
    init.run(data, path, upsample=4, defocus_a=200.0)
    xp = backend.get_xp("cpu")
    state = reconstruct._to_device(load_state(open_store(path, "state")), xp, "single")
    assert state.window == (128, 128) and state.detector_shape == (32, 32)
    n_e = 1234.0
    ctx = common.make_context(state, xp, "single", "poisson", None, n_e=n_e)
    stage = load_recipe("lbfgs", [], None).stage[0]
    engine = LbfgsEngine(stage, ctx, state)
    expected = stage.scale.background * math.sqrt(n_e / (32 * 32))  # sqrt(counts per detector pixel)
    assert engine.scales["background"] == pytest.approx(expected, rel=1e-12)
