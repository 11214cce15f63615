"""The compiled kernels' on-disk cache, kept safe by public means only (issue 25): Numba is not
patched and its cache setting not rewritten; a compile in one process waits while another
holds the compile lock (two processes saving at once could swap two signatures' machine
code); and the multislice kernels, which have single_slice.py's helpers compiled in, name the
version of that file they were written against, so a change there reaches their cache."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ptycli import backend

pytestmark = pytest.mark.skipif(backend.kernels(np) is None, reason="compiled kernels need Numba")
KERNELS = Path(__file__).resolve().parents[1] / "ptycli" / "_kernels"


def test_multislice_kernels_name_the_single_slice_file_they_inline():
    from ptycli._kernels import multislice

    digest = hashlib.sha256((KERNELS / "single_slice.py").read_bytes()).hexdigest()[:16]
    assert multislice.INLINED_DIGEST == digest, (
        f"ptycli/_kernels/single_slice.py changed: set INLINED_DIGEST = \"{digest}\" in multislice.py "
        "(check its kernels against the change first; the edit makes Numba compile them afresh)")


def test_numba_is_not_patched_and_its_cache_setting_is_left_alone():
    import numba
    from numba.core import caching

    from ptycli import _kernels  # noqa: F401  (imported: nothing of Numba changes)

    assert caching.IndexDataCacheFile.save.__module__ == "numba.core.caching"
    assert numba.config.CACHE_DIR == os.environ.get("NUMBA_CACHE_DIR", "")


CHILD = """
import sys, time
sys.path.insert(0, {here!r})
import ptycli._kernels  # the compile guard
import tiny
print("start", time.time(), flush=True)
assert tiny.add(1.5) == 2.5
print("end", time.time(), flush=True)
"""


def test_a_compile_waits_while_another_process_holds_the_compile_lock(tmp_path):
    from ptycli._kernels import compile_guard

    cache = tmp_path / "numba"
    (tmp_path / "tiny.py").write_text(textwrap.dedent("""
        import numba as nb

        @nb.njit(cache=True)
        def add(x):
            return x + 1.0
    """))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(KERNELS.parents[1])}
    lock = Path(str(cache)) / compile_guard.LOCK_NAME
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(here=str(tmp_path))], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4.0)  # the child's imports take ~1-2 s, the compile itself ~0.1 s
        waiting = child.poll() is None
        written = sorted(p.name for p in cache.rglob("*.nb*"))
        released = time.time()
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err[-2000:]
    assert waiting and written == [], (waiting, written)  # neither compiled nor saved meanwhile
    end = float(next(line.split()[1] for line in out.splitlines() if line.startswith("end")))
    assert end >= released
    assert any(cache.rglob("*.nbi"))  # saved once the lock was free


def test_the_lock_sits_beside_the_cache_it_guards(monkeypatch, tmp_path):
    from ptycli._kernels import compile_guard

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert compile_guard.lock_path() == tmp_path / compile_guard.LOCK_NAME
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    if not os.access(KERNELS, os.W_OK):
        pytest.skip("a read-only install: Numba and the lock fall back to the user's cache")
    assert compile_guard.lock_path() == KERNELS / "__pycache__" / compile_guard.LOCK_NAME  # Numba's in-tree cache
