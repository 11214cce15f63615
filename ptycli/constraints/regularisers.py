"""Cost regularisers R(state) with gradients (physics.md §7.12), for gradient/L-BFGS engines.

``value_and_grad(state, params) -> (R, {"object": ∇_O R, "probe": ∇_P R})`` with the §5.1
convention ∇ = ∂/∂Re + i ∂/∂Im. The weight may follow a schedule, read at
``state.iteration``. Lateral differences are periodic (D^H D = -Δ); depth differences are
one-sided at the ends. Terms on a phase use ∇_O R = i (∂R/∂φ) O/|O|².
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

from pydantic import Field

from .. import backend
from .base import RegulariserParams, RegulariserSpec, centred_radius, freq2
from .schedule import value_at

EPS = 1e-3  # ε in the units of u (§7.12 convention)


# ----------------------------------------------------------------------------- helpers
def _lam(state: Any, params: RegulariserParams) -> float:
    return value_at(params.weight, int(state.iteration))


def _phase_grad(z: Any, d_r_d_phi: Any) -> Any:
    """∇_z R from ∂R/∂φ with φ = angle(z): i R'(φ) z/|z|² (guarded where z = 0)."""
    xp = backend.namespace(z)
    return (1j * d_r_d_phi * z / xp.maximum(xp.abs(z) ** 2, 1e-30)).astype(z.dtype)


def _lateral_d(u: Any) -> tuple[Any, Any]:
    xp = backend.namespace(u)
    return xp.roll(u, -1, axis=-2) - u, xp.roll(u, -1, axis=-1) - u


def _lateral_dh(vy: Any, vx: Any) -> Any:
    xp = backend.namespace(vy)
    return xp.roll(vy, 1, axis=-2) - vy + xp.roll(vx, 1, axis=-1) - vx


def _depth_d(u: Any) -> Any:
    return u[..., 1:, :, :] - u[..., :-1, :, :]


def _depth_dh(v: Any) -> Any:
    xp = backend.namespace(v)
    zero = xp.zeros_like(v[..., :1, :, :])
    return xp.concatenate([zero, v], axis=-3) - xp.concatenate([v, zero], axis=-3)


def _target(state: Any, variable: str, part: str) -> tuple[Any, Any]:
    """(u, z): the quantity the term acts on and the state array it belongs to."""
    xp = backend.namespace(state.object)
    z = state.object if variable == "object" else state.probe
    return (xp.angle(z) if part == "phase" else z), z


def _finish(variable: str, part: str, z: Any, grad_u: Any) -> dict[str, Any]:
    grad = _phase_grad(z, grad_u) if part == "phase" else grad_u.astype(z.dtype)
    return {variable: grad}


def _gradient_term(f: Callable, df: Callable, diff: Callable, diff_h: Callable) -> Callable:
    """R = Σ f(|D u|²) ⇒ ∇_u R = D^H[2 f'(|D u|²) D u], for lateral or depth D."""

    def value_and_grad(state: Any, params: Any) -> tuple[Any, dict[str, Any]]:
        xp = backend.namespace(state.object)
        lam = _lam(state, params)
        u, z = _target(state, params.variable, params.part)
        d = diff(u)
        d = d if isinstance(d, tuple) else (d,)
        t = sum(xp.abs(di) ** 2 for di in d)
        value = lam * xp.sum(f(t, params))
        w = 2 * lam * df(t, params)
        grad_u = diff_h(*(w * di for di in d))
        return value, _finish(params.variable, params.part, z, grad_u)

    return value_and_grad


# ----------------------------------------------------------------------------- smoothness terms
class SmoothParams(RegulariserParams):
    variable: Literal["object", "probe"] = Field("object", description="Which array the term acts on.")
    part: Literal["complex", "phase"] = Field("complex", description="The complex array or its phase.")


class DepthParams(RegulariserParams):
    variable: Literal["object"] = Field("object", description="Depth terms act on the object only.")
    part: Literal["complex", "phase"] = Field("complex", description="The complex array or its phase.")


class AtvParams(SmoothParams):
    p: float = Field(2.0, gt=0, description="Norm exponent: 1 = L1-like (TV), 2 = L2-like (Tikhonov).")
    q: float = Field(1.0, gt=0, description="Gradient scale (units of u) where smoothing turns edge-preserving.")


def _tv_f(t: Any, p: Any) -> Any:
    return backend.namespace(t).sqrt(t + EPS**2)


def _tv_df(t: Any, p: Any) -> Any:
    return 0.5 / backend.namespace(t).sqrt(t + EPS**2)


def _tik_f(t: Any, p: Any) -> Any:
    return t


def _tik_df(t: Any, p: Any) -> Any:
    return 1.0 + 0 * t


def _atv_f(t: Any, p: AtvParams) -> Any:
    # q² [(1 + t/q²)^{p/2} - 1]: quadratic for |Du| << q, |Du|^p beyond (pseudo-Huber family).
    return p.q**2 * ((1 + t / p.q**2) ** (p.p / 2) - 1)


