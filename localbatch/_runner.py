"""Parent side of a batch: the supervisor that owns one execution.

::

    input spool ──chunks──► supervisor thread ──("chunk")──► worker 1..N (processes)
                               ▲   │  reads each worker's (row, start) slot
                  ("result")───┘   ▼
                          Committer ──► results/part-*.lbp, artifacts/, execution.json

The supervisor is the single writer of the execution. It waits on worker
connections; a connection that ends is a dead worker, charged to the row its
slot names (only that row: the rest of its chunks is requeued without using an
attempt). Rows charged once run alone afterwards, so a poison row cannot take
good rows down with it. It never hangs: every wait has a timeout, a hung row is
killed by ``row_timeout``, a hung ``init`` by ``init_timeout``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Protocol

import numpy as np

from ._columns import decode_all
from ._commit import Committer, now_iso
from ._errors import ConfigurationError, StoreError
from ._logging import close_execution_logger
from ._pool import START_METHODS, WORKER_POOL, WorkerProcess, describe_exit
from ._registry import ServiceRecord
from ._schema import EncodingType
from ._store import ExecutionStore, OwnerLock

__all__ = ["BatchOptions", "RUNNING", "Supervisor", "input_chunks"]

ACTIVE_STATES = ("Pending", "InProgress")
IN_FLIGHT = 2  # chunks queued per worker, so it never waits for the next one
# Deaths outside any row (while starting, between rows) with no progress in between,
# per worker slot and attempt, before the batch is Failed: an init that crashes
# its process fails fast, random outside kills (the OOM killer) do not.
UNBLAMED_DEATHS = 3
TARGET_CHUNK_SECONDS = 0.05
MAX_CHUNK = 10_000


@dataclass
class BatchOptions:
    """Per-batch options (keyword arguments of ``svc.batch``)."""

    parallel_count: int = 10
    max_attempts: int = 3
    row_timeout: float | None = None
    init_timeout: float = 300.0
    error_threshold: int | None = None
    start_method: str = "spawn"
    limits: dict[str, int] = field(default_factory=dict)

    def validate(self) -> BatchOptions:
        if not isinstance(self.parallel_count, int) or self.parallel_count < 1:
            raise ConfigurationError(f"parallel_count must be an int >= 1, not "
                                     f"{self.parallel_count!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, not "
                                     f"{self.max_attempts!r}")
        for name in ("row_timeout", "init_timeout"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if self.error_threshold is not None and (
                not isinstance(self.error_threshold, int) or self.error_threshold < 0):
            raise ConfigurationError("error_threshold must be an int >= 0")
        if self.start_method not in START_METHODS:
            raise ConfigurationError(f"start_method must be one of {START_METHODS}")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"max_attempts": self.max_attempts, "row_timeout": self.row_timeout,
                "init_timeout": self.init_timeout, "error_threshold": self.error_threshold,
                "start_method": self.start_method, "limits": dict(self.limits)}


class OwnedRun(Protocol):
    """What every engine's supervisor offers the process that owns it."""

    id: str
    done: threading.Event
    committer: Committer

    def cancel(self, timeout: float | None = None) -> bool: ...


#: Executions owned by supervisors of this process (any engine), by id.
RUNNING: dict[str, OwnedRun] = {}
_RUNNING_LOCK = threading.Lock()


@dataclass
class _Chunk:
    id: int
    indices: list[int]
    columns: dict[str, list[Any]]
    sent: float = 0.0

    def split(self, positions: list[int]) -> tuple[list[int], dict[str, list[Any]]]:
        return ([self.indices[p] for p in positions],
                {k: [v[p] for p in positions] for k, v in self.columns.items()})


def input_chunks(store: ExecutionStore, execution_id: str, inputs: list[tuple[str, Any]],
                 recorded: np.ndarray) -> Iterator[tuple[list[int], dict[str, list[Any]]]]:
    """Rows without a record, one input part at a time (bounded memory)."""
    for part in store.iter_inputs(execution_id):
        rows = part.column("row")[2]["values"]
        keep = np.flatnonzero(~recorded[rows])
        if len(keep) == 0:
            continue
        cols = {name: _input_values(part.column(f"in.{name}"), enc) for name, enc in inputs}
        if len(keep) < len(rows):
            sel = keep.tolist()
            cols = {k: [v[p] for p in sel] for k, v in cols.items()}
        yield rows[keep].tolist(), cols


