"""``reconstruct``: a data store and a starting state -> a reconstructed state store.

Orchestration only: open the inputs, build the device context, run the engine loop of
``ptycli.engines.loop`` over the recipe's stages, write checkpoints into ``OUT.partial``
and, at the end, the final state, history and recipe into ``OUT``.

With ``distributed=True`` under ``mpiexec``/``srun`` every rank runs the loop on its part
of each group (engines/distributed.py); rank 0 alone writes ``OUT`` and its checkpoints
(the full state, so ``--resume`` takes any rank count) and the others wait for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import backend
from ..engines import checkpoint as ckpt
from ..engines import common, distributed, loop
from ..engines import noise as noise_mod
from ..engines.data import PatternSource, SignalSource, mean_counts
from ..engines.registry import ENGINES
from ..engines.signals import SignalHandlers, StopFlag
from ..errors import InputError, Interrupted, NumericalError, OutputExistsError, RecipeError, StoreError
from ..recipe import NEVER, Recipe, constraint_params, resolved
from ..store.io import (
    OutputLock,
    StoreWriter,
    check_output,
    checkpoint_iterations,
    input_ref,
    open_store,
    partial_path,
    provenance_of,
    read_meta,
    write_array,
)
from ..store.calibration import load_calibration, wavelength_a
from ..store.schema import ROOT_ATTR, json_hash
from ..store.state import State, load_state, write_state
from . import reconstruct_group_plan as group_plan
from . import auto_recipe, reconstruct_positions, reconstruct_validation


REPLACES_OUTPUT = "replaces_output"  # partial-store attribute: the run was started with --overwrite


class _Inputs:
    """The opened data store and what every stage of the run reads from it."""

    def __init__(self, data_path: Path, xp: Any, precision: str):
        self.path = data_path
        self.group = open_store(data_path, "data")
        real, _ = backend.dtypes(precision)
        self.xp, self.real = xp, real
        if "patterns" not in self.group:
            raise InputError(f"{data_path}: data store has no 'patterns' array")
        self.patterns: PatternSource | None = None  # opened by load_patterns, once streaming is decided
        self.mask = self._unshifted("detector_mask")
        self.comp_masks = self._unshifted("compressed/masks")
        self.signals = (SignalSource(self.group["compressed/signals"], xp, real)
                        if "compressed/signals" in self.group else None)
        shape = self.group.attrs.get("scan_shape")
        self.scan_shape = tuple(shape) if shape else None

    def _unshifted(self, name: str) -> Any:
        if name not in self.group:
            return None
        host = np.fft.ifftshift(np.asarray(self.group[name][...], dtype=self.real), axes=(-2, -1))
        return backend.to_device(host, self.xp, dtype=self.real)

    def load_patterns(self, stream: bool | None, budget: int | None) -> None:
        self.patterns = PatternSource(self.group["patterns"], self.xp, self.real, stream=stream, budget_bytes=budget)

    def prefetch(self, idx: np.ndarray, stage: Any) -> None:
        """Start reading the patterns of ``idx`` in the background (compressed signals are resident)."""
        if stage.noise.model != "compressed":
            self.patterns.prefetch(idx)

    def close(self) -> None:
        if self.patterns is not None:
            self.patterns.close()

    def read(self, idx: np.ndarray, stage: Any) -> Any:
        if stage.noise.model == "compressed":
            if self.signals is None:
                raise InputError(f"{self.path}: noise model 'compressed' needs compressed/signals in the data store")
            return self.signals.read(idx)
        return self.patterns.read(idx)

    def read_rows(self, idx: np.ndarray, stage: Any) -> Any:
        """``read``, with resident patterns as data.Rows (engines that read frames in place)."""
        if stage.noise.model == "compressed":
            return self.read(idx, stage)
        return self.patterns.read_rows(idx)


def run(data: str | Path, state: str | Path, out: str | Path, *, recipe: str | Path | Recipe = "quick",
        overrides: Iterable[str] = (), iterations: int | None = None, device: str = "auto",
        precision: str = "single", seed: int = 0, checkpoint_every: int = 0, resume: bool = False,
        stream: bool | None = None, memory_budget_bytes: int | None = None, positions: str = "all",
        overwrite: bool = False, observers: Iterable[Any] = (), handle_signals: bool = True,
        validation_fraction: float = 0.0, early_stop_patience: int = 0,
        distributed_run: bool = False, group_size: int | str | None = None, prefetch: bool = True,
        stop_flag: StopFlag | None = None) -> dict[str, Any]:
    """Reconstruct; returns a JSON-able summary (output path, final loss, iterations, timings).

    ``validation_fraction`` holds out a seeded share of the positions from every update and
    records their loss each iteration (``history/validation_loss``); with
    ``early_stop_patience`` N a stage ends once that loss has not improved for N iterations.
    ``distributed_run`` splits every group over the MPI ranks (one rank: the ordinary path);
    observers then run on rank 0 only, and every rank returns rank 0's summary.
    ``group_size`` (N or "auto") replaces every stage's ``grouping.size``; "auto" sizes
    groups (and chooses streaming, unless ``stream`` is given) by ``engines.data.plan_memory``
    within ``memory_budget_bytes``. ``prefetch`` reads the next group's streamed patterns in a
    background thread while the current group computes (the results are the same without).
    ``stop_flag``: a caller's own (``tune``, whose handlers set it): the run stops at it as at
    its own signals.
    """
    out = Path(out)
    comm = distributed.world(distributed_run)
    held = checkpoint_iterations(partial_path(out)) if resume else None
    # --resume on a finished OUT: "already complete" only for the same inputs, recipe and
    # options (checked below); with --overwrite a stale OUT is recomputed (what make needs)
    finished = resume and out.exists() and held is None
    # A checkpoint beside a complete OUT is newer work: that of an interrupted --overwrite run,
    # whose completion was asked to replace OUT; --resume carries that request on.
    replace = overwrite or (held is not None and _replaces_output(out))
    if held is not None and out.exists() and not replace:
        raise OutputExistsError(f"{out} exists and {partial_path(out)} holds a checkpoint at iteration {held} of a "
                                f"run not started with --overwrite; continue it with --resume --overwrite "
                                f"(it replaces {out} when complete)")
    recipe_file = None if isinstance(recipe, Recipe) else recipe
    if not finished:
        check_output(out, overwrite=replace, inputs=[data, state, recipe_file], resume=resume)  # before loading patterns
    # one writer of OUT at a time (store/lock.py), from before the checkpoint is read to the
    # rename: a second run on the same -o stops with exit 5 instead of mixing into this one
    lock = _on_root(comm, lambda: OutputLock(out).acquire())
    try:
        rec = recipe if isinstance(recipe, Recipe) else auto_recipe.load(recipe, data, state, overrides, iterations)
        rec = group_plan.with_group_size(rec, group_size)
        rec_json = resolved(rec)
        seed = rec.seed if rec.seed is not None else seed
        xp = backend.get_xp(distributed.select_device(device, comm))
        inputs = _Inputs(Path(data), xp, precision)
        state_group = open_store(state, "state")
        validation = {"fraction": float(validation_fraction), "early_stop_patience": int(early_stop_patience)}
        if early_stop_patience and not validation_fraction:
            raise RecipeError(f"--early-stop-patience {early_stop_patience} needs --validation-fraction > 0")
        # the inputs' records, read once: the resume check, the new store's inputs and its data ref
        refs = (input_ref(inputs.group, data), input_ref(state_group, state))
        run_opts = {"seed": seed, "positions": positions, "precision": precision}
        if finished:
            try:
                _check_same_run(out, _root_attrs(out), rec_json, validation, refs, run_opts, finished=True)
                return _already_complete(out)
            except (RecipeError, InputError):
                if not overwrite:
                    raise
            resume = False  # a stale OUT, to be replaced: a fresh run
            check_output(out, overwrite=True, inputs=[data, state, recipe_file])
        resume_from = _resume_point(out, rec_json, validation, refs, run_opts) if resume else None
        st = resume_from[0] if resume_from else load_state(state_group)
        _check_shapes(st, inputs, Path(data))
        _check_calibration(st, inputs, Path(data), state_group)
        subset = reconstruct_positions.select(positions, st.positions.shape[0], inputs.scan_shape, st.positions)
        subset, held_out = reconstruct_validation.split(subset, validation_fraction, seed)
        n_e = mean_counts(inputs.group["patterns"], subset, where=f"{inputs.path}/patterns")
        st = _to_device(st, xp, precision)
        plan = group_plan.plan(rec, st, xp, precision, memory_budget_bytes, comm,
                               group_plan.stored(out) if resume_from else None)
        inputs.load_patterns(stream if stream is not None or plan is None else plan["stream"], memory_budget_bytes)
        options = {"recipe": rec_json, "device": device, "precision": precision, "seed": seed,
                   "positions": positions, "checkpoint_every": checkpoint_every, "validation": validation}
        if distributed_run:
            options["ranks"] = comm.size
        comm.barrier()  # every rank has read the checkpoint before rank 0 touches OUT.partial
        writer = _on_root(comm, lambda: _open_writer(out, options, refs, state_group, replace,
                                                     bool(resume_from), rec_json, validation, plan, lock))
        flag = stop_flag if stop_flag is not None else StopFlag()
        monitor = _Monitor(partial_path(out), comm)
        hooks = loop.RunHooks(
            read_batch=inputs.read, read_rows=inputs.read_rows,
            make_engine=lambda stage, s: _make_engine(stage, s, inputs, xp, precision, n_e, comm),
            apply_constraints=lambda s, stage, it: _apply_constraints(s, stage, it, n_e),
            checkpoint=monitor.checkpoint, stop=flag, observers=list(observers) if comm.is_root else [],
            checkpoint_every=checkpoint_every, early_stop_patience=int(early_stop_patience),
            validation=reconstruct_validation.Validator(held_out, inputs.read, xp, precision, n_e, inputs)
            if len(held_out) else None, comm=comm, prefetch=inputs.prefetch if prefetch else None)
        cursor, history, engine_state, extra = _resume_parts(resume_from)
        run_rec = group_plan.apply(rec, plan)
        with (writer if writer is not None else _Null()), (SignalHandlers(flag) if handle_signals else _Null()):
            try:
                _plan_kernel_variants(run_rec, xp)
                if not distributed_run:
                    _plan_compile_helper(xp, data, state, run_rec, subset, precision, seed)
                with _array_path_for_plugin_noise(run_rec):
                    st, history = loop.run(run_rec, st, subset, seed, hooks, cursor, history, engine_state, extra)
            except (Interrupted, NumericalError) as exc:
                if writer is not None:
                    _mark(writer, "interrupted" if isinstance(exc, Interrupted) else "failed")
                raise
            finally:
                inputs.close()  # stop the prefetch thread, also on a stop or an error
            summary = _on_root(comm, lambda: _finish(writer, st, history, rec, inputs, refs[0], subset, held_out))
        return summary if plan is None or summary is None else {**summary, "group_plan": group_plan.public(plan)}
    finally:
        if lock is not None:
            lock.release()


def is_root(distributed_run: bool) -> bool:
    """True on the rank that reports (rank 0; always true without ``distributed_run``)."""
    return distributed.world(distributed_run).is_root


def abort_job(distributed_run: bool, code: int) -> None:
    """After an unexpected error on one rank: end every rank of the MPI job with ``code``."""
    distributed.abort(distributed.world(distributed_run), code)


def _open_writer(out: Path, options: dict, refs: tuple, state_group: Any, overwrite: bool, reuse: bool,
                 rec_json: dict, validation: dict, plan: dict | None = None, lock: Any = None) -> StoreWriter:
    writer = StoreWriter(out, kind="state", stage="reconstruct", options=options, inputs=list(refs),
                         provenance=provenance_of(state_group), overwrite=overwrite,
                         keep_partial_on_error=True, reuse_partial=reuse, lock=lock)
    writer.set_attrs(recipe=rec_json, recipe_hash=json_hash(rec_json), validation=validation)
    writer.set_attrs(**{REPLACES_OUTPUT: bool(overwrite)})  # read by --resume, dropped by _finish
    if plan is not None:  # the sizes "auto" chose: --resume reuses them, so its groups stay the same
        writer.set_attrs(group_plan=group_plan.public(plan))
    return writer


def _replaces_output(out: Path) -> bool:
    """Whether the run that left OUT.partial was started with --overwrite."""
    import zarr

    try:
        return bool(zarr.open_group(str(partial_path(out)), mode="r").attrs.get(REPLACES_OUTPUT, False))
    except Exception:  # noqa: BLE001 -- an unreadable root: not asked to replace anything
        return False


def _on_root(comm: Any, fn: Any) -> Any:
    """Run ``fn`` on rank 0 only; its error is raised on every rank (no rank left waiting).
    Returns fn's value on rank 0; other ranks get rank 0's value when it is a plain summary
    dict and None otherwise (a writer lives on rank 0 only)."""
    if comm.size == 1:
        return fn()
    value, error = None, None
    if comm.is_root:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 -- any error: re-raised below, after the other ranks hear of it
            error = exc
    shared = comm.bcast((value if isinstance(value, dict) else None, error))
    if shared[1] is not None:
        raise error if comm.is_root else shared[1]
    return value if comm.is_root else shared[0]


def _mark(writer: StoreWriter, status: str) -> None:
    """Say in the partial store's root attribute why it stopped (it keeps its checkpoint)."""
    writer.meta.status = status  # type: ignore[assignment]
    writer.set_attrs(**{ROOT_ATTR: writer.meta.model_dump(mode="json")})


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _Monitor:
    """Checkpoint hook: convergence record + atomic checkpoint into the partial store."""

    def __init__(self, root: Path, comm: Any = distributed.SERIAL):
        self.root, self.previous, self.comm = root, None, comm

    def checkpoint(self, state: Any, engine: Any, cursor: loop.Cursor, history: loop.History, extra: dict) -> None:
        """Rank 0 writes the full state (every rank holds it); the others wait for it."""
        record, self.previous = ckpt.convergence(self.previous, state, len(history.loss))
        history.convergence.append(record)  # on every rank: histories stay identical
        _on_root(self.comm, lambda: ckpt.write(self.root, state, engine.state_dict(), cursor, history,
                                               extra.get("positions_iter_start")))


