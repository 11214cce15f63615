"""FFTW through pyFFTW's FFTW objects: cached plans, aligned buffers, unitary scaling.

Why not scipy.fft or pyFFTW's interfaces layer: on the 2-core benchmark machine a batch of
64 complex64 128x128 transforms took 2.6-3.1 ms as a planned FFTW object (aligned input,
FFTW_MEASURE, 1 thread) against 6.6-8.5 ms for scipy.fft (pocketfft, any worker count)
and ~8 ms for the interfaces layer (which re-checks its cache and copies every call).

Plans are cached by (batch, shape, dtype, direction), oldest dropped first beyond MAX_PLANS,
and made with FFTW_MEASURE: on one thread (the engines' parallel parts) an FFTW_ESTIMATE
plan took 1.5-1.7 ms per 256² complex64 transform against 0.24-0.27 ms measured (64² and
128²: equal within the noise, three alternating runs each). MEASURE picks its
algorithm by timing, which may differ from one process to the next, and with it the
rounding: so the wisdom (FFTW's record of its choices) is kept in a file and read back by
the next process, which then makes the same plans and a run repeats bit for bit for a seed
on that machine. The file is PTYCLI_FFTW_WISDOM (a path; "off" keeps nothing), by default
``$XDG_CACHE_HOME/ptycli/fftw-wisdom-<machine>.pickle``; it is merged and replaced
atomically, so concurrent jobs sharing it do not corrupt it. PTYCLI_FFTW_PLANNER=estimate
makes timing-free plans instead (repeatable on any machine, slower). Sizes with a prime
factor above 7 always use ESTIMATE (measuring them can take seconds). The thread count
follows the transform's size (1 thread below THREADED_ELEMENTS).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pickle
import platform
import sys
import tempfile
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

THREADED_ELEMENTS = 2**16  # batch x M x N from which a plan uses every allowed thread
MAX_PLANS = 64
_SMALL_PRIMES = (2, 3, 5, 7)

_pyfftw: Any = None
_plans: OrderedDict[tuple, _Plan] = OrderedDict()
_lock = threading.Lock()
_plan_lock = threading.Lock()  # FFTW's planner is not thread-safe


def available() -> bool:
    global _pyfftw
    if _pyfftw is None:
        try:
            quiet_openmp()
            _pyfftw = _import_pyfftw()
        except Exception:
            _pyfftw = False
        else:
            _read_wisdom(wisdom_path())
    return bool(_pyfftw)


# What ``import pyfftw`` pulls in through pyfftw.interfaces when installed: its optional
# scipy.fftpack and dask wrappers, imported inside ``try: ... except ImportError``. ptycli
# uses only FFTW objects, and those two cost 1.2-1.5 CPU-s of a 4 s reconstruct start
# (dask.array brings jinja2, pandas and xarray's coders with it).
_PYFFTW_OPTIONAL = ("dask.array", "scipy.fftpack")


def _import_pyfftw() -> Any:
    """``import pyfftw`` without its unused optional wrappers: a module that is not loaded
    yet is marked absent (``sys.modules[name] = None``, the import system's documented
    "not importable" entry) for the duration of the import, then unmarked, so code that
    imports dask.array or scipy.fftpack later gets the real module."""
    hidden = [name for name in _PYFFTW_OPTIONAL if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import pyfftw  # noqa: PLC0415  (optional dependency)
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return pyfftw


def wisdom_path() -> str | None:
    """Where planning results are kept across runs (None: not kept)."""
    env = os.environ.get("PTYCLI_FFTW_WISDOM")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none") else env
    # one file per CPU model and FFTW build: a cluster's home directory is shared by nodes
    # whose fastest plans differ (any plan is still correct on any of them)
    machine = f"{platform.machine()}|{_cpu_model()}|{getattr(_pyfftw, '__version__', '')}"
    tag = hashlib.sha1(machine.encode()).hexdigest()[:12]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "ptycli", f"fftw-wisdom-{tag}.pickle")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _read_wisdom(path: str | None) -> None:
    if not path or not os.path.exists(path):
        return
    try:
        import_wisdom(path)
    except (OSError, EOFError, pickle.UnpicklingError, TypeError, ValueError):
        pass  # unreadable or from another FFTW: plans are measured again and the file replaced


def _write_wisdom(path: str | None) -> None:
    """Merge this process's wisdom into ``path`` (read, merge, write a temporary, rename)."""
    if not path:
        return
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        _read_wisdom(path)  # another job's plans since this one started: keep them too
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fftw-wisdom-")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(_pyfftw.export_wisdom(), fh)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full cache: the run goes on, the next one measures again


