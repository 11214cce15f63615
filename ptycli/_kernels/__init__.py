"""The fused CPU kernels (Numba), private to the backend seam: ``backend.kernels(np)`` returns
this package, whose names are every kernel of single_slice.py and multislice.py; the two part
kernels through the wrappers below, which choose their compiled variant (variants.py: a first
run compiles only the code it uses).

compile_guard is installed first: processes that compile at once take turns on Numba's
on-disk cache, and the command line hears when a run starts compiling (compile_guard.py).
Imports go one way: multislice -> single_slice; nothing here imports this package.
"""

from __future__ import annotations

from .compile_guard import install, kernels_compiled, on_first_compile  # noqa: F401  (backend.kernels(np).on_first_compile)
from .compile_guard import compiling  # noqa: F401  (the kernel note names it)

install()

from . import multislice as _multislice  # noqa: E402  (after the guard: nothing compiles unguarded)
from . import single_slice as _single_slice  # noqa: E402
from .multislice import (  # noqa: E402, F401
    epie_multislice_part,
    epie_multislice_position,
    lsqml_terms_multi_part,
)
from . import records  # noqa: E402, F401  (the kernels' typed arguments: k.records.Scan(...))
from .single_slice import *  # noqa: E402, F403
from .single_slice import _JIT  # noqa: E402, F401  (tests build kernels with the same options)
from . import variants as _variants  # noqa: E402
from .variants import plan as plan_variants  # noqa: E402, F401  (a run that knows what it will need)
from . import helper as compile_helper  # noqa: E402, F401  (a run compiles in two processes: helper.py)


def single_slice_part(fft, scan, noise, want, bufs, pos, done_addr, signal_addr, signal_value):
    """``single_slice.single_slice_part`` without the code this process has not needed (the
    position terms, the in-place adjoint, the Poisson step's β): variants.py."""
    on = _variants.choose(positions=want.positions, poisson=_is_poisson(noise),
                          in_place=bufs.psi.shape[0] != scan.frac.shape[0] and bufs.g_exit.shape[2] == 1)
    return _single_slice.single_slice_part(fft, scan, _noise(noise, on), want, bufs, pos if on["positions"] else None,
                                           True if on["in_place"] else None, done_addr, signal_addr, signal_value)


def multislice_part(fft, scan, h, noise, want, bufs, pos, tilt, done_addr, signal_addr, signal_value):
    """``multislice.multislice_part`` without the code this process has not needed (the position
    and tilt terms, the Poisson step's β): variants.py."""
    on = _variants.choose(positions=want.positions, tilts=want.tilts, poisson=_is_poisson(noise))
    return _multislice.multislice_part(fft, scan, h, _noise(noise, on), want, bufs, pos if on["positions"] else None,
                                       tilt if on["tilts"] else None, done_addr, signal_addr, signal_value)


def _is_poisson(noise) -> bool:
    return noise.model in (NOISE_CODES["poisson"], LSQML_STEP_CODES["poisson"])  # noqa: F405


def _noise(noise, on):
    """The Noise record with its ``poisson`` marker where the variant has the Poisson β."""
    return noise._replace(poisson=True) if on["poisson"] else noise
