"""Calibration for ``preprocess``: ``--calibration FILE.toml`` (flat keys) then flags.

Keys are the fields of :class:`ptycli.store.calibration.Calibration`; a flag is the key
with dashes. Flags win over the file. Unknown keys and impossible values are
``RecipeError`` (exit 3) naming the key; impossible values in ``base`` (an input store's
calibration) are ``InputError`` (exit 4), since the input, not the configuration, is wrong.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from ..errors import InputError, RecipeError
from ..physics import aberrations as ab
from ..store.calibration import Calibration
from .preprocess_ops import parse_pair

PAIR_KEYS = {"scan_shape": int, "scan_step_a": float, "detector_shape": int}
# Numeric keys and the bound each must meet; NaN and ±inf never pass.
POSITIVE = ("energy_kev", "semiangle_mrad", "dk_mrad", "dk_inv_a", "scan_step_a")
NON_NEGATIVE = ("counts_per_frame",)
FINITE = ("scan_rotation_deg", "defocus_a")


def read_toml(path: str | Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib  # noqa: PLC0415
    else:  # pragma: no cover
        import tomli as tomllib  # noqa: PLC0415
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: calibration file not found")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{p}: not valid TOML ({exc})") from None


def _normalise(values: dict[str, Any], source: str) -> dict[str, Any]:
    known = set(Calibration.model_fields)
    unknown = sorted(set(values) - known)
    if unknown:
        raise RecipeError(f"{source}: unknown calibration key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    out = dict(values)
    for key, kind in PAIR_KEYS.items():
        if out.get(key) is not None:
            try:
                out[key] = parse_pair(_exact_ints(out[key]) if kind is int else out[key], kind)
            except (ValueError, TypeError):
                expected = "integers N or NxM" if kind is int else "N or NxM"
                raise RecipeError(f"{source}: {key}={values[key]!r}: expected {expected}") from None
    if out.get("aberrations") is not None:
        out["aberrations"] = normalise_aberrations(out["aberrations"])
    check_values(out)
    return out


def _exact_ints(value: Any) -> Any:
    """Refuse 12.5 (or "12.5") where an integer is meant: int() would silently truncate it."""
    if isinstance(value, str):
        items: Any = value.lower().replace(",", "x").split("x")
    else:
        items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError(v)
        if isinstance(v, str) and not v.strip().lstrip("+-").isdigit():
            raise ValueError(v)
    return value


def normalise_aberrations(values: Any, error: Callable[[str], Exception] = RecipeError) -> dict[str, float]:
    """Aliases (Cs, C5, defocus, astigmatism, ...) -> Krivanek names, as ``init --aberration`` accepts them.

    Checked here so a store never holds a key that ``init`` would refuse later.
    """
    if not isinstance(values, dict):
        raise error(f"calibration.aberrations: expected a table of C_nm [Å] / phi_nm [rad], got {values!r}")
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"calibration.aberrations.{key}: expected a number, got {value!r}")
        try:
            term = ab.from_abtem({str(key): value})
        except InputError:
            raise error(f"calibration.aberrations: unknown key {key!r}; expected C<nm> or phi<nm> of "
                        f"{', '.join(ab.TERMS)} (or Cs, C5, defocus)") from None
        for name, v in term.items():
            if name in out:
                raise error(f"calibration.aberrations: {key!r} and another key both set {name}; give one")
            if not math.isfinite(v):
                raise error(f"calibration.aberrations.{key}: expected a finite number, got {value!r}")
            out[name] = v
    return out


def check_values(values: dict[str, Any], error: Callable[[str], Exception] = RecipeError) -> None:
    """Every numeric key finite and within its bound, named as ``calibration.KEY``."""
    for keys, bound, ok in ((POSITIVE, " > 0", lambda v: v > 0), (NON_NEGATIVE, " >= 0", lambda v: v >= 0),
                            (FINITE, "", lambda v: True)):
        for key in keys:
            value = values.get(key)
            if value is None:
                continue
            for item in value if isinstance(value, (list, tuple)) else (value,):
                v = _as_number(item)
                if v is None:
                    continue  # not a number at all: the model's type error names it
                if not (math.isfinite(v) and ok(v)):
                    raise error(f"calibration.{key}: expected a finite number{bound}, got {v!r}")


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):  # the model would coerce "inf" to a float, so look at it as one
        try:
            return float(v)
        except ValueError:
            return None
    return v if isinstance(v, (int, float)) else None


def build_calibration(file: str | Path | None = None, flags: dict[str, Any] | None = None,
                      base: dict[str, Any] | None = None, base_source: str | None = None) -> Calibration:
    """Merge ``base`` (e.g. an input store's calibration) < file < flags, and validate.

    A bad value in ``base`` is an ``InputError`` prefixed with ``base_source`` (the input's path).
    """
    merged: dict[str, Any] = dict(base or {})

    def bad_input(msg: str) -> InputError:
        return InputError(f"{base_source}: {msg}" if base_source else msg)

    if merged.get("aberrations"):
        merged["aberrations"] = normalise_aberrations(merged["aberrations"], bad_input)
    check_values(merged, bad_input)
    if file is not None:
        merged.update(_normalise(read_toml(file), str(file)))
    merged.update(_normalise({k: v for k, v in (flags or {}).items() if v is not None}, "flags"))
    try:
        return Calibration.model_validate(merged)
    except ValidationError as exc:
        raise RecipeError(f"calibration: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "value"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg} (got {err.get('input')!r})" if err["loc"] else msg
