"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is the subgroup ``checkpoint/`` of the output's ``.partial`` store: the
state arrays, the engine/optimiser state (``engine/``), the positions at the start of the
current iteration, and attrs ``cursor`` (stage, iteration, group, RNG state) and
``history``. ``write_subgroup_atomic`` makes it old-or-new, never half.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .. import backend
from ..store.chunks import check_chunks
from ..store.io import (CHECKPOINT, CHUNK_CHECKED, checkpoint_iterations, find_checkpoint, write_array,
                        write_subgroup_atomic)
from ..store.state import load_state, write_state_arrays
from .loop import Cursor, History

NAME = CHECKPOINT


def write(root: str | Path, state: Any, engine_state: dict[str, Any], cursor: Cursor, history: History,
          positions_iter_start: np.ndarray | None = None) -> Path:
    def fill(group: zarr.Group) -> None:
        write_state_arrays(group, state, backend.to_numpy)
        eng = group.require_group("engine")
        for key, value in engine_state.items():
            write_array(eng, key.replace("/", "__"), np.asarray(value))
        if positions_iter_start is not None:
            write_array(group, "positions_iter_start", positions_iter_start)
        group.attrs["cursor"] = cursor.to_json()
        group.attrs["history"] = history.to_json()

    return write_subgroup_atomic(root, NAME, fill)


def find(root: str | Path) -> Path | None:
    """The latest complete, resumable checkpoint under ``root`` (``checkpoint`` or its ``.old``):
    one with a cursor, the same rule as the output checks (store/io.py), so a checkpoint those
    let a run discard is never the one a resume then fails to read."""
    found = find_checkpoint(root)
    return found if found is not None and checkpoint_iterations(root) is not None else None


def read(path: str | Path) -> tuple[Any, dict[str, Any], Cursor, History, np.ndarray | None]:
    group = zarr.open_group(str(path), mode="r")
    for name in CHUNK_CHECKED:  # a lost chunk would resume from zeros (store/chunks.py)
        if name in group:
            check_chunks(group[name], path, name)
    state = load_state(group)
    engine_state: dict[str, Any] = {}
    if "engine" in group:
        for name, arr in group["engine"].arrays():
            value = np.asarray(arr[...])
            engine_state[name.replace("__", "/")] = int(value) if name.endswith("__t") else value
    start = np.asarray(group["positions_iter_start"][...]) if "positions_iter_start" in group else None
    cursor = Cursor(**dict(group.attrs["cursor"]))
    history = History(**dict(group.attrs["history"]))
    return state, engine_state, cursor, history, start


def convergence(previous: dict[str, Any] | None, state: Any, iteration: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Changes since the previous checkpoint (PtyRAD-style monitor), and the new snapshot.

    Object amplitude/phase changes are reported separately for signal pixels (phase
    more than one standard deviation from the median) and background pixels.
    """
    obj = backend.to_numpy(state.object)
    probe = backend.to_numpy(state.probe)
    snap = {"amp": np.abs(obj), "phase": np.angle(obj), "probe_i": float((np.abs(probe) ** 2).sum()),
            "positions": np.array(state.positions, copy=True)}
    if previous is None:
        return {"iteration": iteration}, snap
    ph = snap["phase"]
    signal = np.abs(ph - np.median(ph)) > ph.std()
    d_amp = np.abs(snap["amp"] - previous["amp"])
    d_ph = np.abs(np.angle(np.exp(1j * (snap["phase"] - previous["phase"]))))

    def pick(a: np.ndarray, m: np.ndarray) -> float:
        return float(a[m].mean()) if m.any() else 0.0

    record = {
        "iteration": iteration,
        "object_amplitude_signal": pick(d_amp, signal), "object_amplitude_background": pick(d_amp, ~signal),
        "object_phase_signal_rad": pick(d_ph, signal), "object_phase_background_rad": pick(d_ph, ~signal),
        "probe_intensity_rel": abs(snap["probe_i"] - previous["probe_i"]) / max(previous["probe_i"], 1e-30),
        "positions_rms_px": float(np.sqrt(((snap["positions"] - previous["positions"]) ** 2).sum(1).mean())),
    }
    return record, snap
