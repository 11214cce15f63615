"""What every engine shares: the run context, batches, forward/adjoint of one batch.

This composes the physics API (overlap, multislice, noise) and the compute primitives
(engines/primitives.py, where every formula of the array path has its one home); the rest
here is the compiled paths' glue.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import backend, host_fft, parallel
from ..physics import electron, multislice, overlap, propagation
from . import distributed, primitives
from . import noise as noise_mod
from .data import Rows, frames_and_rows


@dataclass
class RunContext:
    """Fixed inputs of a run, on the compute device."""

    xp: Any
    real_dtype: Any
    complex_dtype: Any
    noise_model: str = "amplitude"
    eps: float | None = None
    mask: Any = None  # (M, M) unshifted detector mask, or None
    comp_masks: Any = None  # (K, M, M) unshifted compressed masks, or None
    n_e: float = 1.0  # counts per frame (probe power target)
    H: Any = None  # inter-slice propagator, None for S = 1
    u: tuple[Any, Any] = (None, None)  # (uy (M,1), ux (1,M)) cycles/px
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    idx: np.ndarray  # host int (B,)
    y0: np.ndarray
    x0: np.ndarray
    frac: Any  # device (B, 2)
    # device (B, M, M) unshifted counts, (B, K) compressed signals, or the counts as
    # data.Rows of the resident set (read through ``data``, or in place by the kernels)
    source: Any
    H: Any = None  # propagator of this batch: (B, M, N) with per-position tilts, else ctx.H
    # (probe, F[probe]) computed once for the whole group: its parts share the one transform
    probe_spectrum: tuple[Any, Any] | None = None

    @property
    def data(self) -> Any:
        """The batch's data as an array (``source``, gathered on first use when it is Rows)."""
        if isinstance(self.source, Rows):
            self.source = self.source.gather()
        return self.source

    def frames_and_rows(self) -> tuple[Any, np.ndarray]:
        """(frames, rows): data[b] is frames[rows[b]], without a gather (compiled kernels)."""
        return frames_and_rows(self.source)

    def spectrum_of(self, probe: Any) -> Any:
        """F[probe] when this batch carries it for this very array, else None."""
        known = self.probe_spectrum
        return known[1] if known is not None and known[0] is probe else None


@dataclass
class Forward:
    psi1: Any  # (B, P, M, N) shifted probe
    patches: Any  # (B, Q, S, M, N)
    Psi: Any  # (B, P, Q, M, N) far field
    cache: Any
    H: Any = None  # the propagator used (adjoints must use the same)

    @functools.cached_property
    def I(self) -> Any:  # noqa: E743, N802  (the model intensity (B, M, N), physics.md notation)
        # on demand: the fused far-field kernel computes it on the fly and most groups never ask
        return multislice.intensity(self.Psi)


def make_context(state: Any, xp: Any, precision: str, noise_model: str, eps: float | None,
                 mask: Any = None, comp_masks: Any = None, n_e: float = 1.0) -> RunContext:
    real, cplx = backend.dtypes(precision)
    m, n = state.window
    ctx = RunContext(xp=xp, real_dtype=getattr(xp, real), complex_dtype=getattr(xp, cplx),
                     noise_model=noise_model, eps=eps, mask=mask, comp_masks=comp_masks, n_e=n_e)
    ctx.u = (backend.fftfreq(m, xp=xp, dtype=real)[:, None, ...], backend.fftfreq(n, xp=xp, dtype=real)[None, :, ...])
    ctx.H = propagator(state, xp, cplx)
    return ctx


def propagator(state: Any, xp: Any, cplx: str) -> Any:
    """Inter-slice Fresnel propagator (None for a single slice)."""
    if state.n_slices == 1:
        return None
    dz_a = float(backend.to_numpy(state.slice_thickness).mean())
    wl = electron.wavelength_a(state.energy_kev * 1e3)
    return propagation.fresnel_propagator(state.window, state.dx_a, wl, dz_a, xp=xp, dtype=cplx)


def illumination(state: Any, idx: np.ndarray | None = None) -> Any:
    """Σ_j Σ_p |P_p|² on the object grid (H, W), windows at integer corners (for constraints)."""
    xp = backend.namespace(state.probe)
    pos = np.asarray(state.positions) if idx is None else np.asarray(state.positions)[idx]
    y0, x0, _ = overlap.split_positions(pos, state.window)
    power = xp.sum(xp.abs(state.probe) ** 2, axis=0)
    target = xp.zeros(state.object.shape[-2:], dtype=power.dtype)
    patches = xp.broadcast_to(power, (len(pos), *power.shape))
    return backend.scatter_add_patches(target, np.asarray(y0), np.asarray(x0), patches)


def make_batch(state: Any, idx: np.ndarray, data: Any, ctx: RunContext) -> Batch:
    pos = np.asarray(state.positions)[idx]
    y0, x0, frac = overlap.split_positions(pos, state.window)
    frac_d = backend.to_device(np.asarray(frac), ctx.xp, dtype=ctx.real_dtype)
    return Batch(idx=idx, y0=np.asarray(y0), x0=np.asarray(x0), frac=frac_d, source=data,
                 H=tilted_propagator(state, idx, ctx))


