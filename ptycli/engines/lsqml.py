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

import itertools
from typing import Any

import numpy as np

from .. import backend, host_fft, parallel
from ..physics import overlap
from ..recipe import NEVER
from . import common, distributed, lsqml_background, noise, primitives


class LsqmlEngine(common.EngineBase):
    reads_rows = True  # data may come as data.Rows (common.EngineBase)
    _background: lsqml_background.Background | None = None

    def __init__(self, params: Any, ctx: Any, state: Any):
        super().__init__(params, ctx, state)
        self._window = tuple(state.window)
        if params.refine.background != NEVER:  # from the state's own (a resumed run) or zero
            self._background = lsqml_background.Background(ctx.xp, state.detector_shape, ctx.real_dtype,
                                                           params.background_shape, state.background)

    def _background_of(self, it: int) -> Any:
        """B (M, N) in the model intensity of iteration ``it``, or None (no background
        refined yet: the compiled parts run unchanged)."""
        bg = self._background
        return bg.value if bg is not None and (bg.started or self.params.refine.background.active(it)) else None

    def end_iteration(self, state: Any, it: int) -> None:
        """The background's Newton step from this iteration's sums (lsqml_background.py)."""
        if self._background is not None and self.params.refine.background.active(it):
            self._background.update(distributed.comm_of(self.ctx).allreduce_sum)  # every rank's positions
            state.background = self._background.value

    def update(self, state: Any, idx: np.ndarray, data: Any, it: int) -> Any:
        p, xp = self.params, self.ctx.xp
        full_state, full_batch = state, self.batch(state, idx, data, it)
        region = common.group_region(state, full_batch, self.ctx)
        # the group's sums and steps on the object live on its region only (exact: they are zero elsewhere)
        state, b = (region, region.batch(full_batch)) if region is not None else (state, full_batch)
        do_obj, do_probe = p.refine.object.active(it), p.refine.probe.active(it)
        comm = distributed.comm_of(self.ctx)
        parts = self.parts(state, b)
        # phase 1, per part (concurrent): model, χ, adjoint and the partial sums of the directions
        do_pos = p.refine.positions.active(it)  # its curvature reads the object windows
        # each part's phase 1 as one compiled call where it can (Poisson and intensity with
        # their own χ, as _poisson_step and _projection_step make it); with position
        # refinement the terms come from the same calls
        bg = self._background_of(it)
        # each part's background and Newton sums (the kernels add into their part's own)
        bg_parts = self._background_parts(len(parts), bg) if bg is not None else None
        launches = (self._part_launches(state, parts, do_obj, do_probe, do_pos, bg_parts)
                    if bg is None or bg_parts is not None else None)
        first, pos = None, None
        if launches is not None:
            first = parallel.map_launches(lambda ln: ln.then(_directions_of), launches)
        if first is not None and do_pos:  # before any step: the windows the parts saw
            pos = common.parts_position_terms([ln.made for ln in launches], self.ctx)
            first = first if pos is not None else None  # else the array path, from the start
        if first is None:
            first = parallel.map_parts(lambda pb: self._part_directions(state, pb, do_obj, do_probe, do_pos, bg),
                                       parts)
            bg_parts = None
        if bg is not None:
            for sums in ([(buf[1], buf[2]) for buf in bg_parts] if bg_parts is not None else
                         [r["bg_sums"] for r in first]):
                self._background.add(*sums)
        a_O, a_P, dO, dP, dP_k, stepped = self._after_directions(state, parts, first, do_obj, do_probe,
                                                                 region is None, len(idx))
        if dO is not None and not stepped:
            self._step_object(state, region, dO, a_O)
        if dP is not None:
            probe_k = parts[0].spectrum_of(full_state.probe)
            full_state.probe = xp.astype(full_state.probe + a_P * dP, full_state.probe.dtype)
            # the spectrum goes on to the next group: F[P + αΔP] = F[P] + αF[ΔP] (carried within
            # an iteration only, so rounding cannot build up over a run)
            self.carry_spectrum(full_state.probe, None if probe_k is None else probe_k + a_P * dP_k, it)
        if do_pos:
            if pos is None:
                pos = parallel.map_parts(lambda r: common.position_terms(r["g_psi1"], r["fwd"], self.ctx), first)
            self.apply_position_terms(full_state, full_batch,
                                      tuple(common.concat_parts(xp, [t[i] for t in pos]) for i in (0, 1)))
        return comm.allreduce_sum(xp.sum(common.concat_parts(xp, [r["loss"] for r in first])))

    def _after_directions(self, state: Any, parts: list[common.Batch], first: list[dict[str, Any]], do_obj: bool,
                          do_probe: bool, whole_grid: bool, n_idx: int) -> tuple[Any, ...]:
        """(α_O, α_P, ΔO, ΔP, F[ΔP], whether the object step was made) from the parts'
        phase-1 results: in one launch where it can (``_kernel_tail``), else step by step."""
        comm = distributed.comm_of(self.ctx)
        dP_k = None
        if do_probe:  # mean_j unshift(-½∇ψ_j), summed in Fourier space: one inverse FFT for the group
            dP_k = (-0.5 / distributed.global_count(n_idx, comm)) * comm.allreduce_sum(
                common.sum_parts([r["probe_k"] for r in first]))
        tail = self._kernel_tail(state, parts, first, do_obj, dP_k, whole_grid)
        if tail is not None:
            a_O, a_P, dO, dP, stepped = tail
            return a_O, a_P, dO, dP, dP_k, stepped
        dO = self._object_direction(state, [r["num"] for r in first], [r["W"] for r in first]) if do_obj else None
        a_O, a_P, dP = self._steps(state, parts, first, dO, dP_k)
        return a_O, a_P, dO, dP, dP_k, False

    def _steps(self, state: Any, parts: list[common.Batch], first: list[dict[str, Any]], dO: Any,
               dP_k: Any) -> tuple[Any, Any, Any]:
        """(α_O, α_P, ΔP) from the per-position step terms of the parts (phase 2)."""
        xp = self.ctx.xp
        dP = None

        def step_terms(pr: tuple[common.Batch, dict[str, Any], bool]) -> tuple[Any, ...]:
            terms = self._part_step_terms(state, pr[0], pr[1], dO, dP_k)
            if pr[2] and dP_k is not None:
                # ΔP itself is read only by the probe's update: its inverse FFT runs in the
                # calling thread's part, which ends first (the others start later)
                nonlocal dP
                dP = backend.ifft2(dP_k)
            return terms

        # one compiled call per part where it can (the first part also makes ΔP)
        terms = parallel.map_launches(lambda pr: self._kernel_terms(state, *pr, dO, dP_k),
                                      [(i, pb, r) for i, (pb, r) in enumerate(zip(parts, first))])
        if terms is not None:
            terms, dPs = [t[0] for t in terms], [t[1] for t in terms]
            dP = dPs[0]
        else:
            terms = parallel.map_parts(step_terms, [(pb, r, i == 0) for i, (pb, r) in enumerate(zip(parts, first))])
        terms = tuple(common.concat_parts(xp, [t[i] for t in terms]) for i in range(len(terms[0])))
        if state.n_slices == 1:
            a_O, a_P = self._steps_single(terms, dO is not None, dP_k is not None)
        else:
            a_O, a_P = self._steps_multi(state, terms, dO is not None, dP_k is not None)
        return a_O, a_P, dP

    def _step_object(self, state: Any, region: Any, dO: Any, a_O: Any) -> None:
        """O += α_O ΔO (on the group's region when it has one)."""
        k = backend.kernels(self.ctx.xp)
        if region is None and k is not None and self._steps_in_place(state, dO):
            # one pass in place (with random or sparse groups the region is the whole grid):
            # no object-sized sum allocated per group
            k.add_scaled(state.object, dO, k.real_scalar(float(a_O), dO))
            return
        dO *= a_O  # dO is this group's own array: the step is formed in place
        if region is not None:  # only the region changes, in place in the object grid
            region.add_to_object(dO)
        else:
            state.object = state.object + dO

    @staticmethod
    def _steps_in_place(state: Any, dO: Any) -> bool:
        return (state.n_slices == 1 and dO.shape == state.object.shape and dO.dtype == state.object.dtype
                and state.object.flags.c_contiguous and state.object.flags.writeable)

    def _kernel_tail(self, state: Any, parts: list[common.Batch], first: list[dict[str, Any]], do_obj: bool,
                     dP_k: Any, whole_grid: bool) -> tuple[Any, Any, Any, Any, bool] | None:
        """The group after phase 1 as one compiled call per part, run together
        (``_kernels.lsqml_tail_part``): (α_O, α_P, ΔO, ΔP, whether the object step was made).
        None where it does not apply (multislice, no kernel FFT plans, ranks, parts from the
        array code, the pool unable to run the parts at once): the caller then runs it step by
        step, to the same numbers."""
        use_probe = dP_k is not None
        tail = self._tail_arguments(state, parts, first, do_obj, use_probe, whole_grid)
        if tail is None:
            return None
        k = tail.k

        def launch(i: int) -> parallel.Launch:
            fwd = first[i]["fwd"]
            args, steps, dp = tail.tail_args(i, dP_k if use_probe else fwd.psi1[0])

            def finish(_: Any) -> tuple[Any, Any]:
                _count_terms_ffts(fwd.psi1, use_probe, dp)
                return steps, dp if len(dp) else None

            return parallel.Launch(k.lsqml_tail_part, args, finish)

        done = parallel.map_launches(launch, list(range(len(parts))), together=True, release=tail.release)
        if done is None:
            return None
        steps, dP = done[0]
        return steps[0], steps[1], first[0]["num"] if do_obj else None, dP, tail.apply_step

    def _part_launches(self, state: Any, parts: list[common.Batch], do_obj: bool, do_probe: bool,
                       do_pos: bool = False, bg_parts: list[Any] | None = None) -> list[parallel.Launch] | None:
        """``_part_directions`` of every part as one compiled call each
        (``common.prepare_part_kernel``, finishing as a KernelPart), or None where a part has none.
        ``bg_parts``: each part's (3, M, N) background buffer (``_background_parts``)."""
        scratch = self.scratch()
        launches = [common.prepare_part_kernel(state, pb, self.ctx, numerator=do_obj, illumination=do_obj,
                                               probe=do_probe, scratch=scratch, slot=i, positions=do_pos,
                                               lsqml_step=True, background=None if bg_parts is None else bg_parts[i])
                    for i, pb in enumerate(parts)]
        return None if any(ln is None for ln in launches) else launches

    def _background_parts(self, n: int, bg: Any) -> list[Any] | None:
        """Per part, (3, M, N): B, then zeroed Newton sums (the compiled parts' ``Noise.background``);
        None without kernels or where the detector is not the window (the array path then runs)."""
        scratch = self.scratch()
        if scratch is None or tuple(bg.shape) != tuple(self._window):
            return None
        out = []
        for i in range(n):
            buf = scratch.get(("background", i), (3, *bg.shape), bg.dtype)
            buf[0] = bg
            buf[1:] = 0
            out.append(buf)
        return out

    def _tail_arguments(self, state: Any, parts: list[common.Batch], first: list[dict[str, Any]], do_obj: bool,
                        use_probe: bool, whole_grid: bool) -> _TailArguments | None:
        k = backend.kernels(self.ctx.xp)
        m, n = state.window
        if (k is None or state.n_slices != 1 or distributed.comm_of(self.ctx).size != 1 or not (do_obj or use_probe)
                or any(r["fwd"].psi1 is None or r["g_exit"] is None for r in first)):
            return None
        plans = host_fft.kernel_fft_plans(m, n, first[0]["fwd"].psi1.dtype)
        if plans is None:
            return None
        obj = state.object[:, 0, ...]
        scratch = self.scratch()
        real = self.ctx.real_dtype
        if do_obj:
            nums, ws = tuple(r["num"][:, 0, ...] for r in first), tuple(r["W"][:, 0, ...] for r in first)
            if any(a.shape != obj.shape or not a.flags.c_contiguous for a in (*nums, *ws)):
                return None
        else:
            nums, ws = (obj,), (scratch.get(("tail", "w"), (1, 1, 1), real),)
        return _TailArguments(self, k, plans, state, parts, first, nums, ws, do_obj, use_probe,
                              do_obj and whole_grid and self._steps_in_place(state, first[0]["num"]))

    def _part_directions(self, state: Any, b: common.Batch, do_obj: bool, do_probe: bool,
                         do_pos: bool, background: Any = None) -> dict[str, Any]:
        """Forward model, χ and its adjoint for one part of the group, and the part's shares of
        the object numerator Σ∇O_j, the illumination W and Σ_j F[∇ψ_j]·ramp*.
        ``background``: B (M, N), the model intensity being I + B (lsqml_background.py); the
        part's Newton sums of B's update come back as ``bg_sums``."""
        xp = self.ctx.xp
        fwd = common.forward(state, b, self.ctx, patches=do_pos)
        bg_sums = None
        # g_exit = F⁻¹[∇_Ψ L] is shared by the adjoint and the single-slice steps
        if background is not None:
            ctx = self.ctx
            I = fwd.I  # noqa: E741
            bg_sums = self._background.sums(I, b.data, ctx.noise_model, ctx.mask, ctx.eps)
            if ctx.noise_model == "poisson":
                loss = noise.loss(I + background, b.data, "poisson", ctx.mask, ctx.eps)
                grad_Psi = primitives.lsqml_exit_step(fwd.Psi, b.data, "poisson", ctx.mask, ctx.eps, I=I,
                                                      background=background)
            else:
                loss, grad_Psi = primitives.farfield_update(fwd.Psi, b.data, ctx.noise_model, ctx.mask, ctx.eps,
                                                            0.0, 2.0, I=I + background)
            g_exit = backend.ifft2(grad_Psi, overwrite=True)
        elif self.ctx.noise_model in _OWN_CHI:
            loss, _ = common.loss_and_grad_farfield(fwd, b, self.ctx)
            if self.ctx.noise_model == "poisson":
                grad_Psi = self._poisson_step(fwd, b)
            elif self.ctx.noise_model == "intensity":
                grad_Psi = self._projection_step(fwd, b)
            else:  # χ = Ψ̂ - Ψ: the loss scale is counts², not a step
                grad_Psi = -2.0 * (common.compressed_projection(fwd, b, self.ctx) - fwd.Psi)
            g_exit = backend.ifft2(grad_Psi, overwrite=True)
        else:
            loss, g_exit = common.loss_and_grad_exit(fwd, b, self.ctx)
        fused = common.backward_accumulate(g_exit, fwd, state, b, self.ctx, numerator=do_obj, illumination=do_obj)
        if fused is not None:  # single slice on the CPU: adjoint and both scatter-adds in one pass
            out = {"fwd": fwd, "loss": loss, "g_exit": g_exit, "g_patches": None, "g_psi1": fused[2],
                   "illum": None, "num": fused[0], "W": fused[1]}
        else:
            g_patches, g_psi1 = common.backward(None, fwd, self.ctx, grad_exit=g_exit)
            out = {"fwd": fwd, "loss": loss, "g_exit": g_exit, "g_patches": g_patches, "g_psi1": g_psi1,
                   "illum": illumination_patches(fwd, state.object.shape[0]) if do_obj else None}
            if do_obj:
                out["num"] = overlap.accumulate(xp.zeros_like(state.object), b.y0, b.x0, g_patches)
                out["W"] = overlap.accumulate(xp.zeros(state.object.shape, dtype=self.ctx.real_dtype),
                                              b.y0, b.x0, out["illum"])
        out["bg_sums"] = bg_sums
        g_psi1 = out["g_psi1"]
        if do_probe:
            # g_psi1 is read again by the position terms and the multislice step terms; else its
            # FFT runs in place (an out-of-place one was measured 1.4x slower per transform)
            last_read = state.n_slices == 1 and not do_pos
            out["probe_k"] = overlap.unshift_sum_of(g_psi1, b.frac, overwrite=last_read)
            if last_read:
                out["g_psi1"] = None
        return out

    def _kernel_terms(self, state: Any, i: int, b: common.Batch, r: dict[str, Any], dO: Any,
                      dP_k: Any) -> parallel.Launch | None:
        """``_terms_single`` of part ``i`` as one compiled call (``_kernels.lsqml_terms_part``),
        finishing as (terms, ΔP or None): part 0 also transforms ΔP back, in its call.
        None where it does not apply (multislice, no kernels or kernel FFT plans, a part
        without the single-slice kernel's waves)."""
        k = backend.kernels(self.ctx.xp)
        m, n = state.window
        fwd = r["fwd"]
        if k is not None and state.n_slices > 1:
            return self._kernel_terms_multi(k, state, i, b, r, dO, dP_k)
        if k is None or state.n_slices != 1 or fwd.psi1 is None or r["g_exit"] is None:
            return None
        plans = host_fft.kernel_fft_plans(m, n, fwd.psi1.dtype)
        if plans is None:
            return None
        obj = state.object[:, 0, ...]
        scratch = self.scratch()
        out = scratch.get(("terms", i, "out"), (len(b.idx), 5), "float64")  # the kernel's sums, in the steps' dtype
        d_obj = dO[:, 0, ...] if dO is not None else obj
        use_probe = dP_k is not None
        spectrum = dP_k if use_probe else fwd.psi1[0]  # read only with use_probe
        shifted, dp = _terms_buffers(scratch, i, fwd.psi1, use_probe)
        args = (plans[0], plans[2], spectrum, b.frac, k.real_scalar(backend.unitary_scale((m, n)), obj), d_obj, obj,
                b.y0.astype("int64"), b.x0.astype("int64"), fwd.psi1, r["g_exit"], dO is not None, use_probe,
                shifted, out, dp)

        def finish(_: Any) -> tuple[tuple[Any, ...], Any]:
            _count_terms_ffts(fwd.psi1, use_probe, dp)
            return tuple(out[:, c, ...] for c in _term_columns(dO is not None, use_probe)), dp if len(dp) else None

        return parallel.Launch(k.lsqml_terms_part, args, finish)

    def _kernel_terms_multi(self, k: Any, state: Any, i: int, b: common.Batch, r: dict[str, Any], dO: Any,
                            dP_k: Any) -> parallel.Launch | None:
        """``_terms_multi`` of part ``i`` as one compiled call (``_kernels.lsqml_terms_multi_part``,
        reading the windows ``multislice_part`` kept), finishing as ``_kernel_terms`` does.
        None where it does not apply (a part from the array code, no kernel FFT plans)."""
        m, n = state.window
        use_obj, use_probe = dO is not None, dP_k is not None
        if ("probe_weight" not in r  # not from the compiled part
                or (use_probe and (r["probe_weight"] is None or r["g_psi1"] is None))
                or (use_obj and (r["g_patches"] is None or r["illum"] is None or not dO.flags.c_contiguous))):
            return None
        plans = host_fft.kernel_fft_plans(m, n, state.object.dtype)
        if plans is None:
            return None
        scratch = self.scratch()
        n_b, n_p = len(b.idx), state.probe.shape[0]
        n_s = state.n_slices
        real = self.ctx.real_dtype
        out_obj = scratch.get(("terms", i, "obj"), (n_b, n_s, 2), "float64")
        out_probe = scratch.get(("terms", i, "probe"), (n_b, 2), "float64")
        shifted, dp = _terms_buffers(scratch, i, state.probe[None], use_probe)  # as the single-slice terms'
        # the kept windows in the kernel's layout (B, S, Q, M, N); stand-ins of the right kind when unused
        g_patches = r["g_patches"].transpose(0, 2, 1, 3, 4) if use_obj else shifted[None]
        w_patches = r["illum"].transpose(0, 2, 1, 3, 4) if use_obj else scratch.get(("terms", "w"), (1,) * 5, real)
        g_psi1 = r["g_psi1"] if use_probe else shifted
        t1 = r["probe_weight"][:, 0, ...] if use_probe else w_patches[0, 0, ...]
        scale = k.real_scalar(backend.unitary_scale((m, n)), state.object)
        args = (plans[2], dP_k if use_probe else shifted[0], b.frac, scale, dO if use_obj else state.object,
                b.y0.astype("int64"), b.x0.astype("int64"), g_patches, w_patches, g_psi1, t1, use_obj, use_probe,
                shifted, out_obj, out_probe, dp)

        def finish(_: Any) -> tuple[tuple[Any, ...], Any]:
            host_fft.kernel_ffts((m, n), (n_b * n_p if use_probe else 0) + len(dp))
            terms = (out_obj[..., 0], out_obj[..., 1]) if use_obj else ()
            terms += (out_probe[:, 0, ...], out_probe[:, 1, ...]) if use_probe else ()
            return terms, dp if len(dp) else None

        return parallel.Launch(k.lsqml_terms_multi_part, (plans[0], *args), finish)

    def _part_step_terms(self, state: Any, b: common.Batch, r: dict[str, Any], dO: Any,
                         dP_k: Any) -> tuple[Any, ...]:
        """Per-position terms of the step problems for one part (each (B,) or (B, S)); ΔP is
        given by its spectrum ``dP_k``, which is all its shifts read."""
        if state.n_slices == 1:
            return self._terms_single(state, b, r["fwd"], r["g_exit"], dO, dP_k)
        return self._terms_multi(state, b, r["fwd"], r["g_patches"], dO, dP_k, r["g_psi1"], r["illum"],
                                 r.get("probe_weight"))

    def _projection_step(self, fwd: common.Forward, b: common.Batch) -> Any:
        """-2 χ with χ = Ψ̂ - Ψ, Ψ̂ = sqrt(D/I) Ψ the projection on the measured intensities
        (masked pixels kept): the amplitude model's χ, used for the intensity model too.
        Why: -½∇ of the intensity loss, 2(I - D)Ψ, is not an exit-wave step (it scales with the
        counts), and the 2×2 steps of §6.3 then overshot to NaN in the first iteration; the
        projection is where the intensity loss is smallest pixel by pixel, as for amplitude."""
        return primitives.lsqml_exit_step(fwd.Psi, b.data, "intensity", self.ctx.mask, self.ctx.eps, I=fwd.I)

    def _poisson_step(self, fwd: common.Forward, b: common.Batch) -> Any:
        """-2 χ with χ = β_ξ r Ψ, r = D/(I+ε) - 1, β_ξ ∈ [0, 1] minimising the Poisson loss
        along r Ψ per position (3 Newton steps on dL/dβ, physics.md §6.3.1)."""
        return primitives.lsqml_exit_step(fwd.Psi, b.data, "poisson", self.ctx.mask, self.ctx.eps, I=fwd.I)

    # ------------------------------------------------------------------ directions
    def _object_direction(self, state: Any, nums: list[Any], Ws: list[Any]) -> Any:
        """ΔO_{q,s} = Σ_j ΔO_{j,q,s} / sqrt(W_{q,s}² + (δ max_q max W_{q,s})²), W_{q,s} =
        Σ_j |ψ_{j,q,s}|² (§6.3.4), from the parts' partial sums of Σ_j ∇O_j and W.

        Why the max over object modes: past slice 1 a weak object mode's illumination is weak
        (|ψ_{2,s}| ~ |O_2|^(s-1)|P|), and with its own max the direction ∝ χ/ψ asked a change of
        the weak mode thousands of times the mode (`init --object-modes 2` with 4 slices: NaN
        in the first group). The strongest mode's max bounds every mode's step instead; one
        slice is unchanged (every mode sees the same probe).
        """
        xp = self.ctx.xp
        comm = distributed.comm_of(self.ctx)
        k = backend.kernels(xp)
        flat = (-1, *nums[0].shape[-2:])
        modes = nums[0].shape[0]
        if (k is not None and comm.size == 1 and len(nums) == 2 and nums[0].shape == Ws[0].shape
                and all(a.flags.c_contiguous for a in (*nums, *Ws))):
            # the two parts' sums added inside the kernel's two passes, in place in nums[0]
            k.lsqml_direction(nums[0].reshape(flat), Ws[0].reshape(flat), k.real_scalar(self.params.delta, Ws[0]),
                              nums[1].reshape(flat), Ws[1].reshape(flat), modes)
            return nums[0]
        num = comm.allreduce_sum(common.sum_parts(nums))
        W = comm.allreduce_sum(common.sum_parts(Ws))
        if k is not None and W.shape == num.shape and num.flags.c_contiguous and W.flags.c_contiguous:
            # two passes, in place in num (the reshapes below are views)
            k.lsqml_direction(num.reshape(flat), W.reshape(flat), k.real_scalar(self.params.delta, W), None, None,
                              modes)
            return num
        return primitives.lsqml_direction(num, W, self.params.delta)

    # ------------------------------------------------------------------ steps
    def _terms_single(self, state: Any, b: common.Batch, fwd: common.Forward, g_exit: Any,
                      dO: Any, dP_k: Any) -> tuple[Any, ...]:
        """Per-position dots of the damped 2×2 least squares for (α_O, α_P): (aa, bb, ab, ra, rb)
        with both directions, (aa, ra) or (bb, rb) with one.

        ``g_exit`` = F⁻¹[∇_Ψ L]; the exit-plane update is χ = -½ g_exit, folded into the dots.
        """
        k = backend.kernels(self.ctx.xp)
        if k is not None:  # the five dots in one pass, windows read from the object grids directly
            obj = state.object[:, 0, ...]
            # (with kernel FFT plans, ``_kernel_terms`` runs the part instead, ΔP shifted inside)
            shifted = overlap.shift_spectrum(dP_k, b.frac) if dP_k is not None else fwd.psi1
            out = k.empty((len(b.idx), 5), "float64")  # the kernel's sums, in the steps' dtype
            k.lsqml_terms(dO[:, 0, ...] if dO is not None else obj, obj, b.y0.astype("int64"), b.x0.astype("int64"),
                          fwd.psi1, shifted, g_exit, dO is not None, dP_k is not None, out)
            return tuple(out[:, i, ...] for i in _term_columns(dO is not None, dP_k is not None))
        t = fwd.patches[:, None, :, 0, ...]  # (B, 1, Q, M, N)
        a = overlap.extract(dO, b.y0, b.x0, state.window)[:, None, :, 0, ...] * fwd.psi1[:, :, None, ...] \
            if dO is not None else None
        bb = t * overlap.shift_spectrum(dP_k, b.frac)[:, :, None, ...] if dP_k is not None else None
        return primitives.lsqml_dots(a, bb, g_exit)

    def _steps_single(self, terms: tuple[Any, ...], has_obj: bool, has_probe: bool) -> tuple[Any, Any]:
        """Damped 2×2 least squares per position for (α_O, α_P), then batch averages.

        Solved in float64: the dots are sums of squares over whole windows in counts, and in
        float32 aa·bb can overflow and aa·bb - ab² cancel to noise, which made a step (and
        the run) NaN.
        """
        xp = self.ctx.xp
        terms = tuple(t if t.dtype == xp.float64 else xp.astype(t, xp.float64) for t in terms)
        k = backend.kernels(xp)
        if k is not None:  # the same formulas in one host call
            cols = self._gathered(*terms)
            full = cols if has_obj and has_probe else (cols[0], cols[0], cols[0], cols[1], cols[1])
            out = k.empty((2,), self.ctx.real_dtype)
            k.lsqml_steps(*full, 0 if has_obj and has_probe else 1 if has_obj else 2, float(self.params.trim),
                          float(self.params.beta_lsq), out)
            return out[0], out[1]
        return primitives.lsqml_steps(self._gathered(*terms), has_obj, has_probe, self.params.trim,
                                      self.params.beta_lsq, self.ctx.real_dtype)

    def _terms_multi(self, state: Any, b: common.Batch, fwd: common.Forward, g_patches: Any,
                     dO: Any, dP_k: Any, g_psi1: Any, illum: Any, probe_weight: Any = None) -> tuple[Any, ...]:
        """Per-position (num, den) of the decoupled per-slice object steps (B, S) and of the
        probe step (B,), for the directions present. ``probe_weight``: Σ_q |O_{q,1}|² windows
        (B, 1, M, N) when the compiled part made them (else from ``fwd.patches``)."""
        xp = self.ctx.xp
        out: tuple[Any, ...] = ()
        if dO is not None:
            d = overlap.extract(dO, b.y0, b.x0, state.window)  # (B, Q, S, M, N)
            out += primitives.lsqml_slice_dots(d, g_patches, illum, keep=(0, 2))  # Re⟨ΔO_s ψ_s, χ_s⟩ terms (B, S)
        if dP_k is not None:
            shifted = overlap.shift_spectrum(dP_k, b.frac)  # (B, P, M, N)
            t1 = probe_weight if probe_weight is not None else \
                xp.sum(backend.abs2(fwd.patches[:, :, 0, ...]), axis=1)[:, None, ...]  # (B, 1, M, N)
            out += primitives.lsqml_slice_dots(shifted, g_psi1, xp.broadcast_to(t1, shifted.shape))
        return out

    def _steps_multi(self, state: Any, terms: tuple[Any, ...], has_obj: bool, has_probe: bool) -> tuple[Any, Any]:
        """Decoupled per-slice steps α_O,s = ½ Re⟨ΔO_s ψ_s, χ_s⟩ / ‖ΔO_s ψ_s‖², object step / S
        (in float64, as ``_steps_single``)."""
        xp = self.ctx.xp
        terms = tuple(xp.astype(t, xp.float64) for t in terms)
        a_O, a_P = 0.0, 0.0
        if has_obj:
            num, den = self._gathered(*terms[:2])
            terms = terms[2:]
            alpha = 0.5 * self.params.multislice_step * num / (den + 0.1 * xp.mean(den, axis=0))
            a_O = self._combine(alpha, axis=0)[None, :, None, None, ...] / state.n_slices
        if has_probe:
            num, den = self._gathered(*terms)
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
        return primitives.trimmed_step(alpha, self.params.trim if trim is None else trim, self.params.beta_lsq,
                                       self.ctx.real_dtype, axis)


