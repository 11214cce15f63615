"""Reader registry: a format is one module in ptycli/readers that calls ``register``.

Formats are chosen by file suffix, then by magic bytes (so ``data.bin`` that is really an
HDF5 file still opens). Modules are discovered, so adding a format touches no other file;
a package's ``ptycli.readers`` entry point adds one from outside (ptycli/plugins.py).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .base import RawSource

_SKIP = {"base", "registry"}


@dataclass(frozen=True)
class ReaderSpec:
    name: str
    suffixes: tuple[str, ...]
    open: Callable[..., RawSource]
    magic: tuple[bytes, ...] = ()
    directory: bool = False


READERS: dict[str, ReaderSpec] = {}


def register(name: str, suffixes: tuple[str, ...], magic: tuple[bytes, ...] = (),
             directory: bool = False) -> Callable[[Callable[..., RawSource]], Callable[..., RawSource]]:
    def deco(fn: Callable[..., RawSource]) -> Callable[..., RawSource]:
        READERS[name] = ReaderSpec(name, tuple(s.lower() for s in suffixes), fn, magic, directory)
        return fn

    return deco


def _load_all() -> None:
    pkg = importlib.import_module(__package__)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in _SKIP and not mod.name.startswith("_"):
            importlib.import_module(f"{__package__}.{mod.name}")
    from .. import plugins  # noqa: PLC0415

    plugins.load("ptycli.readers")  # importing a plugin's reader module registers its format


def detect_format(path: Path) -> ReaderSpec:
    """The reader for ``path``: by suffix first, then by the file's first bytes."""
    _load_all()
    if not path.exists():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    for spec in READERS.values():
        if suffix in spec.suffixes and spec.directory == path.is_dir():
            return spec
    if path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zarray")):
        return READERS["zarr"]
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(16)
        for spec in READERS.values():
            if any(head.startswith(m) for m in spec.magic):
                return spec
    known = sorted({s for spec in READERS.values() for s in spec.suffixes})
    raise InputError(f"{path}: unknown format (suffix {suffix or 'none'!r}); readable: {', '.join(known)}")


def open_raw(path: str | Path, **options: Any) -> RawSource:
    """Open any supported raw file (or store) as a chunked frame source.

    ``options`` go to the format's opener: ``dataset`` (HDF5/Zarr path), ``scan_shape``.
    """
    path = Path(path)
    spec = detect_format(path)
    source = spec.open(path, **options)
    try:
        check_frames(source)
    except InputError:
        source.close()
        raise
    return source


def check_frames(source: RawSource) -> None:
    """Refuse what no format may hand on: complex values (casting keeps only the real part,
    with a bare ComplexWarning), non-numeric ones (strings fail deep in the arithmetic) and an
    empty file (its mean counts would be 0/0)."""
    dtype = np.dtype(source.dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{source.path}: complex data; expected real detector counts")
    if dtype.kind not in "biuf":  # strings, bytes, objects, records, dates: no counts in them
        raise InputError(f"{source.path}: dtype {dtype} is not numeric; expected detector counts "
                         "(integers or floats)")
    if source.n_frames == 0:
        raise InputError(f"{source.path}: no frames")
    if 0 in tuple(source.frame_shape):
        raise InputError(f"{source.path}: empty frames ({'x'.join(map(str, source.frame_shape))} pixels)")


def formats() -> list[str]:
    _load_all()
    return sorted(READERS)
