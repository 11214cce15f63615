"""Creating and opening stores: atomic writes, checks on open, fingerprints.

A stage writes ``OUT.partial`` and renames it to ``OUT`` only when complete, so "the
target exists" means "the target is complete" (what Make needs) and a killed stage never
leaves half a store under the final name. An existing output is replaced only with
``overwrite=True``, only when it is a ptycli store (never a stranger's folder or file), and
only at the moment the new one is complete. ``check_output`` runs those checks (and that the
location is writable and no input is replaced) before a stage computes anything.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import zarr

from .. import __version__
from ..errors import DeviceError, InputError, OutputExistsError, StoreError, UsageError
from .arrays import TARGET_CHUNK_BYTES, compressor, default_chunks, write_array  # noqa: F401  (re-exported)
from .chunks import check_chunks
from .coords import consolidate, finish_layout
from .lock import OutputLock
from .schema import ROOT_ATTR, SCHEMA_VERSION, InputRef, RootMeta, json_hash, major, now_iso

PARTIAL_SUFFIX = ".partial"
CHECKPOINT = "checkpoint"  # reconstruct's subgroup of OUT.partial (engines/checkpoint.py writes it)
# arrays whose missing chunks open_store refuses (chunks.py): the data and the state itself. Stores
# of earlier versions skipped all-zero chunks of any array, which none of these ever is.
CHUNK_CHECKED = ("patterns", "compressed/signals", "object", "probe")


def partial_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + PARTIAL_SUFFIX)


def find_checkpoint(partial: str | os.PathLike) -> Path | None:
    """The latest complete checkpoint in a partial store (``checkpoint``, or ``.old`` mid-swap)."""
    root = Path(partial)
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        if (root / name / "zarr.json").exists():
            return root / name
    return None


def drop_checkpoint(root: str | os.PathLike) -> None:
    """Remove a checkpoint and its swap siblings (``.old``, ``.tmp``) from a store."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old", f"{CHECKPOINT}.tmp"):
        shutil.rmtree(Path(root) / name, ignore_errors=True)


def checkpoint_iterations(partial: str | os.PathLike) -> int | None:
    """Iterations done in the resumable checkpoint of ``partial``, or None when it holds none.

    Read from zarr.json alone, so checking an output costs no array reads; a checkpoint
    without its cursor is not resumable and counts as none.
    """
    found = find_checkpoint(partial)
    if found is None:
        return None
    try:
        attrs = json.loads((found / "zarr.json").read_text()).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(attrs.get("cursor"), dict):
        return None
    return len((attrs.get("history") or {}).get("loss") or [])


def check_partial(path: str | os.PathLike, *, overwrite: bool, resume: bool = False) -> None:
    """Refuse to start over a checkpoint: it may hold days of work. Only --resume uses it and
    no flag discards it (``overwrite`` is about OUT): a job script that always passes
    --overwrite, requeued without --resume, would otherwise restart from zero every time."""
    part = partial_path(path)
    if resume or part.is_symlink() or not part.is_dir():
        return
    done = checkpoint_iterations(part)
    if done is not None:
        raise OutputExistsError(f"{part} holds a checkpoint at iteration {done}; continue it with --resume, "
                                "or delete it to start over")


# ----------------------------------------------------------------------------- output checks
def is_ptycli_store_dir(path: str | os.PathLike) -> bool:
    """True for a directory whose Zarr root carries the ``ptycli`` attribute (read from disk, no zarr)."""
    try:
        doc = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and ROOT_ATTR in (doc.get("attributes") or {})


def check_output(path: str | os.PathLike, *, overwrite: bool, inputs: Iterable[Any] = (),
                 kind: str = "store", resume: bool = False) -> Path:
    """Refuse, before any work, an output the stage must not replace or could not write.

    ``kind`` is "store" (a directory store; missing parent folders are created later) or
    "file" (one regular file; its folder must exist). ``inputs`` are the paths the stage reads:
    writing over, into or around one would destroy what the output's provenance points at.
    A store's ``OUT.partial`` holding a checkpoint is refused unless ``resume`` (reconstruct
    continues it); nothing discards it but the user.
    """
    out = Path(path)
    check_not_input(out, inputs, replacing=overwrite)
    if kind == "store":  # first: a checkpoint beside OUT is what the user must hear about
        check_partial(out, overwrite=overwrite, resume=resume)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
        _check_replaceable(out, kind)
    _check_writable(out, kind)
    return out


