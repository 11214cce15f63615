"""Refinable variables beyond object and probe, as one differentiable evaluation.

``Evaluator(params, ctx, state)`` turns the state into a dict of variables (``pack``),
evaluates the loss and every requested gradient over a set of positions through
``physics.model.ForwardModel`` (in memory chunks), adds the cost regularisers and the scan
regularisers, and writes variables back (``unpack``). The gradient and lbfgs engines
share it. Variables (units):

    object (transmission), probe (sqrt counts; through P_ref when aberrations are refined),
    positions (object px, J×2), tilts (mrad, J×2, per position), tilt_global (mrad, 2),
    thickness (Å, one shared Δz), aberrations (rad of phase at the aperture edge per
    Cartesian coefficient, physics/aberration_probe.py), beam_current (J, relative),
    background (b = sqrt(counts per detector pixel), M×N: background = b² stays ≥ 0 with
    no projection, which would break L-BFGS pairs), detector_blur (σ, detector px).

Aberrations and tilt_global are increments from the current state (both maps are groups:
re-basing at zero each iteration changes nothing), so the state holds the absolute values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..physics import aberration_probe as abp
from ..physics import electron
from ..physics.detector import BlurredObjective
from ..physics.model import ForwardModel
from . import noise as noise_mod
from . import scan_regularisers as scan_reg

VARIABLES = ("object", "probe", "positions", "tilts", "tilt_global", "thickness", "aberrations",
             "beam_current", "background", "detector_blur")
HOST = ("positions", "tilts", "tilt_global", "thickness", "aberrations", "beam_current", "detector_blur")
PER_POSITION = ("positions", "tilts", "beam_current")
# A refined background starts at least at this fraction of the mean counts per pixel: its
# square-root parametrisation has zero gradient at exactly 0.
BACKGROUND_FLOOR = 1e-3
MODEL_GRADS = {"object": "object", "probe": "probe", "positions": "positions", "tilts": "tilts",
               "tilt_global": "tilts", "thickness": "thickness", "aberrations": "probe",
               "beam_current": "beam_scale", "background": "background"}


def active_variables(refine: Any, it: int) -> tuple[str, ...]:
    return tuple(name for name in VARIABLES if getattr(refine, name).active(it))


class Evaluator:
    """Loss and gradients of every refinable variable for one engine's run."""

    def __init__(self, params: Any, ctx: Any, state: Any):
        self.params, self.ctx = params, ctx
        xp = ctx.xp
        self.model = ForwardModel(state.window, state.dx_a, state.energy_kev * 1e3)
        self.probe_scale = float(backend.to_numpy(xp.sqrt(xp.mean(xp.abs(state.probe) ** 2))))
        self.ab_names = abp.cartesian_names(params.aberration_terms)
        semi = state.semiangle_mrad or _support_semiangle(state)
        self.ab_basis, self.ab_norms = abp.basis(state.window, state.dx_a, self.model.wavelength_a, self.ab_names,
                                                 semi, xp=xp, dtype=str(np.dtype(ctx.real_dtype)))
        self.regularisers, self.scan_terms = split_regularisers(params.regularisers)
        self.n_evals = 0.0  # full-data evaluations (a batch of B positions counts B/J)

    # ------------------------------------------------------------------ state <-> variables
    def pack(self, state: Any, names: tuple[str, ...]) -> dict[str, Any]:
        """Current values of ``names`` (increments are zero for aberrations / tilt_global)."""
        ensure_fields(state, self.ctx)
        out: dict[str, Any] = {}
        for name in names:
            if name == "aberrations":
                out[name] = np.zeros(len(self.ab_names))
            elif name == "tilt_global":
                out[name] = np.zeros(2)
            elif name == "thickness":
                out[name] = np.array([np.mean(backend.to_numpy(state.slice_thickness))], dtype=np.float64)
            elif name == "detector_blur":
                out[name] = np.array([state.detector_blur_px], dtype=np.float64)
            elif name == "background":  # b = sqrt(background): non-negative without a projection
                floor = BACKGROUND_FLOOR * self.ctx.n_e / (state.window[0] * state.window[1])
                out[name] = self.ctx.xp.sqrt(self.ctx.xp.clip(state.background, floor, None))
            elif name in HOST:
                out[name] = np.array(backend.to_numpy(getattr(state, name)), dtype=np.float64)
            else:
                out[name] = getattr(state, name)
        return out

    def unpack(self, state: Any, x: dict[str, Any]) -> None:
        """Write variables into ``state`` (absolute values; increments applied)."""
        if "aberrations" in x:
            state.aberrations = abp.updated_aberrations(state.aberrations, self.ab_names, x["aberrations"],
                                                        self.ab_norms)
        state.probe = self.probe_of(state, x)
        for name in ("object", "positions", "beam_current"):
            if name in x:
                setattr(state, name, x[name])
        if "background" in x:
            state.background = x["background"] * x["background"]
        tilts = self.tilts_of(state, x)
        if tilts is not None:
            state.tilts = tilts
        if "thickness" in x:
            state.slice_thickness = np.full(state.n_slices, x["thickness"][0], dtype=np.float32)
        if "detector_blur" in x:
            state.detector_blur_px = float(abs(x["detector_blur"][0]))

    def probe_of(self, state: Any, x: dict[str, Any]) -> Any:
        ref = x.get("probe", state.probe)
        if "aberrations" not in x or not np.any(x["aberrations"]):
            return ref
        coeffs = backend.to_device(x["aberrations"], self.ctx.xp, dtype=self.ctx.real_dtype)
        return abp.apply(abp.spectrum(ref), coeffs, self.ab_basis)

    def tilts_of(self, state: Any, x: dict[str, Any]) -> Any:
        if "tilts" not in x and "tilt_global" not in x:
            return None
        base = x["tilts"] if "tilts" in x else np.asarray(backend.to_numpy(state.tilts), dtype=np.float64)
        return base + x.get("tilt_global", np.zeros(2))[None, :]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, state: Any, x: dict[str, Any], idx: np.ndarray, data: Any, it: int,
                 *, chunk: int | None = None, reg_fraction: float | None = None) -> tuple[float, float, dict[str, Any]]:
        """(data loss, total loss incl. regularisers, gradients of the names in x) on ``idx``.

        ``data`` holds the patterns of ``idx`` in order. Regularisers are weighted by
        ``reg_fraction`` (default len(idx)/J, so one pass over all groups adds each term once).
        """
        xp = self.ctx.xp
        probe = self.probe_of(state, x)
        obj = x.get("object", state.object)
        want = tuple(sorted({MODEL_GRADS[n] for n in x if n in MODEL_GRADS}))
        sums = _Accumulator(xp, len(state.positions))
        chunk = chunk or len(idx)
        loss_total = 0.0
        for a in range(0, len(idx), chunk):
            sel = idx[a:a + chunk]
            loss, grads, blur_grad = self._chunk(state, x, probe, obj, sel, data[a:a + chunk], want)
            loss_total += backend.scalar(xp.sum(loss))
            sums.add(grads, sel, blur_grad)
        fraction = len(idx) / len(state.positions)
        self.n_evals += fraction
        out = self._variable_grads(x, sums, probe)
        data_loss = loss_total
        loss_total += self._regularise(state, x, probe, obj, out, it, fraction if reg_fraction is None else reg_fraction)
        return data_loss, loss_total, out

    def _chunk(self, state: Any, x: dict[str, Any], probe: Any, obj: Any, sel: np.ndarray, data: Any,
               want: tuple[str, ...]) -> tuple[Any, dict[str, Any], Any]:
        ctx, xp = self.ctx, self.ctx.xp
        pos = x["positions"][sel] if "positions" in x else np.asarray(state.positions)[sel]
        tilts = self.tilts_of(state, x)
        tilts = tilts if tilts is not None else state.tilts
        tilts_d = None if tilts is None or state.n_slices == 1 else backend.to_device(
            np.asarray(backend.to_numpy(tilts), dtype=np.float64)[sel], xp, dtype=ctx.real_dtype)
        if tilts_d is None and "tilts" in want and state.n_slices > 1:
            tilts_d = xp.zeros((len(sel), 2), dtype=ctx.real_dtype)
        current = x["beam_current"] if "beam_current" in x else state.beam_current
        scale = None if current is None else backend.to_device(np.asarray(backend.to_numpy(current))[sel], xp,
                                                                dtype=ctx.real_dtype)
        background = x["background"] * x["background"] if "background" in x else state.background
        dz = float(x["thickness"][0]) if "thickness" in x else _mean_dz(state)
        sigma = abs(float(x["detector_blur"][0])) if "detector_blur" in x else float(state.detector_blur_px)
        kw = {} if ctx.eps is None else {"eps": ctx.eps}
        objective = noise_mod.objective(data, ctx.noise_model, ctx.mask, compressed_masks=ctx.comp_masks, **kw)
        blurred = BlurredObjective(objective, sigma) if (sigma > 0 or "detector_blur" in x) else None
        loss, grads = self.model.loss_and_grads(
            probe, obj, backend.to_device(pos, xp, dtype=xp.float64), blurred or objective, dz_a=dz,
            tilts_mrad=tilts_d, beam_scale=scale, background=background, want=want)
        return loss, grads, None if blurred is None else blurred.sigma_grad

    def _variable_grads(self, x: dict[str, Any], sums: "_Accumulator", probe: Any) -> dict[str, Any]:
        g: dict[str, Any] = {}
        for name in x:
            if name == "aberrations":
                coeff = abp.coefficient_gradient(sums.dev["probe"], probe, self.ab_basis)
                g[name] = np.asarray(backend.to_numpy(coeff), dtype=np.float64)
            elif name == "probe" and "aberrations" in x and np.any(x["aberrations"]):
                coeffs = backend.to_device(x["aberrations"], self.ctx.xp, dtype=self.ctx.real_dtype)
                g[name] = abp.reference_gradient(sums.dev["probe"], coeffs, self.ab_basis)
            elif name == "tilt_global":
                g[name] = sums.host["tilts"].sum(axis=0)
            elif name == "thickness":
                g[name] = np.array([sums.host_scalar.get("thickness", 0.0)])
            elif name == "detector_blur":
                g[name] = np.array([sums.host_scalar.get("blur", 0.0) * (1.0 if x[name][0] >= 0 else -1.0)])
            elif name == "beam_current":
                g[name] = sums.host["beam_scale"]
            elif name == "background":
                g[name] = 2 * x[name] * sums.dev[name]
            elif name in HOST:
                g[name] = sums.host[name]
            else:
                g[name] = sums.dev[name]
        return g

    def _regularise(self, state: Any, x: dict[str, Any], probe: Any, obj: Any, grads: dict[str, Any], it: int,
                    fraction: float) -> float:
        total = 0.0
        if self.regularisers and ("object" in x or "probe" in x):
            from ..constraints.registry import regularise

            value, g = regularise(state.copy(object=obj, probe=probe, iteration=it), self.regularisers)
            total += backend.scalar(value) * fraction
            for name in ("object", "probe"):
                if name in g and name in grads:
                    grads[name] = grads[name] + fraction * g[name]
        for term in self.scan_terms:
            total += scan_reg.add(term, state, x, grads, it, fraction)
        return total


