"""The benchmark harness (benchmarks/): engine discovery, iteration timing, fits, reports.

A stand-in engine registered only inside these tests checks the plumbing; the committed
benchmark results always come from ptycli's real engines.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import cases
import harness
import report
import run as suite
import sampling
import worker
import writeup

TINY = cases.Case("tiny", scan=(4, 4), size=16)


class CountingEngine:
    """Stand-in engine: counts groups and returns a fixed loss per position."""

    calls: ClassVar[list] = []

    def __init__(self, params, ctx, state):
        self.params = params
        self.ev = SimpleNamespace(n_evals=0.0)  # like L-BFGS: a running count of f+∇f evaluations

    def update(self, state, idx, data, it):
        CountingEngine.calls.append((it, len(idx), data.shape))
        self.ev.n_evals += 3 if it == 0 else 2  # the warm-up iteration's count must not leak in
        return 2.0 * len(idx)

    def state_dict(self):
        return {}

    def load_state_dict(self, _):
        return None


@pytest.fixture
def standin(monkeypatch):
    from ptycli.engines import registry
    from ptycli.recipe import LsqmlStage

    spec = registry.EngineSpec("standin", LsqmlStage, CountingEngine, "test stand-in")
    monkeypatch.setitem(registry.ENGINES, "standin", spec)
    CountingEngine.calls = []
    monkeypatch.setattr(harness, "stage_params",
                        lambda engine, iterations, **kw: LsqmlStage(type="lsqml", iterations=iterations, **kw))
    return "standin"


def test_case_b_fft_count_is_the_physics_md_check():
    from ptycli.stages import bench

    b = cases.STANDARD["B"]
    assert b.n_positions == 4096
    assert bench.n_ffts_per_iteration(b.n_positions, "lsqml", b.slices, b.probe_modes) == 655_360


def test_synthetic_inputs_have_the_case_shapes_and_dtypes():
    state = cases.synthetic_state(cases.Case("t", scan=(3, 5), size=16, slices=2, probe_modes=2))
    pats = cases.synthetic_patterns(state)
    assert state.probe.shape == (2, 16, 16) and state.probe.dtype == np.complex64
    assert state.object.shape[:2] == (1, 2) and state.object.dtype == np.complex64
    assert pats.shape == (15, 16, 16) and pats.dtype == np.float32
    from ptycli.physics import scan

    assert scan.windows_fit(state.positions, (16, 16), state.object.shape[-2:])
    # the 3.33 px step makes sub-pixel offsets non-zero, so the shift FFTs are exercised
    assert np.any(state.positions % 1 > 0)
    # the pattern mean equals the probe's total counts (Parseval) within the ±20 % noise band
    assert np.mean(pats.sum(axis=(1, 2))) == pytest.approx(1e4, rel=0.02)


def test_missing_engine_is_reported_not_fatal(monkeypatch):
    from ptycli.engines import registry

    status = harness.engine_status()
    assert all(s == "available" for n, s in status.items() if n in registry.ENGINES)
    monkeypatch.delitem(registry.ENGINES, "epie")
    status = harness.engine_status()
    assert status["epie"].startswith("not available")
    assert "epie" not in harness.available_engines()


def test_time_iterations_drops_warmup_and_runs_every_group(standin):
    state = cases.synthetic_state(TINY)
    pats = cases.synthetic_patterns(state)
    out = harness.time_iterations(standin, state, pats, n_timed=3, n_warmup=1,
                                  overrides={"grouping": {"kind": "compact", "size": 5}})
    assert len(out["times_s"]) == 3 and len(out["warmup_s"]) == 1
    assert out["median_s"] == float(np.median(out["times_s"]))
    assert out["group_size"] == 5
    # 16 positions in groups of <= 5 -> 4 groups per iteration, 4 iterations, every position once each
    assert len(CountingEngine.calls) == 4 * 4
    assert sum(n for _, n, _ in CountingEngine.calls) == 16 * 4
    assert out["loss_first"] == pytest.approx(2.0)  # loss per position as the loop reports it
    assert out["evaluations_per_iteration"] == 4 * 2  # 4 groups x 2 evaluations, warm-up excluded
    assert out["fft_group"] == 5


def test_fft_bound_of_a_case_uses_the_cost_model():
    res = worker.fft_bound("lsqml", TINY, group_size=4, min_time_s=0.005)
    assert res["n_ffts"] == 16 * 4  # J * (2K(2S-1) + 2Np) = 16 * 4
    assert res["fft_batch"] == 4
    assert res["fft_library"] in ("numpy", "scipy", "pyfftw", "pyfftw-planes")
    assert 0 < res["fft_bound_s"] <= res["fft_work_s"]
    assert res["fft_bound_s"] <= res["fft_bound_model_s"]


def test_fft_counter_counts_the_engines_own_transforms():
    """The bound's N_FFT is what the engine ran: counted at backend._fft_call, only M x M."""
    import numpy as np

    from ptycli import backend, host_fft

    with worker.FFTCounter(8) as counter:
        backend.fft2(np.zeros((3, 2, 8, 8), np.complex64))  # 6 transforms
        backend.ifft2(np.zeros((8, 8), np.complex64))  # 1
        backend.fft2(np.zeros((4, 16, 16), np.complex64))  # other size: not counted
        host_fft.kernel_ffts((8, 8), 5)  # run inside a compiled kernel
        host_fft.kernel_ffts((16, 16), 3)  # other size
    assert counter.transforms == 12
    assert backend._fft_call is counter._orig and host_fft.kernel_ffts is counter._orig_kernel  # restored
    res = worker.fft_bound("lsqml", TINY, group_size=4, min_time_s=0.005, counted=80.0)
    assert res["n_ffts"] == 80.0 and res["n_ffts_model"] == 16 * 4