# noise models whose exit-wave update χ is not -½ ∇_Ψ L (``_part_directions``): no compiled parts
_OWN_CHI = ("poisson", "intensity", "compressed")


def illumination_patches(fwd: common.Forward, n_object_modes: int) -> Any:
    """Σ_p |ψ_{j,s}|² per object mode and slice, as (B, Q, S, M, N) windows."""
    xp = backend.namespace(fwd.psi1)
    k = backend.kernels(xp)
    if k is not None:  # every slice's mode sum written straight into the (B, Q, S, M, N) result
        first = fwd.cache.psi[0]
        out = k.empty((first.shape[0], n_object_modes, len(fwd.cache.psi), *first.shape[-2:]), first.real.dtype)
        for s, psi in enumerate(fwd.cache.psi):
            k.mode_power(psi, out[:, :, s, ...])
        return out
    slices = [primitives.mode_power(psi, n_object_modes) for psi in fwd.cache.psi]
    return slices[0][:, :, None, ...] if len(slices) == 1 else xp.stack(slices, axis=2)


def _term_columns(has_obj: bool, has_probe: bool) -> tuple[int, ...]:
    """The columns of the single-slice terms kernels' (B, 5) output that the steps read:
    (aa, bb, ab, ra, rb) with both directions, (aa, ra) or (bb, rb) with one."""
    return (0, 1, 2, 3, 4) if has_obj and has_probe else (0, 3) if has_obj else (1, 4)


