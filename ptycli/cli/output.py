"""What the CLI shows: the result on stdout, everything else on stderr.

stdout carries only the result (an output path, a bare value, or one JSON document with
``--json``) so stages compose in pipes and Makefiles. Logs, warnings and progress go to
stderr: a rich bar on a terminal, plain timestamped heartbeat lines otherwise (SLURM logs).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

import typer

from ..errors import ExitCode, PtycliError

VERBOSITY = {"level": 0}  # -v/-q counted by the app callback


@functools.lru_cache(maxsize=1)
def console():
    """The stderr console (rich honours NO_COLOR and TERM=dumb)."""
    from rich.console import Console  # noqa: PLC0415  (keep `ptycli --help` fast)

    return Console(stderr=True, highlight=False)


# Pipes, files and SLURM logs have no width: a table there is laid out at its natural width
# instead of being cut to rich's 80-column default.
UNBOUNDED_WIDTH = 1 << 16


def table_console(stderr: bool = False):
    """A console for tables: fits the window on a terminal, never truncates anywhere else."""
    from rich.console import Console  # noqa: PLC0415

    # NO_COLOR: no escape codes at all, so the bold keys and italic titles go too
    plain = {"color_system": None} if os.environ.get("NO_COLOR") else {}
    out = Console(stderr=stderr, highlight=False, soft_wrap=False, **plain)
    if not out.is_terminal:
        out.width = UNBOUNDED_WIDTH
    return out


def colour_ok() -> bool:
    """Colour codes in text we write ourselves (image previews) only for a terminal (or
    FORCE_COLOR), never with NO_COLOR or TERM=dumb: rich's own checks do not see that text."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(os.environ.get("FORCE_COLOR")) or sys.stdout.isatty()


def log(message: str, level: int = 0) -> None:
    """A log line on stderr, shown when the verbosity is at least ``level``."""
    if VERBOSITY["level"] >= level:
        console().print(message, markup=False, soft_wrap=True)


def note_kernel_compile(device: str) -> None:
    """Log "compiling kernels (...)" when a CPU run starts compiling them (not when they load
    from the cache)."""
    if device.startswith("cuda"):
        return
    from ..stages.kernel_note import on_compile  # noqa: PLC0415

    on_compile(log)


def warn(message: str) -> None:
    if VERBOSITY["level"] >= -1:
        console().print(f"warning: {message}", markup=False, style="yellow", soft_wrap=True)


def result(value: Any, as_json: bool = False) -> None:
    """Print the result on stdout: JSON with ``--json``, else a bare value or path."""
    if as_json:
        sys.stdout.write(json.dumps(value, indent=2, default=_json_default) + "\n")
    elif value is not None:
        sys.stdout.write(f"{value}\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return str(obj)


def fail(exc: PtycliError) -> typer.Exit:
    """Print the one-line error and return the Exit to raise."""
    sys.stderr.write(f"ptycli: error: {exc}\n")
    if VERBOSITY["level"] >= 2:
        traceback.print_exception(exc)
    return typer.Exit(int(exc.exit_code))


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map library errors to one line on stderr and the exit-code table (errors.py)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PtycliError as exc:
            raise fail(exc) from None
        except KeyboardInterrupt:
            sys.stderr.write("ptycli: interrupted\n")
            raise typer.Exit(int(ExitCode.USER_INTERRUPT)) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except MemoryError:
            sys.stderr.write("ptycli: error: out of memory (try --stream or a smaller group size)\n")
            raise typer.Exit(int(ExitCode.DEVICE)) from None
        except Exception as exc:  # a bug: say so, traceback only with -vv
            damaged = _damaged_input(exc)
            if damaged is not None:
                if VERBOSITY["level"] >= 2:
                    traceback.print_exc()
                raise fail(damaged) from None
            sys.stderr.write(f"ptycli: internal error: {type(exc).__name__}: {exc} (run with -vv for the traceback)\n")
            if VERBOSITY["level"] >= 2:
                traceback.print_exc()
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper


def _damaged_input(exc: Exception) -> PtycliError | None:
    """A missing array or an undecodable chunk met while reading an input store (exit 4).

    Mapped here because such reads happen all over the stages and engines (streamed
    patterns, prefetch threads); only errors raised inside Zarr's reading of a read-only
    store qualify, so a bug elsewhere still reports as one.
    """
    if "zarr" not in sys.modules:
        return None
    from ..store.state import read_error  # noqa: PLC0415

    return read_error(exc)


# ----------------------------------------------------------------------------- progress
def progress_mode(requested: str = "auto") -> str:
    """Resolve ``auto``: a bar on an interactive stderr, heartbeat lines otherwise."""
    if VERBOSITY["level"] < 0:
        return "none"
    if requested != "auto":
        return requested
    return "bar" if sys.stderr.isatty() and os.environ.get("TERM") != "dumb" else "lines"


class Progress:
    """A progress reporter: ``bar`` (rich), ``lines`` (heartbeat every ``every_s``), ``none``."""

    def __init__(self, total: int | None, description: str, mode: str = "auto", every_s: float = 10.0):
        self.mode = progress_mode(mode)
        self.total, self.description, self.every_s = total, description, every_s
        self.done, self.fields = 0, {}
        self._start = 0  # work done before this process (a resumed run): not part of the rate
        self._t0 = self._last = time.monotonic()
        self._bar = None
        if self.mode == "bar":
            from rich.progress import (  # noqa: PLC0415
                BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                TimeElapsedColumn, TimeRemainingColumn,
            )

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console(), transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, info="")

    def start_at(self, done: int) -> None:
        """Count on from ``done`` (work finished before this process); rate and ETA use new work only."""
        self.done = self._start = int(done)
        self._t0 = self._last = time.monotonic()
        if self._bar is not None:
            self._bar.reset(self._task, completed=self.done)

    def update(self, advance: int = 1, **fields: Any) -> None:
        self.done += advance
        self.fields.update(fields)
        info = " ".join(f"{k}={_fmt(v)}" for k, v in self.fields.items())
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, info=info)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last >= self.every_s or (self.total and self.done >= self.total):
                self._last = now
                self._line(info)

    def _line(self, info: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        of = f"/{self.total}" if self.total else ""
        rate = (self.done - self._start) / max(time.monotonic() - self._t0, 1e-9)
        sys.stderr.write(f"[{stamp}] {self.description}: {self.done}{of} ({rate:.3g}/s) {info}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
