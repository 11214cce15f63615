"""One benchmark measurement in a fresh process: prints one JSON document on stdout.

Each measurement runs alone in its own interpreter so its peak RSS (``ru_maxrss``) is its
own, and so a crash or an out-of-memory in one case cannot take the suite down.
Usage: ``python benchmarks/worker.py '<json spec>'`` (``kind`` = engine | profile |
sample | quality | prepare | stream).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cases
import harness


def peak_rss_mib() -> float:
    """Peak resident set of this process's own memory so far, in MiB.

    Linux keeps ru_maxrss across fork + exec, so a worker would report its parent's peak
    (the suite's driver) whenever that is larger; VmHWM of /proc/self/status is the high-water
    mark of this process image only. ru_maxrss is the fallback elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


# ----------------------------------------------------------------------------- engine timing
def measure_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per iteration of one engine on one case, and the FFT bound of the same work."""
    from ptycli import backend

    xp = backend.get_xp(spec.get("device", "cpu"))
    case = cases.Case.from_json(spec["case"])
    state = cases.on_device(cases.synthetic_state(case), xp)
    patterns = backend.to_device(cases.synthetic_patterns(state), xp, dtype="float32")
    rss_inputs = peak_rss_mib()
    from ptycli.stages import bench

    # the fastest library and thread count for the engine's batch, chosen before the run so
    # that every iteration can be paired with its own FFT work
    batch = bound_batch(harness.fft_group(spec["engine"], case.n_positions), case.probe_modes)
    lib = max((k for k in bench.available_libraries(xp)), key=lambda k: bench.fft_rate(
        case.size, batch, k, "single", xp, min_time_s=0.05, repeats=2))
    _, workers = bench.fft_rate_detail(case.size, batch, lib, "single", xp, min_time_s=0.05, repeats=2)
    with FFTCounter(case.size) as counter:
        paired = PairedBound(counter, case.size, batch, lib, workers, xp)
        timing = harness.time_iterations(spec["engine"], state, patterns, spec["timed"], spec["warmup"],
                                         observers=(paired,))
    out = {"rss_inputs_mib": rss_inputs, "peak_rss_mib": peak_rss_mib(), "device": backend.device_name(xp), **timing}
    counted = counter.transforms / (spec["timed"] + spec["warmup"])
    out.update(fft_bound(spec["engine"], case, timing["fft_group"], xp=xp,
                         n_eval=timing["evaluations_per_iteration"], counted=counted))
    out["positions_per_s"] = case.n_positions / timing["median_s"]
    out["ratio_separate"] = timing["median_s"] / out["fft_bound_s"]
    bounds = paired.seconds[spec["warmup"]:]
    if len(bounds) == len(timing["times_s"]) and all(b > 0 for b in bounds):
        # Each iteration over the same FFT work timed right after it: the machine is shared,
        # and a neighbour that slows one half of a pair slows the other too (the separate
        # bound, measured once after the run, saw 1.6x swings between runs).
        out["fft_bound_paired_s"] = bounds
        out["ratio"] = float(np.median([t / b for t, b in zip(timing["times_s"], bounds)]))
        out["fft_bound_s"] = float(np.median(bounds))
    else:
        out["ratio"] = out["ratio_separate"]
    return out


class PairedBound:
    """Loop observer: after each iteration, the time of that iteration's FFT work alone (the
    transforms FFTCounter saw since the previous one, in batches on the fastest library)."""

    def __init__(self, counter: FFTCounter, size: int, batch: int, library: str, workers: int, xp: Any):
        self.counter, self.size, self.batch, self.library, self.workers, self.xp = \
            counter, size, batch, library, workers, xp
        self.seconds: list[float] = []
        self._seen = 0

    def on_iteration_end(self, stage: int, iteration: int, loss: float, time_s: float) -> None:
        from ptycli.stages import bench

        n, self._seen = self.counter.transforms - self._seen, self.counter.transforms
        self.seconds.append(bench.time_fft_work(n, self.size, self.batch, self.library, "single", self.xp,
                                                workers=self.workers) if n else 0.0)


class FFTCounter:
    """Counts the M x M 2D transforms the engine asks the backend for (``backend._fft_call``)
    and those compiled kernels run themselves (reported through ``host_fft.kernel_ffts``),
    so the bound is the engine's own FFT work."""

    def __init__(self, size: int):
        self.size, self.transforms = size, 0

    def __enter__(self) -> FFTCounter:
        from ptycli import backend, host_fft

        self._orig = backend._fft_call

        def counting(x: Any, inverse: bool, axes: tuple[int, ...], *args: Any) -> Any:
            if len(axes) == 2 and x.ndim >= 2 and tuple(x.shape[-2:]) == (self.size, self.size):
                self.transforms += int(np.prod(x.shape[:-2], dtype=np.int64))
            return self._orig(x, inverse, axes, *args)

        def kernel_counting(shape: tuple[int, int], count: int) -> None:
            if tuple(shape) == (self.size, self.size):
                self.transforms += int(count)

        backend._fft_call = counting
        self._orig_kernel = host_fft.kernel_ffts
        host_fft.kernel_ffts = kernel_counting
        return self

    def __exit__(self, *exc: Any) -> None:
        from ptycli import backend, host_fft

        backend._fft_call = self._orig
        host_fft.kernel_ffts = self._orig_kernel


