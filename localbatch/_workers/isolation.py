"""Row isolation in a worker: undo what a row did to its process, or retire the worker.

A worker runs thousands of rows of user code in one process. Anything a row
does to that process would otherwise reach every later row: a deleted working
folder, a closed fd 1, a signal handler, ``os.environ``, ``sys.path``, a thread
or a child process left running. A :class:`RowGuard` takes a *baseline* of the
process once ``init`` has run and puts the process back to it between rows:

- each row starts in an empty working folder of its own (one reused folder,
  emptied or made anew after a row that wrote to it or deleted it);
- cwd, fds 0-2, signal handlers, interval timers, the umask, ``os.environ``,
  ``sys.path`` and interpreter settings (recursion limit, switch interval, gc,
  trace and profile hooks) are restored; child processes a row leaves (in any session or
  process group: the worker is a child subreaper, so orphans come back to it)
  are killed;
- what cannot be undone (a non-daemon Python thread still running, changed
  user or group ids) makes the guard ask for *retirement*: the worker sends
  the chunk's results, says so, and exits while idle, so its owner replaces it
  and no row is charged an attempt;
- a row that leaves the worker unable to check or restore itself (its own fds
  closed, a failing check) kills the worker at once, so that row is charged as
  if it had crashed (``BROKEN_EXIT``) and the rest of its chunk runs elsewhere.

Cost. A full check takes ~15 us a row (syscalls; measured on a loaded 2-core
machine), 50 times a trivial row. So it runs per row only while the guard
*watches* (the first ``WATCH_ROWS`` rows of a worker, after a change was found,
or when the service declares artifacts); otherwise the fast loop checks per row
only what costs nothing: a flag raised by a ``sys.addaudithook`` hook when
Python code changes directory, writes a file, touches the environment, starts
a process or sets a trace hook, and by wrappers of the calls Python does not
audit (``signal.signal``, ``signal.alarm``, ``os.close``, ``os.dup2``,
``os.umask``, ``sys.setrecursionlimit``, ``gc.disable``...); the number of
Python threads, ``sys.path`` and ``sys.stdout`` (~0.1 us in all; whether the
row wrote to fd 1 or 2 is read off a map, ~25 ns: see :mod:`.capture`). A
raised flag runs the full check before the next row, and the full check runs
once per chunk anyway. A change only the full check
sees (C code calling ``chdir`` or ``dup2``) is undone at the end of that chunk,
and the guard watches every row again.

Also here: the Linux process controls of a worker (``prctl``), and the process
tree as ``/proc`` shows it, used to kill everything a worker started.
"""

from __future__ import annotations

import _signal
import contextlib
import ctypes
import functools
import gc
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["BROKEN_EXIT", "RETIRED_EXIT", "WATCH_ROWS", "RowGuard", "descendants", "kill_tree",
           "set_child_subreaper", "set_parent_death_signal"]

#: Rows checked one by one after a worker starts or after a change was found
#: (the environment variable is for tests of the fast loop).
WATCH_ROWS = int(os.environ.get("LOCALBATCH_WATCH_ROWS", "1000"))
#: Exit status of a worker that retired (see :class:`RowGuard`).
RETIRED_EXIT = 75
#: Exit status of a worker whose row closed or replaced one of its own fds (its
#: connection, its console capture): it dies at once, so the row is charged.
BROKEN_EXIT = 76
#: How long a thread a row left gets to finish before the worker retires.
THREAD_GRACE = 0.2

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: Audit events after which the fast loop runs the full check before the next row.
_EVENTS = frozenset({
    "open", "os.chdir", "os.putenv", "os.unsetenv", "os.mkdir", "os.rmdir", "os.remove",
    "os.rename", "os.symlink", "os.link", "os.truncate", "os.chmod", "shutil.rmtree",
    "shutil.move", "tempfile.mkdtemp", "subprocess.Popen", "os.fork", "os.forkpty",
    "os.posix_spawn", "os.spawn", "os.system", "os.exec", "os.startfile", "pty.spawn",
    "sys.settrace", "sys.setprofile"})
_PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn",
                             "os.spawn", "os.system", "pty.spawn"})
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
_SIGNALS = sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


class _Flags:
    """What the audit hook saw since the last check (one per process)."""

    dirty = False
    processes = False


_FLAGS = _Flags()
_HOOKED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in _EVENTS:
        if event == "open" and not (args[2] & _WRITE):
            return  # reading a file changes nothing
        _FLAGS.dirty = True
        if event in _PROCESS_EVENTS:
            _FLAGS.processes = True


#: Calls Python does not audit that change the process; wrapped in workers to raise the flag.
_WRAPPED = ((signal, ("signal", "alarm", "setitimer", "siginterrupt", "pthread_sigmask",
                      "set_wakeup_fd")),
            (os, ("close", "closerange", "dup2", "umask", "setsid", "setpgid", "chroot", "setuid",
                  "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid",
                  "setresgid", "setgroups")),
            (sys, ("setrecursionlimit", "setswitchinterval")), (gc, ("disable",)),
            (threading, ("settrace", "setprofile")))
