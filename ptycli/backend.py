"""The array-backend seam: the only module that imports CuPy.

Compute code (physics, engines, constraints) never imports numpy or scipy for array work.
It asks this module for the namespace of the arrays it was given ("array type in ==
array type out"), for FFTs, and for the few operations the array API standard lacks
(patch extraction, scatter-add). ``to_numpy`` is the one way to the host, and it counts
its calls so tests can prove an engine does not synchronise inside its loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy as np

from .errors import DeviceError

_FFT_WORKERS = max(1, os.cpu_count() or 1)
_local = threading.local()  # per-thread FFT worker count while a group runs as parallel parts
_fft_library = os.environ.get("PTYCLI_FFT", "auto")  # auto | scipy | pyfftw | numpy
transfer_count = 0  # incremented by every to_numpy() of a device array

PRECISIONS = {"single": ("float32", "complex64"), "double": ("float64", "complex128")}


# ----------------------------------------------------------------------------- namespaces
def _cupy() -> ModuleType | None:
    try:
        import cupy  # noqa: PLC0415  (optional dependency; imported lazily)
    except Exception:  # ImportError, or a CUDA runtime that fails to load
        return None
    return cupy


def is_cupy_array(x: Any) -> bool:
    return type(x).__module__.startswith("cupy")


def namespace(*arrays: Any) -> ModuleType:
    """Namespace of the given arrays: numpy, cupy, or an array-API namespace."""
    for a in arrays:
        if a is None or isinstance(a, (int, float, complex)):
            continue
        if isinstance(a, np.ndarray) or isinstance(a, np.generic):
            return np
        if is_cupy_array(a):
            return _cupy()  # type: ignore[return-value]
        if hasattr(a, "__array_namespace__"):
            return a.__array_namespace__()
    return np


def is_numpy(xp: ModuleType) -> bool:
    return xp is np


def get_xp(device: str = "cpu") -> ModuleType:
    """Namespace for a device string: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if device == "cpu":
        return np
    cp = _cupy()
    usable = cp is not None and _cuda_device_count(cp) > 0
    if device == "auto":
        return cp if usable else np
    if not device.startswith("cuda"):
        raise DeviceError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")
    if not usable:
        raise DeviceError(
            f"device {device!r} requested but CuPy with a CUDA device is not available "
            "(install the 'gpu' extra: pip install 'ptycli[gpu]')"
        )
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    cp.cuda.Device(index).use()
    return cp


def _cuda_device_count(cp: ModuleType) -> int:
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def device_name(xp: ModuleType) -> str:
    if xp is np:
        return "cpu"
    if getattr(xp, "__name__", "") == "cupy":
        return f"cuda:{xp.cuda.Device().id}"
    return getattr(xp, "__name__", "array-api")


# ----------------------------------------------------------------------------- transfers
def to_numpy(x: Any) -> np.ndarray:
    """The one way to the host. Counts device-to-host copies."""
    global transfer_count
    if isinstance(x, np.ndarray):
        return x
    if is_cupy_array(x):
        transfer_count += 1
        return x.get()
    if hasattr(x, "__array_namespace__") and not isinstance(x, np.generic):
        transfer_count += 1
        try:
            return np.from_dlpack(x)
        except Exception:
            return np.asarray(x)
    return np.asarray(x)


def to_device(x: Any, xp: ModuleType, dtype: Any = None) -> Any:
    """Move a host array (or scalar) onto the namespace ``xp``."""
    if xp is np:
        return np.asarray(x, dtype=dtype)
    if isinstance(dtype, str):  # the array API takes dtype objects, not names (CuPy takes both)
        dtype = getattr(xp, dtype)
    return xp.asarray(x, dtype=dtype)


def scalar(x: Any) -> float:
    """A Python float from a 0-d array (a host sync on GPU: use outside hot loops)."""
    return float(to_numpy(x))


