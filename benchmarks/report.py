"""Tables of the benchmark results: plain text for the terminal, Markdown for RESULTS.md."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = ("numpy", "scipy", "pyFFTW", "numba", "zarr", "numcodecs", "pydantic")


# ----------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import ptycli

    versions = {"python": sys.version.split()[0], "ptycli": ptycli.__version__}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "memory_gib": _memory_gib(), "platform": platform.platform(), "versions": versions,
            "git_commit": _git_commit(), "load_average_start": list(os.getloadavg())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        return round(kib / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------- fits
def loglog_exponent(x: list[float], y: list[float]) -> float | None:
    """Slope of log y against log x (least squares): t ∝ x^slope."""
    pts = [(a, b) for a, b in zip(x, y) if a and b and a > 0 and b > 0 and math.isfinite(b)]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


# ----------------------------------------------------------------------------- tables
def table(headers: list[str], rows: list[list[Any]]) -> tuple[str, str]:
    """(plain text, Markdown) renderings of one table."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
    text = "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])
    md = "\n".join(["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
                    *("| " + " | ".join(r) + " |" for r in cells)])
    return text, md


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def standard_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    headers = ["case", "engine", "J", "M", "S", "Np", "group", "s/iter", "FFT-bound s", "ratio",
               "peak RSS MiB", "positions/s", "FFT lib", "iters"]
    rows = []
    for r in results:
        c, m = r["case"], r["result"]
        lead = [c["name"], r["engine"], c["scan"][0] * c["scan"][1], c["size"], c["slices"], c["probe_modes"]]
        if not m.get("ok"):
            rows.append([*lead, None, m.get("status") or f"failed: {m.get('error', '?')[:60]}",
                         *[None] * 7])
            continue
        group = m["group_size"] if m["group_size"] < lead[2] else "all"
        iters = f"{len(m['warmup_s'])}+{len(m['times_s'])}" + (f" x{len(m['rounds'])}" if m.get("rounds") else "")
        rows.append([*lead, group, m["median_s"], m["fft_bound_s"], m["ratio"], m["peak_rss_mib"],
                     m["positions_per_s"], m["fft_library"], iters])
    return headers, rows


def scaling_rows(series: dict[str, dict[str, list[tuple]]]) -> tuple[list[str], list[list[Any]]]:
    """One row per (series, engine): x values, s/iter, FFT bound, and both fitted exponents."""
    headers = ["series", "engine", "values", "s/iter", "exponent", "FFT-bound s", "bound exponent"]
    rows = []
    for name, per_engine in series.items():
        for engine, pts in per_engine.items():
            xs = [p[0] for p in pts]
            ts = [p[1] for p in pts]
            bounds = [p[2] if len(p) > 2 else None for p in pts]
            rows.append([name, engine, ", ".join(f"{x:g}" for x in xs), ", ".join(_fmt(t) for t in ts),
                         loglog_exponent(xs, ts), ", ".join(_fmt(b) for b in bounds),
                         loglog_exponent(xs, bounds)])
    return headers, rows
