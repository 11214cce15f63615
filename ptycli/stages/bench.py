"""FFT throughput and the FFT-bound lower limit of an iteration (physics.md §9).

Every ptychography iteration is dominated by batched M x M 2D FFTs, so the honest
yardstick on a machine is the time of those FFTs alone: ``T_iter >= J * N_FFT / R_FFT``.
This module counts N_FFT for an engine and measures R_FFT for every FFT library that is
installed, so a benchmark ratio is against the machine, not against our own FFT choice.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from .. import backend, host_fft
from ..errors import RecipeError, UsageError

# "pyfftw-planes": FFTW's one-plane in-place plans executed from compiled code, one plane
# per core at a time, as the compiled parts run their transforms (``_kernels``). Why it is a
# library of its own: on the benchmark machine it ran 128² transforms 10-25 % faster than
# batched pyFFTW (a plane stays in L2; a batch streams through memory), and the engines'
# kernels then measured below a bound of batched transforms (case B LSQ-ML at 0.90x).
PLANES = "pyfftw-planes"
_PLANES_PER_CALL = 1024
CPU_LIBRARIES = ("numpy", "scipy", "pyfftw", PLANES)
COST_MODEL_ENGINES = ("epie", "lsqml", "gradient", "lbfgs", "loss")  # "loss": forward only
_MIN_TIMED_S = 0.2  # long enough that timer resolution and jitter are below 1 %
_WORKERS = max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- cost model
def n_ffts_per_position(engine: str = "lsqml", n_slices: int = 1, n_probe_modes: int = 1,
                        n_object_modes: int = 1, *, shifts: bool = True,
                        position_gradient: bool = False, n_eval: float = 1.0) -> float:
    """2D FFTs per position per iteration (physics.md §9 tables).

    Forward and adjoint each cost K(2S-1) with K = Np*Nq mode pairs; sub-pixel shifts add
    Np forward + Np adjoint; the position gradient adds K; L-BFGS repeats it all
    ``n_eval`` times (function+gradient evaluations per iteration).
    """
    if engine not in COST_MODEL_ENGINES:
        raise RecipeError(f"engine {engine!r} has no FFT cost model; expected one of {COST_MODEL_ENGINES}")
    if min(n_slices, n_probe_modes, n_object_modes) < 1:
        raise RecipeError("n_slices, n_probe_modes and n_object_modes must be >= 1")
    pairs = n_probe_modes * n_object_modes
    passes = 1 if engine == "loss" else 2  # loss only: forward model without the adjoint
    count = passes * pairs * (2 * n_slices - 1)
    if shifts:
        count += passes * n_probe_modes
    if position_gradient and engine != "loss":
        count += pairs
    return count * (n_eval if engine == "lbfgs" else 1.0)


def n_ffts_per_iteration(n_positions: int, engine: str = "lsqml", n_slices: int = 1,
                         n_probe_modes: int = 1, n_object_modes: int = 1, **kw: Any) -> float:
    """Total 2D FFTs of one iteration over ``n_positions`` positions."""
    return n_positions * n_ffts_per_position(engine, n_slices, n_probe_modes, n_object_modes, **kw)


# ----------------------------------------------------------------------------- libraries
def available_libraries(xp: ModuleType = np) -> list[str]:
    """FFT libraries usable for arrays of ``xp``: the CPU ones installed, or the device's own."""
    if not backend.is_numpy(xp):
        return [getattr(xp, "__name__", "device")]
    libs = ["numpy", "scipy"]
    if host_fft.pyfftw_available():  # imports pyFFTW the backend's way (quiet OpenMP threads)
        libs.append("pyfftw")
        if backend.kernels(np) is not None and host_fft.fftw_plane_plans(64, 64, np.complex64) is not None:
            libs.append(PLANES)
    return libs


def _plane_runner(size: int, precision: str, workers: int) -> Callable[[int], None] | None:
    """run(n): n transforms of ``size``² planes split over ``workers`` threads, each in place on
    its own aligned plane from compiled code (``_kernels.fft_plane_work``); None where the
    compiled transforms do not exist (no FFTW for kernels, double precision)."""
    _, cdtype = backend.dtypes(precision)
    plans, k = host_fft.fftw_plane_plans(size, size, cdtype), backend.kernels(np)
    if plans is None or k is None:
        return None
    import threading

    rng = np.random.default_rng(0)
    planes = []
    for _ in range(workers):
        src = k.empty((size, size), cdtype, aligned=True)
        src[...] = rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))
        planes.append((src, k.empty((size, size), cdtype, aligned=True)))

    def run(n: int) -> None:
        each = math.ceil(n / workers)
        threads = [threading.Thread(target=k.fft_plane_work, args=(*plans, src, work, each)) for src, work in planes]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    return run


