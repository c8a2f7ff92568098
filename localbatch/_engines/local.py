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

Workers start as the work needs them, ``parallel_count`` being a cap (the SDK's
"number of concurrent threads"): a batch leases the idle workers it can use
(no more than its chunks), else starts one; it adds one while a chunk waits and
every worker has its fill (``IN_FLIGHT`` chunks), doubling at most per round of
starts. Beyond one worker per core it adds only while the workers leave their
cores idle (rows that wait on I/O): a worker's run time plus its run-queue wait
(``/proc/<pid>/schedstat``) over wall time says whether it wants a whole core,
even on a machine others load too. A worker that exits cleanly while idle
(*retired*: it could not undo what a row did) is replaced; its unstarted chunks
go again and nothing is charged.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from .._format.chunk import ChunkResult
from .._store.registry import ServiceRecord
from .._workers.isolation import RETIRED_EXIT
from .._workers.pool import WORKER_POOL, start_worker, warm_template
from .._workers.process import WorkerProcess, describe_exit
from .._workers.protocol import ChunkDone, InitError, Message, Ready, RunChunk
from .base import BatchOptions, Chunk, Engine, RunContext, RunHandle
from .supervisor import BatchAborted, Supervisor, register_exit_wait

__all__ = ["LocalEngine", "LocalSupervisor", "pool_key", "warm"]

