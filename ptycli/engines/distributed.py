"""Data-parallel runs over MPI: the one place that knows about mpi4py.

Every rank holds the whole state and runs the same loop with the same seeded groups;
each group is split into K spatially compact parts (along the grouping's Z-order curve),
each rank computes its part, and the engines sum their per-position contributions with
``allreduce_sum`` before applying an update. K ranks therefore make the update of one
process, up to float rounding. ``SERIAL`` (the default) makes every collective a no-op,
so one rank is the ordinary code path.

Device buffers go to MPI directly when the MPI library is CUDA-aware
(``PTYCLI_MPI_CUDA_AWARE=1``, or MPI reports it); otherwise they are staged through the
host with ``backend.to_numpy``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import backend
from ..errors import UsageError


class SerialComm:
    """One process: every collective returns its input."""

    rank = 0
    size = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, x: Any) -> Any:
        """Sum ``x`` over ranks, in place (a new array only when ``x`` is a 0-d/non-contiguous value)."""
        return x

    def allreduce_scalar(self, value: float) -> float:
        return float(value)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        return None

    def any(self, flag: bool) -> bool:
        return bool(flag)


SERIAL = SerialComm()


class MpiComm(SerialComm):
    """mpi4py communicator wrapper (sums complex arrays as pairs of reals)."""

    def __init__(self, comm: Any, mpi: Any):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.cuda_aware = _cuda_aware(mpi)

    def allreduce_sum(self, x: Any) -> Any:
        if isinstance(x, (int, float, complex)) or getattr(x, "ndim", 1) == 0:
            return self._reduce_small(x)
        if isinstance(x, np.ndarray):
            return self._reduce_host(x)
        if self.cuda_aware:
            return self._reduce_device(x)
        host = np.ascontiguousarray(backend.to_numpy(x))
        self._reduce_host(host)
        x[...] = backend.to_device(host, backend.namespace(x), dtype=x.dtype)
        return x

    def _reduce_host(self, x: np.ndarray) -> np.ndarray:
        buf = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        view = buf.view(buf.real.dtype) if np.iscomplexobj(buf) else buf
        self.comm.Allreduce(self.MPI.IN_PLACE, view, op=self.MPI.SUM)
        if buf is not x:
            x[...] = buf
        return x

    def _reduce_device(self, x: Any) -> Any:
        xp = backend.namespace(x)
        buf = x if x.flags.c_contiguous else xp.ascontiguousarray(x)
        view = buf.view(xp.float32 if buf.dtype == xp.complex64 else xp.float64) if xp.iscomplexobj(buf) else buf
        backend.synchronize(xp)  # MPI reads the buffer outside the compute stream
        self.comm.Allreduce(self.MPI.IN_PLACE, view, op=self.MPI.SUM)
        if buf is not x:
            x[...] = buf
        return x

    def _reduce_small(self, x: Any) -> Any:
        if isinstance(x, (int, float, complex)):
            return type(x)(self.comm.allreduce(x, op=self.MPI.SUM))
        xp = backend.namespace(x)
        host = np.array(backend.to_numpy(x)).reshape(1)
        self._reduce_host(host)
        return backend.to_device(host.reshape(()), xp, dtype=x.dtype)

    def allreduce_scalar(self, value: float) -> float:
        buf = np.array([float(value)], dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return float(buf[0])

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def any(self, flag: bool) -> bool:
        return self.allreduce_scalar(1.0 if flag else 0.0) > 0


def _cuda_aware(mpi: Any) -> bool:
    env = os.environ.get("PTYCLI_MPI_CUDA_AWARE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    query = getattr(mpi, "Query_cuda_support", None)  # MPI 4.1 / MPICH, Open MPI extension
    try:
        return bool(query()) if query is not None else False
    except (NotImplementedError, RuntimeError):  # an MPI without the query: host staging, always correct
        return False


def world(distributed: bool) -> SerialComm:
    """The run's communicator: SERIAL unless ``distributed`` (then MPI COMM_WORLD, or
    SERIAL again when it has a single rank: one rank is the ordinary path)."""
    if not distributed:
        return SERIAL
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise UsageError("--distributed needs mpi4py and an MPI library: pip install 'ptycli[mpi]' "
                         f"(mpi4py + mpich), then run under mpiexec -n K or srun ({exc})") from exc
    comm = MPI.COMM_WORLD
    return SERIAL if comm.Get_size() == 1 else MpiComm(comm, MPI)


def abort(comm: SerialComm, code: int) -> None:
    """End every rank of the job (one rank's unexpected error would leave the others
    waiting in a collective forever). No-op on one process."""
    if isinstance(comm, MpiComm):
        comm.comm.Abort(code)


def comm_of(ctx: Any) -> SerialComm:
    """The communicator an engine's RunContext carries (``ctx.extra['comm']``), else SERIAL."""
    extra = getattr(ctx, "extra", None) or {}
    return extra.get("comm", SERIAL)


