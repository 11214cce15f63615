"""Summary figures (matplotlib, Agg only: no display needed on a cluster).

``store_figure`` draws a data store (PACBED with the BF disk and detector angles, virtual
BF/ADF images, dose) or a state store (a one-page summary). The summary's layout is fixed:
every panel is always drawn, and says "not in this store" when its data is missing, so
figures of different runs line up. The PNG's text chunk ``ptycli-panels`` lists the panels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeviceError, InputError, UsageError
from ..store.state import State
from .exportio import montage, write_atomic
from .viewdata import (bf_radius_px, calibration_of, checkpoint_group, dk_mrad_of, history_of, open_any,
                       scan_shape_of, scanned_box, stage_label, state_of)

STATE_PANELS = ("object phase", "slice montage", "power spectrum", "probe amplitude",
                "probe Fourier amplitude", "probe Fourier phase", "positions", "tilts", "loss", "timings")
DATA_PANELS = ("PACBED", "virtual BF", "virtual ADF", "dose")
ADF_INNER = 1.5  # inner ADF angle in units of the BF disk radius (clear of the disk edge)


def _figure(size_in: tuple[float, float]) -> Any:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # noqa: PLC0415

    return Figure(figsize=size_in, dpi=100, layout="constrained")


FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpeg", ".jpeg": "jpeg",
                  ".tif": "tiff", ".tiff": "tiff"}


def figure_format(path: str | Path) -> str:
    """The image format a figure path's suffix names (a .jpg must hold JPEG, not PNG bytes)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise UsageError(f"{path}: cannot write a figure as {suffix or 'a file without a suffix'!r}; "
                         f"use {' '.join(FIGURE_FORMATS)}")
    return FIGURE_FORMATS[suffix]


def _save(fig: Any, out_png: Path, panels: dict[str, str], overwrite: bool = True) -> Path:
    fmt = figure_format(out_png)
    listed = json.dumps(panels)
    # each format has its own metadata keys; JPEG and TIFF take none through savefig
    meta = {"png": {"Software": "ptycli", "ptycli-panels": listed},
            "pdf": {"Creator": "ptycli", "Subject": f"ptycli-panels {listed}"},
            "svg": {"Creator": "ptycli", "Description": f"ptycli-panels {listed}"}}.get(fmt)
    return write_atomic(Path(out_png), overwrite, lambda tmp: fig.savefig(tmp, format=fmt, metadata=meta))


def _absent(ax: Any, title: str, why: str = "not in this store") -> str:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
    return "absent"


def _image(ax: Any, img: np.ndarray, title: str, cmap: str = "gray", extent: Any = None) -> Any:
    finite = img[np.isfinite(img)]
    vmin, vmax = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0, 1))
    im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", extent=extent)
    ax.set_title(title, fontsize=9)
    return im


# ----------------------------------------------------------------------------- entry points
def store_figure(store_path: str | Path, out_png: str | Path, **opts: Any) -> Path:
    """Figure of a store: data store → PACBED/virtual images/dose; state store → summary.

    opts: ``overwrite`` (default True: a figure is a view, regenerated freely), ``title``.
    """
    group, kind = open_any(store_path, allow_partial=bool(opts.get("allow_partial")))
    title = opts.get("title") or str(store_path)
    if kind == "data":
        return data_figure(group, out_png, title=title, overwrite=opts.get("overwrite", True))
    return state_figure(state_of(group), out_png, history=history_of(group), title=title,
                        overwrite=opts.get("overwrite", True))


