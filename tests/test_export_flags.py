"""export refuses flags its output would ignore, and a bad --cmap, as one-line usage errors."""

import pytest
from test_export_data import make_data_store, make_state_store

from ptycli.errors import ExitCode


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flags")
    data = make_data_store(tmp)
    return data, make_state_store(tmp, data=data)


def _usage_error(r, *words):
    assert r.exit_code == ExitCode.USAGE, (r.exit_code, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "internal error" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.mark.parametrize("name, words", [
    ("nope", ["--cmap", "'nope'", "viridis"]),
    ("virdis", ["--cmap", "did you mean viridis"]),
])
def test_unknown_cmap_is_a_usage_error(cli, stores, tmp_path, name, words):
    _usage_error(cli("export", stores[1], "-o", tmp_path / "p.png", "--cmap", name), *words)
    assert not (tmp_path / "p.png").exists()


def test_reversed_cmap_is_accepted(cli, stores, tmp_path):
    r = cli("export", stores[1], "-o", tmp_path / "p.png", "--cmap", "viridis_r")
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("args, words", [
    (["-o", "p.png", "--bit-depth", "16"], ["--bit-depth 16", "PNG", ".tif"]),
    (["-o", "p.npy", "--bit-depth", "8"], ["--bit-depth 8", "TIFF"]),
    (["-o", "p.tif", "--cmap", "viridis"], ["--cmap", "PNG"]),
    (["-o", "p.h5", "--layout", "pypty"], ["--layout pypty", "--what patterns", "object-phase"]),
    (["-o", "p.npy", "--layout", "ptyrad", "--what", "probe"], ["--layout ptyrad", "--what probe"]),
    (["-o", "p.tif", "--what", "probe", "--crop", "0:5,0:5"], ["--crop 0:5,0:5", "--what probe"]),
])
def test_ignored_flag_combinations_are_refused(cli, stores, tmp_path, args, words):
    args = [str(tmp_path / a) if a.startswith("p.") else a for a in args]
    _usage_error(cli("export", stores[1], *args), *words)
    assert not list(tmp_path.iterdir())


def test_honoured_combinations_still_work(cli, stores, tmp_path):
    for args in (["-o", tmp_path / "p8.png", "--bit-depth", "8"], ["-o", tmp_path / "p16.tif", "--bit-depth", "16"]):
        r = cli("export", stores[1], *args)
        assert r.exit_code == 0, r.stderr
    r = cli("export", stores[0], "--what", "patterns", "--layout", "pypty", "-o", tmp_path / "d.h5")
    assert r.exit_code == 0, r.stderr
