"""FFT cost model (physics.md §9) and the FFT-throughput measurement behind `ptycli bench fft`."""

import json

import numpy as np
import pytest

from ptycli import host_fft
from ptycli.errors import RecipeError, UsageError
from ptycli.stages import bench


def test_fft_count_matches_physics_md_check():
    # physics.md §9 check: J = 4096, S = 10, Np = 4, Nq = 1 -> 2*4*19 + 8 = 160 per position.
    per_pos = bench.n_ffts_per_position("lsqml", n_slices=10, n_probe_modes=4, shifts=True)
    assert per_pos == 160
    assert bench.n_ffts_per_iteration(4096, "lsqml", 10, 4, shifts=True) == 655_360
    assert bench.n_ffts_per_iteration(4096, "lsqml", 10, 4, shifts=False) == 622_592


@pytest.mark.parametrize(
    "engine, s, p, q, kw, expected",
    [
        ("epie", 1, 1, 1, {"shifts": False}, 2),  # ePIE: 2K
        ("epie", 1, 3, 2, {"shifts": False}, 12),  # K = Np*Nq = 6
        ("epie", 4, 1, 1, {"shifts": False}, 14),  # 3PIE: 2K(2S-1)
        ("gradient", 2, 2, 1, {"shifts": True}, 2 * 2 * 3 + 4),  # + Np fwd + Np adjoint
        ("gradient", 1, 2, 1, {"shifts": False, "position_gradient": True}, 4 + 2),  # + K
        ("lbfgs", 3, 1, 1, {"shifts": False, "n_eval": 2.5}, 2 * 5 * 2.5),
        ("loss", 3, 2, 1, {"shifts": False}, 2 * 5),  # forward only: K(2S-1)
    ],
)
def test_fft_count_per_engine(engine, s, p, q, kw, expected):
    assert bench.n_ffts_per_position(engine, s, p, q, **kw) == expected


def test_fft_count_rejects_unknown_engine_and_bad_counts():
    with pytest.raises(RecipeError, match="nosuch"):
        bench.n_ffts_per_position("nosuch")
    with pytest.raises(RecipeError, match="n_slices"):
        bench.n_ffts_per_position("lsqml", n_slices=0)


def test_fft_bound_is_positions_times_count_over_rate():
    # T >= J * N / R: 4096 * 160 / 2e6 = 0.32768 s (physics.md §9: "T_iter >= 0.33 s").
    t = bench.fft_bound_seconds(4096, 160, 128, rate_per_s=2e6)
    assert t == pytest.approx(0.32768, rel=1e-12)
    with pytest.raises(UsageError):
        bench.fft_bound_seconds(1, 1, 8, rate_per_s=0.0)


@pytest.mark.parametrize("library", bench.available_libraries())
def test_fft_rate_is_positive_for_every_library(library):
    rate = bench.fft_rate(16, 4, library, "single", np, min_time_s=0.005, repeats=2)
    assert np.isfinite(rate) and rate > 0


def test_measured_bound_uses_a_measured_rate():
    t = bench.fft_bound_seconds(10, 4, 16, batch=4, min_time_s=0.005)
    assert 0 < t < 1.0  # 40 FFTs of 16x16 take microseconds on any machine


def test_fft_rate_rejects_unknown_library():
    with pytest.raises(UsageError, match="nosuch"):
        bench.fft_rate(16, 2, "nosuch")


def test_pyfftw_transform_is_the_forward_fft():
    # The timed pyFFTW call must compute the same (unnormalised) forward FFT as numpy.
    pytest.importorskip("pyfftw")
    x = bench._batch_array(16, 3, "double", np, aligned=True)
    run = bench._transform("pyfftw", x, np)
    np.testing.assert_allclose(run(), np.fft.fft2(x), rtol=1e-10, atol=1e-10)