def _batch_array(size: int, batch: int, precision: str, xp: ModuleType, aligned: bool) -> Any:
    _, cdtype = backend.dtypes(precision)
    rng = np.random.default_rng(0)
    host = (rng.standard_normal((batch, size, size)) + 1j * rng.standard_normal((batch, size, size)))
    host = host.astype(cdtype)
    if aligned:
        host_fft.pyfftw_available()
        import pyfftw

        out = pyfftw.empty_aligned(host.shape, dtype=cdtype)
        out[...] = host
        return out
    return backend.to_device(host, xp, dtype=cdtype)


def _transform(library: str, x: Any, xp: ModuleType, workers: int = _WORKERS) -> Callable[[], Any]:
    """A zero-argument call doing one batched forward 2D FFT of ``x`` with ``workers`` threads."""
    if library == "numpy":
        return lambda: np.fft.fft2(x)
    if library == "scipy":
        import scipy.fft as sfft

        return lambda: sfft.fft2(x, workers=workers)
    if library == "pyfftw":
        host_fft.pyfftw_available()
        import pyfftw

        # Measured plan on aligned, preallocated buffers; execute() skips the copy-in and the
        # normalisation pass, so this is the transform alone: the machine's limit.
        plan = pyfftw.builders.fft2(x, threads=workers, planner_effort="FFTW_MEASURE",
                                    avoid_copy=True, overwrite_input=False)

        def run() -> Any:
            plan.execute()
            return plan.output_array

        return run
    if library == "backend":
        return lambda: backend.fft2(x)
    if not backend.is_numpy(xp):
        return lambda: xp.fft.fft2(x)
    raise UsageError(f"unknown FFT library {library!r}; expected one of {CPU_LIBRARIES} or backend")


def _check_library(library: str, xp: ModuleType) -> None:
    known = available_libraries(xp) + (["backend"] if backend.is_numpy(xp) else [])
    if library not in known:
        raise UsageError(f"FFT library {library!r} is not available here; available: {', '.join(known)}")


def fft_rate(size: int = 128, batch: int = 64, library: str = "scipy", precision: str = "single",
             xp: ModuleType = np, *, workers: int | None = None, min_time_s: float = _MIN_TIMED_S,
             repeats: int = 5) -> float:
    """R_FFT: batched ``size`` x ``size`` complex 2D FFTs per second (warm plan cache).

    The best of ``repeats`` timed runs, each of enough calls to last ``min_time_s``: a
    lower bound wants the machine's capability, and other processes only slow a run down.
    ``library`` is numpy, scipy, pyfftw (measured plan), backend (what ptycli's engines
    call), or the device namespace's name for GPU arrays. ``workers=None`` tries one thread
    and all cores and keeps the faster: on a busy machine threads can lose to one core.
    """
    if size < 1 or batch < 1:
        raise UsageError(f"size and batch must be >= 1 (got size={size}, batch={batch})")
    return fft_rate_detail(size, batch, library, precision, xp, workers=workers, min_time_s=min_time_s,
                           repeats=repeats)[0]


def fft_rate_detail(size: int, batch: int, library: str, precision: str = "single", xp: ModuleType = np, *,
                    workers: int | None = None, min_time_s: float = _MIN_TIMED_S,
                    repeats: int = 5) -> tuple[float, int]:
    """(R_FFT, the thread count that achieved it); see ``fft_rate``."""
    _check_library(library, xp)
    threaded = library in ("scipy", "pyfftw", PLANES)
    choices = [workers] if workers else sorted({1, _WORKERS}) if threaded else [_WORKERS]
    if library == PLANES:
        # a batch's planes are the transforms available at once: no more threads than planes
        # (sequential ePIE's batch of 1 gets one core, as its positions depend on each other).
        # A call is enough planes that starting the threads (~0.1 ms) stays below 1 % of it.
        choices = sorted({min(w, batch) for w in choices})
        runners = {w: _plane_runner(size, precision, w) for w in choices}
        if any(r is None for r in runners.values()):
            raise UsageError(f"FFT library {PLANES!r} has no plans for {size}x{size} {precision} transforms here")
        per_call = max(batch, _PLANES_PER_CALL)
        seconds = {w: _time_calls(lambda r=r: r(per_call), xp, min_time_s, repeats) * batch / per_call
                   for w, r in runners.items()}
    else:
        x = _batch_array(size, batch, precision, xp, aligned=library == "pyfftw")
        seconds = {w: _time_calls(_transform(library, x, xp, w), xp, min_time_s, repeats) for w in choices}
    best = min(seconds, key=seconds.get)
    return batch / seconds[best], best


