"""The Evaluator's loss and gradients through the compiled part kernels.

L-BFGS evaluates f and ∇f over every position of its group. When only the object, the
probe, the positions, the tilts and the slice thickness are refined, on the plain
far-field model, that is what the gradient engine's compiled parts make (``common.prepare_part_kernel``: shift, exit
wave, far field, loss and adjoint window by window with the FFTs inside, the scatter-adds
fused), so the Evaluator runs them instead of the array model: the array model keeps
(B, P, Q, M, N) waves of the whole chunk alive and went through memory ~10 times per
transform (quick case A: L-BFGS at 6.4x the FFT bound, the gradient engine's same work at
1.6x). The positions' ∂L/∂f comes from the same calls, window by window (``positions=True,
curvature=False``: L-BFGS takes no Gauss-Newton scale), and ∂L/∂t and ∂L/∂Δz from each
propagation of the multislice calls. physics/model.py stays the reference (a test compares
the two) and the path for every other variable and model feature.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import backend, parallel
from . import common

PLAIN = frozenset({"object", "probe", "positions", "tilts", "tilt_global", "thickness"})
GEOMETRY = ("tilts", "tilt_global", "thickness")


def model_features(state: Any) -> list[str]:
    """Forward-model variants in ``state`` that only the Evaluator's model implements."""
    out = []
    if int(getattr(state, "upsample", 1)) > 1:
        out.append(f"upsample = {state.upsample}")
    if any(any(float(v) for k, v in d.items() if not k.startswith("phi")) for d in state.subscan_aberrations):
        out.append("sub-scan aberrations")
    for name in ("tilts_before", "tilts_after"):
        value = getattr(state, name)
        if value is not None and np.any(np.asarray(backend.to_numpy(value))):
            out.append(name)
    return out


def applies(ev: Any, state: Any, x: dict[str, Any]) -> bool:
    """Whether ``kernel_chunk`` models what ``Evaluator._chunk`` would for these variables."""
    ctx = ev.ctx
    if not x or not set(x) <= PLAIN or backend.kernels(ctx.xp) is None or ctx.comp_masks is not None:
        return False
    if ev.params.nearfield_defocus_a is not None or float(state.detector_blur_px) != 0 or model_features(state):
        return False
    if state.background is not None and backend.scalar(ctx.xp.max(ctx.xp.abs(state.background))) != 0:
        return False
    current = state.beam_current
    return current is None or bool(np.all(np.asarray(backend.to_numpy(current)) == 1))


def kernel_chunk(ev: Any, state: Any, x: dict[str, Any], probe: Any, obj: Any, sel: np.ndarray,
                 data: Any) -> tuple[float, dict[str, Any]] | None:
    """(Σ loss, {"object": ∇_O L, "probe": ∇_P L, "positions": ∂L/∂f (B, 2) px} for the names
    in x) on positions ``sel`` whose patterns are ``data``, as ``Evaluator._chunk`` gives
    them; None where the compiled parts do not apply (the caller then runs the array model)."""
    ctx = ev.ctx
    want_pos, want_geo = "positions" in x, any(name in x for name in GEOMETRY)
    changes = {"object": obj, "probe": probe}
    if want_pos:
        changes["positions"] = x["positions"]
    if "tilts" in x or "tilt_global" in x:  # per-position tilts plus the global one, as the array model
        changes["tilts"] = ev.tilts_of(state, x)
    if "thickness" in x:
        changes["slice_thickness"] = np.full(state.n_slices, float(x["thickness"][0]), dtype=np.float32)
    view = state.copy(**changes)
    batch = common.make_batch(view, sel, data, ctx)
    if "thickness" in x and state.n_slices > 1:  # the run's shared propagator has the state's Δz
        batch = dataclasses.replace(batch, H=_propagator(view, sel, ctx))
    # one transform of the probe for every part
    batch = dataclasses.replace(batch, probe_spectrum=(probe, backend.fft2(probe)))
    m, n = state.window
    per_position = int(probe.shape[0]) * int(obj.shape[0]) * m * n
    parts = common.split_batch(batch, common.n_parts(ctx, len(sel), per_position))
    want_obj, want_probe = "object" in x, "probe" in x
    scratch = _scratch(ev)
    done = parallel.map_launches(
        lambda ipb: common.prepare_part_kernel(view, ipb[1], ctx, numerator=want_obj, illumination=False,
                                               probe=want_probe, keep_waves=False, scratch=scratch, slot=ipb[0],
                                               positions=want_pos, curvature=False,
                                               tilts=want_geo and state.n_slices > 1),
        list(enumerate(parts)))
    if done is None:
        return None
    terms = common.parts_position_terms(done, ctx) if want_pos else None
    loss = sum(float(np.sum(kp.loss, dtype=np.float64)) for kp in done)
    grads: dict[str, Any] = {}
    if want_obj:  # a fresh array: the parts' sums live in scratch reused by the next evaluation
        g = done[0].num.copy()
        for kp in done[1:]:
            g += kp.num
        grads["object"] = g.reshape(obj.shape)
    if want_probe:
        spec = done[0].probe_k.copy()
        for kp in done[1:]:
            spec += kp.probe_k
        grads["probe"] = backend.ifft2(spec, overwrite=True)
    if terms is not None:  # the parts split ``sel`` in order
        grads["positions"] = np.concatenate([backend.to_numpy(t[0]) for t in terms]).astype(np.float64)
    if want_geo:  # one slice: no propagation, so tilts and Δz do not enter the model
        geo = (np.concatenate([np.array(kp.tilt_terms) for kp in done]) if state.n_slices > 1
               else np.zeros((len(sel), 3)))
        if "tilts" in x or "tilt_global" in x:
            grads["tilts"] = geo[:, :2]
        if "thickness" in x:
            grads["thickness"] = float(geo[:, 2].sum())
    return loss, grads


def _propagator(view: Any, sel: np.ndarray, ctx: Any) -> Any:
    """The batch's propagator for the view's slice thickness (per position with tilts)."""
    H = common.tilted_propagator(view, sel, ctx)
    return common.propagator(view, ctx.xp, np.dtype(ctx.complex_dtype).name) if H is ctx.H else H


def _scratch(ev: Any) -> common.Scratch | None:
    """The evaluator's reused part buffers (made on first use)."""
    have = getattr(ev, "_kernel_scratch", None)
    if have is None:
        k = backend.kernels(ev.ctx.xp)
        have = ev._kernel_scratch = common.Scratch(k) if k is not None else None
    return have
