"""Root metadata of every ptycli store (format v2; v1 is still read), as pydantic models.

The root attribute ``ptycli`` of a store says what it is and how it was made. Arrays hold
numbers only; everything else is JSON validated here. See docs/store-format.md.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "2.0"  # 2: coordinate arrays, UDUNITS units, DC-centred background
ROOT_ATTR = "ptycli"
STORE_KINDS = ("data", "state")
Kind = Literal["data", "state"]
Status = Literal["running", "complete", "interrupted", "failed"]

# Dimension names and units of the standard arrays. Probe and object use distinct spatial
# dimension names because their sizes differ, and xarray needs one size per name.
DIMS: dict[str, tuple[str, ...]] = {
    "patterns": ("position", "ky", "kx"),
    "compressed/masks": ("mask", "ky", "kx"),
    "compressed/signals": ("position", "mask"),
    "probe": ("probe_mode", "probe_y", "probe_x"),
    "object": ("object_mode", "slice", "y", "x"),
    "positions": ("position", "yx"),
    "positions_initial": ("position", "yx"),
    "tilts": ("position", "yx"),
    "slice_thickness": ("slice",),
    "beam_current": ("position",),
    "background": ("ky", "kx"),
    "detector_mask": ("ky", "kx"),
}
# Units are UDUNITS-2 strings (what xarray/pint/cf-xarray parse); the human description of
# each array is its ``long_name`` (schema 2; schema 1 wrote free text such as "object pixels (y, x)").
UNITS: dict[str, str] = {
    "patterns": "count",
    "mean_pattern": "count",
    "compressed/masks": "1",
    "compressed/signals": "count",
    "probe": "1",
    "object": "1",
    "positions": "1",
    "positions_initial": "1",
    "tilts": "mrad",
    "slice_thickness": "angstrom",
    "beam_current": "1",
    "background": "count",
    "detector_mask": "1",
}
LONG_NAMES: dict[str, str] = {
    "patterns": "diffraction pattern per scan position, DC at the centre pixel",
    "mean_pattern": "mean diffraction pattern (PACBED), DC-centred",
    "compressed/masks": "virtual detector masks, DC-centred",
    "compressed/signals": "virtual detector signals per scan position",
    "probe": "probe modes, complex, centred in the window; sum |P|^2 = counts per frame (sqrt(count))",
    "object": "complex transmission per object mode and slice",
    "positions": "probe centres in object pixels (y, x): p = r/dx + origin",
    "positions_initial": "starting probe centres in object pixels (y, x)",
    "tilts": "beam tilt per position (y, x)",
    "slice_thickness": "slice thickness",
    "beam_current": "relative beam current per position",
    "background": "detector background per pixel, DC-centred like the patterns",
    "detector_mask": "detector mask, 1 = use the pixel, DC-centred",
    "subscan": "sub-scan index per position",
}


class InputRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    kind: str
    fingerprint: str


class StageRecord(BaseModel):
    """One stage that contributed to a store (its own or an ancestor's)."""

    model_config = ConfigDict(extra="allow")
    stage: str
    ptycli_version: str
    options: dict[str, Any] = Field(default_factory=dict)
    options_hash: str = ""
    inputs: list[InputRef] = Field(default_factory=list)
    started: str = ""
    finished: str = ""
    operations: list[dict[str, Any]] = Field(default_factory=list)


class RootMeta(StageRecord):
    """The ``ptycli`` root attribute: this store's own stage record plus what it is."""

    kind: Kind
    schema_version: str = SCHEMA_VERSION
    status: Status = "running"
    provenance: list[StageRecord] = Field(default_factory=list)
    fingerprint: str = ""

    def as_record(self) -> StageRecord:
        fields = set(StageRecord.model_fields)
        return StageRecord(**{k: v for k, v in self.model_dump().items() if k in fields})


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def major(version: str) -> int:
    return int(str(version).split(".", 1)[0])
