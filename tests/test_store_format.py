"""Store format v1: atomic creation, checks on open, dimension names, plain-zarr/xarray access."""

import os

import numpy as np
import pytest
import zarr

from ptycli.errors import OutputExistsError, StoreError, InputError
from ptycli.store import SCHEMA_VERSION, StoreWriter, input_ref, open_store, partial_path, read_meta
from ptycli.store.io import write_subgroup_atomic
from ptycli.store.state import State, load_state, write_state


def _data_store(path, values=None, **kw):
    with StoreWriter(path, kind="data", stage="preprocess", options={"x": 1}, **kw) as w:
        w.array("patterns", values if values is not None else np.ones((6, 8, 8), np.float32))
        w.set_attrs(calibration={"energy_kev": 300.0})
        w.record("crop", box=[0, 8, 0, 8])
        return w.finalize()


def test_written_via_partial_then_renamed(tmp_path):
    out = tmp_path / "d.zarr"
    w = StoreWriter(out, kind="data", stage="preprocess")
    w.array("patterns", np.zeros((2, 4, 4), np.float32))
    assert partial_path(out).exists() and not out.exists()
    w.finalize()
    assert out.exists() and not partial_path(out).exists()
    meta = read_meta(open_store(out, "data"))
    assert meta.status == "complete" and meta.schema_version == SCHEMA_VERSION


def test_error_inside_writer_leaves_nothing(tmp_path):
    out = tmp_path / "d.zarr"
    with pytest.raises(RuntimeError):
        with StoreWriter(out, kind="data", stage="preprocess") as w:
            w.array("patterns", np.zeros((2, 4, 4), np.float32))
            raise RuntimeError("boom")
    assert not out.exists() and not partial_path(out).exists()


def test_refuses_existing_output_without_overwrite(tmp_path):
    out = _data_store(tmp_path / "d.zarr")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        StoreWriter(out, kind="data", stage="preprocess")
    new = np.full((6, 8, 8), 2, np.float32)
    _data_store(out, new, overwrite=True)
    assert np.all(open_store(out)["patterns"][...] == 2)


def test_stale_partial_is_replaced(tmp_path):
    out = tmp_path / "d.zarr"
    partial_path(out).mkdir()
    (partial_path(out) / "junk").write_text("left by kill -9")
    _data_store(out)
    assert out.exists() and not partial_path(out).exists()


def test_open_checks(tmp_path):
    out = _data_store(tmp_path / "d.zarr")
    with pytest.raises(StoreError, match="expected a state store"):
        open_store(out, "state")
    with pytest.raises(InputError, match="no such store"):
        open_store(tmp_path / "missing.zarr")
    partial_path(tmp_path / "half.zarr").mkdir()
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "half.zarr")


def test_newer_major_schema_is_refused_with_both_versions(tmp_path):
    out = _data_store(tmp_path / "d.zarr")
    g = zarr.open_group(str(out), mode="a")
    meta = dict(g.attrs["ptycli"])
    meta["schema_version"] = "3.0"
    g.attrs["ptycli"] = meta
    with pytest.raises(StoreError, match=r"3\.0.*2\.0"):
        open_store(out)


def test_plain_zarr_and_xarray_read_dimension_names(tmp_path):
    out = _data_store(tmp_path / "d.zarr")
    g = zarr.open_group(str(out), mode="r")
    assert g["patterns"].metadata.dimension_names == ("position", "ky", "kx")
    assert g["patterns"].attrs["units"] == "count"  # UDUNITS (schema 2)
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(str(out), consolidated=False)
    assert ds["patterns"].dims == ("position", "ky", "kx")


def test_fingerprint_tracks_content(tmp_path):
    a = _data_store(tmp_path / "a.zarr")
    b = _data_store(tmp_path / "b.zarr")
    c = _data_store(tmp_path / "c.zarr", np.full((6, 8, 8), 3, np.float32))
    fa, fb, fc = (read_meta(open_store(p)).fingerprint for p in (a, b, c))
    assert fa == fb != fc
    assert input_ref(open_store(a)).fingerprint == fa


def test_provenance_chain_and_state_round_trip(tmp_path):
    from ptycli.store import provenance_of

    data = open_store(_data_store(tmp_path / "d.zarr"))
    st = State(probe=np.ones((2, 8, 8), np.complex64), object=np.ones((1, 3, 20, 20), np.complex64),
               positions=np.arange(10.0).reshape(5, 2), dx_a=0.1, energy_kev=300.0,
               slice_thickness=np.full(3, 2.0, np.float32))
    with StoreWriter(tmp_path / "s.zarr", kind="state", stage="init", inputs=[input_ref(data)],
                     provenance=provenance_of(data)) as w:
        write_state(w, st)
        w.finalize()
    g = open_store(tmp_path / "s.zarr", "state")
    meta = read_meta(g)
    assert [p.stage for p in meta.provenance] == ["preprocess"]
    assert meta.provenance[0].operations[0]["op"] == "crop"
    back = load_state(g)
    assert back.object.shape == (1, 3, 20, 20) and back.dx_a == 0.1
    np.testing.assert_array_equal(back.positions, st.positions)
    assert g["object"].metadata.dimension_names == ("object_mode", "slice", "y", "x")


def test_subgroup_atomic_replace(tmp_path):
    root = tmp_path / "r.zarr"
    zarr.open_group(str(root), mode="w")
    for value in (1, 2):
        write_subgroup_atomic(root, "checkpoint", lambda g, v=value: g.attrs.update({"it": v}))
    assert zarr.open_group(str(root / "checkpoint"), mode="r").attrs["it"] == 2
    assert not (root / "checkpoint.tmp").exists() and not (root / "checkpoint.old").exists()


def test_subgroup_left_only_as_old_survives_a_failed_rewrite(tmp_path):
    """A crash between the two renames leaves only checkpoint.old (readers use it); the next
    write, if it dies in its fill, must not have deleted that last copy first."""
    root = tmp_path / "r.zarr"
    zarr.open_group(str(root), mode="w")
    write_subgroup_atomic(root, "checkpoint", lambda g: g.attrs.update({"it": 1}))
    os.replace(root / "checkpoint", root / "checkpoint.old")

    def dies(g):
        raise KeyboardInterrupt  # the job killed mid-write

    with pytest.raises(KeyboardInterrupt):
        write_subgroup_atomic(root, "checkpoint", dies)
    assert zarr.open_group(str(root / "checkpoint"), mode="r").attrs["it"] == 1
