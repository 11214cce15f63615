"""Typed records the big kernels take instead of 30-50 positional values (issue 25): each
groups what one concern hands over, so a call names its parts and a swapped array lands in
the wrong record's field, where its name says what it is. Numba passes a NamedTuple of
arrays, scalars and flags to compiled code as a tuple (one type per field, so one
signature per combination of dtypes and ranks); the kernels unpack them on their first lines.

Built in one place on the Python side: ``engines/common.py`` (``part_records``) for the part
kernels, ``engines/lsqml.py`` (``_TailArguments``) for LSQ-ML's tail. Field shapes and
meanings are those of the kernels' docstrings (single_slice.py, multislice.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Fft(NamedTuple):
    """FFTW through compiled code: the address of fftwf_execute_dft and the one-plane in-place
    plans (``host_fft.kernel_fft_plans``)."""

    execute: int
    forward: int
    backward: int


class Scan(NamedTuple):
    """A part's positions: the probe's spectrum F[P] (P, M, N), sub-pixel shifts (B, 2), the
    unitary scale 1/sqrt(MN), the object (Q, H, W) or (Q, S, H, W), window corners (B,) int64,
    and the patterns read as data[rows[b]]."""

    probe_k: Any
    frac: Any
    scale: Any
    obj: Any
    y0: Any
    x0: Any
    data: Any
    rows: Any


class Noise(NamedTuple):
    """The noise model of the far-field step: mask (M, N), code (``NOISE_CODES`` or
    ``LSQML_STEP_CODES``), ε in the real dtype (``noise.kernel_model``); ``poisson`` None
    (the default) compiles the kernels without the Poisson step's β (code 5: variants.py
    sets it for a Poisson run); ``background`` (3, M, N): LSQ-ML's incoherent background and
    its Newton sums (``single_slice.farfield``), None (the default) without one."""

    mask: Any
    model: int
    eps: Any
    poisson: Any = None
    background: Any = None


class Wanted(NamedTuple):
    """What a part call makes besides its loss: the object's numerator and illumination sums,
    the probe gradient's spectrum, the position terms (with or without their curvature);
    multislice also: the per-position windows LSQ-ML's step terms read (``keep``) and the
    tilt and thickness derivatives."""

    num: bool
    illum: bool
    probe: bool
    positions: bool
    curvature: bool
    keep: bool = False
    tilts: bool = False


class SingleSliceBuffers(NamedTuple):
    """``single_slice_part``'s outputs and work buffers (see its docstring)."""

    psi: Any
    g_exit: Any
    num: Any
    illum: Any
    wave: Any
    g_psi: Any
    probe_grad_k: Any
    loss: Any


class MultisliceBuffers(NamedTuple):
    """``multislice_part``'s outputs and work buffers (see its docstring)."""

    first: Any
    waves: Any
    far: Any
    g_sum: Any
    num: Any
    illum: Any
    probe_grad_k: Any
    loss: Any
    g_patches: Any
    w_patches: Any
    g_psi1: Any
    t1: Any


class Positions(NamedTuple):
    """The position terms made in a part call: fftfreq of rows (M,) and columns (N,), scratch
    (pos_k (1, P, M, N), win, tmp (1, 1, M, N), power (Q, M, N)) and out (B, 4). Unused: any
    arrays of these ranks and dtypes."""

    uy: Any
    ux: Any
    pos_k: Any
    win: Any
    tmp: Any
    power: Any
    out: Any


class Tilts(NamedTuple):
    """Multislice tilt and thickness derivatives: 2πk (ky (M,), kx (N,)), πλk² (qy, qx),
    per-position geometry (B, 4), scratch tilt_k (P, Q, M, N) and out (B, 3)."""

    ky: Any
    kx: Any
    qy: Any
    qx: Any
    geo: Any
    tilt_k: Any
    out: Any


class TailGroup(NamedTuple):
    """LSQ-ML's group, shared by the threads of ``lsqml_tail_part``: maxes (threads, L)
    scratch, the parts' sums nums and ws (tuples of (L, H, W)), δ, the object (L, H, W), the
    group's terms out (B_all, 5), the step mode, trim and β, and which directions exist."""

    maxes: Any
    nums: Any
    ws: Any
    delta: Any
    obj: Any
    out: Any
    mode: int
    trim: float
    beta: float
    use_obj: bool
    use_probe: bool
    apply_step: bool


class TailPart(NamedTuple):
    """One thread's part in ``lsqml_tail_part``: F[ΔP] (P, M, N), shifts (B, 2), the unitary
    scale, window corners, ψ_1 (B, P, M, N) and F⁻¹[∇_Ψ L] (B, P, Q, M, N) of its positions,
    the shifted-ΔP scratch, its first row in the group's out, ΔP's buffer (thread 0 with the
    probe; else empty) and its steps (2,)."""

    dp_k: Any
    frac: Any
    scale: Any
    y0: Any
    x0: Any
    psi: Any
    g: Any
    shifted: Any
    first: int
    dp_out: Any
    steps: Any


class EpieStep(NamedTuple):
    """One sequential (3)PIE position's update: β (probe-plane step), γ (rPIE's; ≤ 0 for
    ePIE), α (object step factor) in the real dtype, and what it updates and makes."""

    beta: Any
    gamma: Any
    alpha: Any
    do_obj: bool
    do_probe: bool
    do_pos: bool


class EpieBuffers(NamedTuple):
    """``epie_multislice_position``'s work buffers and outputs (see its docstring)."""

    first: Any
    waves: Any
    far: Any
    d_obj: Any
    g_sum: Any
    loss: Any
    probe_out: Any


class EpiePositions(NamedTuple):
    """The position terms of a 3PIE position: fftfreq lines uy (M,), ux (N,), scratch g_k,
    psi_k (1, P, M, N), win, tmp (T, 1, 1, M, N), power (T, Q, M, N), parts (T, 4) and out (1, 4)."""

    uy: Any
    ux: Any
    g_k: Any
    psi_k: Any
    win: Any
    tmp: Any
    power: Any
    parts: Any
    out: Any