def _make_engine(stage: Any, state: Any, inputs: _Inputs, xp: Any, precision: str, n_e: float,
                 comm: Any = distributed.SERIAL) -> Any:
    noise = stage.noise.model
    if noise == "compressed" and inputs.comp_masks is None:
        raise InputError(f"{inputs.path}: noise model 'compressed' needs compressed/masks in the data store")
    ctx = common.make_context(state, xp, precision, noise, stage.noise.eps, mask=inputs.mask,
                              comp_masks=inputs.comp_masks, n_e=n_e)
    ctx.extra["comm"] = comm  # engines sum their per-position contributions over the ranks
    from ..engines.variables import check_engine

    check_engine(stage, state)  # ePIE/LSQML refuse upsampling, sub-scan aberrations, before/after tilts
    return ENGINES[stage.type].engine(stage, ctx, state)


def _apply_constraints(state: Any, stage: Any, it: int, n_e: float) -> Any:
    if not stage.constraints:
        return state
    from ..constraints import registry
    from ..constraints.base import Context

    pairs = [(registry.CONSTRAINTS[c.type], constraint_params(registry.CONSTRAINTS[c.type], c))
             for c in stage.constraints]
    ctx = Context.from_state(state, iteration=it, counts_per_frame=n_e, illumination=common.illumination(state))
    new, _ = registry.apply_constraints(state, registry.ordered(pairs), ctx)
    new.positions = np.asarray(backend.to_numpy(new.positions), dtype=np.float64)
    return new


