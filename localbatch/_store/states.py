"""Execution states and the header of ``execution.json``: the words every layer uses.

Standard library only, so the command line and the views can name states without
importing numpy (``localbatch --help`` stays ~20 ms).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypedDict

__all__ = ["ACTIVE", "TERMINAL", "ExecutionHeader", "ExecutionState", "resumes_only_forced"]


class ExecutionState(str, Enum):
    """The state of an execution, as ``execution.json`` stores it.

    A ``str`` enum whose values are the SDK's strings: ``json.dumps`` writes the
    plain string, and a state read back from a header (a plain ``str``) compares
    equal to its member, so ``state == "Complete"`` and ``state in ACTIVE`` hold
    either way.
    """

    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    COMPLETE = "Complete"
    FAILED = "Failed"
    CANCELED = "Canceled"

    def __str__(self) -> str:
        return self.value  # f-strings and str() give "Complete", not "ExecutionState..."


#: States of an execution that may still record rows.
ACTIVE = frozenset({ExecutionState.PENDING, ExecutionState.IN_PROGRESS})
#: States that end a run (an interrupted one reads as Failed, but can be resumed).
TERMINAL = frozenset({ExecutionState.COMPLETE, ExecutionState.FAILED, ExecutionState.CANCELED})


class ExecutionHeader(TypedDict, total=False):
    """``execution.json``: what a reader needs without opening any part."""

    format_version: int
    execution_id: str
    #: The revision that runs: service name, version and revision id.
    service: str
    version: str
    revision: str
    #: Input rows in the spool.
    total: int
    parallel_count: int
    #: The engine's registered name ("local", "inline", "dask", ...).
    engine: str
    #: ``BatchOptions.to_json()``: what resume and retry run with again.
    options: dict[str, Any]
    #: An ``ExecutionState`` value.
    state: str
    #: Rows recorded so far, and how many of them failed.
    completed: int
    failed: int
    #: Why the execution failed or was canceled; None while it has not.
    error: str | None
    #: ``resume()`` may run the remaining rows.
    resumable: bool
    #: ISO times: submitted, first row started, ended, header last rewritten.
    created: str
    started: str | None
    ended: str | None
    updated: str
    #: The process that owns (runs) the execution.
    owner_pid: int
    #: Set only on the copy readers get when the owner died while running.
    interrupted: bool
    #: How many times it was resumed.
    resumed: int
    #: The service version a ``retry_failed`` ran the failed rows with.
    retried_with: str


def resumes_only_forced(header: dict[str, Any]) -> bool:
    """Whether an ended execution resumes only with ``force``: it was canceled, or it
    failed for a reason that running it again does not fix (not ``resumable``)."""
    state = header["state"]
    return state == ExecutionState.CANCELED or (
        state == ExecutionState.FAILED and not header.get("resumable"))
