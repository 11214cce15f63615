"""Stage ``constrain``: apply constraints and resampling operations once to a state store.

Reads STATE.zarr (never edits it), optionally resamples (slices, lateral pad/crop, probe
modes), applies the listed constraints in the order given, and writes a new state store
with provenance that ``reconstruct`` can start from.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import backend
from ..constraints import resample
from ..constraints.base import Context, illumination_map
from ..constraints.registry import parse_apply, validate_constraints
from ..errors import InputError, RecipeError
from ..store.io import StoreWriter, check_output, input_ref, open_store, provenance_of
from ..store.state import State, load_state, write_state

COPIED_ATTRS = ("data", "calibration", "recipe", "recipe_hash")


@dataclass
class ConstrainOptions:
    apply: list[str] = field(default_factory=list)  # "NAME[:key=value,...]"
    recipe: Path | None = None
    slices: int | None = None
    slice_thickness_a: float | None = None
    pad_px: int = 0
    probe_modes: int | None = None
    counts_per_frame: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"apply": list(self.apply), "recipe": str(self.recipe) if self.recipe else None,
                "slices": self.slices, "slice_thickness_a": self.slice_thickness_a, "pad_px": self.pad_px,
                "probe_modes": self.probe_modes, "counts_per_frame": self.counts_per_frame}


def constraint_dicts(options: ConstrainOptions) -> tuple[list[dict[str, Any]], str]:
    """The constraint list (recipe file first, then --apply) and its key-path prefix."""
    items: list[dict[str, Any]] = []
    if options.recipe is not None:
        items.extend(_recipe_constraints(options.recipe))
    items.extend(parse_apply(text) for text in options.apply)
    return items, "constraints"


def _recipe_constraints(path: Path) -> list[dict[str, Any]]:
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such recipe file") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from None
    items = doc.get("constraints")
    if not isinstance(items, list):
        raise RecipeError(f"{path}: expected a [[constraints]] list (each with a type)")
    return items


def run(state_path: str | Path, output: str | Path, options: ConstrainOptions, *, overwrite: bool = False,
        device: str = "cpu", report: Callable[[str], None] | None = None) -> Path:
    """Apply ``options`` to the state at ``state_path`` and write ``output``; returns its path."""
    items, prefix = constraint_dicts(options)
    pairs = validate_constraints(items, prefix)  # fail on a bad recipe before any work
    check_output(output, overwrite=overwrite, inputs=[state_path])
    group = open_store(state_path, "state")
    state = _to_device(load_state(group), backend.get_xp(device))
    with StoreWriter(output, kind="state", stage="constrain", options=options.as_json(),
                     inputs=[input_ref(group, state_path)], provenance=provenance_of(group),
                     overwrite=overwrite) as writer:
        state = _resample(state, options, writer)
        ctx = _context(state, group, options)
        for spec, params in pairs:
            state = spec.apply(state, params, ctx)
            writer.record(spec.name, **params.model_dump(mode="json", exclude={"when"}))
            if report:
                report(f"applied {spec.name}")
        write_state(writer, state, to_host=backend.to_numpy)
        writer.set_attrs(**{k: group.attrs[k] for k in COPIED_ATTRS if k in group.attrs})
        return writer.finalize()


def _resample(state: State, options: ConstrainOptions, writer: StoreWriter) -> State:
    if options.slices is not None or options.slice_thickness_a is not None:
        state = resample.resample_slices(state, options.slices, options.slice_thickness_a)
        writer.record("resample_slices", slices=state.n_slices,
                      slice_thickness_a=float(backend.to_numpy(state.slice_thickness)[0]))
    if options.pad_px:
        state = resample.pad_object(state, options.pad_px)
        writer.record("pad_object", pad_px=options.pad_px)
    if options.probe_modes is not None:
        state = resample.change_probe_modes(state, options.probe_modes)
        writer.record("probe_modes", probe_modes=options.probe_modes)
    return state


def _context(state: State, group: Any, options: ConstrainOptions) -> Context:
    counts = options.counts_per_frame or _counts_from_data(group)
    return Context.from_state(state, illumination=illumination_map(state), counts_per_frame=counts)


def _counts_from_data(group: Any) -> float | None:
    """N_e = mean_j Σ_k D_j(k) from the data store the state refers to, when reachable."""
    ref = group.attrs.get("data") or {}
    path = ref.get("path") if isinstance(ref, dict) else None
    if not path or not Path(path).exists():
        return None
    patterns = open_store(path, "data")["patterns"]
    step = max(1, patterns.chunks[0])
    total = sum(float(np.asarray(patterns[i:i + step], dtype=np.float64).sum())
                for i in range(0, patterns.shape[0], step))
    return total / max(1, patterns.shape[0])


def _to_device(state: State, xp: Any) -> State:
    if backend.is_numpy(xp):
        return state
    moved = {name: backend.to_device(getattr(state, name), xp)
             for name in ("probe", "object", "positions", "tilts", "positions_initial", "slice_thickness")
             if getattr(state, name) is not None}
    return state.copy(**moved)