# A part smaller than this (positions x probe modes x object modes x M x N) is not worth a
# thread. Measured on the 2-core benchmark machine with the fused kernels and idle OpenMP
# threads asleep: a gradient group of 16 x 128² in 2 parts ran at 0.26-0.29 s/iter against
# 0.33-0.34 s as one part with two-threaded FFTs (quick case A), and an lsqml group of
# 32 x 64² at 0.016 s against 0.017 s (the scaling series' base). Before the fused
# kernels, with spinning FFTW threads, one part had won up to 2**18.
MIN_PART_ELEMENTS = 2**16


def n_parts(ctx: RunContext, batch_size: int, elements_per_position: int = 1) -> int:
    """How many host threads a group of ``batch_size`` positions is split over (1 on CuPy,
    whose kernels are asynchronous already)."""
    if not backend.is_numpy(ctx.xp):
        return 1
    by_size = (batch_size * elements_per_position) // MIN_PART_ELEMENTS
    return max(1, min(parallel.host_threads(), batch_size, by_size))


def split_batch(batch: Batch, n: int) -> list[Batch]:
    """``batch`` as ``n`` contiguous parts of nearly equal size (views, no copies)."""
    if n <= 1:
        return [batch]
    size = len(batch.idx)
    bounds = [size * k // n for k in range(n + 1)]
    per_position_H = batch.H is not None and batch.H.ndim == 3
    return [Batch(idx=batch.idx[a:b], y0=batch.y0[a:b], x0=batch.x0[a:b], frac=batch.frac[a:b],
                  source=batch.source[a:b], H=batch.H[a:b] if per_position_H else batch.H,
                  probe_spectrum=batch.probe_spectrum)
            for a, b in itertools.pairwise(bounds)]


def concat_parts(xp: Any, per_part: list[Any]) -> Any:
    """Per-position results of the parts, in the group's order."""
    return per_part[0] if len(per_part) == 1 else xp.concatenate(per_part, axis=0)


def sum_parts(per_part: list[Any]) -> Any:
    """Σ of the parts' partial sums, in a fixed order (deterministic)."""
    total = per_part[0]
    for x in per_part[1:]:
        total += x
    return total


def tilted_propagator(state: Any, idx: np.ndarray, ctx: RunContext) -> Any:
    """(B, M, N) propagators for the batch when the state has beam tilts (not refined here)."""
    if state.n_slices == 1 or state.tilts is None:
        return ctx.H
    tilts = np.asarray(backend.to_numpy(state.tilts), dtype=np.float64)[idx]
    if not tilts.any():
        return ctx.H
    dz_a = float(backend.to_numpy(state.slice_thickness).mean())
    wl = electron.wavelength_a(state.energy_kev * 1e3)
    return propagation.fresnel_propagator(state.window, state.dx_a, wl, dz_a, xp=ctx.xp,
                                          tilt_mrad=backend.to_device(tilts, ctx.xp), dtype=ctx.complex_dtype)


def forward(state: Any, batch: Batch, ctx: RunContext, *, patches: bool = True) -> Forward:
    """Far field of the batch. ``patches=False``: the caller does not read ``fwd.patches``;
    a single slice on the CPU then forms the exit waves straight from the object grid
    (``fwd.patches`` is None), one pass instead of a window copy and a product."""
    psi1 = overlap.shift_probe(state.probe, batch.frac, batch.spectrum_of(state.probe))
    if not patches and state.n_slices == 1:
        exit_wave = backend.window_exit_waves(state.object[:, 0, ...], batch.y0, batch.x0, psi1)
        if exit_wave is not None:
            cache = multislice.Cache(patches=None, psi=[psi1[:, :, None, ...]])
            return Forward(psi1, None, backend.fft2(exit_wave, overwrite=True), cache, batch.H)
    windows = overlap.extract(state.object, batch.y0, batch.x0, state.window)
    Psi, cache = multislice.forward(psi1, windows, batch.H)
    return Forward(psi1, windows, Psi, cache, batch.H)


def loss_and_grad_farfield(fwd: Forward, batch: Batch, ctx: RunContext) -> tuple[Any, Any]:
    """Per-position loss (B,) and ∇_Ψ L (B, P, Q, M, N) for the run's noise model."""
    if ctx.noise_model == "compressed":
        return primitives.compressed_update(fwd.Psi, fwd.I, batch.data, ctx.comp_masks)
    fused = noise_mod.fused_farfield(fwd.Psi, batch.data, ctx.noise_model, ctx.mask, ctx.eps, 0.0, 2.0)
    if fused is not None:
        return fused
    return primitives.farfield_update(fwd.Psi, batch.data, ctx.noise_model, ctx.mask, ctx.eps, 0.0, 2.0, I=fwd.I)


def loss_and_grad_exit(fwd: Forward, batch: Batch, ctx: RunContext) -> tuple[Any, Any]:
    """Per-position loss (B,) and F⁻¹[∇_Ψ L] (B, P, Q, M, N), the gradient at the exit plane.

    With the fused far-field kernel the inverse FFT's normalisation rides on the kernel's
    factor and the FFT runs in place in the kernel's output: no pass of its own.
    """
    if ctx.noise_model != "compressed":
        scale = backend.unitary_scale(fwd.Psi.shape)
        fused = noise_mod.fused_farfield(fwd.Psi, batch.data, ctx.noise_model, ctx.mask, ctx.eps, 0.0, 2.0 * scale)
        if fused is not None:
            return fused[0], backend.ifft2(fused[1], overwrite=True, scaled=False)
    loss, grad_Psi = loss_and_grad_farfield(fwd, batch, ctx)
    return loss, backend.ifft2(grad_Psi, overwrite=True)


def compressed_projection(fwd: Forward, batch: Batch, ctx: RunContext) -> Any:
    """Ψ̂ for compressed data (``primitives.compressed_projection``)."""
    return primitives.compressed_projection(fwd.Psi, fwd.I, batch.data, ctx.comp_masks)


def backward(grad_Psi: Any, fwd: Forward, ctx: RunContext, grad_exit: Any = None) -> tuple[Any, Any]:
    """(∇ patches (B,Q,S,M,N), ∇ψ_1 summed over object modes (B,P,M,N)).

    ``grad_exit`` = ifft2(grad_Psi) when the caller has it already (one batched FFT saved).
    """
    g_patches, g_psi1 = multislice.backward(grad_Psi, fwd.cache, fwd.H, grad_exit=grad_exit)
    return g_patches, (g_psi1[:, :, 0, ...] if g_psi1.shape[2] == 1 else ctx.xp.sum(g_psi1, axis=2))


def backward_accumulate(grad_exit: Any, fwd: Forward, state: Any, batch: Batch, ctx: RunContext, *,
                        numerator: bool = True, illumination: bool = False) -> tuple[Any, Any, Any] | None:
    """Single slice, fused: (Σ_j ∇O_j on the object grid, Σ_j Σ_p |ψ_j|² on it, ∇ψ_1 (B, P, M, N)).

    ``grad_exit`` = ifft2(∇_Ψ L). Returns None where no fused kernel applies (multislice,
    CuPy, no Numba): callers then run ``backward`` and ``overlap.accumulate``. Each sum is a
    fresh object-sized array (or None when not asked for).
    """
    k = backend.kernels(ctx.xp)
    if k is None or state.n_slices != 1:
        return None
    obj = state.object[:, 0, ...]
    y0, x0 = batch.y0.astype("int64"), batch.x0.astype("int64")
    num = ctx.xp.zeros_like(obj) if numerator else obj
    illum = ctx.xp.zeros(obj.shape, dtype=ctx.real_dtype) if illumination else ctx.xp.zeros((1, 1, 1), ctx.real_dtype)
    g_psi = k.empty(fwd.psi1.shape, fwd.psi1.dtype)
    k.backward_single(obj, y0, x0, fwd.psi1, grad_exit, num, illum, numerator, illumination, g_psi)
    return (num[:, None, ...] if numerator else None, illum[:, None, ...] if illumination else None, g_psi)


@dataclass
class KernelPart:
    """What ``prepare_part_kernel``'s call made for a part of a group."""

    loss: Any  # (B,)
    fwd: Forward  # psi1 (B, P, M, N) only: the exit waves and far fields were never kept
    g_exit: Any  # F⁻¹[∇_Ψ L] (B, P, Q, M, N)
    num: Any  # Σ_j ∇O_j (Q, 1, H, W), or None
    illum: Any  # Σ_j Σ_p |ψ_j|² (Q, 1, H, W), or None
    probe_k: Any  # Σ_j unshift_k(F[∇ψ_j]) (P, M, N) as ``overlap.unshift_sum_of``, or None
    # multislice with kept waves (what LSQ-ML's per-slice step terms read), else None:
    g_patches: Any = None  # ∇O_j windows (B, Q, S, M, N), with the numerator
    illum_patches: Any = None  # Σ_p |ψ_{j,s}|² windows (B, Q, S, M, N), with the illumination
    g_psi1: Any = None  # ∇ψ_1 (B, P, M, N), with the probe
    probe_weight: Any = None  # Σ_q |O_{q,1}|² windows (B, 1, M, N), with the probe
    position_terms: Any = None  # with ``positions``: (∂L/∂f, curvature) per position, (B, 4) float64
    tilt_terms: Any = None  # multislice with ``tilts``: (∂L/∂t_y, ∂L/∂t_x per mrad, ∂L/∂Δz per Å), (B, 3) float64


class Scratch:
    """Work buffers of a group's compiled parts, reused group after group.

    Only for buffers that die with the group's update (the parts' sums, waves, losses and
    step terms): the next group's are prepared after this one's update has returned. One
    array per key, replaced when the shape changes (regions vary from group to group), so
    memory stays bounded. Why: allocating them afresh took ~45 us of Python per part (of
    ~90 us preparing it, quick case A, on cold caches), and reused buffers stay in cache.
    """

    def __init__(self, kernels: Any):
        self.k = kernels
        self._arrays: dict[Any, Any] = {}

    def get(self, key: Any, shape: tuple[int, ...], dtype: Any, aligned: bool = False) -> Any:
        have = self._arrays.get(key)
        if have is None or have.shape != tuple(shape) or have.dtype != dtype:
            have = self._arrays[key] = self.k.empty(tuple(shape), dtype, aligned=aligned)
        return have


def prepare_part_kernel(state: Any, batch: Batch, ctx: RunContext, *, numerator: bool, illumination: bool,
                        probe: bool, keep_waves: bool = True, probe_k: Any = None,
                        done_addr: int = 0, scratch: Scratch | None = None,
                        slot: int = 0, positions: bool = False, curvature: bool = True,
                        lsqml_step: bool = False, tilts: bool = False,
                        background: Any = None) -> parallel.Launch | None:
    """The part as one compiled call that runs its FFTs itself, window by window
    (``_kernels.single_slice_part``, or ``multislice_part`` for several slices), ready to
    start (``parallel.map_launches``); it finishes as a ``KernelPart``. None where it does not
    apply: no kernels or kernel FFT plans (``host_fft.kernel_fft_plans``), compressed data, or
    a window outside the grid.
    ``keep_waves=False``: the ψ and F⁻¹[∇_Ψ L] of the windows are not kept (the KernelPart's
    ``fwd.psi1`` and ``g_exit`` are None) and the kernel reuses one window's buffers; with
    several slices, ``keep_waves`` keeps the KernelPart's multislice fields instead.
    ``probe_k``: where the probe gradient's spectrum goes (an aligned (P, M, N) buffer);
    ``done_addr``: an int64 the kernel adds 1 to when it is done (``_kernels.probe_tail``).
    ``scratch``: the buffers come from it, under keys of part ``slot`` (the KernelPart's
    arrays are then valid until the next group's parts are prepared).
    ``positions``: the call makes the part's position terms too (``parts_position_terms``),
    window by window (without ``curvature``, ∂L/∂f only). ``lsqml_step``: F⁻¹ of LSQ-ML's own
    exit-wave step -2χ where its noise model has one (Poisson, intensity:
    ``noise.kernel_model``) in place of F⁻¹[∇_Ψ L]. ``tilts``: the call makes ∂L/∂t per
    position too, and ∂L/∂Δz (``KernelPart.tilt_terms``; several slices: one slice has no
    propagation, so these derivatives are zero). ``background``: LSQ-ML's (3, M, N) buffer of
    its incoherent background and Newton sums (``_kernels.records.Noise``), the part's own."""
    k = backend.kernels(ctx.xp)
    m, n = state.window
    if (k is None or ctx.noise_model not in k.NOISE_CODES
            or state.object.dtype != state.probe.dtype or batch.source.ndim != 3
            or not backend.windows_inside(state.object.shape, batch.y0, batch.x0, m, n)):
        return None
    plans = host_fft.kernel_fft_plans(m, n, state.probe.dtype)
    if plans is None:
        return None
    spectrum = batch.spectrum_of(state.probe)
    spectrum = backend.fft2(state.probe) if spectrum is None else spectrum

    def buf(name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        if scratch is None:
            return k.empty(shape, dtype, aligned=True)
        return scratch.get(("part", slot, name), shape, dtype, aligned=True)

    if state.n_slices > 1:
        return _prepare_multislice(k, plans, spectrum, buf, state, batch, ctx, numerator=numerator,
                                   illumination=illumination, probe=probe, keep=keep_waves, probe_k=probe_k,
                                   done_addr=done_addr, positions=positions, curvature=curvature,
                                   lsqml_step=lsqml_step, tilts=tilts, background=background)
    obj = state.object[:, 0, ...]
    n_b, n_p, n_q = len(batch.idx), state.probe.shape[0], obj.shape[0]
    c, r = state.probe.dtype, ctx.real_dtype
    kept = n_b if keep_waves else 1

    psi, g_exit = buf("psi", (kept, n_p, m, n), c), buf("g_exit", (kept, n_p, n_q, m, n), c)
    wave, g_psi = buf("wave", (1, n_p, n_q, m, n), c), buf("g_psi", (1, n_p, m, n), c)
    num = buf("num", obj.shape, c) if numerator else obj  # the kernel zeroes the sums it is asked for
    illum = buf("illum", obj.shape, r) if illumination else buf("illum", (1, 1, 1), r)
    if probe_k is None:
        probe_k = buf("probe_k", spectrum.shape, c) if probe else spectrum
    loss = buf("loss", (n_b,), r)
    pos_rec, pos_out = _position_scratch(k, buf, positions, ctx, n_b, n_p, 1, (m, n), c, wave[0], illum)
    rec = k.records
    want = rec.Wanted(numerator, illumination, probe, positions, curvature)
    bufs = rec.SingleSliceBuffers(psi, g_exit, num, illum, wave, g_psi, probe_k, loss)
    args = (*_part_records(k, plans, spectrum, obj, batch, ctx, lsqml_step, background), want, bufs, pos_rec,
            done_addr)

    made = KernelPart(loss, Forward(psi if keep_waves else None, None, None, None, batch.H),
                      g_exit if keep_waves else None, num[:, None, ...] if numerator else None,
                      illum[:, None, ...] if illumination else None, probe_k if probe else None,
                      position_terms=pos_out)

    def finish(_: Any) -> KernelPart:
        extra = _position_ffts(positions, curvature, probe, n_p, n_q)
        host_fft.kernel_ffts((m, n), n_b * (n_p * (1 + 2 * n_q + (1 if probe else 0)) + extra))
        return made

    return parallel.Launch(k.single_slice_part, args, finish, made)


def _prepare_multislice(k: Any, plans: tuple[int, int, int], spectrum: Any, buf: Any, state: Any, batch: Batch,
                        ctx: RunContext, *, numerator: bool, illumination: bool, probe: bool, keep: bool,
                        probe_k: Any, done_addr: int, positions: bool, curvature: bool,
                        lsqml_step: bool, tilts: bool, background: Any = None) -> parallel.Launch | None:
    """``prepare_part_kernel`` for several slices (``_kernels.multislice_part``)."""
    H = batch.H
    if H is None or H.dtype != state.probe.dtype:
        return None
    obj = state.object
    m, n = state.window
    n_b, n_p = len(batch.idx), state.probe.shape[0]
    n_q, n_s = obj.shape[:2]
    c, r = state.probe.dtype, ctx.real_dtype
    keep_num, keep_illum, keep_probe = keep and numerator, keep and illumination, keep and probe
    first, far = buf("first", (n_p, 1, m, n), c), buf("far", (n_p, n_q, m, n), c)
    waves, g_sum = buf("waves", (max(n_s - 1, 1), n_p, n_q, m, n), c), buf("g_sum", (n_p, m, n), c)
    num = buf("num", obj.shape, c) if numerator else obj
    illum = buf("illum", obj.shape, r) if illumination else buf("illum", (1, 1, 1, 1), r)
    if probe_k is None:
        probe_k = buf("probe_k", spectrum.shape, c) if probe else spectrum
    loss = buf("loss", (n_b,), r)
    # per position, slice by slice (B, S, Q, M, N): each window the kernel writes is one C block
    g_patches = buf("g_patches", (n_b, n_s, n_q, m, n), c) if keep_num else far[None]
    w_patches = buf("w_patches", (n_b, n_s, n_q, m, n), r) if keep_illum else illum[None]
    g_psi1 = buf("g_psi1", (n_b, n_p, m, n), c) if keep_probe else g_sum[None]
    t1 = buf("t1", (n_b, m, n), r) if keep_probe else illum[0]
    pos_rec, pos_out = _position_scratch(k, buf, positions, ctx, n_b, n_p, n_q, (m, n), c, first, t1)
    tilt_rec, tilt_out = _tilt_scratch(k, buf, tilts, state, batch, ctx, n_b, far)
    rec = k.records
    fft, scan, noise = _part_records(k, plans, spectrum, obj, batch, ctx, lsqml_step, background)
    want = rec.Wanted(numerator, illumination, probe, positions, curvature, keep, tilts)
    bufs = rec.MultisliceBuffers(first, waves, far, g_sum, num, illum, probe_k, loss, g_patches, w_patches, g_psi1, t1)
    args = (fft, scan, H if H.ndim == 3 else H[None], noise, want, bufs, pos_rec, tilt_rec, done_addr)
    made = KernelPart(loss, Forward(None, None, None, None, H), None, num if numerator else None,
                      illum if illumination else None, probe_k if probe else None,
                      g_patches=g_patches.transpose(0, 2, 1, 3, 4) if keep_num else None,
                      illum_patches=w_patches.transpose(0, 2, 1, 3, 4) if keep_illum else None,
                      g_psi1=g_psi1 if keep_probe else None, probe_weight=t1[:, None, ...] if keep_probe else None,
                      position_terms=pos_out, tilt_terms=tilt_out)

    def finish(_: Any) -> KernelPart:
        extra = _position_ffts(positions, curvature, probe, n_p, n_q * n_s)
        extra += n_p * n_q * (n_s - 1) if tilts else 0  # F[ψ_s] at each propagation
        host_fft.kernel_ffts((m, n), n_b * (n_p + n_p * n_q * (4 * n_s - 2) + (n_p if probe else 0) + extra))
        return made

    return parallel.Launch(k.multislice_part, args, finish, made)


def _part_records(k: Any, plans: tuple[int, int, int], spectrum: Any, obj: Any, batch: Batch, ctx: RunContext,
                  lsqml_step: bool, background: Any = None) -> tuple[Any, Any, Any]:
    """The part kernels' ``Fft``, ``Scan`` and ``Noise`` records (``_kernels/records.py``):
    the patterns are read in place by row (no gathered copy)."""
    rec = k.records
    m, n = spectrum.shape[-2:]
    frames, rows = batch.frames_and_rows()
    scan = rec.Scan(spectrum, batch.frac, k.real_scalar(backend.unitary_scale((m, n)), frames), obj,
                    batch.y0.astype("int64"), batch.x0.astype("int64"), frames, rows)
    noise = rec.Noise(*noise_mod.kernel_model(k, ctx.noise_model, ctx.mask, ctx.eps, frames, lsqml_step),
                      background=background)
    return rec.Fft(*plans), scan, noise


def _position_scratch(k: Any, buf: Any, positions: bool, ctx: RunContext, n_b: int, n_p: int, n_q: int,
                      window: tuple[int, int], c: Any, plane4: Any, real3: Any) -> tuple[Any, Any]:
    """The part kernels' ``Positions`` record and pos_out (B, 4) or None. Without
    ``positions`` the scratch is a complex 4-D and a real 3-D array of the part's own
    (``plane4``, ``real3``): the same types, not written."""
    m, n = window
    if positions:
        lines = frequency_lines(ctx)
        scratch = (buf("pos_k", (1, n_p, m, n), c), buf("win", (1, 1, m, n), c), buf("tmp", (1, 1, m, n), c),
                   buf("power", (n_q, m, n), ctx.real_dtype))
    else:  # the frequency lines are not read either: no copies of them on every group's call
        line = buf("pos_line", (1,), ctx.real_dtype)
        lines, scratch = (line, line), (plane4, plane4, plane4, real3)
    pos_out = buf("pos_out", (n_b if positions else 1, 4), np.float64)
    return k.records.Positions(*lines, *scratch, pos_out), pos_out if positions else None


def _tilt_scratch(k: Any, buf: Any, tilts: bool, state: Any, batch: Batch, ctx: RunContext, n_b: int,
                  far: Any) -> tuple[Any, Any]:
    """``multislice_part``'s ``Tilts`` record and tilt_out (B, 3) or None: 2π k and πλ k²
    along rows and columns (k in 1/Å) and per position (Δz 1e-3 sec²t_y, Δz 1e-3 sec²t_x, tan t_y, tan t_x), the factors of
    ``propagation.propagator_derivatives``. Without ``tilts`` the arrays are of the same
    types, not written (tilt_k: ``far``)."""
    m, n = state.window
    xp, real = ctx.xp, ctx.real_dtype
    if not tilts:
        line = buf("tilt_line", (1,), real)
        flat = buf("tilt_none", (1, 3), np.float64)
        return k.records.Tilts(line, line, line, line, flat, far, flat), None
    dz_a = float(backend.to_numpy(state.slice_thickness).mean())
    wl = electron.wavelength_a(state.energy_kev * 1e3)
    freq = [backend.fftfreq(size, state.dx_a, xp=xp, dtype=real) for size in (m, n)]
    two_pi_k = [xp.astype(2.0 * math.pi * v, real) for v in freq]
    quad = [xp.astype(math.pi * wl * v * v, real) for v in freq]
    tilt = xp.zeros((n_b, 2), dtype=real) if state.tilts is None else backend.to_device(
        np.asarray(backend.to_numpy(state.tilts), dtype=np.float64)[batch.idx], xp, dtype=real)
    tan = xp.tan(tilt * real(1e-3))  # in the real dtype, as the array model
    geo = xp.astype(xp.concat([dz_a * 1e-3 * (1.0 + tan * tan), tan], axis=1), xp.float64)
    tilt_out = buf("tilt_out", (n_b, 3), np.float64)
    return k.records.Tilts(*two_pi_k, *quad, geo, buf("tilt_k", far.shape, far.dtype), tilt_out), tilt_out


def _position_ffts(positions: bool, curvature: bool, probe: bool, n_p: int, planes: int) -> int:
    """Transforms per position of the inline position terms: F[ψ_1], F[∇ψ_1] (unless the
    probe gradient's made it) and, for the curvature, 3 per object window (``planes``: slices x modes)."""
    if not positions:
        return 0
    return n_p + (0 if probe else n_p) + (3 * planes if curvature else 0)


def frequency_lines(ctx: RunContext) -> tuple[Any, Any]:
    """fftfreq of the window's rows (M,) and columns (N,), contiguous, in the real dtype."""
    return tuple(ctx.xp.ascontiguousarray(u.reshape(-1), dtype=ctx.real_dtype) for u in ctx.u)


def parts_position_terms(made: list[KernelPart], ctx: RunContext) -> list[tuple[Any, Any]] | None:
    """``position_terms`` of every part, as its compiled call made them
    (``prepare_part_kernel(..., positions=True)``), or None where a part has none. Why in the
    call: with position refinement the whole group had run the array path (gradient quick
    case A 0.12 -> 0.36-0.40 s/iteration), and a second compiled pass over kept waves still
    held every window's waves in memory."""
    if any(kp.position_terms is None for kp in made):
        return None
    return [terms_of(kp.position_terms, ctx) for kp in made]


def terms_of(out: Any, ctx: RunContext) -> tuple[Any, Any]:
    """(∂L/∂f, curvature), each (B, 2) in the real dtype, from the compiled calls' (B, 4)."""
    return out[:, :2].astype(ctx.real_dtype), out[:, 2:].astype(ctx.real_dtype)


def position_kernel_tail(k: Any, ctx: RunContext, scratch: Scratch | None, slot: Any, n_b: int, n_p: int,
                         window: tuple[int, int], dtype: Any) -> tuple[tuple[Any, ...], Any]:
    """The arguments the compiled position terms of an ePIE position
    (``_kernels.position_terms_epie``) take after their own: (uy, ux, g_k, psi_k, win, tmp, power, out)
    with their scratch from ``scratch`` under ``slot``; and out (B, 4), the terms to read."""
    m, n = window

    def buf(name: str, shape: tuple[int, ...], kind: Any) -> Any:
        if scratch is None:
            return k.empty(shape, kind, aligned=True)
        return scratch.get(("position", slot, name), shape, kind, aligned=True)

    out = buf("out", (n_b, 4), "float64")
    return (*frequency_lines(ctx), buf("g_k", (1, n_p, m, n), dtype), buf("psi_k", (1, n_p, m, n), dtype),
            buf("win", (1, 1, m, n), dtype), buf("tmp", (1, 1, m, n), dtype), buf("power", (1, m, n), ctx.real_dtype),
            out), out


def object_gradient(state: Any, batch: Batch, g_patches: Any) -> Any:
    xp = backend.namespace(state.object)
    g = xp.zeros_like(state.object)
    overlap.accumulate(g, batch.y0, batch.x0, g_patches)
    return g


def position_gradient(g_psi1: Any, psi1: Any, ctx: RunContext) -> Any:
    """∂L/∂f (B, 2) in pixels (``primitives.position_gradient``)."""
    return primitives.position_gradient(g_psi1, psi1, ctx.u)


def position_curvature(fwd: Forward, ctx: RunContext) -> Any:
    """‖ψ_s ∂O_s/∂f‖² (B, 2) of the batch's windows and waves (``primitives.position_curvature``)."""
    return primitives.position_curvature(fwd.patches, fwd.cache.psi, ctx.u)


def lsq_position_step(g_pos: Any, fwd: Forward, ctx: RunContext) -> Any:
    """Δf = -∂L/∂f / ‖ψ ∂O/∂f‖² (PtychoShelves-style LSQ step, physics.md §5.4).

    physics.md writes Re⟨∂ψ, χ⟩ with χ = -½∇; χ from the modulus projection corrects only
    the amplitude, about half of the linearised residual, so the full gradient is used
    (checked: one step removes ~100 % of a 0.5 px error on noise-free data).
    """
    return lsq_step_from_terms(g_pos, position_curvature(fwd, ctx), ctx)


def position_terms(g_psi1: Any, fwd: Forward, ctx: RunContext) -> tuple[Any, Any]:
    """Per-position (∂L/∂f, ‖ψ ∂O/∂f‖²), each (B, 2): what a part contributes to the step."""
    return position_gradient(g_psi1, fwd.psi1, ctx), position_curvature(fwd, ctx)


def lsq_step_from_terms(g_pos: Any, curv: Any, ctx: RunContext) -> Any:
    # the damping uses the whole group's mean curvature (all ranks' shares when data-parallel)
    return -g_pos / (curv + 1e-3 * distributed.global_mean(curv, distributed.comm_of(ctx)) + 1e-30)


# A group's region is used instead of the whole object when it is at most this fraction of it.
# Measured (quick case A, LSQ-ML): regions over 0.75 of the object ran 4-6 % slower than the
# whole grid (the region's copy and strided write-back cost more than the passes they save).
REGION_FRACTION = 0.5


class GroupRegion:
    """``state`` seen through the part of the object grid a group's windows cover.

    Per-group sums and directions on the object (LSQ-ML's Σ_j ∇O_j, the illumination, the
    preconditioned direction and the step; the gradient engine's object gradient, which only
    its optimiser step takes to the whole grid) are zero outside the group's windows, so they
    are computed on this region and not on the whole object: with compact groups their
    cost then follows the group, not the scan (on the whole grid, the object-sized passes
    of each group made an iteration grow as positions², fitted exponent 1.13-1.17).
    ``object`` is a contiguous copy of that part of ``state.object`` to read (the fused
    kernels ran 1.5-2.5x slower on a strided view of the grid: 16 vs 6.6 us per 128² exit
    wave); ``add_to_object`` writes to the state's grid. Every other attribute is the state's.
    """

    def __init__(self, state: Any, ys: slice, xs: slice):
        self._state, self.ys, self.xs = state, ys, xs
        self.object = backend.namespace(state.object).ascontiguousarray(state.object[..., ys, xs])

    def add_to_object(self, delta: Any) -> None:
        """state.object[..., region] += delta, in place in the state's grid."""
        self._state.object[..., self.ys, self.xs] += delta

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)

    def batch(self, batch: Batch) -> Batch:
        """``batch`` with window corners relative to the region."""
        return dataclasses.replace(batch, y0=batch.y0 - self.ys.start, x0=batch.x0 - self.xs.start)


def group_region(state: Any, batch: Batch, ctx: RunContext) -> GroupRegion | None:
    """The group's region of the object grid, or None when it is most of the object (random
    groups) or when ranks share the group (their regions would differ)."""
    if distributed.comm_of(ctx).size > 1 or len(batch.idx) == 0:
        return None
    m, n = state.window
    ys = slice(int(batch.y0.min()), int(batch.y0.max()) + m)  # host ints (Batch)
    xs = slice(int(batch.x0.min()), int(batch.x0.max()) + n)
    h, w = state.object.shape[-2:]
    if (ys.stop - ys.start) * (xs.stop - xs.start) > REGION_FRACTION * h * w:
        return None
    return GroupRegion(state, ys, xs)


class EngineBase:
    """Shared engine plumbing: batches, position steps, (empty) checkpoint state."""

    # (probe, F[probe], iteration): a spectrum made by one group's update for the next group's
    # shifts. Scoped to the iteration: constraints between iterations may change the probe.
    _carried: tuple[Any, Any, int] | None = None
    _scratch: Scratch | None = None  # made on first use (``scratch``)
    # the loop may hand ``update`` its data as data.Rows (RunHooks.read_rows): the engine
    # reads it through ``batch`` (Batch.data gathers it when an array path needs it)
    reads_rows = False

    def __init__(self, params: Any, ctx: RunContext, state: Any):
        self.params, self.ctx = params, ctx

    def batch(self, state: Any, idx: np.ndarray, data: Any, it: int | None = None) -> Batch:
        """The group's batch; with ``it``, carrying the spectrum of ``state.probe`` when an
        earlier group of this iteration left it (``carry_spectrum``)."""
        batch = make_batch(state, idx, data, self.ctx)
        carried = self._carried
        if it is not None and carried is not None and carried[0] is state.probe and carried[2] == it:
            batch = dataclasses.replace(batch, probe_spectrum=carried[:2])
        return batch

    def scratch(self) -> Scratch | None:
        """This engine's reused part buffers (``Scratch``), or None without kernels."""
        if self._scratch is None:
            k = backend.kernels(self.ctx.xp)
            self._scratch = Scratch(k) if k is not None else None
        return self._scratch

    def carry_spectrum(self, probe: Any, spectrum: Any, it: int) -> None:
        """Keep F[probe] = ``spectrum`` for the next groups of iteration ``it`` (None: forget)."""
        self._carried = None if spectrum is None else (probe, spectrum, it)

    def parts(self, state: Any, batch: Batch) -> list[Batch]:
        """The group as parts run concurrently on the host (one part on CuPy or small groups)."""
        m, n = state.window
        per_position = int(state.probe.shape[0]) * int(state.object.shape[0]) * m * n
        count = n_parts(self.ctx, len(batch.idx), per_position)
        if count > 1 and batch.spectrum_of(state.probe) is None:
            # one transform of the probe for the group, not one per part (a single small FFT
            # costs several times a batched one per transform)
            batch = dataclasses.replace(batch, probe_spectrum=(state.probe, backend.fft2(state.probe)))
        return split_batch(batch, count)

    def refine_positions(self, state: Any, batch: Batch, g_psi1: Any, fwd: Forward, it: int) -> None:
        """Gauss-Newton position step from ∂L/∂f (every engine uses it; limits in the loop)."""
        if not self.params.refine.positions.active(it):
            return
        self.apply_position_terms(state, batch, position_terms(g_psi1, fwd, self.ctx))

    def apply_position_terms(self, state: Any, batch: Batch, terms: tuple[Any, Any]) -> None:
        """Apply Δf from the per-position (∂L/∂f, curvature) of the whole batch."""
        self.apply_position_step(state, batch.idx, terms)

    def apply_position_step(self, state: Any, idx: np.ndarray, terms: tuple[Any, Any]) -> None:
        """``apply_position_terms`` for the positions ``idx``."""
        from .positions import apply_step

        g, curv = terms
        delta = lsq_step_from_terms(g, curv, self.ctx) * self.params.positions.step
        apply_step(state, idx, backend.to_numpy(delta))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