def _time_calls(run: Callable[[], Any], xp: ModuleType, min_time_s: float, repeats: int) -> float:
    """Fewest seconds per call over the repeats, after a warm-up; calls sized to ``min_time_s``."""
    run()  # warm-up: plan creation and caches are not part of the rate
    backend.synchronize(xp)
    t0 = time.perf_counter()
    run()
    backend.synchronize(xp)
    one = max(time.perf_counter() - t0, 1e-7)
    calls = max(1, math.ceil(min_time_s / one))
    samples = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        backend.synchronize(xp)
        samples.append((time.perf_counter() - t0) / calls)
    return float(min(samples))


def fft_rates(size: int = 128, batch: int = 64, precision: str = "single", xp: ModuleType = np,
              libraries: list[str] | None = None, **kw: Any) -> dict[str, float]:
    """R_FFT for every available library (or those named), in FFTs per second."""
    libs = libraries or available_libraries(xp)
    if (libraries is None and PLANES in libs
            and host_fft.fftw_plane_plans(size, size, backend.dtypes(precision)[1]) is None):
        libs = [lib for lib in libs if lib != PLANES]  # no compiled plans for this size or precision
    return {lib: fft_rate(size, batch, lib, precision, xp, **kw) for lib in libs}


def fastest_rate(size: int = 128, batch: int = 64, precision: str = "single",
                 xp: ModuleType = np, **kw: Any) -> tuple[str, float]:
    """(library, R_FFT) of the fastest available FFT on this machine."""
    rates = fft_rates(size, batch, precision, xp, **kw)
    best = max(rates, key=rates.get)
    return best, rates[best]


def fft_bound_seconds(n_positions: int, n_ffts_per_position: float, size: int, *,
                      rate_per_s: float | None = None, batch: int = 64, precision: str = "single",
                      xp: ModuleType = np, min_time_s: float = _MIN_TIMED_S) -> float:
    """FFT-bound lower limit on one iteration: ``J * N_FFT / R_FFT`` seconds (physics.md §9).

    ``rate_per_s`` defaults to the fastest library measured now at ``batch``.
    """
    if rate_per_s is None:
        rate_per_s = fastest_rate(size, batch, precision, xp, min_time_s=min_time_s)[1]
    if rate_per_s <= 0:
        raise UsageError(f"rate_per_s must be > 0 (got {rate_per_s})")
    return n_positions * n_ffts_per_position / rate_per_s


def time_fft_work(n_ffts: float, size: int, batch: int, library: str, precision: str = "single",
                  xp: ModuleType = np, workers: int = _WORKERS) -> float:
    """Seconds to run exactly ceil(n_ffts / batch) batched FFTs (the work of an iteration);
    for ``pyfftw-planes``, n_ffts planes over ``workers`` threads."""
    _check_library(library, xp)
    if library == PLANES:
        workers = max(1, min(workers, batch))  # as ``fft_rate_detail``: no more threads than planes at once
        run_planes = _plane_runner(size, precision, workers)
        if run_planes is None:
            raise UsageError(f"FFT library {PLANES!r} has no plans for {size}x{size} {precision} transforms here")
        run_planes(2 * workers)  # warm-up
        t0 = time.perf_counter()
        run_planes(max(1, math.ceil(n_ffts)))
        return time.perf_counter() - t0
    x = _batch_array(size, batch, precision, xp, aligned=library == "pyfftw")
    run = _transform(library, x, xp, workers)
    run()
    backend.synchronize(xp)
    t0 = time.perf_counter()
    for _ in range(max(1, math.ceil(n_ffts / batch))):
        run()
    backend.synchronize(xp)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- the stage
def run_fft(size: int = 128, batch: int = 64, precision: str = "single", device: str = "cpu",
            libraries: list[str] | None = None, min_time_s: float = _MIN_TIMED_S) -> dict[str, Any]:
    """`ptycli bench fft`: R_FFT per library and the fastest, as a JSON-ready dict."""
    xp = backend.get_xp(device)
    backend.dtypes(precision)  # validates the name before any timing
    for lib in libraries or []:
        _check_library(lib, xp)
    rates = fft_rates(size, batch, precision, xp, libraries, min_time_s=min_time_s)
    best = max(rates, key=rates.get)
    return {
        "size": size, "batch": batch, "precision": precision, "device": backend.device_name(xp),
        "workers": _WORKERS, "rates_per_s": {k: round(v, 1) for k, v in rates.items()},
        "fastest": best, "rate_per_s": round(rates[best], 1),
    }