def checkpoint_figure(source: State | str | Path, out_png: str | Path, *, history: dict | None = None,
                      title: str | None = None) -> Path:
    """Summary of a running reconstruction, for ``reconstruct --figures-every K``.

    ``source`` is the in-memory State (with ``history`` = {loss, stage, time_s} arrays) or
    the path of the running store (OUT.zarr.partial), whose ``checkpoint/`` is drawn.
    """
    if isinstance(source, State):
        label = title or f"iteration {source.iteration}"
        return state_figure(source, out_png, history=history or {}, title=label)
    import zarr  # noqa: PLC0415

    group = zarr.open_group(str(source), mode="r")
    ckpt = checkpoint_group(group)
    state = state_of(group if ckpt is None else ckpt)
    return state_figure(state, out_png, history=history_of(group),
                        title=title or f"{source} (iteration {state.iteration})")


def summary_path(out: str | Path) -> Path:
    """Where ``reconstruct -o OUT.zarr --figures-every K`` draws: OUT.summary.png beside the store."""
    return Path(out).with_suffix(".summary.png")


class FiguresEvery:
    """Loop observer of ``reconstruct --figures-every K``: the summary of the running state
    every K iterations, replaced atomically at ``path`` (a viewer never sees half a PNG).

    ``on_error(message)`` hears a figure that could not be written (a full disk): the
    reconstruction goes on, since losing hours of work to a progress picture would be worse.
    """

    def __init__(self, path: str | Path, every: int, on_error: Any = None, title: str = "reconstruct (running)"):
        if every < 1:
            raise UsageError(f"--figures-every {every}: expected a number of iterations >= 1")
        figure_format(path)
        self.path, self.every, self.on_error, self.title = Path(path), int(every), on_error, title

    def on_state(self, state: State, history: Any) -> None:
        done = len(history.loss)
        if done == 0 or done % self.every:
            return
        from ..backend import to_numpy  # noqa: PLC0415
        from ..store.state import array_fields  # noqa: PLC0415

        host = state.copy(**{f: to_numpy(getattr(state, f)) for f in array_fields()
                             if getattr(state, f) is not None})
        hist = {"loss": np.asarray(history.loss), "stage": np.asarray(history.stage),
                "time_s": np.asarray(history.time_s)}
        try:
            checkpoint_figure(host, self.path, history=hist, title=self.title)  # the iteration is added
        except (OSError, UsageError, InputError, DeviceError) as exc:
            if self.on_error is None:
                raise
            self.on_error(f"{self.path}: figure not written at iteration {done} ({exc})")


