"""Shared pieces of constraints and regularisers: params base, context, specs, helpers.

A constraint is a function of the state only (no engine knowledge): ``apply(state,
params, ctx) -> state``. It never edits its input arrays in place; it returns a state
whose changed fields are new arrays. ``ctx`` carries what a constraint may need beyond
the state (iteration, illumination, counts per frame, wavelength).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .. import backend
from ..errors import RecipeError
from ..physics.electron import wavelength_a  # noqa: F401  (re-exported for constraints)
from .schedule import Scheduled, When, check_nonnegative

Part = Literal["complex", "amplitude", "phase", "both"]


class ConstraintParams(BaseModel):
    """Base of every constraint's params: unknown keys are rejected, ``when`` is shared."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)
    when: When = Field(default_factory=When, description="Iterations on which it runs.")


class RegulariserParams(BaseModel):
    """Base of every regulariser's params: a (possibly scheduled) weight and ``when``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)
    weight: Annotated[Scheduled, AfterValidator(check_nonnegative)] = Field(
        1e-3, description="Weight λ ≥ 0 of the cost term (or a schedule).")
    when: When = Field(default_factory=When, description="Iterations on which it is added.")


@dataclass
class Context:
    """What a constraint may need besides the state (all optional)."""

    iteration: int = 0
    illumination: Any = None  # (H, W) Σ_j |P_j|² on the object grid
    counts_per_frame: float | None = None  # N_e, mean detector counts per frame
    positions_initial: Any = None  # (J, 2) object px; falls back to state.positions_initial
    positions_before: Any = None  # (J, 2) positions before this iteration's update
    wavelength_a: float | None = None
    scan_shape: tuple[int, int] | None = None

    @classmethod
    def from_state(cls, state: Any, **kw: Any) -> "Context":
        kw.setdefault("iteration", int(state.iteration))
        kw.setdefault("wavelength_a", wavelength_a(state.energy_kev * 1e3))
        return cls(**kw)


@dataclass(frozen=True)
class ConstraintSpec:
    name: str
    params: type[ConstraintParams]
    apply: Callable[[Any, Any, Context], Any]
    modifies: tuple[str, ...]  # State fields it may change (any change resets L-BFGS memory)
    summary: str


@dataclass(frozen=True)
class RegulariserSpec:
    name: str
    params: type[RegulariserParams]
    value_and_grad: Callable[[Any, Any], tuple[Any, dict[str, Any]]]
    variables: tuple[str, ...]
    summary: str


# ----------------------------------------------------------------------------- physics helpers
def freq2(shape: tuple[int, int], xp: Any, d: float = 1.0, dtype: str = "float32") -> tuple[Any, Any]:
    """(uy (M,1), ux (1,N)) unshifted frequencies in cycles per unit of ``d``."""
    uy = backend.fftfreq(shape[0], d, xp=xp, dtype=dtype)[:, None]
    ux = backend.fftfreq(shape[1], d, xp=xp, dtype=dtype)[None, :]
    return uy, ux


def centred_radius(shape: tuple[int, int], xp: Any, dtype: str = "float32") -> Any:
    """Distance (px) of each pixel from the window centre (M//2, N//2)."""
    y = xp.arange(shape[0], dtype=dtype)[:, None] - shape[0] // 2
    x = xp.arange(shape[1], dtype=dtype)[None, :] - shape[1] // 2
    return xp.sqrt(y * y + x * x)


def fresnel(shape: tuple[int, int], dx_a: float, wavelength: float, dz_a: Any, xp: Any, cdtype: Any) -> Any:
    """Unit-modulus Fresnel propagator exp(-iπλΔz|k|²) (physics.md §4.1, no band limit).

    ``dz_a`` may be a list of distances: the result is then (Z, M, N). Unlike
    physics.propagation (band-limited for multislice), it is unitary, so propagating
    back by -Δz undoes it exactly: what a refocus-window-defocus round trip needs.
    """
    ky, kx = freq2(shape, xp, dx_a, dtype="float64")
    k2 = ky * ky + kx * kx
    dz = xp.asarray(dz_a, dtype="float64")
    phase = -math.pi * wavelength * dz[..., None, None] * k2
    return xp.exp(1j * phase).astype(cdtype)


def propagate(psi: Any, h: Any) -> Any:
    return backend.ifft2(backend.fft2(psi) * h)


def mirror_extend(x: Any) -> Any:
    """The (…, 2H, 2W) half-sample symmetric extension of (…, H, W) images: x, then x
    mirrored along y below it, the pair mirrored along x beside it (a periodic FFT of it
    has Neumann boundaries: the DCT-II and the Poisson solve of ``unwrap_phase``)."""
    xp = backend.namespace(x)
    ext = backend.concat([x, xp.flip(x, axis=-2)], axis=-2)
    return backend.concat([ext, xp.flip(ext, axis=-1)], axis=-1)


def unwrap_phase(phase: Any) -> Any:
    """Least-squares 2-D phase unwrapping on the backend (Ghiglia & Romero 1994).

    Wrapped neighbour differences are integrated by a Poisson solve with Neumann
    boundaries, done as a periodic FFT solve on the mirror-extended image (so ramps
    survive); the constant is chosen to match the input. Exact for phases whose true
    neighbour differences stay below π.
    """
    xp = backend.namespace(phase)
    h, w = phase.shape[-2:]
    # No neighbour difference reaching π: the wrapped differences are the true ones, whose
    # least-squares integral is the input itself; skip the solve (most slices of a
    # multislice object, every iteration of the kz filter).
    if _no_wraps(phase, xp):
        return phase
    ext = mirror_extend(phase)
    wrap = lambda d: (d + math.pi) % (2 * math.pi) - math.pi  # noqa: E731
    dy = wrap(xp.roll(ext, -1, axis=-2) - ext)
    dx = wrap(xp.roll(ext, -1, axis=-1) - ext)
    div = dy - xp.roll(dy, 1, axis=-2) + dx - xp.roll(dx, 1, axis=-1)
    uy, ux = freq2(ext.shape[-2:], xp, dtype="float64")
    lap = (2 * xp.cos(2 * math.pi * uy) - 2) + (2 * xp.cos(2 * math.pi * ux) - 2)
    lap[0, 0] = 1.0
    # xp.astype / xp.real (not methods): array-API namespaces (CuPy's path) have no others
    spec = backend.fft2(xp.astype(div, backend.complex_dtype_of(phase))) / xp.astype(lap, phase.dtype)
    spec[..., 0, 0] = 0
    out = xp.astype(xp.real(backend.ifft2(spec))[..., :h, :w], phase.dtype)
    # The Poisson solve fixes the phase up to a constant: pick the one matching the input.
    offset = backend.angle(xp.mean(xp.exp(1j * xp.astype(phase - out, backend.complex_dtype_of(phase))),
                                   axis=(-2, -1), keepdims=True))
    return xp.astype(out + offset, phase.dtype)


def _no_wraps(phase: Any, xp: Any) -> bool:
    """True when every neighbour difference of ``phase`` along y and x is below π (one host
    sync: the larger of two maxima)."""
    if phase.shape[-1] < 2 or phase.shape[-2] < 2:
        return True
    dy = xp.max(xp.abs(phase[..., 1:, :] - phase[..., :-1, :]))
    dx = xp.max(xp.abs(phase[..., :, 1:] - phase[..., :, :-1]))
    return backend.scalar(xp.maximum(dy, dx)) < math.pi


def with_parts(obj: Any, amplitude: Any, phase: Any) -> Any:
    """O = a e^{iφ} in the dtype of ``obj``."""
    xp = backend.namespace(obj)
    return (amplitude * xp.exp(1j * phase)).astype(obj.dtype)


def filter_part(obj: Any, part: str, fn: Callable[[Any], Any]) -> Any:
    """Apply a real-linear filter ``fn`` to the complex O, or to |O| and/or angle(O)."""
    xp = backend.namespace(obj)
    if part == "complex":
        return fn(obj).astype(obj.dtype)
    amp, phase = xp.abs(obj), backend.angle(obj)
    if part in ("amplitude", "both"):
        amp = fn(amp).real
    if part in ("phase", "both"):
        phase = fn(phase).real
    return with_parts(obj, amp, phase)


def relaxed(new: Any, old: Any, relax: float) -> Any:
    """``relax`` = 0 keeps the constrained value, 1 keeps the old one."""
    return new if relax == 0 else (1 - relax) * new + relax * old


def require(value: Any, what: str, name: str) -> Any:
    if value is None:
        raise RecipeError(f"constraint {name}: needs {what}, which this state/context does not provide")
    return value


def power_fraction_modes(probe: Any, fraction: float) -> list[int]:
    """Indices of the strongest modes whose cumulative power first reaches ``fraction``."""
    xp = backend.namespace(probe)
    powers = backend.to_numpy(xp.sum(xp.abs(probe) ** 2, axis=(-2, -1))).astype(float)
    order = sorted(range(len(powers)), key=lambda p: -powers[p])
    total, acc, keep = float(sum(powers)) or 1.0, 0.0, []
    for p in order:
        keep.append(p)
        acc += powers[p]
        if acc / total >= fraction - 1e-12:
            break
    return sorted(keep)


def propagate_probe(probe: Any, dx_a: float, wavelength: float | None, dz_a: float) -> Any:
    """All probe modes propagated by ``dz_a`` (Å; > 0 = downstream), no band limit."""
    if dz_a == 0:
        return probe
    xp = backend.namespace(probe)
    lam = require(wavelength, "the wavelength", "probe propagation")
    h = fresnel(probe.shape[-2:], dx_a, lam, [dz_a], xp, probe.dtype)[0]
    return propagate(probe, h).astype(probe.dtype)


def illumination_map(state: Any) -> Any:
    """Σ_j Σ_p |P_p|² placed at each position's window (integer corners; §1.5) on the object grid."""
    xp = backend.namespace(state.probe)
    intensity = xp.sum(xp.abs(state.probe) ** 2, axis=0)
    pos = backend.to_numpy(state.positions)
    m, n = state.window
    y0 = (pos[:, 0] // 1).astype(int) - m // 2
    x0 = (pos[:, 1] // 1).astype(int) - n // 2
    target = xp.zeros(state.object.shape[-2:], dtype=intensity.dtype)
    patches = xp.broadcast_to(intensity, (len(y0), m, n))
    return backend.scatter_add_patches(target, y0, x0, patches)