def _plan_kernel_variants(rec: Recipe, xp: Any) -> None:
    """Name what the run's stages will need (_kernels/variants.py), so a first run compiles each
    part kernel once: single-slice refines positions only from LSQ-ML's iteration 10, and without
    this its first run compiled the lean part kernel and then the full one (41 against 27 CPU-s)."""
    k = backend.kernels(xp)
    if k is None:
        return

    stages = list(rec.stage)
    k.plan_variants(positions=any(s.refine.positions != NEVER for s in stages),
                    tilts=any({"tilts", "tilt_global", "thickness"} & set(s.refine.extra_refined()) for s in stages),
                    in_place=any(s.type in ("gradient", "lbfgs") for s in stages),  # parts that keep no waves
                    poisson=any(getattr(getattr(s, "noise", None), "model", None) == "poisson" for s in stages))


def _plan_compile_helper(xp: Any, data: Any, state: Any, rec: Recipe, subset: Any, precision: str, seed: int) -> None:
    """If this run starts compiling kernels, a helper process (stages/compile_helper.py) makes it
    on a few of its positions and compiles the other kernels meanwhile (_kernels/helper.py)."""
    k = backend.kernels(xp)
    if k is None:
        return
    sizes = [stage.grouping.size for stage in rec.stage if getattr(stage, "grouping", None) is not None]
    count = k.compile_helper.helper_positions(len(subset), sizes)
    k.compile_helper.plan("ptycli.stages.compile_helper", {
        "data": str(Path(data).resolve()), "state": str(Path(state).resolve()), "recipe": resolved(rec),
        "positions": [int(i) for i in np.asarray(subset)[:count]], "precision": precision, "seed": int(seed)})


