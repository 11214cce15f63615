"""Every engine runs through the array-API path under ``array_api_strict`` and matches NumPy.

CuPy runs exactly this path (``backend.kernels`` is None for any namespace but NumPy), so
this is the GPU path checked on a machine without a GPU: a NumPy-only idiom (a method such
as ``.sum()``/``.astype()``, fancy indexing, an implicit trailing ellipsis, ``np.angle``)
fails here before it fails on a GPU. Oracle: the same run with NumPy arrays and the fused
kernels off (``PTYCLI_KERNELS=0``), one host thread (a group in one part, as on a GPU) and numpy.fft:
the same formulas in the same order, to float32 rounding; and the host synchronisations per iteration, counted by ``backend.transfer_count``
(every device-to-host copy goes through ``backend.to_numpy``).
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from ptycli import backend, host_fft, parallel
from ptycli.errors import NumericalError
from ptycli.stages import init, reconstruct, simulate

xps = pytest.importorskip("array_api_strict")

ENGINES = ("epie", "lsqml", "gradient", "lbfgs")
# variant -> (init options, recipe overrides for stage 0)
VARIANTS: dict[str, tuple[dict, list[str]]] = {
    "single-slice": ({}, []),
    "multislice": ({"slices": 2, "slice_thickness_a": 5.0}, []),
    "probe-modes": ({"probe_modes": 2}, []),
    "object-modes": ({"object_modes": 2}, []),
    "positions": ({}, ["stage.0.refine.positions=0"]),
    "tilts": ({"slices": 2, "slice_thickness_a": 5.0}, ["stage.0.refine.tilts=0"]),
    "intensity": ({}, ["stage.0.noise.model=intensity"]),
    "poisson": ({}, ["stage.0.noise.model=poisson"]),
    "anscombe": ({}, ["stage.0.noise.model=anscombe"]),
}
# Per-position tilts have a gradient only in the gradient and L-BFGS engines (docs/recipes.md):
# those pairs are not generated (nothing to compare), rather than skipped.
SKIP = {("epie", "tilts"), ("lsqml", "tilts")}
ITERATIONS = 2
# ε of the amplitude model, in sqrt(counts): where the model's far field is ~0 and the data
# not, the default ε (1e-6) makes the gradient sqrt(D)·Ψ/|Ψ|, a direction set by the FFT's
# rounding alone (pyFFTW against pocketfft moved the first update by ~1 %); a larger ε keeps
# the comparison at rounding level without changing the path.
EPS = 1e-2
# Host copies an iteration may make: the loss (one scalar per group) and the few scalars
# the engines document (LSQ-ML's and L-BFGS's step sizes and line-search values, position
# corrections brought to the host for the group plan); the bound is per group and iteration.
# L-BFGS copies its line-search values and the variables' norms to the host (measured 28-38
# per group and iteration here, 2026-12-07): issue 25 asks for fewer; the bound stops growth.
SYNCS_PER_GROUP = {"epie": 8, "lsqml": 8, "gradient": 8, "lbfgs": 40}
# Pairs whose array path does not yet reproduce NumPy's to rounding (measured 2026-12-07 on
# this file's case; issue 25 follow-up). They still must run to the end with a finite loss
# and within the host-copy bound; only the comparison is expected to fail (not strict: the
# engines are being changed for issue 22, and a pair that starts matching is good news).
_CONDITIONING = "differs at ~1e-3 after one group: a noise model or a step that amplifies rounding"
# The gradient engine runs with SGD here: Adam's first step is lr·g/|g| per component, so
# where a gradient component is at rounding level its sign, and a full-size step, flips
# between two correct implementations (measured: 3 % of the object's max after one group).
KNOWN_DIFFERENT: dict[tuple[str, str], str] = {
    **{("epie", v): _CONDITIONING for v in ("poisson", "positions")},
    **{("lsqml", v): _CONDITIONING for v in ("poisson", "positions")},
    **{("gradient", v): _CONDITIONING for v in ("poisson", "positions")},
}
# Pairs whose state may differ by more than the default 2e-4 (relative to its max), and why.
STATE_TOLERANCE: dict[tuple[str, str], float] = {
    # 25 sequential one-position 3PIE updates per iteration, then the recipe's lateral damping
    # of both slices (kz_filter, beta 0): measured 2.2e-4, 2026-12-07
    ("epie", "multislice"): 5e-4,
}
# Pairs that diverge on this case (xfail, not strict): none since ePIE's intensity model
# projects with the amplitude model's ℓ' (tests/test_epie_intensity.py).
DIVERGES: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("strict")
    simulate.run(root / "d.zarr", preset="demo", scan_shape=(5, 5))
    return root


def _state(root, variant):
    options, _ = VARIANTS[variant]
    path = root / f"s-{variant}.zarr"
    if not path.exists():
        init.run(root / "d.zarr", path, **options)
    return path


def _run(root, engine, variant, device, monkeypatch):
    out = root / f"{engine}-{variant}-{device}.zarr"
    overrides = [f"stage.0.iterations={ITERATIONS}", "stage.0.grouping.size=8", *VARIANTS[variant][1]]
    if not any(o.startswith("stage.0.noise.model=") and not o.endswith("intensity") for o in overrides):
        overrides.append(f"stage.0.noise.eps={EPS}")  # intensity: the ε of its amplitude projection
    if engine == "gradient":  # plain steps: Adam's first step is sign-like (see _ADAM)
        # the intensity loss is in counts², its gradient ~10³ the amplitude loss's here
        rate = 1e-8 if variant == "intensity" else 1e-5
        overrides += ["stage.0.optimizer=sgd", f"stage.0.learning_rate.object={rate}"]
    with monkeypatch.context() as m:
        m.setenv("PTYCLI_KERNELS", "0")
        m.setattr(backend, "_kernels_mode", "0")
        m.setattr(parallel, "host_threads", lambda: 1)  # one part per group, as on a GPU
        # numpy.fft, what array_api_strict's fft runs: where the model's far field is ~0 and
        # the data not, the amplitude gradient's phase is Ψ/|Ψ|, set by the FFT's rounding,
        # so another FFT library moves the first update by ~1 % (measured: pyFFTW vs pocketfft)
        m.setattr(host_fft, "_fft_library", "numpy")
        if device == "strict":
            real_get_xp = backend.get_xp
            m.setattr(backend, "get_xp", lambda d="cpu": xps if d == "strict" else real_get_xp(d))
        before = backend.transfer_count
        reconstruct.run(root / "d.zarr", _state(root, variant), out, recipe=engine, overrides=overrides,
                        device=device, precision="single")
        syncs = backend.transfer_count - before
    g = zarr.open_group(str(out), mode="r")
    return {name: g[name][...] for name in ("object", "probe", "positions")}, g["history/loss"][...], syncs


def _compare(ref, got):
    """Largest difference of object, probe and positions, relative to each one's max."""
    return max(float(np.abs(got[n] - ref[n]).max()) / (float(np.abs(ref[n]).max()) or 1.0)
               for n in ("object", "probe", "positions"))


