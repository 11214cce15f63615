"""Tiny data and state stores for the export/compare/figures/preview tests (built here, so
these tests do not depend on simulate or reconstruct)."""

from pathlib import Path

import numpy as np

from ptycli.store.calibration import Calibration
from ptycli.store.io import StoreWriter, input_ref, open_store
from ptycli.store.state import State, write_state, write_state_arrays

M = 16
SCAN = (6, 5)
DX_A = 0.25


def smooth_phase(shape, seed=0, sigma_px=2.0, rms=0.4):
    """A random, band-limited phase image (periodic), rms ``rms`` rad."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape)
    uy = np.fft.fftfreq(shape[0])[:, None]
    ux = np.fft.fftfreq(shape[1])[None, :]
    g = np.exp(-2 * np.pi**2 * sigma_px**2 * (uy**2 + ux**2))
    img = np.fft.ifft2(np.fft.fft2(noise) * g).real
    return rms * img / img.std()


def make_object(shape=(64, 60), slices=2, seed=0):
    ph = np.stack([smooth_phase(shape, seed + s) for s in range(slices)])
    amp = 0.9 + 0.05 * np.tanh(ph)
    return (amp * np.exp(1j * ph))[None].astype(np.complex64)


def scan_positions(offset=(24.0, 22.0), step_px=3.0):
    ny, nx = SCAN
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    return np.stack([yy.ravel() * step_px + offset[0], xx.ravel() * step_px + offset[1]], 1)


def make_probe(modes=2):
    y, x = np.mgrid[0:M, 0:M] - M // 2
    base = np.exp(-(x**2 + y**2) / 8.0) * np.exp(0.1j * x)
    probe = np.stack([base * (1 + 0.3 * k * x / M) for k in range(modes)]).astype(np.complex64)
    return probe * np.sqrt(1e3 / np.sum(np.abs(probe) ** 2))


def make_data_store(tmp: Path, *, truth=True, name="data.zarr", obj=None, positions=None):
    """A data store with DC-centred patterns, calibration, scan shape and (optionally) truth/."""
    rng = np.random.default_rng(1)
    j = SCAN[0] * SCAN[1]
    ky, kx = np.mgrid[0:M, 0:M] - M // 2
    disk = (np.hypot(ky, kx) <= 4).astype(np.float32)
    patterns = disk * 50 + rng.poisson(2.0, (j, M, M)).astype(np.float32)
    cal = Calibration(energy_kev=300, semiangle_mrad=20, dk_mrad=5.0, scan_shape=SCAN,
                      scan_step_a=(0.75, 0.75), detector_shape=(M, M), counts_per_frame=float(patterns.sum((1, 2)).mean()))
    path = tmp / name
    with StoreWriter(path, kind="data", stage="simulate") as w:
        w.array("patterns", patterns, chunks=(8, M, M))
        w.set_attrs(calibration=cal.to_attrs(), scan_shape=list(SCAN))
        if truth:
            w.array("truth/object", make_object() if obj is None else obj, dims=("object_mode", "slice", "y", "x"))
            w.array("truth/probe", make_probe(1), dims=("probe_mode", "probe_y", "probe_x"))
            pos = scan_positions() if positions is None else positions
            w.array("truth/positions", pos, dims=("position", "yx"))
            w.group["truth"].attrs["truth"] = {"dx_a": DX_A, "slice_thickness_a": 5.0, "origin_px": [24.0, 22.0]}
        w.finalize()
    return path


def make_state(obj=None, *, positions=None, tilts=True):
    pos = scan_positions() if positions is None else positions
    rng = np.random.default_rng(2)
    return State(
        probe=make_probe(), object=make_object() if obj is None else obj,
        positions=pos + rng.normal(0, 0.3, pos.shape), positions_initial=pos, dx_a=DX_A,
        energy_kev=300.0, slice_thickness=np.array([5.0, 5.0]), origin_px=(24.0, 22.0),
        tilts=rng.normal(0, 1, (len(pos), 2)) if tilts else None, semiangle_mrad=20.0, iteration=12,
    )


def write_history(group, n=12):
    loss = np.exp(-np.arange(n) / 4.0) + 0.1
    stage = (np.arange(n) >= n // 2).astype(np.int32)
    group.create_group("history")
    from ptycli.store.io import write_array

    write_array(group, "history/loss", loss, dims=("iteration",))
    write_array(group, "history/stage", stage, dims=("iteration",))
    write_array(group, "history/time_s", np.full(n, 0.5), dims=("iteration",))
    group["history"].attrs["history"] = {"stages": ["epie", "lsqml"], "timings": {"forward": 3.0, "update": 2.0}}


def make_state_store(tmp: Path, state=None, *, data=None, name="state.zarr", history=True):
    path = tmp / name
    state = state or make_state()
    inputs = [input_ref(open_store(data), data)] if data else []
    with StoreWriter(path, kind="state", stage="reconstruct", inputs=inputs) as w:
        write_state(w, state)
        if data:
            w.set_attrs(data={"path": str(data), "fingerprint": inputs[0].fingerprint})
        if history:
            write_history(w.group)
        w.finalize()
    return path


def make_running_store(tmp: Path, name="run.zarr", iteration=5):
    """A reconstruction in progress, as reconstruct leaves it between checkpoints:
    OUT.zarr.partial with the recipe at the root and checkpoint/ holding the state and
    the history (lists) as attributes."""
    from ptycli.store.io import write_subgroup_atomic

    w = StoreWriter(tmp / name, kind="state", stage="reconstruct")
    w.set_attrs(recipe={"stage": [{"type": "epie", "iterations": 10}, {"type": "lsqml", "iterations": 10}]})
    state = make_state()
    state.iteration = iteration
    history = {"loss": list(np.exp(-np.arange(iteration) / 4.0)), "stage": [0] * iteration,
               "time_s": [0.5] * iteration, "convergence": []}

    def fill(g):
        write_state_arrays(g, state)
        g.attrs["history"] = history

    write_subgroup_atomic(w.partial, "checkpoint", fill)
    return w.partial


def test_helpers_make_complete_stores(tmp_path):
    data = make_data_store(tmp_path)
    state = make_state_store(tmp_path, data=data)
    assert open_store(state, "state").attrs["data"]["path"] == str(data)
    assert open_store(data, "data")["patterns"].shape == (SCAN[0] * SCAN[1], M, M)
