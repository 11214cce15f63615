"""Tiny stores frozen at each released schema (v1, v2) must stay readable by every later ptycli.

`pytest --regen-golden` rewrites the current schema's fixtures only, when it is released;
older ones stay as they were written.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from ptycli.store import SCHEMA_VERSION, StoreWriter, open_store, read_meta
from ptycli.store.schema import major
from ptycli.store.calibration import load_calibration
from ptycli.store.state import State, load_state, write_state

FIXTURES = Path(__file__).parent / "fixtures"


def _write(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    patterns = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    with StoreWriter(root / "data-store", kind="data", stage="preprocess", options={"frozen": True}) as w:
        w.array("patterns", patterns)
        w.set_attrs(calibration={"energy_kev": 300.0, "semiangle_mrad": 20.0, "dk_inv_a": 0.1,
                                 "scan_shape": [2, 2], "scan_step_a": [0.5, 0.5], "detector_shape": [8, 8]})
        w.finalize()
    st = State(probe=np.ones((1, 8, 8), np.complex64), object=np.ones((1, 1, 12, 12), np.complex64),
               positions=np.array([[5.0, 5.0], [5.0, 6.0], [6.0, 5.0], [6.0, 6.0]]), dx_a=1.25,
               energy_kev=300.0, slice_thickness=np.array([1.0], np.float32))
    with StoreWriter(root / "state-store", kind="state", stage="init") as w:
        write_state(w, st)
        w.finalize()


@pytest.mark.parametrize("version", [1, 2])
def test_frozen_stores_are_readable(request, version):
    root = FIXTURES / f"v{version}"
    if request.config.getoption("--regen-golden") and version == major(SCHEMA_VERSION):
        _write(root)
    if not root.exists():
        pytest.fail(f"tests/fixtures/v{version} is missing; create it once with `pytest --regen-golden`")
    data = open_store(root / "data-store", "data")
    assert read_meta(data).schema_version.startswith(f"{version}.")
    assert data["patterns"].shape == (4, 8, 8) and float(data["patterns"][3, 7, 7]) == 255.0
    assert load_calibration(dict(data.attrs)).dx_a(8) == pytest.approx(1.25)
    state = load_state(open_store(root / "state-store", "state"))
    assert state.object.shape == (1, 1, 12, 12) and state.dx_a == 1.25
