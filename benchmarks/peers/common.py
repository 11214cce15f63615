"""What both peer runners share: reading a corpus set, its orientation, writing the result.

Imported by run_phaser.py and run_ptyrad.py, which run in the peers' own venvs, so this
module needs only the standard library and numpy (never ptycli).

A corpus set (benchmarks/corpus/README.md) is `data.npy` counts (scan_y, scan_x, ky, kx),
DC at the centre pixel, and `meta.json` with the nominal calibration in ptycli's
conventions: defocus_a > 0 = underfocus, lengths in Å, angles in mrad, dk_mrad per
detector pixel. `ptycli_preprocess_args` may orient the frames (`--flip-ky`, `--flip-kx`,
`--transpose`); the peers get the frames oriented the same way, so that all codes
reconstruct from identical patterns.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ORIENT_FLAGS = ("--flip-ky", "--flip-kx", "--transpose")


def load_meta(set_dir: Path) -> dict[str, Any]:
    path = set_dir / "meta.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: not a readable corpus meta.json ({exc})") from None


def orientation(meta: dict[str, Any]) -> dict[str, bool]:
    """The frame flips/transpose that `ptycli preprocess` applies for this set."""
    args = [str(a) for a in meta.get("ptycli_preprocess_args", [])]
    return {flag.lstrip("-").replace("-", "_"): flag in args for flag in ORIENT_FLAGS}


def _reflect(a: np.ndarray, axis: int) -> np.ndarray:
    """Reflect about the DC pixel M//2 (as ptycli's preprocess does), not about the array centre."""
    flipped = np.flip(a, axis=axis)
    return flipped if a.shape[axis] % 2 else np.roll(flipped, 1, axis=axis)


def load_patterns(set_dir: Path, meta: dict[str, Any]) -> np.ndarray:
    """Counts (scan_y, scan_x, ky, kx) float32, oriented like ptycli's preprocess output."""
    path = set_dir / "data.npy"
    data = np.load(path, mmap_mode="r")
    if data.ndim != 4:
        raise SystemExit(f"{path}: expected 4D counts (scan_y, scan_x, ky, kx), got shape {data.shape}")
    data = np.asarray(data, dtype=np.float32)
    o = orientation(meta)
    if o["flip_ky"]:
        data = _reflect(data, -2)
    if o["flip_kx"]:
        data = _reflect(data, -1)
    if o["transpose"]:
        data = np.ascontiguousarray(data.swapaxes(-1, -2))
    return data


def scan_step(meta: dict[str, Any]) -> tuple[float, float]:
    step = meta["scan_step_a"]
    if isinstance(step, (int, float)):
        return float(step), float(step)
    return float(step[0]), float(step[1])


def slices(meta: dict[str, Any]) -> tuple[int, float]:
    """(slices, slice thickness Å) the set suggests; 1 slice for a thin set."""
    if not meta.get("multislice"):
        return 1, float(meta.get("thickness_a") or 1.0)
    return int(meta["suggested_slices"]), float(meta["suggested_slice_thickness_a"])


def set_threads(n: int) -> None:
    """Pin BLAS/OpenMP/MKL thread pools before numpy-heavy imports (the 2-core budget)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)


def write_result(out_dir: Path, phase: np.ndarray, result: dict[str, Any]) -> None:
    """OUT_DIR/phase.npy (2D slice-summed phase, float32) and OUT_DIR/result.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim != 2:
        raise ValueError(f"phase must be 2D, got shape {phase.shape}")
    np.save(out_dir / "phase.npy", phase)
    result = dict(result, finite=bool(np.isfinite(phase).all()), python=sys.version.split()[0],
                  machine=platform.machine(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    (out_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")


def probe_modes(meta: dict[str, Any]) -> int:
    """Incoherent probe modes that ptycli's init gets for this set (`--probe-modes P`), else 1:
    the peers get the same model."""
    args = [str(a) for a in meta.get("ptycli_init_args", [])]
    for i, a in enumerate(args):
        if a == "--probe-modes" and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith("--probe-modes="):
            return int(a.split("=", 1)[1])
    return 1


def parse_args(doc: str, argv: list[str] | None):
    """The command line both runners share; pins the thread pools before the peer imports numpy."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-modes", type=int, default=None,
                    help="incoherent probe modes (default: as the set's ptycli init arguments, else 1)")
    ap.add_argument("--max-wall-s", type=float, default=None,
                    help="stop after the iteration that passes this wall time (recorded in result.json)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    return args


def stage_patterns(set_dir: Path, meta: dict[str, Any], out_dir: Path) -> Path:
    """The oriented patterns as OUT_DIR/patterns.npy, for the peer's own file loader (the
    runner deletes it after the run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = (out_dir / "patterns.npy").resolve()
    np.save(path, load_patterns(set_dir, meta))
    return path
