"""Stores: the on-disk format (schema.py) and atomic creation / checked opening (io.py)."""

from .io import (
    StoreWriter,
    fingerprint,
    input_ref,
    open_store,
    partial_path,
    provenance_of,
    read_meta,
    write_array,
    write_subgroup_atomic,
)
from .schema import DIMS, SCHEMA_VERSION, UNITS, InputRef, RootMeta

__all__ = [
    "DIMS", "SCHEMA_VERSION", "UNITS", "InputRef", "RootMeta", "StoreWriter", "fingerprint",
    "input_ref", "open_store", "partial_path", "provenance_of", "read_meta", "write_array",
    "write_subgroup_atomic",
]