# ----------------------------------------------------------------------------- state summary
def state_figure(state: State, out_png: str | Path, *, history: dict | None = None, title: str = "",
                 overwrite: bool = True) -> Path:
    fig = _figure((16, 11.5))
    grid = fig.add_gridspec(3, 4)
    axes = [fig.add_subplot(grid[i // 4, i % 4]) for i in range(8)]
    axes += [fig.add_subplot(grid[2, 0:2]), fig.add_subplot(grid[2, 2:4])]
    history = history or {}
    drawers = (_object_phase, _slice_montage, _power_spectrum, _probe_real, _probe_fourier_amp,
               _probe_fourier_phase, _positions, _tilts, _loss, _timings)
    panels = {}
    for name, ax, draw in zip(STATE_PANELS, axes, drawers):
        panels[name] = draw(ax, state, history) or "ok"
    fig.suptitle(f"{title}  ·  iteration {state.iteration}  ·  dx = {state.dx_a:.4g} Å", fontsize=11)
    return _save(fig, Path(out_png), panels, overwrite)


def _phase_crop(state: State) -> np.ndarray:
    y0, y1, x0, x1 = scanned_box(state)
    return np.angle(np.asarray(state.object)[0, :, y0:y1, x0:x1])


def _object_phase(ax: Any, state: State, _h: dict) -> None:
    ph = _phase_crop(state).sum(axis=0)
    h, w = ph.shape
    im = _image(ax, ph, "object phase (depth sum, scanned area)",
                extent=(0, w * state.dx_a, h * state.dx_a, 0))
    ax.set_xlabel("x [Å]", fontsize=8)
    ax.set_ylabel("y [Å]", fontsize=8)
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="rad")


def _slice_montage(ax: Any, state: State, _h: dict) -> str | None:
    ph = _phase_crop(state)
    if ph.shape[0] < 2:
        return _absent(ax, "slice montage", "single slice")
    _image(ax, montage(ph[:16]), f"slice montage ({min(16, ph.shape[0])} of {ph.shape[0]} slices)")
    ax.set_axis_off()
    return None


def information_limit_px(img: np.ndarray, snr: float = 3.0) -> float | None:
    """Highest spatial frequency (cycles/px) whose ring-averaged power exceeds ``snr`` times
    the noise floor (median power of the outermost rings, 0.45–0.5 cycles/px)."""
    win = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    power = np.abs(np.fft.fft2((img - img.mean()) * win)) ** 2
    n = min(img.shape)
    u = np.hypot(np.fft.fftfreq(img.shape[0])[:, None], np.fft.fftfreq(img.shape[1])[None, :])
    ring = np.rint(u * n).astype(int).ravel()
    keep = ring <= n // 2
    radial = np.bincount(ring[keep], power.ravel()[keep]) / np.maximum(np.bincount(ring[keep]), 1)
    freq = np.arange(radial.size) / n
    floor = np.median(radial[freq >= 0.45]) if np.any(freq >= 0.45) else radial[-1]
    above = np.nonzero(radial[1:] > snr * floor)[0]
    return float(freq[above[-1] + 1]) if above.size and floor > 0 else None


def _power_spectrum(ax: Any, state: State, _h: dict) -> None:
    from matplotlib.patches import Circle  # noqa: PLC0415

    ph = _phase_crop(state).sum(axis=0)
    win = np.outer(np.hanning(ph.shape[0]), np.hanning(ph.shape[1]))
    ps = np.log10(np.abs(np.fft.fftshift(np.fft.fft2((ph - ph.mean()) * win))) ** 2 + 1e-12)
    kmax = 0.5 / state.dx_a
    _image(ax, ps, "power spectrum (log)", cmap="magma", extent=(-kmax, kmax, kmax, -kmax))
    ax.set_xlabel("k [1/Å]", fontsize=8)
    limit = information_limit_px(ph)
    if limit is not None:
        k = limit / state.dx_a
        ax.add_patch(Circle((0, 0), k, fill=False, color="cyan", lw=1.2,
                            label=f"information limit {1 / k:.3g} Å"))
    if state.semiangle_mrad:
        from ..store.calibration import wavelength_a  # noqa: PLC0415

        k2a = 2 * state.semiangle_mrad * 1e-3 / wavelength_a(state.energy_kev * 1e3)
        if k2a < kmax * 1.42:
            ax.add_patch(Circle((0, 0), k2a, fill=False, color="white", ls="--", lw=1,
                                label=f"2α/λ ({1 / k2a:.3g} Å)"))
    if ax.patches:
        ax.legend(loc="lower left", fontsize=7, framealpha=0.6)


def _mode_titles(state: State) -> str:
    powers = np.sum(np.abs(np.asarray(state.probe)) ** 2, axis=(-2, -1))
    frac = powers / powers.sum()
    return ", ".join(f"{100 * f:.1f}%" for f in frac[:8])


def _probe_real(ax: Any, state: State, _h: dict) -> None:
    p = np.abs(np.asarray(state.probe)[:8])
    _image(ax, montage(p), f"probe amplitude, mode powers {_mode_titles(state)}", cmap="viridis")
    ax.set_axis_off()


def _probe_spectrum(state: State) -> np.ndarray:
    # The stored probe is centred (P = fftshift(F⁻¹ψ), physics.md §3.4): undo that shift so
    # the spectrum shows the aperture phase -χ, not a checkerboard from the centring.
    p = np.fft.ifftshift(np.asarray(state.probe)[:8], axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(p, norm="ortho"), axes=(-2, -1))


def _probe_fourier_amp(ax: Any, state: State, _h: dict) -> None:
    _image(ax, montage(np.abs(_probe_spectrum(state))), "probe Fourier amplitude", cmap="viridis")
    ax.set_axis_off()


def _probe_fourier_phase(ax: Any, state: State, _h: dict) -> None:
    spec = _probe_spectrum(state)
    amp = np.abs(spec)
    phase = np.where(amp > 0.05 * amp.max(axis=(-2, -1), keepdims=True), np.angle(spec), np.nan)
    im = ax.imshow(montage(phase), cmap="twilight", vmin=-np.pi, vmax=np.pi, interpolation="nearest")
    ax.set_title("probe Fourier phase (inside the aperture)", fontsize=9)
    ax.set_axis_off()
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="rad")


def _positions(ax: Any, state: State, _h: dict) -> str | None:
    pos = np.asarray(state.positions, dtype=np.float64) * state.dx_a
    ax.set_title("positions: initial (grey) → refined", fontsize=9)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    if state.positions_initial is None:
        ax.plot(pos[:, 1], pos[:, 0], ".", ms=2)
        return "ok (no initial positions)"
    init = np.asarray(state.positions_initial, dtype=np.float64) * state.dx_a
    d = pos - init
    step = _typical_step(init)
    rms = float(np.sqrt(np.mean(np.sum(d**2, 1))))
    gain = 0.5 * step / rms if rms > 0 else 1.0  # the rms arrow is half a scan step long
    ax.plot(init[:, 1], init[:, 0], ".", color="0.6", ms=2)
    ax.quiver(init[:, 1], init[:, 0], d[:, 1] * gain, -d[:, 0] * gain, angles="uv", scale_units="xy",
              scale=1, color="C3", width=0.004)
    ax.set_xlabel(f"x [Å]; arrows ×{gain:.3g}, rms shift {rms:.3g} Å", fontsize=8)
    return None


def _typical_step(pos: np.ndarray) -> float:
    if len(pos) < 2:
        return 1.0
    d = np.sqrt(np.sum(np.diff(pos, axis=0) ** 2, axis=1))
    return float(np.median(d[d > 0])) if np.any(d > 0) else 1.0


def _tilts(ax: Any, state: State, _h: dict) -> str | None:
    if state.tilts is None:
        return _absent(ax, "tilts", "tilts not refined")
    t = np.asarray(state.tilts, dtype=np.float64)
    pos = np.asarray(state.positions, dtype=np.float64) * state.dx_a
    sc = ax.scatter(pos[:, 1], pos[:, 0], c=np.hypot(t[:, 0], t[:, 1]), s=14, cmap="plasma")
    ax.quiver(pos[:, 1], pos[:, 0], t[:, 1], -t[:, 0], color="k", width=0.003)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_title("tilt map (|t| colour, direction arrows)", fontsize=9)
    ax.figure.colorbar(sc, ax=ax, shrink=0.8, label="mrad")
    return None


def _loss(ax: Any, _s: State, history: dict) -> str | None:
    loss = np.asarray(history.get("loss", []), dtype=np.float64)
    if loss.size == 0:
        return _absent(ax, "loss per iteration", "no history/loss")
    stage = np.asarray(history.get("stage", np.zeros(loss.size)), dtype=int)[: loss.size]
    names = list(history.get("attrs", {}).get("stages", []))
    it = np.arange(1, loss.size + 1)
    for k in np.unique(stage):
        sel = stage == k
        ax.plot(it[sel], loss[sel], ".-", ms=3, label=stage_label(names, int(k)))
    if np.all(loss > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration", fontsize=8)
    ax.set_title("loss per iteration, per stage", fontsize=9)
    ax.legend(fontsize=7)
    return None


def _timings(ax: Any, _s: State, history: dict) -> str | None:
    raw = history.get("attrs", {}).get("timings") or {}
    timings = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float))}
    t = np.asarray(history.get("time_s", []), dtype=np.float64)
    if not timings and t.size == 0:
        return _absent(ax, "timings", "no timings recorded")
    where = f" on {raw['device']}" if isinstance(raw.get("device"), str) else ""
    if len(timings) > 1 or t.size == 0:  # a breakdown (forward, update, ...) says more than one total
        ax.barh(list(timings), list(timings.values()), color="C0")
        ax.set_xlabel("s", fontsize=8)
        title = f"timings{where} (total {sum(timings.values()):.3g} s)"
    else:
        ax.plot(np.arange(1, t.size + 1), t, ".-")
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("s per iteration", fontsize=8)
        title = f"time per iteration{where} (total {t.sum():.3g} s)"
    ax.set_title(title, fontsize=9)
    return None


