"""``ptycli watch OUT.zarr``: follow a running reconstruction from another terminal.

Reads ``OUT.zarr.partial`` (its ``checkpoint/`` subgroup and the recipe at the root), or
``OUT.zarr`` once complete, read-only and without locks: checkpoints are swapped in by
renames, so a read that races a swap fails cleanly and is retried at the next poll.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .preview import image_to_ansi, image_to_text
from .viewdata import history_of, object_phase_image, running_store, state_of, total_iterations

SPARK = "▁▂▃▄▅▆▇█"
_RACE_ERRORS = (KeyError, FileNotFoundError, OSError, ValueError)  # a checkpoint swapped mid-read


def sparkline(values: Any, width: int = 40) -> str:
    """The last ``width`` values as block characters (log scale when all positive)."""
    v = np.asarray(values, dtype=np.float64)[-width:]
    v = v[np.isfinite(v)]
    if v.size == 0:
        return ""
    if np.all(v > 0):
        v = np.log10(v)
    lo, hi = float(v.min()), float(v.max())
    idx = np.zeros(v.size, dtype=int) if hi <= lo else np.rint((v - lo) / (hi - lo) * (len(SPARK) - 1))
    return "".join(SPARK[int(i)] for i in idx)


def snapshot(out_path: str | Path, width: int = 60, height: int = 16, colour: bool = True) -> dict[str, Any]:
    """The state of the job writing ``out_path``: status, iteration, loss, ETA, preview
    (colour codes, or a plain-text brightness ramp without ``colour``)."""
    import zarr  # noqa: PLC0415

    out = Path(out_path)
    found = running_store(out)
    if found is None:
        return {"output": str(out), "status": "waiting", "iteration": 0}
    group = zarr.open_group(str(found), mode="r")
    status = _status(group, found != out)
    hist = history_of(group)
    loss = np.asarray(hist.get("loss", []), dtype=np.float64)
    times = np.asarray(hist.get("time_s", []), dtype=np.float64)
    total = total_iterations(hist["attrs"].get("stages", [])) or total_iterations(_recipe_stages(group))
    snap: dict[str, Any] = {"output": str(out), "store": str(found), "status": status,
                            "iteration": int(loss.size), "total_iterations": total,
                            "loss": loss.tolist(), "elapsed_s": float(times.sum()),
                            "eta_s": _eta(loss.size, total, times, status)}
    try:
        img = object_phase_image(state_of(group))
        snap["preview"] = image_to_ansi(img, width, height) if colour else image_to_text(img, width, height)
    except InputError:
        snap["preview"] = None  # no checkpoint yet
    return snap


def _status(group: Any, partial: bool) -> str:
    meta = group.attrs.get("ptycli") or {}
    status = meta.get("status", "running")
    return "running" if partial and status == "complete" else status


def _recipe_stages(group: Any) -> list[Any]:
    recipe = group.attrs.get("recipe")
    stages = recipe.get("stage", []) if isinstance(recipe, dict) else []
    return stages if isinstance(stages, list) else []


def _eta(done: int, total: int | None, times: np.ndarray, status: str) -> float | None:
    """Remaining iterations times the median recent time per iteration."""
    if status != "running" or total is None or done == 0 or times.size == 0:
        return 0.0 if status == "complete" else None
    per_iteration = float(np.median(times[-10:]))
    return max(total - done, 0) * per_iteration


def format_frame(snap: dict[str, Any], width: int = 60) -> str:
    """Header, loss sparkline and preview, as one text block."""
    it = snap.get("iteration", 0)
    total = snap.get("total_iterations")
    head = [f"{snap['output']}  {snap['status']}", f"iteration {it}" + (f"/{total}" if total else "")]
    loss = snap.get("loss") or []
    if loss:
        head.append(f"loss {loss[-1]:.4g}")
    if snap.get("eta_s") is not None:
        head.append(f"ETA {_duration(snap['eta_s'])}")
    lines = ["  ·  ".join(head)]
    if loss:
        lines.append(f"loss {sparkline(loss, max(8, width - 24))}  ({min(loss):.3g} … {max(loss):.3g})")
    if snap.get("preview"):
        lines.append(snap["preview"])
    elif snap["status"] == "waiting":
        lines.append("waiting for the job to create its store …")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def watch(out_path: str | Path, emit: Callable[[str, dict], None], *, once: bool = False,
          interval_s: float = 2.0, width: int = 60, height: int = 16,
          timeout_s: float | None = None, colour: bool = True) -> dict[str, Any]:
    """Poll ``out_path`` and call ``emit(frame_text, snapshot)`` whenever a new checkpoint
    or iteration lands; return the last snapshot when the job ends (or at once/timeout)."""
    t0, last_key, snap = time.monotonic(), None, {}
    while True:
        try:
            snap = snapshot(out_path, width, height, colour)
        except _RACE_ERRORS:
            snap = snap or {"output": str(out_path), "status": "busy", "iteration": 0}
        key = (snap.get("status"), snap.get("iteration"), snap.get("preview") is not None)
        if key != last_key or once:
            emit(format_frame(snap, width), snap)
            last_key = key
        if once or snap.get("status") in ("complete", "failed", "interrupted"):
            return snap
        if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
            return snap
        time.sleep(interval_s)
