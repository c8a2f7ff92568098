"""The single writer of one execution: buffers row results and commits parts.

Used by every engine (local processes, inline, Dask), so the commit protocol
is written once: artifacts first, then the part (published by an exclusive
link, which is the moment its rows become recorded), then the header with
counters derived from what was published.

A failed step leaves nothing half-written: a part is written under a temporary
name that is removed on failure, and a row's artifacts folder that could not be
written in full is removed here (the rows stay without a record, and run again
at ``resume()``). When the final state cannot be written into ``execution.json``
(a full disk), :attr:`Committer.on_unwritten` records it elsewhere: the owner
notes it in its pre-allocated ``owner.lock`` (see ``OwnerLock.write_note``).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import StoreError
from .._format.buffers import missing_strings, same
from .._format.chunk import per_row
from .._format.columns import Column, concat_columns, encode_column, kind_for_encoding
from .executions import ExecutionStore
from .states import TERMINAL, ExecutionHeader, ExecutionState

__all__ = ["FINAL_FIELDS", "Committer", "PART_INTERVAL", "PART_ROWS", "PART_SECONDS",
           "history_entry", "now_iso"]

#: The fields of a final state an owner notes when execution.json cannot be rewritten.
FINAL_FIELDS = ("state", "error", "resumable", "ended", "completed", "failed", "updated")
#: A part is committed per ~1,000 rows or ~2 s, whichever comes first, but no sooner
#: than PART_INTERVAL after the last one: a part costs its file (on the 2-core benchmark
#: VM, creating one took 0.3-0.7 ms of CPU), and a fast batch (1M trivial rows) finished
#: ~1,000 rows every 0.5 ms, ~90 parts. Rows are then recorded within ~50 ms of their
#: end, and an owner that dies loses no more than that much work to run again.
PART_ROWS = 1000
PART_SECONDS = 2.0
PART_INTERVAL = 0.05
#: Counters in execution.json trail the published parts by at most this much; the
#: final state always carries the exact counts (a fast batch publishes hundreds of
#: parts a second, and rewriting the header after each one cost as much as the part).
HEADER_SECONDS = 0.2


def now_iso() -> str:
    import datetime as dt

    return dt.datetime.now().isoformat(timespec="microseconds")


class Committer:
    """Owns ``execution.json`` and the result parts of one execution."""

    def __init__(self, store: ExecutionStore, execution_id: str, header: ExecutionHeader,
                 outputs: list[tuple[str, Any]], log: logging.Logger) -> None:
        self.store = store
        self.id = execution_id
        self.header = header
        self.log = log
        self.total = int(header["total"])
        self._kinds = [(name, kind_for_encoding(enc.value)) for name, enc in outputs]
        self._buffer: list[dict[str, Any]] = []
        self._buffered_rows = 0
        self._first_buffered = 0.0
        self._committed = 0.0  # when commit() last ran
        self._seq = store.next_part_seq(execution_id)  # parts moved aside keep their number
        self.recorded = np.zeros(self.total, np.bool_)
        self.failed = np.zeros(self.total, np.bool_)
        self.completed_count = 0
        self.failed_count = 0
        #: Previous errors of rows being retried (``retry_failed``), kept in their record.
        self.history: dict[int, str] | None = None
        self._header_written = 0.0
        #: Called with the final state when ``execution.json`` cannot take it.
        self.on_unwritten: Callable[[dict[str, Any]], Any] | None = None

    # state -------------------------------------------------------------------

    def load_recorded(self) -> None:
        """Rebuild counters from published parts (resume, retry)."""
        row_map = self.store.row_map(self.id, self.total)
        for k, name in enumerate(row_map.parts):
            part = self.store.read_part(self.id, name)
            index = part.column("index").buffers["values"]
            latest = row_map.part_of[index] == k
            errs = part.column("error_type").buffers["mask"]
            self.recorded[index[latest]] = True
            self.failed[index[latest]] = ~errs[latest]
        self.completed_count = int(self.recorded.sum())
        self.failed_count = int(self.failed.sum())

    def set_state(self, state: ExecutionState, **fields: Any) -> None:
        self.header.update(state=state, **fields)
        try:
            self.write_header()
        except StoreError:
            if state in TERMINAL and self.on_unwritten is not None:
                self.on_unwritten({k: self.header.get(k) for k in FINAL_FIELDS})
            raise

    def write_header(self) -> None:
        self.header.update(completed=self.completed_count, failed=self.failed_count,
                           updated=now_iso())
        self._header_written = time.monotonic()
        try:
            self.store.write_header(self.id, self.header)
        except StoreError:
            raise
        except OSError as exc:
            raise StoreError(exc.errno or 5, f"cannot write execution.json: {exc}") from exc

    def pending_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.recorded)

    def reopen(self, history: dict[int, str]) -> None:
        """Count recorded rows to run again as pending (``retry_failed``), keeping the
        history entry each one carries into its new record."""
        rows = list(history)
        self.recorded[rows] = False
        self.completed_count -= len(rows)
        self.failed_count -= int(self.failed[rows].sum())
        self.failed[rows] = False
        self.history = history

    # buffering ---------------------------------------------------------------

    def add(self, payload: dict[str, Any], attempts: dict[int, int]) -> None:
        """Buffer a chunk result from a worker (see ``Runtime.run_rows``)."""
        index = payload["index"]
        payload["attempts"] = (
            np.fromiter((attempts.get(int(i), 0) + 1 for i in index), np.int64, len(index))
            if attempts else np.ones(len(index), np.int64))
        self._push(payload)

    def add_failure(self, index: int, error_type: str, message: str, attempts: int,
                    pid: int = 0, started: float = 0.0) -> None:
        """Record a row the engine failed itself (worker died, row timed out)."""
        now = time.time()
        payload = {
            "index": [index], "started": [started or now], "ended": [now],
            "errors": [(error_type, message, "")], "console": [None],
            "outputs": {name: encode_column(kind, [None]) for name, kind in self._kinds},
            "artifacts": {}, "pid": pid, "attempts": [attempts],
        }
        self._push(payload)

    def _push(self, payload: dict[str, Any]) -> None:
        if self.history:
            payload["history"] = [self.history.get(i) for i in payload["index"]]
        if not self._buffer:
            self._first_buffered = time.monotonic()
        self._buffer.append(payload)
        self._buffered_rows += len(payload["index"])

    @property
    def buffered_rows(self) -> int:
        return self._buffered_rows

    def due(self) -> bool:
        if not self._buffer:
            return False
        now = time.monotonic()
        return (self._buffered_rows >= PART_ROWS and now - self._committed >= PART_INTERVAL
                or now - self._first_buffered >= PART_SECONDS)

    # committing --------------------------------------------------------------

    def commit(self) -> int:
        """Publish everything buffered (one part, or one per run of rows that follow on:
        see :func:`_parts_of`); returns the rows committed."""
        if not self._buffer:
            return 0
        batch, self._buffer, self._buffered_rows = self._buffer, [], 0
        self._committed = time.monotonic()
        committed = sum(self._publish(chunks) for chunks in _parts_of(batch))
        if time.monotonic() - self._header_written >= HEADER_SECONDS:
            self.write_header()
        return committed

    def _publish(self, batch: list[dict[str, Any]]) -> int:
        """Write chunk results as one part (their artifacts first) and count its rows."""
        for payload in batch:
            for index, files in payload["artifacts"].items():
                if files:
                    self._write_artifacts(index, files)
        columns, index = self._columns(batch)
        try:
            self.store.write_part(self.store.path(self.id) / "results", self._seq, columns,
                                  len(index))
        except StoreError:
            raise
        except OSError as exc:
            raise StoreError(exc.errno or 5, f"cannot commit part: {exc}") from exc
        self._seq += 1
        errs = ~columns["error_type"].buffers["mask"]
        newly = ~self.recorded[index]
        self.completed_count += int(newly.sum())
        self.failed_count += int(errs.sum()) - int(self.failed[index].sum())
        self.recorded[index] = True
        self.failed[index] = errs
        return len(index)

    def _write_artifacts(self, index: int, files: dict[str, bytes]) -> None:
        try:
            self.store.write_artifacts(self.id, index, files)
        except OSError as exc:
            self._drop_partial_artifacts(index)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(exc.errno or 5,
                             f"cannot write artifacts of row {index}: {exc}") from exc

    def _drop_partial_artifacts(self, index: int) -> None:
        """Remove the temporary folder of a row's artifacts that failed half-way."""
        folder = self.store.artifact_dir(self.id, index).parent
        for tmp in folder.glob(f".tmp-{index}-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def _columns(self, batch: list[dict[str, Any]]) -> tuple[dict[str, Column], np.ndarray]:
        index = _concat(batch, "index", np.int64)
        n = len(index)
        pids = (same(np.int64(batch[0]["pid"]), n) if len({p["pid"] for p in batch}) == 1
                else np.concatenate([np.full(len(p["index"]), p["pid"], np.int64)
                                     for p in batch]))
        missing = Column("str", {}, missing_strings(n))  # no list of n Nones to scan
        if all(p["errors"] is None for p in batch):
            # The common case: no row failed; the three error columns are all missing.
            etype = emsg = etb = missing
        else:
            errors = _flat(batch, "errors")
            etype, emsg, etb = (encode_column("str", [e and e[k] for e in errors])
                                for k in range(3))
        history = (encode_column("str", _flat(batch, "history"))
                   if any("history" in p for p in batch) else missing)
        console = (missing if all(p["console"] is None for p in batch)
                   else encode_column("str", _flat(batch, "console")))
        columns: dict[str, Column] = {
            "index": Column("int", {}, {"values": index, "mask": same(np.False_, n)}),
            "attempts": encode_column("int", _concat(batch, "attempts", np.int64)),
            "worker_pid": Column("int", {}, {"values": pids, "mask": same(np.False_, n)}),
            "started": encode_column("float", _concat(batch, "started", np.float64)),
            "ended": encode_column("float", _concat(batch, "ended", np.float64)),
            "error_type": etype,
            "error_message": emsg,
            "traceback": etb,
            "console": console,
            "history": history,
        }
        for name, _ in self._kinds:
            columns[f"out.{name}"] = concat_columns([p["outputs"][name] for p in batch])
        return columns, index


def _parts_of(batch: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The buffered chunk results as the parts to write.

    In row order when their rows do not interleave, one part per run of chunks whose
    rows follow on when every run has ``PART_ROWS`` rows (a fast batch: each part's row
    numbers are then one range, its start times step by a few ulps, and a reader maps
    rows to parts without a per-row table); else one part. Interleaving chunks are kept
    as they came, in one part: a row with two records keeps its later one later."""
    if len(batch) < 2:
        return [batch]
    spans = sorted((int(np.min(p["index"])), int(np.max(p["index"])), k)
                   for k, p in enumerate(batch))
    if any(a[1] >= b[0] for a, b in zip(spans, spans[1:], strict=False)):
        return [batch]
    runs = [[spans[0]]]
    for prev, span in zip(spans, spans[1:], strict=False):
        if span[0] == prev[1] + 1:
            runs[-1].append(span)
        else:
            runs.append([span])
    if min(sum(len(batch[k]["index"]) for _, _, k in run) for run in runs) < PART_ROWS:
        return [[batch[k] for _, _, k in spans]]
    return [[batch[k] for _, _, k in run] for run in runs]


def _concat(batch: list[dict[str, Any]], key: str, dtype: Any) -> np.ndarray:
    """A numeric per-row field (a list or an array per chunk) as one array."""
    return np.concatenate([np.asarray(p[key], dtype) for p in batch])


def _flat(batch: list[dict[str, Any]], key: str) -> list[Any]:
    """One list of a per-row field across the buffered chunk results."""
    return list(itertools.chain.from_iterable(per_row(p, key) for p in batch))


def history_entry(previous: list[Any] | None, error: str, version: str) -> str:
    items = list(previous or [])
    items.append({"error": error, "version": version, "at": now_iso()})
    return json.dumps(items)
