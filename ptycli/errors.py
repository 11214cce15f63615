"""Typed errors and the one exit-code table.

The library raises these; only the CLI maps them to an exit code and a one-line message.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # success (also "already complete" with --resume)
    INTERNAL = 1  # a bug
    USAGE = 2  # bad flag or argument
    CONFIG = 3  # invalid recipe or configuration
    INPUT = 4  # missing/corrupt file or store, wrong kind, newer schema, bad data
    OUTPUT_EXISTS = 5  # refused without --overwrite or --resume
    NUMERICAL = 6  # NaN or divergence; last good state kept
    DEVICE = 7  # no CUDA, out of memory
    INTERRUPTED = 75  # SIGTERM / SIGUSR1; checkpoint written, resumable
    USER_INTERRUPT = 130  # SIGINT


EXIT_CODE_MEANINGS = {
    ExitCode.OK: "success (also 'already complete' with --resume)",
    ExitCode.INTERNAL: "internal error (a bug)",
    ExitCode.USAGE: "usage error (bad flag or argument)",
    ExitCode.CONFIG: "invalid recipe or configuration (every bad key listed by path)",
    ExitCode.INPUT: "input problem (missing/corrupt file or store, wrong kind, newer schema, bad data)",
    ExitCode.OUTPUT_EXISTS: "output exists; refused without --overwrite or --resume",
    ExitCode.NUMERICAL: "numerical failure (NaN, divergence); last good state kept",
    ExitCode.DEVICE: "device or resource error (no CUDA, out of memory)",
    ExitCode.INTERRUPTED: "interrupted and resumable (SIGTERM / SIGUSR1); checkpoint written",
    ExitCode.USER_INTERRUPT: "interrupted by the user (SIGINT)",
}


class PtycliError(Exception):
    """Base class: a user-facing problem with a one-line message."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(PtycliError):
    exit_code = ExitCode.USAGE


class RecipeError(PtycliError):
    """Invalid recipe, calibration or other configuration; message names the key path."""

    exit_code = ExitCode.CONFIG


ConfigError = RecipeError


class InputError(PtycliError):
    """A missing, corrupt or unsuitable input file."""

    exit_code = ExitCode.INPUT


class StoreError(InputError):
    """A store that cannot be opened as asked (wrong kind, newer schema, partial)."""


class OutputExistsError(PtycliError):
    exit_code = ExitCode.OUTPUT_EXISTS


class NumericalError(PtycliError):
    exit_code = ExitCode.NUMERICAL


class DeviceError(PtycliError):
    exit_code = ExitCode.DEVICE


class Interrupted(PtycliError):
    """A run stopped by a signal after writing a checkpoint.

    ``resumable`` distinguishes SIGTERM/SIGUSR1 (75, requeue) from SIGINT (130).
    """

    def __init__(self, message: str, *, resumable: bool = True):
        super().__init__(message)
        self.resumable = resumable

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        return ExitCode.INTERRUPTED if self.resumable else ExitCode.USER_INTERRUPT
