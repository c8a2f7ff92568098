"""What every engine's supervisor shares: ownership, the end states, the exit wait.

A supervisor is a thread of the process that owns an execution. Subclasses
(``LocalSupervisor`` in :mod:`.local`, ``DaskSupervisor`` in :mod:`.dask`) write
``_run`` (the loop) and ``_stop_work`` (stop every running row); this class
deals the chunks, charges a worker's death to the row it was running
(:meth:`Supervisor.on_worker_death`), turns the ways a run can end into the
execution's state, once, and always releases the ownership:

- ``_run`` returns → ``Complete`` (``_finish``) or ``Canceled`` (``_finish_canceled``);
- :class:`BatchAborted` → ``Failed`` with its message;
- :class:`StoreError` → ``Failed``, resumable;
- anything else (a bug) → ``Failed``, resumable, logged with its traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
from abc import abstractmethod
from collections import deque
from typing import Any, ClassVar

import numpy as np

from .._errors import StoreError
from .._format.chunk import ChunkResult, failed_rows
from .._logging import close_execution_logger
from .._store.commit import now_iso
from .._store.states import ACTIVE, ExecutionState
from .base import RUNS, Chunk, RunContext, RunHandle, input_chunks

__all__ = ["BatchAborted", "Supervisor", "UNBLAMED_DEATHS", "register_exit_wait"]

#: Deaths outside any row (while starting, between rows), per worker slot and
#: attempt, before the batch is Failed (the local engine counts those with no
#: progress in between): an init that crashes its process fails fast, random
#: outside kills (the OOM killer) do not.
UNBLAMED_DEATHS = 3


class BatchAborted(Exception):
    """The batch as a whole cannot go on; the message becomes its ``error``."""

    def __init__(self, error: str, resumable: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.resumable = resumable


class Supervisor(RunHandle):
    """One execution's owner thread: listed in RUNS, cancellable, always released.

    It also deals the rows without a record out as chunks: requeued chunks first,
    then the input spool, in chunks sized to about ``target_chunk_seconds`` of work.
    """

    #: Work per chunk the adaptive size aims for. Each chunk has a fixed cost (messages,
    #: encoding its outputs: ~1 ms for a chunk of one-row DataFrames), so slow rows come
    #: in chunks of a few hundred milliseconds; cheap rows hit ``max_chunk`` first.
    target_chunk_seconds: ClassVar[float] = 0.2
    max_chunk: ClassVar[int] = 10_000
    #: Vectorised services are called once per chunk: larger chunks amortise the call.
    max_vector_chunk: ClassVar[int] = 200_000
    first_chunk: ClassVar[int] = 8

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.record = ctx.record
        self.committer = ctx.committer
        self.lock = ctx.lock
        self.options = ctx.options
        self.log = ctx.log
        self.id = ctx.committer.id
        self.done = threading.Event()
        self._cancel = threading.Event()
        self._failed_seen = ctx.committer.failed_count
        self._queue: deque[Chunk] = deque()
        self._source: Any = input_chunks(ctx.store, self.id, ctx.record.inputs,
                                         ctx.committer.recorded)
        self._source_rows: tuple[np.ndarray, dict[str, Any]] | None = None
        self._source_pos = 0
        self._next_chunk_id = 0
        self._attempts: dict[int, int] = {}
        #: Deaths no row was blamed for (see UNBLAMED_DEATHS).
        self._unblamed_deaths = 0
        self._row_seconds: float | None = None
        self._thread = threading.Thread(target=self._main, name=f"localbatch-{self.id[:8]}",
                                        daemon=True)

    # lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        RUNS.add(self)
        self._thread.start()

    def cancel(self, timeout: float | None = None) -> bool:
        self._cancel.set()
        self._wake()
        return self.done.wait(timeout)

    def _wake(self) -> None:
        """Interrupt the loop's wait (subclasses with a blocking wait override it)."""

    def _cancel_requested(self) -> bool:
        return self._cancel.is_set() or self.store.cancel_requested(self.id)

    def _main(self) -> None:
        try:
            self._run()
        except BatchAborted as exc:
            self._abort(exc.error, resumable=exc.resumable)
        except StoreError as exc:
            self._abort(f"StoreError: {exc}", resumable=True)
        except Exception as exc:  # a bug, or the cluster went away: rows left can rerun
            self.log.exception("supervisor stopped")
            self._abort(f"{type(exc).__name__}: {exc} (internal error)", resumable=True)
        finally:
            try:
                self._release_workers()
            finally:
                self.store.drop_inputs(self.id)  # a later run reads the files
                self.lock.release()
                close_execution_logger(self.log)
                self.done.set()

    @abstractmethod
    def _run(self) -> None:
        """Run the unrecorded rows; end with ``_finish()`` or ``_finish_canceled()``."""

    @abstractmethod
    def _stop_work(self) -> None:
        """Stop every running row of this batch (kill its workers); used by cancel/abort."""

    def _release_workers(self) -> None:
        """Hand idle workers back at the very end (the local engine's warm pool)."""

    # chunks ------------------------------------------------------------------------

    def _slots(self) -> int:
        """How many chunks run side by side (for a fair share of what is left)."""
        return self.options.parallel_count

    def _has_work(self) -> bool:
        return bool(self._queue) or self._source is not None

    def _note_row_seconds(self, per_row: float) -> None:
        self._row_seconds = per_row if self._row_seconds is None else (
            0.7 * self._row_seconds + 0.3 * per_row)

    def _chunk_size(self) -> int:
        remaining = self.committer.total - self.committer.completed_count
        # At most a fair share, so a small batch of slow rows still uses every slot.
        fair = max(1, -(-remaining // (2 * max(1, self._slots()))))
        if self._row_seconds is None:
            return min(self.first_chunk, fair)
        size = int(self.target_chunk_seconds / max(self._row_seconds, 1e-7))
        vectorized = self.record.manifest.get("vectorized")
        cap = self.max_vector_chunk if vectorized else self.max_chunk
        return max(1, min(cap, size, fair))

    def _new_chunk(self, indices: np.ndarray, columns: dict[str, Any]) -> Chunk:
        self._next_chunk_id += 1
        return Chunk(self._next_chunk_id, indices, columns)

    def _next_chunk(self) -> Chunk | None:
        """A requeued chunk first, else the next rows of the spool; None when none is left."""
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

    # deaths --------------------------------------------------------------------------

    def on_worker_death(self, chunks: list[Chunk], current: tuple[int, float] | None,
                        why: str, *, timed_out: bool) -> bool:
        """A worker ended (or was killed for a hung row) with ``chunks`` in flight.

        The row its board named (``current``: row index, start time) is charged
        (see :meth:`_charge_row`); the rest of the chunks goes again without
        using an attempt. Returns whether a row was blamed; a death that blames
        no row is counted (:meth:`_unblamed_limit_reached`).
        """
        chunk = None
        if current is not None:
            chunk = next((c for c in chunks if current[0] in c.indices), None)
        if chunk is None or current is None:
            self._unblamed_deaths += 1
            self._requeue(chunks, skip=None)
            return False
        self._charge_row(chunk, current[0], current[1], why, timed_out=timed_out)
        self._requeue(chunks, skip=current[0])
        return True

    def _unblamed_limit_reached(self) -> bool:
        """Deaths that no row can be blamed for (while starting, between rows) are only
        fatal when they keep happening."""
        limit = UNBLAMED_DEATHS * self.options.max_attempts * self.options.parallel_count
        return self._unblamed_deaths > limit

    def _charge_row(self, chunk: Chunk, row: int, started: float, why: str, *,
                    timed_out: bool) -> None:
        """A row that killed (or hung) its worker: record it, or run it again alone."""
        attempts = self._attempts.get(row, 0) + 1
        self._attempts[row] = attempts
        if timed_out:
            self.committer.add_failure(row, "RowTimeout", why, attempts, started=started)
            self._failed_seen += 1
        elif attempts >= self.options.max_attempts:
            self.committer.add_failure(row, "WorkerDied",
                                       f"{why}; gave up after {attempts} attempts", attempts,
                                       started=started)
            self._failed_seen += 1
        else:
            # A row that killed its worker runs alone from now on.
            position = int(np.flatnonzero(np.asarray(chunk.indices) == row)[0])
            self._queue.appendleft(self._new_chunk(*chunk.split([position])))

    def _requeue(self, chunks: list[Chunk], skip: int | None) -> None:
        """The rows of ``chunks`` (but ``skip``) go first in the queue, in their order."""
        for chunk in reversed(chunks):
            keep = [p for p, i in enumerate(chunk.indices) if i != skip]
            if keep:
                self._queue.appendleft(self._new_chunk(*chunk.split(keep)))

    # the end states ----------------------------------------------------------------

    def _finish(self) -> None:
        self.committer.commit()
        self.committer.set_state(ExecutionState.COMPLETE, ended=now_iso())
        self.log.info("batch complete: %d rows, %d failed", self.committer.completed_count,
                      self.committer.failed_count)

    def _finish_canceled(self) -> None:
        self._stop_work()
        self.committer.commit()
        self.committer.set_state(ExecutionState.CANCELED, ended=now_iso(), resumable=False)
        self.log.info("batch canceled after %d rows", self.committer.completed_count)

    def _abort(self, error: str, *, resumable: bool) -> None:
        self.log.error("batch failed: %s", error)
        self._stop_work()
        with contextlib.suppress(StoreError):
            self.committer.commit()
        with contextlib.suppress(StoreError):
            self.committer.set_state(ExecutionState.FAILED, error=error, resumable=resumable,
                                     ended=now_iso())

    def _mark_in_progress(self) -> None:
        if self.committer.header.get("state") == ExecutionState.PENDING:
            self.committer.set_state(ExecutionState.IN_PROGRESS, started=now_iso())

    def _count_failures(self, payload: ChunkResult) -> None:
        self._failed_seen += failed_rows(payload)

    def _check_threshold(self) -> None:
        limit = self.options.error_threshold
        if limit is not None and self._failed_seen > limit:
            raise BatchAborted(f"error threshold exceeded: {self._failed_seen} rows failed "
                               f"(error_threshold={limit})")


# -- a script that reaches its end waits for the batches it owns ------------------------


def _wait_for_owned() -> None:
    running = RUNS.live()
    # A batch that has just written its final state is only handing its workers back.
    busy = [run for run in running
            if run.committer is not None and run.committer.header.get("state") in ACTIVE]
    if not busy:
        for run in running:
            run.done.wait(5)
        return
    print(f"localbatch: waiting for {len(busy)} running batch(es) to finish "
          "(Ctrl-C cancels them)", file=sys.stderr, flush=True)
    try:
        for run in running:
            while not run.done.wait(0.2):
                pass
    except KeyboardInterrupt:
        for run in running:
            run.cancel(timeout=30)
        ids = ", ".join(r.id for r in running)
        print(f"localbatch: canceled {ids}", file=sys.stderr, flush=True)


def register_exit_wait() -> None:
    """(Re-)register the exit wait, so it runs before exit hooks registered earlier.

    atexit runs hooks last-in first-out: an engine whose library registers its own
    shutdown hook later (Dask closes its client) calls this after that import.
    """
    atexit.unregister(_wait_for_owned)
    atexit.register(_wait_for_owned)


register_exit_wait()
