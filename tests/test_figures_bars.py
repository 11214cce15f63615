"""Colour bars and scale bars on figures and PNG exports; `reconstruct --figures-every K`."""

import json
import types

import numpy as np
import pytest
from PIL import Image
from test_export_data import make_data_store, make_state, make_state_store

from ptycli.stages import figures
from ptycli.stages.export import export


def _capture(monkeypatch):
    """Keep the matplotlib Figure that a figure function saves, to look at its axes."""
    seen = {}
    real = figures._save

    def save(fig, out, panels, overwrite=True):
        seen["fig"] = fig
        return real(fig, out, panels, overwrite)

    monkeypatch.setattr(figures, "_save", save)
    return seen


def _colorbar_labels(fig):
    return [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]


def test_png_export_has_a_colour_bar_in_the_values_unit(tmp_path):
    store = make_state_store(tmp_path)
    out = export(store, tmp_path / "p.png", what="object-phase")
    img = np.asarray(Image.open(out).convert("L"), dtype=np.float64)
    plain = np.load(export(store, tmp_path / "p.npy", what="object-phase"))
    zoom = int(np.ceil(256 / min(plain.shape)))
    assert img.shape == (plain.shape[0] * zoom, plain.shape[1] * zoom + 90)  # image, then the bar strip
    bar = img[:, plain.shape[1] * zoom + 14]  # a column through the colour bar
    inside = bar[int(0.1 * img.shape[0]):int(0.9 * img.shape[0])]
    assert np.ptp(inside) > 200 and np.all(np.diff(inside) <= 1)  # gray ramp, dark at the bottom


def test_data_figure_virtual_images_have_colour_and_scale_bars(monkeypatch, tmp_path):
    seen = _capture(monkeypatch)
    figures.store_figure(make_data_store(tmp_path), tmp_path / "d.png")
    fig = seen["fig"]
    assert _colorbar_labels(fig).count("counts") == 2  # virtual BF and ADF
    titled = {a.get_title(): a for a in fig.axes}
    for name in ("virtual BF", "virtual ADF"):
        bars = [t for t in titled[name].artists if type(t).__name__ == "AnchoredSizeBar"]
        assert len(bars) == 1 and bars[0].txt_label.get_text() == "50 pm"  # 0.5 Å of a 3.75 Å scan
        x0, x1 = titled[name].get_xlim()
        assert x1 - x0 == pytest.approx(5 * 0.75)  # the scan's width in Å (5 steps of 0.75 Å)


def test_compare_difference_panel_has_a_symmetric_colour_bar(monkeypatch, tmp_path):
    seen = _capture(monkeypatch)
    rng = np.random.default_rng(0)
    a, b = rng.random((32, 32)), rng.random((32, 32))
    frc = {"freq_inv_a": list(np.linspace(0, 1, 16)), "freq_px": None, "frc": list(np.ones(16)),
           "half_bit": list(np.full(16, 0.2))}
    result = {"images": (a, b), "shift_px": [0.0, 0.0], "rmse": 0.4, "correlation": 0.1, "frc": frc}
    figures.compare_figure(result, tmp_path / "c.png")
    fig = seen["fig"]
    assert _colorbar_labels(fig) == ["rad"]
    diff = [a for a in fig.axes if a.get_title().startswith("A − B")][0]
    lo, hi = diff.images[0].get_clim()
    assert lo == pytest.approx(-hi) and hi >= np.abs(a - b).max() * 0.9


def _history(n):
    return types.SimpleNamespace(loss=list(np.linspace(2, 1, n)), stage=[0] * n, time_s=[0.1] * n)


def test_figures_every_k_draws_the_running_state_every_k_iterations(tmp_path):
    out = tmp_path / "run.summary.png"
    obs = figures.FiguresEvery(out, 2)
    st = make_state()
    obs.on_state(st, _history(1))
    assert not out.exists()
    obs.on_state(st, _history(2))
    first = out.stat().st_mtime_ns
    panels = json.loads(Image.open(out).text["ptycli-panels"])
    assert panels["loss"] == "ok" and panels["object phase"] == "ok"
    obs.on_state(st, _history(3))
    assert out.stat().st_mtime_ns == first  # not a multiple of K: not drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.summary.png"]  # written atomically, no temp file


def test_figures_every_reports_an_unwritable_figure_and_goes_on(tmp_path):
    heard = []
    obs = figures.FiguresEvery(tmp_path / "missing" / "r.summary.png", 1, on_error=heard.append)
    obs.on_state(make_state(), _history(1))
    assert len(heard) == 1 and "figure not written at iteration 1" in heard[0]


def test_cli_reconstruct_figures_every_adds_the_figure_observer(cli, monkeypatch, tmp_path):
    from ptycli.stages import reconstruct

    seen = {}

    def fake_run(data, state, out, **kw):
        seen["observers"] = kw["observers"]
        return {"output": str(out)}

    monkeypatch.setattr(reconstruct, "run", fake_run)
    r = cli("reconstruct", tmp_path / "d.zarr", tmp_path / "s.zarr", "-o", tmp_path / "r.zarr",
            "--figures-every", "3")
    assert r.exit_code == 0, r.stderr
    drawn = [o for o in seen["observers"] if isinstance(o, figures.FiguresEvery)]
    assert len(drawn) == 1 and drawn[0].every == 3 and drawn[0].path == tmp_path / "r.summary.png"
