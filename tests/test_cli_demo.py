"""`ptycli demo`, the README's first command: the whole pipeline, each command printed."""

import json
import shutil
import subprocess
import sys



def _ptycli(*args):
    exe = shutil.which("ptycli")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "ptycli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_demo_runs_the_pipeline_and_reports_quality(tmp_path):
    out = tmp_path / "demo"
    r = _ptycli("demo", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["correlation_with_truth"] >= 0.95
    assert (out / "phase.png").stat().st_size > 1000 and (out / "phase.tif").exists()
    for stage in ("simulate", "preprocess", "init", "reconstruct", "export"):
        assert f"$ ptycli {stage} " in r.stderr, f"the demo did not print its {stage} command"
    assert "Traceback" not in r.stderr


def test_demo_never_overwrites_without_the_flag(tmp_path):
    out = tmp_path / "demo"
    assert _ptycli("demo", str(out)).returncode == 0
    again = _ptycli("demo", str(out))
    assert again.returncode == 5 and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert _ptycli("demo", str(out), "--overwrite").returncode == 0
