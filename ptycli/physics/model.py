"""The differentiable forward model engines call: loss and gradients for a batch.

``ForwardModel(shape, dx_a, energy_ev).loss_and_grads(probe, obj, positions, objective, ...)``
runs the multislice for a batch of positions (vectorised over the batch), evaluates an
objective I -> (loss, ∂L/∂I) (a noise model of physics.md §5.2, built by
``engines.noise.objective``) and back-propagates exactly (§5.3–5.4). Gradients follow §5.1
(∇_z = ∂/∂Re z + i ∂/∂Im z); real parameters get ordinary derivatives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import backend
from ..errors import InputError
from . import grids, multislice, overlap, tilt_modes
from .detector import bin_adjoint, bin_pixels
from .electron import wavelength_a as _wavelength_a
from .propagation import fresnel_propagator, propagator_derivatives

GRADIENTS = ("object", "probe", "positions", "tilts", "thickness", "beam_scale", "background", "tilts_before",
             "tilts_after")
BACKPROP = {"object", "probe", "positions", "tilts", "thickness", "tilts_before", "tilts_after"}


@dataclass
class Forward:
    """One batch's forward pass (kept for the adjoint)."""

    Psi: Any  # (B, P, Q, M, N) far field
    intensity: Any  # (B, M, N) model intensity incl. scale/background
    cache: multislice.Cache
    probe_k: Any  # (P, M, N) F[P]
    ramp: Any  # (B, M, N) sub-pixel shift ramp
    corners: tuple[Any, Any]
    H: Any
    tilts_mrad: Any
    wave: Any = None  # the wave at the detector (Psi, or detector_transform.apply(Psi))
    transform: Any = None
    raw: Any = None  # Σ|W|² binned to the detector, before beam scale and background
    psi1: Any = None  # the incident wave (after a before-specimen tilt)
    tilts_before: Any = None


