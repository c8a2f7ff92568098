"""Parent side of worker processes: starting them, watching them, warm pools.

Two start methods, both giving fresh interpreters that never import the
caller's ``__main__`` (so a guard-less script works):

- ``spawn``: ``python -m localbatch._workers.runtime`` per worker;
- ``forkserver``: one zygote interpreter per owner process, with numpy and
  pandas imported once, forks each worker (fast cold starts).

Workers of one service revision stay alive between batches and ``consume``
calls of this process (idle timeout ~60 s). A batch *leases* them, so a cancel
or timeout kill never touches another batch's rows.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .runtime import BOARD_BYTES, BOARD_HEAD, running_row

__all__ = ["WORKER_POOL", "START_METHODS", "WorkerPool", "WorkerProcess", "describe_exit"]

START_METHODS = ("spawn", "forkserver")
# A fresh interpreter running localbatch's worker module; never the caller's __main__.
# (-c rather than -m: the package __init__ already imports _worker.)
_WORKER_CMD = [sys.executable, "-c", "import sys; from localbatch._workers.runtime import main; "
               "main(sys.argv[1:])"]
IDLE_TIMEOUT = float(os.environ.get("LOCALBATCH_IDLE_TIMEOUT", "60"))


def _scratch() -> str:
    global _SCRATCH
    if _SCRATCH is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _SCRATCH = tempfile.mkdtemp(prefix="localbatch-boards-", dir=base)
    return _SCRATCH


_SCRATCH: str | None = None


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # Workers import what the caller can import (modules next to its script, say).
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker died (exit status unknown)"
    if code < 0:
        sig = -code
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = " (possibly out of memory)" if sig == signal.SIGKILL else ""
        return f"worker died: signal {sig} {name}{hint}"
    return f"worker died: exit code {code}"


class _Zygote:
    """The forkserver: forks workers from a warm interpreter and reports their exits."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        self.proc = subprocess.Popen(
            [*_WORKER_CMD, "--fd", str(child.fileno()), "--owner", str(os.getpid()),
             "--zygote"],
            pass_fds=[child.fileno()], env=_worker_env(), start_new_session=True,
            stdin=subprocess.DEVNULL)
        child.close()
        self.sock = parent
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.forked: list[int] = []
        #: Workers forked and not yet reported ended.
        self.live: set[int] = set()
        self.exits: dict[int, int] = {}
        threading.Thread(target=self._read, daemon=True, name="localbatch-zygote").start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                more = self.sock.recv(4096)
            except OSError:
                more = b""
            if not more:
                with self.cond:
                    self.forked.append(-1)
                    self.cond.notify_all()
                return
            buf += more
            buf = self._parse(buf)

    def _parse(self, buf: bytes) -> bytes:
        with self.cond:
            while buf:
                if buf[:1] == b"F" and len(buf) >= 9:
                    pid = struct.unpack_from("<q", buf, 1)[0]
                    self.forked.append(pid)
                    self.live.add(pid)
                    buf = buf[9:]
                elif buf[:1] == b"X" and len(buf) >= 17:
                    pid, code = struct.unpack_from("<qq", buf, 1)
                    self.exits[pid] = code
                    self.live.discard(pid)
                    buf = buf[17:]
                else:
                    break
            self.cond.notify_all()
        return buf

    def fork(self, child_fd: int, board_path: str) -> int:
        with self.lock:
            socket.send_fds(self.sock, [pickle.dumps(board_path)], [child_fd])
            with self.cond:
                self.cond.wait_for(lambda: bool(self.forked), timeout=30)
                pid = self.forked.pop(0) if self.forked else -1
        if pid < 0:
            raise OSError("the localbatch fork server is not answering")
        return pid

    def exit_code(self, pid: int, timeout: float) -> int | None:
        with self.cond:
            self.cond.wait_for(lambda: pid in self.exits, timeout=timeout)
            return self.exits.pop(pid, None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)


_ZYGOTE: _Zygote | None = None
_ZYGOTE_LOCK = threading.Lock()


def _zygote() -> _Zygote:
    global _ZYGOTE
    with _ZYGOTE_LOCK:
        if _ZYGOTE is None or not _ZYGOTE.alive():
            _ZYGOTE = _Zygote()
        return _ZYGOTE


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
    _board_path: str = ""
    _board: Any = None
    #: Row indices of each chunk sent and not yet answered, by chunk id.
    _sent: dict[int, Any] = field(default_factory=dict)

    def start(self, load: dict[str, Any], limits: dict[str, int] | None) -> None:
        fd, self._board_path = tempfile.mkstemp(prefix="board-", dir=_scratch())
        try:
            os.ftruncate(fd, BOARD_BYTES)  # sparse: a chunk touches only its rows' pages
            os.write(fd, BOARD_HEAD.pack(-1))
        finally:
            os.close(fd)
        import mmap

        with open(self._board_path, "r+b") as fh:
            self._board = mmap.mmap(fh.fileno(), BOARD_BYTES)
        parent, child = socket.socketpair()
        try:
            if self.start_method == "forkserver":
                self.pid = _zygote().fork(child.fileno(), self._board_path)
            else:
                self.proc = subprocess.Popen(
                    [*_WORKER_CMD, "--fd", str(child.fileno()), "--board", self._board_path,
                     "--owner", str(os.getpid())],
                    pass_fds=[child.fileno()], env=_worker_env(), start_new_session=True,
                    stdin=subprocess.DEVNULL)
                self.pid = self.proc.pid
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        try:
            self.send(("load", load, limits))
        except OSError:
            pass  # it died already: the supervisor sees the closed connection next poll

    def send(self, msg: Any) -> None:
        assert self.conn is not None
        if msg[0] == "chunk":
            self._sent[msg[1]] = msg[2]
        self.conn.send_bytes(pickle.dumps(msg, protocol=5))

    def recv(self) -> Any:
        assert self.conn is not None
        msg = pickle.loads(self.conn.recv_bytes())
        if msg[0] == "result":
            self._sent.pop(msg[1], None)
        return msg

    def current_row(self) -> tuple[int, float] | None:
        """(row index, start time) of the row the worker is running, None between rows."""
        if self._board is None:
            return None
        return running_row(self._board, self._sent.get)

    def kill(self) -> None:
        """SIGKILL the worker and every process it started (its own process group)."""
        if self.pid and not self.dead:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
        self.reap(timeout=5)

    def reap(self, timeout: float = 0.5) -> int | None:
        """Mark dead and collect the exit status where this process can see it."""
        if self.dead:
            return self.exitcode
        self.dead = True
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.exitcode = self.proc.wait(timeout=timeout)
        else:
            self.exitcode = _wait_foreign(self.pid, timeout)
        self.close()
        return self.exitcode

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
            self.send(("stop",))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and _pid_alive(self.pid, self.proc):
            time.sleep(0.01)
        self.kill()


