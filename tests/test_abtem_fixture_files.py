"""The committed abTEM fixtures load and are self-consistent (shapes, dose, BF disk, truth)."""

from __future__ import annotations

import numpy as np
import pytest
from _abtem_fixtures import ROOT, load, names

EXPECTED = {"mos2_thin", "sto_thick_fp", "graphene_lowdose"}


def test_fixture_set_is_complete_and_small() -> None:
    assert EXPECTED <= set(names())
    total = sum(p.stat().st_size for p in ROOT.glob("*.npz"))
    assert total < 3e6, f"abTEM fixtures take {total / 1e6:.2f} MB (limit 3 MB)"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_is_consistent(name: str) -> None:
    raw, meta, truth = load(name)
    ny, nx = meta["scan_shape"]
    M = meta["detector_shape"][0]
    assert raw.shape == (ny, nx, M, M) and raw.dtype.kind == "u"
    assert truth["positions_a"].shape == (ny * nx, 2)
    assert truth["probe"].shape == (M, M) and np.iscomplexobj(truth["probe"])
    S = meta["suggested_slices"]
    assert truth["phase_slices"].shape[0] == S and truth["phase_slices"].shape[1:] == truth["phase"].shape
    # the float16 slices add up to the float32 sum
    np.testing.assert_allclose(truth["phase_slices"].sum(0), truth["phase"], atol=5e-3 * S)
    assert meta["multislice"] == (S > 1)

    # dose: the counts per pattern are the incident dose x step² x the fraction reaching the
    # detector (from the noiseless simulation), within 4 Poisson sigma of the mean
    area = meta["scan_step_a"] ** 2
    expected = meta["dose_e_per_a2"] * area * truth["true"]["detected_fraction"]
    measured = raw.reshape(ny * nx, -1).sum(1, dtype=np.float64).mean()
    assert abs(measured - expected) < 4 * np.sqrt(expected / (ny * nx)) + 1e-3 * expected
    assert 0.7 < truth["true"]["detected_fraction"] <= 1.0
    # the probe holds the incident counts
    assert np.isclose((np.abs(truth["probe"]) ** 2).sum(), meta["dose_e_per_a2"] * area, rtol=1e-4)

    # the mean pattern shows the bright-field disk at semiangle / dk pixels around (M//2, M//2)
    mean = raw.reshape(-1, M, M).astype(np.float64).mean(0)
    ky, kx = np.indices((M, M)) - M // 2
    r = np.hypot(ky, kx)
    radius = meta["semiangle_mrad"] / meta["dk_mrad"]
    inside, outside = mean[r < radius - 2].mean(), mean[r > radius + 2].mean()
    assert inside > 10 * outside
    com = np.array([(mean * ky).sum(), (mean * kx).sum()]) / mean.sum()
    assert np.all(np.abs(com) < 0.5)
    assert radius * 1.5 <= M / 2, "the detector must cover 1.5x the bright-field disk"
    # overlap of neighbouring probes >= 60 %: 1 - step / d80 (d80: the diameter holding 80 % of
    # the probe intensity)
    P2 = (np.abs(truth["probe"]) ** 2).ravel()
    rr = (r * truth["true"]["probe_window_pixel_a"]).ravel()
    order = np.argsort(rr)
    d80 = 2 * rr[order][np.searchsorted(np.cumsum(P2[order]) / P2.sum(), 0.8)]
    assert 1 - meta["scan_step_a"] / d80 >= 0.6, (name, d80)

    # truth: atoms give positive phase, and the sum has real contrast
    ph = truth["phase"]
    assert truth["pixel_size_a"] < 0.12 and ph.max() - np.median(ph) > 0.3
    # the scanned region lies inside the truth frame
    L = ph.shape[0] * truth["pixel_size_a"]
    assert truth["positions_a"].min() > 4.0 and truth["positions_a"].max() < L - 4.0


def test_unknown_fixture_names_the_choices() -> None:
    with pytest.raises(FileNotFoundError, match="sto_thick_fp"):
        load("no_such_set")