class _Accumulator:
    """Sums chunk gradients: device arrays, per-position host arrays (J, ...), host scalars."""

    def __init__(self, xp: Any, n_positions: int):
        self.xp, self.n = xp, n_positions
        self.dev: dict[str, Any] = {}
        self.host: dict[str, np.ndarray] = {}
        self.host_scalar: dict[str, float] = {}

    def add(self, grads: dict[str, Any], sel: np.ndarray, blur_grad: Any) -> None:
        for name, value in grads.items():
            if name in ("positions", "tilts", "beam_scale"):
                host = np.asarray(backend.to_numpy(value), dtype=np.float64)
                arr = self.host.setdefault(name, np.zeros((self.n, *host.shape[1:])))
                arr[sel] += host
            elif name == "thickness":
                self.host_scalar[name] = self.host_scalar.get(name, 0.0) + backend.scalar(value)
            else:
                self.dev[name] = value if name not in self.dev else self.dev[name] + value
        if blur_grad is not None:
            self.host_scalar["blur"] = self.host_scalar.get("blur", 0.0) + backend.scalar(blur_grad)


def ensure_fields(state: Any, ctx: Any) -> None:
    """Give optional variables their neutral values (no tilt, unit current, zero background)."""
    j = len(state.positions)
    if state.tilts is None:
        state.tilts = np.zeros((j, 2), dtype=np.float32)
    if state.beam_current is None:
        state.beam_current = np.ones(j, dtype=np.float32)
    if state.background is None:
        state.background = ctx.xp.zeros(state.window, dtype=ctx.real_dtype)
    elif not isinstance(state.background, type(ctx.xp.zeros(1))):
        state.background = backend.to_device(state.background, ctx.xp, dtype=ctx.real_dtype)
    if state.slice_thickness is None:
        state.slice_thickness = np.ones(state.n_slices, dtype=np.float32)


