"""inspect: data/state stores and raw files; derived quantities against their formulas."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptycli.errors import ExitCode

CAL = ["--energy-kev", "300", "--semiangle-mrad", "20", "--dk-mrad", "2.0", "--scan-step-a", "0.5",
       "--defocus-a", "100"]


@pytest.fixture
def data_store(tmp_path, cli):
    yy, xx = np.mgrid[:32, :32]
    disk = ((yy - 16) ** 2 + (xx - 16) ** 2 <= 36) * 100.0  # 113 px -> R = sqrt(113/π) = 5.997 px
    data = np.broadcast_to(disk, (3, 4, 32, 32)).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "d.zarr"
    r = cli("preprocess", tmp_path / "d.npy", "-o", out, *CAL, "--compress-masks", "annular:2x2")
    assert r.exit_code == 0, r.stderr
    return out


def test_json_document_and_derived_quantities(cli, data_store):
    r = cli("inspect", data_store, "--json")
    assert r.exit_code == 0 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["kind"] == "data" and doc["status"] == "complete"
    assert doc["arrays"]["patterns"] == {"shape": [12, 32, 32], "dtype": "float32", "chunks": [12, 32, 32],
                                         "dims": ["position", "ky", "kx"], "units": "count"}
    d = doc["derived"]
    lam = 0.0196875  # physics.md §2, 300 kV
    assert d["wavelength_a"] == pytest.approx(lam, rel=1e-5)
    assert d["dk_inv_a"] == pytest.approx(2e-3 / lam, rel=1e-6)  # dk = α_pix / λ
    assert d["dx_a"] == pytest.approx(lam / (32 * 2e-3), rel=1e-6)  # dx = λ / (M α_pix)
    assert d["bf_radius_px"] == pytest.approx(np.sqrt(113 / np.pi), rel=1e-6)
    assert d["bf_offset_px"] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert d["counts_per_frame"] == pytest.approx(11300.0)
    assert d["dose_e_per_a2"] == pytest.approx(11300.0 / 0.25)
    assert d["probe_diameter_a"] == pytest.approx(2 * 100 * 0.02)  # geometric 2|Δf|α
    assert d["probe_overlap"] == pytest.approx(1 - 0.5 / 4.0)
    assert d["compression_ratio"] == pytest.approx(1024 / 4)
    assert [p["stage"] for p in doc["provenance"]] == ["preprocess"]


@pytest.mark.parametrize("key,expected", [
    ("calibration.energy_kev", "300.0"),
    ("arrays.patterns.shape", "[12, 32, 32]"),
    ("arrays.patterns.shape.0", "12"),
    ("kind", "data"),
    ("calibration.dk_inv_a", "null"),
])
def test_get_prints_one_bare_value(cli, data_store, key, expected):
    r = cli("inspect", data_store, "--get", key)
    assert r.exit_code == 0 and r.stdout == expected + "\n"


def test_get_dx_round_trips_as_a_float(cli, data_store):
    r = cli("inspect", data_store, "--get", "derived.dx_a")
    assert float(r.stdout) == pytest.approx(0.0196875 / 0.064, rel=1e-5)


def test_get_unknown_key_is_a_usage_error(cli, data_store):
    r = cli("inspect", data_store, "--get", "derived.nope")
    assert r.exit_code == ExitCode.USAGE and len(r.stderr.strip().splitlines()) == 1
    assert "'nope'" in r.stderr and "dx_a" in r.stderr


def test_table_is_the_result_on_stdout(cli, data_store):
    r = cli("inspect", data_store)
    assert r.exit_code == 0 and r.stderr == ""
    for text in ("kind", "data", "patterns", "calibration", "energy_kev", "derived", "bf_radius_px",
                 "provenance 0: preprocess"):
        assert text in r.stdout


def test_raw_file(cli, tmp_path):
    yy, xx = np.mgrid[:16, :16]
    disk = (((yy - 8) ** 2 + (xx - 8) ** 2) <= 9) * 10.0
    np.save(tmp_path / "r.npy", np.broadcast_to(disk, (2, 3, 16, 16)).astype(np.float32))
    doc = json.loads(cli("inspect", tmp_path / "r.npy", "--json").stdout)
    assert doc["kind"] == "raw" and doc["format"] == "npy" and doc["n_frames"] == 6
    assert doc["scan_shape"] == [2, 3] and doc["frame_shape"] == [16, 16]
    assert doc["derived"]["bf_radius_px"] == pytest.approx(np.sqrt(29 / np.pi))
    assert doc["derived"]["counts_per_frame"] == pytest.approx(290.0)


def test_state_store(cli, tmp_path):
    from ptycli.store.io import StoreWriter
    from ptycli.store.state import State, write_state

    m = 32
    yy, xx = np.mgrid[:m, :m] - m // 2
    probe = (np.hypot(yy, xx) <= 4).astype(np.complex64)[None]  # 49 px disk, diameter ~ 2*sqrt(0.9*49/π)
    pos = np.stack(np.meshgrid(np.arange(4) * 3.0 + 20, np.arange(5) * 3.0 + 20, indexing="ij"), -1).reshape(-1, 2)
    state = State(probe=probe, object=np.ones((1, 1, 64, 64), np.complex64), positions=pos, dx_a=0.25, energy_kev=300)
    with StoreWriter(tmp_path / "s.zarr", kind="state", stage="init") as w:
        write_state(w, state)
        w.finalize()
    doc = json.loads(cli("inspect", tmp_path / "s.zarr", "--json").stdout)
    d = doc["derived"]
    assert doc["kind"] == "state" and d["probe_modes"] == 1 and d["probe_counts"] == pytest.approx(49.0)
    assert d["scan_step_a"] == pytest.approx(0.75)  # 3 px * 0.25 Å
    assert d["object_extent_a"] == [16.0, 16.0]
    assert 1.5 < d["probe_diameter_a"] < 2.25 and 0 < d["probe_overlap"] < 0.6


def test_missing_store(cli, tmp_path):
    r = cli("inspect", tmp_path / "nope.zarr")
    assert r.exit_code == ExitCode.INPUT and "no such store" in r.stderr
