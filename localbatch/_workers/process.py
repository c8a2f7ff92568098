"""One worker process, seen from the process that owns it.

Two start methods, both giving fresh interpreters that never import the
caller's ``__main__`` (so a guard-less script works):

- ``spawn``: a new interpreter per worker running :func:`.child.main`;
- ``forkserver``: the owner's fork server (:mod:`.zygote`), with numpy and the
  worker modules imported once, forks each worker (fast cold starts).

A :class:`WorkerProcess` holds the worker's connection and its board (a mapped
file in a scratch folder, in ``/dev/shm`` where there is one), so the owner
can read the running row at any time. Its pid is the worker's *keeper* (see
:mod:`.keeper`): killing it kills the worker and everything the rows started,
and its exit status is the worker's. Workers are started from a thread that
lives as long as this process (:func:`on_launcher`), because the kernel's
parent-death signal follows the thread that started a process. Owners that
wait on one worker at a time (``consume``, a Dask task) use :meth:`~WorkerProcess.await_ready` and
:meth:`~WorkerProcess.run_chunk`; the local supervisor waits on many at once
and reads their messages itself.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from .._format.chunk import ChunkResult
from . import zygote
from .board import BOARD_BYTES, BOARD_HEAD, running_row
from .isolation import BROKEN_EXIT, RETIRED_EXIT, kill_tree
from .launch import launch
from .protocol import (
    ChunkDone,
    InitError,
    Load,
    Message,
    Ready,
    Retiring,
    RunChunk,
    Stop,
    full_result,
    recv,
    send,
    wire_chunk,
)

__all__ = ["START_METHODS", "WorkerLost", "WorkerProcess", "describe_exit", "on_launcher",
           "pid_alive", "remove_scratch"]

START_METHODS = ("spawn", "forkserver")
#: How often a wait for one worker checks for a cancel or a row timeout.
POLL = 0.05


def _scratch() -> str:
    global _SCRATCH
    if _SCRATCH is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _SCRATCH = tempfile.mkdtemp(prefix="localbatch-boards-", dir=base)
    return _SCRATCH


_SCRATCH: str | None = None


def remove_scratch() -> None:
    """Remove the boards' folder (at exit)."""
    if _SCRATCH is not None:
        shutil.rmtree(_SCRATCH, ignore_errors=True)


class _Launcher:
    """One thread that starts every worker of this process and lives as long as it.

    A worker asks the kernel for a signal when its parent dies
    (``PR_SET_PDEATHSIG``), and for the kernel the parent is the *thread* that
    started it: a worker started by a batch's supervisor thread would be killed
    when that batch ends, warm or not. So workers (and the fork server) are
    started from the main thread or from this one, which never ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = \
            queue.SimpleQueue()

    def call(self, fn: Callable[[], Any]) -> Any:
        current = threading.current_thread()
        if current is threading.main_thread() or current is self._thread:
            return fn()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, daemon=True,
                                                name="localbatch-launcher")
                self._thread.start()
        done: Future[Any] = Future()
        self._requests.put((fn, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            fn, done = self._requests.get()
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: B036 - handed to the caller as is
                done.set_exception(exc)

    def forget(self) -> None:
        """In a fork()ed child: the thread was not copied, nor is the lock's state."""
        self.__init__()  # type: ignore[misc]


_LAUNCHER = _Launcher()