def test_each_iteration_is_paired_with_its_own_fft_work(monkeypatch):
    """The ratio is the median of iteration / the FFT work timed right after it, that work
    being exactly the transforms the engine ran in that iteration."""
    res = worker.measure_engine({"engine": "lsqml", "case": TINY.to_json(), "warmup": 1, "timed": 3})
    bounds = res["fft_bound_paired_s"]
    assert len(bounds) == len(res["times_s"]) == 3 and all(b > 0 for b in bounds)
    assert res["ratio"] == pytest.approx(float(np.median([t / b for t, b in zip(res["times_s"], bounds)])))
    assert res["fft_bound_s"] == pytest.approx(float(np.median(bounds)))
    assert res["ratio_separate"] > 0

    from ptycli.stages import bench

    counter = SimpleNamespace(transforms=0)
    asked = []
    monkeypatch.setattr(bench, "time_fft_work", lambda n, *a, **k: asked.append(n) or 1.0)
    paired = worker.PairedBound(counter, 16, 4, "numpy", 1, np)
    for total in (12, 12, 30):
        counter.transforms = total
        paired.on_iteration_end(0, 0, 0.0, 0.1)
    assert asked == [12, 18]  # each iteration's new transforms; none: nothing timed
    assert paired.seconds == [1.0, 0.0, 1.0]


def test_worker_reports_failure_as_json():
    res = suite.run_worker({"kind": "engine", "engine": "nosuch", "case": TINY.to_json(), "warmup": 1, "timed": 1})
    assert res["ok"] is False and "nosuch" in res["error"]
    assert res["peak_rss_mib"] > 0


def test_loglog_exponent_recovers_a_power_law():
    x = [256, 1024, 4096, 16384]
    assert report.loglog_exponent(x, [3e-4 * v**1.5 for v in x]) == pytest.approx(1.5, abs=1e-12)
    assert report.loglog_exponent(x, [None, 1.0, None, None]) is None


