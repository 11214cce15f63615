"""Loader for the small abTEM-simulated fixtures in tests/fixtures/abtem/ (made by
`python benchmarks/corpus/make.py --fixtures`; see the README there).

    from _abtem_fixtures import load, names
    raw, meta, truth = load("sto_thick_fp")
    # raw (scan_y, scan_x, ky, kx) counts as the detector recorded them (DC at M//2)
    # meta: nominal calibration + ptycli_preprocess_args / ptycli_init_args (strings)
    # truth: phase_slices (S, Ny, Nx) float32, phase (Ny, Nx), pixel_size_a, probe (M, M)
    #        complex (Σ|P|² = incident counts), positions_a (N, 2) (y, x) Å, origin_a (2,),
    #        true (dict: the parameters the simulation really used)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent / "fixtures" / "abtem"


def names() -> list[str]:
    return sorted(p.stem for p in ROOT.glob("*.npz"))


def load(name: str) -> tuple[np.ndarray, dict, dict]:
    path = ROOT / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such abTEM fixture; expected one of {', '.join(names())}")
    with np.load(path) as z:
        raw = z["data"]
        meta = json.loads(str(z["meta"]))
        truth = {k: z[k] for k in ("phase", "pixel_size_a", "probe", "positions_a", "origin_a")}
        truth["phase_slices"] = z["phase_slices"].astype(np.float32)
        truth["pixel_size_a"] = float(truth["pixel_size_a"])
        truth["true"] = json.loads(str(z["true"]))
    return raw, meta, truth
