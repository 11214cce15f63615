"""The pure parts of benchmarks/corpus/refine.py (issue 22 item 5), on tiny made-up arrays:
no corpus, no ptycli run."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "corpus" / "refine.py"
_spec = importlib.util.spec_from_file_location("corpus_refine", _PATH)
refine = importlib.util.module_from_spec(_spec)
sys.modules["corpus_refine"] = refine  # dataclasses look their module up
_spec.loader.exec_module(refine)


def test_angle_error_wraps_by_the_term_symmetry():
    # C12 (m = 2): φ and φ + π are the same astigmatism
    assert refine.angle_error(math.radians(30) + math.pi, math.radians(30), 2) == pytest.approx(0, abs=1e-12)
    assert math.degrees(refine.angle_error(math.radians(85), math.radians(-85), 2)) == pytest.approx(-10)
    assert math.degrees(refine.angle_error(math.radians(40), math.radians(30), 3)) == pytest.approx(10)


def test_raster_is_row_major_yx():
    r = refine.raster_a((2, 3), 0.5)
    assert r.shape == (6, 2)
    np.testing.assert_allclose(r[1], [0.0, 0.5])
    np.testing.assert_allclose(r[3], [0.5, 0.0])


def test_perturbed_positions_and_shift_removed_rms():
    nominal = refine.raster_a((6, 6), 0.4)
    same = refine.perturbed_positions(nominal, 0.0, (0.0, 0.0), (1, 0, 0, 1), seed=0)
    np.testing.assert_allclose(same, nominal)
    # a pure shift is no error; a 2 % scale is
    assert refine.rms_shift_removed_a(nominal + [1.0, -2.0], nominal) == pytest.approx(0, abs=1e-12)
    scaled = refine.perturbed_positions(nominal, 0.0, (0.0, 0.0), (1.02, 0, 0, 1.02), seed=0)
    d = (nominal - nominal.mean(0)) * 0.02
    assert refine.rms_shift_removed_a(scaled, nominal) == pytest.approx(np.sqrt((d**2).sum(1).mean()))
    noisy = refine.perturbed_positions(nominal, 0.05, (0.0, 0.0), (1, 0, 0, 1), seed=3)
    assert 0.03 < refine.rms_shift_removed_a(noisy, nominal) < 0.1
    drift = refine.perturbed_positions(nominal, 0.0, (0.3, 0.0), (1, 0, 0, 1), seed=0)
    np.testing.assert_allclose(drift[-1] - nominal[-1], [0.3, 0.0])


def test_positions_verdict():
    assert refine.positions_verdict(0.2, 0.05) == {"never_worse": True, "recovered": True}
    assert refine.positions_verdict(0.2, 0.15) == {"never_worse": True, "recovered": False}
    assert refine.positions_verdict(0.0, 0.08) == {"never_worse": False, "recovered": None}


def test_aberration_rows_and_bar():
    truth = {"C10": -200.0, "C12": 40.0, "phi12": math.pi / 6, "C30": 2e5}
    start = {"C10": -150.0}
    found = {"C10": -198.0, "C12": 39.0, "phi12": math.pi / 6 + math.pi, "C30": 1.9e5}
    rows = refine.aberration_rows(found, start, truth)
    by = {r["term"]: r for r in rows}
    assert [r["term"] for r in rows] == ["C10", "C12", "phi12", "C30"]
    assert by["C10"]["error"] == pytest.approx(2.0) and by["C10"]["rel_error"] == pytest.approx(0.01)
    assert by["phi12"]["error"] == pytest.approx(0, abs=1e-9)   # 210° is 30° for a two-fold term
    assert by["C12"]["start"] == 0.0 and by["phi12"]["start"] is None
    assert refine.aberration_pass(rows) == {"C10": True, "C12": True, "C30": True}
    found["C10"] = -150.0
    assert refine.aberration_pass(refine.aberration_rows(found, start, truth))["C10"] is False


def test_global_tilt_and_thickness():
    tilts = np.array([[2.5, -2.0], [3.5, -1.0], [3.0, -3.0]])
    assert refine.global_tilt_mrad(tilts) == pytest.approx((3.0, -2.0))
    assert refine.global_tilt_mrad(None) == (0.0, 0.0)
    assert refine.tilt_pass((2.7, -2.5), (3.0, -2.0))
    assert not refine.tilt_pass((0.0, 0.0), (3.0, -2.0))
    assert refine.tilt_pass((9.0, -9.0), (10.0, -10.0))       # 10 % of |(10, -10)| = 1.41 mrad
    assert refine.thickness_error(np.full(10, 4.1), 3.905) == pytest.approx(4.1 / 3.905 - 1)


def test_markdown_table_and_report_of_made_up_records():
    table = refine.markdown_table(["a", "b"], [[1.23456, True], [None, (1.0, -2.0)]])
    assert table.splitlines()[2] == "| 1.23 | pass |"
    assert table.splitlines()[3] == "| — | (1, -2) |"
    case = refine.asdict(refine.CASES[0])
    rec = {"case": case, "commit": "abc1234", "wall_s": 10.0, "cpu_s": 18.0, "load_start": 1.0, "load_end": 2.0,
           "command": "ptycli reconstruct ...", "init": "init.zarr",
           "result": {"aberrations": refine.aberration_rows({"C10": -199.0}, {"C10": -150.0}, {"C10": -200.0}),
                      "aberration_pass": {"C10": True}, "positions": {}, "pearson": 0.9}}
    text = refine.report([rec, {"case": refine.asdict(refine.CASES[1]), "rc": 6, "command": "x"}])
    assert "| C10 | -200 | -150 | -199 | 1 | 0.5% | pass |" in text
    assert "A2: exit 6" in text


def test_affine_removed_rms_keeps_only_the_local_error():
    nominal = refine.raster_a((8, 8), 0.4)
    distorted = refine.perturbed_positions(nominal, 0.0, (0.0, 0.0), (1.03, 0.01, -0.02, 0.98), seed=0)
    assert refine.rms_affine_removed_a(distorted + [0.5, 0.2], nominal) == pytest.approx(0, abs=1e-12)
    noisy = refine.perturbed_positions(nominal, 0.05, (0.0, 0.0), (1.03, 0.01, -0.02, 0.98), seed=1)
    local = refine.rms_affine_removed_a(noisy, nominal)
    assert 0.04 < local < refine.rms_shift_removed_a(noisy, nominal)


def test_edge_phase_of_a_term():
    # defocus 200 Å at 80 kV, 25 mrad: χ = π/λ · C10 · α² ≈ 9.4 rad
    lam = 0.041757
    meta = {"semiangle_mrad": 25, "energy_kev": 80}
    assert refine.edge_phase_rad("C10", -200.0, meta) == pytest.approx(math.pi / lam * 200 * 0.025**2, rel=1e-4)
    assert refine.edge_phase_rad("C21", 16.0, meta) == pytest.approx(2 * math.pi / lam * 16 * 0.025**3 / 3, rel=1e-4)


def test_findings_are_kept_when_the_tables_are_rewritten(tmp_path):
    md = tmp_path / "R.md"
    assert refine.kept_findings(md).startswith(refine.FINDINGS)
    md.write_text("# tables\n\n| a |\n\n## Findings\n\nthe reading\n")
    assert refine.kept_findings(md) == "## Findings\n\nthe reading\n"
