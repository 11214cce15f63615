"""One writer per output: an exclusive ``OUT.lock`` file held while a stage writes ``OUT``.

Two ``ptycli init -o X`` started at once (``make -j``, two SLURM jobs) used to delete each
other's ``X.partial`` and rename half-written stores into place. The writer now creates
``OUT.lock`` with ``O_CREAT|O_EXCL`` before it touches ``OUT.partial`` and removes it once
``OUT`` is renamed into place (or the run stops); a second writer finds the file and stops
with exit 5 naming the holder.

Why a lock *file* and not ``fcntl``/``flock``: SLURM jobs share NFS or Lustre, where
``flock`` is local to one client on many mounts and ``fcntl`` locks need a working lock
daemon; exclusive create is atomic on NFSv3+ and Lustre, and a file survives to say who
holds it. Its cost is that a killed holder leaves the file behind, so a lock is *stale*
(taken over) when
- its host is this host and its pid is no longer alive, or
- its modification time is older than ``STALE_AFTER_S``: the holder touches it every
  ``HEARTBEAT_S`` seconds, so only a dead (or frozen) holder on another node lets it age.
  This compares the file server's clock with this node's: nodes of a cluster agree to
  well under a minute (NTP), far less than the margin, or
- it was taken by an earlier run of this SLURM job (same ``SLURM_JOB_ID``, lower
  ``SLURM_RESTART_COUNT``): a job requeued after its node died or killed it starts at once
  on another node, and SLURM never runs two incarnations of a job together.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError
from .schema import now_iso

LOCK_SUFFIX = ".lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # ten heartbeats missed: no live holder is that late


def lock_path(out: str | os.PathLike) -> Path:
    return Path(str(out) + LOCK_SUFFIX)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _slurm_job() -> dict[str, Any]:
    """This process's SLURM job and restart count ({} outside SLURM)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    try:
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        restart = 0
    return {"slurm_job": job, "slurm_restart": restart}


def _read(path: Path) -> dict[str, Any] | None:
    """The holder's record, or None when the file is unreadable or still being written."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class OutputLock:
    """``acquire()`` or raise OutputExistsError (exit 5); ``release()`` is idempotent."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = lock_path(out)
        self.token: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- taking and giving back
    def acquire(self) -> "OutputLock":
        if self.token is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)  # a store's missing folders are made anyway
        token = uuid.uuid4().hex
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": now_iso(), "token": token,
                  **_slurm_job()}
        for _ in range(3):  # a stale lock removed by us (or by a rival) is retried
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if self._stale(holder):
                    self._take_over(holder)
                    continue
                raise OutputExistsError(self._held_message(holder)) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.token = token
            self._start_heartbeat()
            return self
        raise OutputExistsError(self._held_message(_read(self.path)))

    def release(self) -> None:
        if self.token is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self.owned():  # never remove a lock someone took over from us
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.token = None

    def owned(self) -> bool:
        """Whether the lock file is still ours (a rival may have judged us stale)."""
        holder = _read(self.path)
        return holder is not None and self.token is not None and holder.get("token") == self.token

    def check_owned(self) -> None:
        """Raise when the lock was taken over: renaming OUT into place now could clobber
        the other writer's result."""
        if not self.owned():
            raise OutputExistsError(f"{self.out}: lost the write lock {self.path} to another process "
                                    "(it judged this run stale); not replacing its output")

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- helpers
    def _stale(self, holder: dict[str, Any] | None) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True  # released meanwhile: just retry
        if age > STALE_AFTER_S:
            return True
        if holder is None:
            return False  # being written by a starting holder
        job = _slurm_job()
        if job and holder.get("slurm_job") == job["slurm_job"] and \
                int(holder.get("slurm_restart", 0)) < job["slurm_restart"]:
            return True  # this job's earlier incarnation, before its requeue
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _alive(holder["pid"])
        return False

    def _take_over(self, holder: dict[str, Any] | None) -> None:
        """Remove a stale lock by renaming it aside first: of several processes judging it stale
        at once, one rename succeeds and the others find it gone and retry the create."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read(aside)
        if holder is not None and moved is not None and moved.get("token") != holder.get("token"):
            # a fresh holder took the lock between our look and the rename: give it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"
               if holder else "a process starting now")
        return (f"{self.out} is being written by another ptycli process ({who}; lock {self.path}); "
                f"wait for it to finish, or delete {self.path} if that process is gone")

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._beat = threading.Thread(target=beat, name="ptycli-lock-heartbeat", daemon=True)
        self._beat.start()
