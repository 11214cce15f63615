"""The aberration function χ in Krivanek notation (physics.md §3.1–3.3).

Coefficients live in a flat dict: ``{"C10": Å, "C12": Å, "phi12": rad, ...}``; round terms
(m = 0) have no angle. The (a, b) Cartesian form and the CEOS import are I/O conversions.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .. import backend
from ..errors import InputError

# name -> (n, m); n+1 is the power of α, m the rotational symmetry.
TERMS: dict[str, tuple[int, int]] = {
    "C10": (1, 0), "C12": (1, 2),
    "C21": (2, 1), "C23": (2, 3),
    "C30": (3, 0), "C32": (3, 2), "C34": (3, 4),
    "C41": (4, 1), "C43": (4, 3), "C45": (4, 5),
    "C50": (5, 0), "C52": (5, 2), "C54": (5, 4), "C56": (5, 6),
}  # fmt: skip

# abTEM keyword aliases -> (Krivanek name, sign). defocus = -C10 (positive = underfocus).
ALIASES: dict[str, tuple[str, float]] = {
    "defocus": ("C10", -1.0), "df": ("C10", -1.0), "cs": ("C30", 1.0), "c5": ("C50", 1.0),
    "astigmatism": ("C12", 1.0), "coma": ("C21", 1.0), "trefoil": ("C23", 1.0),
}  # fmt: skip

_LENGTH_A = {"": 1.0, "a": 1.0, "nm": 10.0, "um": 1e4, "mm": 1e7}
_ANGLE_RAD = {"": math.pi / 180.0, "deg": math.pi / 180.0, "rad": 1.0}
_SPEC = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9_]+)\s*=\s*(?P<val>[-+0-9.eE]+)\s*(?P<unit>[A-Za-z]*)"
    r"(?:\s*@\s*(?P<ang>[-+0-9.eE]+)\s*(?P<aunit>deg|rad)?)?\s*$"
)


def angle_key(name: str) -> str:
    """'C12' -> 'phi12'."""
    return "phi" + name[1:]


def parse_aberration(spec: str) -> dict[str, float]:
    """Parse 'C12=20@30deg', 'C30=1.2mm', 'defocus=100' (abTEM sign) into polar Krivanek form."""
    match = _SPEC.match(spec)
    if match is None:
        raise InputError(f"aberration {spec!r}: expected NAME=VALUE[unit][@ANGLE[deg|rad]], e.g. C12=20@30deg")
    raw, unit = match["name"], match["unit"].lower()
    name, sign = ALIASES.get(raw.lower(), (raw.upper(), 1.0))
    if name not in TERMS:
        raise InputError(f"aberration {spec!r}: unknown term {raw!r}; expected one of {', '.join(TERMS)} or defocus")
    if unit not in _LENGTH_A:
        raise InputError(f"aberration {spec!r}: unknown length unit {unit!r}; expected A, nm, um or mm")
    out = {name: sign * float(match["val"]) * _LENGTH_A[unit]}
    if match["ang"] is not None:
        if TERMS[name][1] == 0:
            raise InputError(f"aberration {spec!r}: {name} is round and takes no angle")
        out[angle_key(name)] = float(match["ang"]) * _ANGLE_RAD[match["aunit"] or ""]
    return out


def validate(aberrations: dict[str, float]) -> dict[str, float]:
    """Check keys; return a clean float dict."""
    angles = {angle_key(n) for n, (_, m) in TERMS.items() if m}
    for key in aberrations:
        if key not in TERMS and key not in angles:
            raise InputError(f"aberrations: unknown key {key!r}; expected C<nm> or phi<nm> of {', '.join(TERMS)}")
    return {k: float(v) for k, v in aberrations.items()}


def chi(ky: Any, kx: Any, wavelength_a: float, aberrations: dict[str, float] | None) -> Any:
    """χ(k) [rad] = (2π/λ) Σ C_nm α^(n+1)/(n+1) cos(m(φ - φ_nm)), α = λ|k|, φ = atan2(ky, kx)."""
    xp = backend.namespace(ky, kx)
    ab = validate(aberrations or {})
    alpha = wavelength_a * xp.sqrt(ky * ky + kx * kx)
    phi = xp.atan2(ky * xp.ones_like(kx), kx * xp.ones_like(ky))
    out = xp.zeros_like(alpha)
    for name, (n, m) in TERMS.items():
        c = ab.get(name, 0.0)
        if c == 0.0:
            continue
        radial = c * alpha ** (n + 1) / (n + 1)
        out = out + (radial if m == 0 else radial * xp.cos(m * (phi - ab.get(angle_key(name), 0.0))))
    return (2.0 * math.pi / wavelength_a) * out


def polar_to_cartesian(aberrations: dict[str, float]) -> dict[str, float]:
    """{C12, phi12} -> {C12a, C12b} with a = C cos(mφ), b = C sin(mφ); round terms unchanged."""
    ab = validate(aberrations)
    out: dict[str, float] = {}
    for name, (_, m) in TERMS.items():
        if name not in ab:
            continue
        if m == 0:
            out[name] = ab[name]
            continue
        phi = ab.get(angle_key(name), 0.0)
        out[name + "a"] = ab[name] * math.cos(m * phi)
        out[name + "b"] = ab[name] * math.sin(m * phi)
    return out


def cartesian_to_polar(cartesian: dict[str, float]) -> dict[str, float]:
    """{C12a, C12b} -> {C12 = hypot(a, b), phi12 = atan2(b, a)/m}."""
    out: dict[str, float] = {}
    for name, (_, m) in TERMS.items():
        if m == 0:
            if name in cartesian:
                out[name] = float(cartesian[name])
            continue
        a, b = float(cartesian.get(name + "a", 0.0)), float(cartesian.get(name + "b", 0.0))
        if name + "a" in cartesian or name + "b" in cartesian:
            out[name] = math.hypot(a, b)
            out[angle_key(name)] = math.atan2(b, a) / m
    unknown = set(cartesian) - {n for n in TERMS} - {n + s for n in TERMS for s in "ab"}
    if unknown:
        raise InputError(f"aberrations: unknown Cartesian keys {sorted(unknown)}; expected e.g. C12a, C12b, C10")
    return out


# CEOS symbol -> (Krivanek name, magnitude factor) [Haider 2000; physics.md §3.3]
CEOS: dict[str, tuple[str, float]] = {
    "C1": ("C10", 1.0), "A1": ("C12", 1.0), "B2": ("C21", 3.0), "A2": ("C23", 1.0),
    "C3": ("C30", 1.0), "S3": ("C32", 4.0), "A3": ("C34", 1.0), "B4": ("C41", 5.0),
    "D4": ("C43", 5.0), "A4": ("C45", 1.0), "C5": ("C50", 1.0), "S5": ("C52", 6.0),
    "R5": ("C54", 6.0), "A5": ("C56", 1.0),
}  # fmt: skip


def from_ceos(ceos: dict[str, Any], angle_is_arg: bool = False, flip_angles: bool = False) -> dict[str, float]:
    """CEOS/Haider values -> Krivanek polar dict.

    Each value is a number (round terms, or an angle of 0) or a (magnitude_a, angle_deg) pair.
    The vendor angle is taken as the lobe azimuth unless ``angle_is_arg`` (divide by m);
    ``flip_angles`` negates it (conjugated convention).
    """
    out: dict[str, float] = {}
    for sym, value in ceos.items():
        if sym not in CEOS:
            raise InputError(f"CEOS aberration {sym!r}: unknown; expected one of {', '.join(CEOS)}")
        name, factor = CEOS[sym]
        mag, ang_deg = (value, 0.0) if isinstance(value, (int, float)) else (value[0], value[1])
        out[name] = factor * float(mag)
        m = TERMS[name][1]
        if m == 0:
            continue
        phi = math.radians(float(ang_deg))
        phi = phi / m if angle_is_arg else phi
        out[angle_key(name)] = -phi if flip_angles else phi
    return out


_ABTEM_ANGLES = {"astigmatism_angle": "phi12", "coma_angle": "phi21", "trefoil_angle": "phi23"}


def from_abtem(kwargs: dict[str, float]) -> dict[str, float]:
    """abTEM ``Probe`` keywords (defocus, Cs, C5, astigmatism[_angle], coma[_angle], trefoil[_angle],
    or polar C_nm/phi_nm) -> ptycli Krivanek dict. defocus = -C10; angles are kept (radians)."""
    out: dict[str, float] = {}
    for key, value in kwargs.items():
        if key in _ABTEM_ANGLES:
            out[_ABTEM_ANGLES[key]] = float(value)
        elif key.lower() in ALIASES:
            name, sign = ALIASES[key.lower()]
            out[name] = sign * float(value)
        else:
            out.update(validate({key: value}))
    return out