def test_render_writes_every_section():
    ok = {"ok": True, "group_size": 8, "median_s": 0.5, "fft_bound_s": 0.25, "ratio": 2.0, "peak_rss_mib": 100.0,
          "positions_per_s": 2048.0, "fft_library": "pyfftw", "warmup_s": [0.6], "times_s": [0.5] * 5,
          "n_ffts": 4096.0, "fft_batch": 8, "fft_rates_per_s": {"pyfftw": 1e5, "backend": 5e4}, "fft_work_s": 0.3}
    doc = {
        "quick": True, "elapsed_s": 1.0, "engines": ["lsqml"],
        "machine": {"date": "d", "git_commit": "abc", "cpu": "cpu", "cores": 2, "memory_gib": 1, "platform": "p",
                    "versions": {"numpy": "2"}, "load_average_start": [1, 1, 1], "load_average_end": [1, 1, 1]},
        "engine_status": {"lsqml": "available", "lbfgs": "not available (not in the registry)"},
        "fft": {"64": {"batch": 64, "rates_per_s": {"numpy": 1.0, "pyfftw": 2.0}, "fastest": "pyfftw"}},
        "standard": [{"case": cases.STANDARD["C"].to_json(), "engine": "lsqml", "result": ok},
                     {"case": cases.STANDARD["A"].to_json(), "engine": "lsqml", "result": {**ok, "ratio": 3.0}},
                     {"case": cases.STANDARD["C"].to_json(), "engine": "lbfgs",
                      "result": {"ok": False, "status": "not available (not in the registry)"}}],
        "scaling": {"positions": {"lsqml": [(256.0, 1.0, 0.5), (1024.0, 4.0, 1.0)]}},
        "quality": {"lsqml": {"ok": True, "preset": "demo",
                              "points": [{"iteration": 1, "elapsed_s": 0.1, "loss": 3.0, "correlation": 0.5}]}},
        "streaming": [{"n_positions": 4096, "stream": True, "result": {"ok": True, "peak_rss_mib": 100.0,
                                                                         "rss_before_run_mib": 90.0, "wall_s": 1.0}},
                      {"n_positions": 16384, "stream": True, "result": {"ok": True, "peak_rss_mib": 105.0,
                                                                          "rss_before_run_mib": 90.0, "wall_s": 1.0}}],
        "profile": {"_case": TINY.to_json(), "lsqml": {"ok": True, "iterations": 2, "wall_s": 1.0, "by_tottime": [
            {"function": "f", "calls": 1, "tottime_s": 0.5, "cumtime_s": 0.9}], "py_spy": {
                "ok": True, "threads": 2, "iterations": 8, "wall_s": 1.0, "samples": 400, "rate_hz": 250,
                "busy_threads": 1.6, "by_own": [{"function": "part (ptycli/x.py:1)", "own": 0.75, "total": 0.8}]}}},
    }
    text, md = writeup.render(json.loads(json.dumps(doc)))
    for title in ("## FFT throughput", "## Standard cases", "## Scaling", "## Time to quality",
                  "## Streaming peak RSS", "## Profile", "How it is measured"):
        assert title in md
    assert "| C | lsqml | 1024 | 64 | 1 | 1 | 8 | 0.5 | 0.25 | 2 |" in md
    assert "not available (not in the registry)" in md
    assert "+5.0 %" in md  # streaming growth 100 -> 105 MiB
    assert "| positions | lsqml | 256, 1024 | 1, 4 | 1 | 0.5, 1 | 0.5 |" in md  # t ∝ J^1, bound ∝ J^0.5
    assert "Standard cases" in text
    assert "Time to correlation >= 0.99: lsqml not reached" in md
    assert "| case A lsqml: s/iter / FFT bound <= 2.0 | 3 | NOT met |" in md
    assert "| scaling exponent in positions (lsqml) within 0.9-1.1 | 1 | met |" in md
    assert "| streaming peak RSS growth 4096 -> 16384 positions < 10 % | 5 | met |" in md
    assert "several runs" not in md  # one run made every section
    assert "| part (ptycli/x.py:1) | 75.0 % | 80.0 % |" in md and "1.60 threads busy" in md
    doc["section_runs"] = {"fft": {"date": "d1", "git": "a1"}, "scaling": {"date": "d2", "git": "b2"}}
    _, md = writeup.render(json.loads(json.dumps(doc)))
    assert "sections from several runs: fft d1, git a1; scaling d2, git b2" in md


