"""``preprocess``: a raw 4D-STEM file -> a calibrated, chunked data store.

Streaming by construction: frames are read, transformed and written one block at a time
(a block is one ~16 MB chunk of the output), so peak memory does not grow with the
dataset. Operations that need the whole dataset first (``center="auto"``, bad-pixel
repair) take one extra read-only pass that keeps only a running sum.

Order of operations on each block (every step optional, each recorded in provenance):
NaN/Inf policy -> negatives -> multiply -> bad-pixel repair -> flip/transpose ->
sub-pixel shift (or auto-centre) -> crop -> detector bin -> scan bin -> pad ->
clip Fourier-shift ringing -> dtype.

Every step keeps the DC pixel at the centre (M//2, M//2) of the frame (physics.md §1.4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engines.signals import StopOnSignals
from ..errors import InputError, RecipeError
from ..readers import RawSource, file_fingerprint, open_raw
from ..store.calibration import Calibration, implausible
from ..store.schema import InputRef
from . import preprocess_masks as masks_mod
from . import preprocess_ops as ops
from .preprocess_calibration import build_calibration, describe

ProgressFn = Callable[..., Any]
ORIENT_KEYS = ("flip_ky", "flip_kx", "transpose")


class PreprocessOptions(BaseModel):
    """Operations of ``preprocess`` (calibration is separate: see preprocess_calibration)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: str | None = Field(None, description="HDF5/Zarr path of the array to read.")
    crop: str | None = Field(None, description="Detector window: M, MxN (centred) or y0:y1,x0:x1 [px].")
    bin: int = Field(1, ge=1, description=(
        "Detector binning factor: sums of bin x bin pixels around the DC pixel, which stays the centre pixel. "
        "An even factor needs a half-pixel shift: folded into shift_px/center=auto when given, else the "
        "block's edge pixels count half (bilinear)."))
    bin_scan: int = Field(1, ge=1, description="Scan binning factor (sum of bin x bin positions).")
    pad: str | None = Field(None, description="Zero-pad the detector to M or MxN pixels (centred).")
    shift_px: tuple[float, float] | None = Field(None, description="Sub-pixel shift (dy, dx) of every frame [px].")
    shift_method: Literal["bilinear", "fourier"] = Field(
        "bilinear", description="bilinear (no ringing, keeps counts >= 0) or fourier (no blur, but rings: "
        "its negative lobes are clipped to 0 and the amount reported).")
    center: Literal["none", "auto"] = Field("none", description="auto: centre the BF disk of the mean pattern.")
    multiply: float | None = Field(None, gt=0, description="Multiply every frame (e.g. counts per electron).")
    clip_negatives: bool = Field(False, description=(
        "Set negative input values to 0 instead of failing. Fourier-shift ringing is clipped either way: "
        "stored patterns are counts, never negative."))
    repair_threshold: float | None = Field(None, gt=1, description="Repair pixels above this x neighbour median.")
    nan: Literal["error", "zero"] = Field("error", description="NaN/Inf policy.")
    dtype: Literal["float32", "uint8", "uint16", "uint32", "int32"] = Field("float32", description="Output dtype.")
    compress_masks: str | None = Field(None, description="annular:RINGSxSEGMENTS or pca:N.")
    estimate_dk: bool = Field(False, description="dk_mrad = semiangle / BF disk radius of the mean pattern.")
    chunk_mb: float = Field(16.0, gt=0, description="Target chunk size of the output [MB].")
    force: bool = Field(False, description=(
        "Accept a calibration that fails the plausibility checks (energy and semi-angle ranges, semi-angle "
        "within the detector, dk against the bright-field disk); the problems are recorded instead."))


