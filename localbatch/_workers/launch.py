"""Starting a localbatch interpreter: its command line, its environment, its parent.

Both kinds of process localbatch starts, a worker (:mod:`.child`) and the fork
server (:mod:`.zygote`), are fresh interpreters that never import the caller's
``__main__`` (so a guard-less script works), each in a session of its own (so
a kill of its process group takes down whatever a row started too).

They are started from one long-lived thread of the owner (the *launcher*), never
from the thread that asks: Linux delivers a child's parent-death signal
(``PR_SET_PDEATHSIG``) when the *thread* that forked it ends, and a batch's
supervisor thread ends with its batch while its workers stay warm for the next.
The launcher lives as long as the process, so the signal means "the owner died".
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["launch", "set_parent_death_signal", "worker_env"]

#: ``prctl`` option: the signal a process gets when its parent (thread) ends.
PR_SET_PDEATHSIG = 1


def launch(module: str, fd: int, args: list[str]) -> subprocess.Popen[bytes]:
    """Run ``module.main([--fd FD, *args])`` in a fresh interpreter that inherits ``fd``.

    ``-c`` with an import rather than ``-m``: the module then runs under its own
    name, not as a second copy named ``__main__``.
    """
    command = [sys.executable, "-c", f"import sys; from {module} import main; "
               "main(sys.argv[1:])", "--fd", str(fd), *args]
    return _on_launcher(lambda: subprocess.Popen(
        command, pass_fds=[fd], env=worker_env(), start_new_session=True,
        stdin=subprocess.DEVNULL))


def set_parent_death_signal(owner: int) -> None:
    """In a started process: die (SIGKILL) when the owner does; exit now if it already has.

    Linux only (elsewhere the owner watch of :mod:`.child` and the closed socket do it).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != owner:  # it died before the prctl: the signal will never come
        os._exit(70)


_REQUESTS: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]] = \
    queue.SimpleQueue()
_LAUNCHER: threading.Thread | None = None
_LAUNCHER_LOCK = threading.Lock()


def _on_launcher(start: Callable[[], Any]) -> Any:
    """Run ``start`` on the launcher thread (started once per process) and return its result."""
    global _LAUNCHER
    with _LAUNCHER_LOCK:
        if _LAUNCHER is None or not _LAUNCHER.is_alive() or _LAUNCHER.ident is None:
            _LAUNCHER = threading.Thread(target=_serve, name="localbatch-launcher", daemon=True)
            _LAUNCHER.start()
    answer: queue.SimpleQueue[Any] = queue.SimpleQueue()
    _REQUESTS.put((start, answer))
    ok, value = answer.get()
    if not ok:
        raise value
    return value


def _serve() -> None:
    while True:
        start, answer = _REQUESTS.get()
        try:
            answer.put((True, start()))
        except BaseException as exc:  # noqa: B036 - handed to the caller
            answer.put((False, exc))


def _forget_launcher() -> None:
    """A forked child has no launcher thread (only the forking thread survives a fork)."""
    global _LAUNCHER, _REQUESTS
    _LAUNCHER = None
    _REQUESTS = queue.SimpleQueue()


os.register_at_fork(after_in_child=_forget_launcher)


def worker_env() -> dict[str, str]:
    """The environment of a worker started now (forked ones take it on too)."""
    env = dict(os.environ)
    # Workers import what the caller can import (modules next to its script, say).
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    return env