def split_regularisers(tables: list[Any]) -> tuple[list[Any], list[Any]]:
    """Recipe regulariser tables -> (cost-term pairs of the registry, scan-regulariser params)."""
    from ..constraints.registry import validate_regularisers

    cost, scan = [], []
    for table in tables:
        if table.type in scan_reg.SCAN_REGULARISERS:
            scan.append(scan_reg.params_of(table))
        else:
            cost.append({"type": table.type, "when": table.when.model_dump(), **table.params()})
    return (validate_regularisers(cost) if cost else []), scan


def _mean_dz(state: Any) -> float:
    return float(np.mean(backend.to_numpy(state.slice_thickness))) if state.slice_thickness is not None else 1.0


def _support_semiangle(state: Any) -> float:
    """Semi-angle [mrad] enclosing the probe spectrum's power above 1 % of its peak."""
    xp = backend.namespace(state.probe)
    power = backend.to_numpy(xp.sum(xp.abs(abp.spectrum(state.probe)) ** 2, axis=0))
    m, n = state.window
    ky = np.fft.fftfreq(m, d=state.dx_a)[:, None]
    kx = np.fft.fftfreq(n, d=state.dx_a)[None, :]
    k = np.sqrt(ky**2 + kx**2)[power > 0.01 * power.max()]
    return float(k.max() * electron.wavelength_a(state.energy_kev * 1e3) * 1e3) if k.size else 1.0
