"""``--recipe auto``: the recipe picked from the data store's dose and dark-field share and
the state's slices and probe modes (recipe.auto_choice has the rules); any other name loads as it is."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..recipe import AUTO, AutoInputs, Recipe, load_recipe
from ..store.io import open_store
from .preprocess_ops import dark_field_fraction


def inputs_of(data: str | Path, state: str | Path) -> AutoInputs:
    """The dose (counts per frame over the scan step's area) and the state's modes and slices."""
    cal = dict(open_store(data, "data").attrs.get("calibration") or {})
    counts, step = cal.get("counts_per_frame"), cal.get("scan_step_a")
    dose = None
    if counts and step:
        sy, sx = (step, step) if isinstance(step, (int, float)) else step
        dose = float(counts) / (float(sy) * float(sx)) if sy and sx else None
    attrs: dict[str, Any] = dict(open_store(state, "state").attrs.get("state") or {})
    try:
        return AutoInputs(dose, int(attrs.get("n_slices", 1)), int(attrs.get("n_probe_modes", 1)),
                          _dark_field_fraction(data))
    except (TypeError, ValueError):
        raise InputError(f"{state}: attribute state.n_slices / n_probe_modes is not a count "
                         f"(got {attrs.get('n_slices')!r}, {attrs.get('n_probe_modes')!r})") from None


SAMPLED_FRAMES = 256  # frames averaged when the store has no mean pattern


def _dark_field_fraction(data: str | Path) -> float | None:
    """The data's dark-field share (preprocess_ops.dark_field_fraction) from its stored mean
    pattern, else from SAMPLED_FRAMES frames spread over the scan (the whole store may be
    larger than memory); None without a bright-field disk."""
    group = open_store(data, "data")
    if "mean_pattern" in group:
        mean = np.asarray(group["mean_pattern"][...], dtype=np.float64)
    elif "patterns" in group:
        pats = group["patterns"]
        rows = np.unique(np.linspace(0, pats.shape[0] - 1, min(SAMPLED_FRAMES, pats.shape[0])).astype(int))
        mean = np.asarray(pats.get_orthogonal_selection((rows,)), dtype=np.float64).mean(axis=0)
    else:
        return None
    try:
        return dark_field_fraction(mean)
    except InputError:
        return None


def load(recipe: str | Path, data: str | Path | None, state: str | Path | None, overrides: Iterable[str] = (),
         iterations: int | None = None) -> Recipe:
    """``load_recipe``, with ``auto`` resolved from ``data`` and ``state``."""
    auto = inputs_of(data, state) if str(recipe) == AUTO and data is not None and state is not None else None
    return load_recipe(recipe, list(overrides), iterations, auto=auto)
