"""The fork server (``start_method="forkserver"``): both halves of its protocol.

One warmed-up interpreter per owner process (numpy and the worker modules
imported once) forks each worker on request, so a cold start costs a fork, not
an interpreter. The owner talks to it over a socket pair::

    owner → server   board path (pickled) + the worker's end of its socket pair (SCM_RIGHTS)
    server → owner   FORKED  b"F" + pid              a worker was forked
                     EXITED  b"X" + pid + exit code  a worker ended

The workers are the server's children, not the owner's: the owner cannot wait
for them, so the server reports each exit status. :func:`serve_forks` is the
server's loop; :class:`ForkServerClient` (one per owner process, from
:func:`client`) is the owner's end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import threading
from multiprocessing.connection import Connection

# The worker program (and through it numpy): imported once here, in the fork
# server, so forked workers start warm. Not pandas: importing it first would
# delay the first workers by ~0.4 s, and a service that needs it imports it in
# each worker, on its own core.
from .child import serve
from .launch import launch

__all__ = ["EXITED", "FORKED", "ForkServerClient", "client", "close", "close_if_idle",
           "exit_code", "main", "serve_forks"]

#: A worker was forked: ``b"F"``, its pid.
FORKED = struct.Struct("<cq")
#: A worker ended: ``b"X"``, its pid, its exit code (negative: the signal that killed it).
EXITED = struct.Struct("<cqq")


# -- the server (its own process) ----------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="localbatch-forkserver")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--zygote", action="store_true")  # names it in process listings
    args = parser.parse_args(argv)
    serve_forks(Connection(args.fd), args.owner)
    os._exit(0)


def serve_forks(conn: Connection, owner: int) -> None:
    """Fork a worker per request until the owner closes its end; report their exits."""
    # Objects inherited by every fork stay out of the children's collections.
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=conn.fileno())
    # SIGCHLD wakes the select at once, so an owner waiting for an exit status
    # (after a kill) is answered in microseconds, not at the next poll.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    while True:
        _report_exits(sock)
        ready = select.select([sock, wake_r], [], [], 1.0)[0]
        if wake_r in ready:
            os.read(wake_r, 4096)
        if sock not in ready:
            continue
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 4096, 1)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            _forked_child(sock, fds[0], pickle.loads(msg), owner)
        os.close(fds[0])
        sock.sendall(FORKED.pack(b"F", pid))


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.sendall(EXITED.pack(b"X", pid, os.waitstatus_to_exitcode(status)))


def _forked_child(sock: socket.socket, fd: int, board_path: str, owner: int) -> None:
    sock.close()
    os.setsid()
    try:
        serve(Connection(fd), board_path, owner)
    finally:
        os._exit(0)


# -- the client (in the owner process) -----------------------------------------------


class ForkServerClient:
    """The owner's end: starts the fork server, asks it for workers, learns their exits."""

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        self.proc = launch(__name__, child.fileno(), ["--owner", str(os.getpid()), "--zygote"])
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
                if buf[:1] == b"F" and len(buf) >= FORKED.size:
                    _, pid = FORKED.unpack_from(buf)
                    self.forked.append(pid)
                    self.live.add(pid)
                    buf = buf[FORKED.size:]
                elif buf[:1] == b"X" and len(buf) >= EXITED.size:
                    _, pid, code = EXITED.unpack_from(buf)
                    self.exits[pid] = code
                    self.live.discard(pid)
                    buf = buf[EXITED.size:]
                else:
                    break
            self.cond.notify_all()
        return buf

    def fork(self, child_fd: int, board_path: str) -> int:
        """A new worker serving ``child_fd`` (its end of a socket pair); returns its pid."""
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


_CLIENT: ForkServerClient | None = None
_CLIENT_LOCK = threading.Lock()


def client() -> ForkServerClient:
    """This process's fork server, started on first use (and again if it died)."""
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None or not _CLIENT.alive():
            _CLIENT = ForkServerClient()
        return _CLIENT


def exit_code(pid: int, timeout: float) -> int | None:
    """Exit status of a forked worker, as the fork server reports it."""
    server = _CLIENT
    return server.exit_code(pid, timeout) if server is not None else None


def close_if_idle() -> None:
    """Stop the fork server once none of its workers is left (a running batch's keep it)."""
    global _CLIENT
    with _CLIENT_LOCK:
        server = _CLIENT
        if server is None:
            return
        with server.cond:
            # Exit reports trail the kills by a moment; give them a short while.
            server.cond.wait_for(lambda: not server.live, timeout=1.0)
            busy = bool(server.live)
        if not busy:
            server.close()
            _CLIENT = None


def close() -> None:
    """Stop the fork server (at exit)."""
    if _CLIENT is not None:
        _CLIENT.close()


def _forget_in_child() -> None:
    # A fork()ed child of the owner must not shut its parent's fork server down at
    # exit (shutdown() acts on the shared socket): it closes its copy, starts its own.
    global _CLIENT, _CLIENT_LOCK
    if _CLIENT is not None:
        _CLIENT.sock.close()
    _CLIENT, _CLIENT_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
