"""``preprocess --scheduler``: the block operations as a Dask graph.

Each output chunk is one ``dask.delayed`` task: it opens the raw file itself, reads its
frame range, applies exactly the in-process transform (``Preprocess._transform``) and
writes its own region of the output Zarr array, returning only the block's float64 sum.
Tasks write disjoint whole chunks, so they need no locking, and the sums are added in
block order on the client: the store is bit-identical to the in-process one. A
dask.distributed cluster (e.g. dask-jobqueue's SLURMCluster) then preprocesses data far
larger than one node's memory; workers must see the raw file and the output path.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

LOCAL = ("threads", "processes", "synchronous")


def check(scheduler: str | None) -> None:
    """Fail early (before anything is written) when Dask is missing or the name is wrong."""
    if scheduler is None:
        return
    try:
        import dask  # noqa: F401
    except ImportError:
        raise UsageError(f"--scheduler {scheduler}: needs Dask: pip install 'ptycli[dask]'") from None
    if scheduler not in LOCAL and ":" not in scheduler:
        raise UsageError(f"--scheduler {scheduler!r}: expected threads, processes, synchronous or a "
                         "dask.distributed address such as tcp://host:8786")


@contextmanager
def _scheduler(name: str) -> Iterator[dict[str, Any]]:
    if name in LOCAL:
        yield {"scheduler": name}
        return
    try:
        from distributed import Client
    except ImportError:
        raise UsageError(f"--scheduler {name}: a cluster address needs dask.distributed: "
                         "pip install 'ptycli[dask]'") from None
    client = Client(name)
    try:
        yield {"scheduler": client}
    finally:
        client.close()


def _portable(job: Any) -> Any:
    """The job without its open file handle (each task opens the file for itself)."""
    clone = copy.copy(job)
    clone.source = None
    return clone


def _read(job: Any, start: int, stop: int) -> np.ndarray:
    from ..readers import open_raw

    with open_raw(job.input_path, dataset=job.options.dataset) as src:
        return src.read(start, stop)


def _survey_block(job: Any, start: int, stop: int) -> np.ndarray:
    return job._value_ops(_read(job, start, stop), start).sum(axis=0, dtype=np.float64)


def _write_block(job: Any, start: int, stop: int, store: str, bad: Any, shift: Any) -> tuple[int, np.ndarray]:
    import zarr

    out = job._transform(_read(job, start, stop), start, bad, shift)
    s = start // job.options.bin_scan**2
    zarr.open_array(store=store, path="patterns", mode="r+")[s : s + len(out)] = out
    return stop - start, out.sum(axis=0, dtype=np.float64)


def _ranges(job: Any) -> list[tuple[int, int]]:
    n, step = job.source.n_frames, max(1, job.block_in)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def survey_sum(job: Any, tick: Any) -> np.ndarray:
    """Σ frames over the dataset (the survey pass), one task per block."""
    import dask

    portable = _portable(job)
    tasks = [dask.delayed(_survey_block)(portable, a, b) for a, b in _ranges(job)]
    with _scheduler(job.scheduler) as kw:
        sums = dask.compute(*tasks, **kw)
    total = np.zeros(job.source.frame_shape, dtype=np.float64)
    for (a, b), block in zip(_ranges(job), sums):
        total += block
        tick(b - a)
    return total


def write_patterns(job: Any, partial: Path, bad: Any, shift: Any, tick: Any) -> np.ndarray:
    """Transform and write every block into ``partial/patterns``; returns Σ output frames."""
    import dask

    portable = _portable(job)
    tasks = [dask.delayed(_write_block)(portable, a, b, str(partial), bad, shift) for a, b in _ranges(job)]
    with _scheduler(job.scheduler) as kw:
        results = dask.compute(*tasks, **kw)
    total = np.zeros(job.out_shape, dtype=np.float64)
    for n_read, block in results:  # in block order, as the in-process loop adds them
        total += block
        tick(n_read)
    return total
