"""Noise models on the far-field intensity (physics.md §5.2).

Per pixel ℓ(I; D) with model I = Σ_modes|Ψ|² and data D in counts; L = Σ_j Σ_k m ℓ. For every
model ∇_Ψ L = 2 m ℓ'(I) Ψ and the modulus-constraint form is Ψ̂ = (1 - m ℓ') Ψ.
Arrays are unshifted (DC at [0, 0, ...]) and on the compute device; I, D are (B, M, N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .. import backend
from ..errors import RecipeError

NOISE_MODELS = ("amplitude", "intensity", "poisson", "anscombe")
DEFAULT_EPS = {"amplitude": 1e-6, "intensity": 0.0, "poisson": 1e-3, "anscombe": 0.0}
ANSCOMBE_SHIFT = 0.375
INTENSITY_WEIGHT = 1.0


@dataclass(frozen=True)
class NoiseModelSpec:
    """A noise model from a plugin (entry point group ``ptycli.noise_models``, ptycli/plugins.py).

    ``pixel_loss(I, D, eps)`` is ℓ(I; D) per pixel and ``dloss_dI(I, D, eps)`` its derivative
    ℓ'(I), both array-API code on (B, M, N) arrays in the arrays' own namespace; every engine
    then derives its update from them (∇_Ψ L = 2 m ℓ' Ψ, Ψ̂ = (1 - m ℓ') Ψ). The fused CPU
    kernels know only the built-in models, so a run with a plugin model takes the array path
    (``uses_kernels``).
    """

    name: str
    pixel_loss: Callable[[Any, Any, float], Any]
    dloss_dI: Callable[[Any, Any, float], Any]
    default_eps: float = 0.0


_PLUGINS: dict[str, NoiseModelSpec] | None = None


def plugin_models() -> dict[str, NoiseModelSpec]:
    """The plugin noise models by name, loaded on first use (a built-in name is not replaced)."""
    global _PLUGINS
    if _PLUGINS is None:
        from .. import plugins  # noqa: PLC0415  (entry points only when a name is not built in)

        found = plugins.specs("ptycli.noise_models", lambda s: isinstance(s, NoiseModelSpec))
        _PLUGINS = {s.name: s for s in found if s.name not in (*NOISE_MODELS, "compressed")}
    return _PLUGINS


def known_models() -> tuple[str, ...]:
    """Every noise model a recipe may name: the built-in ones, ``compressed`` and the plugins'."""
    return (*NOISE_MODELS, "compressed", *sorted(plugin_models()))


def uses_kernels(model: str) -> bool:
    """Whether the fused CPU kernels implement ``model`` (a plugin's model runs the array path)."""
    return model in NOISE_MODELS or model == "compressed" or model not in plugin_models()


def _check(model: str) -> None:
    if model not in NOISE_MODELS and model not in plugin_models():
        raise RecipeError(f"noise model {model!r}: expected one of {', '.join(known_models())}")


def _eps(model: str, eps: float | None) -> float:
    if eps is not None:
        return float(eps)
    return DEFAULT_EPS[model] if model in DEFAULT_EPS else plugin_models()[model].default_eps


def _masked(values: Any, mask: Any) -> Any:
    return values if mask is None else values * mask


def pixel_loss(I: Any, D: Any, model: str = "amplitude", eps: float | None = None) -> Any:
    """ℓ(I; D) per pixel."""
    _check(model)
    xp = backend.namespace(I, D)
    e = _eps(model, eps)
    if model not in NOISE_MODELS:
        return plugin_models()[model].pixel_loss(I, D, e)
    if model == "amplitude":
        return (xp.sqrt(I) - xp.sqrt(D)) ** 2  # ε_a only guards the division in ℓ'
    if model == "intensity":
        return INTENSITY_WEIGHT * (I - D) ** 2
    if model == "poisson":
        d_log_d = xp.where(D > 0, D * xp.log(xp.where(D > 0, D, xp.ones_like(D))), xp.zeros_like(D))
        return I - D * xp.log(I + e) - (D - d_log_d)
    return (xp.sqrt(I + ANSCOMBE_SHIFT) - xp.sqrt(D + ANSCOMBE_SHIFT)) ** 2


def loss(I: Any, D: Any, model: str = "amplitude", mask: Any = None, eps: float | None = None) -> Any:
    """Per-position loss (B,) = Σ_k m ℓ(I, D)."""
    xp = backend.namespace(I, D)
    return xp.sum(_masked(pixel_loss(I, D, model, eps), mask), axis=(-2, -1))


def dloss_dI(I: Any, D: Any, model: str = "amplitude", mask: Any = None, eps: float | None = None) -> Any:
    """m ℓ'(I) (B, M, N)."""
    _check(model)
    xp = backend.namespace(I, D)
    e = _eps(model, eps)
    if model not in NOISE_MODELS:
        return _masked(plugin_models()[model].dloss_dI(I, D, e), mask)
    if model == "amplitude":
        d = 1.0 - xp.sqrt(D) / (xp.sqrt(I) + e)
    elif model == "intensity":
        d = 2.0 * INTENSITY_WEIGHT * (I - D)
    elif model == "poisson":
        d = 1.0 - D / (I + e)
    else:
        d = 1.0 - xp.sqrt((D + ANSCOMBE_SHIFT) / (I + ANSCOMBE_SHIFT))
    return _masked(d, mask)


