"""compare_stores: truth from the data store found automatically, other stores, images, CLI."""

import json

import numpy as np
import pytest
from PIL import Image
from test_export_data import DX_A, make_data_store, make_object, make_state, make_state_store

from ptycli.errors import InputError, StoreError
from ptycli.stages.compare import compare_stores
from ptycli.stages.frc import fourier_shift
from ptycli.stages.viewdata import scanned_box


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    data = make_data_store(tmp)
    return tmp, data, make_state_store(tmp, data=data)


def test_state_equal_to_truth_found_through_its_data_attribute(stores):
    _, data, state = stores
    res = compare_stores(state)
    assert res["reference"] == "truth" and res["b"] == str(data)
    assert res["correlation"] == pytest.approx(1.0, abs=1e-9)
    assert min(res["frc"]["frc"][1:]) > 0.999
    assert res["region_px"] == list(scanned_box(make_state()))
    st = make_state()  # positions were perturbed by N(0, 0.3 px) in make_state
    d = (st.positions - st.positions.mean(0)) - (st.positions_initial - st.positions_initial.mean(0))
    assert res["positions"]["rmse_a"] == pytest.approx(DX_A * np.sqrt(np.mean(np.sum(d**2, 1))), rel=1e-9)
    assert res["positions"]["initial_rmse_a"] == pytest.approx(0.0, abs=1e-12)
    assert res["probe"]["intensity_correlation"] > 0.99


def test_shifted_offset_reconstruction_is_registered_against_truth(tmp_path):
    # a realistic scanned area (~60 px): registration of crops needs room around the shift
    truth = make_object((112, 112)).astype(np.complex128)
    yy, xx = np.meshgrid(np.arange(6), np.arange(5), indexing="ij")
    pos = np.stack([yy.ravel() * 12.0 + 26, xx.ravel() * 15.0 + 26], 1)
    data = make_data_store(tmp_path, obj=truth.astype(np.complex64), positions=pos)
    moved = fourier_shift(truth, (3.4, -1.7))
    moved[:, 0] *= np.exp(1j * 0.6)  # a constant phase offset (in the first slice)
    path = make_state_store(tmp_path, make_state(moved.astype(np.complex64), positions=pos), data=data)
    res = compare_stores(path)
    # shift_px is B (the truth) relative to A (the moved reconstruction)
    assert res["shift_px"] == pytest.approx([-3.4, 1.7], abs=0.05)
    assert res["phase_offset"] == pytest.approx(-0.6, abs=0.02)
    assert res["correlation"] > 0.99


def test_two_state_stores_and_a_reference_image(stores):
    tmp, _, state = stores
    assert compare_stores(state, state)["correlation"] == pytest.approx(1.0, abs=1e-9)
    phase = np.angle(make_object()[0]).sum(0)
    np.save(tmp / "ref.npy", phase)
    res = compare_stores(state, tmp / "ref.npy")
    assert res["reference"] == "image" and res["correlation"] == pytest.approx(1.0, abs=1e-6)


def test_data_store_without_truth_is_an_input_error(stores, tmp_path):
    data = make_data_store(tmp_path, truth=False)
    state = make_state_store(tmp_path, data=data)
    with pytest.raises(StoreError, match="truth"):
        compare_stores(state)


def test_cli_compare_json_and_figure(cli, stores, tmp_path):
    _, data, state = stores
    fig = tmp_path / "cmp.png"
    r = cli("compare", state, data, "--json", "--figure", fig)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["correlation"] == pytest.approx(1.0, abs=1e-9) and "images" not in doc
    assert set(doc["resolution_a"]) == {"one_seventh", "half_bit"}
    assert np.asarray(Image.open(fig)).std() > 10
    r = cli("compare", state)
    assert r.exit_code == 0 and float(r.stdout) == pytest.approx(1.0)


def test_truth_is_found_through_the_data_store_provenance(stores, tmp_path):
    # preprocess writes a new data store (no truth/) whose inputs name the simulated one
    from ptycli.store.io import StoreWriter, input_ref, open_store

    _, sim, _ = stores
    derived = tmp_path / "data.zarr"
    with StoreWriter(derived, kind="data", stage="preprocess", inputs=[input_ref(open_store(sim), sim)]) as w:
        w.array("patterns", np.ones((30, 16, 16), np.float32))
        w.finalize()
    state = make_state_store(tmp_path, data=derived)
    res = compare_stores(state)
    assert res["b"] == str(sim) and res["correlation"] == pytest.approx(1.0, abs=1e-9)


def test_reference_image_of_another_field_and_pixel(stores, cli):
    """An external reference on its own grid: every other pixel (2·dx) of a window that
    starts 10 px up and 6 px left of A's object. Before --b-pixel-size/--b-origin it could
    only be refused (shape matches neither A's object nor its scanned area)."""
    tmp, _, state = stores
    phase = np.angle(make_object()[0]).sum(0).astype(np.float64)
    big = np.pad(phase, ((10, 0), (6, 0)), mode="reflect")  # B's field reaches past A's
    np.save(tmp / "coarse.npy", big[::2, ::2])
    with pytest.raises(InputError, match="--b-pixel-size"):
        compare_stores(state, tmp / "coarse.npy")
    res = compare_stores(state, tmp / "coarse.npy", b_pixel_a=2 * DX_A, b_origin_a=(-10 * DX_A, -6 * DX_A))
    assert res["correlation"] > 0.99
    assert res["shift_px"] == pytest.approx([0.0, 0.0], abs=0.1)
    out = cli("compare", state, tmp / "coarse.npy", "--b-pixel-size", 2 * DX_A,
              "--b-origin", f"{-10 * DX_A},{-6 * DX_A}", "--json")
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["correlation"] == pytest.approx(res["correlation"])
    bad = cli("compare", state, tmp / "coarse.npy", "--b-origin", "1;2")
    assert bad.exit_code == 2 and "expected Y,X" in bad.stderr
    far = cli("compare", state, tmp / "coarse.npy", "--b-origin", "1e4,0")
    assert far.exit_code == 4 and "covers 0x" in far.stderr


def test_scale_fits_a_as_gain_times_b(stores, cli):
    """--scale reports g with A ≈ g·B (the help said B ≈ g·A)."""
    tmp, _, state = stores
    phase = np.angle(make_object()[0]).sum(0)
    np.save(tmp / "half.npy", 0.5 * phase)
    assert compare_stores(state, tmp / "half.npy", scale=True)["scale"] == pytest.approx(2.0, rel=1e-3)
    help_text = " ".join(cli("compare", "--help").stdout.split())
    assert "A ≈ g·B" in help_text and "B ≈ g·A" not in help_text
