"""The wire between a supervisor and its worker process: tagged message tuples.

::

    parent → worker   Load("load", {"path": revision_dir} | {"manifest": ..., "blobs": ...}, limits)
    worker → parent   Ready("ready", pid, init_seconds, init_console)
                      | InitError("init_error", pid, error, init_console)
    parent → worker   RunChunk("chunk", chunk_id, indices, columns)     (any number, pipelined)
    worker → parent   ChunkDone("result", chunk_id, result)              (one per chunk, in order)
                      preceded by Retiring("retiring", pid, reason) when a row left the
                      worker unrestorable: it exits after that result, while idle
    parent → worker   Stop("stop",)

A chunk crosses the wire without what its receiver knows or can derive (see
:func:`wire_chunk`, :func:`wire_result`, :func:`full_result`): its row numbers
go as a ``range`` when they are consecutive, and come back not at all (the
parent knows what it sent); end times that are the next row's start time come
back as the last one only. For fast rows that is 24 of 57 bytes a row.

Each message is a NamedTuple whose first field is its tag, so it also reads as
a plain tuple (``msg[0] == "ready"``). On the wire it is that plain tuple,
pickled; the receiver rebuilds the message from its tag. So the wire names no
class (moving one never breaks it), and a message costs what a tuple costs (a
pickled NamedTuple also carries a reference to its class, ~1 us more each way).
The row-level data (``result``) is a :class:`~localbatch._format.chunk.ChunkResult`;
an error is a :data:`~localbatch._format.chunk.RowError` (see :func:`row_error`).
Where each side runs: :mod:`.child` (the worker), :mod:`.process` (the parent).
"""

from __future__ import annotations

import pickle
import traceback
from multiprocessing.connection import Connection
from typing import Any, Literal, NamedTuple

import numpy as np

from .._format.chunk import ChunkResult, RowError, index_array

__all__ = [
    "ChunkDone",
    "InitError",
    "Load",
    "Message",
    "Ready",
    "Retiring",
    "RunChunk",
    "Stop",
    "decode",
    "full_result",
    "recv",
    "row_error",
    "send",
    "wire_chunk",
    "wire_result",
]


class Load(NamedTuple):
    """Load this service (a revision folder, or a bundle by value) and run its init."""

    tag: Literal["load"]
    spec: dict[str, Any]
    #: Per-row caps (``Runtime.limits``); None: the defaults.
    limits: dict[str, int] | None


class Ready(NamedTuple):
    """Init returned: the worker takes chunks now."""

    tag: Literal["ready"]
    pid: int
    init_seconds: float
    console: str


class InitError(NamedTuple):
    """Loading the service or its init raised; the worker exits after sending it."""

    tag: Literal["init_error"]
    pid: int
    error: RowError
    console: str

    def describe(self) -> str:
        """The batch's error text for it."""
        return f"init failed: {self.error[0]}: {self.error[1]}"


class RunChunk(NamedTuple):
    """Score these rows (``indices``: row numbers; ``columns``: inputs by name)."""

    tag: Literal["chunk"]
    chunk_id: int
    indices: Any
    columns: dict[str, Any]


class ChunkDone(NamedTuple):
    """The result of one chunk; user failures are inside it, per row."""

    tag: Literal["result"]
    chunk_id: int
    result: ChunkResult


class Retiring(NamedTuple):
    """The next result is this worker's last: it exits while idle (no row is charged).

    Sent before that result, so an owner holding the result already knows.
    """

    tag: Literal["retiring"]
    pid: int
    reason: str


class Stop(NamedTuple):
    """Exit (an idle worker the pool no longer keeps)."""

    tag: Literal["stop"]


Message = Load | Ready | InitError | RunChunk | ChunkDone | Retiring | Stop


_BY_TAG: dict[str, Any] = {"load": Load, "ready": Ready, "init_error": InitError,
                           "chunk": RunChunk, "result": ChunkDone, "retiring": Retiring,
                           "stop": Stop}


def send(conn: Connection, msg: Message) -> None:
    conn.send_bytes(pickle.dumps(tuple(msg), protocol=5))


def decode(data: bytes) -> Message:
    raw = pickle.loads(data)
    msg: Message = _BY_TAG[raw[0]]._make(raw)
    return msg


def recv(conn: Connection) -> Message:
    return decode(conn.recv_bytes())


def wire_chunk(msg: RunChunk) -> RunChunk:
    """A chunk to send: consecutive row numbers as a ``range`` (8 bytes a row less)."""
    rows = msg.indices
    if isinstance(rows, np.ndarray) and rows.ndim == 1 and len(rows) > 1 \
            and rows.dtype.kind in "iu" and int(rows[-1]) - int(rows[0]) == len(rows) - 1 \
            and bool((np.diff(rows) == 1).all()):
        return msg._replace(indices=range(int(rows[0]), int(rows[-1]) + 1))
    return msg


def wire_result(result: ChunkResult) -> ChunkResult:
    """A chunk's result to send back: no row numbers (the parent knows them), and end
    times that are each next row's start time (the row loop's) as the last one only."""
    out = dict(result)
    del out["index"]
    started, ended = out["started"], out["ended"]
    if (isinstance(started, np.ndarray) and isinstance(ended, np.ndarray)
            and started.dtype == ended.dtype == np.float64 and len(ended) == len(started) > 0
            and np.array_equal(started[1:].view(np.uint64), ended[:-1].view(np.uint64))):
        out["ended"] = float(ended[-1])
    return out  # type: ignore[return-value]


def full_result(result: ChunkResult, indices: Any) -> ChunkResult:
    """A result as :func:`wire_result` sent it, whole again (``indices``: the chunk's)."""
    result["index"] = index_array(indices)
    last = result["ended"]
    if isinstance(last, float):
        started = np.asarray(result["started"], np.float64)
        ended = np.empty(len(started))
        ended[:-1] = started[1:]
        ended[-1] = last
        result["ended"] = ended
    return result


def row_error(exc: BaseException) -> RowError:
    """An exception as it crosses the wire: its type name, message and traceback text.

    Never raises: an exception whose ``__str__`` (or anything in its traceback)
    raises still becomes its row's error, not its chunk's.
    """
    tb = exc.__traceback__
    # Drop the frames of localbatch itself: users want their own code's stack.
    while tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("localbatch"):
        tb = tb.tb_next
    name = _safe(lambda: type(exc).__name__, "BaseException")
    message = _safe(lambda: str(exc), f"<{name}: str() raised>")
    text = _safe(lambda: "".join(traceback.format_exception(type(exc), exc, tb)),
                 f"{name}: {message}\n")
    return name, message, text


def _safe(fn: Any, fallback: str) -> str:
    try:
        value = fn()
        return value if isinstance(value, str) else fallback
    except BaseException:  # noqa: B036 - a user's __str__ may raise anything
        return fallback
