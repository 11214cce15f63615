"""`init --probe-from/--object-from FILE`: complex arrays from other codes (.npy, .npz,
HDF5 dataset, MATLAB v5 and v7.3), resampled when their pixel differs; with irregular
positions (--positions FILE) no state store has to be edited by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ptycli.physics import probe as probe_lib
from ptycli.stages import simulate
from ptycli.store.io import open_store


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return simulate.run(tmp_path_factory.mktemp("d") / "data.zarr", scan_shape=(4, 4), seed=2)  # 64 px demo


@pytest.fixture(scope="module")
def default_state(data, tmp_path_factory):
    from ptycli.stages import init

    return init.run(data, tmp_path_factory.mktemp("s") / "s.zarr")


def _attrs(path):
    return dict(open_store(path, "state").attrs["state"])


def _probe(path):
    return np.asarray(open_store(path, "state")["probe"][...])


def _match(a, b):
    """|<a, b>| / (|a| |b|): 1 for the same field up to a global phase and scale."""
    return float(abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_finer_probe_file_with_irregular_positions(cli, data, default_state, tmp_path):
    """A new user's case: the probe another code reconstructed at half the pixel on a window
    twice as wide, and measured (jittered) positions in a CSV."""
    st = _attrs(default_state)
    dx = float(st["dx_a"])
    fine = probe_lib.make_probe((128, 128), dx / 2, st["energy_kev"] * 1e3, st["semiangle_mrad"],
                                st["aberrations"], counts=1.0)
    np.save(tmp_path / "probe.npy", np.asarray(fine))
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], 1) * 3.0 * dx + rng.normal(0, 0.4 * dx, (16, 2))
    np.savetxt(tmp_path / "pos.csv", pos, delimiter=",", header="y_a,x_a", comments="")
    out = tmp_path / "s.zarr"
    r = cli("init", data, "-o", out, "--probe-from", tmp_path / "probe.npy", "--probe-pixel-a", dx / 2,
            "--positions", tmp_path / "pos.csv")
    assert r.exit_code == 0, r.stderr
    got, want = _probe(out), _probe(default_state)
    assert got.shape == want.shape == (1, 64, 64)
    assert _match(got, want) > 0.999
    assert np.sum(np.abs(got) ** 2) == pytest.approx(np.sum(np.abs(want) ** 2), rel=1e-4)  # counts per frame
    g = open_store(out, "state")
    p = np.asarray(g["positions"][...])
    assert np.allclose((p - p.mean(0)) * dx, pos - pos.mean(0), atol=1e-6)


def _write_mat73(path, name, arr):
    """A MATLAB v7.3 file as MATLAB writes one: HDF5 behind a 512-byte header, arrays
    column-major (dimensions reversed), complex as a {real, imag} compound."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        comp = np.empty(arr.T.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
        comp["real"], comp["imag"] = arr.T.real, arr.T.imag
        d = f.create_dataset(name, data=comp)
        d.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116, b" "))


@pytest.mark.parametrize("fmt", ["h5", "mat5", "mat73", "npz"])
def test_probe_array_formats(cli, data, default_state, tmp_path, fmt):
    import h5py
    from scipy.io import savemat

    want = _probe(default_state)[0].astype(np.complex128)
    # a window 8 px wider each side at the same pixel: cut back to the data's 64 about the centre
    arr = np.pad(want, 8) * 3.0
    if fmt == "h5":
        with h5py.File(tmp_path / "p.h5", "w") as f:
            f.create_dataset("entry/probe", data=arr)
            f.create_dataset("entry/mask", data=np.ones((80, 80)))
        spec = f"{tmp_path / 'p.h5'}:/entry/probe"
    elif fmt == "mat5":
        savemat(tmp_path / "p.mat", {"probe": arr, "dx": 0.1})
        spec = f"{tmp_path / 'p.mat'}:probe"
    elif fmt == "mat73":
        _write_mat73(tmp_path / "p.mat", "probe", arr)
        spec = str(tmp_path / "p.mat")  # one complex array: no name needed
    else:
        np.savez(tmp_path / "p.npz", probe=arr, pos=np.zeros((3, 2)))
        spec = str(tmp_path / "p.npz")
    r = cli("init", data, "-o", tmp_path / "s.zarr", "--probe-from", spec)
    assert r.exit_code == 0, r.stderr
    got = _probe(tmp_path / "s.zarr")[0]
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_object_array_at_another_pixel_is_resampled_and_centred(cli, data, default_state, tmp_path):
    st = _attrs(default_state)
    dx = float(st["dx_a"])
    yy, xx = np.mgrid[:60, :60] / 60.0
    phase = 0.3 * np.sin(2 * np.pi * yy) * np.cos(2 * np.pi * xx)
    np.save(tmp_path / "obj.npy", np.exp(1j * phase)[None])  # (S=1, H, W), pixel 2·dx
    out = tmp_path / "s.zarr"
    r = cli("init", data, "-o", out, "--object-from", tmp_path / "obj.npy", "--object-pixel-a", 2 * dx)
    assert r.exit_code == 0, r.stderr
    g = open_store(out, "state")
    obj = np.asarray(g["object"][...])
    pos = np.asarray(g["positions"][...])
    assert obj.shape[:2] == (1, 1) and min(obj.shape[-2:]) >= 120  # 60 px of 2·dx -> 120 px of dx
    # the array's centre sits on the scan's centre; around it, its phase at half the pixel
    cy, cx = np.rint(pos.mean(0)).astype(int)
    got = np.angle(obj[0, 0, cy - 20:cy + 20, cx - 20:cx + 20])
    yf, xf = np.mgrid[-20:20, -20:20] / 120.0 + 0.5
    assert np.allclose(got, 0.3 * np.sin(2 * np.pi * yf) * np.cos(2 * np.pi * xf), atol=2e-3)


def test_bad_array_files_are_one_line_errors(cli, data, tmp_path):
    np.savez(tmp_path / "two.npz", a=np.ones((8, 8), complex), b=np.ones((8, 8), complex))
    r = cli("init", data, "-o", tmp_path / "s.zarr", "--probe-from", tmp_path / "two.npz")
    assert r.exit_code == 4 and "name one as" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("init", data, "-o", tmp_path / "s.zarr", "--probe-from", f"{tmp_path / 'two.npz'}:c")
    assert r.exit_code == 4 and "no array 'c'" in r.stderr
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 8, 8), complex))
    r = cli("init", data, "-o", tmp_path / "s.zarr", "--probe-from", tmp_path / "cube.npy")
    assert r.exit_code == 4 and "expected (M, M) or (P, M, M)" in r.stderr
