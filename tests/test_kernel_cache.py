"""The compiled kernels' on-disk cache is keyed by every kernel source, not each file alone.

Numba keys a cached function by its own file's contents; a multislice kernel has the
far-field kernel of the other file compiled into its machine code, so a change to that file
alone must lead to a fresh cache (it once left LSQ-ML's multislice loss on a stale model).
"""

import numpy as np
import pytest

from ptycli import backend

pytestmark = pytest.mark.skipif(backend.kernels(np) is None, reason="compiled kernels need Numba")


def test_the_cache_directory_changes_with_any_kernel_source(tmp_path):
    from ptycli import _kernels

    a, b = tmp_path / "_kernels.py", tmp_path / "_kernels_multislice.py"
    a.write_text("def f(): return 1\n")
    b.write_text("def g(): return f()\n")
    base = tmp_path / "cache"
    first = _kernels.kernel_cache_dir((a, b), base)
    assert first.parent == base and first == _kernels.kernel_cache_dir((a, b), base)  # stable
    a.write_text("def f(): return 2\n")  # the callee's file only
    second = _kernels.kernel_cache_dir((a, b), base)
    assert second != first
    b.write_text("def g(): return -f()\n")
    assert _kernels.kernel_cache_dir((a, b), base) not in (first, second)


def test_the_kernels_cache_under_the_user_cache_and_leave_numbas_setting(tmp_path):
    import numba

    from ptycli import _kernels

    path = _kernels.farfield._cache._cache_path
    here = _kernels.kernel_cache_dir(tuple(_kernels.Path(_kernels.__file__).with_name(n)
                                           for n in _kernels.KERNEL_SOURCES), _kernels.Path("/"))
    assert here.name in path  # this version's directory
    assert _kernels.multislice_part._cache._cache_path.startswith(path.split(here.name)[0] + here.name)
    assert numba.config.CACHE_DIR == _kernels._CACHE_DIR_BEFORE  # restored for other packages


def test_other_versions_caches_unused_for_long_are_pruned(tmp_path):
    import os
    import time

    from ptycli import _kernels

    keep = tmp_path / "0123456789abcdef"
    old = tmp_path / "fedcba9876543210"
    recent = tmp_path / "00000000000000aa"
    foreign = tmp_path / "notacache"  # not a kernel cache name: never touched
    for d in (keep, old, recent, foreign):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f.nbc").write_bytes(b"x")
    long_ago = time.time() - 90 * 86400
    for d in (keep, old, foreign):
        os.utime(d, (long_ago, long_ago))
    removed = _kernels.prune_kernel_caches(tmp_path, keep)
    assert removed == [old] and not old.exists()
    assert keep.exists() and recent.exists() and foreign.exists()
