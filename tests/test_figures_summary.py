"""Figures: PNG size, non-blank content, and every panel of the summary layout present."""

import json

import numpy as np
import pytest
from PIL import Image
from test_export_data import make_data_store, make_running_store, make_state, make_state_store

from ptycli.stages.figures import DATA_PANELS, STATE_PANELS, checkpoint_figure, information_limit_px, store_figure


def _check_png(path, size):
    img = Image.open(path)
    panels = json.loads(img.text["ptycli-panels"])
    pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert img.size == size
    assert (pixels.min(axis=2) < 200).mean() > 0.05  # >5 % of the page is drawn, not white
    assert pixels.std() > 20
    return panels


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fig")
    data = make_data_store(tmp)
    return data, make_state_store(tmp, data=data)


def test_state_summary_has_every_panel_with_data(stores, tmp_path):
    panels = _check_png(store_figure(stores[1], tmp_path / "s.png"), (1600, 1150))
    assert list(panels) == list(STATE_PANELS)
    assert set(panels.values()) == {"ok"}


def test_summary_layout_keeps_panels_when_data_is_missing(tmp_path):
    st = make_state(tilts=False)
    st.positions_initial = None
    path = make_state_store(tmp_path, st, history=False)
    panels = _check_png(store_figure(path, tmp_path / "s.png"), (1600, 1150))
    assert list(panels) == list(STATE_PANELS)
    assert panels["tilts"] == panels["loss"] == panels["timings"] == "absent"
    assert panels["object phase"] == "ok"


def test_data_figure_has_pacbed_virtual_images_and_dose(stores, tmp_path):
    panels = _check_png(store_figure(stores[0], tmp_path / "d.png"), (1400, 420))
    assert list(panels) == list(DATA_PANELS) and set(panels.values()) == {"ok"}


def test_checkpoint_figure_from_memory_and_from_a_running_store(tmp_path):
    part = make_running_store(tmp_path)
    panels = _check_png(checkpoint_figure(part, tmp_path / "c.png"), (1600, 1150))
    assert panels["loss"] == "ok"  # history read from the checkpoint's attributes
    hist = {"loss": np.array([3.0, 2.0, 1.0]), "stage": np.zeros(3, int), "time_s": np.ones(3)}
    panels = _check_png(checkpoint_figure(make_state(), tmp_path / "m.png", history=hist), (1600, 1150))
    assert panels["loss"] == "ok" and panels["timings"] == "ok"


def test_information_limit_of_a_band_limited_image():
    rng = np.random.default_rng(0)
    n, cutoff = 128, 0.2
    u = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    img = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * (u <= cutoff)).real
    img += 1e-3 * rng.standard_normal((n, n))
    assert information_limit_px(img) == pytest.approx(cutoff, abs=0.03)


def test_inspect_figure_writes_pngs(cli, stores, tmp_path):
    for store, size in ((stores[0], (1400, 420)), (stores[1], (1600, 1150))):
        out = tmp_path / f"{store.stem}.png"
        r = cli("inspect", store, "--figure", out, "--json")
        assert r.exit_code == 0, r.stderr
        _check_png(out, size)
