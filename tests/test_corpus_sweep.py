"""benchmarks/corpus/sweep.py: the recipes it runs, their default iterations and caps, and how
a run's exit code and stderr become the divergence summary (with a stand-in ptycli)."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("corpus_sweep", ROOT / "benchmarks" / "corpus" / "sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

# a stand-in `ptycli`: preprocess/init make their output; reconstruct fails as $SWEEP_FAKE says
FAKE = """
import os, sys, json, pathlib
args = sys.argv[1:]
out = pathlib.Path(args[args.index("-o") + 1])
out.mkdir(parents=True, exist_ok=True)
if "reconstruct" in args:
    mode = os.environ["SWEEP_FAKE"]
    if "warn" in mode:
        print("x.py:1: RuntimeWarning: overflow encountered in square", file=sys.stderr)
        print("  y = x ** 2", file=sys.stderr)
    if "slow" in mode:
        import time
        time.sleep(30)
    if "nan" in mode:
        print("ptycli: error: stage 0 iteration 0: NaN/inf after 4 retries", file=sys.stderr)
        sys.exit(6)
    print(json.dumps({"final_loss": 1.5, "iterations": 3}))
"""


def _fake_set(tmp_path, monkeypatch) -> Path:
    """A one-set corpus and the stand-in ptycli in place of the real one."""
    set_dir = tmp_path / "corpus" / "s"
    set_dir.mkdir(parents=True)
    (set_dir / "data.npy").write_bytes(b"")
    (set_dir / "meta.json").write_text(json.dumps({"name": "s", "scan_shape": [2, 2], "detector_shape": [4, 4],
                                                   "ptycli_preprocess_args": [], "ptycli_init_args": []}))
    fake = tmp_path / "fake_ptycli.py"
    fake.write_text(FAKE)
    monkeypatch.setattr(sweep, "ptycli_cmd", lambda: [sys.executable, str(fake)])
    return set_dir


def test_every_shipped_recipe_and_auto_cheapest_first():
    names = sweep.shipped_recipes()
    assert set(names) == {p.stem for p in (ROOT / "recipes").glob("*.toml")} | {"auto"}
    assert names[:2] == ["quick", "epie"]
    assert sweep.default_iterations("epie") == 20 and sweep.default_iterations("auto") is None
    assert sweep.default_iterations("tilted-multislice") == 80  # both stages


def test_exit_6_and_runtime_warnings_are_counted(tmp_path, monkeypatch):
    set_dir = _fake_set(tmp_path, monkeypatch)
    prep = sweep.Prepared(set_dir, tmp_path / "work")
    stale = tmp_path / "work" / "s" / "recon-epie.zarr.partial"  # an interrupted sweep's checkpoint
    stale.mkdir(parents=True)
    runs = []
    for mode, recipe in (("nan+warn", "epie"), ("warn", "lsqml"), ("ok", "tilted-multislice")):
        monkeypatch.setenv("SWEEP_FAKE", mode)
        runs.append(sweep.run_one(prep, recipe, 30, 60.0, None))
    assert [r["exit"] for r in runs] == [6, 0, 0] and not stale.exists()
    assert [r["runtime_warning"] for r in runs] == [True, True, False]
    assert runs[0]["status"] == "exit 6" and "NaN" in runs[0]["stderr_tail"]
    assert [r["iterations"] for r in runs] == [20, 30, 30]  # capped only above the cap
    summary = sweep.write_results(runs, tmp_path / "R", "test")
    assert summary.startswith("3 runs, 1 divergences (exit 6), 2 with RuntimeWarnings")
    md = (tmp_path / "R.md").read_text()
    assert "| s | 6 @20 (W) | 0 @30 (W) |" in md and "| tilted-multislice | 80 | 30 |" in md
    # the lead gets the messages verbatim: the warning with its source line, the error with its iteration
    assert runs[0]["stderr_lines"] == ["x.py:1: RuntimeWarning: overflow encountered in square | y = x ** 2",
                                       "ptycli: error: stage 0 iteration 0: NaN/inf after 4 retries"]
    assert "  - `ptycli: error: stage 0 iteration 0: NaN/inf after 4 retries`" in md
    assert "NaN/inf" in (tmp_path / "work" / "s" / "recon-epie.zarr.stderr.txt").read_text()


def test_stop_ends_a_run_still_going(tmp_path, monkeypatch):
    set_dir = _fake_set(tmp_path, monkeypatch)
    monkeypatch.setenv("SWEEP_FAKE", "slow")
    prep = sweep.Prepared(set_dir, tmp_path / "work")
    r = sweep.run_one(prep, "epie", None, 60.0, None, stop=time.time() + 1.5)
    assert r["exit"] is None and r["status"] == "stopped (--stop)" and r["wall_s"] < 20
    sweep.write_results([r], tmp_path / "R", "test")
    assert "| s | stopped |" in (tmp_path / "R.md").read_text()
    assert sweep.hhmm_utc("00:00") <= time.time()


def test_merge_makes_one_table_of_a_sweep_split_in_parts(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    for name, scan in (("big", 8), ("small", 2)):
        (corpus / name).mkdir(parents=True)
        (corpus / name / "meta.json").write_text(json.dumps({"scan_shape": [scan, scan], "detector_shape": [4, 4]}))

    def part(name: str, runs: list[tuple[str, str, int]]) -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"note": f"note {name}", "runs": [
            {"set": s, "recipe": r, "exit": e, "iterations": 3, "wall_s": 12.5} for s, r, e in runs]}))
        return path

    a = part("a", [("big", "tilted-multislice", 6), ("small", "tilted-multislice", 0)])
    b = part("b", [("big", "single-slice", 0), ("big", "tilted-multislice", 0)])  # reruns big/tilted
    c = part("c", [("small", "tilted-multislice", None)])  # not finished: the earlier run stays
    assert sweep.main(["--merge", str(a), str(b), str(c), "--corpus", str(corpus), "--out", str(tmp_path / "R"),
                       "--note", "at abc123"]) == 0
    md = (tmp_path / "R.md").read_text()
    assert "3 runs, 0 divergences (exit 6)" in md and "3 sweeps merged; a: note a; b: note b; c: note c; at abc123" in md
    # cheapest set first, recipes in the sweep's order (single-slice before tilted-multislice)
    assert "| set | single-slice | tilted-multislice |" in md
    assert md.index("| small |  | 0 @3 |") < md.index("| big | 0 @3 | 0 @3 |")
    assert "| big | 12.5 | 12.5 |" in md  # the wall-time table


def test_backoffs_are_listed_with_their_reason(tmp_path):
    run = {"set": "s", "recipe": "lsqml", "exit": 0, "iterations": 30, "wall_s": 3.0,
           "backoff": [{"stage": 0, "iteration": 9, "scale": 0.5, "reason": "NaN/inf"}]}
    sweep.write_results([run], tmp_path / "R", "test")
    md = (tmp_path / "R.md").read_text()
    assert "| s | 0 @30 (b1) |" in md and "- s / lsqml: stage 0 iteration 9: NaN/inf (steps x 0.5)" in md
