"""Shared pytest setup: every test runs with a quiet, colourless, non-TTY CLI."""

import os

import pytest

os.environ.setdefault("NO_COLOR", "1")
# FFTW_MEASURE planning costs seconds per new shape; tests use scipy.fft unless they ask.
os.environ.setdefault("PTYCLI_FFT", "scipy")
# nor keep FFTW wisdom in the user's cache (tests/test_fftw_wisdom.py sets its own files)
os.environ.setdefault("PTYCLI_FFTW_WISDOM", "off")


def _has_cuda() -> bool:
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAS_CUDA = _has_cuda()


def pytest_addoption(parser):
    parser.addoption("--regen-golden", action="store_true",
                     help="rewrite the frozen store fixtures in tests/fixtures (only on a schema release)")


def pytest_collection_modifyitems(config, items):
    measured_slow = _measured_slow()
    # Without a CUDA device the CuPy-marked tests are deselected, not skipped: the code they
    # run on the GPU is checked on the CPU by their "array-path" twins and
    # tests/test_engines_array_api_strict.py (array_api_strict as the device namespace).
    if not HAS_CUDA:
        gpu = [item for item in items if "cupy" in item.keywords]
        if gpu:
            config.hook.pytest_deselected(items=gpu)
            items[:] = [item for item in items if "cupy" not in item.keywords]
    for item in items:
        if item.nodeid in measured_slow:  # the README's quick subset (-m "not slow") leaves them out
            item.add_marker(pytest.mark.slow)


def pytest_report_header(config):
    if not HAS_CUDA:
        return "CuPy tests: deselected (no CUDA device); their array path runs under array_api_strict"
    return None


def _measured_slow() -> set[str]:
    """Node ids listed in tests/slow_tests.txt (measured over 3 s each)."""
    from pathlib import Path

    path = Path(__file__).with_name("slow_tests.txt")
    if not path.is_file():
        return set()
    lines = (line.strip() for line in path.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


@pytest.fixture
def cli():
    """Invoke the ptycli app in-process; returns the click Result (stdout/stderr separate)."""
    from typer.testing import CliRunner

    from ptycli.cli.main import app

    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input)

    return invoke