def check_not_input(out: Path, inputs: Iterable[Any], *, replacing: bool = True) -> None:
    """Refuse an output that is an input or lies inside an input store, or (when ``replacing``
    an existing output) one that holds an input."""
    resolved = out.resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        src = Path(given).resolve()
        if src == resolved:
            why = "is the input"
        elif src in resolved.parents and (src / "zarr.json").exists():
            why = "lies inside the input store"
        elif resolved in src.parents and replacing and out.exists():
            why = "contains the input"
        else:
            continue
        raise UsageError(f"{out}: {why} {given}; choose another output (a stage never replaces what it reads)")


def _check_replaceable(out: Path, kind: str) -> None:
    """--overwrite replaces what a stage writes, never a stranger's file or folder."""
    if kind == "file":
        if not out.is_file():
            raise OutputExistsError(f"{out}: exists and is not a regular file; not replaced")
    elif out.is_symlink():
        raise OutputExistsError(f"{out}: is a symbolic link; not replaced "
                                "(remove it yourself or choose another output)")
    elif not (out.is_dir() and is_ptycli_store_dir(out)):
        raise OutputExistsError(f"{out}: exists and is not a ptycli store; not replaced "
                                "(remove it yourself or choose another output)")


def _check_writable(out: Path, kind: str) -> None:
    """Create and remove a probe file where the output will go, so a bad location fails now."""
    parent = out.parent if str(out.parent) else Path(".")
    if kind == "file" and not parent.exists():
        raise InputError(f"{out}: no such directory {parent} for the output")
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent  # a store's missing folders are created when it is written
    if not parent.is_dir():
        raise InputError(f"{out}: cannot write here: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ptycli-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DeviceError(f"{out}: cannot write here: {exc.strerror}") from None
        raise InputError(f"{out}: cannot write in {parent} ({exc.strerror or exc})") from None


# ----------------------------------------------------------------------------- writing
class StoreWriter:
    """Writes one new store under ``OUT.partial``; ``finalize()`` renames it to ``OUT``."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        kind: str,
        stage: str,
        options: dict[str, Any] | None = None,
        inputs: Iterable[InputRef] = (),
        provenance: Iterable[Any] = (),
        overwrite: bool = False,
        keep_partial_on_error: bool = False,
        reuse_partial: bool = False,
        lock: OutputLock | None = None,
    ):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.keep_partial_on_error = keep_partial_on_error
        self.overwrite = overwrite
        check_output(self.path, overwrite=overwrite, resume=reuse_partial)
        # one writer of OUT at a time (lock.py), taken before OUT.partial is touched and checked
        # again under it: a rival may have completed OUT meanwhile
        self.lock = lock if lock is not None else OutputLock(self.path)
        self.lock.acquire()
        try:
            check_output(self.path, overwrite=overwrite, resume=reuse_partial)
            self._open(kind, stage, options, inputs, provenance, reuse_partial)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, kind: str, stage: str, options: dict[str, Any] | None, inputs: Iterable[InputRef],
              provenance: Iterable[Any], reuse_partial: bool) -> None:
        if self.partial.is_symlink() or self.partial.is_file():
            self.partial.unlink()  # OUT.partial is ptycli's own name: whatever is there is never complete
        elif self.partial.exists() and not reuse_partial:
            # left by a killed run: never complete; a checkpoint in it was refused above
            shutil.rmtree(self.partial)
        self.meta = RootMeta(
            kind=kind,  # type: ignore[arg-type]
            stage=stage,
            ptycli_version=__version__,
            options=options or {},
            options_hash=json_hash(options or {}),
            inputs=list(inputs),
            started=now_iso(),
            provenance=list(provenance),
        )
        mode = "a" if reuse_partial and self.partial.exists() else "w"
        self.group = zarr.open_group(str(self.partial), mode=mode, zarr_format=3)
        self._write_meta()

    # -- metadata
    def _write_meta(self) -> None:
        self.group.attrs[ROOT_ATTR] = self.meta.model_dump(mode="json")

    def record(self, operation: str, **params: Any) -> None:
        """Note one operation (crop, bin, ...) in this stage's provenance record."""
        self.meta.operations.append({"op": operation, **params})
        self._write_meta()

    def set_attrs(self, **attrs: Any) -> None:
        """Root attributes beside ``ptycli`` (e.g. ``calibration``), JSON only."""
        for key, value in attrs.items():
            self.group.attrs[key] = value

    # -- arrays
    def array(self, name: str, data: Any = None, **kwargs: Any) -> zarr.Array:
        """Create (and optionally fill) an array with dimension names and units (see write_array)."""
        return write_array(self.group, name, data, **kwargs)

    # -- completion
    def finalize(self, status: str = "complete") -> Path:
        finish_layout(self.group)  # coordinate arrays and long names (schema 2), fingerprinted below
        self.meta.status = status  # type: ignore[assignment]
        self.meta.finished = now_iso()
        self.meta.fingerprint = fingerprint(self.group, self.meta)
        self._write_meta()
        self.lock.check_owned()
        if self.path.exists() or self.path.is_symlink():
            # checked again: something may have appeared there during a long computation
            if not self.overwrite:
                raise OutputExistsError(f"{self.path} exists; pass --overwrite to replace it")
            _check_replaceable(self.path, "store")
            shutil.rmtree(self.path)
        # reconstruct's checkpoint is run control, not a result (half the size of a small store),
        # and not in the fingerprint: dropped before the metadata is consolidated, at the last
        # moment (a kill between here and the rename costs the run, never a wrong result)
        drop_checkpoint(self.partial)
        consolidate(self.partial)  # last: the complete store's metadata, which xarray reads in one go
        os.replace(self.partial, self.path)
        self.lock.release()
        return self.path

    def abort(self) -> None:
        """Drop the partial store after an error, unless asked to keep it and it holds a
        checkpoint to resume from: a run refused before its first checkpoint (a bad recipe
        value, an MPI or group-size refusal) left an OUT.partial that later commands called
        an interrupted stage."""
        try:
            if not self.partial.exists():
                return
            if self.keep_partial_on_error and checkpoint_iterations(self.partial) is not None:
                return
            shutil.rmtree(self.partial, ignore_errors=True)
        finally:
            self.lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()


def write_subgroup_atomic(root: str | os.PathLike, name: str, fill: Callable[[zarr.Group], None]) -> Path:
    """Write subgroup ``name`` of the store at ``root`` so it is either old or new, never half.

    ``fill`` writes into a temporary sibling; it then replaces ``name`` by two renames.
    A reader finding ``name`` missing but ``name.old`` present uses the latter.
    """
    root = Path(root)
    final, tmp, old = root / name, root / f"{name}.tmp", root / f"{name}.old"
    if old.exists() and not final.exists():
        # a crash between the two renames left only name.old, the last complete copy:
        # it becomes name again before anything is deleted (a kill during this fill would
        # otherwise leave no copy at all)
        os.replace(old, final)
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    fill(zarr.open_group(str(tmp), mode="w", zarr_format=3))
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- reading
def open_store(path: str | os.PathLike, kind: str | None = None, *, allow_partial: bool = False) -> zarr.Group:
    """Open a complete ptycli store read-only, checking kind and schema version."""
    p = Path(path)
    if not p.exists():
        if partial_path(p).exists() and not allow_partial:
            raise StoreError(
                f"{p}: store is incomplete ({p.name}{PARTIAL_SUFFIX} exists: the stage that wrote "
                "it was interrupted); re-run that stage, or use --resume for reconstruct"
            )
        raise InputError(f"{p}: no such store")
    if p.name.endswith(PARTIAL_SUFFIX) and not allow_partial:
        raise StoreError(f"{p}: is an incomplete (.partial) store; re-run the stage that wrote it")
    not_store = f"{p}: not a ptycli store (run `ptycli preprocess` on raw detector files first)"
    if not p.is_dir():
        raise StoreError(not_store)
    try:
        # the arrays' own metadata, not the consolidated copy (written for xarray at finalize):
        # a store edited in place afterwards (rechunked, an array replaced) would otherwise be
        # read through a stale listing
        group = zarr.open_group(str(p), mode="r", use_consolidated=False)
    except Exception as exc:  # zarr raises several types for "not a group"
        if not (p / "zarr.json").exists():  # a plain folder (or raw frames), not a damaged store
            raise StoreError(not_store) from None
        raise InputError(f"{p}: not a readable Zarr group ({type(exc).__name__})") from None
    if ROOT_ATTR not in group.attrs:
        raise StoreError(not_store)
    meta = read_meta(group, p)
    if major(meta.schema_version) > major(SCHEMA_VERSION):
        raise StoreError(
            f"{p}: store schema {meta.schema_version} is newer than this ptycli reads "
            f"({SCHEMA_VERSION}); upgrade ptycli"
        )
    if kind is not None and meta.kind != kind:
        raise StoreError(f"{p}: is a {meta.kind} store; expected a {kind} store")
    if meta.status not in ("complete", "interrupted") and not allow_partial:
        raise StoreError(f"{p}: store status is {meta.status!r}; expected 'complete'")
    for name in CHUNK_CHECKED:
        if name in group:
            check_chunks(group[name], p, name)
    return group


def is_ptycli_store(group: zarr.Group) -> bool:
    return ROOT_ATTR in group.attrs


def read_meta(group: zarr.Group, path: Any = None) -> RootMeta:
    raw = group.attrs.get(ROOT_ATTR)
    if raw is None:
        raise StoreError(f"{path or group.store}: not a ptycli store (no '{ROOT_ATTR}' root attribute)")
    try:
        return RootMeta.model_validate(raw)
    except Exception as exc:
        raise StoreError(f"{path or group.store}: corrupt '{ROOT_ATTR}' attribute: {exc}") from None


def store_path(group: zarr.Group) -> str:
    root = getattr(group.store, "root", None)
    return str(root) if root is not None else str(group.store)


def input_ref(group: zarr.Group, path: str | os.PathLike | None = None) -> InputRef:
    meta = read_meta(group, path)
    return InputRef(path=str(path or store_path(group)), kind=meta.kind,
                    fingerprint=meta.fingerprint or fingerprint(group, meta))


def provenance_of(group: zarr.Group) -> list[Any]:
    """The provenance chain a new store inherits from this input: its ancestors, then it."""
    meta = read_meta(group)
    return [*meta.provenance, meta.as_record()]


# ----------------------------------------------------------------------------- fingerprints
def fingerprint(group: zarr.Group, meta: RootMeta | None = None, max_chunks: int = 4) -> str:
    """Content fingerprint: array names, shapes, dtypes and a sample of chunk bytes.

    Hashing every byte of a 100 GB store would cost a full read; the first, middle and last
    chunks of each array plus the stage identity tell stores apart in practice.
    """
    h = hashlib.blake2b(digest_size=12)
    if meta is not None:
        h.update(json_hash([meta.stage, meta.options_hash, [i.fingerprint for i in meta.inputs]]).encode())
    for name, arr in sorted(walk_arrays(group)):
        if name.split("/", 1)[0] == CHECKPOINT:
            continue  # run control, dropped from the finished store (StoreWriter.finalize)
        h.update(f"{name}:{arr.shape}:{arr.dtype}".encode())
        if arr.size == 0:
            continue
        n0 = arr.shape[0] if arr.ndim else 1
        step = arr.chunks[0] if arr.ndim else 1
        starts = sorted({0, (n0 // 2 // step) * step, ((n0 - 1) // step) * step})[:max_chunks]
        for s in starts:
            block = arr[s : s + step] if arr.ndim else arr[...]
            h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()


def walk_arrays(group: zarr.Group, prefix: str = "") -> list[tuple[str, zarr.Array]]:
    out: list[tuple[str, zarr.Array]] = []
    for name, member in group.members():
        full = f"{prefix}{name}"
        if isinstance(member, zarr.Array):
            out.append((full, member))
        elif not name.endswith((".tmp", ".old")):
            out.extend(walk_arrays(member, full + "/"))
    return out
