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


def run_with_plugin_package(tmp_path, name, module_source, entry_points, script, timeout=300):
    """Run ``script`` (``python -c``, argv[1] = tmp_path) in a fresh interpreter that sees a
    throw-away package ``name`` (one module, ``module_source``) with ``entry_points`` (the text
    of its entry_points.txt): a ``*.dist-info`` folder on PYTHONPATH is what importlib.metadata
    discovers as an installed distribution, so no pip and nothing left in the test's venv.
    Returns the CompletedProcess."""
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(module_source)
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(root)])}
    return subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=timeout)
