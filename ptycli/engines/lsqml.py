"""LSQ-ML engine (Odstrčil, Menzel & Guizar-Sicairos 2018; physics.md §6.3).

Per group: exit-wave updates χ = -½ ∇_Ψ L back-propagated by the exact adjoint, per-position
directions averaged with the PtychoShelves preconditioner, then optimal real steps from a
damped 2×2 least-squares problem per position (single slice) or decoupled per-slice steps
(multislice, divided by S), combined with a trimmed mean over the group.

Data-parallel (engines/distributed.py): the object numerator and illumination, the probe
direction and the loss are all-reduced, and the per-position step terms are gathered so
the trimmed means see the whole group; K ranks make one process's update.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..physics import overlap
from . import common, distributed


class LsqmlEngine(common.EngineBase):
    def update(self, state: Any, idx: np.ndarray, data: Any, it: int) -> Any:
        p = self.params
        b = self.batch(state, idx, data)
        fwd = common.forward(state, b, self.ctx)
        loss, grad_Psi = common.loss_and_grad_farfield(fwd, b, self.ctx)
        if self.ctx.noise_model == "poisson":
            grad_Psi = self._poisson_step(fwd, b)
        elif self.ctx.noise_model == "compressed":  # χ = Ψ̂ - Ψ: the loss scale is counts², not a step
            grad_Psi = -2.0 * (common.compressed_projection(fwd, b, self.ctx) - fwd.Psi)
        g_exit = backend.ifft2(grad_Psi)  # shared by the adjoint and the single-slice steps
        g_patches, g_psi1 = common.backward(grad_Psi, fwd, self.ctx, grad_exit=g_exit)
        do_obj, do_probe = p.refine.object.active(it), p.refine.probe.active(it)
        # ΔO_j = -½ ∇O_j: the -½ is applied after summing (object-sized, not batch-sized)
        illum = illumination_patches(fwd, state.object.shape[0]) if do_obj else None
        dO = self._object_direction(state, b, g_patches, illum) if do_obj else None
        # mean_j unshift(-½∇ψ_j), summed in Fourier space: one inverse FFT for the group
        comm = distributed.comm_of(self.ctx)
        dP = (-0.5 / distributed.global_count(len(idx), comm)) * comm.allreduce_sum(
            overlap.unshift_sum(backend.fft2(g_psi1), b.frac)) if do_probe else None
        if state.n_slices == 1:
            a_O, a_P = self._steps_single(state, b, fwd, g_exit, dO, dP)
        else:
            a_O, a_P = self._steps_multi(state, b, fwd, g_patches, dO, dP, g_psi1, illum)
        if dO is not None:
            state.object = (state.object + a_O * dO).astype(state.object.dtype)
        if dP is not None:
            state.probe = (state.probe + a_P * dP).astype(state.probe.dtype)
        self.refine_positions(state, b, g_psi1, fwd, it)
        return comm.allreduce_sum(loss.sum())

    def _poisson_step(self, fwd: common.Forward, b: common.Batch) -> Any:
        """-2 χ with χ = β_ξ r Ψ, r = D/(I+ε) - 1, β_ξ ∈ [0, 1] minimising the Poisson loss
        along r Ψ per position (3 Newton steps on dL/dβ, physics.md §6.3.1)."""
        xp = self.ctx.xp
        eps = self.ctx.eps if self.ctx.eps is not None else 1e-3
        D, I = b.data, fwd.I
        r = D / (I + eps) - 1.0
        if self.ctx.mask is not None:
            r = r * self.ctx.mask
        beta = xp.full((I.shape[0], 1, 1), 0.5, dtype=I.dtype)
        for _ in range(3):
            u = 1.0 + beta * r
            u = xp.where(u > 1e-3, u, 1e-3)
            grad = xp.sum(2 * r * I * u - 2 * D * r / u, axis=(-2, -1), keepdims=True)
            hess = xp.sum(2 * r * r * I + 2 * D * r * r / (u * u), axis=(-2, -1), keepdims=True)
            beta = xp.clip(beta - grad / (hess + 1e-30), 0.0, 1.0)
        return fwd.Psi * xp.astype((-2.0 * beta * r)[:, None, None], fwd.Psi.dtype)

    # ------------------------------------------------------------------ directions
    def _object_direction(self, state: Any, b: common.Batch, g_patches: Any, illum: Any) -> Any:
        """ΔO_s = Σ_j ΔO_{j,s} / sqrt(W_s² + (δ max W_s)²), W_s = Σ_j |ψ_{j,s}|² (§6.3.4)."""
        xp = self.ctx.xp
        num = xp.zeros_like(state.object)
        overlap.accumulate(num, b.y0, b.x0, g_patches)
        comm = distributed.comm_of(self.ctx)
        num = comm.allreduce_sum(num)
        num *= -0.5  # Σ_j ΔO_j
        W = xp.zeros(state.object.shape, dtype=self.ctx.real_dtype)
        overlap.accumulate(W, b.y0, b.x0, illum)
        W = comm.allreduce_sum(W)
        w_max = xp.max(W, axis=(-2, -1), keepdims=True)
        return num / xp.sqrt(W * W + (self.params.delta * w_max) ** 2)

    # ------------------------------------------------------------------ steps
    def _steps_single(self, state: Any, b: common.Batch, fwd: common.Forward, g_exit: Any,
                      dO: Any, dP: Any) -> tuple[Any, Any]:
        """Damped 2×2 least squares per position for (α_O, α_P), then batch averages.

        ``g_exit`` = F⁻¹[∇_Ψ L]; the exit-plane update is χ = -½ g_exit, folded into the dots.
        """
        xp = self.ctx.xp
        t = fwd.patches[:, None, :, 0]  # (B, 1, Q, M, N)
        a = overlap.extract(dO, b.y0, b.x0, state.window)[:, None, :, 0] * fwd.psi1[:, :, None] \
            if dO is not None else None
        bb = t * overlap.shift_probe(dP, b.frac)[:, :, None] if dP is not None else None
        dot = backend.real_dot
        dot_chi = lambda u: -0.5 * backend.real_dot(u, g_exit)  # Re⟨u, χ⟩, u and χ both (B, P, Q, M, N)
        if a is not None and bb is not None:
            aa, bbb, ab, ra, rb = self._gathered(dot(a, a), dot(bb, bb), dot(a, bb), dot_chi(a), dot_chi(bb))
            aa = aa + 0.1 * xp.mean(aa)
            bbb = bbb + 0.1 * xp.mean(bbb)
            det = aa * bbb - ab * ab
            det = xp.where(det > 0, det, 1.0)
            return self._combine((bbb * ra - ab * rb) / det), self._combine((aa * rb - ab * ra) / det, trim=0)
        if a is not None:
            aa, ra = self._gathered(dot(a, a), dot_chi(a))
            return self._combine(ra / (aa + 0.1 * xp.mean(aa))), 0.0
        bbb, rb = self._gathered(dot(bb, bb), dot_chi(bb))
        return 0.0, self._combine(rb / (bbb + 0.1 * xp.mean(bbb)), trim=0)

    def _steps_multi(self, state: Any, b: common.Batch, fwd: common.Forward, g_patches: Any,
                     dO: Any, dP: Any, g_psi1: Any, illum: Any) -> tuple[Any, Any]:
        """Decoupled per-slice steps α_O,s = ½ Re⟨ΔO_s ψ_s, χ_s⟩ / ‖ΔO_s ψ_s‖², object step / S."""
        xp = self.ctx.xp
        a_O = 0.0
        if dO is not None:
            d = overlap.extract(dO, b.y0, b.x0, state.window)  # (B, Q, S, M, N)
            num = -0.5 * backend.real_dot(d, g_patches, keep=(0, 2))  # Re⟨ΔO_s ψ_s, χ_s⟩ terms (B, S)
            den = backend.real_dot(backend.abs2(d), illum, keep=(0, 2))
            num, den = self._gathered(num, den)
            alpha = 0.5 * self.params.multislice_step * num / (den + 0.1 * xp.mean(den, axis=0))
            a_O = self._combine(alpha, axis=0)[None, :, None, None] / state.n_slices
        a_P = 0.0
        if dP is not None:
            shifted = overlap.shift_probe(dP, b.frac)  # (B, P, M, N)
            t1 = xp.sum(backend.abs2(fwd.patches[:, :, 0]), axis=1)[:, None]  # (B, 1, M, N)
            num = -0.5 * backend.real_dot(shifted, g_psi1)
            den = backend.real_dot(backend.abs2(shifted), xp.broadcast_to(t1, shifted.shape))
            num, den = self._gathered(num, den)
            a_P = self._combine(0.5 * num / (den + 0.1 * xp.mean(den)), trim=0)
        return a_O, a_P

    def _gathered(self, *per_position: Any) -> tuple[Any, ...]:
        """Per-position step terms (B, ...) of the whole group: every rank's rows (data-parallel),
        so the means and trimmed means below are the group's, as in one process."""
        comm = distributed.comm_of(self.ctx)
        if comm.size == 1:
            return per_position
        xp = self.ctx.xp
        rows = distributed.gather_rows(xp.stack(per_position, axis=-1), comm)
        return tuple(rows[..., i] for i in range(len(per_position)))

    def _combine(self, alpha: Any, trim: float | None = None, axis: int = 0) -> Any:
        """Clip at 0, trimmed mean over the group, times β_LSQ."""
        xp = self.ctx.xp
        alpha = xp.clip(alpha, 0, None)
        frac = self.params.trim if trim is None else trim
        n = alpha.shape[axis]
        k = int(frac * n)
        if k > 0 and n - 2 * k > 0:
            alpha = xp.sort(alpha, axis=axis)
            alpha = alpha[k: n - k] if axis == 0 else alpha
        return self.params.beta_lsq * xp.mean(alpha, axis=axis)


def illumination_patches(fwd: common.Forward, n_object_modes: int) -> Any:
    """Σ_p |ψ_{j,s}|² per object mode and slice, as (B, Q, S, M, N) windows."""
    xp = backend.namespace(fwd.psi1)
    slices = []
    for psi in fwd.cache.psi:  # (B, P, Q|1, M, N)
        w = backend.abs2(psi)
        w = w[:, 0] if w.shape[1] == 1 else xp.sum(w, axis=1)
        slices.append(xp.broadcast_to(w, (w.shape[0], n_object_modes, *w.shape[-2:])))
    return slices[0][:, :, None] if len(slices) == 1 else xp.stack(slices, axis=2)
