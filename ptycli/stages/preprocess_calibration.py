"""Calibration for ``preprocess``: ``--calibration FILE.toml`` (flat keys) then flags.

Keys are the fields of :class:`ptycli.store.calibration.Calibration`; a flag is the key
with dashes. Flags win over the file. Unknown keys and impossible values are
``RecipeError`` (exit 3) naming the key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import InputError, RecipeError
from ..store.calibration import Calibration
from .preprocess_ops import parse_pair

PAIR_KEYS = {"scan_shape": int, "scan_step_a": float, "detector_shape": int}


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
        raise RecipeError(f"{source}: unknown calibration key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out = dict(values)
    for key, kind in PAIR_KEYS.items():
        if out.get(key) is not None:
            try:
                out[key] = parse_pair(out[key], kind)
            except (ValueError, TypeError):
                raise RecipeError(f"{source}: {key}={values[key]!r}: expected N or NxM") from None
    return out


def build_calibration(file: str | Path | None = None, flags: dict[str, Any] | None = None,
                      base: dict[str, Any] | None = None) -> Calibration:
    """Merge ``base`` (e.g. an input store's calibration) < file < flags, and validate."""
    merged: dict[str, Any] = dict(base or {})
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
