"""A first run compiles only what it uses (issue 25 item 4): the part kernels start lean, with
their position, tilt, in-place and Poisson-β code pruned before typing, and take the full
variant once a call needs more (``_kernels/variants.py``). The lean and full variants compute
the same numbers; the choice is made at most twice a process; the pruned Poisson β refuses
the code that needs it instead of computing something else."""

from __future__ import annotations

import numpy as np
import pytest

from ptycli import backend

pytestmark = pytest.mark.skipif(backend.kernels(np) is None, reason="compiled kernels need Numba")


@pytest.fixture
def variants():
    from ptycli._kernels import variants

    variants.reset()
    yield variants
    variants.reset()


def test_the_first_call_chooses_then_any_new_need_takes_the_full_variant(variants):
    lean = variants.choose(positions=False, in_place=False, poisson=False)
    assert lean == {"positions": False, "tilts": False, "in_place": False, "poisson": False}
    assert variants.choose(positions=False) is lean  # the same variant: no new compile
    full = variants.choose(positions=True)
    assert full == {"positions": True, "tilts": True, "in_place": True, "poisson": False}  # β: Poisson runs only
    assert variants.choose(positions=False, tilts=False) is full  # never back to the lean one


def test_a_planned_kind_is_in_the_first_variant(variants):
    variants.plan(positions=True, poisson=False)
    assert variants.choose(in_place=True) == {"positions": True, "tilts": False, "in_place": True, "poisson": False}
    with pytest.raises(ValueError, match="unknown kind 'slices'"):
        variants.plan(slices=True)


def test_the_pruned_poisson_step_is_refused_and_the_rest_unchanged():
    from ptycli._kernels import single_slice as k

    rng = np.random.default_rng(0)
    psi = (rng.standard_normal((2, 1, 8, 8)) + 1j * rng.standard_normal((2, 1, 8, 8))).astype(np.complex64)
    data = rng.uniform(0.5, 2.0, (2, 8, 8)).astype(np.float32)
    mask = np.ones((8, 8), np.float32)
    f = np.float32
    for model in (0, 1, 2, 3, 4):
        full, lean = np.empty_like(psi), np.empty_like(psi)
        loss_full, loss_lean = np.empty(2, np.float32), np.empty(2, np.float32)
        k.farfield(psi, data, mask, model, f(1e-3), f(0), f(2), f(1), full, loss_full)
        k.farfield(psi, data, mask, model, f(1e-3), f(0), f(2), f(1), lean, loss_lean, None)
        np.testing.assert_array_equal(lean, full)
        np.testing.assert_array_equal(loss_lean, loss_full)
    with pytest.raises(ValueError, match="model 5"):
        k.farfield(psi, data, mask, 5, f(1e-3), f(0), f(2), f(1), np.empty_like(psi), np.empty(2, np.float32), None)


@pytest.mark.parametrize("engine,slices,noise_model", [("gradient", 1, "amplitude"), ("lsqml", 1, "poisson"),
                                                       ("lsqml", 3, "amplitude")])
def test_lean_and_full_variants_reconstruct_alike(engine, slices, noise_model, variants, monkeypatch):
    """The same run with the lean part kernels and with the full ones (planned): the same
    object, probe and losses (the pruned code is code this run never executes)."""
    from test_fused_kernels import _close, _on_fftw_kernels, _run

    _on_fftw_kernels(monkeypatch)
    from ptycli import _kernels

    seen = []  # per call: whether it took the lean variant (no position record)
    module, name, at = ((_kernels._single_slice, "single_slice_part", 5) if slices == 1
                        else (_kernels._multislice, "multislice_part", 6))
    inner = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: seen.append(a[at] is None) or inner(*a))
    lean, loss_lean = _run(engine, True, monkeypatch, 1, noise_model, False, False, 4, None, slices=slices)
    assert seen and all(seen)
    variants.reset()
    variants.plan(positions=True, tilts=True, in_place=True, poisson=True)
    seen.clear()
    full, loss_full = _run(engine, True, monkeypatch, 1, noise_model, False, False, 4, None, slices=slices)
    assert seen and not any(seen)
    _close(lean.object, full.object, 1e-6)
    _close(lean.probe, full.probe, 1e-6)
    np.testing.assert_allclose(loss_lean, loss_full, rtol=1e-6)