def test_standard_section_lists_missing_engines_without_running_them(monkeypatch):
    from ptycli.engines import registry

    monkeypatch.delitem(registry.ENGINES, "gradient")
    specs = []
    monkeypatch.setattr(suite, "run_worker", lambda spec: specs.append(spec) or {"ok": False, "error": "x"})
    out = suite.standard_section(["lsqml"], quick=True, only=["C"], rounds=1)
    by_engine = {r["engine"]: r["result"] for r in out}
    assert by_engine["gradient"]["status"].startswith("not available")
    if "lbfgs" not in registry.ENGINES:
        assert by_engine["lbfgs"]["status"].startswith("not available")
    assert [s["engine"] for s in specs] == ["lsqml"]  # only the requested, available engine ran
    assert tuple(specs[0]["case"]["scan"]) == (32, 32)
    assert (specs[0]["warmup"], specs[0]["timed"]) == (1, 5)  # median of >= 5 after a warm-up


def test_standard_entries_are_the_fastest_of_interleaved_rounds(monkeypatch):
    """With --quick each (case, engine) runs once per round, every pair before any runs again;
    the entry is the round with the fastest s/iter (its own ratio with it), every round kept."""
    calls = []

    def fake(spec):
        calls.append(spec["engine"])
        # lsqml's first round hit a slow spell; epie's second round failed
        slow = calls == ["epie", "lsqml"]
        if spec["engine"] == "epie" and len(calls) == 3:
            return {"ok": False, "error": "killed"}
        t = 3.0 if slow else 1.0 + 0.1 * len(calls)
        return {"ok": True, "median_s": t, "ratio": t / 0.5, "fft_bound_s": 0.5, "peak_rss_mib": 100.0}

    monkeypatch.setattr(suite, "run_worker", fake)
    out = suite.standard_section(["epie", "lsqml"], quick=True, only=["C"])
    assert calls == ["epie", "lsqml"] * suite.STANDARD_ROUNDS_QUICK
    by_engine = {r["engine"]: r["result"] for r in out}
    assert [r["engine"] for r in out][:2] == ["epie", "lsqml"]  # the engines' order, whatever ran first
    assert by_engine["lsqml"]["median_s"] == by_engine["lsqml"]["ratio"] * 0.5 == 1.4  # round 2 (call 4)
    assert [r["ok"] for r in by_engine["epie"]["rounds"]] == [True, False, True]
    assert by_engine["epie"]["median_s"] == 1.1
    assert [r["median_s"] for r in by_engine["lsqml"]["rounds"]] == [3.0, 1.4, 1.6]
    assert suite.standard_section(["epie"], quick=False, only=["C"])[0]["result"].get("rounds") is None


def test_scaling_points_are_the_fastest_of_interleaved_rounds(monkeypatch):
    """Every point of the series runs once per round, all points before any runs again (in
    each round's own order), and reports the fastest of its rounds: a slow spell of the
    machine over one round's point does not move it, and a fast round is the point's figure."""
    from dataclasses import replace

    points = [("slices", float(s), replace(TINY, slices=s)) for s in (1, 2, 3)]
    monkeypatch.setattr(cases, "scaling_cases", lambda quick: points)
    calls = []
    n = len(points)

    def fake(spec):
        calls.append(spec["case"]["slices"])
        # the second call hit a slow spell; the first call of the last round ran fastest
        speed = 10.0 if len(calls) == 2 else 0.8 if len(calls) == 2 * n + 1 else 1.0
        t = speed * spec["case"]["slices"]
        return {"ok": True, "median_s": t, "fft_bound_s": t / 2}

    monkeypatch.setattr(suite, "run_worker", fake)
    out = suite.scaling_section(["lsqml"], quick=True)
    assert len(calls) == n * suite.SCALING_ROUNDS
    assert all(sorted(calls[r * n:(r + 1) * n]) == [1, 2, 3] for r in range(suite.SCALING_ROUNDS))
    assert len({tuple(calls[r * n:(r + 1) * n]) for r in range(suite.SCALING_ROUNDS)}) > 1  # orders differ
    fast = calls[2 * n]
    assert out["slices"]["lsqml"] == [(float(s), (0.8 if s == fast else 1.0) * s, (0.4 if s == fast else 0.5) * s)
                                      for s in (1, 2, 3)]