def on_launcher(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (which starts a process) from a thread that lives as long as this process."""
    return _LAUNCHER.call(fn)


def _after_fork_in_child() -> None:
    # A fork()ed child of the owner starts its own workers and boards, if any: the
    # parent's boards folder, launcher thread and lock are not its own.
    global _SCRATCH
    _SCRATCH = None
    _LAUNCHER.forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def describe_exit(code: int | None) -> str:
    """What ended a worker, from its exit code (negative: the signal that killed it)."""
    if code is None:
        return "worker died (exit status unknown)"
    if code == RETIRED_EXIT:
        return "worker retired: a row left it in a state that cannot be undone"
    if code == BROKEN_EXIT:
        return ("worker died: the row left it unable to restore itself (its own file "
                "descriptors or folders closed, replaced or out of reach)")
    if code < 0:
        sig = -code
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = " (possibly out of memory)" if sig == signal.SIGKILL else ""
        return f"worker died: signal {sig} {name}{hint}"
    return f"worker died: exit code {code}"


class WorkerLost(NamedTuple):
    """Why a worker gave no answer; it has been killed by then."""

    #: ``"died"``, ``"timeout"`` (the whole wait), ``"row_timeout"`` or ``"canceled"``.
    reason: str
    #: The exit described (a death), or the limit passed (a row timeout).
    why: str
    #: The row its board named when it ended: (row index, start time).
    row: tuple[int, float] | None = None


@dataclass
class WorkerProcess:
    """One worker process, its connection, its board and the chunks it was sent."""

    key: tuple[Any, ...]
    start_method: str
    pid: int = 0
    conn: Connection | None = None
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    started_at: float = field(default_factory=time.monotonic)
    idle_since: float = 0.0
    #: Batches or calls it has been leased to (0: started ahead of its first batch).
    leases: int = 0
    exitcode: int | None = None
    dead: bool = False
    #: Why it exits after its current results (see :mod:`.isolation`): never reused.
    retiring: str | None = None
    _closed_by_worker: bool = False
    _board_path: str = ""
    _board: Any = None
    #: The template that forked it (``forkserver``): the one that reports its exit.
    _server: Any = None
    #: Row indices of each chunk sent and not yet answered, by chunk id.
    _sent: dict[int, Any] = field(default_factory=dict)

    def start(self, load: dict[str, Any], limits: dict[str, int] | None) -> None:
        fd, self._board_path = tempfile.mkstemp(prefix="board-", dir=_scratch())
        try:
            os.ftruncate(fd, BOARD_BYTES)  # sparse: a chunk touches only its rows' pages
            os.write(fd, BOARD_HEAD.pack(-1))
        finally:
            os.close(fd)
        with open(self._board_path, "r+b") as fh:
            self._board = mmap.mmap(fh.fileno(), BOARD_BYTES)
        parent, child = socket.socketpair()
        try:
            on_launcher(lambda: self._launch(child.fileno()))
        except BaseException:
            parent.close()
            self.close()  # its board: a retry starts afresh
            raise
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        try:
            self.send(Load("load", load, limits))
        except OSError:
            pass  # it died already: the supervisor sees the closed connection next poll

    def _launch(self, fd: int) -> None:
        if self.start_method == "forkserver":
            self._server = zygote.client()
            self.pid = self._server.fork(fd, self._board_path)
        else:
            self.proc = launch("localbatch._workers.child", fd,
                               ["--board", self._board_path, "--owner", str(os.getpid())])
            self.pid = self.proc.pid

    # messages ------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        assert self.conn is not None
        if isinstance(msg, RunChunk):
            self._sent[msg.chunk_id] = msg.indices
            msg = wire_chunk(msg)
        try:
            send(self.conn, msg)
        except OSError:
            # Its end is closed (a broken pipe): it is exiting, as a recv() would have
            # seen. Its status must read as what it was, not as the kill we would add.
            self._closed_by_worker = True
            raise

    def recv(self) -> Message:
        """The next message (``Ready`` marks it ready); EOFError/OSError: it is gone."""
        assert self.conn is not None
        try:
            msg = recv(self.conn)
        except (EOFError, OSError):
            self._closed_by_worker = True
            raise
        if isinstance(msg, ChunkDone):
            indices = self._sent.pop(msg.chunk_id, None)
            if indices is None:
                raise RuntimeError(f"worker {self.pid} sent the result of chunk {msg.chunk_id}, "
                                   "which it was not sent")
            msg = msg._replace(result=full_result(msg.result, indices))
        elif isinstance(msg, Ready):
            self.ready = True
        elif isinstance(msg, Retiring):
            self.retiring = msg.reason
        return msg

    def current_row(self) -> tuple[int, float] | None:
        """(row index, start time) of the row the worker is running, None between rows."""
        if self._board is None:
            return None
        return running_row(self._board, self._sent.get)

    # one worker at a time ------------------------------------------------------------

    def await_ready(self, timeout: float | None,
                    cancelled: Callable[[], bool] | None = None) -> Ready | InitError | WorkerLost:
        """Wait for a starting worker's ``init``: ``Ready``, else it is killed (its
        ``InitError``, or why it never answered)."""
        msg = self._next_message(_deadline(timeout), cancelled)
        if isinstance(msg, Ready):
            return msg
        self.kill()  # after an init error it exits anyway
        assert isinstance(msg, (InitError, WorkerLost)), msg
        return msg

    def run_chunk(self, chunk_id: int, indices: Any, columns: dict[str, Any], *,
                  timeout: float | None = None, row_timeout: float | None = None,
                  cancelled: Callable[[], bool] | None = None) -> ChunkResult | WorkerLost:
        """Send one chunk and wait for its result; a death, a timeout (of the whole call,
        or of one row) or a cancel kills the worker instead."""
        deadline = _deadline(timeout)
        try:
            self.send(RunChunk("chunk", chunk_id, indices, columns))
        except OSError:
            return self._lost(cancelled)
        while True:
            msg = self._next_message(deadline, cancelled, row_timeout)
            if isinstance(msg, WorkerLost):
                return msg
            if isinstance(msg, ChunkDone) and msg.chunk_id == chunk_id:
                return msg.result

    def _next_message(self, deadline: float | None, cancelled: Callable[[], bool] | None,
                      row_timeout: float | None = None) -> Message | WorkerLost:
        assert self.conn is not None
        watch = cancelled is not None or bool(row_timeout)
        try:
            while True:
                tick = None if deadline is None else max(0.0, deadline - time.monotonic())
                if watch:
                    tick = POLL if tick is None else min(POLL, tick)
                if self.conn.poll(tick):
                    return self.recv()
                lost = self._overdue(deadline, cancelled, row_timeout)
                if lost is not None:
                    self.kill()  # also the processes a row started (its own process group)
                    return lost
        except (EOFError, OSError):
            return self._lost(cancelled)

    def _overdue(self, deadline: float | None, cancelled: Callable[[], bool] | None,
                 row_timeout: float | None) -> WorkerLost | None:
        if cancelled is not None and cancelled():
            return WorkerLost("canceled", "canceled")
        if deadline is not None and time.monotonic() >= deadline:
            return WorkerLost("timeout", "no answer in time")
        current = self.current_row() if row_timeout else None
        if row_timeout and current and time.time() - current[1] > row_timeout:
            return WorkerLost("row_timeout",
                              f"row {current[0]} exceeded row_timeout={row_timeout:g}s", current)
        return None

    def _lost(self, cancelled: Callable[[], bool] | None) -> WorkerLost:
        """The connection ended: the worker died (or a cancel killed it)."""
        current = self.current_row()
        self.kill()
        if cancelled is not None and cancelled():
            return WorkerLost("canceled", "canceled")
        return WorkerLost("died", describe_exit(self.exitcode), current)

    # ending ----------------------------------------------------------------------------

    def signal_kill(self) -> None:
        """SIGKILL the worker and every process it started, in any session.

        Its whole tree as ``/proc`` shows it (a row's child in a session of its
        own is not in the worker's process group), each stopped first so nothing
        forks away while we walk (~1 ms); then its process group. No waiting:
        safe on an event loop (a Dask worker's); :meth:`kill` also reaps.
        """
        if self.pid and not self.dead:
            kill_tree([self.pid])
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the worker and everything it started, then reap it.

        A worker that closed its connection (or said it retires) is exiting by
        itself: it gets a moment to (its keeper ends what it started first, ~1 ms),
        so its exit reads as what it was (a crash, a retirement), not as our kill.
        """
        ending = self.retiring is not None or self._closed_by_worker
        if ending and not self.dead and self._exited(0.5):
            return
        self.signal_kill()
        self.reap(timeout=5)

    def _exited(self, timeout: float) -> bool:
        """Whether it ended by itself within ``timeout`` (then it is marked dead)."""
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
            code = self.proc.returncode
            ended = code is not None
        else:
            ended, code = self._forked_exit(timeout)
        if not ended:
            return False
        self.dead, self.exitcode = True, code
        self.close()
        return True

    def reap(self, timeout: float = 0.5) -> int | None:
        """Mark dead and collect the exit status where this process can see it."""
        if self.dead:
            return self.exitcode
        self.dead = True
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.exitcode = self.proc.wait(timeout=timeout)
        else:
            _, self.exitcode = self._forked_exit(timeout)
        self.close()
        return self.exitcode

    def _forked_exit(self, timeout: float) -> tuple[bool, int | None]:
        """(ended, exit code) of a worker the template forked, within ``timeout``.

        Its template reports the code. A template that died reports nothing (its
        workers die with it and init reaps them), so whether one ended is read from
        ``/proc`` at once, not after the timeout, and its code is lost (None).
        """
        server = self._server
        code = server.exit_code(self.pid, timeout) if server is not None else None
        if code is not None or (server is not None and not server.dead):
            return code is not None, code
        deadline = time.monotonic() + timeout
        while pid_alive(self.pid, None) and time.monotonic() < deadline:
            time.sleep(0.005)
        return not pid_alive(self.pid, None), None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None
        if self._board is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._board.close()
            self._board = None
        if self._board_path:
            with contextlib.suppress(OSError):
                os.unlink(self._board_path)
            self._board_path = ""

    def stop(self) -> None:
        """Ask politely, then kill: used for idle workers only."""
        with contextlib.suppress(OSError, ValueError, AssertionError):
            self.send(Stop("stop"))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.01)
        self.kill()

    def alive(self) -> bool:
        """Running and reusable (a retiring worker is on its way out)."""
        return self.retiring is None and pid_alive(self.pid, self.proc)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def pid_alive(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie the fork server has not reaped yet still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ", 1)[1][:1] != b"Z"
    except OSError:
        return True
