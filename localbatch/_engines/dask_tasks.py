"""The Dask-worker side of the Dask engine: the task that runs a chunk, and its caches.

Everything here runs inside a Dask worker process, called by the scheduler
(:func:`run_chunk`, pickled by reference to this module's path: client and
cluster must run the same localbatch) or by the caller's ``client.run``
(:func:`has_bundle`, :func:`store_bundle`, :func:`stop_run`, :func:`close_idle`).
It imports only :mod:`localbatch._workers` and below: unpickling a task never
imports the supervisor, the committer or the store. The caller's side, and the
design, are in :mod:`.dask`.

A task leases a localbatch worker subprocess (kept warm per bundle hash and
caps), sends it the chunk and waits; it returns a report, never raises for a
row: :class:`Scored` with the chunk's result, or :class:`Died`,
:class:`Canceled`, :class:`InitFailed`, :class:`InitTimedOut`,
:class:`StartDied`, or :class:`NeedBundle` when this Dask worker lacks the
service. Reports are named tuples: they travel back by pickle, by class path.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any, NamedTuple

from .._format.chunk import ChunkResult, RowError
from .._workers.pool import WorkerPool
from .._workers.process import WorkerLost, WorkerProcess
from .._workers.protocol import InitError, Ready

__all__ = [
    "Canceled",
    "Died",
    "InitFailed",
    "InitTimedOut",
    "NeedBundle",
    "Scored",
    "StartDied",
    "TaskReport",
    "bundle_hash",
    "close_idle",
    "has_bundle",
    "run_chunk",
    "stop_run",
    "store_bundle",
]

#: Warm localbatch subprocesses of this Dask worker, by (bundle hash, limits).
_POOL = WorkerPool()
_LOCK = threading.Lock()
#: Subprocesses running a chunk, by run token (what a cancel kills).
_BUSY: dict[str, dict[int, WorkerProcess]] = {}
#: Run tokens canceled here (monotonic time), so their queued chunks never start.
_STOPPED: dict[str, float] = {}
_STOPPED_TTL = 3600.0
#: Service bundles by content hash, with when each was last used (most recent last).
_BUNDLES: dict[str, tuple[dict[str, Any], float]] = {}
BUNDLES_KEPT = 8
BUNDLE_TTL = 3600.0


class Scored(NamedTuple):
    """The chunk ran: its result (rows that raised are errors in it, not reports)."""

    result: ChunkResult


class Died(NamedTuple):
    """The subprocess died (or was killed for ``row_timeout``) running a row."""

    #: The running row and when it started, from the board (None: between rows).
    row: tuple[int, float] | None
    why: str
    timed_out: bool
    pid: int
    worker: str


class Canceled(NamedTuple):
    """The run was canceled here: the chunk did not (or did not finish) run."""


class InitFailed(NamedTuple):
    """The service's ``init`` raised."""

    error: RowError
    console: str | None


class InitTimedOut(NamedTuple):
    """``init`` did not return within ``init_timeout``."""


class StartDied(NamedTuple):
    """The subprocess died while starting (before ``init`` returned)."""

    why: str
    worker: str


class NeedBundle(NamedTuple):
    """This Dask worker has no copy of the service: send it, then run the chunk again."""

    worker: str


#: What a task returns.
TaskReport = Scored | Died | Canceled | InitFailed | InitTimedOut | StartDied | NeedBundle