def test_time_fft_work_runs_the_requested_count(monkeypatch):
    calls = []
    real = bench._transform

    def counting(*a, **kw):
        run = real(*a, **kw)
        return lambda: (calls.append(1), run())[1]

    monkeypatch.setattr(bench, "_transform", counting)
    bench.time_fft_work(9, 8, 2, "numpy")
    assert len(calls) == 1 + 5  # one warm-up + ceil(9 / 2) batched calls


def test_fft_rate_detail_reports_the_thread_count_used():
    rate, workers = bench.fft_rate_detail(16, 4, "scipy", min_time_s=0.005, repeats=2)
    assert rate > 0 and workers in {1, bench._WORKERS}
    assert bench.fft_rate_detail(16, 4, "scipy", workers=1, min_time_s=0.005, repeats=1)[1] == 1


def test_cli_bench_fft_json(cli):
    r = cli("bench", "fft", "--size", "16", "--batch", "2", "--library", "numpy",
            "--library", "scipy", "--min-time-s", "0.01", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["rates_per_s"]) == {"numpy", "scipy"}
    assert doc["fastest"] in doc["rates_per_s"]
    assert doc["rate_per_s"] == max(doc["rates_per_s"].values())
    assert (doc["size"], doc["batch"], doc["precision"]) == (16, 2, "single")


def test_cli_bench_fft_plain_prints_only_the_rate_on_stdout(cli):
    r = cli("bench", "fft", "--size", "8", "--batch", "1", "--library", "numpy", "--min-time-s", "0.01")
    assert r.exit_code == 0, r.stderr
    assert float(r.stdout.strip()) > 0
    assert "fastest: numpy" in r.stderr


def test_cli_bench_fft_unknown_library_is_usage_error(cli):
    r = cli("bench", "fft", "--size", "8", "--library", "nosuch")
    assert r.exit_code == 2
    assert "nosuch" in r.stderr and r.stdout == ""


def _planes_or_skip():
    if bench.PLANES not in bench.available_libraries():
        pytest.skip("no FFTW plans for compiled kernels here")


def test_plane_work_kernel_runs_forward_and_inverse_transforms_in_place():
    """The bound's pyfftw-planes work is real transforms: forward, then inverse, by turns, and
    the plane starts from its source again every 8 (values stay finite)."""
    _planes_or_skip()
    from ptycli import _kernels

    plans = host_fft.fftw_plane_plans(16, 16, np.complex64)
    src = _kernels.empty((16, 16), np.complex64, aligned=True)
    src[...] = np.random.default_rng(0).standard_normal((16, 16)) + 1j
    work = _kernels.empty((16, 16), np.complex64, aligned=True)
    for count, expected in ((1, np.fft.fft2(src)), (2, 256 * src), (9, np.fft.fft2(src))):
        _kernels.fft_plane_work(*plans, src, work, count)
        np.testing.assert_allclose(work, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    _kernels.fft_plane_work(*plans, src, work, 1000)
    assert np.isfinite(work).all()


def test_planes_use_no_more_threads_than_planes_available_at_once(monkeypatch):
    """A batch of 1 (sequential ePIE's positions depend on each other) gets one core."""
    _planes_or_skip()
    assert bench.fft_rate_detail(16, 1, bench.PLANES, min_time_s=0.005, repeats=1)[1] == 1
    seen = []
    real = bench._plane_runner
    monkeypatch.setattr(bench, "_plane_runner", lambda size, precision, w: seen.append(w) or real(size, precision, w))
    assert bench.time_fft_work(10, 16, 1, bench.PLANES, workers=2) > 0
    assert bench.time_fft_work(10, 16, 8, bench.PLANES, workers=2) > 0
    assert seen == [1, min(2, 8)]


def test_planes_are_skipped_where_kernels_have_no_plans():
    _planes_or_skip()
    assert bench.PLANES not in bench.fft_rates(16, 2, "double", np, min_time_s=0.002, repeats=1)
    with pytest.raises(UsageError, match="pyfftw-planes"):
        bench.time_fft_work(4, 16, 2, bench.PLANES, "double")
