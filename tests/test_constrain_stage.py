"""`ptycli constrain`: store round trip, provenance, resampling, CLI contract, feeds reconstruct."""

import json

import numpy as np
import pytest

from ptycli.constraints import resample
from ptycli.store.io import StoreWriter, open_store, read_meta
from ptycli.store.state import State, load_state, write_state




def _state(slices=3, modes=2):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16] - 8
    base = np.exp(-(yy**2 + xx**2) / 10.0)
    probe = np.stack([base * (1 + 0.2 * rng.normal(size=(16, 16))) for _ in range(modes)]).astype(np.complex64)
    phase = 0.2 * rng.random((1, slices, 40, 40)) + 0.01 * np.arange(40)[None, None, None, :]
    obj = (0.95 * np.exp(1j * phase)).astype(np.complex64)
    pos = np.stack(np.meshgrid(np.arange(14.0, 26.0, 3), np.arange(14.0, 26.0, 3), indexing="ij"), -1).reshape(-1, 2)
    return State(probe=probe, object=obj, positions=pos, positions_initial=pos.copy(), dx_a=0.25, energy_kev=300.0,
                 slice_thickness=np.full(slices, 8.0, np.float32), semiangle_mrad=20.0, origin_px=(20.0, 20.0))


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "in.zarr"
    with StoreWriter(path, kind="state", stage="init") as w:
        write_state(w, _state())
        w.set_attrs(data={"path": "nowhere.zarr", "fingerprint": "abc"})
        w.finalize()
    return path


def test_cli_applies_constraints_in_order_and_writes_provenance(cli, store, tmp_path):
    out = tmp_path / "out.zarr"
    r = cli("constrain", store, "-o", out, "--apply", "orthogonalize_probe",
            "--apply", "phase_positivity:relax=0.0", "--apply", "fix_probe_intensity:counts=50")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    g = open_store(out, "state")
    meta = read_meta(g)
    assert meta.stage == "constrain" and meta.inputs[0].kind == "state"
    assert [op["op"] for op in meta.operations] == ["orthogonalize_probe", "phase_positivity", "fix_probe_intensity"]
    assert meta.provenance[-1].stage == "init"
    assert g.attrs["data"]["fingerprint"] == "abc"  # the data reference travels on to reconstruct
    st = load_state(g)
    assert np.angle(st.object).min() >= 0
    assert np.sum(np.abs(st.probe) ** 2) == pytest.approx(50, rel=1e-5)
    gram = st.probe.reshape(2, -1) @ st.probe.reshape(2, -1).conj().T
    assert abs(gram[0, 1]) < 1e-5 * abs(gram[0, 0])
    assert st.probe.dtype == np.complex64 and st.object.dtype == np.complex64


