"""Root metadata of every ptycli store (format v1), as pydantic models.

The root attribute ``ptycli`` of a store says what it is and how it was made. Arrays hold
numbers only; everything else is JSON validated here. See docs/store-format.md.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.0"
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
UNITS: dict[str, str] = {
    "patterns": "counts",
    "compressed/masks": "1",
    "compressed/signals": "counts",
    "probe": "sqrt(counts)",
    "object": "1 (complex transmission)",
    "positions": "object pixels (y, x)",
    "positions_initial": "object pixels (y, x)",
    "tilts": "mrad (y, x)",
    "slice_thickness": "angstrom",
    "beam_current": "1 (relative)",
    "background": "counts",
    "detector_mask": "1",
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
