"""Warm workers: initialised worker processes kept per service revision.

Workers of one service revision stay alive between batches and ``consume``
calls of this process (idle timeout ~60 s). A batch *leases* them, so a cancel
or timeout kill never touches another batch's rows. At exit every idle worker
is stopped, then the fork server, then the boards' folder is removed.
"""

from __future__ import annotations

import atexit
import os
import select
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from . import zygote
from .process import WorkerProcess, remove_scratch

__all__ = ["WORKER_POOL", "WorkerPool"]

IDLE_TIMEOUT = float(os.environ.get("LOCALBATCH_IDLE_TIMEOUT", "60"))


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
            if w.alive() and w.conn is not None and not (w.ready and _readable(w.conn)):
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
        zygote.close_if_idle()

    def shut_down(self) -> None:
        """Close for good: workers handed back from now on are killed (at exit)."""
        self._closed = True
        self.close()


def _readable(conn: Connection) -> bool:
    """An idle worker with something to read has died (EOF) or is confused."""
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError):
        return True


WORKER_POOL = WorkerPool()


@atexit.register
def _close_all() -> None:
    WORKER_POOL.shut_down()
    zygote.close()
    remove_scratch()


def _forget_in_child() -> None:
    # A fork()ed child of the owner does not own its parent's workers: its exit must
    # not stop them (its copies of their sockets are just closed).
    for workers in WORKER_POOL._idle.values():  # noqa: SLF001
        for w in workers:
            if w.conn is not None:
                w.conn.close()
    WORKER_POOL.__init__()  # type: ignore[misc]


os.register_at_fork(after_in_child=_forget_in_child)