PAIRS = [(e, v) for e in ENGINES for v in sorted(VARIANTS) if (e, v) not in SKIP]


@pytest.mark.slow
@pytest.mark.parametrize("engine, variant", PAIRS, ids=[f"{e}-{v}" for e, v in PAIRS])
def test_engine_matches_numpy_under_array_api_strict(data, engine, variant, monkeypatch, request):
    if (engine, variant) in DIVERGES:
        request.applymarker(pytest.mark.xfail(raises=NumericalError, strict=False, reason=DIVERGES[(engine, variant)]))
    ref, ref_loss, _ = _run(data, engine, variant, "cpu", monkeypatch)
    got, loss, syncs = _run(data, engine, variant, "strict", monkeypatch)
    # the GPU path runs to the end with a finite loss: no NumPy-only idiom on the way
    assert np.isfinite(loss).all() and loss.shape == ref_loss.shape
    groups = -(-25 // 8)
    assert syncs <= SYNCS_PER_GROUP.get(engine, 8) * groups * ITERATIONS, f"{syncs} host copies in {ITERATIONS} iterations"
    if (engine, variant) in KNOWN_DIFFERENT:
        request.applymarker(pytest.mark.xfail(strict=False, reason=KNOWN_DIFFERENT[(engine, variant)]))
    assert np.allclose(loss, ref_loss, rtol=2e-4), f"{engine}/{variant}: loss {loss} vs NumPy {ref_loss}"
    err = _compare(ref, got)
    tol = STATE_TOLERANCE.get((engine, variant), 2e-4)
    assert err < tol, f"{engine}/{variant}: state differs from NumPy by {err:.2e} (relative to max)"


def test_backoff_snapshot_copies_arrays_of_any_namespace():
    """The loop's back-off snapshot must copy: an array-API array has no ``.copy()``, and a
    snapshot aliasing the live object restored nothing (ePIE then retried from the diverged
    state on the array path, 3x the NumPy path's loss)."""
    from types import SimpleNamespace

    from ptycli.engines import loop

    obj = xps.ones((1, 1, 4, 4), dtype=xps.complex64)
    state = SimpleNamespace(object=obj, probe=xps.ones((1, 4, 4), dtype=xps.complex64), positions=np.zeros((2, 2)))
    snap = loop._snapshot(state)
    state.object += 1  # engines update in place
    loop._restore(state, snap)
    assert float(xps.max(xps.abs(state.object))) == 1.0
    assert backend.copy(obj) is not obj and backend.copy({"a": 1}) == {"a": 1}
