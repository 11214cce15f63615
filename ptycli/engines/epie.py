"""ePIE (Maiden & Rodenburg 2009), 3PIE for multislice (Maiden 2012), rPIE option (2017).

physics.md §6.1-6.2. The ePIE rule is applied at every slice, the "probe" of slice s
being its incident wave; probe modes and object modes update as in Thibault & Menzel
2013. Updates of a group are summed (group size 1 is the classical sequential ePIE).
Data-parallel (engines/distributed.py) a group's per-position updates, all computed from
the pre-group state, are summed over the ranks before they are applied: the same update
as one process. Sequential ePIE (group size 1) cannot be shared and is refused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend, host_fft, parallel
from ..physics import overlap, propagation
from . import common, distributed, primitives
from . import noise as noise_mod
from .data import Rows


class EpieEngine(common.EngineBase):
    _probe_cache: tuple[Any, Any] | None = None  # (the probe array, its spectrum) for the lean path
    _buffers: tuple[tuple, dict[str, Any]] | None = None  # the lean path's work arrays
    _native: tuple[tuple, Any] | None = None  # ((M, N, dtype), plans of the compiled path or None)
    _sync: tuple[tuple, dict[str, Any]] | None = None  # the threaded 3PIE position's barrier and maxima

    reads_rows = True  # data may come as data.Rows (common.EngineBase)
    _resumed: tuple[Any, Any] | None = None  # a checkpoint's (probe, carried spectrum), until adopted

    def state_dict(self) -> dict[str, Any]:
        """The probe spectrum ``_update_one`` carries from position to position: summed step by
        step it differs in the last bits from a fresh FFT of the probe, so a resume that
        transformed the probe again drifted ~1e-6 from the uninterrupted run."""
        if self._probe_cache is None:
            return {}
        probe, spectrum = self._probe_cache
        return {"carried/probe": backend.to_numpy(probe), "carried/spectrum": backend.to_numpy(spectrum)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "carried/spectrum" in state:
            self._resumed = (state["carried/probe"], state["carried/spectrum"])

    def _carried_spectrum(self, probe: Any) -> Any:
        """The spectrum carried for ``probe`` (this run's, or the checkpoint's when ``probe`` is
        the probe it was carried for), or None."""
        cache, resumed = self._probe_cache, self._resumed
        if cache is not None and cache[0] is probe:
            return cache[1]
        self._resumed = None  # the first position after a resume decides
        if resumed is not None and _same_bits(backend.to_numpy(probe), np.asarray(resumed[0])):
            return self.ctx.xp.asarray(resumed[1], dtype=probe.dtype)
        return None

    def update(self, state: Any, idx: np.ndarray, data: Any, it: int) -> Any:
        xp, p = self.ctx.xp, self.params
        k = backend.kernels(xp)
        if k is not None and len(idx) == 1 and self._lean_applies(state, it):
            # the position's frame: a view of the resident set when it comes as rows of it
            frame = data.frames[data.rows[0]][None] if isinstance(data, Rows) else data
            out = self._update_one(k, state, int(idx[0]), frame, it)
            if out is not None:
                return out
        b = self.batch(state, idx, data)
        fwd = common.forward(state, b, self.ctx)
        loss, target = self._target_exit(fwd, b)
        do_obj, do_probe = p.refine.object.active(it), p.refine.probe.active(it)
        if k is not None and state.n_slices == 1:
            return self._update_fused(k, state, b, fwd, target, loss, it)
        d_obj = []  # per slice (B, Q, M, N), applied after the sweep (pre-update values)
        e_new = target
        for s in range(state.n_slices - 1, -1, -1):
            psi = fwd.cache.psi[s]  # (B, P, Q|1, M, N)
            d_o, d_psi = primitives.epie_update(fwd.patches[:, :, s, ...], psi, e_new, p.beta, p.rpie_gamma)
            d_obj.append(d_o)
            if s > 0:
                e_new = propagation.propagate_adjoint(psi + d_psi, fwd.H if fwd.H is None or fwd.H.ndim == 2 else fwd.H[:, None, None, ...])
        d_psi1 = d_psi
        # (B, P, M, N): average over object modes
        d_psi1 = d_psi1[:, :, 0, ...] if d_psi1.shape[2] == 1 else xp.mean(d_psi1, axis=2)
        if do_obj:
            upd = d_obj[0][:, :, None, ...] if len(d_obj) == 1 else xp.stack(d_obj[::-1], axis=2)  # (B, Q, S, M, N)
            upd = upd * p.alpha if upd.dtype == state.object.dtype else xp.astype(p.alpha * upd, state.object.dtype)
            self._add_object(state, b, upd)
        if do_probe:
            probe = state.probe + self._mean_probe_update(overlap.unshift(d_psi1, b.frac))
            state.probe = probe if probe.dtype == state.probe.dtype else self.ctx.xp.astype(probe, state.probe.dtype)
        if p.refine.positions.active(it):
            # χ at the probe plane ≈ Σ_q conj(t_1) Δe_1 = (ψ'_1 - ψ_1) max|t_1|² / β: ∇ψ_1 = -2 χ
            t1_max = xp.max(backend.abs2(fwd.patches[:, :, 0, ...]), axis=(1, 2, 3))[:, None, None, None, ...]
            self.refine_positions(state, b, -2.0 * d_psi1 * t1_max / p.beta, fwd, it)
        return distributed.comm_of(self.ctx).allreduce_sum(self.ctx.xp.sum(loss))

    def _lean_applies(self, state: Any, it: int) -> bool:
        """Sequential ePIE on the CPU without peers (multislice, and position refinement, only
        through the compiled positions: ``_update_one``)."""
        return self.ctx.noise_model != "compressed" and distributed.comm_of(self.ctx).size == 1

    def _update_one(self, k: Any, state: Any, j: int, data: Any, it: int) -> Any:
        """Classical sequential ePIE for one position with the fewest calls (physics.md §6.1).

        The same update as the general path: per position it costs little beyond its five
        FFTs, since the probe's spectrum is carried over from the previous position's update
        (F[P + ΔP] = F[P] + F[ΔP]) instead of being transformed again. Returns None when the
        window leaves the object (the general path then reports it).
        """
        p = self.params
        m, n = state.window
        # overlap.split_positions for one host position, without array calls
        py, px = (float(v) for v in state.positions[j])
        fy, fx = math.floor(py), math.floor(px)
        y0, x0 = int(fy) - m // 2, int(fx) - n // 2
        obj = state.object[:, 0, ...]
        if y0 < 0 or x0 < 0 or y0 + m > obj.shape[-2] or x0 + n > obj.shape[-1]:
            return None
        if state.n_slices > 1 and self._native_plans(state.probe) is None:
            return None  # 3PIE runs compiled or not at all here (before the probe's FFT below)
        if p.refine.positions.active(it) and self._native_plans(state.probe) is None:
            return None  # position terms: the compiled positions only
        ys, xs = np.asarray([y0]), np.asarray([x0])  # host bookkeeping: this path runs on the CPU only
        frac = np.asarray([[py - fy, px - fx]], dtype=self.ctx.real_dtype)
        probe_k = self._carried_spectrum(state.probe)
        probe_k = backend.fft2(state.probe) if probe_k is None else probe_k
        # Every transform below but the probe's runs in place on its own temporary and
        # unnormalised; s = 1/sqrt(MN) rides on a pass that is made anyway (the ramps, the
        # far-field kernel's factors), so no transform has a scaling pass of its own.
        s = backend.unitary_scale(probe_k.shape)
        native = self._native_plans(probe_k)
        if native is not None and probe_k.ctypes.data % 64:
            # the compiled positions' plans need 64-byte-aligned planes: the spectrum from
            # backend.fft2 into an aligned array of our own (then carried from position to position)
            aligned = k.empty(probe_k.shape, probe_k.dtype, aligned=True)
            aligned[...] = probe_k
            probe_k = aligned
        if state.n_slices > 1 or (native is not None and _threads(probe_k.shape[0], obj.shape[0]) > 1):
            # 3PIE (``native`` is known to exist), or one slice with several wave chains (probe x
            # object modes), which the threaded multislice position runs side by side
            return self._kernel_multislice(k, native, state, j, probe_k, frac, s, ys, xs, data, it)
        buf = self._lean_buffers(k, probe_k, obj.shape[0])
        if native is not None:
            return self._kernel_position(k, native, state, j, probe_k, frac, s, obj, ys, xs, data, buf, it)
        psi = backend.ifft2(k.ramp_product(probe_k, frac, -1.0, k.real_scalar(s, probe_k), buf["psi"]),
                            overwrite=True, scaled=False)
        Psi_raw = backend.fft2(k.exit_from_object(obj, ys, xs, psi, buf["exit"]), overwrite=True, scaled=False)
        # Ψ = s Ψ_raw; e' = F⁻¹[(1 - ℓ')Ψ] = s² F_raw⁻¹[(1 - ℓ')Ψ_raw]
        loss, corrected = noise_mod.fused_farfield(Psi_raw, data, self.ctx.noise_model, self.ctx.mask, self.ctx.eps,
                                                   s * s, -s * s, in_scale=s, out=buf["corrected"], loss=buf["loss"],
                                                   projection=True)
        target = backend.ifft2(corrected, overwrite=True, scaled=False)
        d_obj, d_psi = self._kernel_updates(k, obj, ys, xs, psi, target, out=(buf["d_obj"], buf["d_psi"]))
        self._host_steps(k, state, obj, ys, xs, d_obj, d_psi, probe_k, frac, s, p.refine.object.active(it),
                         p.refine.probe.active(it))
        self._probe_cache = (state.probe, probe_k)
        return self.ctx.xp.sum(loss)

    @staticmethod
    def _host_steps(k: Any, state: Any, obj: Any, ys: Any, xs: Any, d_obj: Any, d_psi: Any, probe_k: Any, frac: Any,
                    s: float, do_obj: bool, do_probe: bool) -> None:
        """One position's object step (α·ΔO, scattered in place through the (Q, H, W) view) and
        probe step through the carried spectrum, F[P] += s·ramp*·F[Δψ]: ``d_psi`` is
        transformed in place and ``probe_k`` is this engine's own array, never the caller's."""
        if do_obj:
            k.scatter_add(obj, ys, xs, d_obj)
        if do_probe:
            step_k = backend.fft2(d_psi, overwrite=True, scaled=False)
            k.ramp_multiply(step_k, frac, 1.0, k.real_scalar(s, step_k))
            probe_k += step_k[0]
            state.probe = backend.ifft2(probe_k).astype(state.probe.dtype, copy=False)  # NumPy only (kernels)

    def _lean_buffers(self, k: Any, probe_k: Any, n_obj_modes: int) -> dict[str, Any]:
        """Work arrays of the sequential path, made once and reused for every position: no
        allocation per position, and the FFTs run in place on buffers that stay in cache.
        Aligned to 64 bytes at any size: the compiled path's FFTW plans need it."""
        n_p, m, n = probe_k.shape
        key = (n_p, n_obj_modes, m, n, probe_k.dtype)
        if self._buffers is None or self._buffers[0] != key:
            c = probe_k.dtype
            e = lambda *shape: k.empty(shape, c, aligned=True)  # noqa: E731
            self._buffers = (key, {
                "psi": e(1, n_p, m, n), "exit": e(1, n_p, n_obj_modes, m, n),
                "corrected": e(1, n_p * n_obj_modes, m, n), "loss": k.empty((1,), self.ctx.real_dtype),
                "d_obj": e(1, n_obj_modes, m, n), "d_psi": e(1, n_p, m, n)})
        return self._buffers[1]

    def _native_plans(self, probe_k: Any) -> tuple[int, int, int] | None:
        """FFTW plans for ``_kernels.epie_position`` (the whole position in one call), or None
        where it does not apply (``host_fft.kernel_fft_plans``)."""
        key = (*probe_k.shape[-2:], probe_k.dtype)
        if self._native is None or self._native[0] != key:
            self._native = (key, host_fft.kernel_fft_plans(*key))
        return self._native[1]

    def _kernel_position(self, k: Any, native: tuple[int, int, int], state: Any, j: int, probe_k: Any, frac: Any,
                         s: float, obj: Any, ys: Any, xs: Any, data: Any, buf: dict[str, Any], it: int) -> Any:
        """``_update_one``'s position as one compiled call (transforms included): the same
        steps without its ~25 Python-level calls."""
        p = self.params
        do_obj, do_probe, do_pos = (p.refine.object.active(it), p.refine.probe.active(it),
                                    p.refine.positions.active(it))
        # refining positions, the kernel stops before both steps: the position terms read the
        # window and Δψ as the update saw them (the steps then follow here)
        obj_in, probe_in = do_obj and not do_pos, do_probe and not do_pos
        probe_out = k.empty(probe_k.shape, probe_k.dtype, aligned=True) if probe_in else state.probe
        r = lambda v: k.real_scalar(v, probe_k)  # noqa: E731
        gamma = -1.0 if p.rpie_gamma is None else p.rpie_gamma
        loss = k.epie_position(*native, probe_k, frac, r(s), obj, ys, xs, data,
                               *noise_mod.kernel_model(k, self.ctx.noise_model, self.ctx.mask, self.ctx.eps, data,
                                                       projection=True),
                               r(p.beta), r(gamma), r(p.alpha), obj_in, probe_in, buf["psi"], buf["exit"],
                               buf["corrected"].reshape(buf["exit"].shape), buf["loss"], buf["d_obj"], buf["d_psi"],
                               probe_out)
        n_p, n_q = buf["exit"].shape[1:3]
        host_fft.kernel_ffts(probe_k.shape[-2:], n_p * (1 + 2 * n_q) + (2 * n_p if probe_in else 0))
        if do_pos:
            terms = self._position_terms(k, native, state, obj, ys, xs, buf, r(s), r(p.beta))
            # α is in d_obj already
            self._host_steps(k, state, obj, ys, xs, buf["d_obj"], buf["d_psi"], probe_k, frac, s, do_obj, do_probe)
            self.apply_position_step(state, np.asarray([j]), terms)
        elif do_probe:
            state.probe = probe_out
        self._probe_cache = (state.probe, probe_k)
        return self.ctx.xp.sum(loss)

    def _position_terms(self, k: Any, native: tuple[int, int, int], state: Any, obj: Any, ys: Any, xs: Any,
                        buf: dict[str, Any], s: Any, beta: Any) -> tuple[Any, Any]:
        """The position's (∂L/∂f, curvature) as one compiled call (``_kernels.position_terms_epie``)
        from its ψ_1 and Δψ, before the object's step, as the general path's ``refine_positions``."""
        n_p, n_q = state.probe.shape[0], obj.shape[0]
        tail, out = common.position_kernel_tail(k, self.ctx, self.scratch(), "epie", 1, n_p, state.window,
                                                state.probe.dtype)
        k.position_terms_epie(*native, s, obj, ys, xs, buf["psi"], buf["d_psi"], beta, *tail)
        host_fft.kernel_ffts(state.window, 2 * n_p + 3 * n_q)
        return common.terms_of(out, self.ctx)

    def _kernel_multislice(self, k: Any, native: tuple[int, int, int], state: Any, j: int, probe_k: Any,
                           frac: Any, s: float, ys: Any, xs: Any, data: Any, it: int) -> Any:
        """One position of sequential multislice ePIE (3PIE) as one compiled call
        (``_kernels.epie_multislice_position``): the general path's steps for a group of one,
        without its ~10 array calls per slice; with two or more wave chains (probe x object
        modes), on the host threads together (``epie_multislice_part``), one slice included
        (then the same steps as ``_kernel_position``). The probe's spectrum is carried to the
        next position as in ``_update_one``. Refining positions, the call makes the position
        terms before its steps; the position's step follows here."""
        p = self.params
        do_obj, do_probe, do_pos = (p.refine.object.active(it), p.refine.probe.active(it),
                                    p.refine.positions.active(it))
        n_p, m, n = probe_k.shape
        n_q, n_s = state.object.shape[:2]
        c = probe_k.dtype
        threads = _threads(n_p, n_q)
        key = ("multislice", n_p, n_q, n_s, m, n, c, threads)
        if self._buffers is None or self._buffers[0] != key:
            e = lambda *shape: k.empty(shape, c, aligned=True)  # noqa: E731
            real = self.ctx.real_dtype
            self._buffers = (key, {"first": e(n_p, 1, m, n), "waves": e(max(n_s - 1, 1), n_p, n_q, m, n),
                                   "far": e(n_p, n_q, m, n), "d_obj": e(n_s, n_q, m, n), "g_sum": e(n_p, m, n),
                                   "loss": k.empty((1,), real), "unused_h": e(1, m, n),
                                   # the position terms' (one set per thread where a thread has its own)
                                   "g_k": e(1, n_p, m, n), "psi_k": e(1, n_p, m, n),
                                   "win": e(threads, 1, 1, m, n), "tmp": e(threads, 1, 1, m, n),
                                   "power": k.empty((threads, n_q, m, n), real),
                                   "parts": k.empty((threads, 4), np.float64), "out": k.empty((1, 4), np.float64),
                                   "rows": np.asarray([0], dtype=np.int64),  # Scan's rows: not read here
                                   "lines": common.frequency_lines(self.ctx)})
        buf = self._buffers[1]
        # one slice: no propagation follows the last slice, so the propagator is never read
        H = common.tilted_propagator(state, np.asarray([j]), self.ctx) if n_s > 1 else buf["unused_h"]
        if H is None or H.dtype != probe_k.dtype or state.object.dtype != probe_k.dtype:
            return None
        probe_out = k.empty(probe_k.shape, c, aligned=True) if do_probe else state.probe
        r = lambda v: k.real_scalar(v, probe_k)  # noqa: E731
        gamma = -1.0 if p.rpie_gamma is None else p.rpie_gamma
        rec = k.records
        args = (rec.Fft(*native), rec.Scan(probe_k, frac, r(s), state.object, ys, xs, data, buf["rows"]),
                H if H.ndim == 3 else H[None],
                rec.Noise(*noise_mod.kernel_model(k, self.ctx.noise_model, self.ctx.mask, self.ctx.eps, data,
                                                  projection=True)),
                rec.EpieStep(r(p.beta), r(gamma), r(p.alpha), do_obj, do_probe, do_pos),
                rec.EpieBuffers(buf["first"], buf["waves"], buf["far"], buf["d_obj"], buf["g_sum"], buf["loss"],
                                probe_out),
                rec.EpiePositions(*buf["lines"], buf["g_k"], buf["psi_k"], buf["win"], buf["tmp"], buf["power"],
                                  buf["parts"], buf["out"]))
        # two or more wave chains (probe x object modes): the position on several threads
        together = None
        if threads > 1:
            sync = self._sync_buffers(k, threads, n_q)
            sync["bar"][0] = 0
            together = parallel.map_launches(
                lambda t: parallel.Launch(k.epie_multislice_part, (sync["bar"].ctypes.data, t, threads,
                                                                   sync["maxes"], *args), lambda out: out),
                list(range(threads)), together=True, release=lambda: sync["bar"].fill(1 << 40))
        loss = together[0] if together is not None else k.epie_multislice_position(*args)
        host_fft.kernel_ffts((m, n), n_p + n_p * n_q * (4 * n_s - 2) + (2 * n_p if do_probe else 0)
                             + (2 * n_p + 3 * n_q * n_s if do_pos else 0))
        if do_probe:
            state.probe = probe_out
        if do_pos:  # after both steps, as the general path
            self.apply_position_step(state, np.asarray([j]), common.terms_of(buf["out"], self.ctx))
        self._probe_cache = (state.probe, probe_k)
        return self.ctx.xp.sum(loss)

    def _sync_buffers(self, k: Any, threads: int, n_q: int) -> dict[str, Any]:
        """The barrier count and the shared maxima of ``epie_multislice_part`` (made once)."""
        key = (threads, n_q)
        if self._sync is None or self._sync[0] != key:
            self._sync = (key, {"bar": k.counters(8), "maxes": k.empty((threads, n_q, 2), self.ctx.real_dtype)})
        return self._sync[1]

    def _update_fused(self, k: Any, state: Any, b: common.Batch, fwd: common.Forward, target: Any, loss: Any,
                      it: int) -> Any:
        """Single slice on the CPU: δ, both updates and their denominators in one pass
        (ptycli/_kernels.py), then the same application as the general path."""
        p = self.params
        d_obj, d_psi1 = self._kernel_updates(k, state.object[:, 0, ...], b.y0.astype("int64"), b.x0.astype("int64"),
                                             fwd.psi1, target)
        if p.refine.object.active(it):
            self._add_object(state, b, d_obj[:, :, None, ...])
        if p.refine.probe.active(it):
            probe = state.probe + self._mean_probe_update(overlap.unshift(d_psi1, b.frac))
            state.probe = probe if probe.dtype == state.probe.dtype else self.ctx.xp.astype(probe, state.probe.dtype)
        if p.refine.positions.active(it):
            xp = self.ctx.xp
            t1_max = xp.max(backend.abs2(fwd.patches[:, :, 0, ...]), axis=(1, 2, 3))[:, None, None, None, ...]
            self.refine_positions(state, b, -2.0 * d_psi1 * t1_max / p.beta, fwd, it)
        return distributed.comm_of(self.ctx).allreduce_sum(self.ctx.xp.sum(loss))

    def _kernel_updates(self, k: Any, obj: Any, ys: Any, xs: Any, psi: Any, target: Any,
                        out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
        """(α·ΔO (B, Q, M, N), Δψ (B, P, M, N)) of one slice from the fused ePIE/rPIE kernel
        (into ``out`` when given)."""
        p = self.params
        r = lambda v: k.real_scalar(v, psi)  # noqa: E731
        d_obj, d_psi = out if out is not None else (
            k.empty((psi.shape[0], obj.shape[0], *psi.shape[-2:]), psi.dtype), k.empty(psi.shape, psi.dtype))
        gamma = -1.0 if p.rpie_gamma is None else p.rpie_gamma
        k.epie_single(obj, ys, xs, psi, target, r(p.beta), r(gamma), d_obj, d_psi)
        if p.alpha != 1.0:
            d_obj *= r(p.alpha)
        return d_obj, d_psi

    def _add_object(self, state: Any, b: common.Batch, upd: Any) -> None:
        """Add the group's summed object update; data-parallel, the ranks' sums are added first."""
        comm = distributed.comm_of(self.ctx)
        if comm.size == 1:
            overlap.accumulate(state.object, b.y0, b.x0, upd)
            return
        delta = self.ctx.xp.zeros_like(state.object)
        overlap.accumulate(delta, b.y0, b.x0, upd)
        state.object = state.object + comm.allreduce_sum(delta)

    def _mean_probe_update(self, d_probe: Any) -> Any:
        """Mean over the whole group of the per-position probe updates (B, P, M, N)."""
        xp, comm = self.ctx.xp, distributed.comm_of(self.ctx)
        if comm.size == 1:  # sequential ePIE: the mean of one update is that update
            return d_probe[0, ...] if d_probe.shape[0] == 1 else xp.mean(d_probe, axis=0)
        total = comm.allreduce_sum(xp.sum(d_probe, axis=0))
        return total / distributed.global_count(d_probe.shape[0], comm)

    def _target_exit(self, fwd: common.Forward, b: common.Batch) -> tuple[Any, Any]:
        """Loss and the corrected exit wave e'_S = F⁻¹[Ψ̂] (projection of §5.2).

        Ψ̂ = (1 - m ℓ') Ψ: the modulus projection for amplitude/poisson/anscombe, and for
        intensity the amplitude model's (``noise.projection_lprime``): its own ℓ' made the
        half-gradient step Ψ - ½∇_Ψ L, which scales with the counts and diverged.
        """
        ctx = self.ctx
        if ctx.noise_model == "compressed":
            loss, _ = common.loss_and_grad_farfield(fwd, b, ctx)
            return loss, backend.ifft2(common.compressed_projection(fwd, b, ctx))
        fused = noise_mod.fused_farfield(fwd.Psi, b.data, ctx.noise_model, ctx.mask, ctx.eps, 1.0, -1.0,
                                         projection=True)
        if fused is not None:
            return fused[0], backend.ifft2(fused[1])
        loss, projected = primitives.farfield_update(fwd.Psi, b.data, ctx.noise_model, ctx.mask, ctx.eps, 1.0, -1.0,
                                                     projection=True, I=fwd.I)
        return loss, backend.ifft2(projected)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Host arrays equal bit for bit (a one-off check after a resume, not a compute path)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _threads(n_p: int, n_q: int) -> int:
    """Host threads a compiled position runs on: one per wave chain (probe x object modes)."""
    return 1 if n_p * n_q == 1 else min(parallel.host_threads(), n_p * n_q)