class Preprocess:
    """A checked preprocess job: everything is validated before anything is written."""

    def __init__(self, input_path: str | Path, output: str | Path, *, options: PreprocessOptions | dict | None = None,
                 calibration_file: str | Path | None = None, calibration: dict[str, Any] | None = None,
                 overwrite: bool = False, scheduler: str | None = None):
        self.input_path, self.output, self.overwrite = Path(input_path), Path(output), overwrite
        # None: in-process; else a Dask scheduler (threads | processes | ADDRESS), see preprocess_dask
        self.scheduler = scheduler
        self.clipped_ringing: dict[str, Any] | None = None  # set by run() when a Fourier shift is clipped
        self.doubts: list[str] = []  # implausible calibration values kept (doubtful, or refused but --force)
        from ..store.io import check_output  # noqa: PLC0415  (zarr only when used)
        from . import preprocess_dask  # noqa: PLC0415

        preprocess_dask.check(scheduler)
        self.options = _options(options)
        check_output(self.output, overwrite=overwrite, inputs=[self.input_path, calibration_file])
        self.source: RawSource = open_raw(self.input_path, dataset=self.options.dataset)
        base = {k: v for k, v in self.source.metadata.get("calibration", {}).items()
                if k not in (*ORIENT_KEYS, "detector_shape", "counts_per_frame")}
        try:
            self.calibration = build_calibration(calibration_file, calibration, base, str(self.input_path))
            self._plan_geometry()
            self._check_calibration()
        except BaseException:
            self.source.close()
            raise

    # ------------------------------------------------------------------ planning
    def _plan_geometry(self) -> None:
        o, src, cal = self.options, self.source, self.calibration
        self.scan_shape = _scan_shape(src, cal)
        h, w = src.frame_shape
        self.oriented_shape = (w, h) if cal.transpose else (h, w)
        self.window = ops.parse_window(o.crop, self.oriented_shape)
        ch, cw = ((self.window[1] - self.window[0], self.window[3] - self.window[2]) if self.window
                  else self.oriented_shape)
        if ch % o.bin or cw % o.bin:
            raise RecipeError(f"bin={o.bin}: the {ch}x{cw} frame is not divisible; crop it first (--crop)")
        binned = (ch // o.bin, cw // o.bin)
        self.pad_shape = _pad_shape(o.pad, binned)
        self.out_shape = self.pad_shape or binned
        if self.out_shape[0] != self.out_shape[1]:
            raise RecipeError(f"output frames would be {self.out_shape[0]}x{self.out_shape[1]}; "
                              "ptycli needs square patterns: use --crop N or --pad N")
        ny, nx = self.scan_shape
        if ny % o.bin_scan or nx % o.bin_scan:
            raise RecipeError(f"bin_scan={o.bin_scan}: scan {ny}x{nx} is not divisible")
        self.out_scan = (ny // o.bin_scan, nx // o.bin_scan)
        if o.shift_px is not None and o.center == "auto":
            raise RecipeError("shift_px and center=auto both given; give one of them")
        self._plan_blocks()

    def _plan_blocks(self) -> None:
        b, nx = self.options.bin_scan, self.scan_shape[1]
        frame_bytes = max(int(np.prod(self.source.frame_shape)), int(np.prod(self.out_shape))) * 4
        frames = max(1, int(self.options.chunk_mb * 2**20) // frame_bytes)
        if b == 1:
            self.block_in, self.block_out = frames, frames
        else:  # whole output scan rows per block, so scan blocks never straddle two reads
            rows = max(1, frames // (b * nx))
            self.block_in, self.block_out = rows * b * nx, rows * (nx // b)
        self.block_out = min(self.block_out, int(np.prod(self.out_scan)))

    def _check_calibration(self) -> None:
        cal, o = self.calibration, self.options
        missing = cal.missing("energy_kev", "semiangle_mrad", "scan_step_a")
        if cal.dk_mrad is None and cal.dk_inv_a is None and not o.estimate_dk:
            missing.append("dk_mrad (or dk_inv_a, or --estimate-dk)")
        if missing:
            raise RecipeError(f"missing calibration: {', '.join(missing)} (flags or --calibration FILE.toml)")
        if o.estimate_dk and (cal.dk_mrad is not None or cal.dk_inv_a is not None):
            raise RecipeError("estimate_dk given together with dk_mrad/dk_inv_a; give one of them")
        self._plausible(cal)  # the ranges, before any work; the rest needs the mean pattern

    def _plausible(self, cal: Calibration, **measured: Any) -> None:
        """Implausible calibration values: refused (exit 3) unless --force, which keeps them as doubts;
        doubtful ones are reported (the summary, the CLI's warnings and the store's record)."""
        refused, doubtful = implausible(cal, **measured)
        if refused and not self.options.force:
            raise RecipeError(f"calibration: {'; '.join(refused)}; check the values, or give --force to keep them")
        self.doubts = list(dict.fromkeys([*self.doubts, *refused, *doubtful]))

    @property
    def n_passes(self) -> int:
        first = self.options.center == "auto" or self.options.repair_threshold is not None
        return 1 + int(first) + int(self.options.compress_masks is not None)

    @property
    def work(self) -> int:
        """Total progress units (frames read, summed over passes)."""
        return self.source.n_frames * self.n_passes

    # ------------------------------------------------------------------ running
    @StopOnSignals("preprocess")
    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        from ..store.io import StoreWriter  # noqa: PLC0415  (zarr only when running)

        tick = progress or (lambda *a, **k: None)
        try:
            with StoreWriter(self.output, kind="data", stage="preprocess", options=self._resolved(),
                             inputs=[self._input_ref()], provenance=self._provenance(),
                             overwrite=self.overwrite) as writer:
                writer.record("read", format=self.source.format, n_frames=self.source.n_frames,
                              frame_shape=list(self.source.frame_shape), scan_shape=list(self.scan_shape))
                bad, shift = self._survey(writer, tick)
                mean = self._write_patterns(writer, bad, shift, tick)
                compression = self._compress(writer, tick) if self.options.compress_masks else None
                calibration = self._output_calibration(writer, mean)
                writer.set_attrs(calibration=calibration.to_attrs(), scan_shape=list(self.out_scan))
                path = writer.finalize()
        finally:
            self.source.close()
        return self._summary(path, calibration, compression)

    def _value_ops(self, frames: np.ndarray, start: int) -> np.ndarray:
        where = f"{self.input_path} frames {start}..{start + len(frames) - 1}"
        frames = ops.check_finite(frames, self.options.nan, where)
        frames = ops.check_negative(frames, self.options.clip_negatives, where)
        frames = np.asarray(frames, dtype=np.float32)
        return frames * np.float32(self.options.multiply) if self.options.multiply else frames

    def _survey(self, writer: Any, tick: ProgressFn) -> tuple[np.ndarray | None, tuple[float, float] | None]:
        """First pass (only when needed): mean pattern -> bad pixels and the BF-disk centre."""
        o = self.options
        if o.center != "auto" and o.repair_threshold is None:
            return None, o.shift_px
        if self.scheduler:
            from . import preprocess_dask  # noqa: PLC0415

            total = preprocess_dask.survey_sum(self, tick)
        else:
            total = np.zeros(self.source.frame_shape, dtype=np.float64)
            for start, frames in self.source.chunks(self.block_in):
                total += self._value_ops(frames, start).sum(axis=0, dtype=np.float64)
                tick(len(frames))
        mean = total / self.source.n_frames
        bad = ops.find_bad_pixels(mean, o.repair_threshold) if o.repair_threshold is not None else None
        if bad is not None:
            writer.record("repair_pixels", threshold=o.repair_threshold, n_pixels=int(bad.sum()),
                          pixels=[[int(y), int(x)] for y, x in np.argwhere(bad)[:1000]])
        if o.center != "auto":
            return bad, o.shift_px
        fixed = ops.orient(ops.repair_pixels(mean[None], bad), *self._orient_flags())[0]
        cy, cx, radius = ops.bf_disk(fixed)
        y0, y1, x0, x1 = self.window or (0, fixed.shape[0], 0, fixed.shape[1])
        # onto the pixel that the crop makes the centre, so an off-centre window still gets DC centred
        shift = (y0 + (y1 - y0) // 2 - cy, x0 + (x1 - x0) // 2 - cx)
        writer.record("center", mode="auto", bf_centre_px=[cy, cx], bf_radius_px=radius, shift_px=list(shift),
                      method=o.shift_method, **self._clip_note())
        return bad, shift

    def _orient_flags(self) -> tuple[bool, bool, bool]:
        cal = self.calibration
        return cal.flip_ky, cal.flip_kx, cal.transpose

    def _clip_note(self) -> dict[str, Any]:
        return {"clip_ringing": True} if self.options.shift_method == "fourier" else {}

    def _transform(self, frames: np.ndarray, start: int, bad: np.ndarray | None,
                   shift: tuple[float, float] | None) -> np.ndarray:
        return self._transform_counted(frames, start, bad, shift)[0]

    def _transform_counted(self, frames: np.ndarray, start: int, bad: np.ndarray | None,
                           shift: tuple[float, float] | None) -> tuple[np.ndarray, int, float]:
        """The block transform, plus the pixels and counts of Fourier ringing clipped to 0."""
        o = self.options
        frames = ops.repair_pixels(self._value_ops(frames, start), bad)
        frames = ops.orient(frames, *self._orient_flags())
        if shift is not None:
            # an even bin's half pixel rides on this shift, so the frames are resampled only once
            half = ops.bin_half_shift(o.bin)
            frames = ops.shift(frames, (shift[0] + half, shift[1] + half), o.shift_method)
        frames = ops.bin_detector(ops.crop(frames, self.window), o.bin, half_shifted=shift is not None)
        frames = ops.pad_to(ops.bin_scan(frames, self.scan_shape[1], o.bin_scan), self.pad_shape)
        n_clipped, added = 0, 0.0
        if shift is not None and o.shift_method == "fourier":
            # Clipped last, after the binning sums have cancelled what ringing they can: the
            # negative lobes are an artefact of the shift, and counts cannot be negative
            # (a Poisson or amplitude loss would fail on them, an integer --dtype too).
            frames, n_clipped, added = ops.clip_ringing(frames)
        return ops.to_dtype(frames, o.dtype, f"{self.input_path} frames from {start}"), n_clipped, added

    def _write_patterns(self, writer: Any, bad: np.ndarray | None, shift: tuple[float, float] | None,
                        tick: ProgressFn) -> np.ndarray:
        self._record_ops(writer, shift)
        n_out = int(np.prod(self.out_scan))
        patterns = writer.array("patterns", shape=(n_out, *self.out_shape), dtype=self.options.dtype,
                                chunks=(self.block_out, *self.out_shape), dims=("position", "ky", "kx"))
        if self.scheduler:
            from . import preprocess_dask  # noqa: PLC0415

            total = preprocess_dask.write_patterns(self, writer.partial, bad, shift, tick)
            n_clipped, added = None, None  # the Dask tasks return only their sums
        else:
            total = np.zeros(self.out_shape, dtype=np.float64)
            n_clipped, added = 0, 0.0
            for start, frames in self.source.chunks(self.block_in):
                out, n, a = self._transform_counted(frames, start, bad, shift)
                s = start // self.options.bin_scan**2
                patterns[s : s + len(out)] = out
                total += out.sum(axis=0, dtype=np.float64)
                n_clipped, added = n_clipped + n, added + a
                tick(len(frames))
        self.clipped_ringing = None
        if shift is not None and self.options.shift_method == "fourier":
            grand = float(total.sum())
            self.clipped_ringing = {"pixels": n_clipped, "counts": added,
                                    "fraction": None if added is None or grand <= 0 else added / grand}
        mean = (total / n_out).astype(np.float32)
        writer.array("mean_pattern", mean, dims=("ky", "kx"))
        return mean

    def _record_ops(self, writer: Any, shift: tuple[float, float] | None) -> None:
        o, cal = self.options, self.calibration
        writer.record("nan", policy=o.nan)
        writer.record("negatives", policy="clip" if o.clip_negatives else "error")
        steps: list[tuple[bool, str, dict[str, Any]]] = [
            (bool(o.multiply), "multiply", {"factor": o.multiply}),
            (any(self._orient_flags()), "orient", {k: getattr(cal, k) for k in ORIENT_KEYS}),
            (shift is not None and o.center != "auto", "shift",
             {"shift_px": list(shift or ()), "method": o.shift_method, **self._clip_note()}),
            (self.window is not None, "crop", {"window": list(self.window or ())}),
            (o.bin > 1, "bin", {"factor": o.bin, **self._bin_centring(shift)}),
            (o.bin_scan > 1, "bin_scan", {"factor": o.bin_scan}),
            (self.pad_shape is not None, "pad", {"shape": list(self.pad_shape or ())}),
            (True, "dtype", {"dtype": o.dtype}),
        ]
        for on, name, params in steps:
            if on:
                writer.record(name, **params)

    def _bin_centring(self, shift: tuple[float, float] | None) -> dict[str, Any]:
        half = ops.bin_half_shift(self.options.bin)
        if not half:
            return {}
        return {"half_pixel_shift_px": half, "half_pixel_by": "shift" if shift is not None else "bilinear"}

    def _compress(self, writer: Any, tick: ProgressFn) -> dict[str, Any]:
        """Virtual detectors: masks (K, ky, kx) and signals = masks · patterns (N, K)."""
        kind, values = masks_mod.parse_spec(self.options.compress_masks or "")
        patterns = writer.group["patterns"]
        if kind == "annular":
            masks = masks_mod.annular_masks(self.out_shape, *values)
        else:
            idx = masks_mod.sample_indices(patterns.shape[0], int(np.prod(self.out_shape)), values[0])
            sample = np.stack([patterns[int(i)] for i in idx])
            masks = masks_mod.pca_masks(sample.astype(np.float32), values[0])
        writer.array("compressed/masks", masks, chunks=masks.shape)
        flat = masks.reshape(len(masks), -1).astype(np.float64).T
        signals = writer.array("compressed/signals", shape=(patterns.shape[0], len(masks)), dtype="float32",
                               chunks=(max(self.block_out, 1), len(masks)))
        for s in range(0, patterns.shape[0], self.block_out):
            block = np.asarray(patterns[s : s + self.block_out], dtype=np.float64)
            signals[s : s + len(block)] = (block.reshape(len(block), -1) @ flat).astype(np.float32)
            tick(len(block) * self.options.bin_scan**2)
        ratio = float(np.prod(self.out_shape)) / len(masks)
        writer.record("compress_masks", spec=self.options.compress_masks, n_masks=len(masks), ratio=ratio)
        return {"spec": self.options.compress_masks, "n_masks": len(masks), "ratio": ratio}

    def _output_calibration(self, writer: Any, mean: np.ndarray) -> Calibration:
        """Calibration of the output pixels: binning scales dk and the scan step."""
        cal, o = self.calibration, self.options
        upd: dict[str, Any] = {"detector_shape": self.out_shape, "scan_shape": self.out_scan,
                               "counts_per_frame": max(float(mean.sum(dtype=np.float64)), 0.0)}
        if cal.dk_mrad is not None:
            upd["dk_mrad"] = cal.dk_mrad * o.bin
        if cal.dk_inv_a is not None:
            upd["dk_inv_a"] = cal.dk_inv_a * o.bin
        if cal.scan_step_a is not None:
            upd["scan_step_a"] = tuple(s * o.bin_scan for s in cal.scan_step_a)
        if upd["counts_per_frame"] <= 0:
            raise InputError(f"{self.input_path}: every pattern is zero (no counts); nothing to reconstruct")
        if o.estimate_dk:
            _, _, radius = ops.bf_disk(mean)
            upd["dk_mrad"] = float(cal.semiangle_mrad) / radius  # type: ignore[arg-type]
            writer.record("estimate_dk", bf_radius_px=radius, dk_mrad=upd["dk_mrad"])
        try:
            out = Calibration.model_validate({**cal.model_dump(), **upd})
        except ValidationError as exc:
            raise RecipeError(f"calibration: {describe(exc)}") from None
        radius = None if o.estimate_dk else _inner_bf_radius(mean)
        self._plausible(out, detector_shape=self.out_shape, bf_radius_px=radius)
        if self.doubts:  # kept in the store's record for whoever reads it later
            writer.record("calibration_doubts", problems=self.doubts, forced=self.options.force)
        return out

    # ------------------------------------------------------------------ metadata
    def _resolved(self) -> dict[str, Any]:
        return {**self.options.model_dump(mode="json"), "calibration": self.calibration.to_attrs()}

    def _input_ref(self) -> InputRef:
        if self.source.metadata.get("ptycli_store"):
            from ..store.io import input_ref, open_store  # noqa: PLC0415

            return input_ref(open_store(self.input_path, "data"), self.input_path)
        return InputRef(path=str(self.input_path.resolve()), kind=f"raw:{self.source.format}",
                        fingerprint=file_fingerprint(self.input_path))

    def _provenance(self) -> list[Any]:
        if not self.source.metadata.get("ptycli_store"):
            return []
        from ..store.io import open_store, provenance_of  # noqa: PLC0415

        return provenance_of(open_store(self.input_path, "data"))

    def _summary(self, path: Path, cal: Calibration, compression: dict[str, Any] | None) -> dict[str, Any]:
        return {"output": str(path), "n_frames": int(np.prod(self.out_scan)), "frame_shape": list(self.out_shape),
                "scan_shape": list(self.out_scan), "dtype": self.options.dtype, "chunk_frames": self.block_out,
                "calibration": cal.to_attrs(), "compression": compression,
                "clipped_ringing": self.clipped_ringing, "calibration_doubts": self.doubts}


def _inner_bf_radius(mean: np.ndarray) -> float | None:
    """The BF disk radius [px] when the mean pattern shows a whole disk inside the frame, else None (a disk
    that fills the detector, or flat data, measures the frame instead: no check of dk against it)."""
    try:
        cy, cx, radius = ops.bf_disk(mean)
    except InputError:
        return None
    inside = min(cy, cx, mean.shape[0] - 1 - cy, mean.shape[1] - 1 - cx) > radius + 1
    return radius if inside and radius >= 2 else None


def _options(options: PreprocessOptions | dict | None) -> PreprocessOptions:
    if isinstance(options, PreprocessOptions):
        return options
    try:
        return PreprocessOptions.model_validate(options or {})
    except ValidationError as exc:
        raise RecipeError(f"preprocess option {describe(exc)}") from None


def _scan_shape(src: RawSource, cal: Calibration) -> tuple[int, int]:
    """Scan shape from the file (4D), the calibration, or a square frame count."""
    if src.scan_shape and cal.scan_shape and tuple(src.scan_shape) != tuple(cal.scan_shape):
        raise RecipeError(f"scan_shape={tuple(cal.scan_shape)} contradicts the file's scan {tuple(src.scan_shape)}"
                          f" ({src.path})")
    shape = cal.scan_shape or src.scan_shape or _square(src)
    if shape is None:
        raise RecipeError(f"scan_shape missing: {src.path} has {src.n_frames} frames (not a square scan); "
                          "give --scan-shape NYxNX")
    if shape[0] * shape[1] != src.n_frames:
        raise RecipeError(f"scan_shape={tuple(shape)} gives {shape[0] * shape[1]} positions but "
                          f"{src.path} has {src.n_frames} frames")
    return int(shape[0]), int(shape[1])


def _square(src: RawSource) -> tuple[int, int] | None:
    from ..readers.base import square_scan  # noqa: PLC0415

    return square_scan(src.n_frames)


def _pad_shape(spec: str | None, shape: tuple[int, int]) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        target = ops.parse_pair(spec, int)
    except ValueError:
        raise RecipeError(f"pad={spec!r}: expected M or MxN") from None
    if target[0] < shape[0] or target[1] < shape[1]:
        raise RecipeError(f"pad={spec!r}: smaller than the {shape[0]}x{shape[1]} frame; use --crop to shrink")
    return target


def run(input_path: str | Path, output: str | Path, *, options: PreprocessOptions | dict | None = None,
        calibration_file: str | Path | None = None, calibration: dict[str, Any] | None = None,
        overwrite: bool = False, progress: ProgressFn | None = None, scheduler: str | None = None) -> dict[str, Any]:
    """Preprocess ``input_path`` into the data store ``output``; returns a summary dict.

    ``scheduler`` (threads | processes | a dask.distributed address) runs the block
    operations as a Dask graph; None (default) runs them in this process.
    """
    job = Preprocess(input_path, output, options=options, calibration_file=calibration_file,
                     calibration=calibration, overwrite=overwrite, scheduler=scheduler)
    return job.run(progress)