def _array_path_for_plugin_noise(rec: Recipe) -> Any:
    """The fused CPU kernels implement the built-in noise models only: a recipe that names a
    plugin's model runs every stage through the array-API code (same results, slower)."""
    if all(noise_mod.uses_kernels(stage.noise.model) for stage in rec.stage if getattr(stage, "noise", None)):
        return _Null()
    return backend.kernels_disabled()


def _to_device(st: State, xp: Any, precision: str) -> State:
    real, cplx = backend.dtypes(precision)
    positions = np.asarray(st.positions, dtype=np.float64)
    initial = positions.copy() if st.positions_initial is None else np.asarray(st.positions_initial, np.float64)
    thickness = st.slice_thickness if st.slice_thickness is not None else np.ones(st.n_slices, dtype=real)
    return st.copy(probe=backend.to_device(st.probe, xp, dtype=cplx),
                   object=backend.to_device(st.object, xp, dtype=cplx),
                   positions=positions, positions_initial=initial,
                   slice_thickness=np.asarray(backend.to_numpy(thickness), dtype=real))


def _check_shapes(st: State, inputs: _Inputs, data: Path) -> None:
    j, m, n = inputs.group["patterns"].shape
    if st.positions.shape[0] != j:
        raise InputError(f"{data}: {j} patterns but the state has {st.positions.shape[0]} positions")
    if tuple(st.probe.shape[-2:]) != (m * st.upsample, n * st.upsample):
        raise InputError(f"{data}: patterns are {m}x{n} but the probe window is {st.probe.shape[-2:]}"
                         + (f" (upsample {st.upsample})" if st.upsample > 1 else ""))


