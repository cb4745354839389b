"""Exceptions that map to the trainer's exit codes (``tuneforge.contracts.exit_codes``)."""

from __future__ import annotations

from tuneforge.contracts.exit_codes import ExitCode


class TrainerError(Exception):
    """A failure with a user-facing one-line message."""

    exit_code: ExitCode = ExitCode.FAILURE
    code: str = "trainer_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class BadInput(TrainerError):
    """The spec, the data or the model reference is wrong: retrying cannot help."""

    exit_code = ExitCode.BAD_INPUT
    code = "invalid_input"


class Preempted(TrainerError):
    """SIGTERM received and a checkpoint was saved: run the job again to resume."""

    exit_code = ExitCode.PREEMPTED
    code = "preempted"
