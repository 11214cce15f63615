"""The host's FFTs: which library transforms NumPy arrays (FFTW objects through pyFFTW,
scipy.fft or numpy.fft), how many threads each caller's transforms use, and the FFTW plans of
compiled kernels that transform planes themselves. backend.py dispatches here for NumPy
arrays (CuPy has its own cuFFT); nothing here knows other namespaces.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any

import numpy as np

from .errors import DeviceError

_FFT_WORKERS = max(1, os.cpu_count() or 1)
_local = threading.local()  # per-thread FFT worker count while a group runs as parallel parts
_fft_library = os.environ.get("PTYCLI_FFT", "auto")  # auto | scipy | pyfftw | numpy


def set_fft_library(name: str) -> None:
    """Choose the CPU FFT: ``auto`` (pyFFTW if installed, else scipy), ``scipy``, ``pyfftw``, ``numpy``."""
    global _fft_library
    if name not in ("auto", "scipy", "pyfftw", "numpy"):
        raise DeviceError(f"unknown FFT library {name!r}; expected auto, scipy, pyfftw or numpy")
    _fft_library = name


def fft_library() -> str:
    # auto = FFTW objects with cached plans when pyFFTW is installed, else scipy.fft.
    # Measured on the 2-core benchmark machine, batch of 64 complex64 128x128: planned FFTW
    # 2.6-3.1 ms, scipy.fft (pocketfft) 6.6-8.5 ms, pyFFTW's interfaces layer ~8 ms (it
    # copies and re-checks its cache every call). See ptycli/_fftw.py.
    if _fft_library != "auto":
        return _fft_library
    global _auto_library
    if _auto_library is None:
        _auto_library = "pyfftw" if _fftw_module().available() else "scipy"
    return _auto_library


_auto_library: str | None = None


def pyfftw_available() -> bool:
    """pyFFTW importable (imported with idle OpenMP threads asleep: see _fftw.quiet_openmp)."""
    return _fftw_module().available()



_fftw_mod: Any = None


def _fftw_module() -> Any:
    """ptycli/_fftw.py, imported on first use (it imports pyFFTW, which ``--help`` must not)."""
    global _fftw_mod
    if _fftw_mod is None:
        from . import _fftw  # noqa: PLC0415

        _fftw_mod = _fftw
    return _fftw_mod



def transform(x: np.ndarray, inverse: bool, axes: tuple[int, ...], overwrite: bool, scaled: bool) -> np.ndarray:
    """The host transform behind ``backend.fft2`` and friends (unitary unless ``scaled=False``:
    then unnormalised both ways); ``overwrite``: the caller gives ``x`` away."""
    # numpy's names: "backward" leaves the forward transform unscaled, "forward" the inverse
    norm = "ortho" if scaled else ("forward" if inverse else "backward")
    lib = fft_library()
    n = len(axes)
    if lib == "pyfftw" and (axes == (-2, -1) or (x.ndim > 0 and tuple(a % x.ndim for a in axes)
                                                == tuple(range(x.ndim - n, x.ndim)))):
        # the module, not ``from . import`` per call: sequential ePIE makes ~4 calls per position
        out = _fftw_module().transform(x, inverse, n, getattr(_local, "fft_workers", _FFT_WORKERS),
                                       overwrite=overwrite, scaled=scaled)
        if out is not None:
            return out
    if lib == "numpy":
        f = np.fft.ifftn if inverse else np.fft.fftn
        return f(x, axes=axes, norm=norm)
    import scipy.fft as sfft  # noqa: PLC0415

    f = sfft.ifftn if inverse else sfft.fftn
    return f(x, axes=axes, norm=norm, overwrite_x=overwrite, workers=getattr(_local, "fft_workers", _FFT_WORKERS))



def kernel_fft_plans(m: int, n: int, dtype: Any) -> tuple[int, int, int] | None:
    """(address of fftwf_execute_dft, forward plan, inverse plan) for compiled kernels that
    transform complex64 (m, n) planes in place themselves, or None: FFTs then stay out here.

    Only when the host FFTs are FFTW's (``fft_library()``), so PTYCLI_FFT=scipy still means
    no FFTW anywhere; only for complex64 and planes whose byte size is a multiple of 64 (the
    kernels' buffers start on 64 bytes, so every plane is then aligned as the plans were made)."""
    return fftw_plane_plans(m, n, dtype) if fft_library() == "pyfftw" else None


def fftw_plane_plans(m: int, n: int, dtype: Any) -> tuple[int, int, int] | None:
    """``kernel_fft_plans`` whatever the host FFT library is (the benchmark's bound measures
    every library installed), or None without pyFFTW's FFTW, for other dtypes or sizes."""
    if np.dtype(dtype) != np.complex64 or (m * n * 8) % 64 or not pyfftw_available():
        return None
    fftw = _fftw_module()
    lib = fftw.native()
    forward = fftw.native_plan(m, n, False) if lib is not None else None
    inverse = fftw.native_plan(m, n, True) if forward is not None else None
    return None if inverse is None else (lib.execute_address, forward, inverse)


def kernel_ffts(shape: tuple[int, int], count: int) -> None:
    """Report ``count`` (M, N) transforms run inside a compiled kernel (not through
    ``_fft_call``): a no-op that FFT counters (the benchmark's bound) replace."""


@contextmanager
def fft_workers(n: int) -> Any:
    """FFTs of the calling thread use ``n`` workers inside the block (parallel parts use 1
    each: the parts already fill the cores, and one-thread plans do not contend)."""
    old = getattr(_local, "fft_workers", None)
    _local.fft_workers = max(1, int(n))
    try:
        yield
    finally:
        if old is None:
            del _local.fft_workers
        else:
            _local.fft_workers = old

