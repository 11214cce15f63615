"""Scan regularisers (PyPty): cost terms on positions and tilts across the raster.

- ``position_acceleration`` / ``tilt_acceleration``: λ Σ |a|² with a the second difference
  along the fast (x) and/or slow (y) scan axis of the (ny, nx, 2) field; gradient
  2λ D2ᵀ D2 v. A regular grid and any linear drift cost nothing.
- ``position_affine``: λ Σ_j |p_j - A(p⁰_j)|² towards the least-squares affine deformation
  A of the nominal grid p⁰. Because A minimises the cost for the current p, the gradient
  is 2λ (p - A p⁰) (envelope theorem; A is refitted every evaluation).

Positions are in object px and tilts in mrad, so λ is per px² (per mrad²). The raster
shape comes from the data store's ``scan_shape`` when the engine context has it, or is
inferred from the nominal positions (rows of equal y).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..constraints.schedule import ScheduleValue, When, check_nonnegative, value_at
from ..errors import RecipeError

SCAN_REGULARISERS = ("position_acceleration", "tilt_acceleration", "position_affine")


class ScanRegulariserParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["position_acceleration", "tilt_acceleration", "position_affine"]
    weight: Annotated[float | ScheduleValue, AfterValidator(check_nonnegative)] = Field(
        1e-2, description="λ ≥ 0 per px² (positions) or per mrad² (tilts)")
    axes: Literal["both", "fast", "slow"] = "both"
    scan_shape: tuple[int, int] | None = Field(None, description="(ny, nx); inferred when absent")
    when: When = Field(default_factory=When)


def params_of(table: Any) -> ScanRegulariserParams:
    return ScanRegulariserParams.model_validate({"type": table.type, "when": table.when.model_dump(),
                                                 **table.params()})


def add(term: ScanRegulariserParams, state: Any, x: dict[str, Any], grads: dict[str, Any], it: int,
        fraction: float) -> float:
    """Add the term's gradient to ``grads`` (when its variable is refined); return its value."""
    if not term.when.active(it):
        return 0.0
    lam = value_at(term.weight, it) * fraction
    if term.type == "tilt_acceleration":
        name = "tilts"
    else:
        name = "positions"
    if name not in x:
        return 0.0
    v = np.asarray(x[name], dtype=np.float64)
    if term.type == "position_affine":
        value, g = affine_pull(v, np.asarray(state.positions_initial, dtype=np.float64))
    else:
        shape = term.scan_shape or infer_scan_shape(np.asarray(state.positions_initial))
        if shape is None or shape[0] * shape[1] != len(v):
            raise RecipeError(f"regulariser {term.type}: cannot tell the raster of {len(v)} positions; "
                              "set scan_shape = [ny, nx]")
        value, g = acceleration(v, shape, term.axes)
    grads[name] = grads[name] + lam * g
    return lam * value


def acceleration(v: np.ndarray, shape: tuple[int, int], axes: str = "both") -> tuple[float, np.ndarray]:
    """Σ|D2 v|² over the chosen scan axes and its gradient 2 D2ᵀ D2 v, for v (J, 2)."""
    grid = v.reshape(shape[0], shape[1], -1)
    value, grad = 0.0, np.zeros_like(grid)
    for axis, use in ((1, axes in ("both", "fast")), (0, axes in ("both", "slow"))):
        if not use or grid.shape[axis] < 3:
            continue
        a = np.diff(grid, n=2, axis=axis)
        value += float((a * a).sum())
        grad += 2 * _d2_adjoint(a, axis, grid.shape[axis])
    return value, grad.reshape(v.shape)


def _d2_adjoint(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """D2ᵀ a for the second difference a_i = v_i - 2 v_(i+1) + v_(i+2)."""
    shape = list(a.shape)
    shape[axis] = n
    out = np.zeros(shape)
    idx = lambda s: tuple(s if k == axis else slice(None) for k in range(a.ndim))
    out[idx(slice(0, n - 2))] += a
    out[idx(slice(1, n - 1))] -= 2 * a
    out[idx(slice(2, n))] += a
    return out


def affine_pull(p: np.ndarray, p0: np.ndarray) -> tuple[float, np.ndarray]:
    """Σ|p - A p⁰|² with A the least-squares affine map, and its gradient 2(p - A p⁰)."""
    design = np.concatenate([p0, np.ones((len(p0), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, p, rcond=None)
    r = p - design @ coef
    return float((r * r).sum()), 2 * r


def infer_scan_shape(p0: np.ndarray) -> tuple[int, int] | None:
    """(ny, nx) of a row-major raster: the first row is the run of positions with the first y."""
    if len(p0) < 2:
        return None
    steps = np.abs(np.diff(p0[:, 0]))
    jump = steps > 0.5 * max(steps.max(), 1e-12)
    if not jump.any():
        return (1, len(p0))
    nx = int(np.argmax(jump)) + 1
    return (len(p0) // nx, nx) if len(p0) % nx == 0 else None
