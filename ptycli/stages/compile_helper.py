"""The helper process of a first run (ptycli/_kernels/helper.py; reconstruct names this module
and what to tell it: the run's inputs, resolved recipe and a few of its positions): the same
reconstruction on those positions, with the kernel the run's own process compiles skipped, into
a temporary store that is thrown away. Only its compilations are of use: the kernels it calls
save their machine code in Numba's cache for the run to load.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .. import backend
from ..recipe import Recipe
from . import reconstruct


def main(spec_path: str) -> int:
    """The helper process: exit status 0 when its run ended, 1 when it stopped at an error (what
    it compiled before is kept in the cache either way)."""
    path = Path(spec_path)
    spec = json.loads(path.read_text())
    path.unlink(missing_ok=True)
    k = backend.kernels(np)
    if k is None:
        return 0
    k.compile_helper.rehearse(spec["skip"])
    with tempfile.TemporaryDirectory(prefix="ptycli-compile-") as tmp:
        positions = Path(tmp) / "positions.txt"
        positions.write_text(" ".join(str(i) for i in spec["positions"]))
        try:
            reconstruct.run(spec["data"], spec["state"], Path(tmp) / "out.zarr",
                            recipe=Recipe.model_validate(spec["recipe"]), precision=spec["precision"],
                            seed=spec["seed"], positions=str(positions), stream=True, handle_signals=False,
                            prefetch=False)  # streamed: its few positions' patterns, not the run's all
        except Exception:  # noqa: BLE001  (a rehearsal: whatever it compiled before the error is kept)
            if os.environ.get(k.compile_helper.LOG):
                import traceback  # noqa: PLC0415

                traceback.print_exc()
            return 1
    return 0