def quiet_openmp() -> None:
    """Make idle OpenMP threads sleep instead of spin (unless the user chose otherwise).

    pyFFTW's wheels run multi-threaded plans on their own bundled libgomp, whose idle
    threads spin for a while after every parallel FFT. Measured here (lsqml, 128² windows):
    a whole core kept busy, CPU time 2x the wall time, and the spinning thread competed
    with the group's other part. libgomp reads this when it loads, i.e. at ``import pyfftw``.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _smooth(n: int) -> bool:
    for p in _SMALL_PRIMES:
        while n % p == 0 and n > 1:
            n //= p
    return n == 1


def _measured(axes: tuple[int, ...]) -> bool:
    """Plan these transform axes with FFTW_MEASURE (else ESTIMATE): unless the user chose
    timing-free plans, for sizes without a prime factor above 7."""
    return os.environ.get("PTYCLI_FFTW_PLANNER", "measure") != "estimate" and all(_smooth(a) for a in axes)


class _Plan:
    """One FFTW plan and the aligned scratch input used when the caller's array is not aligned."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, inverse: bool, n_axes: int, max_threads: int,
                 in_place: bool = False):
        pf = _pyfftw
        self.lock = threading.Lock()
        self.scratch = pf.empty_aligned(shape, dtype=dtype)
        out = self.scratch if in_place else pf.empty_aligned(shape, dtype=dtype)
        self.in_place = in_place
        axes = tuple(range(-n_axes, 0))
        direction = "FFTW_BACKWARD" if inverse else "FFTW_FORWARD"
        n_elem = int(np.prod(shape))
        self.measured = _measured(shape[-n_axes:])
        flags = ("FFTW_MEASURE",) if self.measured else ("FFTW_ESTIMATE",)
        self.threads = max_threads if n_elem >= THREADED_ELEMENTS else 1
        self.plan = pf.FFTW(self.scratch, out, axes=axes, direction=direction, flags=flags, threads=self.threads)
        self.scale = 1.0 / float(np.sqrt(np.prod(shape[-n_axes:])))
        self.shape, self.dtype = shape, dtype

    def __call__(self, x: np.ndarray, scaled: bool = True) -> np.ndarray | None:
        """The transform of ``x`` (in place in it for an in-place plan), or None when an
        in-place plan cannot take ``x`` (misaligned: FFTW needs the alignment it planned for)."""
        out = x if self.in_place else _pyfftw.empty_aligned(self.shape, dtype=self.dtype)
        with self.lock:
            # Explicit arrays every call: pyFFTW's __call__ would copy misaligned input into
            # whatever array it was last given, which may be a caller's array. update_arrays
            # checks alignment and strides itself (in C: cheaper than asking numpy here).
            try:
                self.plan.update_arrays(x, out)
            except ValueError:
                if self.in_place:
                    return None
                np.copyto(self.scratch, x)
                self.plan.update_arrays(self.scratch, out)
            self.plan.execute()
        if scaled:
            np.multiply(out, out.real.dtype.type(self.scale), out=out)  # unitary ("ortho")
        return out


_REAL_TO_COMPLEX = {np.dtype(np.float32): np.complex64, np.dtype(np.float64): np.complex128}
_COMPLEX = (np.dtype(np.complex64), np.dtype(np.complex128))


def transform(x: np.ndarray, inverse: bool, n_axes: int, max_threads: int, *, overwrite: bool = False,
              scaled: bool = True) -> np.ndarray | None:
    """Unitary FFT over the last ``n_axes`` axes, or None when FFTW cannot take ``x``.

    ``overwrite``: ``x`` is the caller's scratch; the transform then runs in place in it (no
    output allocated, and the data stay in cache between the pass that wrote them and the
    FFT). ``scaled=False`` skips the 1/sqrt(M N) pass (a caller folding it into its own).
    Sequential ePIE makes ~4 calls per position, so this path is kept lean.
    """
    if _pyfftw is None:
        available()
    if not _pyfftw:
        return None
    dtype = x.dtype
    if dtype in _REAL_TO_COMPLEX:
        x = x.astype(_REAL_TO_COMPLEX[dtype])
        dtype = x.dtype
    if dtype not in _COMPLEX or x.ndim < n_axes or x.size == 0:
        return None
    shape = x.shape
    batched = x.reshape((-1, *shape[x.ndim - n_axes:]))  # a view when contiguous
    # One-thread plans are per calling thread: a plan executes under its own lock, so
    # parallel parts of a group (parallel.map_parts) sharing one would run one at a time.
    lane = threading.get_ident() if max_threads == 1 else 0
    in_place = overwrite and x.flags.c_contiguous and x.flags.writeable
    key = (batched.shape, dtype.char, inverse, max_threads, lane, in_place)
    plan = _plans.get(key)  # a dict read is atomic; eviction is first-in first-out
    if plan is None:
        with _plan_lock:
            plan = _Plan(batched.shape, dtype, inverse, n_axes, max_threads, in_place)
            if plan.measured:
                _write_wisdom(wisdom_path())
        with _lock:
            _plans[key] = plan
            while len(_plans) > MAX_PLANS:
                _plans.popitem(last=False)
    out = plan(batched, scaled)
    if out is None:  # an in-place plan cannot take a misaligned array: out of place instead
        return transform(x, inverse, n_axes, max_threads, scaled=scaled)
    return out.reshape(shape)


