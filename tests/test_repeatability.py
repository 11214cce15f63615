"""When two runs with one seed give the same bits (issue 23; README "Repeatable runs").

Measured causes of run-to-run differences (docs/architecture.md): FFTW_MEASURE plans made
afresh (a run that measures its plans can differ in the last bits from a later run that
reads them from the wisdom file, and iterations amplify that), and the host thread count
(a group's parts, summed part by part, are split by PTYCLI_THREADS or the usable cores).
With the same thread count and plans read from the same wisdom, runs repeat bit for bit.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr


def _run(data, state, out, wisdom, threads):
    env = {**os.environ, "PTYCLI_FFT": "pyfftw", "PTYCLI_FFTW_WISDOM": str(wisdom), "PTYCLI_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "ptycli", "reconstruct", str(data), str(state), "-o", str(out),
                    "--recipe", "gradient", "--set", "stage.0.grouping.size=16", "--iterations", "2", "--seed", "4",
                    "--device", "cpu"], env=env, check=True, capture_output=True, timeout=300)
    return np.asarray(zarr.open_group(str(out), mode="r")["object"][...])


@pytest.mark.slow
def test_runs_repeat_bit_for_bit_with_the_same_wisdom_and_threads(tmp_path):
    pytest.importorskip("pyfftw")
    from _helpers import demo_stores

    _, data, state = demo_stores(tmp_path, scan_shape=(4, 4))
    wisdom = tmp_path / "wisdom.pickle"
    _run(data, state, tmp_path / "cold.zarr", wisdom, 2)  # measures the plans, keeps them
    assert wisdom.exists()
    first = _run(data, state, tmp_path / "a.zarr", wisdom, 2)
    second = _run(data, state, tmp_path / "b.zarr", wisdom, 2)
    np.testing.assert_array_equal(first, second)
