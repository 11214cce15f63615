"""Virtual-detector compression: signals = masks · patterns to float32 precision."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from ptycli.errors import RecipeError
from ptycli.stages import preprocess as pp
from ptycli.stages.preprocess_masks import annular_masks, parse_spec

CAL = dict(energy_kev=300, semiangle_mrad=20, dk_mrad=1.0, scan_step_a=0.5)


def make(tmp_path, spec, shape=(5, 6, 16, 16), chunk_mb=0.01):
    data = np.random.default_rng(1).gamma(2.0, 10.0, size=shape).astype(np.float32)
    np.save(tmp_path / "in.npy", data)
    s = pp.run(tmp_path / "in.npy", tmp_path / "o.zarr", calibration=CAL,
               options=dict(compress_masks=spec, chunk_mb=chunk_mb))
    return zarr.open_group(str(tmp_path / "o.zarr"), mode="r"), s


@pytest.mark.parametrize("spec,k", [("annular:3x4", 12), ("pca:6", 6)])
def test_signals_equal_masks_dot_patterns(tmp_path, spec, k):
    g, s = make(tmp_path, spec)
    masks, signals = g["compressed/masks"][...], g["compressed/signals"][...]
    pats = g["patterns"][...].astype(np.float64)
    assert masks.shape == (k, 16, 16) and signals.shape == (30, k)
    ref = np.einsum("kyx,nyx->nk", masks.astype(np.float64), pats)
    np.testing.assert_allclose(signals, ref, rtol=2e-7, atol=1e-7 * np.abs(ref).max())  # float32 rounding
    assert s["compression"]["ratio"] == pytest.approx(256 / k)
    assert g["compressed/masks"].metadata.dimension_names == ("mask", "ky", "kx")


def test_annular_masks_partition_the_detector():
    m = annular_masks((16, 16), 4, 3)
    assert set(np.unique(m)) == {0.0, 1.0}
    np.testing.assert_array_equal(m.sum(axis=0), np.ones((16, 16)))  # every pixel in exactly one mask
    assert m[0, 8, 8] == 1  # DC pixel in ring 0 segment 0
    assert m[0, 9, 8] == 1  # +ky, φ = 90°: still segment 0 of 3 (0-120°)
    assert m[1, 8, 7] == 1  # -kx, φ = 180°: segment 1 (120-240°)
    assert m[3 * 3 + 1, 0, 0] == 1  # farthest corner: outer ring 3, φ = 225° -> segment 1


def test_pca_masks_are_orthonormal(tmp_path):
    g, _ = make(tmp_path, "pca:4")
    flat = g["compressed/masks"][...].reshape(4, -1).astype(np.float64)
    np.testing.assert_allclose(flat @ flat.T, np.eye(4), atol=1e-5)


@pytest.mark.parametrize("spec", ["rings:3", "annular:0x4", "pca:x"])
def test_bad_spec_is_a_config_error(spec):
    with pytest.raises(RecipeError, match="compress_masks"):
        parse_spec(spec)
