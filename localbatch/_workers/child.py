"""The worker program: load a service once, run ``init`` once, then score chunks.

A fresh interpreter runs :func:`main` (``python -c "from localbatch._workers.child
import main; ..."``, so it never imports the caller's ``__main__``), or the fork
server forks one and calls :func:`serve`. The child knows only its connection
and its board: it speaks the messages of :mod:`.protocol`, runs rows with a
:class:`~.runtime.Runtime` and writes the running row to its
:class:`~.board.Board`. A failure of localbatch's own code around the rows
becomes an error on each row of the chunk, never a silent death.

It exits on ``Stop``, when the connection closes, or within ~0.25 s once its
owner (the process that started it) is gone, even mid-row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection

from .board import Board
from .loading import read_service
from .protocol import ChunkDone, InitError, Load, Ready, RunChunk, decode, recv, row_error, send
from .runtime import Runtime

__all__ = ["main", "serve"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="localbatch-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--board", default=None)
    parser.add_argument("--owner", type=int, required=True)
    args = parser.parse_args(argv)
    serve(Connection(args.fd), args.board, args.owner)
    os._exit(0)


def serve(conn: Connection, board_path: str | None, owner: int) -> None:
    """The worker's life: load, init, then chunks until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_owner(owner, os.getppid())
    scratch = tempfile.mkdtemp(prefix="localbatch-worker-")
    os.environ["LOCALBATCH_SCRATCH"] = scratch
    os.chdir(scratch)
    cap_fd = _capture_fds(scratch)
    board = Board(board_path)
    try:
        _serve_loop(conn, board, cap_fd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _serve_loop(conn: Connection, board: Board, cap_fd: int) -> None:
    runtime = _initialize(conn)
    if runtime is None:
        return
    inbox = _drain(conn)
    while True:
        data = inbox.get()
        if data is None:
            return
        msg = decode(data)
        if not isinstance(msg, RunChunk):
            return  # Stop
        try:
            result = runtime.run_rows(msg.indices, msg.columns, board, cap_fd, msg.chunk_id)
        except Exception as exc:
            # A failure of localbatch's own code around the rows (not of the user's):
            # record it on every row of the chunk rather than die unexplained.
            result = runtime.failed_chunk(msg.indices, exc)
        send(conn, ChunkDone("result", msg.chunk_id, result))


def _initialize(conn: Connection) -> Runtime | None:
    """Answer the ``Load`` with ``Ready`` (and return the runtime) or ``InitError``."""
    msg = recv(conn)
    assert isinstance(msg, Load)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            runtime = Runtime(*read_service(msg.spec), msg.limits)
            seconds = runtime.initialize()
    except BaseException as exc:  # noqa: B036 - init's SystemExit is an init error too
        send(conn, InitError("init_error", os.getpid(), row_error(exc), buf.getvalue()))
        return None
    send(conn, Ready("ready", os.getpid(), seconds, buf.getvalue()))
    return runtime


def _drain(conn: Connection) -> queue.SimpleQueue[bytes | None]:
    """Read the connection on a thread, so the parent's sends never wait on our rows.

    Without it, a parent sending the next chunk and a worker sending its result
    can both block on full socket buffers.
    """
    inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def loop() -> None:
        while True:
            try:
                inbox.put(conn.recv_bytes())
            except (EOFError, OSError):
                inbox.put(None)
                return

    threading.Thread(target=loop, name="localbatch-inbox", daemon=True).start()
    return inbox


def _watch_owner(owner: int, parent: int) -> None:
    """Exit within ~0.25 s once the owner is gone, even mid-row."""
    def loop() -> None:
        while True:
            time.sleep(0.25)
            if os.getppid() != parent:
                os._exit(70)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(70)
            except PermissionError:
                pass

    threading.Thread(target=loop, name="localbatch-owner-watch", daemon=True).start()


def _capture_fds(scratch: str) -> int:
    """Send fd 1 and 2 (C-level writes, child processes) to a file we can attribute."""
    fd = os.open(os.path.join(scratch, "console.capture"), os.O_RDWR | os.O_CREAT |
                 os.O_APPEND | os.O_TRUNC, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    return fd
