"""The worker program: load a service once, run ``init`` once, then score chunks.

A fresh interpreter runs :func:`main` (``python -c "from localbatch._workers.child
import main; ..."``, so it never imports the caller's ``__main__``), or the fork
server forks one and calls :func:`serve`. The child knows only its connection
and its board: it speaks the messages of :mod:`.protocol`, runs rows with a
:class:`~.runtime.Runtime` and writes the running row to its
:class:`~.board.Board`. A failure of localbatch's own code around the rows
becomes an error on each row of the chunk, never a silent death.

It exits on ``Stop``, when the connection closes, or once its owner (the
process that started it) is gone, even mid-row: its process starts as a keeper
and a worker (see :mod:`.keeper`), and the kernel's parent-death signals end
both and everything the rows started within milliseconds; a thread watching
the owner is the backstop (~0.25 s). A worker a row left in a state that cannot be undone
(see :mod:`.isolation`) *retires*: it says ``Retiring``, sends the chunk's
results and exits while idle (status ``RETIRED_EXIT``), so no row is charged.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
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

from . import keeper
from .board import Board
from .capture import FdCapture
from .isolation import (
    RETIRED_EXIT,
    RowGuard,
    descendants,
    kill_tree,
    set_child_subreaper,
)
from .loading import read_service
from .protocol import (
    ChunkDone,
    InitError,
    Load,
    Ready,
    Retiring,
    RunChunk,
    decode,
    recv,
    row_error,
    send,
    wire_result,
)
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
    """The worker's life: load, init, then chunks until told to stop (or retired)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keeper.split(owner, conn.close)  # from here on, this process is the worker
    set_child_subreaper()
    _watch_owner(owner)
    scratch = tempfile.mkdtemp(prefix="localbatch-worker-")
    os.environ["LOCALBATCH_SCRATCH"] = scratch
    os.chdir(scratch)
    cap = _capture_fds(scratch)
    board = Board(board_path)
    code = 0
    try:
        code = _serve_loop(conn, board, cap, scratch)
    finally:
        kill_tree(descendants(os.getpid()))
        shutil.rmtree(scratch, ignore_errors=True)
    if code:
        os._exit(code)  # not sys.exit: a thread a row left must not keep us alive


def _serve_loop(conn: Connection, board: Board, cap: FdCapture, scratch: str) -> int:
    """Chunks until ``Stop`` or EOF (0), or until a row left the worker unrestorable."""
    runtime = _initialize(conn, cap)
    if runtime is None:
        return 0
    inbox = _drain(conn)
    # The baseline every row is restored to: after init, with our own threads running.
    guard = runtime.guard = RowGuard(scratch, vital=(conn.fileno(), cap.fd))
    while True:
        data = inbox.get()
        if data is None:
            return 0
        msg = decode(data)
        if not isinstance(msg, RunChunk):
            return 0  # Stop
        try:
            result = runtime.run_rows(msg.indices, msg.columns, board, cap, msg.chunk_id)
        except Exception as exc:
            # A failure of localbatch's own code around the rows (not of the user's):
            # record it on every row of the chunk rather than die unexplained, and
            # leave: what state the rows left the process in is not known.
            result = runtime.failed_chunk(msg.indices, exc)
            guard.retire = guard.retire or f"internal error: {type(exc).__name__}: {exc}"
        if guard.retire:
            # Said before the results, so an owner holding them knows not to reuse us.
            send(conn, Retiring("retiring", os.getpid(), guard.retire))
        send(conn, ChunkDone("result", msg.chunk_id, wire_result(result)))
        if guard.retire:
            return RETIRED_EXIT  # idle now: the owner replaces us, no row is charged


def _initialize(conn: Connection, cap: FdCapture) -> Runtime | None:
    """Answer the ``Load`` with ``Ready`` (and return the runtime) or ``InitError``; the
    console they carry is init's, fd-level output (C code, child processes) first."""
    msg = recv(conn)
    assert isinstance(msg, Load)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            runtime = Runtime(*read_service(msg.spec), msg.limits)
            seconds = runtime.initialize()
    except BaseException as exc:  # noqa: B036 - init's SystemExit is an init error too
        send(conn, InitError("init_error", os.getpid(), row_error(exc),
                             cap.take() + buf.getvalue()))
        return None
    send(conn, Ready("ready", os.getpid(), seconds, cap.take() + buf.getvalue()))
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


def _watch_owner(owner: int) -> None:
    """Exit within ~0.25 s once the owner is gone (when the GIL lets us), taking
    everything we started with us. The keeper (see :mod:`.keeper`) covers the
    rest: a row holding the GIL, and what it started."""
    def loop() -> None:
        while True:
            time.sleep(0.25)
            if not keeper.process_exists(owner):
                kill_tree(descendants(os.getpid()))
                os._exit(keeper.ORPHANED_EXIT)

    threading.Thread(target=loop, name="localbatch-owner-watch", daemon=True).start()


def _capture_fds(scratch: str) -> FdCapture:
    """Send fd 1 and 2 (C-level writes, child processes) to a file we can attribute.

    Nothing may sit in a buffer across rows, or it lands on a later row: C's
    ``stdout`` is made unbuffered and Python's ``sys.stdout``/``sys.stderr``
    write through (rows print to their console object, not to these).
    """
    cap = FdCapture(os.path.join(scratch, "console.capture"))
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(cap.fd, 1)
    os.dup2(cap.fd, 2)
    _unbuffer_c_stdout()
    # Kept: collecting the interpreter's own stream objects would close fds 1 and 2.
    _REPLACED.extend([sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__])
    sys.stdout = sys.__stdout__ = _write_through(1)
    sys.stderr = sys.__stderr__ = _write_through(2)
    return cap


_REPLACED: list[object] = []


def _write_through(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                            errors="backslashreplace", write_through=True)


def _unbuffer_c_stdout() -> None:
    """``setvbuf(stdout, NULL, _IONBF, 0)``: a C library's printf reaches fd 1 at once."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.setvbuf(ctypes.c_void_p.in_dll(libc, "stdout"), None, 2, 0)