def _atv_df(t: Any, p: AtvParams) -> Any:
    return 0.5 * p.p * (1 + t / p.q**2) ** (p.p / 2 - 1)


tv = _gradient_term(_tv_f, _tv_df, _lateral_d, _lateral_dh)
tikhonov = _gradient_term(_tik_f, _tik_df, _lateral_d, _lateral_dh)
atv = _gradient_term(_atv_f, _atv_df, _lateral_d, _lateral_dh)
depth_tv = _gradient_term(_tv_f, _tv_df, _depth_d, _depth_dh)
depth_tikhonov = _gradient_term(_tik_f, _tik_df, _depth_d, _depth_dh)


# ----------------------------------------------------------------------------- norm terms
class NormParams(RegulariserParams):
    variable: Literal["object", "probe"] = Field("object", description="u0 = 1 for the object, 0 for the probe.")


def l2(state: Any, params: NormParams) -> tuple[Any, dict[str, Any]]:
    """λ Σ |u - u0|², ∇ = 2λ (u - u0)."""
    xp = backend.namespace(state.object)
    z = state.object if params.variable == "object" else state.probe
    r = z - (1.0 if params.variable == "object" else 0.0)
    lam = _lam(state, params)
    return lam * xp.sum(xp.abs(r) ** 2), {params.variable: (2 * lam * r).astype(z.dtype)}


def l1(state: Any, params: NormParams) -> tuple[Any, dict[str, Any]]:
    """λ Σ sqrt(|u - u0|² + ε²), ∇ = λ (u - u0)/sqrt(|u - u0|² + ε²)."""
    xp = backend.namespace(state.object)
    z = state.object if params.variable == "object" else state.probe
    r = z - (1.0 if params.variable == "object" else 0.0)
    rho = xp.sqrt(xp.abs(r) ** 2 + EPS**2)
    lam = _lam(state, params)
    return lam * xp.sum(rho), {params.variable: (lam * r / rho).astype(z.dtype)}


def phase_l1(state: Any, params: RegulariserParams) -> tuple[Any, dict[str, Any]]:
    """λ Σ sqrt(φ² + ε²) on φ = angle(O)."""
    xp = backend.namespace(state.object)
    phi = xp.angle(state.object)
    rho = xp.sqrt(phi * phi + EPS**2)
    lam = _lam(state, params)
    return lam * xp.sum(rho), {"object": _phase_grad(state.object, lam * phi / rho)}


def absorption_l1(state: Any, params: RegulariserParams) -> tuple[Any, dict[str, Any]]:
    """λ Σ sqrt(a² + ε²) on the absorptive part a = -ln|O|; ∇_O = -R'(a) O/|O|²."""
    xp = backend.namespace(state.object)
    o = state.object
    mag2 = xp.maximum(xp.abs(o) ** 2, 1e-30)
    a = -0.5 * xp.log(mag2)
    rho = xp.sqrt(a * a + EPS**2)
    lam = _lam(state, params)
    return lam * xp.sum(rho), {"object": (-(lam * a / rho) * o / mag2).astype(o.dtype)}


def spectrum_l1(state: Any, params: RegulariserParams) -> tuple[Any, dict[str, Any]]:
    """λ Σ_k sqrt(|F[O_s - 1]|² + ε²): sparsity of each slice's spectrum; ∇ = F⁻¹[λ F u/ρ]."""
    xp = backend.namespace(state.object)
    spec = backend.fft2(state.object - 1.0)
    rho = xp.sqrt(xp.abs(spec) ** 2 + EPS**2)
    lam = _lam(state, params)
    return lam * xp.sum(rho), {"object": backend.ifft2(lam * spec / rho).astype(state.object.dtype)}


# ----------------------------------------------------------------------------- mixed object
class MixedVarianceParams(RegulariserParams):
    sigma_per_px: float = Field(0.5, gt=0, description="Std of the low-pass g(u) in cycles/px (0.5 = Nyquist).")


def mixed_variance(state: Any, params: MixedVarianceParams) -> tuple[Any, dict[str, Any]]:
    """λ Σ_q Σ_k g(u) |F[O_q - Ō]|²: penalises low-frequency differences between object modes.

    Σ_q (O_q - Ō) = 0, so the gradient is 2λ F⁻¹[g F[O_q - Ō]] with no mean term.
    """
    xp = backend.namespace(state.object)
    o = state.object
    uy, ux = freq2(o.shape[-2:], xp)
    g = xp.exp(-(uy * uy + ux * ux) / (2 * params.sigma_per_px**2))
    spec = backend.fft2(o - xp.mean(o, axis=0, keepdims=True))
    lam = _lam(state, params)
    value = lam * xp.sum(g * xp.abs(spec) ** 2)
    return value, {"object": (2 * lam * backend.ifft2(g * spec)).astype(o.dtype)}


# ----------------------------------------------------------------------------- probe penalties
class ProbeWindowPenaltyParams(RegulariserParams):
    radius_a: float | None = Field(None, gt=0, description="Inner radius R_w; default 0.45 M dx (§7.4).")
    taper_a: float | None = Field(None, gt=0, description="cos² taper width τ; default 0.05 M dx.")


