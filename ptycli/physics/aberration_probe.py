"""The probe as a function of its aberration coefficients, and dL/dC from ∇_P L.

A probe P (centred, physics.md §1.4) has the spectrum Ψ = F[ifftshift(P)]. Changing the
Cartesian Krivanek coefficients by c (physics.md §3.2) multiplies it by exp(-i Σ_b c_b χ_b):

    P(c) = fftshift( F⁻¹[ Ψ ⊙ exp(-i Σ_b c_b χ_b(k)) ] )

with χ_b the basis functions of §3.2 (χ is linear in the a/b coefficients). The map is a
group in c (P(c1)(c2) = P(c1 + c2)), so engines re-base at c = 0 whenever they like. With
G = F[ifftshift(∇_P L)] (the unitary chain of §5.1), the coefficient gradient is

    dL/dc_b = Re Σ_k conj(G) ⊙ (-i χ_b) ⊙ Ψ(c)          (summed over probe modes)

Basis functions are divided by their largest value inside the aperture, so a unit step in
a coefficient is one radian of phase at the aperture edge (`norms` converts back to Å).
"""

from __future__ import annotations

from typing import Any

from .. import backend
from . import grids
from .aberrations import TERMS

DEFAULT_TERMS = ("C10", "C12", "C21", "C23", "C30")


def cartesian_names(terms: tuple[str, ...] | list[str]) -> list[str]:
    """Polar names -> the refined Cartesian names: C10 -> [C10], C12 -> [C12a, C12b]."""
    out: list[str] = []
    for name in terms:
        if name not in TERMS:
            raise ValueError(f"aberration term {name!r}: expected one of {sorted(TERMS)}")
        out.extend([name] if TERMS[name][1] == 0 else [name + "a", name + "b"])
    return out


def basis(shape: tuple[int, int], dx_a: float, wavelength_a: float, names: list[str], semiangle_mrad: float,
          *, xp: Any = None, dtype: str = "float32") -> tuple[Any, list[float]]:
    """(K, M, N) unit basis χ_b / norm_b (unshifted) and the norms [rad/Å] per name."""
    xp = grids.resolve(xp)
    ky, kx = grids.freq_grid(shape, dx_a, xp=xp, dtype="float64")
    alpha = wavelength_a * xp.sqrt(ky * ky + kx * kx)
    phi = xp.atan2(ky * xp.ones_like(kx), kx * xp.ones_like(ky))
    inside = alpha <= semiangle_mrad * 1e-3
    rows, norms = [], []
    for name in names:
        n, m = TERMS[name[:3]]
        radial = (2 * 3.141592653589793 / wavelength_a) * alpha ** (n + 1) / (n + 1)
        if m == 0:
            chi_b = radial
        else:
            chi_b = radial * (xp.cos(m * phi) if name.endswith("a") else xp.sin(m * phi))
        norm = float(backend.to_numpy(xp.max(xp.abs(xp.where(inside, chi_b, 0.0)))))
        norm = norm if norm > 0 else 1.0
        rows.append(chi_b / norm)
        norms.append(norm)
    return xp.astype(xp.stack(rows, axis=0), getattr(xp, dtype)), norms


def spectrum(probe: Any) -> Any:
    """Ψ = F[ifftshift(P)] per mode (unshifted)."""
    return backend.fft2(backend.ifftshift(probe, axes=(-2, -1)))


def phase_factor(coeffs: Any, chi_basis: Any, complex_dtype: Any) -> Any:
    """exp(-i Σ_b c_b χ_b) (M, N)."""
    xp = backend.namespace(chi_basis)
    chi = xp.sum(coeffs[:, None, None] * chi_basis, axis=0)
    return xp.astype(xp.cos(chi) - 1j * xp.sin(chi), complex_dtype)


def apply(probe_k: Any, coeffs: Any, chi_basis: Any) -> Any:
    """P(c) = fftshift(F⁻¹[Ψ exp(-i Σ c_b χ_b)]) for the reference spectrum Ψ (P, M, N)."""
    factor = phase_factor(coeffs, chi_basis, probe_k.dtype)
    return backend.fftshift(backend.ifft2(probe_k * factor), axes=(-2, -1))


def coefficient_gradient(grad_probe: Any, probe: Any, chi_basis: Any) -> Any:
    """dL/dc (K,) from ∇_P L and P = P(c) (both (P, M, N), centred)."""
    xp = backend.namespace(grad_probe)
    G = spectrum(grad_probe)
    cross = xp.sum(xp.imag(xp.conj(G) * spectrum(probe)), axis=0)  # Re(conj(G)(-i)Ψ) = Im(conj(G)Ψ)
    return xp.sum(cross[None] * chi_basis, axis=(-2, -1))


def reference_gradient(grad_probe: Any, coeffs: Any, chi_basis: Any) -> Any:
    """∇ of L with respect to the reference probe P_ref when P = P(P_ref, c) (adjoint of `apply`)."""
    xp = backend.namespace(grad_probe)
    factor = xp.conj(phase_factor(coeffs, chi_basis, grad_probe.dtype))
    return backend.fftshift(backend.ifft2(spectrum(grad_probe) * factor), axes=(-2, -1))


def updated_aberrations(polar: dict[str, float], names: list[str], delta_c: Any, norms: list[float]
                        ) -> dict[str, float]:
    """The polar aberration dict after adding the unit-scaled Cartesian steps ``delta_c``."""
    from .aberrations import cartesian_to_polar, polar_to_cartesian

    cart = polar_to_cartesian(polar)
    for name, d, norm in zip(names, [float(v) for v in delta_c], norms):
        cart[name] = cart.get(name, 0.0) + d / norm
    return {**polar, **cartesian_to_polar(cart)}
