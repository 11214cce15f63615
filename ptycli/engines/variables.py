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
    no projection, which would break L-BFGS pairs), detector_blur (σ, detector px),
    subscan_aberrations (n_subscans × K, the same units, each sub-scan's own increment on
    top of the shared one), tilts_before / tilts_after (mrad, J×2, PyPty's tilts before and
    after the specimen, physics/tilt_modes.py).

Sub-scans: position j uses the shared probe with the extra aberration phase of its
sub-scan (``state.subscan[j]``, ``state.subscan_aberrations``), so the shared probe's
gradient is the sum of every sub-scan's gradient pulled back through its phase.
Upsampling (``state.upsample`` U): the model window is U× the detector; the forward model
bins U×U pixels, so data, mask, background and the detector blur live on the detector grid.

Aberrations and tilt_global are increments from the current state (both maps are groups:
re-basing at zero each iteration changes nothing), so the state holds the absolute values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ..errors import InputError, RecipeError
from ..physics import aberration_probe as abp
from ..physics import electron, grids
from ..physics.detector import BlurredObjective
from ..physics.model import ForwardModel
from ..physics.nearfield import NearField
from . import compiled_eval, distributed
from .compiled_eval import model_features  # noqa: F401  (gradient.py imports it from here)
from .data import Rows, gathered
from . import noise as noise_mod
from . import scan_regularisers as scan_reg

VARIABLES = ("object", "probe", "positions", "tilts", "tilt_global", "thickness", "aberrations",
             "beam_current", "background", "detector_blur", "subscan_aberrations", "tilts_before", "tilts_after")
HOST = ("positions", "tilts", "tilt_global", "thickness", "aberrations", "beam_current", "detector_blur",
        "subscan_aberrations", "tilts_before", "tilts_after")
PER_POSITION = ("positions", "tilts", "beam_current", "tilts_before", "tilts_after")
PER_POSITION_GRADS = ("positions", "tilts", "beam_scale", "tilts_before", "tilts_after")
# A refined background starts at least at this fraction of the mean counts per pixel: its
# square-root parametrisation has zero gradient at exactly 0.
BACKGROUND_FLOOR = 1e-3
MODEL_GRADS = {"object": "object", "probe": "probe", "positions": "positions", "tilts": "tilts",
               "tilt_global": "tilts", "thickness": "thickness", "aberrations": "probe",
               "beam_current": "beam_scale", "background": "background", "subscan_aberrations": "probe",
               "tilts_before": "tilts_before", "tilts_after": "tilts_after"}
# Engines whose updates use only the plain far-field model (engines/common.py).
PLAIN_MODEL_ENGINES = ("epie", "lsqml")


def active_variables(refine: Any, it: int) -> tuple[str, ...]:
    return tuple(name for name in VARIABLES if getattr(refine, name).active(it))


def check_engine(stage: Any, state: Any) -> None:
    """ePIE/LSQML use the plain far-field model: refuse states that need more (RecipeError naming the key)."""
    if stage.type not in PLAIN_MODEL_ENGINES:
        return
    features = model_features(state)
    if features:
        raise RecipeError(f"stage type = {stage.type!r}: the state uses {', '.join(features)}, which only the "
                          "gradient and lbfgs engines model; use type = \"gradient\" or \"lbfgs\"")