def test_update_of_some_standard_entries_keeps_the_others():
    entry = lambda case, engine, t: {"case": {"name": case}, "engine": engine, "result": {"median_s": t}}  # noqa: E731
    old = [entry("A", "epie", 1.0), entry("A", "lsqml", 2.0), entry("B", "lsqml", 3.0), entry("B", "lbfgs", 4.0)]
    merged, kept = suite.merge_standard(old, [entry("B", "lbfgs", 5.0), entry("A", "lbfgs", 6.0)])
    assert kept
    assert [(e["case"]["name"], e["engine"], e["result"]["median_s"]) for e in merged] == [
        ("A", "epie", 1.0), ("A", "lsqml", 2.0), ("A", "lbfgs", 6.0), ("B", "lsqml", 3.0), ("B", "lbfgs", 5.0)]
    assert suite.merge_standard(old[:1], [entry("A", "epie", 7.0)]) == ([entry("A", "epie", 7.0)], False)
    # the report's header names every run the entries come from, nested (older files) or listed
    nested = {"date": "d3", "git": "g3", "merged_with": {"date": "d2", "git": "g2", "merged_with": {"date": "d1"}}}
    listed = {"date": "d3", "git": "g3", "merged_with": [{"date": "d2", "git": "g2"}, {"date": "d1"}]}
    assert writeup._run(nested) == writeup._run(listed) == "d3, git g3 and entries from d2, git g2, d1, git ?"
    assert writeup.flat_runs(nested) == writeup.flat_runs(listed) == [{"date": "d3", "git": "g3"}, *listed["merged_with"]]


def test_time_to_quality_scores_against_the_truth():
    spec = {"kind": "quality", "engine": "lsqml", "preset": "demo", "checkpoints": [1, 2],
            "overrides": {"scan_shape": (6, 6)}}
    res = worker.time_to_quality(spec)
    points = res["points"]
    assert [p["iteration"] for p in points] == [0, 1, 2]
    assert points[0]["elapsed_s"] == 0.0 and points[0]["loss"] is None
    assert 0 < points[1]["elapsed_s"] < points[2]["elapsed_s"]  # cumulative engine time
    assert all(-1.0 <= p["correlation"] <= 1.0 for p in points)
    assert points[2]["loss"] < points[1]["loss"]  # LSQ-ML lowers the loss on noiseless data