IN_FLIGHT = 2  # chunks queued per worker, so it never waits for the next one
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
#: A worker busy (running or runnable) this share of its wall time wants a whole core.
CPU_BOUND = 0.6
#: The shortest window the busy share is measured over.
BUSY_WINDOW = 0.2
#: A worker whose current chunk has run this long is busy: more would help the rows that
#: wait (a forked worker starts in ~12 ms; rows that finish sooner need no other worker).
BUSY_AFTER = 0.05
#: A vectorised service's first chunk (one call of an OLS predict: ~10 ms).
VECTOR_FIRST_CHUNK = 10_000

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
        #: Per worker pid: (monotonic time, schedstat busy ns) at the last look.
        self._sched: dict[int, tuple[float, int]] = {}
        self._cpu_bound: bool | None = None

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
            self._grow()
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
        """Idle warm workers, as many as the chunks can use; else one new one."""
        chunks = -(-len(self.committer.pending_indices()) // self.first_chunk)
        want = min(self.options.parallel_count, max(1, chunks))
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
        else:
            self._spawn()

    def _spawn(self) -> None:
        w = start_worker(pool_key(self.record, self.options), self.options.start_method,
                         {"path": str(self.record.path)}, self.options.limits)
        w.leases = 1
        self._workers.append(w)
        self._inflight[w.pid] = []
        self.log.info("worker %d started (%s)", w.pid, self.options.start_method)

    def _grow(self) -> None:
        """One more worker while a chunk waits and every worker has its fill."""
        n = len(self._workers)
        if n >= self.options.parallel_count or self._init_error:
            return
        starting = sum(1 for w in self._workers if not w.ready)
        if starting >= max(1, n - starting):
            return  # at most doubling per round of starts
        now = time.monotonic()
        if self._seconds_ahead() < BUSY_AFTER and any(
                len(self._inflight.get(w.pid, [])) < self._depth()
                or now - self._inflight[w.pid][0].sent < BUSY_AFTER
                for w in self._workers if w.ready):
            return
        if not self._work_waiting():
            return
        if n >= CORES and self._wants_cores():
            return  # CPU-bound rows: another worker would only share the cores
        self._spawn()

    def _seconds_ahead(self) -> float:
        """The work not done yet, in seconds of each ready worker (0 until a row's time
        is known): a worker starts when it has more to do than a start costs, not only
        once a chunk has run that long (1M fast rows: the second worker ~50 ms sooner)."""
        ready = sum(1 for w in self._workers if w.ready)
        if self._row_seconds is None or not ready:
            return 0.0
        left = self.committer.total - self.committer.completed_count - \
            self.committer.buffered_rows
        return max(0, left) * self._row_seconds / ready

    def _work_waiting(self) -> bool:
        """Whether rows wait for a worker (reads the next input part if need be)."""
        if self._queue:
            return True
        while self._source is not None:
            if self._source_rows is not None and self._source_pos < len(self._source_rows[0]):
                return True
            self._source_rows, self._source_pos = next(self._source, None), 0
            if self._source_rows is None:
                self._source = None
        return False

    def _wants_cores(self) -> bool:
        """Whether the busy workers use whole cores (measured over >= BUSY_WINDOW s;
        until then, assumed)."""
        now = time.monotonic()
        busy = wall = 0.0
        for w in self._workers:
            if not w.ready or not self._inflight.get(w.pid):
                continue
            ns = _busy_ns(w.pid)
            last = self._sched.get(w.pid)
            if ns is None:
                continue
            if last is None:
                self._sched[w.pid] = (now, ns)
            elif now - last[0] >= BUSY_WINDOW:
                busy += (ns - last[1]) / 1e9
                wall += now - last[0]
                self._sched[w.pid] = (now, ns)
        if wall:
            self._cpu_bound = busy / wall >= CPU_BOUND
        return True if self._cpu_bound is None else self._cpu_bound

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
            self._note_row_seconds(_work_seconds(payload, chunk) / max(1, len(chunk.indices)))
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
        self._sched.pop(w.pid, None)
        if reason is None and current is None and w.ready and (
                w.retiring is not None or w.exitcode in (0, RETIRED_EXIT)):
            return self._on_retired(w, chunks)
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

    def _on_retired(self, w: WorkerProcess, chunks: list[Chunk]) -> None:
        """A worker that exited cleanly between rows: its unstarted chunks go again,
        uncharged, and a fresh worker takes its place."""
        self.log.info("worker %d retired (%d rows not started go again)", w.pid,
                      sum(len(c.indices) for c in chunks))
        self._requeue(chunks, skip=None)
        if self._has_work() and not self._init_error and not self._workers:
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
        """The workers a fair share is for: those running, and at least as many as the
        batch may grow to for CPU-bound rows (a small batch of slow rows otherwise goes
        to its first worker in two chunks, and no row waits for a second one)."""
        return max(len(self._workers), min(self.options.parallel_count, CORES))

    def _chunk_size(self) -> int:
        if self._row_seconds is None and self.record.manifest.get("vectorized"):
            # A vectorised call costs milliseconds whatever its size: a first chunk
            # of 8 rows would time the call, not the rows, and keep chunks small.
            remaining = self.committer.total - self.committer.completed_count
            return max(1, min(VECTOR_FIRST_CHUNK, -(-remaining // (2 * max(1, self._slots())))))
        return super()._chunk_size()

    def _depth(self) -> int:
        """Chunks sent ahead to a worker: none until a row's time is known, for a chunk
        sent ahead is locked into that worker's pipeline, where a new worker cannot
        reach its rows (a few slow rows would otherwise run one after the other)."""
        return IN_FLIGHT if self._row_seconds is not None else 1

    def _dispatch(self) -> None:
        for w in list(self._workers):
            if not w.ready or w.dead:
                continue
            chunks = self._inflight.setdefault(w.pid, [])
            while len(chunks) < self._depth():
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


def warm(record: ServiceRecord, start_method: str) -> None:
    """Have the warm template load a service ahead of its first worker (deploy,
    get_service); nothing for spawned workers, which load it themselves."""
    if start_method == "forkserver":
        warm_template({"path": str(record.path)})


def _work_seconds(payload: ChunkResult, chunk: Chunk) -> float:
    """How long the worker spent on a chunk: its first row's start to its last row's end.

    Not the time since it was sent: a pipelined chunk waits for the one before it,
    and counting that wait would halve the chunks it sizes.
    """
    started, ended = payload.get("started"), payload.get("ended")
    if started is not None and ended is not None and len(started) and len(ended):
        spent = float(np.max(ended) - np.min(started))
        if spent >= 0:
            return spent
    return time.monotonic() - chunk.sent


def _busy_ns(pid: int) -> int | None:
    """Nanoseconds a process's main thread has run or waited to run (Linux), else None."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as fh:
            run, wait, _ = fh.read().split()
    except (OSError, ValueError):
        return None
    return int(run) + int(wait)


class LocalEngine(Engine):
    """Supervised worker processes on this machine (the default engine)."""

    name = "local"

    def prepare(self, record: ServiceRecord, options: BatchOptions, rows: int | None) -> None:
        # The first worker's start-up overlaps the spooling: the template loads the
        # service (start() does not wait for it: the supervisor's first fork does), or
        # an interpreter starts. More start as the work shows it needs them.
        if options.start_method == "forkserver":
            warm(record, options.start_method)
        elif rows:  # a CSV's size is not known yet
            WORKER_POOL.prestart(pool_key(record, options), 1, options.start_method,
                                 options.limits)

    def run(self, ctx: RunContext) -> RunHandle:
        sup = LocalSupervisor(ctx)
        sup.start()
        return sup