def window_cos2(shape: tuple[int, int], radius_px: float, taper_px: float, xp: Any) -> Any:
    """w = 1 for ρ ≤ R_w, cos²(π(ρ-R_w)/2τ) up to R_w + τ, 0 beyond (§7.4)."""
    rho = centred_radius(shape, xp, dtype="float64")
    t = xp.clip((rho - radius_px) / taper_px, 0.0, 1.0)
    return xp.cos(0.5 * math.pi * t) ** 2


def probe_window_penalty(state: Any, params: ProbeWindowPenaltyParams) -> tuple[Any, dict[str, Any]]:
    """λ Σ_p Σ_r (1 - w(r)) |P_p(r)|²; ∇ = 2λ (1 - w) P."""
    xp = backend.namespace(state.probe)
    m = state.window[0]
    r_px = params.radius_a / state.dx_a if params.radius_a else 0.45 * m
    tau_px = params.taper_a / state.dx_a if params.taper_a else 0.05 * m
    outside = (1 - window_cos2(state.window, r_px, tau_px, xp)).astype(backend.real_dtype_of(state.probe))
    lam = _lam(state, params)
    value = lam * xp.sum(outside * xp.abs(state.probe) ** 2)
    return value, {"probe": (2 * lam * outside * state.probe).astype(state.probe.dtype)}


class ProbeFourierPenaltyParams(RegulariserParams):
    radius_mrad: float | None = Field(None, gt=0, description="Aperture radius; default 1.1 × semi-angle.")
    width_mrad: float = Field(0.5, gt=0, description="Sigmoid edge width.")


def probe_fourier_penalty(state: Any, params: ProbeFourierPenaltyParams) -> tuple[Any, dict[str, Any]]:
    """λ Σ_k (1 - A(k)) |F[P_p]|²; ∇ = 2λ F⁻¹[(1 - A) F[P]] (A real, so centring is irrelevant)."""
    from .base import wavelength_a  # noqa: PLC0415
    from .probe import sigmoid_aperture  # noqa: PLC0415

    xp = backend.namespace(state.probe)
    radius = params.radius_mrad or 1.1 * float(state.semiangle_mrad or 0) or None
    if radius is None:
        from ..errors import RecipeError  # noqa: PLC0415

        raise RecipeError("regulariser probe_fourier_penalty: needs radius_mrad or the state's semiangle_mrad")
    lam_a = wavelength_a(state.energy_kev * 1e3)
    outside = 1 - sigmoid_aperture(state.window, state.dx_a, lam_a, radius, params.width_mrad, xp)
    spec = backend.fft2(state.probe)
    lam = _lam(state, params)
    value = lam * xp.sum(outside * xp.abs(spec) ** 2)
    return value, {"probe": (2 * lam * backend.ifft2(outside * spec)).astype(state.probe.dtype)}


SPECS = [
    RegulariserSpec("l2", NormParams, l2, ("object", "probe"), "λ Σ|u - u0|² on object (u0 = 1) or probe (u0 = 0)."),
    RegulariserSpec("l1", NormParams, l1, ("object", "probe"), "λ Σ sqrt(|u - u0|² + ε²), smoothed L1."),
    RegulariserSpec("phase_l1", RegulariserParams, phase_l1, ("object",), "L1 of the object phase."),
    RegulariserSpec("absorption_l1", RegulariserParams, absorption_l1, ("object",),
                    "L1 of the absorptive potential -ln|O|."),
    RegulariserSpec("spectrum_l1", RegulariserParams, spectrum_l1, ("object",),
                    "L1 of the spectrum amplitude |F[O - 1]| per slice (Fourier sparsity)."),
    RegulariserSpec("tv", SmoothParams, tv, ("object", "probe"), "Isotropic total variation (§7.12)."),
    RegulariserSpec("tikhonov", SmoothParams, tikhonov, ("object", "probe"), "Gradient Tikhonov λ Σ|Du|² (§7.12)."),
    RegulariserSpec("atv", AtvParams, atv, ("object", "probe"), "Adaptive TV with exponent p and scale q."),
    RegulariserSpec("depth_tv", DepthParams, depth_tv, ("object",), "TV along the slice axis."),
    RegulariserSpec("depth_tikhonov", DepthParams, depth_tikhonov, ("object",),
                    "λ_z Σ|O_{s+1} - O_s|² (§7.12)."),
    RegulariserSpec("mixed_variance", MixedVarianceParams, mixed_variance, ("object",),
                    "Low-frequency variance between object modes."),
    RegulariserSpec("probe_window_penalty", ProbeWindowPenaltyParams, probe_window_penalty, ("probe",),
                    "L2 of the probe outside the real-space window (§7.4)."),
    RegulariserSpec("probe_fourier_penalty", ProbeFourierPenaltyParams, probe_fourier_penalty, ("probe",),
                    "L2 of the probe spectrum outside the aperture."),
]