def test_recipe_file_and_json_output(cli, store, tmp_path):
    recipe = tmp_path / "c.toml"
    recipe.write_text('[[constraints]]\ntype = "kz_filter"\nbeta = 0.5\n\n[[constraints]]\ntype = "object_blur"\n')
    r = cli("constrain", store, "-o", tmp_path / "o.zarr", "--recipe", recipe, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["output"] == str(tmp_path / "o.zarr")
    ops = read_meta(open_store(tmp_path / "o.zarr", "state")).operations
    assert [o["op"] for o in ops] == ["kz_filter", "object_blur"] and ops[0]["beta"] == 0.5


def test_bad_constraint_exits_3_naming_the_key_and_leaves_no_output(cli, store, tmp_path):
    out = tmp_path / "o.zarr"
    r = cli("constrain", store, "-o", out, "--apply", "kz_filter:beta=-1")
    assert r.exit_code == 3 and "constraints.0.beta" in r.stderr and r.stdout == ""
    assert not out.exists() and not (tmp_path / "o.zarr.partial").exists()
    r = cli("constrain", store, "-o", out, "--apply", "no_such")
    assert r.exit_code == 3 and "unknown constraint 'no_such'" in r.stderr


def test_existing_output_needs_overwrite(cli, store, tmp_path):
    out = tmp_path / "o.zarr"
    assert cli("constrain", store, "-o", out).exit_code == 0
    assert cli("constrain", store, "-o", out).exit_code == 5
    assert cli("constrain", store, "-o", out, "--overwrite").exit_code == 0


def test_resampling_options(cli, store, tmp_path):
    out = tmp_path / "o.zarr"
    r = cli("constrain", store, "-o", out, "--slices", "6", "--pad-px", "4", "--probe-modes", "3")
    assert r.exit_code == 0, r.stderr
    st, before = load_state(open_store(out, "state")), _state()
    assert st.object.shape == (1, 6, 48, 48)
    np.testing.assert_allclose(st.slice_thickness, 4.0)
    np.testing.assert_allclose(st.positions, before.positions + 4)
    assert st.origin_px == (24.0, 24.0) and st.probe.shape[0] == 3
    assert [o["op"] for o in read_meta(open_store(out, "state")).operations] == [
        "resample_slices", "pad_object", "probe_modes"]


def test_resample_slices_conserves_projected_potential():
    st = _state(slices=3)
    for n, dz in ((6, None), (1, None), (2, None), (None, 6.0), (5, 6.0)):
        out = resample.resample_slices(st, n, dz)
        total_in = np.sum(np.angle(st.object), axis=1)
        total_out = np.angle(np.prod(out.object.astype(np.complex128), axis=1))
        np.testing.assert_allclose(np.angle(np.exp(1j * (total_out - total_in))), 0, atol=2e-5)
        np.testing.assert_allclose(np.prod(np.abs(out.object), axis=1), 0.95**3, rtol=1e-4)
    assert resample.resample_slices(st, None, 6.0).n_slices == 4  # round(24 / 6)
    thin = resample.resample_slices(st, 6, None)
    np.testing.assert_allclose(np.angle(thin.object[0, 0]), 0.5 * np.angle(st.object[0, 0]), atol=1e-5)


def test_pad_then_crop_is_identity_and_bad_crop_refused():
    from ptycli.errors import RecipeError

    st = _state()
    back = resample.pad_object(resample.pad_object(st, 5), -5)
    np.testing.assert_array_equal(back.object, st.object)
    np.testing.assert_allclose(back.positions, st.positions)
    with pytest.raises(RecipeError, match="cut probe windows"):
        resample.pad_object(st, -10)


def test_change_probe_modes_keeps_power_and_orthogonality():
    st = _state(modes=2)
    total = np.sum(np.abs(st.probe.astype(np.complex128)) ** 2)
    for n in (1, 4):
        p = resample.change_probe_modes(st, n).probe.astype(np.complex128)
        assert p.shape[0] == n and np.sum(np.abs(p) ** 2) == pytest.approx(total, rel=1e-5)
        gram = p.reshape(n, -1) @ p.reshape(n, -1).conj().T
        off = gram - np.diag(np.diag(gram))
        assert np.abs(off).max() < 1e-5 * np.abs(gram).max()
        assert np.all(np.diff(np.real(np.diag(gram))) <= 1e-6 * total)


def test_output_feeds_reconstruct(cli, tmp_path):
    from ptycli.stages import simulate

    data = simulate.run(tmp_path / "d.zarr", scan_shape=(4, 4), seed=2)
    assert cli("init", data, "-o", tmp_path / "s0.zarr").exit_code == 0
    r = cli("constrain", tmp_path / "s0.zarr", "-o", tmp_path / "s1.zarr", "--probe-modes", "2",
            "--apply", "fix_probe_intensity", "--apply", "phase_ramp_removal")
    assert r.exit_code == 0, r.stderr
    r = cli("reconstruct", data, tmp_path / "s1.zarr", "-o", tmp_path / "s2.zarr", "--iterations", "2",
            "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    g = open_store(tmp_path / "s2.zarr", "state")
    assert g["probe"].shape[0] == 2
    assert [p.stage for p in read_meta(g).provenance][-2:] == ["init", "constrain"]


def test_reads_the_state_path_from_stdin(cli, store, tmp_path):
    out = tmp_path / "o.zarr"
    r = cli("constrain", "-", "-o", out, "--apply", "probe_centre", input=f"{store}\n")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert [o["op"] for o in read_meta(open_store(out, "state")).operations] == ["probe_centre"]
