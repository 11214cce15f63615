"""The reconstruction state: arrays of a state store, in memory and on disk.

``State`` holds host (numpy) or device arrays; ``load_state`` / ``write_state`` move it
between a state store and memory. Optional variables are ``None`` when absent.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import zarr
from zarr.core.array import AsyncArray
from zarr.core.group import AsyncGroup

from ..errors import InputError, StoreError
from .io import StoreWriter, write_array

OPTIONAL_ARRAYS = ("tilts", "slice_thickness", "beam_current", "background", "positions_initial", "subscan",
                   "tilts_before", "tilts_after")


@dataclass
class State:
    """Everything a reconstruction refines, with its geometry.

    probe: (P, M, M) complex, centred in its window, sum |P|^2 = counts per frame.
    object: (Q, S, H, W) complex transmission.
    positions: (J, 2) float, probe centres in object pixels (y, x): p = r/dx + origin.
    slice_thickness: (S,) float Å (one value per slice; equal values = one shared Δz).
    tilts: (J, 2) float mrad (y, x), beam tilt per position, or None.
    upsample: far-field upsampling U: the probe window is U x the detector (M U, M U) and
        U x U model pixels are binned into one detector pixel (physics/detector.py).
    subscan: (J,) int sub-scan index per position, or None (one sub-scan);
        subscan_aberrations[s] is sub-scan s's polar aberration change relative to the
        shared probe (its probe is the shared one with that extra phase, aberration_probe.py).
    tilts_before / tilts_after: (J, 2) mrad, PyPty's tilts before the specimen (aperture-plane
        shift) and after it (detector-plane shift); ``tilts`` is the tilt inside (physics/tilt_modes.py).
    """

    probe: Any
    object: Any
    positions: Any
    dx_a: float
    energy_kev: float
    slice_thickness: Any = None
    tilts: Any = None
    beam_current: Any = None
    background: Any = None
    positions_initial: Any = None
    origin_px: tuple[float, float] = (0.0, 0.0)
    semiangle_mrad: float | None = None
    aberrations: dict[str, float] = field(default_factory=dict)
    iteration: int = 0
    detector_blur_px: float = 0.0  # σ of the Gaussian detector PSF, detector pixels
    upsample: int = 1
    subscan: Any = None
    subscan_aberrations: list = field(default_factory=list)
    tilts_before: Any = None
    tilts_after: Any = None

    @property
    def n_slices(self) -> int:
        return int(self.object.shape[1])

    @property
    def window(self) -> tuple[int, int]:
        return tuple(self.probe.shape[-2:])  # type: ignore[return-value]

    @property
    def detector_shape(self) -> tuple[int, int]:
        """Pattern shape: the probe window divided by the upsampling factor."""
        m, n = self.window
        return (m // self.upsample, n // self.upsample)

    @property
    def n_subscans(self) -> int:
        return max(len(self.subscan_aberrations), 1)

    def copy(self, **changes: Any) -> "State":
        return replace(self, **changes)

    def attrs(self) -> dict[str, Any]:
        """Scalar metadata stored as the ``state`` root attribute."""
        return {
            "dx_a": float(self.dx_a),
            "energy_kev": float(self.energy_kev),
            "origin_px": [float(v) for v in self.origin_px],
            "semiangle_mrad": self.semiangle_mrad,
            "aberrations": {k: float(v) for k, v in self.aberrations.items()},
            "iteration": int(self.iteration),
            "detector_blur_px": float(self.detector_blur_px),
            "upsample": int(self.upsample),
            "subscan_aberrations": [{k: float(v) for k, v in d.items()} for d in self.subscan_aberrations],
            "n_probe_modes": int(self.probe.shape[0]),
            "n_object_modes": int(self.object.shape[0]),
            "n_slices": self.n_slices,
        }


def array_fields() -> list[str]:
    return ["probe", "object", "positions", *OPTIONAL_ARRAYS]


REQUIRED_ARRAYS = ("probe", "object", "positions")
DC_CENTRED = "dc_centred"  # the ``layout`` attribute of a detector-space array with DC at (M//2, N//2)


def load_state(group: zarr.Group) -> State:
    """Read a state store (or a ``checkpoint`` subgroup) into host arrays."""
    for name in REQUIRED_ARRAYS:
        if name not in group:
            raise StoreError(f"{_where(group)}: array {name!r} missing")
    attrs = dict(group.attrs.get("state", {}))
    arrays = {name: np.asarray(group[name][...]) for name in array_fields() if name in group}
    if "background" in arrays and group["background"].attrs.get("layout") == DC_CENTRED:
        arrays["background"] = np.fft.ifftshift(arrays["background"])  # schema 1 stored it unshifted
    return State(
        probe=arrays["probe"],
        object=arrays["object"],
        positions=arrays["positions"].astype(np.float64),
        dx_a=float(attrs["dx_a"]),
        energy_kev=float(attrs["energy_kev"]),
        slice_thickness=arrays.get("slice_thickness"),
        tilts=arrays.get("tilts"),
        beam_current=arrays.get("beam_current"),
        background=arrays.get("background"),
        positions_initial=arrays.get("positions_initial"),
        origin_px=tuple(attrs.get("origin_px", (0.0, 0.0))),  # type: ignore[arg-type]
        semiangle_mrad=attrs.get("semiangle_mrad"),
        aberrations=dict(attrs.get("aberrations", {})),
        iteration=int(attrs.get("iteration", 0)),
        detector_blur_px=float(attrs.get("detector_blur_px", 0.0)),
        upsample=int(attrs.get("upsample", 1)),
        subscan=arrays.get("subscan"),
        subscan_aberrations=[dict(d) for d in attrs.get("subscan_aberrations", [])],
        tilts_before=arrays.get("tilts_before"),
        tilts_after=arrays.get("tilts_after"),
    )


def _where(node: Any) -> str:
    """The path of a group or array on disk (store root / node path)."""
    store = getattr(node, "store_path", None)
    root = getattr(getattr(store, "store", None), "root", None)
    path = getattr(store, "path", "") or ""
    return f"{root}/{path}".rstrip("/") if root is not None else str(store or node)


def read_error(exc: BaseException) -> InputError | None:
    """The input problem behind an error raised while reading a read-only (input) Zarr store.

    A chunk that does not decode (a truncated or overwritten file) or a member that is
    not there is a damaged input, not a bug: it is named by store and array. Anything
    raised outside Zarr's reading code, or while writing, stays what it is.
    """
    frames = [f for f, _ in traceback.walk_tb(exc.__traceback__)]
    if not frames:
        return None
    inner = frames[-1].f_code.co_filename.replace("\\", "/")
    nodes = [f.f_locals.get("self") for f in frames]
    if isinstance(exc, KeyError) and "/zarr/" in inner:
        groups = [n for n in nodes if isinstance(n, (zarr.Group, AsyncGroup)) and _read_only(n)]
        if groups:
            return StoreError(f"{_where(groups[-1])}: array {_member_name(exc)!r} missing")
    # a codec, or what it calls (an edited zarr.json dtype fails in zarr's buffer reshape inside the
    # bytes codec): any frame of the decoding, not only the innermost
    files = [f.f_code.co_filename.replace("\\", "/") for f in frames]
    if any("/zarr/core/metadata/" in f for f in files):  # an array's zarr.json zarr refuses to parse
        nodes_read = [n for n in nodes if isinstance(n, (zarr.Group, AsyncGroup, zarr.Array, AsyncArray))
                      and _read_only(n)]
        if nodes_read:
            return InputError(f"{_where(nodes_read[-1])}: a zarr.json that does not describe a valid array "
                              f"({type(exc).__name__}: {exc})")
    if any("/numcodecs/" in f or "/zarr/codecs/" in f or "numcodecs" in f for f in files):
        arrays = [n for n in nodes if isinstance(n, (zarr.Array, AsyncArray)) and _read_only(n)]
        if arrays:
            return InputError(f"{_where(arrays[-1])}: corrupt chunk, or a zarr.json that does not describe it "
                              f"({type(exc).__name__}: {exc})")
    return None


def _member_name(exc: KeyError) -> str:
    """The missing member's name: zarr's KeyError carries it bare, or, for a store opened
    through its consolidated metadata, in "'NAME' not found in consolidated metadata."
    """
    text = str(exc.args[0]) if exc.args else "?"
    quoted = re.match(r"'([^']*)' not found", text)
    return quoted.group(1) if quoted else text


def _read_only(node: Any) -> bool:
    try:
        return bool(node.read_only)
    except Exception:  # noqa: BLE001  (an object without the flag is not one we opened to read)
        return False


def write_state_arrays(group: zarr.Group, state: State, to_host: Any = np.asarray) -> None:
    """Write the arrays and the ``state`` attribute of ``state`` into ``group``."""
    for f in fields(state):
        if f.name not in array_fields():
            continue
        value = getattr(state, f.name)
        if value is None:
            continue
        host = np.asarray(to_host(value))
        chunks = _state_chunks(f.name, host.shape)
        attrs = None
        if f.name == "background":
            # engines keep it in FFT layout (DC at [0, 0]); stores keep every detector-space
            # array DC-centred like the patterns, and say so (schema 1 wrote it unshifted)
            host, attrs = np.fft.fftshift(host), {"layout": DC_CENTRED}
        write_array(group, f.name, host, chunks=chunks, attrs=attrs)
    group.attrs["state"] = state.attrs()


def write_state(writer: StoreWriter, state: State, to_host: Any = np.asarray) -> None:
    write_state_arrays(writer.group, state, to_host)


def _state_chunks(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    # One chunk per (mode, slice) image keeps slice access cheap for viewers and export.
    if name == "object":
        return (1, 1, *shape[2:])
    if name == "probe":
        return (1, *shape[1:])
    return shape
