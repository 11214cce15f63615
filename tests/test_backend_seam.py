"""The backend seam: FFT libraries agree, patches extract/accumulate exactly, dtypes are kept."""

import numpy as np
import pytest

from ptycli import backend, host_fft
from ptycli.errors import DeviceError


@pytest.mark.parametrize("library", ["numpy", "scipy", "pyfftw"])
def test_fft_libraries_agree_and_are_unitary(library, monkeypatch):
    if library == "pyfftw":
        pytest.importorskip("pyfftw")
    monkeypatch.setattr(host_fft, "_fft_library", library)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 16, 16)) + 1j * rng.normal(size=(3, 16, 16))).astype(np.complex64)
    f = backend.fft2(x)
    assert f.dtype == np.complex64
    np.testing.assert_allclose(f, np.fft.fft2(x, norm="ortho"), atol=1e-5)
    np.testing.assert_allclose(backend.ifft2(f), x, atol=1e-5)
    np.testing.assert_allclose(np.sum(np.abs(f) ** 2), np.sum(np.abs(x) ** 2), rtol=1e-5)


def test_extract_and_scatter_add_are_adjoint():
    rng = np.random.default_rng(1)
    obj = rng.normal(size=(2, 3, 20, 24)) + 1j * rng.normal(size=(2, 3, 20, 24))
    y0, x0 = np.array([0, 5, 5, 12]), np.array([0, 3, 3, 16])  # a repeated window on purpose
    patches = backend.extract_patches(obj, y0, x0, (8, 8))
    assert patches.shape == (4, 2, 3, 8, 8)
    np.testing.assert_array_equal(patches[3], obj[..., 12:20, 16:24])
    y = rng.normal(size=patches.shape) + 1j * rng.normal(size=patches.shape)
    acc = backend.scatter_add_patches(np.zeros_like(obj), y0, x0, y)
    assert np.isclose(np.vdot(patches, y), np.vdot(obj, acc), rtol=1e-12)


def test_shift_helpers_match_numpy():
    x = np.arange(35.0).reshape(5, 7)
    np.testing.assert_array_equal(backend.fftshift(x), np.fft.fftshift(x))
    np.testing.assert_array_equal(backend.ifftshift(x), np.fft.ifftshift(x))


def test_device_errors_are_clear():
    with pytest.raises(DeviceError, match="cuda:0"):
        if backend._cupy() is not None and backend._cuda_device_count(backend._cupy()) > 0:
            pytest.skip("a CUDA device is present")
        backend.get_xp("cuda:0")
    with pytest.raises(DeviceError, match="unknown device"):
        backend.get_xp("tpu")
    assert backend.get_xp("cpu") is np
    with pytest.raises(DeviceError, match="precision"):
        backend.dtypes("half")


def test_to_numpy_counts_only_device_transfers():
    before = backend.transfer_count
    backend.to_numpy(np.ones(3))
    assert backend.transfer_count == before
