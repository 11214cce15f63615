"""Gradient engine: Wirtinger gradients through the exact adjoint, SGD or Adam (§6.4).

Learning rates are per variable and may follow schedules: ``object`` in transmission
units (or separate ``object_amplitude`` / ``object_phase`` steps on |O| and angle(O), as
PtyRAD has), ``probe`` relative to the starting rms|P|. Positions take the shared
Gauss-Newton step of the loop. When a stage refines tilts, thickness, aberrations, beam
current, background or detector blur, or has cost regularisers, each group is evaluated
through ``variables.Evaluator`` instead and every variable takes its own optimiser step.

Data-parallel: gradients are sums over positions, so the ranks' partial gradients and
losses are all-reduced before the optimiser step; every rank then takes the same step and
keeps the same Adam/SGD state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..recipe import rate_value
from . import common, distributed
from .optimizers import make_optimizer
from .variables import Evaluator, active_variables, model_features


class GradientEngine(common.EngineBase):
    def __init__(self, params: Any, ctx: common.RunContext, state: Any):
        super().__init__(params, ctx, state)
        self.opt = make_optimizer(params)
        xp = ctx.xp
        self.probe_scale = float(backend.to_numpy(xp.sqrt(xp.mean(xp.abs(state.probe) ** 2))))
        self.evaluator: Evaluator | None = None

    def update(self, state: Any, idx: np.ndarray, data: Any, it: int) -> Any:
        names = active_variables(self.params.refine, it)
        if self.params.regularisers or set(names) - {"object", "probe", "positions"} or model_features(state):
            return self._variables_update(state, idx, data, it, names)
        b = self.batch(state, idx, data)
        fwd = common.forward(state, b, self.ctx)
        loss, grad_Psi = common.loss_and_grad_farfield(fwd, b, self.ctx)
        g_patches, g_psi1 = common.backward(grad_Psi, fwd, self.ctx)
        refine, lr = self.params.refine, self.params.learning_rate
        comm = distributed.comm_of(self.ctx)
        if refine.object.active(it):
            grad = comm.allreduce_sum(common.object_gradient(state, b, g_patches))
            self._object_step(state, grad, it)
        if refine.probe.active(it):
            rate = rate_value(lr.probe, it) * self.probe_scale
            grad = comm.allreduce_sum(common.probe_gradient(g_psi1, b))
            state.probe = self.opt.step("probe", state.probe, grad, rate)
        self.refine_positions(state, b, g_psi1, fwd, it)
        return comm.allreduce_sum(loss.sum())

    def _variables_update(self, state: Any, idx: np.ndarray, data: Any, it: int, names: tuple[str, ...]) -> Any:
        """Every refined variable through the differentiable model (engines/variables.py).

        Each variable takes its own optimiser step with its learning rate (recipe
        ``learning_rate.<name>``, in the variable's unit); positions take an Adam/SGD step
        in px here, since the Gauss-Newton step needs the engine-common forward pass.
        """
        if self.evaluator is None:
            self.evaluator = Evaluator(self.params, self.ctx, state)
        x = self.evaluator.pack(state, names)
        data_loss, _, grads = self.evaluator.evaluate(state, x, idx, data, it)
        lr = self.params.learning_rate
        new = {}
        for name in names:
            if name == "object":
                self._object_step(state, grads[name], it)
                continue
            rate = rate_value(getattr(lr, name), it) * (self.probe_scale if name == "probe" else 1.0)
            new[name] = self.opt.step(name, x[name], grads[name], rate)
        if "object" in names:
            new["object"] = state.object
        self.evaluator.unpack(state, new)
        return data_loss

    def _object_step(self, state: Any, grad: Any, it: int) -> None:
        lr = self.params.learning_rate
        if lr.object_amplitude is None and lr.object_phase is None:
            state.object = self.opt.step("object", state.object, grad, rate_value(lr.object, it))
            return
        xp = self.ctx.xp
        amp, phase = xp.abs(state.object), xp.angle(state.object)
        g_obj = xp.conj(state.object) * grad
        if lr.object_amplitude is not None:
            g_amp = g_obj.real / xp.maximum(amp, 1e-6)  # ∂L/∂a = Re(e^{-iφ} ∇_O L)
            amp = self.opt.step("object_amplitude", amp, g_amp, rate_value(lr.object_amplitude, it))
        if lr.object_phase is not None:
            phase = self.opt.step("object_phase", phase, g_obj.imag, rate_value(lr.object_phase, it))
        state.object = (amp * xp.exp(1j * phase)).astype(state.object.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"probe_scale": np.asarray(self.probe_scale), **self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.probe_scale = float(state.pop("probe_scale", self.probe_scale))
        self.opt.load_state_dict(state, self.ctx.xp)
