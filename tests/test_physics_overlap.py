"""Overlap operator: position split, sub-pixel shift (= roll for integers), exact adjoints."""

from __future__ import annotations

import numpy as np

from ptycli.physics.overlap import accumulate, extract, shift_probe, split_positions, unshift, unshift_sum



def _rand(rng, shape):
    return rng.normal(size=shape) + 1j * rng.normal(size=shape)


def test_split_positions_corner_and_fraction() -> None:
    y0, x0, frac = split_positions(np.array([[10.25, 20.75], [3.0, 8.5]]), (8, 6))
    assert y0.tolist() == [6, -1] and x0.tolist() == [17, 5]  # floor(p) - M//2
    np.testing.assert_allclose(frac, [[0.25, 0.75], [0.0, 0.5]])


def test_integer_shift_equals_roll() -> None:
    rng = np.random.default_rng(0)
    probe = _rand(rng, (2, 16, 12))
    out = shift_probe(probe, np.array([[3.0, 5.0], [-2.0, 1.0]]))
    np.testing.assert_allclose(out[0], np.roll(probe, (3, 5), axis=(-2, -1)), atol=1e-12)
    np.testing.assert_allclose(out[1], np.roll(probe, (-2, 1), axis=(-2, -1)), atol=1e-12)
    # physics.md §1.4 check: a delta at (10, 20) shifted by (3, 5) lands at (13, 25)
    delta = np.zeros((1, 32, 32), complex)
    delta[0, 10, 20] = 1
    moved = shift_probe(delta, np.array([[3.0, 5.0]]))[0, 0]
    assert np.unravel_index(np.argmax(np.abs(moved)), moved.shape) == (13, 25)


def test_subpixel_shift_adjoint_dot_product() -> None:
    rng = np.random.default_rng(1)
    frac = rng.random((3, 2))
    x, y = _rand(rng, (2, 16, 16)), _rand(rng, (3, 2, 16, 16))
    lhs = np.vdot(y, shift_probe(x, frac))
    rhs = np.vdot(np.sum(unshift(y, frac), axis=0), x)
    assert abs(lhs - rhs) <= 1e-13 * abs(lhs)
    np.testing.assert_allclose(unshift_sum(y, frac), np.sum(unshift(y, frac), axis=0),
                               atol=1e-12)


def test_extract_accumulate_adjoint_dot_product_with_overlaps() -> None:
    rng = np.random.default_rng(2)
    obj = _rand(rng, (2, 3, 20, 22))
    y0, x0 = np.array([0, 3, 3, 10]), np.array([1, 4, 4, 12])  # repeated window: must add twice
    patches = _rand(rng, (4, 2, 3, 8, 9))
    lhs = np.vdot(patches, extract(obj, y0, x0, (8, 9)))
    acc = accumulate(np.zeros_like(obj), y0, x0, patches)
    rhs = np.vdot(acc, obj)
    assert abs(lhs - rhs) <= 1e-13 * abs(lhs)
    np.testing.assert_array_equal(extract(obj, y0, x0, (8, 9))[1, 1, 2], obj[1, 2, 3:11, 4:13])