CALIBRATION_RTOL = 1e-3  # stored values are rounded at most to this; a real mismatch is far larger


def _check_calibration(st: State, inputs: _Inputs, data: Path, state_group: Any) -> None:
    """Energy, semi-angle and detector pixel of the state must be those of the data: the model
    would otherwise fit patterns of another wavelength or sampling and converge to nonsense."""
    if _calibration_from_file(state_group):
        return  # init --calibration FILE corrected the data's values on purpose: the state's are the ones
    try:
        cal = load_calibration(dict(inputs.group.attrs))
    except Exception:  # noqa: BLE001 -- an unreadable calibration: preprocess reports it, nothing to compare
        return
    m = st.probe.shape[-2] // max(st.upsample, 1)  # detector pixels, as init sets dx = 1/(M dk)
    dk = 1.0 / (m * st.dx_a) if st.dx_a else None
    pairs = [("energy_kev", cal.energy_kev, st.energy_kev, "keV"),
             ("semiangle_mrad", cal.semiangle_mrad, st.semiangle_mrad, "mrad")]
    if cal.dk_inv_a is None and cal.dk_mrad is not None and dk is not None:  # named as the data gives it
        pairs.append(("dk_mrad", cal.dk_mrad, dk * wavelength_a(st.energy_kev * 1e3) * 1e3, "mrad"))
    else:
        pairs.append(("dk_inv_a", cal.pixel_inv_a, dk, "1/Å"))
    for key, want, have, unit in pairs:
        if want is None or have is None:
            continue
        if abs(float(have) - float(want)) > CALIBRATION_RTOL * abs(float(want)):
            raise InputError(f"{data}: calibration {key} is {float(want):.6g} {unit} but the state has "
                             f"{float(have):.6g} {unit}; initialise the state from this data (ptycli init)")


