"""The scan rotation from the patterns' centres of mass (stages/scan_rotation.py,
``ptycli init --scan-rotation-deg auto``): exact on a gradient field, right on ptycli's own
simulations and on the independent abTEM fixtures, refused where the data say nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import zarr
from _abtem_fixtures import load
from typer.testing import CliRunner

from ptycli.cli.main import app
from ptycli.physics import scan
from ptycli.stages import scan_rotation as sr


def _gradient_sums(theta_deg: float, flip_x: bool = False, shape=(16, 16), step=0.4, seed=0) -> np.ndarray:
    """com_sums of frames whose CoM is the gradient of a smooth random φ at the raster positions."""
    rng = np.random.default_rng(seed)
    k = rng.normal(scale=0.8, size=(12, 2))  # rad/Å, well inside the scan's Nyquist (π/0.4)
    phase = rng.uniform(0, 2 * np.pi, size=12)
    r = scan.raster_positions_a(shape, (step, step), theta_deg, False, flip_x)
    arg = r @ k.T + phase  # (J, 12)
    grad = -np.sin(arg) @ k  # ∇ Σ cos(k·r + c): (J, 2) in (y, x)
    return np.concatenate([np.full((len(r), 1), 1.0), grad], axis=1)


@pytest.mark.parametrize("theta", [-60.0, 10.0, 75.0])
def test_a_gradient_field_gives_its_rotation(theta):
    est = sr.estimate(_gradient_sums(theta), (16, 16), (0.4, 0.4), nominal_deg=theta + 30)
    assert abs(est.rotation_deg - theta) < 0.3, est
    assert est.determined and not est.mirrored


def test_a_descan_that_follows_the_scan_changes_nothing():
    """A linear CoM field (descan, an off-centre disk) is projected out, not fitted away."""
    clean = _gradient_sums(-40.0, seed=2)
    iy, ix = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    big = np.abs(clean[:, 1:]).max()
    descan = clean.copy()
    descan[:, 1] += 3.0 + 0.04 * big * iy.ravel() - 0.03 * big * ix.ravel()
    descan[:, 2] += -2.0 + 0.05 * big * iy.ravel() + 0.02 * big * ix.ravel()
    a, b = (sr.estimate(s, (16, 16), (0.4, 0.4)).rotation_deg for s in (clean, descan))
    assert abs(a - b) < 1e-6 and abs(a + 40.0) < 0.3, (a, b)


def test_the_twin_within_90_degrees_of_the_nominal_is_returned():
    est = sr.estimate(_gradient_sums(10.0), (16, 16), (0.4, 0.4), nominal_deg=170.0)
    assert abs(est.rotation_deg - 190.0) < 0.3, est


def test_a_mirrored_scan_is_named():
    est = sr.estimate(_gradient_sums(20.0, flip_x=True), (16, 16), (0.4, 0.4))
    assert est.mirrored, est
    right = sr.estimate(_gradient_sums(20.0, flip_x=True), (16, 16), (0.4, 0.4), flip_x=True)
    assert not right.mirrored and abs(right.rotation_deg - 20.0) < 0.3, right


def test_noise_does_not_determine_a_rotation():
    rng = np.random.default_rng(3)
    sums = np.concatenate([np.ones((256, 1)), rng.normal(size=(256, 2))], axis=1)
    assert not sr.estimate(sums, (16, 16), (0.4, 0.4)).determined


@pytest.mark.parametrize("name, tolerance", [("sto_thick_fp", 0.2), ("mos2_thin", 2.5)])
def test_abtem_fixtures_come_out_unrotated(name, tolerance):
    """abTEM data (no scan rotation): independent of ptycli's forward model and conventions."""
    raw, meta, _ = load(name)
    args = meta["ptycli_preprocess_args"]
    step = float(args[args.index("--scan-step-a") + 1])
    est = sr.estimate(sr.com_sums(raw.reshape(-1, *raw.shape[2:]).astype(np.float64)), raw.shape[:2], (step, step))
    assert est.determined and abs(est.rotation_deg) < tolerance, est


@pytest.fixture(scope="module")
def rotated_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rot")
    runner = CliRunner()
    sim, data = root / "sim.zarr", root / "data.zarr"
    for args in (["simulate", sim, "-q", "--scan-shape", "12x12", "--scan-rotation-deg", "25"],
                 ["preprocess", sim, "-o", data, "-q", "--scan-rotation-deg", "0"]):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
    return root, data


def test_init_auto_finds_the_simulated_rotation(rotated_data):
    root, data = rotated_data
    out = root / "auto.zarr"
    res = CliRunner().invoke(app, ["init", str(data), "-o", str(out), "--scan-rotation-deg", "auto"])
    assert res.exit_code == 0, res.output
    assert "scan rotation 25." in res.output or "scan rotation 24.9" in res.output, res.output
    g = zarr.open_group(str(out), mode="r")
    found = [h for h in g.attrs["provenance"]["history"] if h.get("stage") == "init"] if "provenance" in g.attrs else []
    pos = np.asarray(g["positions_initial"][...])
    d = pos[1] - pos[0]  # one column step of the raster, turned by θ (physics.md §1.5)
    assert abs(math.degrees(math.atan2(d[0], d[1])) - 25.0) < 0.5, (d, found)


def test_init_auto_refuses_positions_and_undetermined_data(rotated_data, tmp_path):
    root, data = rotated_data
    pos = tmp_path / "p.npy"
    np.save(pos, np.zeros((144, 2)))
    runner = CliRunner()
    res = runner.invoke(app, ["init", str(data), "-o", str(tmp_path / "a.zarr"), "--scan-rotation-deg", "auto",
                              "--positions", str(pos)])
    assert res.exit_code == 3 and "--positions" in res.output and "Traceback" not in res.output
    flat = tmp_path / "flat.npy"
    frames = np.ones((6, 6, 32, 32), np.float32)
    np.save(flat, frames)
    d2 = tmp_path / "flat.zarr"
    assert runner.invoke(app, ["preprocess", str(flat), "-o", str(d2), "-q", "--energy-kev", "200",
                               "--semiangle-mrad", "20", "--dk-mrad", "2", "--scan-step-a", "0.5"]).exit_code == 0
    res = runner.invoke(app, ["init", str(d2), "-o", str(tmp_path / "b.zarr"), "--scan-rotation-deg", "auto"])
    assert res.exit_code == 4 and "do not determine" in res.output and "Traceback" not in res.output, res.output
