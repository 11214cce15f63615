"""Done-when: bounded memory under an address-space cap, and kill -9 safety.

The cap is set with ``resource.setrlimit(RLIMIT_AS)`` in a subprocess, as the budget the
preprocess may use *beyond* the interpreter's own baseline (numpy, zarr, h5py and their
thread pools already mapped); the dataset is 4x that budget, so a reader or writer that
loads the whole file, or even one full copy of it, fails with MemoryError.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import zarr

BUDGET_MB = 96
CAL = dict(energy_kev=300, semiangle_mrad=20, dk_mrad=1.0, scan_step_a=0.5)

CAPPED = textwrap.dedent("""
    import resource, sys, numpy as np
    from ptycli.stages import preprocess as pp
    src, out, tiny, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) * 2**20
    cal = dict(energy_kev=300, semiangle_mrad=20, dk_mrad=1.0, scan_step_a=0.5)
    pp.run(tiny, out + ".warm", calibration=cal)  # imports and thread pools before the cap
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + budget, vm + budget))
    s = pp.run(src, out, calibration=cal, options=dict(chunk_mb=2, compress_masks="annular:4x4"))
    print(s["n_frames"])
""")

KILLED = textwrap.dedent("""
    import os, signal, sys
    from ptycli.stages import preprocess as pp
    cal = dict(energy_kev=300, semiangle_mrad=20, dk_mrad=1.0, scan_step_a=0.5)
    def die(n=1, **_):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of writing
    pp.run(sys.argv[1], sys.argv[2], calibration=cal, options=dict(chunk_mb=0.01), progress=die)
""")


def _env():
    return {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _write_big(path, n_mb):
    """A (N, 64, 64) float32 .npy of n_mb MB, written a block at a time (never all in memory)."""
    frame = 64 * 64 * 4
    n = n_mb * 2**20 // frame
    side = int(np.ceil(np.sqrt(n)))  # a square scan at least n_mb large
    n = side * side
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 64, 64))
    block = np.random.default_rng(0).poisson(3.0, size=(512, 64, 64)).astype(np.float32)
    for s in range(0, n, 512):
        arr[s : s + 512] = block[: min(512, n - s)]
    arr.flush()
    del arr
    return n, block


def test_dataset_4x_the_memory_budget_streams(tmp_path):
    src = tmp_path / "big.npy"
    n, block = _write_big(src, 4 * BUDGET_MB)
    assert src.stat().st_size >= 4 * BUDGET_MB * 2**20
    np.save(tmp_path / "tiny.npy", np.ones((2, 2, 8, 8), np.float32))
    out = tmp_path / "o.zarr"
    r = subprocess.run([sys.executable, "-c", CAPPED, str(src), str(out), str(tmp_path / "tiny.npy"), str(BUDGET_MB)],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip()) == n
    g = zarr.open_group(str(out), mode="r")
    for j in (0, n // 2 + 3, n - 1):
        np.testing.assert_array_equal(g["patterns"][j], block[j % 512])
    np.testing.assert_allclose(g["compressed/signals"][n - 1].sum(), block[(n - 1) % 512].sum(), rtol=1e-6)


def test_kill_9_leaves_no_final_store_and_rerun_works(tmp_path, cli):
    src = tmp_path / "d.npy"
    np.save(src, np.random.default_rng(0).poisson(3.0, (8, 8, 16, 16)).astype(np.float32))
    out = tmp_path / "o.zarr"
    r = subprocess.run([sys.executable, "-c", KILLED, str(src), str(out)], capture_output=True, env=_env(), timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert not out.exists()
    assert (tmp_path / "o.zarr.partial").exists()  # killed mid-write: only the partial store
    r = cli("inspect", out)
    assert r.exit_code == 4 and "incomplete" in r.stderr
    args = ["--energy-kev", "300", "--semiangle-mrad", "20", "--dk-mrad", "1", "--scan-step-a", "0.5"]
    r = cli("preprocess", src, "-o", out, *args)
    assert r.exit_code == 0, r.stderr
    assert not (tmp_path / "o.zarr.partial").exists()
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["patterns"][...],
                                  np.load(src).reshape(64, 16, 16))