def local_rank(comm: SerialComm) -> int:
    """This rank's index among the ranks of its node (to pick a GPU)."""
    if not isinstance(comm, MpiComm):
        return 0
    node = comm.comm.Split_type(comm.MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank()
    finally:
        node.Free()


def select_device(device: str, comm: SerialComm) -> str:
    """``auto``/``cuda`` on a multi-rank run -> ``cuda:<local rank mod GPUs>`` so each rank of a
    node drives its own GPU; an explicit ``cuda:N`` or ``cpu`` is kept."""
    if comm.size == 1 or device not in ("auto", "cuda"):
        return device
    xp = backend.get_xp("auto")  # CuPy when a CUDA device is usable, else numpy
    if backend.is_numpy(xp):
        return device  # backend.get_xp reports a missing GPU for "cuda"; "auto" runs on the CPU
    n = int(xp.cuda.runtime.getDeviceCount())
    return f"cuda:{local_rank(comm) % n}" if n else device


# ----------------------------------------------------------------------------- splitting work
def curve_rank(order: np.ndarray, n_positions: int) -> np.ndarray:
    """Position index -> its place on the space-filling curve (``order`` = grouping.curve_order)."""
    rank = np.full(n_positions, -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def local_part(group: np.ndarray, place: np.ndarray, comm: SerialComm) -> np.ndarray:
    """This rank's share of ``group``: one of K contiguous runs along the curve (spatially
    compact, sizes within one of each other), sorted by index like the serial groups."""
    if comm.size == 1:
        return group
    along = group[np.argsort(place[group], kind="stable")]
    return np.sort(np.array_split(along, comm.size)[comm.rank])


def check_split(groups: list[np.ndarray], comm: SerialComm, stage_index: int, engine: str) -> None:
    """Every rank needs at least one position of every group (engines take per-group means)."""
    if comm.size == 1 or not groups:
        return
    smallest = min(len(g) for g in groups)
    if smallest >= comm.size:
        return
    if engine == "epie" and smallest == 1:
        raise UsageError(f"stage {stage_index} (epie): grouping.size 1 is sequential ePIE and cannot run "
                         f"on {comm.size} ranks; set stage.{stage_index}.grouping.size >= {comm.size} "
                         "(data-parallel ePIE sums each group's updates) or use the lsqml engine")
    raise UsageError(f"stage {stage_index} ({engine}): groups of {smallest} positions cannot be split over "
                     f"{comm.size} ranks; set stage.{stage_index}.grouping.size >= {comm.size} or use fewer ranks")


def gather_rows(x: Any, comm: SerialComm) -> Any:
    """Concatenate per-position arrays (B_r, ...) of every rank along axis 0 (rank order),
    on the array's device: the group-wide values that trimmed means and sorts need."""
    if comm.size == 1:
        return x
    xp = backend.namespace(x)
    parts = comm.allgather(np.asarray(backend.to_numpy(x)))
    return backend.to_device(np.concatenate(parts, axis=0), xp, dtype=x.dtype)


def global_count(n: int, comm: SerialComm) -> int:
    """Positions in the whole group from this rank's share."""
    return n if comm.size == 1 else round(comm.allreduce_scalar(float(n)))


def sync_positions(state: Any, idx: np.ndarray, comm: SerialComm, signum: int | None) -> int | None:
    """Share every rank's refined rows of ``state.positions`` and any stop request; returns
    the first rank's pending signal number (the stop decision must be collective)."""
    if comm.size == 1:
        return signum
    rows = np.asarray(state.positions)[idx]
    signal_of = None
    for part, part_rows, part_signal in comm.allgather((idx, rows, signum)):
        state.positions[part] = part_rows
        signal_of = signal_of if signal_of is not None else part_signal
    return signal_of


def global_mean(x: Any, comm: SerialComm) -> Any:
    """Mean of every element of ``x`` over all ranks' shares (``xp.mean`` on one rank)."""
    xp = backend.namespace(x)
    if comm.size == 1:
        return xp.mean(x)
    total = comm.allreduce_scalar(backend.scalar(xp.sum(x)))
    count = comm.allreduce_scalar(float(x.size))
    return total / count
