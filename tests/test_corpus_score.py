"""benchmarks/corpus/score.py: the truth scores itself perfectly, the metrics follow scale,
shift, noise and orientation, and the CLI reads .npy phases and state stores."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCORE = ROOT / "benchmarks" / "corpus" / "score.py"
FIXTURE = ROOT / "tests" / "fixtures" / "abtem" / "mos2_thin.npz"
_spec = importlib.util.spec_from_file_location("corpus_score", SCORE)
score = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(score)


@pytest.fixture(scope="module")
def truth():
    meta, t = score.load_truth(FIXTURE)
    return meta, t["phase"].astype(np.float64), t["pixel_size_a"]


def test_truth_against_itself_is_perfect(truth) -> None:
    _, ph, px = truth
    m = score.score_phase(ph, px, ph, px, region=(slice(60, 130), slice(70, 140)), try_orientations=False)
    assert m["pearson"] > 0.99999 and abs(m["scale_a"] - 1) < 1e-4 and abs(m["offset_b"]) < 1e-4
    np.testing.assert_allclose(m["shift_a"], [60 * px, 70 * px], atol=0.01)


def test_scale_offset_and_subpixel_shift_are_recovered(truth) -> None:
    _, ph, px = truth
    # a "reconstruction": the truth moved by (0.37, -0.21) Å, coarsened to 0.3 Å, scaled, offset
    k = np.fft.fftfreq(ph.shape[0], px)
    moved = np.fft.ifft2(np.fft.fft2(ph) * np.exp(-2j * np.pi * (k[:, None] * 0.37 + k[None, :] * -0.21))).real
    rec = 0.5 * score.lowpass_resample(moved, px, 0.3) + 2.0
    region = (slice(25, 60), slice(25, 60))
    m = score.score_phase(rec, 0.3, ph, px, region=region, try_orientations=False)
    assert m["pearson"] > 0.995
    assert abs(m["scale_a"] - 2.0) < 0.05 and abs(m["offset_b"] + 4.0) < 0.2
    # the crystal repeats, so the registration is exact up to a lattice translation t: the
    # truth moved by t must equal itself (away from the cell's seam)
    t = np.array(m["shift_a"]) - [25 * 0.3 - 0.37, 25 * 0.3 + 0.21]
    back = np.fft.ifft2(np.fft.fft2(ph) * np.exp(-2j * np.pi * (k[:, None] * t[0] + k[None, :] * t[1]))).real
    inner = (slice(70, 180), slice(70, 180))
    assert np.corrcoef(back[inner].ravel(), ph[inner].ravel())[0, 1] > 0.99
    # noise lowers the correlation and coarsens the FRC resolution
    noisy = rec + np.random.default_rng(0).normal(0, 2 * rec[region].std(), rec.shape)
    n = score.score_phase(noisy, 0.3, ph, px, region=region, try_orientations=False)
    assert n["pearson"] < 0.6 and n["frc_halfbit_a"] > m["frc_halfbit_a"]


def test_a_transposed_reconstruction_is_named(truth) -> None:
    _, ph, px = truth
    rec = score.lowpass_resample(ph, px, 0.3)[20:60, 20:60].T
    m = score.score_phase(rec, 0.3, ph, px, region=(slice(None), slice(None)))
    assert m["pearson"] < 0.3 and m["best_orientation"] == "transpose"
    fixed = score.score_phase(rec, 0.3, ph, px, region=(slice(None), slice(None)), orientation="transpose")
    assert fixed["pearson"] > 0.99


def test_bad_input_is_one_line(truth) -> None:
    _, ph, px = truth
    with pytest.raises(score.ScoreError, match="NaN"):
        score.score_phase(np.full((40, 40), np.nan), 0.3, ph, px)
    with pytest.raises(score.ScoreError, match="pixel size"):
        score.score_phase(ph, -1.0, ph, px)


def _cli(capsys, *args):
    code = score.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_scores_npy_and_state_store(truth, tmp_path, capsys) -> None:
    meta, ph, px = truth
    rec = score.lowpass_resample(ph, px, 0.25)
    np.save(tmp_path / "phase.npy", rec)
    # as a script: a .npy without its pixel size is a one-line error, exit 4 (ptycli's INPUT)
    r = subprocess.run([sys.executable, str(SCORE), str(FIXTURE), str(tmp_path / "phase.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "--pixel-size-a" in r.stderr
    code, out, _ = _cli(capsys, FIXTURE, tmp_path / "phase.npy", "--pixel-size-a", 0.25, "--json")
    assert code == 0 and json.loads(out)["pearson"] > 0.99

    # a minimal state store: object (Q, S, H, W) split over two slices, positions in object px
    import zarr
    g = zarr.open_group(str(tmp_path / "state.zarr"), mode="w")
    obj = np.exp(1j * np.stack([0.4 * rec, 0.6 * rec]))[None].astype(np.complex64)
    g.create_array("object", data=obj)
    pos = np.stack(np.meshgrid(np.linspace(30, 70, 5), np.linspace(35, 75, 5), indexing="ij"), -1).reshape(-1, 2)
    g.create_array("positions", data=pos)
    g.attrs["state"] = {"dx_a": 0.25}
    code, out, err = _cli(capsys, FIXTURE, tmp_path / "state.zarr", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["pearson"] > 0.99 and abs(m["scale_a"] - 1) < 0.02 and m["region_px"] == [41, 41]
    code, _, err = _cli(capsys, FIXTURE, tmp_path / "nothing.zarr")
    assert code == 4 and "state store" in err and err.count("\n") == 1
