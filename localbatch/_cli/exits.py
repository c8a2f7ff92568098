"""Exit statuses of the command line, and the error that carries one.

The lowest module of ``_cli``: every other one raises ``CliError`` or returns an
``EXIT_*``, so these live apart from ``main`` (whose module imports the commands).
"""

from __future__ import annotations

from .._store.states import ExecutionState

__all__ = [
    "EXIT_CANCELED",
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_ROWS_FAILED",
    "EXIT_USAGE",
    "STATE_EXIT",
    "CliError",
]

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_CANCELED = 4
EXIT_ERROR = 5

STATE_EXIT = {ExecutionState.FAILED: EXIT_FAILED, ExecutionState.CANCELED: EXIT_CANCELED}


class CliError(Exception):
    """A one-line reason and the exit status it maps to."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code
