"""A py-spy sampling profile of engine iterations: every Python thread of the real run.

cProfile (the profile section's other half) sees only the thread it runs in, so it runs
the engines on one thread; py-spy samples the process from outside at a fixed rate, so
the group's parts on the pool threads and the waits between them are seen as they run.
A compiled kernel's time is charged to the Python function that called it (py-spy
without ``--native`` reads Python frames only).

A first run without py-spy fills the kernel cache. The sampled worker (``kind = "sample"``)
then warms up on one thread, so the part threads start inside the sampled iterations; its
setup and warm-up are left out by keeping, of the main thread's stacks, only those under
``SAMPLED_FRAME``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SAMPLED_FRAME = "sampled_iterations"  # worker.sampled_iterations: the timed loop's frame
MAIN_ROOT = "worker.py"  # the main thread's outermost frame is the worker's <module>


def executable() -> str | None:
    """py-spy next to this interpreter (a venv's bin) or on PATH, or None."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("py-spy", path=path)


def record(spec: dict[str, Any], rate_hz: int = 250, timeout_s: float = 1800) -> dict[str, Any]:
    """Run the worker ``spec`` under ``py-spy record``; its JSON result and the kept stacks."""
    exe = executable()
    if exe is None:
        return {"ok": False, "error": "py-spy not installed (pip install -e '.[bench]')"}
    # One unsampled run first: the kernels a multi-threaded iteration calls are compiled
    # (or loaded) there and cached, not inside the sampled iterations (the one-thread
    # warm-up does not reach them; uncached, numba's compiler was 64 % of LSQ-ML's samples)
    warm = subprocess.run([sys.executable, str(HERE / "worker.py"), json.dumps({**spec, "iterations": 1})],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if '"ok": true' not in warm.stdout:
        tail = (warm.stdout.strip().splitlines() or warm.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"warm-up run failed: {tail[:300]}"}
    with tempfile.TemporaryDirectory(prefix="ptycli-pyspy-") as tmp:
        raw = Path(tmp) / "stacks.txt"
        # --nonblocking: the default pauses the process at every sample, which stretches the
        # part threads' hand-offs (quick case A lsqml, 2026-11-22: 0.278 s/iteration paused,
        # 0.186-0.192 not, 0.15-0.19 without py-spy)
        cmd = [exe, "record", "--rate", str(rate_hz), "--nonblocking", "--format", "raw", "--function",
               "--output", str(raw), "--", sys.executable, str(HERE / "worker.py"), json.dumps(spec)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines or not raw.exists():
            tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            return {"ok": False, "error": f"py-spy: {tail}"}
        out = json.loads(lines[-1])
        if out.get("ok"):
            out["stacks"] = kept_stacks(raw.read_text())
            out["rate_hz"] = rate_hz
        return out


def parse(text: str) -> list[tuple[list[str], int]]:
    """Collapsed stacks (``frame;frame;... count``, outermost first) as (frames, count)."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def kept_stacks(text: str) -> list[tuple[list[str], int]]:
    """The stacks of the sampled iterations: the main thread's under ``SAMPLED_FRAME`` and
    every other thread's (the part threads start inside the sampled iterations)."""
    kept = []
    for frames, n in parse(text):
        main = bool(frames) and MAIN_ROOT in frames[0]
        if not main or any(f.startswith(SAMPLED_FRAME + " ") for f in frames):
            kept.append(([_short(f) for f in frames], n))
    return kept


def summary(stacks: list[tuple[list[str], int]], wall_s: float, rate_hz: int, top: int) -> dict[str, Any]:
    """Top functions by own samples (the innermost frame) and by total samples (anywhere in
    the stack), each as a fraction of all kept samples; and the mean busy Python threads."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    n_all = 0
    for frames, n in stacks:
        n_all += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    rows = [{"function": f, "own": c / n_all, "total": total[f] / n_all} for f, c in own.most_common(top)] \
        if n_all else []
    by_total = [{"function": f, "total": c / n_all} for f, c in total.most_common(top)] if n_all else []
    return {"samples": n_all, "busy_threads": n_all / max(rate_hz * wall_s, 1e-12), "by_own": rows,
            "by_total": by_total}


def _short(frame: str) -> str:
    """``func (path:line)`` with the path from the package (or site-packages) on."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    for marker in ("/ptycli/", "/site-packages/", "/lib/python3", "/benchmarks/"):
        if marker in where:
            rest = where.split(marker, 1)[1]
            where = ("ptycli/" + rest) if marker == "/ptycli/" else rest.split("/", 1)[-1] \
                if marker == "/lib/python3" else rest
            break
    return f"{name} ({where}"
