"""Warm workers: initialised worker processes kept per service revision.

Workers of one service revision stay alive between batches and ``consume``
calls of this process (idle timeout ~60 s). A batch *leases* them, so a cancel
or timeout kill never touches another batch's rows. At exit every idle worker
is stopped, then the fork server, then the boards' folder is removed.

The number of idle workers is bounded however many services a process deploys
(a test suite deploys one per test): at most :data:`MAX_IDLE` (one per core: each
is two processes, the worker and its keeper), or as many as the protected services
keep, whichever is more; the least recently used ones of other services go
first. Protected: the service handed back last, and the one before it when it is
used in turn (handed back more than once; a test suite's services are used once).
A worker forked from the template starts in ~12 ms, so a service that lost its
idle workers pays little. Workers start through
:func:`start_worker`, which has the warm template (:mod:`.zygote`) load the
service first when they are forked from it. ``close()`` (a client closing, a
test ending) stops idle workers but keeps the template: the next test of a
suite forks its workers from it instead of starting an interpreter.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from . import zygote
from .process import WorkerProcess, remove_scratch
from .protocol import Stop

__all__ = ["DEFAULT_START_METHOD", "MAX_IDLE", "WORKER_POOL", "WorkerPool", "start_worker",
           "warm_template"]

IDLE_TIMEOUT = float(os.environ.get("LOCALBATCH_IDLE_TIMEOUT", "60"))
#: Workers fork from the warm template where forking a fresh interpreter is safe
#: (Linux; macOS system frameworks are not fork-safe). Measured on the SDK sample (2
#: busy cores), a first batch with parallel_count=10 takes 1.2-1.6 s forked from the
#: template, 2-4 s with spawned workers (bench/compare.py --only first_batch).
DEFAULT_START_METHOD = "forkserver" if sys.platform.startswith("linux") else "spawn"
#: Idle workers kept across services (the service handed back last may keep more):
#: one per core, so live worker processes (worker + keeper) stay <= 2 x cores.
MAX_IDLE = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1)
#: Templates a worker start tries before it gives up: each one that dies (killed,
#: or killed by what it loaded) or hangs is replaced by a fresh one.
TEMPLATE_TRIES = 3
#: Services whose idle workers are all kept (the last, and one used in turn with it).
KEEP_SERVICES = 2


class WorkerPool:
    """Warm, initialised workers per service revision, leased to one user at a time."""

    def __init__(self) -> None:
        self._idle: dict[tuple[Any, ...], list[WorkerProcess]] = {}
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._closed = False
        #: The services whose workers were handed back last, most recent first.
        self._recent: list[tuple[Any, ...]] = []
        #: Hand-backs of the services in ``_recent`` (a service used in turn keeps workers).
        self._uses: dict[tuple[Any, ...], int] = {}

    @property
    def closed(self) -> bool:
        """Shut down (at exit): nothing new is started or kept."""
        return self._closed

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
        self.give_back([start_worker(key, start_method, {"path": key[0]}, limits)
                        for _ in range(missing)])

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
            evicted = self._over_cap(keep[-1].key) if keep else []
        _stop_all(evicted)
        self._ensure_reaper()

    def _over_cap(self, recent: tuple[Any, ...]) -> list[WorkerProcess]:
        """Idle workers beyond the cap, least recently used first; those of the services
        handed back last (:data:`KEEP_SERVICES`) are kept whatever their number."""
        self._recent = [recent, *(k for k in self._recent if k != recent)][:KEEP_SERVICES]
        self._uses = {k: self._uses.get(k, 0) + (k == recent) for k in self._recent}
        # The service handed back last keeps its workers; an earlier one only if it is
        # used in turn (handed back more than once), not a test suite's service of the
        # test before, used once.
        protected = [k for k in self._recent if k == recent or self._uses[k] > 1]
        kept = sum(len(self._idle.get(k, [])) for k in protected)
        cap = max(MAX_IDLE, kept)
        others = sorted((w for key, idle in self._idle.items() if key not in protected
                         for w in idle), key=lambda w: w.idle_since)
        total = sum(len(v) for v in self._idle.values())
        evicted = others[:max(0, total - cap)]
        for w in evicted:
            self._idle[w.key].remove(w)
        for key in [k for k, v in self._idle.items() if not v]:
            del self._idle[key]
        return evicted

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
        for key in [k for k, v in self._idle.items() if not v]:
            del self._idle[key]
        _stop_all(stale)

    def idle_count(self, key: tuple[Any, ...] | None = None) -> int:
        with self._lock:
            if key is not None:
                return len(self._idle.get(key, []))
            return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Stop every idle worker (when a client closes, at a test's end).

        The warm template stays: the next client of this process (the next test
        of a suite) forks its workers from it instead of starting an interpreter.
        """
        self.reap_idle(-1.0)

    def shut_down(self) -> None:
        """Close for good: workers handed back from now on are killed (at exit)."""
        self._closed = True
        self.close()
        zygote.close_if_idle()


def start_worker(key: tuple[Any, ...], start_method: str, spec: dict[str, Any],
                 limits: dict[str, int] | None) -> WorkerProcess:
    """Start one worker of a service; a forked one comes from a template holding it."""
    w = WorkerProcess(key, start_method)
    if start_method != "forkserver":
        w.start(spec, limits or None)
        return w
    for attempt in range(1, TEMPLATE_TRIES + 1):
        server = zygote.client()
        try:
            server.preload(spec)
            server.wait_loaded(zygote.FORK_TIMEOUT)
            w.start(spec, limits or None)
            return w
        except OSError:
            # Dead (killed, or it died loading the service) or stuck loading it:
            # again from a fresh template, which does not preload a service it died
            # or hung loading (those workers load it themselves).
            if attempt == TEMPLATE_TRIES:
                raise
    raise AssertionError("unreachable")


def warm_template(spec: dict[str, Any]) -> None:
    """Start the template and have it load a service, ahead of the first worker."""
    if not WORKER_POOL.closed:
        zygote.client().preload(spec)


def _stop_all(workers: list[WorkerProcess]) -> None:
    """Ask idle workers to stop, all at once, then kill any still there after 1 s."""
    for w in workers:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            w.send(Stop("stop"))
    deadline = time.monotonic() + 1.0
    for w in workers:
        while time.monotonic() < deadline and w.alive():
            time.sleep(0.01)
        w.kill()


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