def test_worker_peak_rss_is_its_own_not_the_parents():
    # Linux carries ru_maxrss across fork + exec; the worker must not report the driver's peak.
    ballast = np.ones(40 * 2**20 // 8 * 8)  # 320 MiB touched in this (parent) process
    assert worker.peak_rss_mib() > 300
    res = suite.run_worker({"kind": "engine", "engine": "nosuch", "case": TINY.to_json(), "warmup": 1, "timed": 1})
    assert 0 < res["peak_rss_mib"] < 250, res["peak_rss_mib"]
    del ballast


PY_SPY_RAW = """\
<module> (/x/benchmarks/worker.py:1);main (/x/benchmarks/worker.py:9);sample_engine (/x/benchmarks/worker.py:20);\
make_run (/x/benchmarks/harness.py:5) 30
<module> (/x/benchmarks/worker.py:1);main (/x/benchmarks/worker.py:9);sample_engine (/x/benchmarks/worker.py:20);\
sampled_iterations (/x/benchmarks/worker.py:40);update (/x/ptycli/engines/lsqml.py:29) 10
<module> (/x/benchmarks/worker.py:1);main (/x/benchmarks/worker.py:9);sample_engine (/x/benchmarks/worker.py:20);\
sampled_iterations (/x/benchmarks/worker.py:40);update (/x/ptycli/engines/lsqml.py:29);\
run_kernels (/usr/lib/python3.11/site-packages/ptycli/_pool.py:104) 50
_bootstrap (/usr/lib/python3.11/threading.py:1002);_serve (/x/ptycli/_pool.py:69) 40
"""


def test_py_spy_stacks_keep_the_sampled_iterations_and_every_part_thread():
    """The main thread's setup and warm-up (stacks without the sampled frame) are left out;
    part threads' stacks are kept whole; own = innermost frame, total = anywhere."""
    stacks = sampling.kept_stacks(PY_SPY_RAW)
    assert sum(n for _, n in stacks) == 100  # 10 + 50 + 40; the 30 setup samples dropped
    assert stacks[-1][0] == ["_bootstrap (threading.py:1002)", "_serve (ptycli/_pool.py:69)"]
    out = sampling.summary(stacks, wall_s=0.25, rate_hz=400, top=3)
    assert out["samples"] == 100 and out["busy_threads"] == 1.0
    own = {r["function"]: (r["own"], r["total"]) for r in out["by_own"]}
    assert own == {"run_kernels (ptycli/_pool.py:104)": (0.5, 0.5), "_serve (ptycli/_pool.py:69)": (0.4, 0.4),
                   "update (ptycli/engines/lsqml.py:29)": (0.1, 0.6)}
    assert out["by_total"][0]["total"] == 0.6  # the main thread's frames (the iterations' 60 of 100)
    assert sampling.parse("garbage line\n") == []


def test_py_spy_missing_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(sampling, "executable", lambda: None)
    res = sampling.record({"kind": "sample"})
    assert res["ok"] is False and "py-spy not installed" in res["error"]


def test_sample_worker_warms_up_on_one_thread_then_runs_on_the_default(monkeypatch):
    import os

    seen = []
    runs = iter([lambda: seen.append(("warm-up", os.environ.get("PTYCLI_THREADS"))),
                 lambda: seen.append(("sampled", os.environ.get("PTYCLI_THREADS")))])
    monkeypatch.delenv("PTYCLI_THREADS", raising=False)
    monkeypatch.setattr(harness, "make_run", lambda engine, state, patterns, iterations: next(runs))
    out = worker.sample_engine({"engine": "lsqml", "case": TINY.to_json(), "iterations": 3})
    assert seen == [("warm-up", "1"), ("sampled", None)]
    assert out["iterations"] == 3 and out["threads"] >= 1


def test_large_gpu_case_runs_only_when_named():
    """Issue 25's case L (6400 positions, 20 slices, 128²) is in the suite only when named:
    the default CPU run would spend minutes per iteration on it."""
    assert "L" not in cases.standard_cases(quick=True) and "L" not in cases.standard_cases(quick=False)
    large = cases.standard_cases(quick=True, only=["L"])["L"]
    assert (large.n_positions, large.slices, large.size) == (6400, 20, 128)
    assert suite.iteration_plan("L", quick=True) == (1, 3)
    assert suite.parse_args(["--cases", "L", "--device", "cuda"]).cases == ["L"]


def test_gpu_script_times_every_case_and_the_large_one():
    """benchmarks/gpu.sh runs the CuPy-marked tests and writes RESULTS_gpu.md with A, B, C and L."""
    text = (BENCH / "gpu.sh").read_text()
    assert "-m cupy" in text and "RESULTS_gpu.md" in text
    assert "--cases A B C" in text and "--cases L --engines lsqml gradient" in text
    assert ".[test,fast,gpu]" in text