def _pid_alive(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie the zygote has not reaped yet still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ", 1)[1][:1] != b"Z"
    except OSError:
        return True


def _wait_foreign(pid: int, timeout: float) -> int | None:
    """Exit status of a zygote child, as the zygote reports it."""
    zygote = _ZYGOTE
    return zygote.exit_code(pid, timeout) if zygote is not None else None


class WorkerPool:
    """Warm, initialised workers per service revision, leased to one user at a time."""

    def __init__(self) -> None:
        self._idle: dict[tuple[Any, ...], list[WorkerProcess]] = {}
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._closed = False

    def take_idle(self, key: tuple[Any, ...], n: int) -> list[WorkerProcess]:
        with self._lock:
            idle = self._idle.get(key, [])
            taken, self._idle[key] = idle[:n], idle[n:]
        alive = []
        for w in taken:
            # A ready idle worker has nothing to say; one still starting may have
            # its "ready" waiting to be read.
            if _pid_alive(w.pid, w.proc) and w.conn is not None and not (
                    w.ready and _readable(w.conn)):
                alive.append(w)
            else:
                w.kill()
        return alive

    def prestart(self, key: tuple[Any, ...], n: int, start_method: str,
                 limits: dict[str, int]) -> None:
        """Start workers so that ``n`` are idle or starting for ``key`` (kept like idle ones)."""
        missing = n - self.idle_count(key)
        if missing <= 0 or self._closed:
            return
        workers = []
        for _ in range(missing):
            w = WorkerProcess(key, start_method)
            w.start({"path": key[0]}, limits or None)
            workers.append(w)
        self.give_back(workers)

    def give_back(self, workers: list[WorkerProcess]) -> None:
        now = time.monotonic()
        keep = []
        for w in workers:
            # A worker still starting is kept too: the next batch would only start
            # another one (small batches often end before a second worker is up).
            if w.dead or w.conn is None or self._closed:
                w.kill()
            else:
                w.idle_since = now
                keep.append(w)
        with self._lock:
            for w in keep:
                self._idle.setdefault(w.key, []).append(w)
        self._ensure_reaper()

    def _ensure_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap_loop, daemon=True,
                                            name="localbatch-pool-reaper")
            self._reaper.start()

    def _reap_loop(self) -> None:
        while not self._closed:
            time.sleep(min(1.0, IDLE_TIMEOUT / 4))
            self.reap_idle(IDLE_TIMEOUT)

    def reap_idle(self, older_than: float) -> None:
        now = time.monotonic()
        stale = []
        with self._lock:
            for key, idle in self._idle.items():
                stale += [w for w in idle if now - w.idle_since >= older_than]
                self._idle[key] = [w for w in idle if now - w.idle_since < older_than]
        for w in stale:
            w.stop()

    def idle_count(self, key: tuple[Any, ...] | None = None) -> int:
        with self._lock:
            if key is not None:
                return len(self._idle.get(key, []))
            return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Stop every idle worker (at exit, or when a client closes).

        The fork server goes too once none of its workers is left (a running
        batch's workers keep it).
        """
        self.reap_idle(-1.0)
        _close_zygote_if_idle()


def _close_zygote_if_idle() -> None:
    global _ZYGOTE
    with _ZYGOTE_LOCK:
        zygote = _ZYGOTE
        if zygote is None:
            return
        with zygote.cond:
            # Exit reports trail the kills by a moment; give them a short while.
            zygote.cond.wait_for(lambda: not zygote.live, timeout=1.0)
            busy = bool(zygote.live)
        if not busy:
            zygote.close()
            _ZYGOTE = None


def _readable(conn: Connection) -> bool:
    """An idle worker with something to read has died (EOF) or is confused."""
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError):
        return True


WORKER_POOL = WorkerPool()


@atexit.register
def _close_all() -> None:
    WORKER_POOL._closed = True
    WORKER_POOL.close()
    if _ZYGOTE is not None:
        _ZYGOTE.close()
    if _SCRATCH is not None:
        import shutil

        shutil.rmtree(_SCRATCH, ignore_errors=True)