class Evaluator:
    """Loss and gradients of every refinable variable for one engine's run."""

    def __init__(self, params: Any, ctx: Any, state: Any):
        self.params, self.ctx = params, ctx
        xp = ctx.xp
        self.model = ForwardModel(state.window, state.dx_a, state.energy_kev * 1e3, upsample=int(state.upsample))
        self.probe_scale = float(backend.to_numpy(xp.sqrt(xp.mean(xp.abs(state.probe) ** 2))))
        self.ab_names = abp.cartesian_names(_terms(params.aberration_terms, state.subscan_aberrations))
        semi = state.semiangle_mrad or _support_semiangle(state)
        self.ab_basis, self.ab_norms = abp.basis(state.window, state.dx_a, self.model.wavelength_a, self.ab_names,
                                                 semi, xp=xp, dtype=grids.real_dtype_name(ctx.real_dtype))
        self.regularisers, self.scan_terms = split_regularisers(params.regularisers)
        z = params.nearfield_defocus_a
        if isinstance(z, list) and len(z) != len(state.positions):
            raise InputError(f"nearfield_defocus_a: {len(z)} values for {len(state.positions)} measurements; "
                             "give one value or one per measurement")
        if z is not None:  # check the sampling once, before any work
            self._nearfield(np.arange(len(state.positions)), len(state.positions), state.probe.dtype)
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
            elif name == "subscan_aberrations":
                out[name] = np.zeros((state.n_subscans, len(self.ab_names)))
            elif name in ("tilts_before", "tilts_after") and getattr(state, name) is None:
                out[name] = np.zeros((len(state.positions), 2))
            elif name == "thickness":
                out[name] = np.array([np.mean(backend.to_numpy(state.slice_thickness))], dtype=np.float64)
            elif name == "detector_blur":
                out[name] = np.array([state.detector_blur_px], dtype=np.float64)
            elif name == "background":  # b = sqrt(background): non-negative without a projection
                floor = BACKGROUND_FLOOR * self.ctx.n_e / (state.detector_shape[0] * state.detector_shape[1])
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
        if "subscan_aberrations" in x:
            state.subscan_aberrations = [
                abp.updated_aberrations(dict(state.subscan_aberrations[s]) if s < len(state.subscan_aberrations)
                                        else {}, self.ab_names, x["subscan_aberrations"][s], self.ab_norms)
                for s in range(state.n_subscans)]
        state.probe = self.probe_of(state, x)
        for name in ("object", "positions", "beam_current", "tilts_before", "tilts_after"):
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

    def probe_of(self, state: Any, x: dict[str, Any], subscan: int | None = None) -> Any:
        """The shared probe (subscan None) or sub-scan ``subscan``'s probe at the variables x."""
        ref = x.get("probe", state.probe)
        coeffs = self.coefficients(state, x, subscan)
        if not np.any(coeffs):
            return ref
        return abp.apply(abp.spectrum(ref), backend.to_device(coeffs, self.ctx.xp, dtype=self.ctx.real_dtype),
                         self.ab_basis)

    def coefficients(self, state: Any, x: dict[str, Any], subscan: int | None) -> np.ndarray:
        """Unit-scaled aberration increment (K,) of the shared probe or of one sub-scan's probe."""
        c = np.array(x["aberrations"], dtype=np.float64) if "aberrations" in x else np.zeros(len(self.ab_names))
        if subscan is None:
            return c
        if subscan < len(state.subscan_aberrations) and state.subscan_aberrations[subscan]:
            from ..physics.aberrations import polar_to_cartesian

            cart = polar_to_cartesian(dict(state.subscan_aberrations[subscan]))
            c = c + np.array([cart.get(n, 0.0) * norm for n, norm in zip(self.ab_names, self.ab_norms)])
        if "subscan_aberrations" in x:
            c = c + x["subscan_aberrations"][subscan]
        return c

    def subscans_of(self, state: Any, sel: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
        """[(sub-scan, positions of sel in it as indices into sel)]; [(None, all)] without sub-scans."""
        if state.subscan is None or state.n_subscans == 1:
            return [(0 if state.subscan is not None else None, np.arange(len(sel)))]
        labels = np.asarray(backend.to_numpy(state.subscan))[sel]
        return [(int(s), np.nonzero(labels == s)[0]) for s in np.unique(labels)]

    def tilts_of(self, state: Any, x: dict[str, Any]) -> Any:
        if "tilts" not in x and "tilt_global" not in x:
            return None
        base = x["tilts"] if "tilts" in x else np.asarray(backend.to_numpy(state.tilts), dtype=np.float64)
        return base + x.get("tilt_global", np.zeros(2))[None, :, ...]

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
        compiled = compiled_eval.applies(self, state, x)
        for a in range(0, len(idx), chunk):
            # data.Rows takes a plain slice; arrays get every axis and an in-bounds stop (array API indexing)
            sel, block = idx[a:a + chunk], data[a:a + chunk] if isinstance(data, Rows) else data[a:min(a + chunk, len(idx)), ...]
            for s, local in self.subscans_of(state, sel):
                # the compiled path reads data.Rows in place; the array model takes the gathered frames
                part = block if len(local) == len(sel) else xp.take(gathered(block), backend.to_device(local, xp),
                                                                     axis=0)
                probe_s = probe if s is None else self.probe_of(state, x, s)
                got = compiled_eval.kernel_chunk(self, state, x, probe_s, obj, sel[local], part) if compiled else None
                if got is not None:  # the plain model's object/probe gradients, compiled
                    loss_total += got[0]
                    sums.add(got[1], sel[local], None, subscan=s)
                    continue
                loss, grads, blur_grad = self._chunk(state, x, probe_s, obj, sel[local], gathered(part), want)
                loss_total += backend.scalar(xp.sum(loss))
                sums.add(grads, sel[local], blur_grad, subscan=s)
        # Data-parallel seam: sum the ranks' parts of the group before any gradient is
        # formed, so every rank sees the whole group's loss and gradients (regularisers,
        # computed from the shared state, are added once, after the sum).
        comm = distributed.comm_of(self.ctx)
        loss_total = comm.allreduce_scalar(loss_total)
        sums.reduce(comm)
        fraction = distributed.global_count(len(idx), comm) / len(state.positions)
        self.n_evals += fraction
        out = self._variable_grads(state, x, sums, probe)
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
        current = x.get("beam_current", state.beam_current)
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
            tilts_mrad=tilts_d, beam_scale=scale, background=background, want=want,
            detector_transform=self._nearfield(sel, len(state.positions), probe.dtype),
            tilts_before_mrad=self._side_tilts(state, x, "tilts_before", sel),
            tilts_after_mrad=self._side_tilts(state, x, "tilts_after", sel))
        return loss, grads, None if blurred is None else blurred.sigma_grad

    def _side_tilts(self, state: Any, x: dict[str, Any], name: str, sel: np.ndarray) -> Any:
        """Tilts before/after the specimen for ``sel`` on the device, or None when absent or zero."""
        value = x[name] if name in x else getattr(state, name)
        if value is None:
            return None
        host = np.asarray(backend.to_numpy(value), dtype=np.float64)[sel]
        if name not in x and not np.any(host):
            return None
        return backend.to_device(host, self.ctx.xp, dtype=self.ctx.real_dtype)

    def _nearfield(self, sel: np.ndarray, n_positions: int, dtype: Any) -> Any:
        """Near-field propagation to the detector for these measurements, or None (far field)."""
        z = self.params.nearfield_defocus_a
        if z is None:
            return None
        z = np.broadcast_to(np.asarray(z, dtype=np.float64), (n_positions,))
        return NearField(self.model.shape, self.model.dx_a, self.model.wavelength_a, z[sel], xp=self.ctx.xp,
                         dtype=dtype)

    def _probe_grads(self, state: Any, x: dict[str, Any], sums: _Accumulator, probe: Any) -> dict[str, Any]:
        """Reference-probe, shared-aberration and per-sub-scan aberration gradients from each
        sub-scan's ∇_P L (P_s = P_ref with the phase of coefficients c_s)."""
        xp = self.ctx.xp
        out: dict[str, Any] = {}
        coeff_rows = {}
        for s, g_s in sums.probe.items():
            c_s = self.coefficients(state, x, s)
            if "aberrations" in x or "subscan_aberrations" in x:
                p_s = probe if s is None else self.probe_of(state, x, s)
                coeff_rows[s] = np.asarray(backend.to_numpy(abp.coefficient_gradient(g_s, p_s, self.ab_basis)),
                                           dtype=np.float64)
            if "probe" in x:
                if np.any(c_s):
                    g_s = abp.reference_gradient(g_s, backend.to_device(c_s, xp, dtype=self.ctx.real_dtype),
                                                 self.ab_basis)
                out["probe"] = g_s if "probe" not in out else out["probe"] + g_s
        if "aberrations" in x:
            out["aberrations"] = sum(coeff_rows.values(), np.zeros(len(self.ab_names)))
        if "subscan_aberrations" in x:
            rows = np.zeros((state.n_subscans, len(self.ab_names)))
            for s, row in coeff_rows.items():
                rows[0 if s is None else s] += row
            out["subscan_aberrations"] = rows
        return out

    def _variable_grads(self, state: Any, x: dict[str, Any], sums: _Accumulator, probe: Any) -> dict[str, Any]:
        g: dict[str, Any] = self._probe_grads(state, x, sums, probe) if sums.probe else {}
        for name, value in x.items():
            if name in ("probe", "aberrations", "subscan_aberrations"):
                if name not in g:  # no position of this evaluation used the probe (cannot happen for J >= 1)
                    g[name] = value * 0
            elif name == "tilt_global":
                g[name] = sums.host["tilts"].sum(axis=0)
            elif name == "thickness":
                g[name] = np.array([sums.host_scalar.get("thickness", 0.0)])
            elif name == "detector_blur":
                g[name] = np.array([sums.host_scalar.get("blur", 0.0) * (1.0 if value[0] >= 0 else -1.0)])
            elif name == "beam_current":
                g[name] = sums.host["beam_scale"]
            elif name == "background":
                g[name] = 2 * value * sums.dev[name]
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
    """Sums chunk gradients: device arrays, per-position host arrays (J, ...), host scalars,
    and the probe gradient per sub-scan (each sub-scan's probe differs)."""

    def __init__(self, xp: Any, n_positions: int):
        self.xp, self.n = xp, n_positions
        self.dev: dict[str, Any] = {}
        self.probe: dict[int | None, Any] = {}
        self.host: dict[str, np.ndarray] = {}
        self.host_scalar: dict[str, float] = {}

    def add(self, grads: dict[str, Any], sel: np.ndarray, blur_grad: Any, subscan: int | None = None) -> None:
        for name, value in grads.items():
            if name in PER_POSITION_GRADS:
                host = np.asarray(backend.to_numpy(value), dtype=np.float64)
                arr = self.host.setdefault(name, np.zeros((self.n, *host.shape[1:])))
                arr[sel] += host
            elif name == "thickness":
                self.host_scalar[name] = self.host_scalar.get(name, 0.0) + backend.scalar(value)
            elif name == "probe":
                self.probe[subscan] = value if subscan not in self.probe else self.probe[subscan] + value
            else:
                self.dev[name] = value if name not in self.dev else self.dev[name] + value
        if blur_grad is not None:
            self.host_scalar["blur"] = self.host_scalar.get("blur", 0.0) + backend.scalar(blur_grad)

    def reduce(self, comm: Any) -> None:
        """Sum every accumulated gradient over the ranks, in one agreed order. A rank whose
        part of the group misses a sub-scan contributes zeros to that sub-scan's probe."""
        if comm.size == 1:
            return
        template = next(iter(self.probe.values()), None)
        keys = sorted({k for ks in comm.allgather(list(self.probe)) for k in ks}, key=lambda k: -1 if k is None else k)
        for key in keys:
            value = self.probe[key] if key in self.probe else self.xp.zeros_like(template)
            self.probe[key] = comm.allreduce_sum(value)
        for name in sorted(self.dev):
            self.dev[name] = comm.allreduce_sum(self.dev[name])
        for name in sorted(self.host):
            comm.allreduce_sum(self.host[name])
        for name in sorted(self.host_scalar):
            self.host_scalar[name] = comm.allreduce_scalar(self.host_scalar[name])


