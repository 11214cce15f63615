"""ePIE (Maiden & Rodenburg 2009), 3PIE for multislice (Maiden 2012), rPIE option (2017).

physics.md §6.1-6.2. The ePIE rule is applied at every slice, the "probe" of slice s
being its incident wave; probe modes and object modes update as in Thibault & Menzel
2013. Updates of a group are summed (group size 1 is the classical sequential ePIE).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..physics import overlap, propagation
from . import common
from . import noise as noise_mod


class EpieEngine(common.EngineBase):
    def update(self, state: Any, idx: np.ndarray, data: Any, it: int) -> Any:
        xp, p = self.ctx.xp, self.params
        b = self.batch(state, idx, data)
        fwd = common.forward(state, b, self.ctx)
        loss, target = self._target_exit(fwd, b)
        do_obj, do_probe = p.refine.object.active(it), p.refine.probe.active(it)
        d_obj = []  # per slice (B, Q, M, N), applied after the sweep (pre-update values)
        e_new = target
        for s in range(state.n_slices - 1, -1, -1):
            t = fwd.patches[:, None, :, s]  # (B, 1, Q, M, N)
            psi = fwd.cache.psi[s]  # (B, P, Q|1, M, N)
            delta = e_new - t * psi
            d_obj.append(xp.sum(xp.conj(psi) * delta, axis=1) / self._denominator(psi))
            t2 = xp.abs(t) ** 2
            t_max = xp.max(t2, axis=(-2, -1), keepdims=True)
            psi_new = psi + p.beta * xp.conj(t) * delta / t_max
            if s > 0:
                e_new = propagation.propagate_adjoint(psi_new, fwd.H if fwd.H is None or fwd.H.ndim == 2 else fwd.H[:, None, None])
        d_psi1 = xp.mean(psi_new - psi, axis=2)  # (B, P, M, N): average over object modes
        if do_obj:
            upd = xp.stack(d_obj[::-1], axis=2)  # (B, Q, S, M, N)
            overlap.accumulate(state.object, b.y0, b.x0, (p.alpha * upd).astype(state.object.dtype))
        if do_probe:
            state.probe = (state.probe + xp.mean(overlap.unshift(d_psi1, b.frac), axis=0)).astype(state.probe.dtype)
        # χ at the probe plane ≈ Σ_q conj(t_1) Δe_1 = (ψ'_1 - ψ_1) max|t_1|² / β: ∇ψ_1 = -2 χ
        g_psi1 = -2.0 * d_psi1 * xp.max(xp.abs(fwd.patches[:, :, 0]) ** 2, axis=(1, 2, 3))[:, None, None, None] / p.beta
        self.refine_positions(state, b, g_psi1, fwd, it)
        return loss.sum()

    def _target_exit(self, fwd: common.Forward, b: common.Batch) -> tuple[Any, Any]:
        """Loss and the corrected exit wave e'_S = F⁻¹[Ψ̂] (projection of §5.2)."""
        ctx = self.ctx
        loss, grad = common.loss_and_grad_farfield(fwd, b, ctx)
        if ctx.noise_model == "compressed":
            return loss, backend.ifft2(common.compressed_projection(fwd, b, ctx))
        if ctx.noise_model in ("amplitude", "poisson", "anscombe"):
            kw = {} if ctx.eps is None else {"eps": ctx.eps}
            Psi_hat = noise_mod.projected(fwd.Psi, fwd.I, b.data, ctx.noise_model, mask=ctx.mask, **kw)
        else:  # intensity: no closed-form projection, take the half-gradient step
            Psi_hat = fwd.Psi - 0.5 * grad
        return loss, backend.ifft2(Psi_hat)

    def _denominator(self, psi: Any) -> Any:
        """max Σ_p|ψ|² (ePIE) or (1-γ)Σ_p|ψ|² + γ max Σ_p|ψ|² (rPIE)."""
        xp = self.ctx.xp
        w = xp.sum(xp.abs(psi) ** 2, axis=1)  # (B, Q|1, M, N)
        w_max = xp.max(w, axis=(-2, -1), keepdims=True)
        gamma = self.params.rpie_gamma
        return w_max if gamma is None else (1 - gamma) * w + gamma * w_max
