"""`preprocess --scheduler`: the Dask graph writes a store identical to the in-process one."""

import json

import numpy as np
import pytest
import zarr

pytest.importorskip("dask")

from ptycli.errors import UsageError
from ptycli.stages import preprocess as pp

CAL = {"energy_kev": 300, "semiangle_mrad": 20, "dk_mrad": 1.0, "scan_step_a": 0.5}
# Both passes (survey for centre/repair, then write), binning of detector and scan, and a
# chunk size that gives several blocks, the last one short.
OPTIONS = {"chunk_mb": 0.02, "center": "auto", "repair_threshold": 5.0, "bin": 2, "bin_scan": 2, "crop": "28",
           "compress_masks": "annular:2x2"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    rng = np.random.default_rng(0)
    ky, kx = np.mgrid[:32, :32]
    disk = ((ky - 15.3) ** 2 + (kx - 16.6) ** 2 < 36).astype(np.float32) * 50
    frames = rng.poisson(disk + 1.0, size=(10, 10, 32, 32)).astype(np.float32)
    frames[:, :, 3, 7] = 1e4  # a hot pixel to repair
    path = root / "raw.npy"
    np.save(path, frames)
    return root, path


def _arrays(path):
    g = zarr.open_group(str(path), mode="r")
    out = {}

    def walk(group, prefix=""):
        for name, arr in group.arrays():
            out[prefix + name] = np.asarray(arr[...])
        for name, sub in group.groups():
            walk(sub, prefix + name + "/")

    walk(g)
    return g, out


def _meta(g):
    attrs = dict(g.attrs)
    meta = dict(attrs.pop("ptycli"))
    for key in ("started", "finished", "fingerprint"):
        meta.pop(key, None)
    return attrs, meta


@pytest.mark.parametrize("scheduler", ["processes", "threads"])
def test_dask_store_identical_to_in_process(raw, scheduler):
    root, path = raw
    ref = pp.run(path, root / "ref.zarr", calibration=CAL, options=OPTIONS, overwrite=True)
    ticks = []
    got = pp.run(path, root / f"{scheduler}.zarr", calibration=CAL, options=OPTIONS, scheduler=scheduler,
                 progress=lambda n=1, **_: ticks.append(n))
    assert sum(ticks) == 3 * 100  # survey, write, compress passes over 100 frames
    assert ref["chunk_frames"] == got["chunk_frames"] < got["n_frames"]  # really several blocks
    g_ref, a_ref = _arrays(root / "ref.zarr")
    g_got, a_got = _arrays(root / f"{scheduler}.zarr")
    assert sorted(a_ref) == sorted(a_got) and "patterns" in a_ref
    for name in a_ref:
        assert a_ref[name].dtype == a_got[name].dtype
        np.testing.assert_array_equal(a_got[name], a_ref[name], err_msg=name)  # bit-identical
    assert g_ref["patterns"].chunks == g_got["patterns"].chunks
    attrs_ref, meta_ref = _meta(g_ref)
    attrs_got, meta_got = _meta(g_got)
    assert attrs_ref == attrs_got
    assert json.dumps(meta_ref, sort_keys=True, default=str) == json.dumps(meta_got, sort_keys=True, default=str)


def test_bad_scheduler_fails_before_writing(raw):
    root, path = raw
    with pytest.raises(UsageError, match="--scheduler 'gpu'"):
        pp.run(path, root / "bad.zarr", calibration=CAL, scheduler="gpu")
    assert not (root / "bad.zarr").exists() and not (root / "bad.zarr.partial").exists()


def test_cli_scheduler_flag(raw, cli):
    root, path = raw
    res = cli("preprocess", path, "-o", root / "cli.zarr", "--energy-kev", "300", "--semiangle-mrad", "20",
              "--dk-mrad", "1", "--scan-step-a", "0.5", "--scheduler", "threads", "--progress", "none")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip().endswith("cli.zarr")
    ref = pp.run(path, root / "cli-ref.zarr", calibration=CAL)
    np.testing.assert_array_equal(zarr.open_group(str(root / "cli.zarr"))["patterns"][...],
                                  zarr.open_group(ref["output"])["patterns"][...])
