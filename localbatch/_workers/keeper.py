"""The keeper: a worker's parent, so that everything a row started dies with the owner.

The kernel can kill a worker the moment its owner dies (``PR_SET_PDEATHSIG``),
even while a row holds the GIL; but it kills that one process. A child a row
started in a session of its own (``Popen(..., start_new_session=True)``) is in
no process group of ours, and once the worker is dead its orphans belong to
init. So each worker process splits in two right after it starts::

    owner ─► keeper (child subreaper; runs no user code) ─► worker ─► rows' children ...

- The keeper gets ``SIGTERM`` when its parent (the owner, or the owner's fork
  server) dies, and kills its whole tree: the worker and everything below it,
  orphans included (as a subreaper, orphans of the tree are reparented to it).
  It runs no user code, so its handler runs within milliseconds.
- The worker gets ``SIGKILL`` when the keeper dies (so killing the keeper is
  killing the worker too), and checks it was not orphaned before that was set.
- When the worker exits, the keeper kills what is left below it and exits with
  the worker's status (a signal is raised again), so the owner, which only
  knows the keeper's pid, reads the worker's exit as before.

Measured: the split costs one fork (~1-3 ms per worker start, pages shared).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import NoReturn

from .isolation import descendants, kill_tree, set_child_subreaper, set_parent_death_signal

__all__ = ["ORPHANED_EXIT", "process_exists", "split"]

#: Exit status of a keeper or worker whose owner died.
ORPHANED_EXIT = 70


def split(owner: int, close: Callable[[], None]) -> None:
    """Fork: this process becomes the keeper (never returns), the child returns as the
    worker. ``close`` releases in the keeper what only the worker may hold (its
    connection: the owner must see it close when the worker dies)."""
    signal.signal(signal.SIGTERM, _on_parent_death)
    _die_with_parent(signal.SIGTERM, lambda: process_exists(owner))
    keeper = os.getpid()
    worker = os.fork()
    if worker:
        close()
        _keep(worker)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(signal.SIGKILL, lambda: os.getppid() == keeper)


def _die_with_parent(sig: int, still_ok: Callable[[], bool]) -> None:
    """The kernel sends ``sig`` when our parent dies; a parent that died before that
    was set is seen by ``still_ok`` (read after it)."""
    parent = os.getppid()
    set_parent_death_signal(sig)
    if os.getppid() != parent or not still_ok():
        os._exit(ORPHANED_EXIT)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _keep(worker: int) -> NoReturn:
    """The keeper's life: wait for the worker, reaping orphans; end the tree with it."""
    set_child_subreaper()
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == worker:
            _end_tree()
            _exit_like(status)


def _on_parent_death(signum: int, frame: object) -> None:
    _end_tree()
    os._exit(ORPHANED_EXIT)


def _end_tree() -> None:
    """Kill everything below the keeper and collect it."""
    kill_tree(descendants(os.getpid()))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.002)  # killed, not yet collected (orphans come to us too)


def _exit_like(status: int) -> NoReturn:
    """Exit as the worker did: its exit code, or the signal that killed it."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)
