"""The fused CPU kernels (Numba), private to the backend seam: ``backend.kernels(np)`` returns
this package, whose names are every kernel of single_slice.py and multislice.py.

compile_guard is installed first: processes that compile at once take turns on Numba's
on-disk cache, and the command line hears when a run starts compiling (compile_guard.py).
Imports go one way: multislice -> single_slice; nothing here imports this package.
"""

from __future__ import annotations

from .compile_guard import install, kernels_compiled, on_first_compile  # noqa: F401  (backend.kernels(np).on_first_compile)

install()

from .multislice import (  # noqa: E402, F401  (after the guard: nothing compiles unguarded)
    epie_multislice_part,
    epie_multislice_position,
    lsqml_terms_multi_part,
    multislice_part,
)
from . import records  # noqa: E402, F401  (the kernels' typed arguments: k.records.Scan(...))
from .single_slice import *  # noqa: E402, F403
from .single_slice import _JIT  # noqa: E402, F401  (tests build kernels with the same options)