_os_umask = os.umask


def _flagging(fn: Any) -> Any:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        _FLAGS.dirty = True
        return fn(*args, **kwargs)
    return call


def _install_audit_hook() -> None:
    """Once per process, in workers only (a hook cannot be removed again)."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        for module, names in _WRAPPED:
            for name in names:
                if hasattr(module, name):
                    setattr(module, name, _flagging(getattr(module, name)))
        _HOOKED = True


# -- the guard ---------------------------------------------------------------------


class RowGuard:
    """The baseline of a worker after ``init``, and the per-row restore to it."""

    def __init__(self, home: str, vital: tuple[int, ...] = ()) -> None:
        _install_audit_hook()
        self.home = home
        self.folder = os.path.join(home, "row")
        self._folders = 0
        #: Rows still to be checked one by one (see the module docstring).
        self.watch = WATCH_ROWS
        #: Why the worker must be replaced (set once; the owner retires it).
        self.retire: str | None = None
        self._env = dict(os.environ)
        self._env_data = dict(os.environ._data)  # type: ignore[attr-defined]  # noqa: SLF001
        self.path = list(sys.path)
        self._python = self._interpreter()
        self.threads = len(threading._active)  # noqa: SLF001 - a len(): ~50 ns
        self._thread_ids = set(threading._active)  # noqa: SLF001
        self._handlers = list(map(_signal.getsignal, _SIGNALS))
        self._umask = _umask()
        self._ids = _ids()
        # The open files behind fds 0-2, kept open under other numbers to put back.
        self._fds = {fd: os.dup(fd) for fd in (0, 1, 2)}
        self._fd_ids = {fd: _file_id(fd) for fd in (0, 1, 2)}
        #: The worker's own fds (its connection, the capture file): not to be restored.
        self._vital = {fd: _file_id(fd) for fd in vital}
        self._children = set(descendants(os.getpid()))
        self._make_folder()
        _FLAGS.dirty = _FLAGS.processes = False

    @property
    def flags(self) -> _Flags:
        return _FLAGS

    def enter(self) -> None:
        """Move into the row folder (made anew if a row deleted it)."""
        try:
            os.chdir(self.folder)
        except OSError:
            self._make_folder()
        _FLAGS.dirty = False  # our own chdir (called right after a check)

    def after_row(self, chunk: bool = False) -> str | None:
        """Undo what the last row changed; returns what was found (None: nothing).

        ``chunk``: the check at a chunk's end, which also looks for child processes
        and CPU-time timers whatever the flags say.
        """
        found = []
        try:
            if self._folder_used():
                self._make_folder(clean=True)
                found.append("its working folder")
            found += self._restore_process(chunk or _FLAGS.processes, chunk)
        except Exception:  # noqa: BLE001 - whatever it is, the worker cannot go on
            # The row left the worker in a state we cannot even inspect: die now,
            # while the board still names the row, so the death is charged to it.
            os._exit(BROKEN_EXIT)
        _FLAGS.dirty = _FLAGS.processes = False
        if found:
            self.watch = WATCH_ROWS
        return ", ".join(found) or None

    def after_chunk(self) -> str | None:
        """The full check between chunks (children too); back to the home folder."""
        found = self.after_row(chunk=True)
        try:
            os.chdir(self.home)
        except OSError:
            os.makedirs(self.home, exist_ok=True)
            os.chdir(self.home)
        if found:
            self.watch = WATCH_ROWS
        return found

    # the parts -----------------------------------------------------------------------

    def _make_folder(self, clean: bool = False) -> None:
        if clean:
            with contextlib.suppress(OSError):
                os.chdir(self.home)
            shutil.rmtree(self.folder, ignore_errors=True)
            if os.path.lexists(self.folder):  # a file it could not remove: start elsewhere
                self._folders += 1
                self.folder = os.path.join(self.home, f"row-{self._folders}")
        os.makedirs(self.folder, exist_ok=True)
        os.chdir(self.folder)

    def _folder_used(self) -> bool:
        try:
            if os.getcwd() != self.folder:
                return True
            with os.scandir(self.folder) as entries:
                return next(entries, None) is not None
        except OSError:
            return True  # deleted: the row's cwd or the folder itself

    def _restore_process(self, processes: bool, chunk: bool = False) -> list[str]:
        found = []
        if os.environ._data != self._env_data:  # type: ignore[attr-defined]  # noqa: SLF001
            os.environ.clear()
            os.environ.update(self._env)
            found.append("os.environ")
        if sys.path != self.path:
            sys.path[:] = self.path
            found.append("sys.path")
        if self._interpreter() != self._python:
            self._restore_interpreter()
            found.append("interpreter settings")
        # _signal's getsignal: signal's wrapper makes an enum of each (~0.8 us, not 0.05).
        if list(map(_signal.getsignal, _SIGNALS)) != self._handlers:
            self._restore_signals()
            found.append("signal handlers")
        # The real-time timer per row (signal.alarm() too), the CPU-time ones per chunk.
        for timer in _TIMERS if chunk else _TIMERS[:1]:
            if signal.getitimer(timer) != (0.0, 0.0):
                signal.setitimer(timer, 0)
                found.append("an interval timer")
        if _umask() != self._umask:
            _os_umask(self._umask)
            found.append("the umask")
        found += self._restore_fds()
        if _ids() != self._ids:
            self.retire = self.retire or "a row changed the worker's user or group ids"
            found.append("user or group ids")
        if processes and self._kill_children():
            found.append("child processes")
        if len(threading._active) != self.threads:  # noqa: SLF001
            found += self._check_threads()
        return found

    @staticmethod
    def _interpreter() -> tuple[Any, ...]:
        """Interpreter-wide settings a row can change with one call."""
        return (sys.getrecursionlimit(), sys.getswitchinterval(), gc.isenabled(),
                sys.gettrace(), sys.getprofile(), threading.gettrace(), threading.getprofile())

    def _restore_interpreter(self) -> None:
        limit, interval, gc_on, trace, profile, thread_trace, thread_profile = self._python
        sys.setrecursionlimit(limit)
        sys.setswitchinterval(interval)
        (gc.enable if gc_on else gc.disable)()
        sys.settrace(trace)
        sys.setprofile(profile)
        threading.settrace(thread_trace)  # type: ignore[arg-type]
        threading.setprofile(thread_profile)  # type: ignore[arg-type]

    def _restore_signals(self) -> None:
        for sig, handler in zip(_SIGNALS, self._handlers, strict=True):
            if handler is not None and _signal.getsignal(sig) is not handler:
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(sig, handler)

    def _restore_fds(self) -> list[str]:
        for fd, ident in self._vital.items():
            if _file_id(fd) != ident:
                # A connection cannot be put back: die now, while the board still
                # names this row, so the death is charged to it (not to the chunk).
                os._exit(BROKEN_EXIT)
        found = []
        for fd, saved in self._fds.items():
            if _file_id(fd) != self._fd_ids[fd]:
                os.dup2(saved, fd)
                found.append(f"fd {fd}")
        return found

    def _kill_children(self) -> bool:
        """Kill the processes the row left running (whatever their session).

        Processes running since ``init`` (a helper it started) and theirs are kept.
        """
        extra = descendants(os.getpid(), keep=self._children)
        if not extra:
            return False
        kill_tree(extra)
        _reap(extra)
        return True

    def _check_threads(self) -> list[str]:
        """Threads a row left: a moment to finish, else a non-daemon one retires the worker.

        A daemon thread left running (a library's helper) is kept: it cannot keep
        the worker from exiting, and it dies with it.
        """
        deadline = time.monotonic() + THREAD_GRACE
        for thread in threading.enumerate():
            if thread.ident not in self._thread_ids and not thread.daemon:
                thread.join(max(0.0, deadline - time.monotonic()))
        left = [t for t in threading.enumerate()
                if t.ident not in self._thread_ids and not t.daemon]
        if left:
            names = ", ".join(t.name for t in left[:3])
            self.retire = self.retire or (f"a row left {len(left)} non-daemon thread(s) "
                                          f"running ({names})")
        # The threads now running are the baseline (daemons kept; a non-daemon one has
        # already retired the worker): later rows are not checked against them again.
        self._thread_ids = set(threading._active)  # noqa: SLF001
        self.threads = len(self._thread_ids)
        return ["threads"] if left else []

def _file_id(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None  # closed
    return st.st_dev, st.st_ino


def _ids() -> tuple[Any, ...]:
    return os.getresuid(), os.getresgid(), os.getgroups()


def _umask() -> int:
    mask = _os_umask(0o22)
    _os_umask(mask)
    return mask


def _reap(pids: Iterable[int]) -> None:
    """Collect the exit status of killed children (orphans reparented to us too)."""
    deadline = time.monotonic() + 1.0
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break  # not our child (a grandchild), or reaped already
            if done:
                break
            time.sleep(0.001)


# -- the process tree (Linux /proc) ------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (each thread keeps the list of those it started)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                found += [int(p) for p in fh.read().split()]
        except OSError:
            continue
    return found


def descendants(pid: int, keep: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Every process below ``pid``, parents before their children (not those in
    ``keep``, nor anything below them)."""
    out: list[int] = []
    todo = [p for p in children(pid) if p not in keep]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def kill_tree(roots: Iterable[int]) -> list[int]:
    """SIGKILL processes and everything below them; returns the pids signalled.

    Each is stopped first and the tree walked again until nothing new appears,
    so a process forking while we walk cannot leave a child behind.
    """
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGSTOP)
        seen.append(pid)
        todo += children(pid)
    for pid in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return seen


# -- prctl -------------------------------------------------------------------------


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """The kernel sends ``sig`` to this process when the thread that started it ends.

    Works even while a row holds the GIL (no thread of ours has to run).
    """
    return _prctl(_PR_SET_PDEATHSIG, int(sig))


def set_child_subreaper() -> bool:
    """Orphaned descendants (a row's daemonised grandchild) are reparented to us."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)