def _directions_of(kp: common.KernelPart) -> dict[str, Any]:
    """A compiled part's phase-1 results in the form ``_part_directions`` gives them."""
    return {"fwd": kp.fwd, "loss": kp.loss, "g_exit": kp.g_exit, "g_patches": kp.g_patches, "g_psi1": kp.g_psi1,
            "illum": kp.illum_patches, "num": kp.num, "W": kp.illum, "probe_k": kp.probe_k,
            "probe_weight": kp.probe_weight}


class _TailArguments:
    """``lsqml_tail_part``'s arguments, for a group's threads."""

    def __init__(self, engine: LsqmlEngine, k: Any, plans: tuple[int, int, int], state: Any,
                 parts: list[common.Batch], first: list[dict[str, Any]], nums: tuple[Any, ...], ws: tuple[Any, ...],
                 do_obj: bool, use_probe: bool, apply_step: bool):
        self.k, self.plans, self.parts, self.first, self.use_probe = k, plans, parts, first, use_probe
        self.apply_step = apply_step
        self.obj = state.object[:, 0, ...]
        self.nums, self.ws, self.do_obj = nums, ws, do_obj
        scratch = self.scratch = engine.scratch()
        real = engine.ctx.real_dtype
        n_t = len(parts)
        self.out = scratch.get(("tail", "out"), (sum(len(pb.idx) for pb in parts), 5), "float64")
        self.maxes = scratch.get(("tail", "maxes"), (n_t, self.obj.shape[0]), real)
        self.bar = scratch.get(("tail", "bar"), (1,), "int64")
        self.bar[0] = 0
        self.mode = 0 if do_obj and use_probe else 1 if do_obj else 2
        self.delta = k.real_scalar(engine.params.delta, ws[0])
        self.scale = k.real_scalar(backend.unitary_scale(state.window), self.obj)
        self.trim, self.beta = float(engine.params.trim), float(engine.params.beta_lsq)
        self.starts = list(itertools.accumulate((len(pb.idx) for pb in parts), initial=0))  # each part's first row
        self.real = real
        self.group = k.records.TailGroup(self.maxes, nums, ws, self.delta, self.obj, self.out, self.mode, self.trim,
                                         self.beta, do_obj, use_probe, apply_step)

    def buffers(self, i: int) -> tuple[Any, Any, Any]:
        """Thread i's (shifted ΔP window, ΔP (thread 0 with the probe; else empty), steps)."""
        shifted, dp = _terms_buffers(self.scratch, i, self.first[i]["fwd"].psi1, self.use_probe)
        return shifted, dp, self.scratch.get(("tail", i, "steps"), (2,), self.real)

    def tail_args(self, i: int, spectrum: Any) -> tuple[tuple[Any, ...], Any, Any]:
        """(``lsqml_tail_part``'s arguments for thread i, the terms reading ``spectrum`` as
        F[ΔP], its steps, its ΔP)."""
        pb, fwd, rec = self.parts[i], self.first[i]["fwd"], self.k.records
        shifted, dp, steps = self.buffers(i)
        part = rec.TailPart(spectrum, pb.frac, self.scale, pb.y0.astype("int64"), pb.x0.astype("int64"), fwd.psi1,
                            self.first[i]["g_exit"], shifted, self.starts[i], dp, steps)
        return (self.bar.ctypes.data, i, len(self.parts), rec.Fft(*self.plans), self.group, part), steps, dp

    def release(self) -> None:
        """The caller's call failed: the other threads' barriers pass."""
        self.bar[0] = 1 << 40


def _terms_buffers(scratch: common.Scratch, i: int, psi1: Any, use_probe: bool) -> tuple[Any, Any]:
    """Part i's buffers for the step terms' kernels: the shifted ΔP of one window and ΔP
    itself (part 0 with the probe refined; else empty), planes aligned as the FFT plans."""
    n_p, m, n = psi1.shape[1:]
    shifted = scratch.get(("terms", i, "shifted"), (1, n_p, m, n), psi1.dtype, aligned=True)
    dp = scratch.get(("terms", i, "dp"), (n_p, m, n) if use_probe and i == 0 else (0, m, n), psi1.dtype, aligned=True)
    return shifted, dp


def _count_terms_ffts(psi1: Any, use_probe: bool, dp: Any) -> None:
    """Report a part's transforms in the terms' kernels: one per window and probe mode with
    the probe refined, and ΔP's own (``dp``'s planes)."""
    host_fft.kernel_ffts(psi1.shape[-2:], (psi1.shape[0] * psi1.shape[1] if use_probe else 0) + len(dp))