# The bound's batches hold at most this many planes. FFT rates plateau well before it (128²
# complex64, 2026-11-22: pyFFTW 4.84e4 / 5.36e4 / 4.84e4 FFT/s at batches of 64 / 256 / 1024,
# planes 5.58e4 / 6.11e4 / 6.06e4), while L-BFGS's whole-batch group made batches of 1024
# planes whose buffers (and numpy's complex128 probe of them) set the worker's peak RSS: case
# B's 1.23 GiB against ~0.66 for the engine itself.
MAX_BOUND_BATCH = 256


def bound_batch(group_size: int, probe_modes: int) -> int:
    """Planes per batched call of the FFT bound: a group's windows for every probe mode."""
    return max(1, min(group_size * probe_modes, MAX_BOUND_BATCH))


def fft_bound(engine: str, case: cases.Case, group_size: int, min_time_s: float = 0.1, xp: Any = np,
              n_eval: float = 1.0, counted: float | None = None) -> dict[str, Any]:
    """The same number and size of batched FFTs as one iteration, on the fastest library.

    ``counted``: the M x M transforms the engine actually ran per iteration (FFTCounter);
    without it, the cost model of physics.md §9. One batched call holds a group's windows
    for every probe mode (group size x Np), the shape an engine transforms at once.
    """
    from ptycli.stages import bench

    batch = bound_batch(group_size, case.probe_modes)
    n_model = bench.n_ffts_per_iteration(case.n_positions, engine if engine in bench.COST_MODEL_ENGINES else "lsqml",
                                         case.slices, case.probe_modes, shifts=True, n_eval=n_eval)
    n_ffts = counted if counted else n_model
    rates = bench.fft_rates(case.size, batch, "single", xp, min_time_s=min_time_s, repeats=3)
    if xp is np:
        rates["backend"] = bench.fft_rate(case.size, batch, "backend", "single", min_time_s=min_time_s, repeats=3)
    best = max((k for k in rates if k != "backend"), key=rates.get)
    rate, workers = bench.fft_rate_detail(case.size, batch, best, "single", xp, min_time_s=min_time_s, repeats=3)
    rates[best] = max(rates[best], rate)
    work_s = bench.time_fft_work(n_ffts, case.size, batch, best, "single", xp, workers=workers)
    # Both are measurements of the same FFTs; on a shared machine the smaller is the one
    # least disturbed by other processes, so it is the better estimate of the limit.
    return {"n_ffts": n_ffts, "n_ffts_model": n_model, "fft_batch": batch, "fft_rates_per_s": rates, "fft_library": best,
            "fft_workers": workers,
            "fft_work_s": work_s, "fft_bound_model_s": n_ffts / rates[best],
            "fft_bound_s": min(work_s, n_ffts / rates[best])}