def _calibration_from_file(state_group: Any) -> bool:
    """Whether an ``init --calibration FILE`` made this state (or its ancestor)."""
    meta = read_meta(state_group)
    records = [*meta.provenance, meta.as_record()]
    return any(r.stage == "init" and (r.options or {}).get("calibration") for r in records)


def _resume_point(out: Path, rec_json: dict, validation: dict, refs: tuple, run_opts: dict) -> tuple | None:
    part = partial_path(out)
    found = ckpt.find(part) if part.exists() else None
    if found is None:
        return None
    _check_same_run(part, _root_attrs(part), rec_json, validation, refs, run_opts)
    return ckpt.read(found)


def _root_attrs(path: Path) -> dict:
    import zarr

    return dict(zarr.open_group(str(path), mode="r").attrs)


def _check_same_run(part: Path, attrs: dict, rec_json: dict, validation: dict, refs: tuple, run_opts: dict,
                    finished: bool = False) -> None:
    """--resume continues (or, on a ``finished`` OUT, reports as done) the run recorded in
    ``attrs`` only when it is this one: exit 4 for other inputs, 3 for another recipe or options."""
    meta = dict(attrs.get(ROOT_ATTR) or {})
    then = "the run that wrote it" if finished else "the interrupted run"
    # a finished OUT is recomputed with --overwrite; a checkpoint is never discarded by a flag
    fix = "pass --overwrite to recompute it" if finished else f"delete {part} to start over"
    _check_same_inputs(part, meta.get("inputs") or [], refs, then, fix)
    # the seed draws the validation split, --positions the subset the groups are made of, and
    # --precision the dtypes the optimiser's moments live in: a resume with others would
    # continue a different run (held-out positions trained on, the cursor in other groups)
    stored_opts = dict(meta.get("options") or {})
    for key, value in run_opts.items():
        if key in stored_opts and stored_opts[key] != value:
            raise RecipeError(f"{part}: --resume with --{key} {value} but {then} had "
                              f"--{key} {stored_opts[key]}; use the same --{key}, or {fix}")
    stored = attrs.get("recipe")
    old_val = dict(attrs.get("validation") or {"fraction": 0.0, "early_stop_patience": 0})
    if old_val != validation:
        raise RecipeError(f"{part}: --resume with other validation options ({validation}) than "
                          f"{then} ({old_val}); use the same --validation-fraction and --early-stop-patience, or {fix}")
    if stored is not None and json_hash(stored) != json_hash(rec_json):
        raise RecipeError(f"{part}: --resume with a different recipe than {then} "
                          f"(hash {json_hash(stored)} vs {json_hash(rec_json)}); use the same recipe and options, or {fix}")


