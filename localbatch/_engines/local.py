"""The local engine: a batch's rows on supervised worker processes of this machine.

::

    input spool ──chunks──► supervisor thread ──RunChunk──► worker 1..N (processes)
                               ▲   │  reads the running row off each worker's board
                 ChunkDone ────┘   ▼
                          Committer ──► results/part-*.lbp, artifacts/, execution.json

The supervisor is the single writer of the execution. It waits on worker
connections; a connection that ends is a dead worker, charged to the row its
board names (only that row: the rest of its chunks is requeued without using an
attempt). Rows charged once run alone afterwards, so a poison row cannot take
good rows down with it. It never hangs: every wait has a timeout, a hung row is
killed by ``row_timeout``, a hung ``init`` by ``init_timeout``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from multiprocessing.connection import wait
from typing import Any

from .._format.chunk import ChunkResult
from .._store.registry import ServiceRecord
from .._workers.pool import WORKER_POOL
from .._workers.process import WorkerProcess, describe_exit
from .._workers.protocol import ChunkDone, InitError, Message, Ready, RunChunk
from .base import BatchOptions, Chunk, Engine, RunContext, RunHandle
from .supervisor import BatchAborted, Supervisor, register_exit_wait

__all__ = ["LocalEngine", "LocalSupervisor", "pool_key"]

IN_FLIGHT = 2  # chunks queued per worker, so it never waits for the next one

# The worker pool's exit hook (stop the workers, remove their boards) must run
# after a script's end has waited for its batches: exit hooks run last-in first-out.
register_exit_wait()


def pool_key(record: ServiceRecord, options: BatchOptions) -> tuple[Any, ...]:
    """Which warm workers a batch can use: same revision, start method and caps."""
    return (str(record.path), options.start_method, tuple(sorted(options.limits.items())))


class LocalSupervisor(Supervisor):
    """Runs the unrecorded rows of one execution on leased worker processes."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self._wake_r, self._wake_w = socket.socketpair()
        self._workers: list[WorkerProcess] = []
        self._inflight: dict[int, list[Chunk]] = {}
        self._init_error: str | None = None

    # lifecycle (see Supervisor) ---------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _release_workers(self) -> None:
        idle = [w for w in self._workers if not w.dead and not self._inflight.get(w.pid)]
        for w in self._workers:
            if w not in idle:
                self._kill(w, "killed: its rows were not finished")
        for w in idle:
            self.log.info("worker %d returned to the warm pool", w.pid)
        WORKER_POOL.give_back(idle)
        self._workers = []
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _stop_work(self) -> None:
        for w in self._workers:
            if self._inflight.get(w.pid) or not w.ready:
                self._kill(w, "killed: the batch stopped")
        self._inflight.clear()

    def _kill(self, w: WorkerProcess, why: str) -> None:
        if not w.dead:
            w.kill()
            self.log.info("worker %d %s", w.pid, why)  # we killed it: no exit to explain

    # the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        self._lease_workers()
        while True:
            if self._cancel_requested():
                return self._finish_canceled()
            self._dispatch()
            if self._finished():
                return self._finish()
            self._poll(0.1)
            if self._init_error:
                raise BatchAborted(self._init_error)
            self._check_init_timeout()
            self._check_threshold()
            self._check_row_timeouts()
            if self.committer.due():
                self.committer.commit()

    def _finished(self) -> bool:
        return not self._queue and self._source is None and not any(self._inflight.values())

    # workers ---------------------------------------------------------------------------

    def _lease_workers(self) -> None:
        want = min(self.options.parallel_count, max(1, len(self.committer.pending_indices())))
        self._workers = WORKER_POOL.take_idle(pool_key(self.record, self.options), want)
        for w in self._workers:
            self._inflight[w.pid] = []
            w.leases += 1
            if w.leases == 1:  # started for this batch while its inputs were spooled
                self.log.info("worker %d started (%s)", w.pid, self.options.start_method)
            else:
                self.log.info("worker %d taken from the warm pool", w.pid)
        if self._workers:
            self._mark_in_progress()
        for _ in range(want - len(self._workers)):
            self._spawn()

    def _spawn(self) -> None:
        w = WorkerProcess(pool_key(self.record, self.options), self.options.start_method)
        w.start({"path": str(self.record.path)}, self.options.limits or None)
        w.leases = 1
        self._workers.append(w)
        self._inflight[w.pid] = []
        self.log.info("worker %d started (%s)", w.pid, self.options.start_method)

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

    def _on_message(self, w: WorkerProcess, msg: Message) -> None:
        if isinstance(msg, Ready):  # w.recv() marked it ready
            self.log.info("worker %d ready (init %.3fs)", w.pid, msg.init_seconds)
            self._mark_in_progress()
        elif isinstance(msg, InitError):
            self._init_error = msg.describe()
        elif isinstance(msg, ChunkDone):
            self._on_result(w, msg.chunk_id, msg.result)

    def _on_result(self, w: WorkerProcess, chunk_id: int, payload: ChunkResult) -> None:
        chunks = self._inflight.get(w.pid, [])
        chunk = next((c for c in chunks if c.id == chunk_id), None)
        if chunk is not None:
            chunks.remove(chunk)
            spent = time.monotonic() - chunk.sent
            per_row = spent / max(1, len(chunk.indices))
            self._note_row_seconds(per_row)
        self._unblamed_deaths = 0
        self._count_failures(payload)
        self.committer.add(payload, self._attempts)

    def _check_init_timeout(self) -> None:
        limit = self.options.init_timeout
        now = time.monotonic()
        for w in self._workers:
            if not w.ready and not w.dead and limit and now - w.started_at > limit:
                raise BatchAborted(f"InitTimeout: init did not return within {limit:g}s")

    # deaths and timeouts ------------------------------------------------------------

    def _on_death(self, w: WorkerProcess, reason: str | None = None,
                  current: tuple[int, float] | None = None) -> None:
        current = current or w.current_row()
        w.kill()  # also takes down anything the row started in the worker's group
        chunks = self._inflight.pop(w.pid, [])
        self._workers.remove(w)
        why = reason or describe_exit(w.exitcode)
        self.log.warning("worker %d ended: %s (row %s; %d rows in flight)", w.pid, why,
                         current[0] if current else "-", sum(len(c.indices) for c in chunks))
        charged = self.on_worker_death(chunks, current, why, timed_out=reason is not None)
        if not charged and self._unblamed_limit_reached() and not self._init_error:
            stage = "while starting" if not w.ready else "outside any row"
            self._init_error = (f"init failed: {why} {stage}" if not w.ready else
                                f"workers keep dying {stage}: {why}")
        if self._has_work() and not self._init_error:
            self._spawn()

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

    def _slots(self) -> int:
        return len(self._workers)

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
                    w.send(RunChunk("chunk", chunk.id, chunk.indices, chunk.columns))
                except OSError:
                    self._on_death(w)
                    break


class LocalEngine(Engine):
    """Supervised worker processes on this machine (the default engine)."""

    name = "local"

    def prepare(self, record: ServiceRecord, options: BatchOptions, rows: int | None) -> None:
        # Worker start-up (an interpreter, numpy, the service) overlaps the spooling. A
        # CSV's size is not known yet: starting parallel_count workers for three rows
        # would cost more than it saves.
        if rows is not None:
            WORKER_POOL.prestart(pool_key(record, options), min(options.parallel_count, rows),
                                 options.start_method, options.limits)

    def run(self, ctx: RunContext) -> RunHandle:
        sup = LocalSupervisor(ctx)
        sup.start()
        return sup