def _input_values(column: Any, enc: EncodingType) -> list[Any]:
    values = decode_all(column)
    if enc in (EncodingType.vector, EncodingType.matrix):
        return [None if v is None else np.asarray(v) for v in values]
    return values


class Supervisor:
    """Runs the unrecorded rows of one execution on leased worker processes."""

    def __init__(self, store: ExecutionStore, record: ServiceRecord, committer: Committer,
                 lock: OwnerLock, options: BatchOptions, log: logging.Logger) -> None:
        self.store = store
        self.record = record
        self.committer = committer
        self.lock = lock
        self.options = options
        self.log = log
        self.id = committer.id
        self.done = threading.Event()
        self._cancel = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._workers: list[WorkerProcess] = []
        self._inflight: dict[int, list[_Chunk]] = {}
        self._queue: deque[_Chunk] = deque()
        self._source = input_chunks(store, self.id, record.inputs, committer.recorded)
        self._source_rows: tuple[list[int], dict[str, list[Any]]] | None = None
        self._source_pos = 0
        self._next_chunk_id = 0
        self._attempts: dict[int, int] = {}
        self._row_seconds: float | None = None
        self._unblamed_deaths = 0
        self._failed_seen = committer.failed_count
        self._thread = threading.Thread(target=self._main, name=f"localbatch-{self.id[:8]}",
                                        daemon=True)

    # lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        with _RUNNING_LOCK:
            RUNNING[self.id] = self
        self._thread.start()

    def cancel(self, timeout: float | None = None) -> bool:
        self._cancel.set()
        self._wake()
        return self.done.wait(timeout)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _main(self) -> None:
        try:
            self._run()
        except StoreError as exc:
            self._abort(f"StoreError: {exc}", resumable=True)
        except Exception as exc:  # pragma: no cover - a bug in localbatch itself
            self.log.exception("supervisor crashed")
            self._abort(f"{type(exc).__name__}: {exc} (internal error)", resumable=True)
        finally:
            self._release()

    def _release(self) -> None:
        idle = [w for w in self._workers if not w.dead and not self._inflight.get(w.pid)]
        for w in self._workers:
            if w not in idle:
                w.kill()
        WORKER_POOL.give_back(idle)
        self._workers = []
        with _RUNNING_LOCK:
            RUNNING.pop(self.id, None)
        self.lock.release()
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        close_execution_logger(self.log)
        self.done.set()

    def _abort(self, error: str, *, resumable: bool) -> None:
        self.log.error("batch failed: %s", error)
        self._kill_all()
        with contextlib.suppress(StoreError):
            self.committer.commit()
        with contextlib.suppress(StoreError):
            self.committer.set_state("Failed", error=error, resumable=resumable,
                                     ended=now_iso())

    def _kill_all(self) -> None:
        for w in self._workers:
            if self._inflight.get(w.pid) or not w.ready:
                w.kill()
        self._inflight.clear()

    # the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        self._lease_workers()
        while True:
            if self._cancel_requested():
                return self._finish_canceled()
            self._dispatch()
            if self._finished():
                break
            self._poll(0.1)
            if self._failed_early():
                return
            if self.committer.due():
                self.committer.commit()
        self.committer.commit()
        self.committer.set_state("Complete", ended=now_iso())
        self.log.info("batch complete: %d rows, %d failed", self.committer.completed_count,
                      self.committer.failed_count)

    def _failed_early(self) -> bool:
        error = self._init_problem() or self._threshold_problem()
        if error:
            self._abort(error, resumable=error.startswith("StoreError"))
            return True
        self._check_row_timeouts()
        return False

    def _finished(self) -> bool:
        return not self._queue and self._source is None and not any(self._inflight.values())

    def _cancel_requested(self) -> bool:
        return self._cancel.is_set() or self.store.cancel_requested(self.id)

    def _finish_canceled(self) -> None:
        self._kill_all()
        self.committer.commit()
        self.committer.set_state("Canceled", ended=now_iso(), resumable=False)
        self.log.info("batch canceled after %d rows", self.committer.completed_count)

    # workers ---------------------------------------------------------------------------

    @property
    def _key(self) -> tuple[Any, ...]:
        return (str(self.record.path), self.options.start_method,
                tuple(sorted(self.options.limits.items())))

    def _lease_workers(self) -> None:
        want = min(self.options.parallel_count, max(1, len(self.committer.pending_indices())))
        self._workers = WORKER_POOL.take_idle(self._key, want)
        for w in self._workers:
            self._inflight[w.pid] = []
        if self._workers:
            self._mark_in_progress()
        for _ in range(want - len(self._workers)):
            self._spawn()

    def _spawn(self) -> None:
        w = WorkerProcess(self._key, self.options.start_method)
        w.start({"path": str(self.record.path)}, self.options.limits or None)
        self._workers.append(w)
        self._inflight[w.pid] = []
        self.log.info("worker %d started (%s)", w.pid, self.options.start_method)

    def _mark_in_progress(self) -> None:
        if self.committer.header.get("state") == "Pending":
            self.committer.set_state("InProgress", started=now_iso())

    def _poll(self, timeout: float) -> None:
        conns = {w.conn: w for w in self._workers if w.conn is not None and not w.dead}
        ready = wait([*conns, self._wake_r], timeout=timeout)
        for obj in ready:
            if obj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
                continue
            w = conns[obj]
            try:
                msg = w.recv()
            except (EOFError, OSError):
                self._on_death(w)
                continue
            self._on_message(w, msg)

    def _on_message(self, w: WorkerProcess, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            self.log.info("worker %d ready (init %.3fs)", w.pid, msg[2])
            self._mark_in_progress()
        elif kind == "init_error":
            etype, message, _ = msg[2]
            self._init_error = f"init failed: {etype}: {message}"
        elif kind == "result":
            self._on_result(w, msg[1], msg[2])

    def _on_result(self, w: WorkerProcess, chunk_id: int, payload: dict[str, Any]) -> None:
        chunks = self._inflight.get(w.pid, [])
        chunk = next((c for c in chunks if c.id == chunk_id), None)
        if chunk is not None:
            chunks.remove(chunk)
            spent = time.monotonic() - chunk.sent
            per_row = spent / max(1, len(chunk.indices))
            self._row_seconds = per_row if self._row_seconds is None else (
                0.7 * self._row_seconds + 0.3 * per_row)
        self._unblamed_deaths = 0
        self._failed_seen += sum(e is not None for e in payload["errors"])
        self.committer.add(payload, self._attempts)

    _init_error: str | None = None

    def _init_problem(self) -> str | None:
        if self._init_error:
            return self._init_error
        limit = self.options.init_timeout
        now = time.monotonic()
        for w in self._workers:
            if not w.ready and not w.dead and limit and now - w.started_at > limit:
                return f"InitTimeout: init did not return within {limit:g}s"
        return None

    def _threshold_problem(self) -> str | None:
        limit = self.options.error_threshold
        if limit is not None and self._failed_seen > limit:
            return (f"error threshold exceeded: {self._failed_seen} rows failed "
                    f"(error_threshold={limit})")
        return None

    # deaths and timeouts ------------------------------------------------------------

    def _on_death(self, w: WorkerProcess, reason: str | None = None,
                  current: tuple[int, float] | None = None) -> None:
        current = current or w.current_row()
        w.kill()  # also takes down anything the row started in the worker's group
        code = w.exitcode
        chunks = self._inflight.pop(w.pid, [])
        self._workers.remove(w)
        why = reason or describe_exit(code)
        self.log.warning("worker %d ended: %s (row %s; %d rows in flight)", w.pid, why,
                         current[0] if current else "-", sum(len(c.indices) for c in chunks))
        charged = self._charge(current, chunks, why, timed_out=reason is not None)
        if not charged:
            # Deaths that no row can be blamed for (while starting, between rows) are
            # only fatal when they keep happening with no progress in between.
            self._unblamed_deaths += 1
            limit = UNBLAMED_DEATHS * self.options.max_attempts * self.options.parallel_count
            if self._unblamed_deaths > limit and not self._init_error:
                stage = "while starting" if not w.ready else "outside any row"
                self._init_error = (f"init failed: {why} {stage}" if not w.ready else
                                    f"workers keep dying {stage}: {why}")
        self._requeue(chunks, skip=current[0] if charged and current else None)
        if self._has_work() and not self._init_error:
            self._spawn()

    def _charge(self, current: tuple[int, float] | None, chunks: list[_Chunk], why: str,
                *, timed_out: bool) -> bool:
        if current is None or not any(current[0] in c.indices for c in chunks):
            return False
        row, started = current
        attempts = self._attempts.get(row, 0) + 1
        self._attempts[row] = attempts
        if timed_out:
            self.committer.add_failure(row, "RowTimeout", why, attempts, started=started)
            self._failed_seen += 1
        elif attempts >= self.options.max_attempts:
            self.committer.add_failure(
                row, "WorkerDied", f"{why}; gave up after {attempts} attempts", attempts,
                started=started)
            self._failed_seen += 1
        else:
            chunk = next(c for c in chunks if row in c.indices)
            # A row that killed its worker runs alone from now on.
            self._queue.appendleft(self._new_chunk(*chunk.split([chunk.indices.index(row)])))
        return True

    def _requeue(self, chunks: list[_Chunk], skip: int | None) -> None:
        for chunk in reversed(chunks):
            keep = [p for p, i in enumerate(chunk.indices) if i != skip]
            if keep:
                self._queue.appendleft(self._new_chunk(*chunk.split(keep)))

    def _check_row_timeouts(self) -> None:
        limit = self.options.row_timeout
        if not limit:
            return
        now = time.time()
        for w in list(self._workers):
            current = w.current_row() if self._inflight.get(w.pid) else None
            if current and now - current[1] > limit:
                why = f"row {current[0]} exceeded row_timeout={limit:g}s"
                self._on_death(w, reason=why, current=current)

    # dispatch -------------------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self._queue) or self._source is not None

    def _chunk_size(self) -> int:
        remaining = self.committer.total - self.committer.completed_count
        # At most a fair share, so a small batch of slow rows still uses every worker.
        fair = max(1, -(-remaining // (2 * max(1, len(self._workers)))))
        if self._row_seconds is None:
            return min(8, fair)
        size = int(TARGET_CHUNK_SECONDS / max(self._row_seconds, 1e-7))
        return max(1, min(MAX_CHUNK, size, fair))

    def _new_chunk(self, indices: list[int], columns: dict[str, list[Any]]) -> _Chunk:
        self._next_chunk_id += 1
        return _Chunk(self._next_chunk_id, indices, columns)

    def _next_chunk(self) -> _Chunk | None:
        if self._queue:
            return self._queue.popleft()
        while self._source is not None:
            if self._source_rows is None or self._source_pos >= len(self._source_rows[0]):
                self._source_rows, self._source_pos = next(self._source, None), 0
                if self._source_rows is None:
                    self._source = None
                    return None
                continue
            rows, cols = self._source_rows
            lo = self._source_pos
            hi = self._source_pos = lo + self._chunk_size()
            return self._new_chunk(rows[lo:hi], {k: v[lo:hi] for k, v in cols.items()})
        return None

    def _dispatch(self) -> None:
        for w in list(self._workers):
            if not w.ready or w.dead:
                continue
            chunks = self._inflight.setdefault(w.pid, [])
            while len(chunks) < IN_FLIGHT:
                chunk = self._next_chunk()
                if chunk is None:
                    return
                chunk.sent = time.monotonic()
                chunks.append(chunk)
                try:
                    w.send(("chunk", chunk.id, chunk.indices, chunk.columns))
                except OSError:
                    self._on_death(w)
                    break


# -- a script that reaches its end waits for the batches it owns ------------------------


def _wait_for_owned() -> None:
    with _RUNNING_LOCK:
        running = list(RUNNING.values())
    # A batch that has just written its final state is only handing its workers back.
    busy = [run for run in running if run.committer.header.get("state") in ACTIVE_STATES]
    if not busy:
        for run in running:
            run.done.wait(5)
        return
    print(f"localbatch: waiting for {len(busy)} running batch(es) to finish "
          "(Ctrl-C cancels them)", file=sys.stderr, flush=True)
    try:
        for sup in running:
            while not sup.done.wait(0.2):
                pass
    except KeyboardInterrupt:
        for sup in running:
            sup.cancel(timeout=30)
        ids = ", ".join(s.id for s in running)
        print(f"localbatch: canceled {ids}", file=sys.stderr, flush=True)


atexit.register(_wait_for_owned)
