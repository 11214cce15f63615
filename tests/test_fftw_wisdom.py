"""FFTW_MEASURE plans and their wisdom file: what makes runs repeat across processes.

Oracle: the transform of a fixed input in a fresh process that reads the wisdom file is
bit-identical to the one in the process that measured (the same plan is rebuilt from the
recorded choice, without timing). Without pyFFTW these tests skip.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pyfftw")

_CHILD = """
import numpy as np
from ptycli import backend, host_fft
rng = np.random.default_rng(11)
x = (rng.normal(size=(8, 96, 96)) + 1j * rng.normal(size=(8, 96, 96))).astype(np.complex64)
with host_fft.fft_workers(1):
    y = backend.fft2(x)
np.save({out!r}, y)
"""


def _transform_in_child(tmp_path, name, env):
    out = str(tmp_path / f"{name}.npy")
    full = {**os.environ, "PTYCLI_FFT": "pyfftw", **env}
    subprocess.run([sys.executable, "-c", _CHILD.format(out=out)], env=full, check=True, timeout=120)
    return np.load(out)


def test_wisdom_file_is_written_and_makes_the_next_process_repeat_bit_for_bit(tmp_path):
    wisdom = tmp_path / "cache" / "wisdom.pickle"
    first = _transform_in_child(tmp_path, "first", {"PTYCLI_FFTW_WISDOM": str(wisdom)})
    assert wisdom.exists()
    single = pickle.loads(wisdom.read_bytes())[1]  # (double, single, long double) wisdom
    assert b"fftwf" in single  # the complex64 plan's record
    again = _transform_in_child(tmp_path, "again", {"PTYCLI_FFTW_WISDOM": str(wisdom)})
    np.testing.assert_array_equal(again, first)
    rng = np.random.default_rng(11)
    x = (rng.normal(size=(8, 96, 96)) + 1j * rng.normal(size=(8, 96, 96))).astype(np.complex64)
    reference = np.fft.fft2(x.astype(np.complex128), norm="ortho")
    assert np.abs(first - reference).max() < 1e-4 * np.abs(reference).max()


def test_wisdom_off_writes_nothing_and_estimate_still_transforms(tmp_path):
    env = {"PTYCLI_FFTW_WISDOM": "off", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    _transform_in_child(tmp_path, "off", env)
    assert not (tmp_path / "xdg").exists()
    est = _transform_in_child(tmp_path, "est", {**env, "PTYCLI_FFTW_PLANNER": "estimate"})
    assert est.shape == (8, 96, 96)


def test_default_wisdom_file_lives_in_the_user_cache(tmp_path, monkeypatch):
    from ptycli import _fftw

    monkeypatch.delenv("PTYCLI_FFTW_WISDOM", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = _fftw.wisdom_path()
    assert path.startswith(str(tmp_path / "ptycli" / "fftw-wisdom-")) and path.endswith(".pickle")
    monkeypatch.setenv("PTYCLI_FFTW_WISDOM", "off")
    assert _fftw.wisdom_path() is None


def test_a_corrupt_wisdom_file_is_ignored_and_replaced(tmp_path):
    wisdom = tmp_path / "wisdom.pickle"
    wisdom.write_bytes(b"not a pickle")
    _transform_in_child(tmp_path, "corrupt", {"PTYCLI_FFTW_WISDOM": str(wisdom)})
    assert isinstance(pickle.loads(wisdom.read_bytes()), tuple)


_IMPORT_CHILD = """
import sys
from ptycli import _fftw
assert _fftw.available()
print(sorted(n for n in ("dask.array", "scipy.fftpack") if n in sys.modules))
print([n for n, m in sys.modules.items() if m is None and n.startswith(("dask", "scipy"))])
import scipy.fftpack  # still importable afterwards: the absent-marks are gone
print(scipy.fftpack.__name__)
"""


def test_pyfftw_is_imported_without_its_dask_and_scipy_wrappers():
    """The start of every CPU reconstruct: pyfftw.interfaces would import dask.array and
    scipy.fftpack (1.2-1.5 CPU-s); neither is loaded by ptycli's import of pyfftw, and both
    stay importable."""
    out = subprocess.run([sys.executable, "-c", _IMPORT_CHILD], check=True, timeout=120, capture_output=True,
                         text=True).stdout.splitlines()
    assert out == ["[]", "[]", "scipy.fftpack"]
