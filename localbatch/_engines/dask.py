"""The Dask engine: the same batch on a Dask cluster, committed to the same local store.

::

    caller process (this module)                       each Dask worker process (dask_tasks)
    ────────────────────────────                       ─────────────────────────────────────
    input spool ─chunks─► supervisor thread ─submit─►  run_chunk(spec, rows)
                            ▲     │                         │ leases a localbatch worker
          report (result ───┘     ▼                         ▼ subprocess (init once)
          or death)          Committer ──► results/     RunChunk ──► Runtime.run_rows

The service bundle (manifest and hash-verified blobs) is sent by value to each
Dask worker once (``client.run``) and cached there by its content hash, so
cluster workers never read the store's folder; a worker that lacks it (one the
nanny restarted, one that joined later) answers ``need_bundle`` and gets it
then. Not a scattered future: a task depending on one is canceled when every
worker holding a copy dies. The subprocess checks the blob hashes again before
it unpickles anything. Rows
never run in a Dask worker's own threads: per-row working directories and
console capture are process-global, a row may segfault, and Dask cannot kill a
running task. Each running chunk owns one localbatch worker subprocess
(``localbatch._workers.process.WorkerProcess``), kept warm per Dask worker by the bundle's
content hash, so ``init`` runs once per subprocess, a hung row is killed by
``row_timeout`` and a crashing row only takes its subprocess down.

A task returns a report, never raises for a row: the chunk's payload, or a
death ``{"row": (index, started), "why": ...}`` that the supervisor charges to
that row exactly as the local engine does (the rest of the chunk is requeued
without an attempt; a charged row runs alone). Dask's own retries are off. A
Dask worker that dies makes the scheduler run its chunks again elsewhere
without charging anyone; only a chunk that keeps killing workers (``KilledWorker``)
is split into single rows, and a single row that does is charged, then runs alone.

Importing this module does not import Dask; :class:`DaskEngine` does, and
raises an ``ImportError`` naming ``localbatch[dask]`` when it is missing. The
tasks' own code is in :mod:`.dask_tasks`, which a Dask worker imports without
importing this module.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from concurrent.futures import CancelledError
from typing import Any

from .._errors import ConfigurationError, ServiceLoadError
from .._format.chunk import ChunkResult
from .._logging import close_execution_logger
from .._store.commit import now_iso
from .._store.registry import read_blobs
from .._store.states import ExecutionState
from .base import Chunk, DoneHandle, Engine, RunContext, RunHandle
from .dask_tasks import (
    Died,
    InitFailed,
    InitTimedOut,
    NeedBundle,
    Scored,
    StartDied,
    TaskReport,
    bundle_hash,
    close_idle,
    has_bundle,
    run_chunk,
    stop_run,
    store_bundle,
)
from .supervisor import BatchAborted, Supervisor, register_exit_wait

__all__ = ["DaskEngine", "DaskSupervisor", "close_worker_processes"]

INSTALL_HINT = 'the Dask engine needs dask.distributed: pip install "localbatch[dask]"'
#: How often the supervisor checks for a cancel while it waits for chunks.
WAIT_TICK = 0.1


class DaskEngine(Engine):
    """Chunks of rows as tasks on a ``dask.distributed`` cluster.

    ``client`` is a synchronous ``dask.distributed.Client``; without one, the
    process's default client (the last one created) is used when a batch starts.
    """

    name = "dask"

    def __init__(self, client: Any = None) -> None:
        try:
            import distributed
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        if client is not None and not isinstance(client, distributed.Client):
            raise ConfigurationError(f"engine must be a dask.distributed.Client, not "
                                     f"{type(client).__name__}")
        if client is not None and client.asynchronous:
            raise ConfigurationError("the Dask engine needs a synchronous Client "
                                     "(Client(address), not asynchronous=True)")
        self._client = client
        _wait_for_batches_before_dask_exits()

    @property
    def client(self) -> Any:
        """The Client batches run on (the default client when none was given)."""
        if self._client is not None:
            return self._client
        from distributed import default_client

        try:
            return default_client()
        except ValueError:
            raise ConfigurationError(
                "engine='dask' needs a dask.distributed Client: create one first "
                "(Client('tcp://scheduler:8786')) or pass it as engine=client") from None

    def run(self, ctx: RunContext) -> RunHandle:
        try:
            client = self.client
        except ConfigurationError as exc:
            return _fail_before_start(ctx, f"ConfigurationError: {exc}")
        run = DaskSupervisor(ctx, client)
        run.start()
        return run

    def close_worker_processes(self) -> int:
        """Stop the idle localbatch subprocesses on every Dask worker; returns how many."""
        return close_worker_processes(self.client)


def close_worker_processes(client: Any) -> int:
    """Stop the idle localbatch subprocesses kept warm on the workers of ``client``.

    Returns how many were idle; they exit within about a second.
    """
    stopped = client.run(close_idle, on_error="ignore")
    return sum(v for v in stopped.values() if isinstance(v, int))


_ATEXIT_REGISTERED = False


def _wait_for_batches_before_dask_exits() -> None:
    """Make a script's end wait for its batches before distributed closes the client.

    atexit runs hooks last-in first-out and distributed registers its own (which
    closes the default client) when it is imported, after localbatch registered
    the wait: registering the wait again here puts it first.
    """
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        register_exit_wait()
        _ATEXIT_REGISTERED = True


def _fail_before_start(ctx: RunContext, error: str) -> RunHandle:
    try:
        ctx.log.error("batch failed: %s", error)
        ctx.committer.set_state(ExecutionState.FAILED, error=error, resumable=True,
                                ended=now_iso())
    finally:
        ctx.lock.release()
        close_execution_logger(ctx.log)
    return DoneHandle(ctx.committer.id)


def bundle_of(record: Any) -> dict[str, Any]:
    """The service by value: its manifest and its blobs, hash-verified here."""
    return {"manifest": record.manifest, "blobs": read_blobs(record.path, record.manifest)}


class DaskSupervisor(Supervisor):
    """The supervisor of one execution on a Dask cluster (a thread of this process)."""

    #: A Dask task costs milliseconds, a local chunk microseconds.
    target_chunk_seconds = 0.25

    def __init__(self, ctx: RunContext, client: Any) -> None:
        super().__init__(ctx)
        self.client = client
        # One token per run: a resumed execution keeps its id, not its cancel flag.
        self._token = f"{self.id[:12]}-{uuid.uuid4().hex[:8]}"
        self._spec: dict[str, Any] = {}
        self._bundle: dict[str, Any] = {}
        #: Running chunks by task key.
        self._inflight: dict[str, tuple[Any, Chunk]] = {}
        self._suspects: deque[Chunk] = deque()
        self._submitted = 0
        self._lost = 0

    # lifecycle (see Supervisor) -----------------------------------------------

    def _stop_work(self) -> None:
        """Cancel queued tasks and kill the subprocesses of running ones."""
        if not self._inflight:
            return
        futures = [f for f, _ in self._inflight.values()]
        self._inflight.clear()
        with contextlib.suppress(Exception):
            self.client.cancel(futures)
        with contextlib.suppress(Exception):
            self.client.run(stop_run, self._token, on_error="ignore")

    # the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        record = self.ctx.record
        try:
            self._bundle = bundle_of(record)
        except ServiceLoadError as exc:
            raise BatchAborted(f"init failed: ServiceLoadError: {exc}") from None
        self._spec = {"run": self._token, "key": bundle_hash(record.manifest),
                      "limits": dict(self.options.limits), "row_timeout": self.options.row_timeout,
                      "init_timeout": self.options.init_timeout}
        sent = self._send_bundle()
        self._mark_in_progress()
        self.log.info("dask: bundle %s sent to %d workers", self._spec["key"], sent)
        while True:
            if self._cancel_requested():
                return self._finish_canceled()
            self._dispatch()
            if (not self._queue and not self._suspects and self._source is None
                    and not self._inflight):
                return self._finish()
            self._wait_any(WAIT_TICK)
            self._take_finished()
            self._check_threshold()
            if self.committer.due():
                self.committer.commit()

    def _send_bundle(self, worker: str | None = None) -> int:
        """Cache the bundle on the workers (or one worker) that lack it; how many got it."""
        key = self._spec["key"]
        targets = None if worker is None else [worker]
        have = self.client.run(has_bundle, key, workers=targets, on_error="return")
        lacking = [w for w, ok in have.items() if ok is False]
        if lacking:
            self.client.run(store_bundle, key, self._bundle, workers=lacking,
                            on_error="return")
        return len(lacking)

    # dispatch ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not any(c.alone for _, c in self._inflight.values()):
            if self._suspects:
                if self._inflight:
                    return  # a suspect waits until it can run alone
                chunk = self._suspects.popleft()
            else:
                if len(self._inflight) >= self.options.parallel_count:
                    return
                chunk = self._next_chunk()
                if chunk is None:
                    return
            future = self.client.submit(
                run_chunk, self._spec, chunk.id, chunk.indices, chunk.columns,
                key=f"localbatch-{self._token}-{chunk.id}-{self._submitted}", retries=0,
                pure=False)
            # A fresh key per submission: a requeued chunk must not find the result
            # of its previous task, which the scheduler may not have released yet.
            self._submitted += 1
            self._inflight[future.key] = (future, chunk)

    def _wait_any(self, timeout: float) -> None:
        # Not future callbacks: distributed runs those on an executor that refuses
        # work at interpreter exit, when a script's end waits for its batches.
        from distributed import wait

        futures = [f for f, _ in self._inflight.values()]
        if not futures:
            self._cancel.wait(timeout)
            return
        # A canceled future raises here; _take_finished sees it by its status.
        with contextlib.suppress(TimeoutError, CancelledError):
            wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")

    # reports -----------------------------------------------------------------------

    def _take_finished(self) -> None:
        for key, (future, chunk) in list(self._inflight.items()):
            if not future.done():
                continue
            del self._inflight[key]
            try:
                self._on_future(future, chunk)
            finally:
                with contextlib.suppress(Exception):
                    future.release()

    def _on_future(self, future: Any, chunk: Chunk) -> None:
        from distributed import KilledWorker

        if future.status == "finished":
            self._on_report(future.result(), chunk)
        elif future.status == "error":
            exc = future.exception()
            if isinstance(exc, KilledWorker):
                self._on_killed_worker(chunk, exc)
            else:
                hint = (" (localbatch must be installed on every Dask worker)"
                        if isinstance(exc, ImportError) else "")
                raise BatchAborted(f"cannot run on the Dask cluster: {type(exc).__name__}: {exc}"
                             f"{hint}", resumable=True)
        else:
            # Canceled by the cluster, not by us (a scheduler restart): run it again.
            self._requeue_lost(chunk, f"{future.status} on the cluster")

    def _requeue_lost(self, chunk: Chunk, why: str) -> None:
        self._lost += 1
        self.log.warning("chunk %d %s: requeued", chunk.id, why)
        if self._lost > 10 * self.options.max_attempts * self.options.parallel_count:
            raise BatchAborted(f"Dask keeps losing chunks ({why})", resumable=True)
        self._queue.appendleft(chunk)

    def _on_report(self, report: TaskReport, chunk: Chunk) -> None:
        match report:
            case Scored(result):
                self._on_result(result)
            case Died():
                self._on_death(chunk, report)
            case NeedBundle(worker):
                self._send_bundle(worker)
                self._requeue_lost(chunk, f"sent the bundle to {worker}")
            case InitFailed(error):
                raise BatchAborted(f"init failed: {error[0]}: {error[1]}")
            case InitTimedOut():
                raise BatchAborted(f"InitTimeout: init did not return within "
                                   f"{self.options.init_timeout:g}s")
            case StartDied(why, worker):
                # Counted with the deaths that blame no row, against a lower limit of its own.
                self._unblamed_deaths += 1
                self.log.warning("dask worker %s: subprocess %s while starting", worker, why)
                if self._unblamed_deaths > self.options.max_attempts:
                    raise BatchAborted(f"init failed: {why} while starting")
                self._queue.appendleft(chunk)
            case _:  # Canceled without a cancel of ours: a stale flag; run it again
                self._queue.appendleft(chunk)

    def _on_result(self, payload: ChunkResult) -> None:
        n = len(payload["index"])
        if n:
            busy = max(payload["ended"]) - min(payload["started"])
            per_row = max(busy, 0.0) / n
            self._note_row_seconds(per_row)
        self._count_failures(payload)
        self.committer.add(payload, self._attempts)

    def _on_death(self, chunk: Chunk, report: Died) -> None:
        current, why = report.row, report.why
        self.log.warning("dask worker %s: subprocess %d ended: %s (row %s)", report.worker,
                         report.pid, why, current[0] if current else "-")
        charged = self.on_worker_death([chunk], current, why, timed_out=report.timed_out)
        if not charged and self._unblamed_limit_reached():
            raise BatchAborted(f"workers keep dying outside any row: {why}", resumable=True)

    def _on_killed_worker(self, chunk: Chunk, exc: Exception) -> None:
        """A chunk whose Dask workers kept dying (the scheduler's ``allowed-failures``).

        Which row did it is unknown (the worker took the row's board with it, and
        other tasks shared that worker), so the chunk is split into single rows
        without charging anyone. A single row is charged one attempt per
        ``KilledWorker`` and from then on runs alone (nothing else of this batch in
        flight), so its next death is its own; it fails once it has used
        ``max_attempts``.
        """
        self.log.warning("chunk %d killed Dask workers: %s", chunk.id, exc)
        if len(chunk.indices) > 1:
            for p in reversed(range(len(chunk.indices))):
                self._queue.appendleft(self._new_chunk(*chunk.split([p])))
            return
        row = int(chunk.indices[0])
        attempts = self._attempts.get(row, 0) + 1
        self._attempts[row] = attempts
        if attempts < self.options.max_attempts:
            chunk.alone = True
            self._suspects.append(chunk)
            return
        self.committer.add_failure(
            row, "WorkerDied", f"Dask worker processes died running this row "
            f"({type(exc).__name__}); gave up after {attempts} attempts", attempts)
        self._failed_seen += 1
