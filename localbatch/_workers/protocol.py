"""The wire between a supervisor and its worker process: tagged message tuples.

::

    parent → worker   Load("load", {"path": revision_dir} | {"manifest": ..., "blobs": ...}, limits)
    worker → parent   Ready("ready", pid, init_seconds, init_console)
                      | InitError("init_error", pid, error, init_console)
    parent → worker   RunChunk("chunk", chunk_id, indices, columns)     (any number, pipelined)
    worker → parent   ChunkDone("result", chunk_id, result)              (one per chunk, in order)
    parent → worker   Stop("stop",)

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

from .._format.chunk import ChunkResult, RowError

__all__ = [
    "ChunkDone",
    "InitError",
    "Load",
    "Message",
    "Ready",
    "RunChunk",
    "Stop",
    "decode",
    "recv",
    "row_error",
    "send",
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


class Stop(NamedTuple):
    """Exit (an idle worker the pool no longer keeps)."""

    tag: Literal["stop"]


Message = Load | Ready | InitError | RunChunk | ChunkDone | Stop


_BY_TAG: dict[str, Any] = {"load": Load, "ready": Ready, "init_error": InitError,
                           "chunk": RunChunk, "result": ChunkDone, "stop": Stop}


def send(conn: Connection, msg: Message) -> None:
    conn.send_bytes(pickle.dumps(tuple(msg), protocol=5))


def decode(data: bytes) -> Message:
    raw = pickle.loads(data)
    msg: Message = _BY_TAG[raw[0]]._make(raw)
    return msg


def recv(conn: Connection) -> Message:
    return decode(conn.recv_bytes())


def row_error(exc: BaseException) -> RowError:
    """An exception as it crosses the wire: its type name, message and traceback text."""
    tb = exc.__traceback__
    # Drop the frames of localbatch itself: users want their own code's stack.
    while tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("localbatch"):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a user exception whose __str__ raises: its row's error
        message = "<exception str() failed>"
    return type(exc).__name__, message, text
