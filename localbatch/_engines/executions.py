"""Operations on the executions of one store: the object the facade and the CLI share.

``Executions`` submits (spool, publish, run), reads the effective state, waits,
cancels from any process, ``resume``s and ``retry_failed``s. A client owns one and
hands it to its services and batches; the command line opens one on a store path.

The effective state (:meth:`Executions.header`): ``execution.json`` says what the
owner last wrote; when it says running but no owner holds the lock, the owner's
note in ``owner.lock`` (or, in the owner's own process, its memory) gives the final
state it could not write (a full disk: ``Failed`` with the ``ENOSPC``), and only
without a note does the execution read as ``Failed``/``Interrupted`` (owner died).
A state it does not know raises :class:`StoreCorruptedError`, so no wait hangs on it.

Ownership is exclusive per execution across threads of one process exactly as
across processes (:class:`~localbatch._store.executions.OwnerLock`): a second
``resume()`` is refused before it writes anything, so no poll sees its failure.

A batch pins its service revision at submit: the revision's files are hard-linked
into ``revision/`` of the execution before anything else, so a ``delete_service``
racing ``start()`` either fails the start with :class:`ServiceNotFoundError`
naming the service (it was gone first) or leaves the run its own copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .._errors import (
    BatchError,
    ResumeError,
    SchemaError,
    ServiceNotFoundError,
    StoreCorruptedError,
    StoreError,
)
from .._logging import close_execution_logger, execution_logger
from .._store.commit import FINAL_FIELDS, Committer, history_entry, now_iso
from .._store.executions import ExecutionStore, OwnerLock
from .._store.fsutil import read_json, unlink_if_present
from .._store.keys import label_start, rows_hint, spool_source
from .._store.registry import Registry, ServiceRecord
from .._store.results import ResultReader
from .._store.states import (
    ACTIVE,
    TERMINAL,
    ExecutionState,
    damaged_header,
    resumes_only_forced,
)
from .._store.timing import carry_run_time
from .base import RUNS, BatchOptions, Engine, RunContext, RunHandle
from .consume import consume
from .registry import get_engine

__all__ = ["Executions", "TERMINAL", "stored_options"]

#: Every state an execution.json may hold; anything else is a corrupt header.


class Executions:
    """The executions of one store, run with a default engine and start method."""

    def __init__(self, store: ExecutionStore, registry: Registry, engine: Any = None,
                 start_method: str = "spawn") -> None:
        self.store = store
        self.registry = registry
        #: The engine a batch runs on unless it names its own (resolved once).
        self.engine = get_engine(engine)
        self.start_method = start_method

    @classmethod
    def open(cls, path: Path) -> Executions:
        """The executions of the store at ``path`` (the command line's way in)."""
        return cls(ExecutionStore(path), Registry(path))

    # reading -------------------------------------------------------------------------

    def header(self, execution_id: str) -> dict[str, Any]:
        """The header as readers must see it: a dead owner never reads as running, an
        owner that could not write its final state reads as that state."""
        store = self.store
        header = store.read_header(execution_id)
        if header["state"] in ACTIVE and not store.owner_alive(execution_id):
            header = store.read_header(execution_id)  # the owner may have just finished
            if header["state"] in ACTIVE:
                final = self._final_note(execution_id, header)
                if final is not None:
                    header.update(final)
                else:
                    header.update(state=ExecutionState.FAILED, resumable=True,
                                  interrupted=True,
                                  error=f"Interrupted: owner pid {header.get('owner_pid')} "
                                        "died; resume()")
        return header

    def _final_note(self, execution_id: str, header: dict[str, Any]) -> dict[str, Any] | None:
        """The final state the last owner noted but could not write into the header."""
        note = OwnerLock.read_note(self.store.path(execution_id) / "owner.lock")
        if note is None:
            # The note could not be written either: this process's own run remembers.
            handle = RUNS.get(execution_id)
            mine = handle.committer if handle is not None and handle.done.is_set() else None
            if (mine is not None and header.get("owner_pid") == os.getpid()
                    and mine.header.get("resumed") == header.get("resumed")):
                note = {k: mine.header.get(k) for k in FINAL_FIELDS}
        if note is None or note.get("state") not in TERMINAL:
            return None
        return {k: note[k] for k in FINAL_FIELDS if k in note}

    def headers(self) -> list[dict[str, Any]]:
        """Every execution's effective header (a damaged one as ``damaged_header``)."""
        out = []
        for execution_id in self.store.list_ids():
            try:
                out.append(self.header(execution_id))
            except StoreCorruptedError as exc:  # listed as damaged, the rest still listed
                out.append(damaged_header(execution_id, exc, self.store.created_of(execution_id)))
            except (LookupError, OSError):
                continue
        return out

    def listing(self, name: str | None = None, version: str | None = None
             ) -> list[dict[str, Any]]:
        """The executions of a service (and version), or all of them; oldest first."""
        headers = [h for h in self.headers() if (name is None or h["service"] == name)
                   and (version is None or h["version"] == version)]
        return sorted(headers, key=lambda h: h.get("created") or "")

    def reader(self, execution_id: str, header: dict[str, Any], record: ServiceRecord | None
               ) -> ResultReader:
        """The recorded rows of an execution (``record=None``: which rows, no values)."""
        if record is None:
            return ResultReader(self.store, execution_id, header, [], [])
        return ResultReader(self.store, execution_id, header, record.outputs, record.inputs)

    def run(self, execution_id: str) -> RunHandle | None:
        """This process's run of the execution (running or ended), if it started one."""
        return RUNS.get(execution_id)

    def wait(self, execution_id: str, timeout: float | None) -> dict[str, Any]:
        """Block until the execution ends or its owner is found dead."""
        handle = RUNS.get(execution_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            if handle is not None and handle.done.is_set():
                return self.header(execution_id)
            header = self.header(execution_id)
            if header["state"] in TERMINAL and not RUNS.owns(execution_id):
                return header
            if deadline is not None and time.monotonic() >= deadline:
                return header
            if handle is not None:
                handle.done.wait(delay)
            else:
                time.sleep(delay)
            delay = min(0.1, delay * 1.5)

    def pause(self, execution_id: str, seconds: float) -> None:
        """Sleep, waking at once when this process's run of the execution ends."""
        handle = RUNS.get(execution_id)
        if handle is not None:
            handle.done.wait(seconds)
        else:
            time.sleep(seconds)

    # running -------------------------------------------------------------------------

    def submit(self, record: ServiceRecord, source: Any,
               options: BatchOptions, engine: Engine | None = None) -> str:
        """Spool the inputs, publish the execution and start it; returns its id."""
        engine = engine or self.engine
        store = self.store
        execution_id = store.new_id()
        # Two pins with two jobs: pin.json makes delete_service keep the registry's
        # revision while this batch starts (the warm workers load it from there); the
        # hard-linked copy lets resume() and retry_failed() run after a delete.
        staging = store.staging(execution_id, pin=record)
        kept: dict[str, bytes] = {}
        try:
            _pin_revision(record, staging / "revision")
            engine.prepare(record, options, rows_hint(source))
            total = spool_source(source, record.inputs, staging, kept)
        except BaseException:
            store.discard_staging(staging)
            raise
        header = {
            "execution_id": execution_id,
            "service": record.name,
            "version": record.version,
            "revision": record.revision,
            "total": total,
            "parallel_count": options.parallel_count,
            "engine": engine.name,
            "options": options.to_json(),
            "keep": list(getattr(source, "keep", None) or []),
            "label_start": label_start(source),
            "state": ExecutionState.PENDING,
            "completed": 0,
            "failed": 0,
            "error": None,
            "resumable": False,
            "created": now_iso(),
            "started": None,
            "ended": None,
            "owner_pid": os.getpid(),
        }
        lock = store.publish(staging, header)
        store.keep_inputs(execution_id, kept)  # the run below reads them from memory
        self._run(record, header, lock, options, engine, load=False)
        return execution_id

    def _pinned(self, record: ServiceRecord, execution_id: str) -> ServiceRecord:
        """``record``, or the execution's pinned copy of it once the registry lost it."""
        if (record.path / "manifest.json").is_file():
            return record
        pinned = self.store.path(execution_id) / "revision"
        if not (pinned / "manifest.json").is_file():
            raise ServiceNotFoundError(_deleted(record))
        return ServiceRecord(pinned, record.manifest)

    def _revision(self, header: dict[str, Any]) -> ServiceRecord:
        """The revision an execution ran (the registry's, else the execution's pin)."""
        try:
            return self.registry.revision(header["service"], header["version"],
                                          header["revision"])
        except ServiceNotFoundError:
            pinned = self.store.path(header["execution_id"]) / "revision"
            try:
                return ServiceRecord(pinned, read_json(pinned / "manifest.json"))
            except FileNotFoundError:
                raise ServiceNotFoundError(
                    f"service {header['service']!r} version {header['version']!r} "
                    f"(revision {header['revision']}) was deleted, and execution "
                    f"{header['execution_id']} has no pinned copy of it") from None

    def _run(self, record: ServiceRecord, header: dict[str, Any], lock: OwnerLock,
             options: BatchOptions, engine: Engine, *, load: bool,
             history: dict[int, str] | None = None) -> None:
        store = self.store
        execution_id = header["execution_id"]
        log = execution_logger(store.path(execution_id), execution_id)
        committer = Committer(store, execution_id, header, record.outputs, log)
        committer.on_unwritten = lock.write_note
        if load:
            committer.load_recorded()
        if history is not None:
            committer.reopen(history)
        log.info("execution %s: %s %s, %d rows, engine %s, parallel_count %d", execution_id,
                 record.name, record.version, header["total"], engine.name,
                 options.parallel_count)
        try:
            ctx = RunContext(store, self._pinned(record, execution_id), committer, lock,
                             options, log)
            RUNS.add(engine.run(ctx))
        except BaseException as exc:
            # An engine that cannot even start must not leave the execution owned.
            with contextlib.suppress(StoreError):
                committer.set_state(ExecutionState.FAILED, error=f"{type(exc).__name__}: {exc}",
                                    resumable=True, ended=now_iso())
            store.drop_inputs(execution_id)
            lock.release()
            close_execution_logger(log)
            raise

    def cancel(self, execution_id: str, timeout: float = 60.0) -> None:
        """Cancel from any process; on return no row of it runs or will start."""
        handle = RUNS.get(execution_id)
        if handle is not None and RUNS.owns(execution_id):
            if not handle.cancel(timeout):
                raise BatchError(f"cancel of {execution_id} not acknowledged within "
                                 f"{timeout:g}s")
            return
        header = self.header(execution_id)
        if header["state"] in (ExecutionState.COMPLETE, ExecutionState.CANCELED) or (
                header["state"] == ExecutionState.FAILED and not header.get("interrupted")):
            return
        if not header.get("interrupted"):
            self.store.request_cancel(execution_id)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                header = self.header(execution_id)
                if header["state"] in TERMINAL and not header.get("interrupted"):
                    return
                if header.get("interrupted"):
                    break
                time.sleep(0.05)
            else:
                raise BatchError(f"the owner of {execution_id} did not acknowledge the "
                                 f"cancel within {timeout:g}s")
        self._mark_orphan_canceled(execution_id)

    def _mark_orphan_canceled(self, execution_id: str) -> None:
        lock = self.store.take_ownership(execution_id)
        if lock is None:
            raise BatchError(f"{execution_id} has a new owner: cancel it again")
        try:
            header = self.store.read_header(execution_id)
            if header["state"] in ACTIVE:
                header.update(state=ExecutionState.CANCELED, resumable=False, ended=now_iso(),
                              error="Canceled after its owner died")
                self.store.write_header(execution_id, header)
        finally:
            lock.release()

    def _take(self, execution_id: str) -> tuple[OwnerLock, dict[str, Any]]:
        lock = self.store.take_ownership(execution_id)
        if lock is None:
            header = self.store.read_header(execution_id)
            raise ResumeError(f"execution {execution_id} is running (owner pid "
                              f"{header.get('owner_pid')}): it cannot be resumed now")
        return lock, self.store.read_header(execution_id)

    def resume(self, execution_id: str, overrides: dict[str, Any],
               engine: Engine | None = None, *, force: bool = False) -> None:
        """Run the rows without a record, with the stored options under ``overrides``."""
        lock, header = self._take(execution_id)
        try:
            options = stored_options(header, overrides)
            state = header["state"]
            if state == ExecutionState.COMPLETE:
                lock.release()
                return
            if not force and resumes_only_forced(header):
                raise ResumeError(f"execution {execution_id} is {state} "
                                  f"({header.get('error') or 'by request'}): "
                                  "resume(force=True) runs its remaining rows anyway")
            record = self._revision(header)
            unlink_if_present(self.store.path(execution_id) / "cancel")
            carry_run_time(header)
            header.update(state=ExecutionState.PENDING, error=None, resumable=False, ended=None,
                          owner_pid=os.getpid(), resumed=int(header.get("resumed", 0)) + 1)
            self.store.write_header(execution_id, header)
            self._run(record, header, lock, options, engine or self.engine, load=True)
        except BaseException:
            lock.release()
            raise

    def retry_failed(self, execution_id: str, overrides: dict[str, Any],
                     engine: Engine | None = None, version: str | None = None) -> int:
        """Re-run only the rows whose recorded result is an error; returns how many."""
        lock, header = self._take(execution_id)
        try:
            options = stored_options(header, overrides)
            if header["state"] in ACTIVE:
                raise ResumeError(f"execution {execution_id} was interrupted: resume() it "
                                  "first")
            record = self._retry_record(header, version)
            history = self._failed_history(execution_id, header, record)
            if not history:
                lock.release()
                return 0
            carry_run_time(header)
            header.update(state=ExecutionState.PENDING, error=None, resumable=False, ended=None,
                          owner_pid=os.getpid(), retried_with=record.version)
            self.store.write_header(execution_id, header)
            self._run(record, header, lock, options, engine or self.engine, load=True,
                      history=history)
            return len(history)
        except BaseException:
            lock.release()
            raise

    def _retry_record(self, header: dict[str, Any], version: str | None) -> ServiceRecord:
        ran = self._revision(header)
        if version is None:
            return ran
        record = self.registry.get(header["service"], version)
        _check_compatible(ran, record)
        return record

    def _failed_history(self, execution_id: str, header: dict[str, Any],
                        record: ServiceRecord) -> dict[int, str]:
        """The failed rows, each with its history entry; every row must have run."""
        reader = self.reader(execution_id, header, record)
        never_ran = int(header["total"]) - int((reader.row_map.part_of >= 0).sum())
        if never_ran:
            raise ResumeError(f"execution {execution_id} has {never_ran} rows that never ran: "
                              "resume(force=True) runs them; retry_failed() re-runs failed "
                              "rows only")
        history: dict[int, str] = {}
        for index in range(int(header["total"])):
            if reader.recorded(index):
                row = reader.row(index)
                if row.error_type is not None:
                    history[index] = history_entry(row.history, row.error, header["version"])
        return history

    # request-response ---------------------------------------------------------------

    def consume(self, record: ServiceRecord, values: dict[str, Any]) -> dict[str, Any]:
        """One call of a service in a warm worker (here, for an inline engine)."""
        return consume(record, values, start_method=self.start_method, engine=self.engine)


def _deleted(record: ServiceRecord) -> str:
    return (f"service {record.name!r} version {record.version!r} was deleted "
            f"(revision {record.revision} is gone): the batch cannot start")


def _pin_revision(record: ServiceRecord, pin: Path) -> None:
    """Hard-link the revision's files into the execution (no copy, no space): they
    outlive a ``delete_service``. Where links are not possible (another file system,
    a policy), the execution runs unpinned: published executions keep their revision
    in the registry anyway."""
    try:
        _link_tree(record.path, pin)
    except FileNotFoundError:
        shutil.rmtree(pin, ignore_errors=True)
        raise ServiceNotFoundError(_deleted(record)) from None
    except OSError:
        shutil.rmtree(pin, ignore_errors=True)
        if not (record.path / "manifest.json").is_file():
            raise ServiceNotFoundError(_deleted(record)) from None


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a tree of hard links to ``src``'s files (a vanished one raises)."""
    dst.mkdir(mode=0o700)
    with os.scandir(src) as entries:  # closed even when a file vanishes mid-walk
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _link_tree(Path(entry.path), dst / entry.name)
            elif entry.is_file(follow_symlinks=False):
                os.link(entry.path, dst / entry.name, follow_symlinks=False)


def stored_options(header: dict[str, Any], overrides: dict[str, Any]) -> BatchOptions:
    """The options an execution was started with, with the caller's overrides on top."""
    saved = dict(header.get("options") or {})
    saved["parallel_count"] = header.get("parallel_count", 10)
    saved.update(overrides)
    return BatchOptions(**saved).validate()


def _check_compatible(old: ServiceRecord, new: ServiceRecord) -> None:
    if [n for n, _ in old.inputs] != [n for n, _ in new.inputs] or \
            [n for n, _ in old.outputs] != [n for n, _ in new.outputs]:
        raise SchemaError(f"version {new.version} of {new.name} has other inputs/outputs "
                          f"than version {old.version}: retry_failed needs the same schema")