# ----------------------------------------------------------------------------- profile
def profile_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """cProfile of a few iterations: the top functions by own time and by cumulative time."""
    import cProfile
    import pstats

    import os

    # cProfile sees only the thread it runs in: one host thread, so a group's parts (which
    # would otherwise run on a pool thread) are all attributed
    os.environ["PTYCLI_THREADS"] = "1"
    case = cases.Case.from_json(spec["case"])
    state = cases.synthetic_state(case)
    patterns = cases.synthetic_patterns(state)
    harness.make_run(spec["engine"], state, patterns, 1)()  # warm-up outside the profile
    run = harness.make_run(spec["engine"], state, patterns, spec["iterations"])
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(run)
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    return {"wall_s": wall, "iterations": spec["iterations"],
            "by_tottime": _top(stats, "tottime", spec["top"]), "by_cumtime": _top(stats, "cumtime", spec["top"])}


def sample_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """A few iterations for ``py-spy record`` (benchmarks/sampling.py) on the default threads.

    The warm-up runs on one thread (PTYCLI_THREADS=1, read at every group), so it loads the
    cached kernels and plans without starting the part threads: every sample of those is
    then from the sampled iterations."""
    import os

    from ptycli import parallel

    case = cases.Case.from_json(spec["case"])
    state = cases.synthetic_state(case)
    patterns = cases.synthetic_patterns(state)
    own = os.environ.get("PTYCLI_THREADS")  # the user's choice, back for the sampled run
    os.environ["PTYCLI_THREADS"] = "1"
    try:
        harness.make_run(spec["engine"], state, patterns, 1)()
    finally:
        if own is None:
            del os.environ["PTYCLI_THREADS"]
        else:
            os.environ["PTYCLI_THREADS"] = own
    run = harness.make_run(spec["engine"], state, patterns, spec["iterations"])
    t0 = time.perf_counter()
    sampled_iterations(run)
    return {"wall_s": time.perf_counter() - t0, "iterations": spec["iterations"], "threads": parallel.host_threads()}


def sampled_iterations(run: Any) -> None:
    """The frame sampling.SAMPLED_FRAME names: samples of the main thread under it are kept."""
    run()


