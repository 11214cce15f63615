"""Small helpers shared by several test modules (imported as `from _helpers import ...`)."""

import os
import signal
from pathlib import Path

# The shared material (abTEM references, real detector files) lies beside the repository as ../shared;
# tests resolve it from the repository root, never from a machine path.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class SignalAtBatch:
    """A loop observer that sends this process ``signum`` at the n-th group (mid-iteration),
    as SLURM (SIGTERM/SIGUSR1) or a user (SIGINT) would."""

    def __init__(self, n, signum=signal.SIGTERM):
        self.n, self.signum, self.seen = n, signum, 0

    def on_batch_end(self, *args):
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), self.signum)


def demo_stores(root, recipes=None, init_kwargs=None, **simulate_kwargs):
    """(root, data store, initial state store) from the `demo` preset, simulated with
    ``simulate_kwargs`` and initialised with ``init_kwargs``; each ``recipes`` entry
    {file name: TOML text} is written into ``root``. The shared start of the pipeline tests."""
    from ptycli.stages import init, simulate

    data, state = root / "d.zarr", root / "s.zarr"
    simulate.run(data, preset="demo", **simulate_kwargs)
    init.run(data, state, **(init_kwargs or {}))
    for name, text in (recipes or {}).items():
        (root / name).write_text(text)
    return root, data, state