# ----------------------------------------------------------------------------- dtypes
def dtypes(precision: str = "single") -> tuple[str, str]:
    """(real, complex) dtype names for ``single`` (default) or ``double``."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise DeviceError(f"unknown precision {precision!r}; expected single or double") from None


def copy(x: Any) -> Any:
    """A copy of an array of any namespace (the array API has no ``.copy()`` method), or of
    a dict/list; other values are returned as they are (immutable)."""
    if hasattr(x, "copy"):  # NumPy and CuPy arrays, dicts, lists
        return x.copy()
    if hasattr(x, "__array_namespace__"):
        return x.__array_namespace__().asarray(x, copy=True)
    return x


def angle(z: Any) -> Any:
    """The phase of a complex array in any namespace (the array API has atan2, not angle)."""
    xp = namespace(z)
    return xp.angle(z) if hasattr(xp, "angle") else xp.atan2(xp.imag(z), xp.real(z))


def is_complex(x: Any) -> bool:
    """Whether ``x`` has a complex dtype, in any namespace (the array API has no iscomplexobj)."""
    return str(x.dtype).rsplit(".", 1)[-1].startswith("complex")


def complex_dtype_of(x: Any) -> Any:
    """complex64 for float32/complex64 input, complex128 otherwise."""
    xp = namespace(x)
    return xp.complex64 if x.dtype in (xp.float32, xp.complex64) else xp.complex128


def real_dtype_of(x: Any) -> Any:
    xp = namespace(x)
    return xp.float32 if x.dtype in (xp.float32, xp.complex64) else xp.float64


# ----------------------------------------------------------------------------- FFT
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


_LAST2 = (-2, -1)
_fftw_mod: Any = None


def _fftw_module() -> Any:
    """ptycli/_fftw.py, imported on first use (it imports pyFFTW, which ``--help`` must not)."""
    global _fftw_mod
    if _fftw_mod is None:
        from . import _fftw  # noqa: PLC0415

        _fftw_mod = _fftw
    return _fftw_mod


def _fft_call(x: Any, inverse: bool, axes: tuple[int, ...], overwrite: bool = False, scaled: bool = True) -> Any:
    """The one FFT entry point (unitary unless ``scaled=False``: then unnormalised both ways).

    ``overwrite``: the caller gives ``x`` away; the transform may run in place in it.
    """
    xp = np if type(x) is np.ndarray else namespace(x)
    # numpy's names: "backward" leaves the forward transform unscaled, "forward" the inverse
    norm = "ortho" if scaled else ("forward" if inverse else "backward")
    if xp is not np:
        _cupy_setup(xp)
        f = xp.fft.ifftn if inverse else xp.fft.fftn
        return f(x, axes=axes, norm=norm)
    lib = fft_library()
    n = len(axes)
    if lib == "pyfftw" and (axes == _LAST2 or (x.ndim > 0 and tuple(a % x.ndim for a in axes)
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


def host_threads() -> int:
    """Threads a group may be split over on the host: PTYCLI_THREADS, else the usable cores."""
    env = os.environ.get("PTYCLI_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError as exc:
            raise DeviceError(f"PTYCLI_THREADS={env!r}: expected a positive integer") from exc
    # asked once per group (and by sequential ePIE with modes once per position): the cores
    # are counted once per process, not with an affinity syscall at every call
    pid = os.getpid()
    n = _usable_cores.get(pid)
    if n is None:
        try:
            n = max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            n = max(1, os.cpu_count() or 1)
        _usable_cores[pid] = n
    return n


_usable_cores: dict[int, int] = {}


_pool: Any = None
_pool_size = 0
_pool_lock = threading.Lock()
_PART_THREAD = "ptycli-part"
# PTYCLI_SPIN_WAIT=0: idle part threads sleep at once instead of spinning for a few ms
# (for nodes shared with other jobs, where a spinning thread takes a core from them)
_spin_wait = os.environ.get("PTYCLI_SPIN_WAIT", "1") != "0"


def map_parts(fn: Any, parts: list[Any]) -> list[Any]:
    """[fn(p) for p in parts], run concurrently on host threads (one per part, the caller's
    among them), each with single-threaded FFTs; results in the order of ``parts``.

    NumPy and FFTW release the GIL on large arrays, so a group split into parts uses every
    core for the elementwise passes too, not only inside the FFTs. Parts that are each one
    compiled kernel call go through ``map_launches`` instead.
    """
    if len(parts) <= 1 or threading.current_thread().name.startswith(_PART_THREAD):
        # a part that maps parts again runs them itself: the pool's threads may all be busy
        # with the outer parts, and waiting on them from one of them would never end
        return [fn(p) for p in parts]
    k = kernels(np) if _spin_wait else None
    if k is not None:  # workers that wait spinning: a part starts within microseconds
        from . import _pool as spin

        out = spin.pool(len(parts) - 1, _PART_THREAD, k).run(lambda p: _run_part(fn, p), parts)
        if out is not None:
            return out
        return [fn(p) for p in parts]  # another thread's parts hold the pool
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < len(parts) - 1:
            from concurrent.futures import ThreadPoolExecutor

            _pool_size = len(parts) - 1
            _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix=_PART_THREAD)
    futures = [_pool.submit(_run_part, fn, p) for p in parts[1:]]
    try:
        first = _run_part(fn, parts[0])
    finally:
        errors = [f.exception() for f in futures]  # waits: no part outlives the call
    for err in errors:
        if err is not None:
            raise err
    return [first, *(f.result() for f in futures)]


@dataclass
class Launch:
    """One part's compiled call with its Python done beforehand: ``kernel(*args, signal_addr,
    signal_value)`` (a kernel that stores signal_value at signal_addr as it starts, 0 for
    none, and releases Python's lock), then ``finish`` of its return value."""

    kernel: Any
    args: tuple[Any, ...]
    finish: Callable[[Any], Any]
    made: Any = None  # what the call fills in, for callers that compose launches (read after it ran)

    def run(self) -> Any:
        """On the calling thread."""
        return self.finish(self.kernel(*self.args, 0, 0))

    def then(self, after: Callable[[Any], Any]) -> Launch:
        return Launch(self.kernel, self.args, lambda raw: after(self.finish(raw)), self.made)


def map_launches(prepare: Callable[[Any], Launch | None], parts: list[Any],
                 tail: Callable[[], tuple[Any, Any, Any] | None] | None = None, *, together: bool = False,
                 release: Callable[[], None] | None = None) -> list[Any] | None:
    """``map_parts`` for parts that are each one kernel call: every part's Python
    (``prepare``, then ``finish``) runs on the calling thread and only the kernels run
    concurrently, each starting within microseconds (ptycli/_pool.py). None when ``prepare``
    gives None for any part: the caller then runs its general path.

    ``tail()``: ((kernel, args), cancel, parts_done) or None, prepared after the parts: a
    kernel run right after the last part's, on its thread, that waits for every part's kernel
    and may still run when this returns (its caller learns from it when it is done);
    ``cancel()`` releases it when a part fails before its kernel ran, and ``parts_done()``
    returns once every part's kernel has (their outputs are read here then).

    ``together``: the kernels wait for one another inside (barriers), so they must all run
    at once: on the spinning pool only, and None (no kernel run) when it cannot take them
    (nested in a part, ``PTYCLI_SPIN_WAIT=0``, the pool busy). ``release()`` then lets the
    others' barriers pass if the calling thread's kernel call fails.
    """
    launches = [prepare(p) for p in parts]
    if any(launch is None for launch in launches):
        return None
    if together and len(launches) > 1:
        k = kernels(np) if _spin_wait else None
        if k is None or threading.current_thread().name.startswith(_PART_THREAD):
            return None
        from . import _pool as spin

        raw = spin.pool(len(launches) - 1, _PART_THREAD, k).run_kernels(
            [(ln.kernel, ln.args) for ln in launches], (), release)
        return None if raw is None else [ln.finish(r) for ln, r in zip(launches, raw)]
    after, cancel, parts_done = (tail() if tail is not None else None) or (None, None, None)
    after_calls = (after,) if after is not None else ()

    def guarded(ln: Launch, last: bool) -> Any:
        try:
            out = ln.kernel(*ln.args, 0, 0)
        except BaseException:
            if cancel is not None:
                cancel()
            raise
        for kernel, args in after_calls if last else ():
            kernel(*args)
        return out

    raw = None
    k = kernels(np) if _spin_wait else None
    if len(launches) > 1 and k is not None and not threading.current_thread().name.startswith(_PART_THREAD):
        from . import _pool as spin

        raw = spin.pool(len(launches) - 1, _PART_THREAD, k).run_kernels(
            [(ln.kernel, ln.args) for ln in launches], after_calls, cancel)
        if raw is not None and after_calls:
            parts_done()  # the last part's worker goes on with the tail
    if raw is None:  # one part, no pool, or the pool busy: as map_parts does
        n = len(launches)
        raw = map_parts(lambda il: guarded(il[1], il[0] == n - 1), list(enumerate(launches)))
    return [ln.finish(r) for ln, r in zip(launches, raw)]


def _run_part(fn: Any, part: Any) -> Any:
    with fft_workers(1):
        return fn(part)


def fft2(x: Any, *, overwrite: bool = False, scaled: bool = True) -> Any:
    """Unitary forward 2D FFT over the last two axes (kernel exp(-2 pi i k.r)).

    ``overwrite=True``: ``x`` is a temporary the caller no longer reads; the transform may
    run in place in it (FFTW on the host: no output allocated, data still in cache).
    ``scaled=False``: without the factor 1/sqrt(M N), for a caller that folds it into a
    pass of its own (or applies it to a smaller result).
    """
    return _fft_call(x, False, _LAST2, overwrite, scaled)


def ifft2(x: Any, *, overwrite: bool = False, scaled: bool = True) -> Any:
    """Unitary inverse 2D FFT over the last two axes (``overwrite``, ``scaled`` as in ``fft2``)."""
    return _fft_call(x, True, _LAST2, overwrite, scaled)


def unitary_scale(shape: tuple[int, ...]) -> float:
    """1/sqrt(M N): what ``scaled=False`` leaves out of a 2D transform of ``shape``."""
    return 1.0 / math.sqrt(shape[-2] * shape[-1])


def fourier_multiply(x: Any, H: Any, *, conj: bool = False, overwrite: bool = False) -> Any:
    """F⁻¹[H ⊙ F[x]] over the last two axes (conj(H) with ``conj``): a propagation, or any
    convolution given by its transfer function. H is (M, N) or (B, 1, ..., M, N) against x.

    Both transforms run unnormalised (in place where they can) and the two unitary scalings
    become one factor 1/(M N) inside the product with H: one pass over the data between the
    FFTs instead of three, and no output allocated.
    """
    xp = namespace(x)
    spectrum = _fft_call(x, False, _LAST2, overwrite, False)
    m, n = x.shape[-2:]
    scale = 1.0 / (m * n)
    k = kernels(xp)
    h3, x4 = _spectral_operands(spectrum, H) if k is not None else (None, None)
    if h3 is not None:
        k.spectral_multiply(x4, h3, k.real_scalar(scale, x4), conj)
    else:
        spectrum *= xp.conj(H) if conj else H
        spectrum *= scale
    return _fft_call(spectrum, True, _LAST2, True, False)


def store(dest: Any, result: Any) -> Any:
    """Make ``dest`` hold ``result`` (a transform run with ``overwrite`` on ``dest``): no copy
    when it ran in place, as FFTW does on the host; a copy when the library returned a new array."""
    same = (type(dest) is np.ndarray and type(result) is np.ndarray and dest.shape == result.shape
            and dest.__array_interface__["data"][0] == result.__array_interface__["data"][0])
    if not same:
        dest[...] = result
    return dest


def _spectral_operands(spectrum: Any, H: Any) -> tuple[Any, Any]:
    """(H as (1|B, M, N), spectrum as (1|B, R, M, N)) for the fused product, or (None, None)
    when H's shape or dtype does not fit the kernel (the generic product is used then)."""
    m, n = spectrum.shape[-2:]
    lead = H.shape[:-2]
    if H.dtype != spectrum.dtype or not spectrum.flags.c_contiguous or tuple(H.shape[-2:]) != (m, n):
        return None, None
    if all(d == 1 for d in lead):
        return H.reshape(1, m, n), spectrum.reshape(1, -1, m, n)
    if spectrum.ndim >= 3 and lead[0] == spectrum.shape[0] and all(d == 1 for d in lead[1:]):
        return H.reshape(lead[0], m, n), spectrum.reshape(lead[0], -1, m, n)
    return None, None


def fftn(x: Any, axes: tuple[int, ...]) -> Any:
    return _fft_call(x, False, axes)


def ifftn(x: Any, axes: tuple[int, ...]) -> Any:
    return _fft_call(x, True, axes)


def fftfreq(n: int, d: float = 1.0, *, xp: ModuleType = np, dtype: Any = None) -> Any:
    """Sample frequencies on ``xp`` (cycles per unit of ``d``), DC first."""
    f = np.fft.fftfreq(n, d)
    return to_device(f, xp, dtype=dtype or "float64")


def fftshift(x: Any, axes: tuple[int, ...] = (-2, -1)) -> Any:
    xp = namespace(x)
    shifts = tuple(x.shape[a] // 2 for a in axes)
    return xp.roll(x, shifts, axis=axes)


def ifftshift(x: Any, axes: tuple[int, ...] = (-2, -1)) -> Any:
    xp = namespace(x)
    shifts = tuple(-(x.shape[a] // 2) for a in axes)
    return xp.roll(x, shifts, axis=axes)


# ----------------------------------------------------------------------------- fused elementwise
# The engines' hottest reductions, one memory pass each on NumPy instead of the 3-4 passes
# (conj, product, real part, sum) of the array-API spelling. Same results, same dtypes.
def abs2(x: Any) -> Any:
    """|x|² in the real dtype of ``x`` (no hypot, no complex temporary)."""
    xp = namespace(x)
    if xp is np and np.iscomplexobj(x):
        out = np.square(x.real)
        out += np.square(x.imag)
        return out
    if is_complex(x):
        return xp.real(x) ** 2 + xp.imag(x) ** 2
    return x * x


def real_dot(u: Any, v: Any, keep: tuple[int, ...] = (0,)) -> Any:
    """Re Σ conj(u)·v over every axis not in ``keep`` (default: all but the first).

    NumPy: one einsum over the float view of complex arrays (no conj, product or real-part
    temporaries); broadcast views (stride 0) are read in place.
    """
    xp = namespace(u, v)
    keep = tuple(k % u.ndim for k in keep)
    if xp is np and u.shape == v.shape and u.dtype == v.dtype:
        letters = "abcdefghijklmnop"[: u.ndim]
        out = "".join(letters[k] for k in keep)
        if np.iscomplexobj(u):
            u, v = _float_view(u), _float_view(v)
        return np.einsum(f"{letters},{letters}->{out}", u, v)
    axes = tuple(a for a in range(u.ndim) if a not in keep)
    prod = xp.real(xp.conj(u) * v) if is_complex(u) else u * v
    return xp.sum(prod, axis=axes)


def _float_view(x: np.ndarray) -> np.ndarray:
    """(..., N) complex as (..., 2N) real without a copy when the last axis is contiguous."""
    if x.strides[-1] != x.itemsize:
        x = np.ascontiguousarray(x)
    return np.lib.stride_tricks.as_strided(x.real, shape=(*x.shape[:-1], 2 * x.shape[-1]),
                                           strides=(*x.strides[:-1], x.itemsize // 2))


# ----------------------------------------------------------------------------- fused kernels
_kernels_mode = os.environ.get("PTYCLI_KERNELS", "auto")  # auto | 0 (array-API code everywhere)
_kernels_module: Any = None


def set_kernels(enabled: bool | str) -> None:
    """Use the fused CPU kernels (``True``/"auto") or the array-API code (``False``/"0")."""
    global _kernels_mode
    _kernels_mode = "auto" if enabled in (True, "auto", "1") else "0"


@contextlib.contextmanager
def kernels_disabled() -> Any:
    """The array-API code everywhere inside the block (``set_kernels(False)``), restored after."""
    global _kernels_mode
    before = _kernels_mode
    _kernels_mode = "0"
    try:
        yield
    finally:
        _kernels_mode = before


def kernels(xp: ModuleType) -> ModuleType | None:
    """The fused CPU kernels (ptycli/_kernels.py) for NumPy arrays, else None.

    None on CuPy and other namespaces, when Numba is not installed, or with
    PTYCLI_KERNELS=0; callers then run the equivalent array-API code.
    """
    global _kernels_module
    if xp is not np or _kernels_mode == "0":
        return None
    if _kernels_module is None:
        try:
            from . import _kernels  # noqa: PLC0415  (optional: needs numba)

            _kernels_module = _kernels
        except Exception:  # ImportError, or a Numba that cannot compile here
            _kernels_module = False
    return _kernels_module or None


# ----------------------------------------------------------------------------- patches
def extract_patches(obj: Any, y0: Any, x0: Any, shape: tuple[int, int]) -> Any:
    """Windows of ``obj`` (..., H, W) with top-left corners (y0[b], x0[b]).

    Returns (B, ..., m, n). Corners are integer arrays on the host or the device.
    """
    xp = namespace(obj)
    m, n = shape
    k = kernels(xp)
    if k is not None and obj.ndim >= 2 and windows_inside(obj.shape, y0, x0, m, n):
        lead = obj.shape[:-2]
        flat = np.ascontiguousarray(obj).reshape((-1, *obj.shape[-2:]))
        out = np.empty((len(y0), flat.shape[0], m, n), dtype=obj.dtype)
        k.extract(flat, np.asarray(y0, dtype=np.int64), np.asarray(x0, dtype=np.int64), out)
        return out.reshape((len(y0), *lead, m, n))
    if xp is np and len(y0) == 1:  # sequential ePIE: a plain slice, no window view to build
        y, x = int(np.asarray(y0)[0]), int(np.asarray(x0)[0])
        if 0 <= y <= obj.shape[-2] - m and 0 <= x <= obj.shape[-1] - n:  # else: the general path raises
            return obj[..., y:y + m, x:x + n][None].copy()
    if xp is np:
        # A strided view of every window, then one gather: rows are copied contiguously.
        win = np.lib.stride_tricks.sliding_window_view(obj, (m, n), axis=(-2, -1))
        out = win[..., np.asarray(y0), np.asarray(x0), :, :]
        return np.moveaxis(out, -3, 0)
    # Any other namespace (CuPy, array_api_strict): one `take` over the flattened plane, since
    # the array API has no multi-axis integer-array indexing.
    lead, (h, w) = obj.shape[:-2], obj.shape[-2:]
    yy = xp.reshape(to_device(y0, xp, dtype="int64"), (-1, 1, 1)) + xp.reshape(xp.arange(m, dtype=xp.int64), (1, m, 1))
    xx = xp.reshape(to_device(x0, xp, dtype="int64"), (-1, 1, 1)) + xp.reshape(xp.arange(n, dtype=xp.int64), (1, 1, n))
    flat_index = xp.reshape(yy * w + xx, (-1,))
    out = xp.take(xp.reshape(obj, (*lead, h * w)), flat_index, axis=len(lead))
    return xp.moveaxis(xp.reshape(out, (*lead, yy.shape[0], m, n)), len(lead), 0)


def scatter_add_patches(target: Any, y0: Any, x0: Any, patches: Any) -> Any:
    """Accumulate ``patches`` (B, ..., m, n) into ``target`` (..., H, W) in place.

    Overlapping windows add up. Returns ``target``.
    """
    xp = namespace(target)
    m, n = patches.shape[-2:]
    k = kernels(xp)
    if (k is not None and target.flags.c_contiguous and patches.dtype == target.dtype
            and windows_inside(target.shape, y0, x0, m, n)):
        lead = target.shape[:-2]
        flat = target.reshape((-1, *target.shape[-2:]))
        p = np.ascontiguousarray(np.broadcast_to(patches, (patches.shape[0], *lead, m, n)))
        k.scatter_add(flat, np.asarray(y0, dtype=np.int64), np.asarray(x0, dtype=np.int64),
                      p.reshape((p.shape[0], -1, m, n)))
        return target
    if xp is np:
        # A loop of contiguous slice-adds beats np.add.at and bincount here: each add is a
        # dense m*n block, and the Python overhead per window (~1 us) is small next to it.
        ys = np.asarray(y0).tolist()
        xs = np.asarray(x0).tolist()
        for b, (y, x) in enumerate(zip(ys, xs)):
            target[..., y : y + m, x : x + n] += patches[b]
        return target
    if getattr(xp, "__name__", "") == "cupy":
        import cupyx  # noqa: PLC0415

        yy = xp.asarray(y0)[:, None, None] + xp.arange(m)[None, :, None]
        xx = xp.asarray(x0)[:, None, None] + xp.arange(n)[None, None, :]
        lead = target.shape[:-2]
        vals = xp.moveaxis(patches, 0, -3)  # (..., B, m, n)
        index = (Ellipsis, yy, xx) if lead else (yy, xx)
        cupyx.scatter_add(target, index, vals)
        return target
    # Any other array-API namespace (array_api_strict in the tests): the standard has no
    # scatter-add, so slice-adds window by window, the corners read on the host.
    for b, (y, x) in enumerate(zip(to_numpy(y0).tolist(), to_numpy(x0).tolist())):
        target[..., y : y + m, x : x + n] += patches[b, ...]
    return target


def window_exit_waves(obj: Any, y0: Any, x0: Any, psi: Any) -> Any:
    """Single-slice exit waves O_q(window b) ψ[b, p] (B, P, Q, M, N) read straight from the
    object grid obj (Q, H, W) with the fused kernel (no window copies), or None where it does
    not apply (no kernels, or a window leaves the grid: the caller's general path reports it)."""
    k = kernels(namespace(obj))
    m, n = psi.shape[-2:]
    if k is None or obj.ndim != 3 or psi.ndim != 4 or obj.dtype != psi.dtype \
            or not windows_inside(obj.shape, y0, x0, m, n):
        return None
    out = k.empty((psi.shape[0], psi.shape[1], obj.shape[0], m, n), psi.dtype)
    return k.exit_from_object(obj, np.asarray(y0, dtype=np.int64), np.asarray(x0, dtype=np.int64), psi, out)


def windows_inside(shape: tuple[int, ...], y0: Any, x0: Any, m: int, n: int) -> bool:
    """Every window inside the last two axes (the kernels do not bounds-check; the NumPy
    code raises a clear error otherwise)."""
    if len(y0) == 0:
        return False
    ys, xs = np.asarray(y0), np.asarray(x0)
    return bool(ys.min() >= 0 and xs.min() >= 0 and ys.max() + m <= shape[-2] and xs.max() + n <= shape[-1])


# ----------------------------------------------------------------------------- host allocator
HEAP_MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's maximum for M_MMAP_THRESHOLD on 64-bit
HEAP_TRIM_THRESHOLD_BYTES = 512 * 2**20
_allocator_tuned = False


def tune_host_allocator() -> bool:
    """Keep batch-sized NumPy temporaries on the heap (glibc only; once per process).

    By default glibc serves every block above ~128 KiB-32 MiB with a fresh mmap and unmaps
    it on free, so each temporary of an engine step (1-16 MiB) is page-faulted and zeroed
    by the kernel again: measured 35-40 % of an LSQ-ML / gradient iteration's CPU time
    (128² windows, groups of 16-32). Raising the mmap and trim thresholds lets freed
    blocks be reused instead. Set PTYCLI_MALLOPT=0 to leave the allocator alone.
    """
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("PTYCLI_MALLOPT", "1") == "0":
        return _allocator_tuned
    _allocator_tuned = True
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, HEAP_MMAP_THRESHOLD_BYTES) == 1
        return bool(ok and libc.mallopt(m_trim_threshold, HEAP_TRIM_THRESHOLD_BYTES) == 1)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to tune
        return False


# ----------------------------------------------------------------------------- CuPy setup
CUPY_FFT_PLAN_CACHE = 64  # plans; a run uses a handful of batched shapes
CUPY_POOL_FRACTION = 0.9  # of the device memory; leaves room for cuFFT work areas
_cupy_ready: set[int] = set()


def _cupy_setup(xp: ModuleType) -> None:
    """Once per device: bound cuFFT's plan cache and the memory pool (so an oversized
    request fails inside CuPy with OutOfMemoryError instead of starving the driver)."""
    if getattr(xp, "__name__", "") != "cupy":
        return
    dev = int(xp.cuda.Device().id)
    if dev in _cupy_ready:
        return
    _cupy_ready.add(dev)
    try:
        xp.fft.config.get_plan_cache().set_size(CUPY_FFT_PLAN_CACHE)
        limit = os.environ.get("PTYCLI_GPU_POOL_BYTES")
        total = int(xp.cuda.Device().mem_info[1])
        xp.get_default_memory_pool().set_limit(size=int(limit) if limit else int(CUPY_POOL_FRACTION * total))
    except Exception:  # an array-API "cupy" stand-in without these knobs
        pass


# ----------------------------------------------------------------------------- memory
def available_memory_bytes(xp: ModuleType) -> int:
    """Free memory of the device of ``xp`` (host: available RAM)."""
    if getattr(xp, "__name__", "") == "cupy":
        free, _total = xp.cuda.Device().mem_info
        pool = xp.get_default_memory_pool()
        return int(free + pool.free_bytes())
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


# ----------------------------------------------------------------------------- misc
def synchronize(xp: ModuleType) -> None:
    """Wait for queued device work (timings only; never inside an engine loop)."""
    if getattr(xp, "__name__", "") == "cupy":
        xp.cuda.get_current_stream().synchronize()


def host_rng(seed: int | None) -> np.random.Generator:
    """Random numbers for control decisions (grouping, splits) live on the host."""
    return np.random.default_rng(seed)