def bundle_hash(manifest: dict[str, Any]) -> str:
    """A content hash of a bundle (the manifest names every blob's sha256)."""
    text = json.dumps(manifest, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# -- the bundle cache (client.run) -----------------------------------------------------


def has_bundle(key: str) -> bool:
    with _LOCK:
        return key in _BUNDLES


def store_bundle(key: str, bundle: dict[str, Any]) -> bool:
    """Cache a bundle (``client.run``); older, unused ones make room."""
    if bundle_hash(bundle["manifest"]) != key:
        raise ValueError("service bundle does not match its hash")
    now = time.monotonic()
    with _LOCK:
        _BUNDLES.pop(key, None)
        _BUNDLES[key] = (bundle, now)
        for old in [k for k, (_, at) in _BUNDLES.items() if now - at > BUNDLE_TTL]:
            del _BUNDLES[old]
        while len(_BUNDLES) > BUNDLES_KEPT:
            del _BUNDLES[next(iter(_BUNDLES))]
    return True


def _bundle(key: str) -> dict[str, Any] | None:
    with _LOCK:
        entry = _BUNDLES.pop(key, None)
        if entry is None:
            return None
        _BUNDLES[key] = (entry[0], time.monotonic())
        return entry[0]


# -- the task ----------------------------------------------------------------------------


def run_chunk(spec: dict[str, Any], chunk_id: int, indices: list[int],
              columns: dict[str, list[Any]]) -> TaskReport:
    """The Dask task: run rows in a localbatch subprocess; a report, never a row's exception."""
    token = spec["run"]
    worker = _leased(spec)
    if not isinstance(worker, WorkerProcess):
        return worker
    ok = False
    try:
        report = _score(worker, spec, chunk_id, indices, columns)
        ok = isinstance(report, Scored)
        return report
    finally:
        _unregister(token, worker)
        if ok:
            _POOL.give_back([worker])
        else:
            worker.kill()


def _worker_address() -> str:
    try:
        from distributed import get_worker  # optional: importable without Dask

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _canceled(token: str) -> bool:
    with _LOCK:
        return token in _STOPPED


def _leased(spec: dict[str, Any]) -> WorkerProcess | TaskReport:
    """A ready subprocess for this bundle, registered as busy for this run, or a report."""
    key = (spec["key"], tuple(sorted(spec["limits"].items())))
    taken = _POOL.take_idle(key, 1)
    bundle = None if taken else _bundle(spec["key"])
    if not taken and bundle is None:
        return NeedBundle(_worker_address())
    worker = taken[0] if taken else WorkerProcess(key, "spawn")
    with _LOCK:
        if spec["run"] in _STOPPED:
            canceled = True
        else:
            canceled = False
            _BUSY.setdefault(spec["run"], {})[id(worker)] = worker
    if canceled:
        if taken:
            _POOL.give_back([worker])
        return Canceled()
    if taken:
        return worker
    report: TaskReport | None = StartDied("could not start", _worker_address())
    try:
        assert bundle is not None
        report = _start(worker, bundle, spec)
    finally:
        if report is not None:
            _unregister(spec["run"], worker)
            worker.kill()
    return worker if report is None else report


def _unregister(token: str, worker: WorkerProcess) -> None:
    with _LOCK:
        busy = _BUSY.get(token, {})
        busy.pop(id(worker), None)
        if not busy:
            _BUSY.pop(token, None)


def _start(worker: WorkerProcess, bundle: dict[str, Any], spec: dict[str, Any]
           ) -> TaskReport | None:
    """Start a subprocess and wait for its ``init``; None when it is ready."""
    worker.start({"manifest": bundle["manifest"], "blobs": bundle["blobs"]},
                 spec["limits"] or None)
    started = worker.await_ready(spec["init_timeout"] or None,
                                 cancelled=lambda: _canceled(spec["run"]))
    if isinstance(started, Ready):
        return None
    if isinstance(started, InitError):
        return InitFailed(started.error, started.console)
    if started.reason == "died":
        return StartDied(started.why, _worker_address())
    return InitTimedOut() if started.reason == "timeout" else Canceled()


def _score(worker: WorkerProcess, spec: dict[str, Any], chunk_id: int, indices: list[int],
           columns: dict[str, list[Any]]) -> TaskReport:
    """Send one chunk and wait for its result, a death, a timeout or a cancel."""
    result = worker.run_chunk(chunk_id, indices, columns, row_timeout=spec["row_timeout"],
                              cancelled=lambda: _canceled(spec["run"]))
    if not isinstance(result, WorkerLost):
        return Scored(result)
    if result.reason == "canceled":
        return Canceled()
    return Died(result.row, result.why, result.reason == "row_timeout", worker.pid,
                _worker_address())


# -- client.run, on the Dask worker's event loop: never wait here ------------------------


def stop_run(token: str) -> int:
    """Cancel a run on this Dask worker (via ``client.run``, on its event loop: no waiting)."""
    now = time.monotonic()
    with _LOCK:
        for old in [t for t, at in _STOPPED.items() if now - at > _STOPPED_TTL]:
            del _STOPPED[old]
        _STOPPED[token] = now
        busy = list(_BUSY.get(token, {}).values())
    for w in busy:
        # The task's thread sees the connection end, reaps it and reports "canceled".
        w.signal_kill()
    return len(busy)


def close_idle() -> int:
    """Stop this Dask worker's idle subprocesses (``close_worker_processes``).

    On a thread: ``client.run`` calls this on the worker's event loop, which must
    not wait for processes to exit.
    """
    n = _POOL.idle_count()
    if n:
        threading.Thread(target=_POOL.close, name="localbatch-close-idle", daemon=True).start()
    return n
