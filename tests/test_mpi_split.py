"""The distributed seam without an MPI job: how groups are split over ranks, the no-op
single-process communicator, and the MPI SLURM example's requeue logic (stand-in srun)."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ptycli.engines import distributed, grouping
from ptycli.errors import UsageError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class FakeRank(distributed.SerialComm):
    """Rank ``rank`` of ``size`` for the pure bookkeeping helpers (no collectives used)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def _raster(ny, nx):
    y, x = np.mgrid[0:ny, 0:nx]
    return np.stack([y.ravel(), x.ravel()], axis=1).astype(np.float64) * 3.0


@pytest.mark.parametrize("kind", grouping.GROUPINGS)
def test_parts_partition_every_group_evenly_and_compactly(kind):
    pos = _raster(8, 8)
    order = grouping.curve_order(pos)
    place = distributed.curve_rank(order, len(pos))
    groups = grouping.make_groups(kind, order, 16, np.random.default_rng(0))
    for g in groups:
        parts = [distributed.local_part(g, place, FakeRank(r, 3)) for r in range(3)]
        assert sorted(np.concatenate(parts).tolist()) == sorted(g.tolist())  # a partition
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted like serial groups
    # one group of everything on 4 ranks: each share is a compact quadrant-sized patch
    everything = np.arange(64)
    for r in range(4):
        share = pos[distributed.local_part(everything, place, FakeRank(r, 4))]
        assert np.ptp(share, axis=0).max() <= 3.0 * 3  # within a 4x4 block of the 8x8 scan


def test_single_rank_is_the_ordinary_path():
    comm = distributed.SERIAL
    g = np.array([3, 1, 2])
    assert distributed.local_part(g, np.arange(4), comm) is g
    x = np.ones(3, dtype=np.complex64)
    assert comm.allreduce_sum(x) is x and comm.allreduce_scalar(2.5) == 2.5
    assert comm.allgather("a") == ["a"] and comm.bcast(7) == 7 and comm.any(True) and not comm.any(False)
    assert distributed.world(False) is comm
    assert distributed.comm_of(object()) is comm
    assert distributed.select_device("auto", comm) == "auto"


def test_groups_smaller_than_the_rank_count_are_refused_with_the_stage_named():
    distributed.check_split([np.arange(4)], FakeRank(0, 4), 0, "lsqml")  # fits
    with pytest.raises(UsageError, match=r"stage 1 \(lsqml\).*grouping.size >= 4"):
        distributed.check_split([np.arange(4), np.arange(3)], FakeRank(0, 4), 1, "lsqml")
    with pytest.raises(UsageError, match=r"epie.*sequential ePIE.*lsqml"):
        distributed.check_split([np.arange(1)], FakeRank(1, 2), 0, "epie")


def test_mpi_sbatch_requeues_on_exit_75(tmp_path):
    """srun exit 75 (checkpoint written after USR1) -> scontrol requeue; args carry --distributed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/srun_args\nexit 75\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/scontrol_args\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="42")
    res = subprocess.run(["bash", str(EXAMPLES / "slurm" / "mpi-multigpu.sbatch"), "d.zarr", "s.zarr"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 75
    args = (tmp_path / "srun_args").read_text().split()
    assert "--distributed" in args and "--resume" in args and args[args.index("-o") + 1] == "recon.zarr"
    assert (tmp_path / "scontrol_args").read_text().split() == ["requeue", "42"]
