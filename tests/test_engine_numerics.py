"""Engine numerics on thick, bright specimens: no float32 overflow in LSQ-ML's normaliser."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

from ptycli import backend
from ptycli.engines.lsqml import LsqmlEngine


def _direction_inputs(scale):
    rng = np.random.default_rng(4)
    num = (rng.standard_normal((1, 2, 9, 11)) + 1j * rng.standard_normal((1, 2, 9, 11))).astype(np.complex64)
    w = rng.uniform(0, 5, num.shape).astype(np.float32)
    return num * np.float32(scale), w * np.float32(scale)


def _reference(num, w, delta):
    n, w = num.astype(np.complex128), w.astype(np.float64)
    return -0.5 * n / np.sqrt(w * w + (delta * w.max(axis=(0, 2, 3), keepdims=True)) ** 2)


@pytest.mark.parametrize("kernels", [True, False])
def test_object_direction_without_overflow_on_huge_illumination(kernels, monkeypatch):
    # W ~ 1e20 counts: W² overflowed float32 (a zero direction from the kernel, inf and a
    # RuntimeWarning from the array code, which made the multislice SrTiO3 run NaN)
    if not kernels:
        monkeypatch.setattr(backend, "kernels", lambda xp: None)
    elif backend.kernels(np) is None:
        pytest.skip("no Numba kernels")
    engine = types.SimpleNamespace(ctx=types.SimpleNamespace(xp=np, extra={}), params=types.SimpleNamespace(delta=0.1))
    num, w = _direction_inputs(1e20)
    ref = _reference(num, w, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = LsqmlEngine._object_direction(engine, None, [num.copy()], [w.copy()])
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


def test_unlit_plane_gets_no_direction():
    engine = types.SimpleNamespace(ctx=types.SimpleNamespace(xp=np, extra={}), params=types.SimpleNamespace(delta=0.1))
    num, w = _direction_inputs(1.0)
    num[:, 1] = 0
    w[:, 1] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = LsqmlEngine._object_direction(engine, None, [num.copy()], [w.copy()])
    assert np.all(out[:, 1] == 0) and np.isfinite(out).all()
