"""The warm template (``start_method="forkserver"``): both halves of its protocol.

One fresh interpreter per owner process (numpy and the worker modules imported
once, never the owner's ``__main__``) forks each worker on request. Before it
forks a worker of a service it *preloads* that service (:func:`.loading.preload`:
blobs read and verified, code and models unpickled, what they import imported;
no ``init``), so a worker costs a fork plus its ``init``, not an interpreter
start, imports and an unpickle each. One template serves every service of the
owner (same interpreter, same libraries); it keeps the last
:data:`~.loading.PRELOAD_SERVICES` loaded. The owner talks to it over a
``SOCK_SEQPACKET`` pair (message boundaries kept)::

    owner → server   ("preload", spec)                           load a service ahead of need
                     ("ping",)                                   answered once all before it are
                     ("fork", board path, environment) + the worker's socket (SCM_RIGHTS)
    server → owner   FORKED  b"F" + pid              a worker was forked
                     EXITED  b"X" + pid + exit code  a worker ended
                     PONG    b"P"                    the ping's answer

Messages are served in order, so a fork asked for after a preload forks a
template that holds the service. A fork carries the owner's environment as it
is now (what a spawned worker would get), which the worker takes on, and the
import paths it names. The template never forks while it runs a
second thread (a fork copies one thread and whatever locks the others hold): a
preload that leaves one running (a library that starts a pool at import) makes
it forget that service and re-execute itself, and workers of that service load
it after the fork, as spawned ones do.

The workers are the server's children, not the owner's: the owner cannot wait
for them, so the server reports each exit status. The server dies with its
owner (``PR_SET_PDEATHSIG``, and the socket's end), and its workers die with it
(their keepers' parent-death signal: :mod:`.keeper`), so a server killed from
outside costs each of its workers the row it was running, as any worker crash
does; the owner reads their end from ``/proc`` (no report can come), and the next
fork starts a new server. :func:`serve_forks` is the server's loop;
:class:`ForkServerClient` (one per owner process, from :func:`client`) is the
owner's end.
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
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

# The worker program (and through it numpy): imported once here, in the fork
# server, so forked workers start warm. What a service needs beyond that
# (pandas, statsmodels) is imported by its preload.
from .child import serve
from .launch import launch, set_parent_death_signal, worker_env
from .loading import forget_preloaded, preload, preloaded

__all__ = ["EXITED", "FORKED", "ForkServerClient", "client", "close", "close_if_idle", "main",
           "serve_forks"]

#: A worker was forked: ``b"F"``, its pid.
FORKED = struct.Struct("<cq")
#: A worker ended: ``b"X"``, its pid, its exit code (negative: the signal that killed it).
EXITED = struct.Struct("<cqq")
#: Everything asked before the ping is done.
PONG = b"P"
#: Room for one request (a pickled spec); the replies are fixed-size.
MESSAGE_BYTES = 1 << 16
#: The longest a fork may wait for the template to load the service (the default
#: init_timeout: loading is the part of init that moved into the template).
FORK_TIMEOUT = 300.0


# -- the server (its own process) ----------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="localbatch-forkserver")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--owner", type=int, required=True)
    parser.add_argument("--zygote", action="store_true")  # names it in process listings
    parser.add_argument("--no-preload", action="append", default=[])
    args = parser.parse_args(argv)
    set_parent_death_signal(args.owner)
    serve_forks(Connection(args.fd), args.owner, set(args.no_preload))
    os._exit(0)


def serve_forks(conn: Connection, owner: int, no_preload: set[str] | None = None) -> None:
    """Fork a worker per request until the owner closes its end; report their exits."""
    # Objects inherited by every fork stay out of the children's collections.
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=conn.fileno())
    skip = set(no_preload or ())
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
            msg, fds, _, _ = socket.recv_fds(sock, MESSAGE_BYTES, 1)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        request = pickle.loads(msg)
        if request[0] == "preload":
            _preload(request[1], skip, sock, owner)
            continue
        if request[0] == "ping":
            sock.sendall(PONG)
            continue
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            _forked_child(sock, fds[0], request[1], request[2], owner)
        os.close(fds[0])
        sock.sendall(FORKED.pack(b"F", pid))


def _preload(spec: dict[str, Any], skip: set[str], sock: socket.socket, owner: int) -> None:
    """Load a service into the template, unless it is known to start threads."""
    path = spec.get("path")
    if path in skip or path is None:
        return
    fresh = not preloaded(path)
    try:
        preload(spec)
    except BaseException:  # noqa: B036 - the worker's own load reports it as an init error
        forget_preloaded(path)
        return
    if _threads() > 1:
        # Forking now would copy one thread of several: start afresh without it.
        _reexec(sock, owner, skip | {path})
    if fresh:
        gc.freeze()  # the service's objects too: forked workers share their pages


#: Native threads known to survive a fork in the parent only, harmlessly: jemalloc's
#: background purger (pyarrow, imported by pandas) re-arms through its atfork handlers.
FORK_SAFE_THREADS = frozenset({"jemalloc_bg_thd"})


def _threads() -> int:
    """Threads of this process that make a fork unsafe (all but the main thread and
    the known fork-safe native ones)."""
    try:
        tasks = [t for t in os.listdir("/proc/self/task") if int(t) != os.getpid()]
    except OSError:
        return threading.active_count()
    unsafe = 0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            continue  # it ended
        unsafe += name not in FORK_SAFE_THREADS
    return 1 + max(unsafe, threading.active_count() - 1)


def _reexec(sock: socket.socket, owner: int, skip: set[str]) -> None:
    """Replace this process by a fresh template (same pid: forked workers stay its children)."""
    fd = sock.detach()
    os.set_inheritable(fd, True)
    args = [sys.executable, "-c", f"import sys; from {__name__} import main; main(sys.argv[1:])",
            "--fd", str(fd), "--owner", str(owner), "--zygote"]
    for path in sorted(skip):
        args += ["--no-preload", path]
    os.execv(sys.executable, args)


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.sendall(EXITED.pack(b"X", pid, os.waitstatus_to_exitcode(status)))


def _forked_child(sock: socket.socket, fd: int, board_path: str, env: dict[str, str],
                  owner: int) -> None:
    sock.close()
    os.setsid()
    # The owner's environment now, not the template's at its start (a test that
    # sets a variable expects its workers to see it, as spawned ones would).
    os.environ.clear()
    os.environ.update(env)
    sys.path.extend(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                    if p and p not in sys.path)
    try:
        serve(Connection(fd), board_path, owner)
    finally:
        os._exit(0)


# -- the client (in the owner process) -----------------------------------------------


class ForkServerClient:
    """The owner's end: starts the fork server, asks it for workers, learns their exits."""

    def __init__(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = ["--owner", str(os.getpid()), "--zygote"]
        for path in sorted(_NO_PRELOAD):
            args += ["--no-preload", path]
        self.proc = launch(__name__, child.fileno(), args)
        child.close()
        self.sock = parent
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.forked: list[int] = []
        #: Workers forked and not yet reported ended.
        self.live: set[int] = set()
        self.exits: dict[int, int] = {}
        #: The last service asked to be preloaded and not yet known loaded (a later
        #: answer says so: requests are served in order): blamed if the server dies.
        self.loading: str | None = None
        self.pongs = 0
        self.dead = False
        threading.Thread(target=self._read, daemon=True, name="localbatch-zygote").start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                more = self.sock.recv(4096)
            except OSError:
                more = b""
            if not more:
                code = None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = self.proc.wait(timeout=1)
                if self.loading is not None and code not in (None, 0):
                    _NO_PRELOAD.add(self.loading)  # it died loading that: never again
                with self.cond:
                    self.dead = True
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
                elif buf[:1] == PONG:
                    self.pongs += 1
                    buf = buf[1:]
                elif buf[:1] == b"X" and len(buf) >= EXITED.size:
                    _, pid, code = EXITED.unpack_from(buf)
                    self.exits[pid] = code
                    self.live.discard(pid)
                    buf = buf[EXITED.size:]
                else:
                    break
            self.cond.notify_all()
        return buf

    def preload(self, spec: dict[str, Any]) -> None:
        """Have the template load a service now (no answer: later forks wait for it)."""
        path = spec.get("path")
        if path is None or path in _NO_PRELOAD:
            return
        with self.lock:
            self.loading = path
            with contextlib.suppress(OSError):
                self.sock.sendall(pickle.dumps(("preload", {"path": path})))

    def wait_loaded(self, timeout: float) -> None:
        """Return once the template has done what it was asked (its preloads); a
        template that takes longer is abandoned (OSError)."""
        with self.lock:
            with self.cond:
                seen = self.pongs
            try:
                self.sock.sendall(pickle.dumps(("ping",)))
            except OSError:
                self.abandon()
                raise
            with self.cond:
                done = self.cond.wait_for(lambda: self.pongs > seen or self.dead, timeout)
                done = done and not self.dead
            if done:
                self.loading = None  # loaded: a later death is not that service's doing
        if not done:
            self.abandon()
            raise OSError("the localbatch template did not load the service in time")

    def fork(self, child_fd: int, board_path: str) -> int:
        """A new worker serving ``child_fd`` (its end of a socket pair); returns its pid."""
        with self.lock:
            request = pickle.dumps(("fork", board_path, worker_env()))
            socket.send_fds(self.sock, [request], [child_fd])
            with self.cond:
                # The template may be loading the service first (a big model: minutes).
                self.cond.wait_for(lambda: bool(self.forked), timeout=FORK_TIMEOUT)
                pid = self.forked.pop(0) if self.forked else -1
            if pid >= 0:
                self.loading = None  # what it preloaded before this fork is loaded
        if pid < 0:
            dead = self.dead
            self.abandon()
            raise OSError("the localbatch template died" if dead
                          else "the localbatch template is not answering")
        return pid

    def abandon(self) -> None:
        """Kill a hung (or dead) template; the next one does not preload what it was
        loading. Its workers stay until their owner lets them go."""
        if self.loading is not None:
            _NO_PRELOAD.add(self.loading)
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.sock.close()

    def exit_code(self, pid: int, timeout: float) -> int | None:
        """The exit code reported for a worker it forked, waiting up to ``timeout``;
        None if none came (a dead server reports nothing more: None at once)."""
        with self.cond:
            self.cond.wait_for(lambda: pid in self.exits or self.dead, timeout=timeout)
            return self.exits.pop(pid, None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            self.proc.wait(timeout=0.05)  # an idle template exits at once on the EOF
        except subprocess.TimeoutExpired:
            # Busy loading a service nobody will use now (a CLI command that looked a
            # service up, a script that only deployed): nothing in it to keep, and
            # the exit of this process must not wait for it.
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)


_CLIENT: ForkServerClient | None = None
_CLIENT_LOCK = threading.Lock()
#: Services whose preload killed a template: their workers load after the fork.
_NO_PRELOAD: set[str] = set()


def client() -> ForkServerClient:
    """This process's fork server, started on first use (and again if it died)."""
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is not None and not _CLIENT.alive():
            _CLIENT.close()  # killed (the OOM killer, a user): its socket goes with it
            _CLIENT = None
        if _CLIENT is None:
            _CLIENT = ForkServerClient()
        return _CLIENT


def close_if_idle() -> None:
    """Stop the fork server once none of its workers is left (a running batch's keep it)."""
    global _CLIENT
    with _CLIENT_LOCK:
        server = _CLIENT
        if server is None:
            return
        with server.cond:
            # Exit reports trail the kills by a moment; give them a short while.
            # A dead server reports no more: its orphans are not its to wait for.
            server.cond.wait_for(lambda: not server.live or server.dead, timeout=1.0)
            busy = bool(server.live) and not server.dead
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