def d2loss_dI2(I: Any, D: Any, model: str = "amplitude", mask: Any = None, eps: float | None = None) -> Any:
    """m ℓ''(I) (B, M, N) for the amplitude and Poisson models (the Newton step of LSQ-ML's
    background, engines/lsqml_background.py): amplitude ½ sqrt(D) / I^(3/2), Poisson D / I²
    (ε as in ℓ'). Both are ≥ 0: ℓ is convex in I."""
    if model not in ("amplitude", "poisson"):
        raise RecipeError(f"noise model {model!r}: the background estimate needs amplitude or poisson")
    xp = backend.namespace(I, D)
    e = _eps(model, eps)
    if model == "amplitude":
        s = xp.sqrt(I) + e
        d = 0.5 * xp.sqrt(D) / (s * s * s)
    else:
        d = D / ((I + e) * (I + e))
    return _masked(d, mask)


def loss_and_dloss_dI(I: Any, D: Any, model: str = "amplitude", mask: Any = None,
                      eps: float | None = None) -> tuple[Any, Any]:
    """(loss (B,), m ℓ'(I) (B, M, N)) in one go: the amplitude model shares sqrt(I), sqrt(D)
    and the residual between both (the separate calls take each square root twice)."""
    _check(model)
    if model != "amplitude":
        return loss(I, D, model, mask, eps), dloss_dI(I, D, model, mask, eps)
    xp = backend.namespace(I, D)
    e = _eps(model, eps)
    s_i = xp.sqrt(I)
    diff = s_i - xp.sqrt(D)
    pixel = diff * diff
    # ℓ' = 1 - sqrt(D)/(sqrt(I)+ε) = (sqrt(I) - sqrt(D) + ε) / (sqrt(I) + ε)
    s_i += e
    lprime = (diff + e) / s_i
    return xp.sum(_masked(pixel, mask), axis=(-2, -1)), _masked(lprime, mask)


# Models whose ℓ' gives no projection: Ψ(1 - ℓ') with the intensity model's ℓ' = 2(I - D) is a
# half-gradient step in counts (ePIE overshot to NaN at the first position of real doses); the
# amplitude model's ℓ' projects onto the measured intensities, where the intensity loss is
# smallest pixel by pixel. The loss reported stays the model's own.
PROJECTION_BY_AMPLITUDE = ("intensity",)


def projection_lprime(I: Any, D: Any, model: str = "amplitude", mask: Any = None,
                      eps: float | None = None) -> tuple[Any, Any]:
    """(loss (B,), m ℓ' (B, M, N)) for the projection Ψ̂ = (1 - m ℓ')Ψ: the model's loss, and its
    ℓ' except where that is no projection (``PROJECTION_BY_AMPLITUDE``: the amplitude model's,
    ε the stage's or the amplitude default; the intensity loss itself has no ε)."""
    if model not in PROJECTION_BY_AMPLITUDE:
        return loss_and_dloss_dI(I, D, model, mask, eps)
    return loss(I, D, model, mask, eps), dloss_dI(I, D, "amplitude", mask, eps)


def fused_farfield(Psi: Any, D: Any, model: str, mask: Any, eps: float | None, a: float,
                   c: float, in_scale: float = 1.0, out: Any = None, loss: Any = None,
                   projection: bool = False) -> tuple[Any, Any] | None:
    """(loss (B,), (a + c·m ℓ'(I)) Ψ) in one pass by the fused CPU kernel, or None where it
    does not apply (CuPy, no Numba, compressed data): (0, 2) is ∇_Ψ L, (1, -1) Ψ̂.
    ``in_scale``: ``Psi`` is an unnormalised transform, the far field being in_scale·Psi.
    ``out`` (B, P·Q, M, N) and ``loss`` (B,): buffers to write into (else new arrays).
    ``projection``: ℓ' of ``projection_lprime`` (the model's loss all the same)."""
    k = backend.kernels(backend.namespace(Psi))
    if k is None or model not in k.NOISE_CODES or D.ndim != 3 or Psi.ndim != 5:
        return None
    psi4 = Psi.reshape((Psi.shape[0], Psi.shape[1] * Psi.shape[2], *Psi.shape[3:]))
    out = k.empty(psi4.shape, Psi.dtype) if out is None else out
    loss = k.empty((Psi.shape[0],), Psi.real.dtype) if loss is None else loss
    r = lambda v: k.real_scalar(v, D)  # noqa: E731
    k.farfield(psi4, D, *kernel_model(k, model, mask, eps, D, projection=projection), r(a), r(c),
               r(in_scale * in_scale), out, loss)
    return loss, out.reshape(Psi.shape)


