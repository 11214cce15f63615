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
from types import ModuleType
from typing import Any

import numpy as np

from . import host_fft
from .errors import DeviceError

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


def concat(arrays: list[Any], axis: int = 0) -> Any:
    """Join arrays of one namespace along ``axis`` (the array API's ``concat``, NumPy < 2's
    and CuPy's ``concatenate``)."""
    xp = namespace(*arrays)
    return (getattr(xp, "concat", None) or xp.concatenate)(arrays, axis=axis)


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
_LAST2 = (-2, -1)


def _fft_call(x: Any, inverse: bool, axes: tuple[int, ...], overwrite: bool = False, scaled: bool = True) -> Any:
    """The one FFT entry point (unitary unless ``scaled=False``: then unnormalised both ways).

    ``overwrite``: the caller gives ``x`` away; the transform may run in place in it.
    NumPy arrays go to the host's library (ptycli/host_fft.py), others to their namespace's.
    """
    xp = np if type(x) is np.ndarray else namespace(x)
    if xp is np:
        return host_fft.transform(x, inverse, axes, overwrite, scaled)
    norm = "ortho" if scaled else ("forward" if inverse else "backward")
    _cupy_setup(xp)
    f = xp.fft.ifftn if inverse else xp.fft.fftn
    return f(x, axes=axes, norm=norm)


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
