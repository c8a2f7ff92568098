"""Execution states and the header of ``execution.json``: the words every layer uses.

Standard library only, so the command line and the views can name states without
importing numpy (``localbatch --help`` stays ~20 ms).

A header read from disk is checked field by field (:func:`check_header`) before
anyone uses it: a state nobody knows, a total that is not a count, a list where
an object belongs raise ``StoreCorruptedError`` naming the file, so no reader
crashes with ``TypeError``/``KeyError`` and no wait loops on a state it cannot
recognise.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypedDict

from .._errors import StoreCorruptedError

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "ExecutionHeader",
    "ExecutionState",
    "check_header",
    "damaged_header",
    "resumes_only_forced",
]


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


#: Fields every header has, and the types each may hold (None where it may be null).
_REQUIRED: dict[str, tuple[type, ...]] = {
    "execution_id": (str,), "service": (str,), "version": (str,), "revision": (str,),
    "total": (int,), "state": (str,), "completed": (int,), "failed": (int,),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "format_version": (int,), "parallel_count": (int,), "engine": (str,),
    "options": (dict,), "error": (str, type(None)), "resumable": (bool,),
    "created": (str,), "started": (str, type(None)), "ended": (str, type(None)),
    "updated": (str,), "owner_pid": (int,), "interrupted": (bool,), "resumed": (int,),
    "retried_with": (str,),
}
_STATES = frozenset(s.value for s in ExecutionState)


def check_header(obj: Any, where: object) -> ExecutionHeader:
    """``obj`` (parsed ``execution.json``) as a header, or StoreCorruptedError naming
    ``where``."""
    if not isinstance(obj, dict):
        raise StoreCorruptedError(f"{where} is damaged: a {type(obj).__name__}, not an "
                                  "object")
    for key in _REQUIRED:
        if key not in obj:
            raise StoreCorruptedError(f"{where} is damaged: no {key!r}")
    for key, types in (*_REQUIRED.items(), *_OPTIONAL.items()):
        value = obj.get(key, None)
        if key in obj and (not isinstance(value, types)
                           or (isinstance(value, bool) and bool not in types)):
            raise StoreCorruptedError(f"{where} is damaged: {key} = {value!r}")
    if obj["state"] not in _STATES:
        raise StoreCorruptedError(f"{where} is damaged: unknown state {obj['state']!r}")
    if not 0 <= obj["failed"] <= obj["completed"] <= obj["total"]:
        raise StoreCorruptedError(f"{where} is damaged: counters {obj['completed']}/"
                                  f"{obj['failed']} of {obj['total']} rows")
    return obj  # type: ignore[return-value]


def damaged_header(execution_id: str, error: BaseException, created: str = "") -> dict[str, Any]:
    """What a listing shows for an execution whose ``execution.json`` is damaged:
    ``Failed``, not resumable, ``damaged`` set, the reason in ``error``."""
    return {
        "execution_id": execution_id, "service": "?", "version": "?", "revision": "?",
        "total": 0, "state": ExecutionState.FAILED.value, "completed": 0, "failed": 0,
        "error": f"{type(error).__name__}: {error}", "resumable": False,
        "created": created, "started": None, "ended": None, "damaged": True,
    }