def ensure_fields(state: Any, ctx: Any) -> None:
    """Give optional variables their neutral values (no tilt, unit current, zero background)."""
    j = len(state.positions)
    if state.tilts is None:
        state.tilts = np.zeros((j, 2), dtype=np.float32)
    if state.beam_current is None:
        state.beam_current = np.ones(j, dtype=np.float32)
    if state.background is None:
        state.background = ctx.xp.zeros(state.detector_shape, dtype=ctx.real_dtype)
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


def _terms(refined: list[str], offsets: list[dict[str, float]]) -> list[str]:
    """Refined polar terms plus any term a sub-scan offset uses (its phase needs a basis row)."""
    from ..physics.aberrations import TERMS

    extra = [k for d in offsets for k in d if k in TERMS and k not in refined and float(d[k])]
    return list(refined) + sorted(set(extra), key=list(TERMS).index)


def _mean_dz(state: Any) -> float:
    return float(np.mean(backend.to_numpy(state.slice_thickness))) if state.slice_thickness is not None else 1.0


def _support_semiangle(state: Any) -> float:
    """Semi-angle [mrad] enclosing the probe spectrum's power above 1 % of its peak."""
    xp = backend.namespace(state.probe)
    power = backend.to_numpy(xp.sum(xp.abs(abp.spectrum(state.probe)) ** 2, axis=0))
    m, n = state.window
    ky = np.fft.fftfreq(m, d=state.dx_a)[:, None, ...]
    kx = np.fft.fftfreq(n, d=state.dx_a)[None, :, ...]
    k = np.sqrt(ky**2 + kx**2)[power > 0.01 * power.max()]
    return float(k.max() * electron.wavelength_a(state.energy_kev * 1e3) * 1e3) if k.size else 1.0
