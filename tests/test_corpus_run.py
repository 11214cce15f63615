"""benchmarks/corpus/run.py and benchmarks/peers/: which recipes run on which set, the
verdict of issue 22, the cache, the report, and the peers' input conventions (frames
oriented exactly as ptycli's preprocess, defocus sign, slices) without the peers installed."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


run = _load("corpus_run", ROOT / "benchmarks" / "corpus" / "run.py")
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
common = _load("common", ROOT / "benchmarks" / "peers" / "common.py")
run_phaser = _load("run_phaser", ROOT / "benchmarks" / "peers" / "run_phaser.py")
run_ptyrad = _load("run_ptyrad", ROOT / "benchmarks" / "peers" / "run_ptyrad.py")

META = {"name": "t", "energy_kev": 200, "semiangle_mrad": 20, "scan_shape": [4, 5], "scan_step_a": 0.4,
        "detector_shape": [6, 6], "dk_mrad": 1.1, "defocus_a": 80.0, "dose_e_per_a2": 1e5, "thickness_a": 39.0,
        "suggested_slices": 10, "suggested_slice_thickness_a": 3.9, "multislice": True,
        "ptycli_preprocess_args": ["--energy-kev", "200"], "ptycli_init_args": ["--slices", "10"]}


def test_recipes_follow_the_set() -> None:
    thin = dict(META, multislice=False)
    assert run.applicable_recipes(thin, {}) == ["single-slice", "auto"]
    assert run.applicable_recipes(META, {}) == ["multislice", "auto"]
    assert run.applicable_recipes(dict(thin, dose_e_per_a2=5e3), {}) == ["single-slice", "low-dose", "auto"]
    assert run.applicable_recipes(META, {"source_fwhm_a": 0.4}) == ["multislice", "mixed-state", "auto"]
    # the mixed-state recipe's init gets probe modes; the others keep the set's arguments
    assert run.init_args(META, "mixed-state")[-2:] == ["--probe-modes", "3"]
    assert run.init_args(META, "multislice") == ["--slices", "10"]
    assert run.recipe_stages("single-slice") and all(n > 0 for n in run.recipe_stages("single-slice"))
    assert run.recipe_stages("no-such-recipe") is None


def _row(code, pearson, wall, its=40, **kw):
    return dict(code=code, status="ok", pearson=pearson, wall_s=wall, cpu_s=wall, iterations=its, recipe="r", **kw)


def test_verdict_needs_quality_margin_and_a_third_of_the_best_peers_time() -> None:
    rows = [_row("ptycli", 0.95, 10), _row("phaser", 0.92, 40), _row("ptyrad", 0.80, 300)]
    run.verdicts(rows)
    assert rows[0]["best_peer"] == "phaser" and rows[0]["verdict"] == "met (CPU 0.25, wall 0.25)"
    assert rows[0]["wall_ratio"] == pytest.approx(0.25)

    rows = [_row("ptycli", 0.935, 10), _row("phaser", 0.92, 40)]     # +0.015 < 0.02
    run.verdicts(rows)
    assert rows[0]["verdict"] == "not met: correlation < phaser + 0.02 (CPU 0.25, wall 0.25)"

    rows = [_row("ptycli", 0.99, 20), _row("phaser", 0.92, 40)]      # 1/2 of the time > 1/3
    run.verdicts(rows)
    assert rows[0]["verdict"] == "not met: time > 1/3 (CPU 0.50, wall 0.50)"

    # the time bar is on CPU seconds: a wall clock inflated by others' load does not decide it
    rows = [dict(_row("ptycli", 0.99, 10), cpu_s=30), dict(_row("phaser", 0.92, 100), cpu_s=60)]
    run.verdicts(rows)
    assert rows[0]["wall_ratio"] == pytest.approx(0.1) and rows[0]["cpu_ratio"] == pytest.approx(0.5)
    assert rows[0]["verdict"] == "not met: time > 1/3 (CPU 0.50, wall 0.10: wall ≤ 1/3)"
    # ... nor the other way round; the verdict says where the wall ratio alone would differ
    rows = [dict(_row("ptycli", 0.99, 50), cpu_s=10), dict(_row("phaser", 0.92, 100), cpu_s=60)]
    run.verdicts(rows)
    assert rows[0]["verdict"] == "met (CPU 0.17, wall 0.50: wall > 1/3)"


def test_a_peer_stopped_early_is_not_the_yardstick() -> None:
    rows = [_row("ptycli", 0.9, 10), _row("ptyrad", 0.5, 300, its=3, stopped_by_time_budget=True),
            _row("phaser", 0.85, 60)]
    run.verdicts(rows)
    assert rows[0]["best_peer"] == "phaser"                 # not ptyrad (3 of 40 iterations)
    rows = [_row("ptycli", 0.9, 10), _row("ptyrad", 0.5, 300, its=3, stopped_by_time_budget=True)]
    run.verdicts(rows)
    assert rows[0]["verdict"] == "no peer ran 40 iterations (best: ptyrad 0.500 after 3)"
    rows.append(dict(code="phaser", status="diverged (ValueError: NaN or inf encountered, iteration 2)"))
    run.verdicts(rows)
    assert rows[0]["verdict"] == "no peer ran 40 iterations (best: ptyrad 0.500 after 3); phaser diverged"
    diverged = [dict(_row("ptycli", None, 5), status="diverged (exit 6)"), _row("phaser", 0.9, 60)]
    run.verdicts(diverged)
    assert diverged[0]["verdict"] == "—"


def test_report_lists_every_row_with_its_verdict(tmp_path) -> None:
    rows = [_row("ptycli", 0.95, 10, frc_halfbit_a=1.2, scale_a=1.1),
            dict(_row("phaser", 0.92, 40), engine="lsqml", convergence="3 → 1"),
            dict(code="ptyrad", status="failed (exit 1)", iterations_requested=40)]
    run.verdicts(rows)
    results = {"machine": {"cores": 2, "cpu": "x", "platform": "p", "python": "3", "git_commit": "abc",
                           "ptycli_sources": "d", "date_utc": "now"}, "threads": 2, "peer_max_wall_s": 300,
               "sets": [{"name": "t", "description": "d", "rows": rows}]}
    out = tmp_path / "R.md"
    run.write_report(results, out)
    text = out.read_text()
    assert "| ptycli | r | 40 | 0.950 | 1.10 | 1.20 | 10.0 | 10.0 | 0.25 | 0.25 | met (CPU 0.25, wall 0.25) |" in text
    assert ("| t | r | 0.950 | phaser | 40 | 0.920 | 40.0 | 40.0 | 0.25 | 0.25 | met (CPU 0.25, wall 0.25) |"
            in text)
    assert "ptycli's CPU seconds ≤ 1/3 of the peer's" in text       # the rule is in the header
    assert "failed (exit 1)" in text and "error 3 → 1" in text and "commit abc" in text


def test_timed_records_wall_cpu_and_the_load_over_the_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(run, "LOAD_SAMPLE_S", 0.2)
    loads = itertools.count(1.0, 2.0)                          # a load rising through the run
    monkeypatch.setattr(run.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    r = run.timed([sys.executable, "-c", "import time; time.sleep(0.5)"], dict(os.environ), tmp_path / "log", 30)
    assert r["rc"] == 0 and r["wall_s"] >= 0.5
    assert r["load_start"] == 1.0 and r["load_avg"] > r["load_start"]
    assert r["load_start"] < r["load_mean"] < r["load_avg"]
    r = run.timed([sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ), tmp_path / "log", 0.3)
    assert r["rc"] is None and r["wall_s"] < 5                 # killed at the timeout


def test_cache_key_changes_with_the_inputs(tmp_path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps(META))
    for f in ("data.npy", "truth.npz"):
        (tmp_path / f).write_bytes(b"x")
    k1 = run.key_of(set=run.set_digest(tmp_path), iterations=40)
    assert k1 == run.key_of(set=run.set_digest(tmp_path), iterations=40)
    assert k1 != run.key_of(set=run.set_digest(tmp_path), iterations=30)
    (tmp_path / "meta.json").write_text(json.dumps(dict(META, defocus_a=90.0)))
    assert k1 != run.key_of(set=run.set_digest(tmp_path), iterations=40)
    run.save(tmp_path / "r", {"key": k1, "pearson": 0.5})
    assert run.cached(tmp_path / "r", k1)["pearson"] == 0.5
    assert run.cached(tmp_path / "r", "other") is None


def test_missing_set_is_named(tmp_path) -> None:
    good = tmp_path / "a"
    good.mkdir()
    for f in ("data.npy", "meta.json", "truth.npz"):
        (good / f).write_bytes(b"")
    (tmp_path / "b.partial").mkdir()
    assert [p.name for p in run.list_sets(tmp_path, None)] == ["a"]
    with pytest.raises(SystemExit, match="set\\(s\\) zz not found complete"):
        run.list_sets(tmp_path, ["a", "zz"])


@pytest.mark.parametrize("m", [6, 7])
@pytest.mark.parametrize("flags", [["--flip-ky"], ["--flip-kx"], ["--transpose"], ["--flip-ky", "--transpose"]])
def test_peers_see_the_frames_ptycli_preprocess_makes(tmp_path, m, flags) -> None:
    from ptycli.stages.preprocess_ops import orient

    data = np.random.default_rng(1).random((2, 3, m, m)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    meta = dict(META, ptycli_preprocess_args=flags)
    got = common.load_patterns(tmp_path, meta)
    o = common.orientation(meta)
    want = orient(data.reshape(6, m, m), o["flip_ky"], o["flip_kx"], o["transpose"]).reshape(2, 3, m, m)
    np.testing.assert_array_equal(got, want)


def test_peer_inputs_map_ptycli_conventions(tmp_path) -> None:
    plan = run_phaser.build_plan(META, tmp_path / "p.npy", 40, 1, "x")
    assert plan["init"]["probe"]["defocus"] == -80.0            # phaser: + = overfocus
    assert plan["raw_data"]["diff_step"] == 1.1 and plan["raw_data"]["kv"] == 200
    assert plan["slices"] == {"n": 10, "slice_thickness": 3.9}
    assert plan["engines"][0]["solver"] == {"type": "lsqml"} and plan["engines"][0]["niter"] == 40
    assert "slices" not in run_phaser.build_plan(dict(META, multislice=False), tmp_path, 5, 1, "x")

    params = run_ptyrad.build_params(META, tmp_path / "p.npy", 40, 3, tmp_path)
    ip = params["init_params"]
    assert ip["probe_aberrations"] == {"C10": -80.0}               # PtyRAD: C10 = -Δf
    assert ip["meas_calibration"] == {"mode": "da", "value": 1.1}
    assert (ip["pos_N_scan_slow"], ip["pos_N_scan_fast"], ip["meas_reshape"]) == (4, 5, [20, 6, 6])
    assert (ip["obj_Nlayer"], ip["obj_slice_thickness"], ip["probe_pmode_max"]) == (10, 3.9, 3)
    assert params["recon_params"]["NITER"] == 40
    with pytest.raises(SystemExit, match="one step size"):
        run_ptyrad.build_params(dict(META, scan_step_a=[0.4, 0.5]), tmp_path, 1, 1, tmp_path)
    assert common.probe_modes(dict(META, ptycli_init_args=["--probe-modes", "4"])) == 4
    assert common.probe_modes(META) == 1



def test_peer_budgets_and_stopped_rows() -> None:
    assert run.parse_budgets("120") == {"phaser": 120.0, "ptyrad": 120.0}
    assert run.parse_budgets("phaser=300,ptyrad=0") == {"phaser": 300.0, "ptyrad": None}
    with pytest.raises(ValueError, match="unknown peer 'pypty'"):
        run.parse_budgets("pypty=3")
    row = dict(_row("ptyrad", 0.4, 150, its=5), stopped_by_time_budget=True, iterations_requested=40)
    line = run.row_md(row)
    assert "5/40 (stopped)" in line and "≈1200 s for 40 iterations" in line


def test_a_run_dir_is_claimed_by_one_live_process(tmp_path) -> None:
    import os
    import subprocess

    d = tmp_path / "set" / "phaser"
    assert run.busy(d) is None                               # ours now
    assert run.busy(d) is None                               # still ours
    run.save(d, {"key": "k"})                                # done: released
    assert not d.with_name("phaser.pid").exists()
    other = subprocess.Popen(["sleep", "30"])
    try:
        d.with_name("phaser.pid").write_text(str(other.pid))
        assert run.busy(d) == other.pid                     # a live process holds it
    finally:
        other.kill()
        other.wait()
    assert run.busy(d) is None                               # its process is gone: taken over
    assert d.with_name("phaser.pid").read_text() == str(os.getpid())


def test_reuse_takes_a_recorded_peer_run_of_the_same_set(tmp_path) -> None:
    from types import SimpleNamespace

    set_dir = tmp_path / "corpus" / "s"
    set_dir.mkdir(parents=True)
    (set_dir / "meta.json").write_text(json.dumps(META))
    for f in ("data.npy", "truth.npz"):
        (set_dir / f).write_bytes(b"x")
    args = SimpleNamespace(work=tmp_path / "w", threads=2, budgets={"phaser": 300.0, "ptyrad": 150.0}, force=None,
                           reuse=False, only="ptycli", timeout_s=10)
    rec = {"key": "from-another-budget", "code": "phaser", "status": "ok", "pearson": 0.9, "iterations_requested": 40,
           "set_digest": run.set_digest(set_dir)}
    run.save(args.work / "s" / "phaser", rec)
    assert run.run_peer("phaser", set_dir, META, 40, 1, args, {})["status"].startswith("not run")
    args.reuse = True
    assert run.run_peer("phaser", set_dir, META, 40, 1, args, {})["pearson"] == 0.9
    assert run.run_peer("phaser", set_dir, META, 30, 1, args, {})["status"].startswith("not run")  # other N
    (set_dir / "meta.json").write_text(json.dumps(dict(META, defocus_a=1.0)))                      # other set
    assert run.run_peer("phaser", set_dir, META, 40, 1, args, {})["status"].startswith("not run")
