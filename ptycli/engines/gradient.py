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

import time
from typing import Any

import numpy as np

from .. import backend, host_fft, parallel
from ..physics import overlap
from ..recipe import rate_value
from . import common, distributed
from .data import gathered
from .optimizers import embed, make_optimizer
from .variables import Evaluator, active_variables, model_features


class GradientEngine(common.EngineBase):
    reads_rows = True  # data may come as data.Rows (common.EngineBase)

    def __init__(self, params: Any, ctx: common.RunContext, state: Any):
        super().__init__(params, ctx, state)
        self.opt = make_optimizer(params)
        xp = ctx.xp
        self.probe_scale = float(backend.to_numpy(xp.sqrt(xp.mean(xp.abs(state.probe) ** 2))))
        self.evaluator: Evaluator | None = None

    def update(self, state: Any, idx: np.ndarray, data: Any, it: int) -> Any:
        names = active_variables(self.params.refine, it)
        if self.params.regularisers or set(names) - {"object", "probe", "positions"} or model_features(state):
            return self._variables_update(state, idx, gathered(data), it, names)
        b = self.batch(state, idx, data, it)
        refine = self.params.refine
        do_obj, do_probe, do_pos = refine.object.active(it), refine.probe.active(it), refine.positions.active(it)
        xp, comm = self.ctx.xp, distributed.comm_of(self.ctx)
        # The parts' object gradients are zero outside the group's windows: they are summed on
        # that region, and only the optimiser step (Adam moves every pixel) sees the whole grid.
        region = common.group_region(state, b, self.ctx)
        view, vb = (region, region.batch(b)) if region is not None else (state, b)

        def part(pb: common.Batch) -> tuple[Any, ...]:
            # everything per position or a partial sum: the parts of a group run concurrently
            fwd = common.forward(view, pb, self.ctx, patches=do_pos)  # only the position step reads windows
            loss, g_exit = common.loss_and_grad_exit(fwd, pb, self.ctx)
            fused = common.backward_accumulate(g_exit, fwd, view, pb, self.ctx, numerator=do_obj)
            if fused is not None:  # single slice on the CPU: adjoint and scatter-add in one pass
                g_obj, g_psi1 = fused[0], fused[2]
            else:
                g_patches, g_psi1 = common.backward(None, fwd, self.ctx, grad_exit=g_exit)
                g_obj = common.object_gradient(view, pb, g_patches) if do_obj else None
            pos = common.position_terms(g_psi1, fwd, self.ctx) if do_pos else None
            # g_psi1 is read for the last time here: its FFT may run in place. The parts return
            # spectra: one inverse FFT of their sum serves the group
            return loss, g_obj, overlap.unshift_sum_of(g_psi1, pb.frac, overwrite=True) if do_probe else None, pos

        parts = self.parts(view, vb)
        # each part as one compiled call (single slice on the CPU), else the array code; the
        # probe's step may follow on the last part's thread while this one steps the object
        tail = _ProbeTail(self, state, parts, it) if do_probe and not do_pos and comm.size == 1 else None
        scratch = self.scratch()
        kernel_parts = parallel.map_launches(
            lambda ipb: common.prepare_part_kernel(view, ipb[1], self.ctx, numerator=do_obj, illumination=False,
                                                   probe=do_probe, keep_waves=False, scratch=scratch, slot=ipb[0],
                                                   positions=do_pos,
                                                   **(tail.part_args(ipb[1]) if tail is not None else {})),
            list(enumerate(parts)), tail=tail.prepare if tail is not None else None)
        pos = None
        if kernel_parts is not None and do_pos:  # before the object's step: the windows the parts saw
            pos = common.parts_position_terms(kernel_parts, self.ctx)
            kernel_parts = kernel_parts if pos is not None else None  # else the array path, from the start
        if kernel_parts is not None:
            loss, g_obj, g_probe = zip(*((kp.loss, kp.num, kp.probe_k) for kp in kernel_parts))
        else:
            loss, g_obj, g_probe, pos = zip(*parallel.map_parts(part, parts))
        if do_obj:
            on_region = None if region is None else (region.ys, region.xs)
            if comm.size == 1 and len(g_obj) == 2:  # Adam adds the two parts as it reads them
                self._object_step(state, g_obj[0], it, on_region, more=g_obj[1])
            else:
                self._object_step(state, comm.allreduce_sum(common.sum_parts(g_obj)), it, on_region)
        if do_probe and tail is not None and kernel_parts is not None and tail.finish(state):
            pass  # the tail's step is the probe's: state.probe and the next groups' spectrum are set
        elif do_probe:
            rate = rate_value(self.params.learning_rate.probe, it) * self.probe_scale
            g_probe = backend.ifft2(comm.allreduce_sum(common.sum_parts(g_probe)), overwrite=True)
            state.probe = self.opt.step("probe", state.probe, g_probe, rate)
        else:  # the probe stays, and so does its spectrum for the next group's parts
            self.carry_spectrum(state.probe, parts[0].spectrum_of(state.probe), it)
        if do_pos:
            self.apply_position_terms(state, b, tuple(common.concat_parts(xp, [t[i] for t in pos]) for i in (0, 1)))
        return comm.allreduce_sum(xp.sum(common.concat_parts(xp, list(loss))))

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

    def _object_step(self, state: Any, grad: Any, it: int, region: tuple[slice, slice] | None = None,
                     more: Any = None) -> None:
        """The optimiser's step on the object; ``grad`` is given on ``region`` only when set;
        ``more``: a second partial gradient to add."""
        lr = self.params.learning_rate
        if lr.object_amplitude is None and lr.object_phase is None:
            state.object = self.opt.step("object", state.object, grad, rate_value(lr.object, it), region=region,
                                         more=more)
            return
        if more is not None:
            grad = grad + more
        if region is not None:
            grad = embed(state.object, grad, region)
        xp = self.ctx.xp
        amp, phase = xp.abs(state.object), backend.angle(state.object)
        g_obj = xp.conj(state.object) * grad
        if lr.object_amplitude is not None:
            g_amp = xp.real(g_obj) / xp.maximum(amp, 1e-6)  # ∂L/∂a = Re(e^{-iφ} ∇_O L)
            amp = self.opt.step("object_amplitude", amp, g_amp, rate_value(lr.object_amplitude, it))
        if lr.object_phase is not None:
            phase = self.opt.step("object_phase", phase, xp.imag(g_obj), rate_value(lr.object_phase, it))
        state.object = xp.astype(amp * xp.exp(1j * phase), state.object.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"probe_scale": np.asarray(self.probe_scale), **self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.probe_scale = float(state.pop("probe_scale", self.probe_scale))
        self.opt.load_state_dict(state, self.ctx.xp)


class _ProbeTail:
    """The probe's step of a group as a kernel (``_kernels.probe_tail``) on the thread of
    the last part, after every part's kernel: the sum of the parts' probe-gradient spectra,
    its inverse FFT, the Adam step and the new probe's spectrum for the next group. It runs
    while the calling thread makes the object's step; before, these ran one after the other
    on the calling thread (~0.25 ms of a ~2.7 ms group in quick case A)."""

    def __init__(self, engine: GradientEngine, state: Any, parts: list[common.Batch], it: int):
        self.engine, self.state, self.it = engine, state, it
        self.k = backend.kernels(engine.ctx.xp)
        m, n = state.window
        self.plans = host_fft.kernel_fft_plans(m, n, state.probe.dtype) if self.k is not None else None
        self.grads_k = None if self.plans is None else self.k.empty((len(parts), *state.probe.shape),
                                                                     state.probe.dtype, aligned=True)
        # [0]: the parts done, [8]: the tail done (1, or 2 when cancelled); each on its cache line
        self.count = self.k.counters(16) if self.grads_k is not None else None
        self.parts = list(parts)
        self.commit = self.z_out = self.spectrum = None

    def part_args(self, pb: common.Batch) -> dict[str, Any]:
        """The part's probe-gradient buffer and done count (none when the tail cannot run)."""
        if self.grads_k is None:
            return {}
        i = next(j for j, p in enumerate(self.parts) if p is pb)
        return {"probe_k": self.grads_k[i], "done_addr": self.count.ctypes.data}

    def prepare(self) -> tuple[Any, Any, Any] | None:
        engine, state = self.engine, self.state
        step = getattr(engine.opt, "kernel_step", None)
        rate = rate_value(engine.params.learning_rate.probe, self.it) * engine.probe_scale
        adam = None if self.grads_k is None or step is None else step("probe", state.probe, rate)
        if adam is None:  # the parts count themselves done all the same; nothing waits for them
            return None
        args, self.commit = adam
        self.z_out = args[-1]
        self.spectrum = self.k.empty(state.probe.shape, state.probe.dtype, aligned=True)
        s = self.k.real_scalar(backend.unitary_scale(state.window), state.probe)
        call = (self.k.probe_tail, (self.count.ctypes.data, len(self.parts), self.count.ctypes.data + 64,
                                    self.plans[0], self.plans[1], self.plans[2], self.grads_k, s, *args,
                                    self.spectrum))
        return call, self.cancel, self.parts_done

    def parts_done(self) -> None:
        self._wait(0, len(self.parts))

    def _wait(self, slot: int, value: int) -> None:
        """Until count[slot] >= value: spinning without Python's lock, then polling."""
        addr = self.count.ctypes.data + 8 * slot
        while not self.k.spin_until(addr, value, 1_000_000, 0, 0):
            time.sleep(0.0002)

    def cancel(self) -> None:
        self.count[0] = len(self.parts) + 1  # above the parts: the tail stops waiting, does nothing

    def finish(self, state: Any) -> bool:
        """Take the tail's step (True), or False when it did not run (the caller steps)."""
        if self.commit is None:
            return False
        self._wait(8, 1)
        if int(self.count[8]) != 1:  # cancelled
            return False
        self.commit()
        # its two transforms per probe mode, for the benchmark's count (as the kernels report theirs)
        host_fft.kernel_ffts(state.window, 2 * state.probe.shape[0])
        state.probe = self.z_out
        self.engine.carry_spectrum(state.probe, self.spectrum, self.it)
        return True
