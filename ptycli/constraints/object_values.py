"""Object value constraints (physics.md §7.5, §7.6, §7.10): amplitude and phase rules."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from .. import backend
from .base import ConstraintParams, ConstraintSpec, Context, relaxed, unwrap_phase, with_parts


# ----------------------------------------------------------------------------- amplitude window
class AmplitudeThresholdParams(ConstraintParams):
    min_amplitude: float = Field(0.0, ge=0, description="Lower bound a_min of |O| (§7.5).")
    max_amplitude: float = Field(1.0, gt=0, description="Upper bound a_max of |O|; > 1 would amplify.")
    relax: float = Field(0.0, ge=0, le=1, description="0 = hard clip, 1 = no change.")

    @model_validator(mode="after")
    def _order(self) -> "AmplitudeThresholdParams":
        if self.min_amplitude >= self.max_amplitude:
            raise ValueError("min_amplitude must be below max_amplitude")
        return self


def amplitude_threshold(state: Any, params: AmplitudeThresholdParams, ctx: Context) -> Any:
    """|O| ← clip(|O|, a_min, a_max), relaxed towards the old value; phase kept."""
    xp = backend.namespace(state.object)
    amp, phase = xp.abs(state.object), backend.angle(state.object)
    clipped = xp.clip(amp, params.min_amplitude, params.max_amplitude)
    return state.copy(object=with_parts(state.object, relaxed(clipped, amp, params.relax), phase))


# ----------------------------------------------------------------------------- phase positivity
class PositivityParams(ConstraintParams):
    relax: float = Field(0.0, ge=0, le=1, description="0 = hard clip at 0, 1 = no change.")


def phase_positivity(state: Any, params: PositivityParams, ctx: Context) -> Any:
    """O ← |O| exp(i max(φ, 0)) (§7.6): neutral-atom potentials are positive."""
    xp = backend.namespace(state.object)
    amp, phase = xp.abs(state.object), backend.angle(state.object)
    new = relaxed(xp.maximum(phase, 0.0), phase, params.relax)
    return state.copy(object=with_parts(state.object, amp, new))


# ----------------------------------------------------------------------------- complex ratio
class ComplexRatioParams(ConstraintParams):
    c: float | None = Field(None, ge=0, description="Fixed ratio C in |O| = exp(-C φ); None = fit it.")
    relax: float = Field(0.0, ge=0, le=1, description="0 = amplitude from phase, 1 = no change.")


def fit_ratio(amp: Any, phase: Any) -> float:
    """C ≥ 0 minimising Σ (ln|O| + C φ)²."""
    xp = backend.namespace(amp)
    log_a = xp.log(xp.maximum(amp, 1e-12))
    num, den = xp.sum(-log_a * phase), xp.sum(phase * phase)
    values = backend.to_numpy(xp.stack([num, den])).astype(float)
    return max(0.0, values[0] / values[1]) if values[1] > 0 else 0.0


def complex_ratio(state: Any, params: ComplexRatioParams, ctx: Context) -> Any:
    """|O| ← exp(-C φ): absorption tied to phase (Clark 2010; PtyRAD complex_ratio)."""
    xp = backend.namespace(state.object)
    amp, phase = xp.abs(state.object), backend.angle(state.object)
    c = params.c if params.c is not None else fit_ratio(amp, phase)
    new = relaxed(xp.exp(-c * phase), amp, params.relax)
    return state.copy(object=with_parts(state.object, new, phase))


# ----------------------------------------------------------------------------- mirrored amplitude
class MirroredAmplitudeParams(ConstraintParams):
    scale: float = Field(0.03, ge=0, description="s in |O| = 1 - s max(φ,0)^p.")
    power: float = Field(4.0, gt=0, description="p in |O| = 1 - s max(φ,0)^p.")
    relax: float = Field(0.1, ge=0, le=1, description="0 = amplitude from phase, 1 = no change.")


def mirrored_amplitude(state: Any, params: MirroredAmplitudeParams, ctx: Context) -> Any:
    """|O| ← 1 - s max(φ, 0)^p (clipped at 0): amplitude a mirror image of the phase."""
    xp = backend.namespace(state.object)
    amp, phase = xp.abs(state.object), backend.angle(state.object)
    target = xp.maximum(1 - params.scale * xp.maximum(phase, 0.0) ** params.power, 0.0)
    return state.copy(object=with_parts(state.object, relaxed(target, amp, params.relax), phase))


# ----------------------------------------------------------------------------- charge flipping
class ChargeFlipParams(ConstraintParams):
    delta_phase: float = Field(0.1, description="Phase below this is flipped [rad].")
    beta_phase: float = Field(-0.95, ge=-1, le=1, description="Factor applied to flipped phase.")
    delta_absorption: float = Field(0.01, description="Absorption -ln|O| below this is flipped.")
    beta_absorption: float = Field(-0.95, ge=-1, le=1, description="Factor applied to flipped absorption.")


def charge_flip(state: Any, params: ChargeFlipParams, ctx: Context) -> Any:
    """φ ← β φ where φ < δ, and likewise for the absorptive part -ln|O| (PyPty charge flip)."""
    xp = backend.namespace(state.object)
    phase = backend.angle(state.object)
    absorb = -xp.log(xp.maximum(xp.abs(state.object), 1e-12))
    phase = xp.where(phase < params.delta_phase, params.beta_phase * phase, phase)
    absorb = xp.where(absorb < params.delta_absorption, params.beta_absorption * absorb, absorb)
    return state.copy(object=with_parts(state.object, xp.exp(-absorb), phase))


# ----------------------------------------------------------------------------- phase ramp
class PhaseRampParams(ConstraintParams):
    compensate_probe: bool = Field(True, description="For S = 1 multiply the probe by the opposite ramp (§7.10).")
    illuminated_frac: float = Field(0.1, ge=0, lt=1, description="Fit only where Σ|P|² exceeds this × max.")


def _ramp_weights(state: Any, ctx: Context, frac: float) -> Any:
    xp = backend.namespace(state.object)
    if ctx.illumination is None:
        return xp.ones(state.object.shape[-2:], dtype=backend.real_dtype_of(state.object))
    ill = ctx.illumination
    return xp.where(ill > frac * xp.max(ill), ill, 0.0)


def fit_plane(phase: Any, weights: Any) -> tuple[float, float, float]:
    """Weighted least squares phase ≈ c + b_y y + b_x x (y, x in px). Returns (c, b_y, b_x)."""
    xp = backend.namespace(phase)
    y = xp.arange(phase.shape[-2], dtype="float64")[:, None] + 0 * weights
    x = xp.arange(phase.shape[-1], dtype="float64")[None, :] + 0 * weights
    basis = [xp.ones_like(y), y, x]
    rows = [[xp.sum(weights * a * b) for b in basis] for a in basis]
    rhs = [xp.sum(weights * a * phase) for a in basis]
    host = backend.to_numpy(xp.stack([xp.stack(r) for r in rows] + [xp.stack(rhs)])).astype(float)
    import numpy as np  # noqa: PLC0415  (3x3 host solve of scalars, not array work)

    c, by, bx = np.linalg.lstsq(host[:3], host[3], rcond=None)[0]
    return float(c), float(by), float(bx)


def phase_ramp(state: Any, params: PhaseRampParams, ctx: Context) -> Any:
    """O ← O e^{-i(c + b·r)} with (c, b) fitted to the summed unwrapped phase (§7.10).

    For S = 1 the probe gets e^{+i b·r'} so the model is unchanged up to a global phase per
    position. For S > 1 the ramp of the projected phase is split evenly over the slices;
    that changes the model, which is why reconstruct never does it during iterations.
    """
    xp = backend.namespace(state.object)
    phase = unwrap_phase(backend.angle(state.object))  # (Q, S, H, W)
    total = xp.sum(phase[0], axis=0)
    c, by, bx = fit_plane(total, _ramp_weights(state, ctx, params.illuminated_frac))
    s = state.n_slices
    y = xp.arange(state.object.shape[-2], dtype="float64")[:, None]
    x = xp.arange(state.object.shape[-1], dtype="float64")[None, :]
    ramp = xp.exp(-1j * (c + by * y + bx * x) / s).astype(state.object.dtype)
    changes: dict[str, Any] = {"object": state.object * ramp}
    if s == 1 and params.compensate_probe:
        m, n = state.window
        yy = xp.arange(m, dtype="float64")[:, None] - m // 2
        xx = xp.arange(n, dtype="float64")[None, :] - n // 2
        changes["probe"] = state.probe * xp.exp(1j * (by * yy + bx * xx)).astype(state.probe.dtype)
    return state.copy(**changes)


SPECS = [
    ConstraintSpec("object_amplitude_threshold", AmplitudeThresholdParams, amplitude_threshold, ("object",),
                   "Clip |O| to [a_min, a_max] with relax (§7.5)."),
    ConstraintSpec("phase_positivity", PositivityParams, phase_positivity, ("object",),
                   "Clip negative object phase to 0 with relax (§7.6)."),
    ConstraintSpec("complex_ratio", ComplexRatioParams, complex_ratio, ("object",),
                   "Amplitude from phase, |O| = exp(-C φ), C fitted or given."),
    ConstraintSpec("mirrored_amplitude", MirroredAmplitudeParams, mirrored_amplitude, ("object",),
                   "Amplitude from phase, |O| = 1 - s φ^p, with relax."),
    ConstraintSpec("charge_flip", ChargeFlipParams, charge_flip, ("object",),
                   "Flip weak phase and absorption (φ ← β φ below δ)."),
    ConstraintSpec("phase_ramp_removal", PhaseRampParams, phase_ramp, ("object", "probe"),
                   "Remove the fitted linear phase ramp; S = 1 compensates in the probe (§7.10)."),
]