def _top(stats: Any, key: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for (path, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        rows.append({"function": f"{_short(path)}:{line}({func})", "calls": ncalls,
                     "tottime_s": tottime, "cumtime_s": cumtime})
    rows.sort(key=lambda r: -r[f"{key}_s"])
    return rows[:n]


def _short(path: str) -> str:
    for marker in ("/ptycli/", "/site-packages/", "/lib/python"):
        if marker in path:
            return path.split(marker, 1)[1] if marker != "/ptycli/" else "ptycli/" + path.split(marker, 1)[1]
    return path


# ----------------------------------------------------------------------------- time to quality
class QualityProbe:
    """Observer: after chosen iterations, write the state and score it with `compare`.

    Only the loop's own per-iteration times are summed, so scoring costs no engine time.
    """

    def __init__(self, state_ref: list, sim: Path, workdir: Path, checkpoints: set[int]):
        self.state_ref, self.sim, self.workdir, self.checkpoints = state_ref, sim, workdir, checkpoints
        self.elapsed_s, self.points = 0.0, []

    def on_iteration_end(self, stage: int, it: int, loss: float, time_s: float) -> None:
        self.elapsed_s += time_s
        if it + 1 in self.checkpoints:
            corr = score(self.state_ref[0], self.sim, self.workdir / f"it{it + 1}.zarr")
            self.points.append({"iteration": it + 1, "elapsed_s": self.elapsed_s, "loss": loss,
                                "correlation": corr})


def score(state: Any, sim: Path, path: Path) -> float:
    from ptycli.stages.compare import compare_stores
    from ptycli.store.io import StoreWriter
    from ptycli.store.state import write_state

    with StoreWriter(path, kind="state", stage="bench", overwrite=True) as writer:
        write_state(writer, state)
        writer.finalize()
    return float(compare_stores(path, sim)["correlation"])


def time_to_quality(spec: dict[str, Any]) -> dict[str, Any]:
    """Phase correlation with the truth against engine wall time on a `simulate` preset."""
    from ptycli.stages import init, simulate
    from ptycli.store.io import open_store
    from ptycli.store.state import load_state

    with tempfile.TemporaryDirectory(prefix="ptycli-bench-") as tmp:
        work = Path(tmp)
        sim = simulate.run(work / "sim.zarr", preset=spec["preset"], seed=0, **spec.get("overrides", {}))
        s0 = init.run(sim, work / "s0.zarr")
        raw = np.asarray(open_store(sim, "data")["patterns"][...], dtype=np.float32)
        patterns = np.fft.ifftshift(raw, axes=(-2, -1))
        state = load_state(open_store(s0, "state"))
        state.positions = np.asarray(state.positions, dtype=np.float64)
        state.positions_initial = state.positions.copy()
        probe = QualityProbe([state], sim, work, set(spec["checkpoints"]))
        probe.points.append({"iteration": 0, "elapsed_s": 0.0, "loss": None,
                             "correlation": score(state, sim, work / "it0.zarr")})
        harness.make_run(spec["engine"], state, patterns, max(spec["checkpoints"]), observers=[probe])()
        return {"preset": spec["preset"], "points": probe.points}


# ----------------------------------------------------------------------------- streaming
def prepare_stores(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the data and state stores of a streaming run (its own process: RSS stays apart)."""
    case = cases.Case.from_json(spec["case"])
    data, state = write_stores(case, Path(spec["dir"]), spec["step_a"])
    return {"data": str(data), "state": str(state)}


def streaming_rss(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of one `reconstruct` iteration (streamed or resident) on prepared stores."""
    from ptycli.recipe import Recipe
    from ptycli.stages import reconstruct

    rss_before = peak_rss_mib()
    rec = Recipe(recipe="ptycli/1", stage=[harness.stage_params(spec["engine"], spec["iterations"])])
    out = Path(spec["dir"]) / f"out-{int(spec['stream'])}.zarr"
    t0 = time.perf_counter()
    reconstruct.run(spec["data"], spec["state"], out, recipe=rec, device="cpu", stream=spec["stream"],
                    memory_budget_bytes=spec["budget_bytes"], handle_signals=False, overwrite=True)
    return {"stream": spec["stream"], "budget_bytes": spec["budget_bytes"], "peak_rss_mib": peak_rss_mib(),
            "rss_before_run_mib": rss_before, "wall_s": time.perf_counter() - t0}


def write_stores(case: cases.Case, tmp: Path, step_a: float) -> tuple[Path, Path]:
    """A data store of synthetic patterns (DC-centred, chunked) and a matching state store."""
    from ptycli.store.io import StoreWriter
    from ptycli.store.state import write_state

    state = cases.synthetic_state(case, step_a=step_a)
    far, j, m = cases.probe_far_field(state), case.n_positions, case.size
    with StoreWriter(tmp / "data.zarr", kind="data", stage="bench") as w:
        arr = w.array("patterns", shape=(j, m, m), dtype="float32", chunks=(256, m, m),
                      dims=("position", "ky", "kx"), units="counts")
        for a in range(0, j, 1024):
            block = cases.pattern_block(far, a, min(1024, j - a))
            arr[a:a + len(block)] = np.fft.fftshift(block, axes=(-2, -1))
        w.set_attrs(scan_shape=list(case.scan))
        data = w.finalize()
    with StoreWriter(tmp / "state.zarr", kind="state", stage="bench") as w:
        write_state(w, state)
        state_path = w.finalize()
    return data, state_path


KINDS = {"engine": measure_engine, "profile": profile_engine, "sample": sample_engine,
         "quality": time_to_quality,
         "prepare": prepare_stores, "stream": streaming_rss}


def main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        out = {"ok": True, **KINDS[spec["kind"]](spec)}
    except Exception as exc:  # noqa: BLE001  (reported as "failed" in the table, never fatal)
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
    out["peak_rss_mib"] = out.get("peak_rss_mib", peak_rss_mib())
    sys.stdout.write(json.dumps(out, default=_json) + "\n")
    return 0


def _json(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


if __name__ == "__main__":
    raise SystemExit(main())