@dataclass
class ForwardModel:
    """Geometry of a reconstruction: window (M, N), pixel dx_a, beam energy, band limit.

    ``upsample`` U > 1 models a detector of (M/U, N/U) pixels: the far field of the (M, N)
    window is binned U×U per detector pixel (physics/detector.py); intensities, data,
    background and ∂L/∂I are then on the detector grid.
    """

    shape: tuple[int, int]
    dx_a: float
    energy_ev: float
    band_limit: str = "hard"
    upsample: int = 1
    _h_cache: dict = field(default_factory=dict, repr=False)

    @property
    def wavelength_a(self) -> float:
        return _wavelength_a(self.energy_ev)

    def propagator(self, dz_a: float, tilts_mrad: Any = None, *, xp: Any = None, dtype: Any = "complex64") -> Any:
        """H for Δz (cached when untilted), (B, M, N) for per-position tilts."""
        if tilts_mrad is not None:
            return fresnel_propagator(self.shape, self.dx_a, self.wavelength_a, dz_a, tilt_mrad=tilts_mrad,
                                      band_limit=self.band_limit, xp=xp, dtype=dtype)
        key = (float(dz_a), str(dtype), getattr(xp, "__name__", str(xp)))
        if key not in self._h_cache:
            self._h_cache.clear()  # one Δz at a time; a refined Δz changes every call anyway
            self._h_cache[key] = fresnel_propagator(self.shape, self.dx_a, self.wavelength_a, dz_a,
                                                    band_limit=self.band_limit, xp=xp, dtype=dtype)
        return self._h_cache[key]

    def forward(self, probe: Any, obj: Any, positions: Any, *, dz_a: Any = None, tilts_mrad: Any = None,
                beam_scale: Any = None, background: Any = None, keep_spectra: bool = False,
                detector_transform: Any = None, tilts_before_mrad: Any = None, tilts_after_mrad: Any = None
                ) -> Forward:
        """Far field and intensity for positions (B, 2) in object px; probe (P,M,N), obj (Q,S,H,W).

        ``detector_transform`` (e.g. ``physics.nearfield.NearField``) maps Ψ to the wave W at
        the detector (``.apply``, with ``.adjoint`` for gradients); the intensity is then Σ|W|².
        ``tilts_before_mrad`` / ``tilts_after_mrad`` (B, 2) are PyPty's tilts before and after
        the specimen (physics/tilt_modes.py); ``tilts_mrad`` is the tilt inside.
        """
        xp = backend.namespace(probe)
        y0, x0, frac = overlap.split_positions(positions, self.shape)
        probe_k = backend.fft2(probe)
        ramp = overlap.shift_ramp(frac, self.shape, probe.dtype)
        psi1 = backend.ifft2(probe_k[None, ...] * ramp[:, None, ...])
        if tilts_before_mrad is not None:
            psi1 = psi1 * tilt_modes.ramp(self.shape, self.dx_a, self.wavelength_a, tilts_before_mrad,
                                          probe.dtype)[:, None, ...]
        patches = overlap.extract(obj, y0, x0, self.shape)
        H = None
        if obj.shape[1] > 1:
            if dz_a is None:
                raise InputError(f"object has {obj.shape[1]} slices but no slice thickness (dz_a) was given")
            H = self.propagator(_float(dz_a), tilts_mrad, xp=xp, dtype=probe.dtype)
        Psi, cache = multislice.forward(psi1, patches, H, keep_spectra=keep_spectra)
        if tilts_after_mrad is not None:
            detector_transform = tilt_modes.AfterTilt(self.shape, self.dx_a, self.wavelength_a, tilts_after_mrad,
                                                      probe.dtype, then=detector_transform)
        wave = Psi if detector_transform is None else detector_transform.apply(Psi)
        raw = bin_pixels(multislice.intensity(wave), self.upsample)
        intensity = raw
        if beam_scale is not None:
            intensity = intensity * beam_scale[:, None, None, ...]
        if background is not None:
            intensity = intensity + background
        return Forward(Psi, intensity, cache, probe_k, ramp, (y0, x0), H, tilts_mrad, wave, detector_transform,
                       raw, psi1, tilts_before_mrad)

    def intensity(self, probe: Any, obj: Any, positions: Any, **kwargs: Any) -> Any:
        """Model intensity (B, M, N), unshifted."""
        return self.forward(probe, obj, positions, **kwargs).intensity

    def loss_and_grads(self, probe: Any, obj: Any, positions: Any, objective: Callable[[Any], tuple[Any, Any]], *,
                       dz_a: Any = None, tilts_mrad: Any = None, beam_scale: Any = None, background: Any = None,
                       want: tuple[str, ...] = ("object", "probe"), detector_transform: Any = None,
                       tilts_before_mrad: Any = None, tilts_after_mrad: Any = None) -> tuple[Any, dict[str, Any]]:
        """Per-position loss (B,) and the gradients named in ``want`` (see docs/contracts.md).

        ``objective(I)`` returns (loss (B,), ∂L/∂I (B, M, N)) for the model intensity I, e.g.
        ``engines.noise.objective(data, "poisson", mask)``.
        """
        unknown = set(want) - set(GRADIENTS)
        if unknown:
            raise InputError(f"loss_and_grads want={sorted(unknown)}: expected names from {GRADIENTS}")
        xp = backend.namespace(probe)
        if "tilts" in want and tilts_mrad is None:
            tilts_mrad = xp.zeros((positions.shape[0], 2), dtype=grids._dtype(xp, grids.real_dtype_name(probe.dtype)))
        geometry = "tilts" in want or "thickness" in want
        zeros = xp.zeros((positions.shape[0], 2), dtype=grids._dtype(xp, grids.real_dtype_name(probe.dtype)))
        if "tilts_before" in want and tilts_before_mrad is None:
            tilts_before_mrad = zeros
        if "tilts_after" in want and tilts_after_mrad is None:
            tilts_after_mrad = zeros
        fw = self.forward(probe, obj, positions, dz_a=dz_a, tilts_mrad=tilts_mrad, beam_scale=beam_scale,
                          background=background, keep_spectra=geometry and obj.shape[1] > 1,
                          detector_transform=detector_transform, tilts_before_mrad=tilts_before_mrad,
                          tilts_after_mrad=tilts_after_mrad)
        loss, dI = objective(fw.intensity)
        return loss, self._gradients(fw, obj, positions, dI, beam_scale, dz_a, want)

    def _gradients(self, fw: Forward, obj: Any, positions: Any, dI: Any, beam_scale: Any, dz_a: Any,
                   want: tuple[str, ...]) -> dict[str, Any]:
        xp = backend.namespace(fw.Psi)
        grads: dict[str, Any] = {}
        if "beam_scale" in want and beam_scale is not None:
            grads["beam_scale"] = xp.sum(dI * fw.raw, axis=(-2, -1))
        if "background" in want:
            grads["background"] = xp.sum(dI, axis=0)
        if not set(want) & BACKPROP:
            return grads  # loss only (validation): no back-propagation
        scale = 2.0 * dI if beam_scale is None else 2.0 * dI * beam_scale[:, None, None, ...]
        scale = bin_adjoint(scale, self.upsample)
        grad_Psi = fw.wave * xp.astype(scale[:, None, None, ...], fw.Psi.dtype)
        if fw.transform is not None:
            grad_Psi = fw.transform.adjoint(grad_Psi)
            if isinstance(fw.transform, tilt_modes.AfterTilt) and "tilts_after" in want:
                grads["tilts_after"] = fw.transform.grad
        dH = self._dH(fw, dz_a, want)
        back = multislice.backward(grad_Psi, fw.cache, fw.H, dH=dH)
        grad_patches, grad_psi1 = back[0], back[1]
        if "object" in want:
            target = xp.zeros_like(obj)
            grads["object"] = overlap.accumulate(target, fw.corners[0], fw.corners[1], grad_patches)
        if "probe" in want or "positions" in want or "tilts_before" in want:
            grad_psi1 = xp.sum(grad_psi1, axis=2)
            if fw.tilts_before is not None:
                if "tilts_before" in want:
                    grads["tilts_before"] = tilt_modes.tilt_gradient(grad_psi1, fw.psi1, self.shape, self.dx_a,
                                                                     self.wavelength_a, fw.tilts_before)
                grad_psi1 = grad_psi1 * xp.conj(tilt_modes.ramp(self.shape, self.dx_a, self.wavelength_a,
                                                                fw.tilts_before, fw.psi1.dtype))[:, None, ...]
            grads.update(self._probe_position_grads(fw, grad_psi1, want))
        if dH:
            grads.update(_geometry_grads(back[2], want))
        rdt = grids._dtype(xp, grids.real_dtype_name(fw.Psi.dtype))
        if "thickness" in want and "thickness" not in grads:  # S = 1: Δz does not enter
            grads["thickness"] = xp.zeros((), dtype=rdt)
        if "tilts" in want and "tilts" not in grads:
            grads["tilts"] = xp.zeros((positions.shape[0], 2), dtype=rdt)
        return grads

    def _dH(self, fw: Forward, dz_a: Any, want: tuple[str, ...]) -> dict[str, Any] | None:
        if fw.H is None or not ("tilts" in want or "thickness" in want):
            return None
        d = propagator_derivatives(self.shape, self.dx_a, self.wavelength_a, _float(dz_a), fw.H,
                                   tilt_mrad=fw.tilts_mrad)
        keep = {"thickness"} if "thickness" in want else set()
        keep |= {"tilt_y", "tilt_x"} if "tilts" in want else set()
        return {k: v for k, v in d.items() if k in keep}

    def _probe_position_grads(self, fw: Forward, grad_psi1: Any, want: tuple[str, ...]) -> dict[str, Any]:
        """Probe gradient (un-shift, summed over the batch) and §5.4 position gradient, one FFT each."""
        xp = backend.namespace(grad_psi1)
        G1 = backend.fft2(grad_psi1)  # (B, P, M, N)
        out: dict[str, Any] = {}
        if "probe" in want:
            out["probe"] = backend.ifft2(xp.sum(G1 * xp.conj(fw.ramp)[:, None, ...], axis=0))
        if "positions" in want:  # F[ψ1] = F[P]·ramp
            rdt = grids.real_dtype_name(grad_psi1.dtype)
            u = grids.pixel_freq_grid(self.shape, xp=xp, dtype=rdt)
            out["positions"] = overlap.shift_gradient(G1, fw.probe_k[None, ...] * fw.ramp[:, None, ...], u)
        return out


def _geometry_grads(geometry: dict[str, Any], want: tuple[str, ...]) -> dict[str, Any]:
    """Per-position tilt derivatives (B, 2) (t_y, t_x) per mrad; thickness summed over the batch."""
    xp_parts = {}
    if "thickness" in want and "thickness" in geometry:
        value = geometry["thickness"]
        xp = backend.namespace(value)
        xp_parts["thickness"] = xp.sum(value)
    if "tilts" in want and "tilt_x" in geometry:
        xp = backend.namespace(geometry["tilt_x"])
        xp_parts["tilts"] = xp.stack([geometry["tilt_y"], geometry["tilt_x"]], axis=1)
    return xp_parts


def _float(value: Any) -> float:
    """Δz as a Python float: a scalar, a 0-d array or the shared value of a (S,) array."""
    if isinstance(value, (int, float)):
        return float(value)
    host = backend.to_numpy(value).reshape(-1)
    if host.size > 1 and (host.max() - host.min()) > 1e-6 * abs(host.max()):
        raise InputError(f"slice thickness {host.tolist()} Å: per-slice values must be equal (one shared Δz)")
    return float(host[0])
