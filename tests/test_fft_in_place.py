"""In-place and unnormalised transforms, and the fused propagation product, on every host
FFT library and with and without the fused kernels: same numbers as the plain unitary FFTs."""

import numpy as np
import pytest

from ptycli import backend, host_fft

LIBRARIES = ["numpy", "scipy", "pyfftw"]


def _complex(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def _use(library, monkeypatch):
    if library == "pyfftw":
        pytest.importorskip("pyfftw")
    monkeypatch.setattr(host_fft, "_fft_library", library)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("inverse", [False, True])
def test_overwrite_and_unscaled_match_the_unitary_transform(library, inverse, monkeypatch):
    _use(library, monkeypatch)
    rng = np.random.default_rng(1)
    x = _complex(rng, (4, 2, 32, 32))
    f = backend.ifft2 if inverse else backend.fft2
    expected = (np.fft.ifft2 if inverse else np.fft.fft2)(x, norm="ortho")
    np.testing.assert_allclose(f(x.copy(), overwrite=True), expected, atol=2e-5)
    unscaled = f(x.copy(), overwrite=True, scaled=False)
    np.testing.assert_allclose(unscaled * backend.unitary_scale(x.shape), expected, atol=2e-5)
    kept = x.copy()
    f(kept)  # without overwrite the input is left alone
    np.testing.assert_array_equal(kept, x)


def test_fftw_in_place_runs_in_the_callers_buffer_and_takes_misaligned_arrays():
    pytest.importorskip("pyfftw")
    from ptycli import _fftw

    rng = np.random.default_rng(2)
    x = _complex(rng, (3, 32, 32))
    expected = np.fft.fft2(x, norm="ortho")
    buf = x.copy()
    out = _fftw.transform(buf, False, 2, 1, overwrite=True)
    assert np.shares_memory(out, buf)  # no output allocated
    np.testing.assert_allclose(out, expected, atol=2e-5)
    # a view 8 bytes off any SIMD alignment: the in-place plan cannot take it, the result must not change
    raw = np.empty(x.size + 1, dtype=np.complex64)
    odd = raw[1:].reshape(x.shape)
    odd[...] = x
    np.testing.assert_allclose(_fftw.transform(odd, False, 2, 1, overwrite=True), expected, atol=2e-5)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("h_shape", ["shared", "per_position"])
@pytest.mark.parametrize("conj", [False, True])
def test_fourier_multiply_is_the_product_in_fourier_space(library, kernels, h_shape, conj, monkeypatch):
    _use(library, monkeypatch)
    if kernels and backend.kernels(np) is None:
        pytest.skip("Numba is not installed")
    monkeypatch.setattr(backend, "_kernels_mode", "auto" if kernels else "0")
    rng = np.random.default_rng(3)
    x = _complex(rng, (3, 2, 2, 16, 16))
    H = _complex(rng, (16, 16) if h_shape == "shared" else (3, 1, 1, 16, 16))
    h = np.conj(H) if conj else H
    expected = np.fft.ifft2(h * np.fft.fft2(x, norm="ortho"), norm="ortho")
    got = backend.fourier_multiply(x.copy(), H, conj=conj, overwrite=True)
    assert got.dtype == np.complex64 and got.shape == x.shape
    np.testing.assert_allclose(got, expected, atol=3e-5)
    kept = x.copy()
    np.testing.assert_allclose(backend.fourier_multiply(kept, H, conj=conj), expected, atol=3e-5)
    np.testing.assert_array_equal(kept, x)


def test_unshift_sum_of_matches_the_spectrum_route():
    from ptycli.physics import overlap

    rng = np.random.default_rng(4)
    g = _complex(rng, (5, 2, 16, 16))
    frac = rng.uniform(-0.5, 0.5, size=(5, 2)).astype(np.float32)
    expected = overlap.unshift_sum_k(backend.fft2(g), frac)
    np.testing.assert_allclose(overlap.unshift_sum_of(g.copy(), frac, overwrite=True), expected, atol=3e-5)