def kernel_model(k: Any, model: str, mask: Any, eps: float | None, data: Any,
                 lsqml_step: bool = False, projection: bool = False) -> tuple[Any, int, Any]:
    """(mask, model code, ε) as the far-field kernel takes them (``_kernels.farfield`` and the
    compiled paths that call it): a cached all-ones mask for none, ε in the data's dtype.
    ``lsqml_step``: LSQ-ML's own step where the model has one (``_kernels.LSQML_STEP_CODES``):
    for intensity, the amplitude model's step (ε the stage's or the amplitude default: the
    intensity loss has none, so a stage's ε is the projection's).
    ``projection``: the projection Ψ̂ = (1 - ℓ')Ψ of ``projection_lprime`` (ePIE): for intensity
    the same code as LSQ-ML's intensity step, the other models their own."""
    m = mask if mask is not None else _ones(k, data.shape[-2:], data.dtype)
    if (lsqml_step and model in k.LSQML_STEP_CODES) or (projection and model in PROJECTION_BY_AMPLITUDE):
        step_eps = _eps("amplitude" if model in PROJECTION_BY_AMPLITUDE else model, eps)
        return m, k.LSQML_STEP_CODES[model], k.real_scalar(step_eps, data)
    return m, k.NOISE_CODES[model], k.real_scalar(_eps(model, eps), data)


_ONES: dict[tuple, Any] = {}


def _ones(k: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """A cached all-ones mask (the kernel's "no mask"): one array per shape, not one per group."""
    key = (tuple(shape), dtype)  # dtypes hash; str(dtype) cost more than the kernel's call
    if key not in _ONES:
        _ONES.clear() if len(_ONES) > 8 else None
        ones = k.empty(tuple(shape), dtype)
        ones[...] = 1
        _ONES[key] = ones
    return _ONES[key]


def scale_by(Psi: Any, factor: Any) -> Any:
    """Ψ (B, P, Q, M, N) times a real (B, M, N) factor, in Ψ's dtype."""
    xp = backend.namespace(Psi)
    f = _expand(factor)
    if backend.is_numpy(xp) and f.dtype == Psi.real.dtype:
        return Psi * f  # complex64 x float32 stays complex64 in NumPy: no complex copy of f
    return Psi * xp.astype(f, Psi.dtype)


def _expand(lprime: Any) -> Any:
    """(B, M, N) -> (B, 1, 1, M, N) against Ψ (B, P, Q, M, N)."""
    return lprime[:, None, None, ...]


def grad_farfield(Psi: Any, I: Any, D: Any, model: str = "amplitude", mask: Any = None,
                  eps: float | None = None) -> Any:
    """∇_Ψ L = 2 m ℓ'(I) Ψ for Ψ (B, P, Q, M, N)."""
    return scale_by(Psi, 2.0 * dloss_dI(I, D, model, mask, eps))


def projected(Psi: Any, I: Any, D: Any, model: str = "amplitude", mask: Any = None,
              eps: float | None = None) -> Any:
    """Ψ̂ = (1 - m ℓ') Ψ; masked pixels keep Ψ (amplitude: the classical modulus projection)."""
    return scale_by(Psi, 1.0 - dloss_dI(I, D, model, mask, eps))


# ----------------------------------------------------------------------------- compressed
def compressed_signals(I: Any, masks: Any) -> Any:
    """Model signals (B, K) = Σ_k masks_K(k) I(k)."""
    xp = backend.namespace(I, masks)
    return xp.sum(I[:, None, ...] * masks[None, ...], axis=(-2, -1))


def compressed_loss(I: Any, signals: Any, masks: Any) -> Any:
    """Least squares on compressed data: (B,) Σ_K (masks_K·I - signals_K)²."""
    xp = backend.namespace(I, signals)
    return xp.sum((compressed_signals(I, masks) - signals) ** 2, axis=-1)


def compressed_dloss_dI(I: Any, signals: Any, masks: Any) -> Any:
    """∂L/∂I (B, M, N) = Σ_K 2 (masks_K·I - signals_K) masks_K (plays the role of m ℓ')."""
    xp = backend.namespace(I, signals)
    r = compressed_signals(I, masks) - signals
    return xp.sum(2.0 * r[:, :, None, None, ...] * masks[None, ...], axis=1)


# ----------------------------------------------------------------------------- objective
def objective(data: Any, model: str = "amplitude", mask: Any = None, eps: float | None = None,
              compressed_masks: Any = None) -> Any:
    """A callable I (B, M, N) -> (loss (B,), ∂L/∂I (B, M, N)) for ``physics.model``.

    ``data`` is (B, M, N) unshifted counts, or (B, K) signals when ``compressed_masks`` (K, M, N)
    is given. Physics stays unaware of noise models (imports flow engines -> physics).
    """
    if compressed_masks is not None:
        return lambda I: (compressed_loss(I, data, compressed_masks), compressed_dloss_dI(I, data, compressed_masks))
    _check(model)
    return lambda I: (loss(I, data, model, mask, eps), dloss_dI(I, data, model, mask, eps))