def plan_info() -> list[dict[str, Any]]:
    """The cached plans: shape, dtype, direction and chosen thread count (for reports and tests)."""
    with _lock:
        return [{"shape": k[0], "dtype": k[1], "inverse": k[2], "threads": p.threads} for k, p in _plans.items()]


def clear_plans() -> None:
    with _lock:
        _plans.clear()


def export_wisdom(path: str) -> None:
    if available():
        with open(path, "wb") as fh:
            pickle.dump(_pyfftw.export_wisdom(), fh)


def import_wisdom(path: str) -> None:
    with open(path, "rb") as fh:
        _pyfftw.import_wisdom(pickle.load(fh))


# ------------------------------------------------------------------ FFTW for compiled kernels
# Kernels that run a whole sequence of passes and transforms in one call (_kernels.epie_position)
# execute plans of pyFFTW's own single-precision FFTW library: the process's one FFTW, so
# its wisdom and this module's planner lock cover these plans too.
_FFTW_FORWARD, _FFTW_BACKWARD = -1, 1
_FFTW_MEASURE, _FFTW_ESTIMATE = 0, 1 << 6
_native_lib: Any = None
_native_plans: dict[tuple[int, int, bool], tuple[int, np.ndarray]] = {}


def _loaded_single_precision_fftw() -> tuple[str | None, str | None]:
    """Paths of the libfftw3f and its threads library this process loaded with pyFFTW
    (Linux: from /proc/self/maps)."""
    main = threads = None
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.split()[-1]
                name = os.path.basename(path)
                if name.startswith("libfftw3f"):
                    if "_omp" in name or "_threads" in name:
                        threads = threads or path
                    else:
                        main = main or path
    except OSError:
        pass
    return main, threads


def native() -> Any:
    """The ctypes handle of pyFFTW's libfftw3f with its planner functions typed, or None
    (no pyFFTW, not Linux, or a build without the symbols): kernels then are not used."""
    global _native_lib
    if _native_lib is None:
        _native_lib = False
        path, threads = _loaded_single_precision_fftw() if available() else (None, None)
        if path:
            try:
                lib = ctypes.CDLL(path)
                lib.fftwf_plan_dft_2d.restype = ctypes.c_void_p
                lib.fftwf_plan_dft_2d.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                  ctypes.c_int, ctypes.c_uint]
                lib.execute_address = ctypes.cast(lib.fftwf_execute_dft, ctypes.c_void_p).value
                # FFTW's planner makes plans for as many threads as the last plan_with_nthreads
                # asked (pyFFTW's, for its 2-thread batched plans): a kernel's one-plane plan
                # must be one-threaded (measured: a 2-thread plan made ePIE 2x slower)
                lib.one_thread = ctypes.CDLL(threads).fftwf_plan_with_nthreads if threads else None
                _native_lib = lib
            except (OSError, AttributeError):
                pass
    return _native_lib or None


def native_plan(m: int, n: int, inverse: bool) -> int | None:
    """An in-place single-plane (m, n) complex64 plan for kernels (its address), or None.

    Planned on a 64-byte-aligned plane (FFTW_MEASURE as ``_Plan``): the kernels execute it
    on planes of buffers aligned the same way."""
    key = (m, n, inverse)
    hit = _native_plans.get(key)
    if hit is not None:
        return hit[0]
    lib = native()
    if lib is None:
        return None
    scratch = _pyfftw.empty_aligned((m, n), dtype=np.complex64, n=64)
    measured = _measured((m, n))
    with _plan_lock:
        if lib.one_thread is not None:
            lib.one_thread(1)
        plan = lib.fftwf_plan_dft_2d(m, n, scratch.ctypes.data, scratch.ctypes.data,
                                     _FFTW_BACKWARD if inverse else _FFTW_FORWARD,
                                     _FFTW_MEASURE if measured else _FFTW_ESTIMATE)
        if plan and measured:
            _write_wisdom(wisdom_path())
    if not plan:
        return None
    _native_plans[key] = (plan, scratch)
    return plan