# ----------------------------------------------------------------------------- data figure
def data_figure(group: Any, out_png: str | Path, *, title: str = "", overwrite: bool = True) -> Path:
    cal = calibration_of(group)
    arr = group["patterns"]
    m = arr.shape[-1]
    r_bf = bf_radius_px(cal) or _bf_radius_from_data(arr)
    ky, kx = np.mgrid[0:arr.shape[-2], 0:m] - np.array([arr.shape[-2] // 2, m // 2])[:, None, None]
    rho = np.hypot(ky, kx)
    bf, adf, total, mean = _virtual_images(arr, rho <= r_bf, rho >= ADF_INNER * r_bf)
    fig = _figure((14, 4.2))
    axes = fig.subplots(1, 4)
    _pacbed(axes[0], mean, cal, r_bf)
    shape = scan_shape_of(group, arr.shape[0])
    panels = {"PACBED": "ok"}
    for ax, img, name in zip(axes[1:], (bf, adf, total), DATA_PANELS[1:]):
        panels[name] = _scan_image(ax, img, shape, name, cal)
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(out_png), panels, overwrite)


def _bf_radius_from_data(arr: Any) -> float:
    mean = np.asarray(arr[: min(64, arr.shape[0])], dtype=np.float64).mean(0)
    return float(np.sqrt(np.sum(mean > 0.5 * mean.max()) / np.pi))


def _virtual_images(arr: Any, bf_mask: np.ndarray, adf_mask: np.ndarray):
    """Virtual BF, ADF, total counts per position and the mean pattern, read in slabs."""
    n = arr.shape[0]
    step = max(1, arr.chunks[0])
    bf, adf, total = np.empty(n), np.empty(n), np.empty(n)
    acc = np.zeros(arr.shape[1:], dtype=np.float64)
    for i in range(0, n, step):
        block = np.asarray(arr[i:i + step], dtype=np.float64)
        bf[i:i + step] = np.sum(block * bf_mask, axis=(1, 2))
        adf[i:i + step] = np.sum(block * adf_mask, axis=(1, 2))
        total[i:i + step] = block.sum(axis=(1, 2))
        acc += block.sum(axis=0)
    return bf, adf, total, acc / n


def _pacbed(ax: Any, mean: np.ndarray, cal: Any, r_bf: float) -> None:
    from matplotlib.patches import Circle  # noqa: PLC0415

    dk = dk_mrad_of(cal)
    unit, s = ("mrad", dk) if dk else ("px", 1.0)
    h, w = mean.shape
    extent = (-(w // 2) * s, (w - w // 2) * s, (h - h // 2) * s, -(h // 2) * s)
    _image(ax, np.log10(mean + 1), "PACBED (log)", cmap="inferno", extent=extent)
    ax.add_patch(Circle((0, 0), r_bf * s, fill=False, color="cyan", lw=1.2,
                        label=f"BF disk α = {r_bf * s:.3g} {unit}"))
    ax.add_patch(Circle((0, 0), ADF_INNER * r_bf * s, fill=False, color="white", ls="--", lw=1,
                        label=f"ADF from {ADF_INNER * r_bf * s:.3g} {unit} to the edge "
                              f"({(min(h, w) // 2) * s:.3g} {unit})"))
    ax.set_xlabel(f"k_x [{unit}]", fontsize=8)
    ax.set_ylabel(f"k_y [{unit}]", fontsize=8)
    ax.legend(loc="lower left", fontsize=6, framealpha=0.6)


def _scan_image(ax: Any, values: np.ndarray, shape: Any, name: str, cal: Any) -> str:
    if shape is None:
        ax.plot(values, lw=0.8)
        ax.set_title(f"{name} (no raster shape: per position)", fontsize=9)
        return "ok (1D)"
    img = values.reshape(shape)
    step = cal.scan_step_a
    # drawn on the scan's own axes in Å, so a scale bar can be read off every panel
    extent = (0, shape[1] * step[1], shape[0] * step[0], 0) if step else None
    if name == "dose":
        if step:
            img = img / (step[0] * step[1])
        label = "e/Å²" if step else "counts"
        mean = float(np.mean(img))
        im = _image(ax, img, f"dose: mean {mean:.3g} {label}", cmap="viridis", extent=extent)
        bar = ax.figure.colorbar(im, ax=ax, shrink=0.8, label=label)
        bar.formatter.set_useOffset(False)  # a near-uniform dose reads as e.g. 2.78e6, not +offset
    else:
        im = _image(ax, img, name, extent=extent)
        ax.figure.colorbar(im, ax=ax, shrink=0.8, label="counts")
    ax.set_xticks([])
    ax.set_yticks([])
    if step:
        scale_bar(ax, shape[1] * step[1])
    return "ok"


def scale_bar(ax: Any, width_a: float) -> None:
    """A white bar of 1, 2 or 5 × 10ⁿ Å (about a quarter of the width) on an image drawn in Å."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar  # noqa: PLC0415

    from .exportio import nice_length  # noqa: PLC0415

    length = nice_length(0.25 * width_a)
    label = f"{length:g} Å" if length >= 1 else f"{length * 100:g} pm"
    ax.add_artist(AnchoredSizeBar(ax.transData, length, label, "lower left", pad=0.4, color="white",
                                  frameon=False, size_vertical=0.015 * width_a, fontproperties={"size": 7}))


# ----------------------------------------------------------------------------- compare
def compare_figure(result: dict[str, Any], out_png: str | Path, overwrite: bool = False) -> Path:
    """A, registered B, their difference and the FRC with the 1/7 and half-bit curves."""
    a, b = result["images"]
    fig = _figure((15, 4))
    axes = fig.subplots(1, 4)
    _image(axes[0], a, "A")
    _image(axes[1], b, f"B registered (shift {result['shift_px'][0]:.2f}, {result['shift_px'][1]:.2f} px)")
    diff = _image(axes[2], a - b, f"A − B (rmse {result['rmse']:.3g})", cmap="RdBu_r")
    lim = float(np.nanmax(np.abs(diff.get_clim())))
    diff.set_clim(-lim, lim)  # symmetric: white is no difference
    fig.colorbar(diff, ax=axes[2], shrink=0.8, label="rad")
    frc = result["frc"]
    x = frc["freq_inv_a"] or frc["freq_px"]
    axes[3].plot(x[1:], frc["frc"][1:], label="FRC")
    axes[3].plot(x[1:], frc["half_bit"][1:], "--", label="half-bit")
    axes[3].axhline(1 / 7, color="k", ls=":", label="1/7")
    axes[3].set_xlabel("k [1/Å]" if frc["freq_inv_a"] else "k [cycles/px]", fontsize=8)
    axes[3].set_title(f"correlation {result['correlation']:.4f}", fontsize=9)
    axes[3].legend(fontsize=7)
    for ax in axes[:3]:
        ax.set_axis_off()
    panels = {"A": "ok", "B": "ok", "difference": "ok", "FRC": "ok"}
    return _save(fig, Path(out_png), panels, overwrite)