def _check_same_inputs(part: Path, stored: list, refs: tuple, then: str, fix: str) -> None:
    """A checkpoint continued on other data, or from another starting state, would mix two
    runs into one result that no single command reproduces: refuse, naming which input differs."""
    for ref, what, arg in zip(refs, ("data", "starting state"), ("DATA", "STATE")):
        old = next((r for r in stored if isinstance(r, dict) and r.get("kind") == ref.kind), None)
        if old is not None and old.get("fingerprint") != ref.fingerprint:
            raise InputError(f"{part}: --resume with other {what} ({ref.path}, fingerprint {ref.fingerprint}) than "
                             f"{then} ({old.get('path')}, fingerprint {old.get('fingerprint')}); "
                             f"give the same {arg}, or {fix}")


def _resume_parts(resume_from: tuple | None) -> tuple:
    if resume_from is None:
        return None, None, None, {}
    _, engine_state, cursor, history, start = resume_from
    extra = {} if start is None else {"positions_iter_start": start}
    return cursor, history, engine_state, extra


def _already_complete(out: Path) -> dict[str, Any]:
    group = open_store(out, "state")
    if "history" not in group:
        raise StoreError(f"{out}: exists but is not a reconstruct output; choose another -o or --overwrite")
    loss = np.asarray(group["history/loss"][...])
    return {"output": str(out), "status": "already complete", "iterations": int(loss.size),
            "final_loss": float(loss[-1]) if loss.size else None}


def _finish(writer: StoreWriter, st: State, history: loop.History, rec: Recipe, inputs: _Inputs,
            data_ref: Any, subset: np.ndarray, held_out: np.ndarray) -> dict[str, Any]:
    write_state(writer, st, backend.to_numpy)
    if history.validation_loss:
        write_array(writer.group, "history/validation_loss", np.asarray(history.validation_loss, dtype=np.float64),
                    dims=("iteration",), units="1", attrs={"long_name": "loss per position"})
        write_array(writer.group, "history/validation_positions", np.asarray(held_out, dtype=np.int64),
                    dims=("validation_position",))  # not "position": xarray needs one size per name
    write_array(writer.group, "history/loss", np.asarray(history.loss, dtype=np.float64), dims=("iteration",),
                units="1", attrs={"long_name": "loss per position"})
    write_array(writer.group, "history/stage", np.asarray(history.stage, dtype=np.int32), dims=("iteration",))
    write_array(writer.group, "history/time_s", np.asarray(history.time_s, dtype=np.float64), dims=("iteration",),
                units="s")
    total_s = float(np.sum(history.time_s))
    stages = [{"type": s.type, "iterations": s.iterations, "noise": s.noise.model} for s in rec.stage]
    writer.group["history"].attrs["history"] = {"stages": stages, "convergence": history.convergence,
                                                "early_stop": history.early_stop,
                                                "backoff": history.backoff,
                                                "timings": {"total_s": total_s,
                                                            "device": backend.device_name(inputs.xp)}}
    writer.set_attrs(data={"path": data_ref.path, "fingerprint": data_ref.fingerprint})
    if REPLACES_OUTPUT in writer.group.attrs:
        del writer.group.attrs[REPLACES_OUTPUT]  # run control of the partial store, not a result
    writer.record("reconstruct", stages=[s["type"] for s in stages], positions=len(subset))
    path = writer.finalize()
    return {"output": str(path), "status": "complete", "iterations": len(history.loss),
            "final_loss": history.loss[-1] if history.loss else None, "time_s": total_s,
            "positions_refined": len(subset), "stages": stages,
            **({"early_stop": history.early_stop} if history.early_stop else {}),
            **_validation_summary(history, held_out)}


def _validation_summary(history: loop.History, held_out: np.ndarray) -> dict[str, Any]:
    if not history.validation_loss:
        return {}
    v = history.validation_loss
    best = int(np.argmin(v))
    return {"validation_positions": len(held_out), "final_validation_loss": v[-1],
            "best_validation_loss": v[best], "best_validation_iteration": best, "early_stop": history.early_stop}
