"""Engine-level operations on executions, called by the facade.

Submitting (spool, publish, run), reading the effective state (a dead owner
reads as ``Failed``/``Interrupted``, never ``InProgress``), cancel from any
process, ``resume`` and ``retry_failed`` (request-response ``consume`` is in
:mod:`.consume`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .._errors import (
    BatchError,
    ResumeError,
    SchemaError,
    StoreError,
)
from .._logging import close_execution_logger, execution_logger
from .._schema import InputTable
from .._store.commit import Committer, history_entry, now_iso
from .._store.executions import ACTIVE, ExecutionStore, OwnerLock
from .._store.registry import Registry, ServiceRecord
from .._store.results import ResultReader
from .._store.spool import CsvSource, spool_csv, spool_table
from .base import BatchOptions, Engine, RunContext, RunHandle
from .supervisor import RUNNING

__all__ = [
    "HANDLES",
    "cancel_execution",
    "effective_header",
    "resume_execution",
    "retry_failed",
    "submit",
]

#: Run handles of executions started by this process.
HANDLES: dict[str, RunHandle] = {}
TERMINAL = ("Complete", "Failed", "Canceled")


def submit(store: ExecutionStore, record: ServiceRecord, source: InputTable | CsvSource,
           options: BatchOptions, engine: Engine) -> str:
    """Spool the inputs, publish the execution and start it; returns its id."""
    execution_id = store.new_id()
    staging = store.staging(execution_id)
    engine.prepare(record, options, None if isinstance(source, CsvSource) else len(source))
    try:
        if isinstance(source, CsvSource):
            total = spool_csv(source, staging / "inputs")
        else:
            total = spool_table(source, record.inputs, staging / "inputs")
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
        "state": "Pending",
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
    _run(store, record, header, lock, options, engine, load=False)
    return execution_id


def _run(store: ExecutionStore, record: ServiceRecord, header: dict[str, Any], lock: OwnerLock,
         options: BatchOptions, engine: Engine, *, load: bool,
         history: dict[int, str] | None = None) -> Committer:
    execution_id = header["execution_id"]
    log = execution_logger(store.path(execution_id), execution_id)
    committer = Committer(store, execution_id, header, record.outputs, log)
    if load:
        committer.load_recorded()
    if history is not None:
        rows = list(history)
        committer.recorded[rows] = False
        committer.completed_count -= len(rows)
        committer.failed_count -= int(committer.failed[rows].sum())
        committer.failed[rows] = False
        committer.history = history
    log.info("execution %s: %s %s, %d rows, engine %s, parallel_count %d", execution_id,
             record.name, record.version, header["total"], engine.name, options.parallel_count)
    ctx = RunContext(store, record, committer, lock, options, log)
    try:
        HANDLES[execution_id] = engine.run(ctx)
    except BaseException as exc:
        # An engine that cannot even start must not leave the execution owned.
        with contextlib.suppress(StoreError):
            committer.set_state("Failed", error=f"{type(exc).__name__}: {exc}",
                                resumable=True, ended=now_iso())
        lock.release()
        close_execution_logger(log)
        raise
    return committer


def effective_header(store: ExecutionStore, execution_id: str) -> dict[str, Any]:
    """The header as readers must see it: a dead owner never reads as running."""
    header = store.read_header(execution_id)
    if header["state"] in ACTIVE and not store.owner_alive(execution_id):
        header = store.read_header(execution_id)  # the owner may have just finished
        if header["state"] in ACTIVE:
            header.update(state="Failed", resumable=True, interrupted=True,
                          error=f"Interrupted: owner pid {header.get('owner_pid')} died; "
                                "resume()")
    return header


def wait_for(store: ExecutionStore, execution_id: str, timeout: float | None) -> dict[str, Any]:
    """Block until the execution ends or its owner is found dead."""
    handle = HANDLES.get(execution_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while True:
        if handle is not None and handle.done.is_set():
            return effective_header(store, execution_id)
        header = effective_header(store, execution_id)
        if header["state"] in TERMINAL and execution_id not in RUNNING:
            return header
        if deadline is not None and time.monotonic() >= deadline:
            return header
        if handle is not None:
            handle.done.wait(delay)
        else:
            time.sleep(delay)
        delay = min(0.1, delay * 1.5)


def cancel_execution(store: ExecutionStore, execution_id: str, timeout: float = 60.0) -> None:
    handle = HANDLES.get(execution_id)
    if execution_id in RUNNING and handle is not None:
        if not handle.cancel(timeout):
            raise BatchError(f"cancel of {execution_id} not acknowledged within {timeout:g}s")
        return
    header = effective_header(store, execution_id)
    if header["state"] in ("Complete", "Canceled") or (
            header["state"] == "Failed" and not header.get("interrupted")):
        return
    if not header.get("interrupted"):
        store.request_cancel(execution_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            header = effective_header(store, execution_id)
            if header["state"] in TERMINAL and not header.get("interrupted"):
                return
            if header.get("interrupted"):
                break
            time.sleep(0.05)
        else:
            raise BatchError(f"the owner of {execution_id} did not acknowledge the cancel "
                             f"within {timeout:g}s")
    _mark_orphan_canceled(store, execution_id)


def _mark_orphan_canceled(store: ExecutionStore, execution_id: str) -> None:
    lock = store.take_ownership(execution_id)
    if lock is None:
        raise BatchError(f"{execution_id} has a new owner: cancel it again")
    try:
        header = store.read_header(execution_id)
        if header["state"] in ACTIVE:
            header.update(state="Canceled", resumable=False, ended=now_iso(),
                          error="Canceled after its owner died")
            store.write_header(execution_id, header)
    finally:
        lock.release()


def _take(store: ExecutionStore, execution_id: str) -> tuple[OwnerLock, dict[str, Any]]:
    lock = store.take_ownership(execution_id)
    if lock is None:
        header = store.read_header(execution_id)
        raise ResumeError(f"execution {execution_id} is running (owner pid "
                          f"{header.get('owner_pid')}): it cannot be resumed now")
    return lock, store.read_header(execution_id)


def stored_options(header: dict[str, Any], overrides: dict[str, Any]) -> BatchOptions:
    """The options an execution was started with, with the caller's overrides on top."""
    saved = dict(header.get("options") or {})
    saved["parallel_count"] = header.get("parallel_count", 10)
    saved.update(overrides)
    return BatchOptions(**saved).validate()


def resume_execution(store: ExecutionStore, registry: Registry, execution_id: str,
                     overrides: dict[str, Any], engine: Engine, *, force: bool) -> None:
    lock, header = _take(store, execution_id)
    try:
        options = stored_options(header, overrides)
        state = header["state"]
        if state == "Complete":
            lock.release()
            return
        if not force and (state == "Canceled" or (state == "Failed"
                                                  and not header.get("resumable"))):
            raise ResumeError(f"execution {execution_id} is {state} "
                              f"({header.get('error') or 'by request'}): resume(force=True) "
                              "runs its remaining rows anyway")
        record = registry.revision(header["service"], header["version"], header["revision"])
        with_suppress_unlink(store.path(execution_id) / "cancel")
        header.update(state="Pending", error=None, resumable=False, ended=None,
                      owner_pid=os.getpid(), resumed=int(header.get("resumed", 0)) + 1)
        store.write_header(execution_id, header)
        _run(store, record, header, lock, options, engine, load=True)
    except BaseException:
        lock.release()
        raise


def retry_failed(store: ExecutionStore, registry: Registry, execution_id: str,
                 overrides: dict[str, Any], engine: Engine, version: str | None) -> int:
    """Re-run only the rows whose recorded result is an error; returns how many."""
    lock, header = _take(store, execution_id)
    try:
        options = stored_options(header, overrides)
        if header["state"] in ACTIVE:
            raise ResumeError(f"execution {execution_id} was interrupted: resume() it first")
        if version is None:
            record = registry.revision(header["service"], header["version"], header["revision"])
        else:
            record = registry.get(header["service"], version)
            _check_compatible(registry.revision(header["service"], header["version"],
                                                header["revision"]), record)
        reader = ResultReader(store, execution_id, header, record.outputs, record.inputs)
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
                    history[index] = history_entry(row.history, row.error,
                                                   header["version"])
        if not history:
            lock.release()
            return 0
        header.update(state="Pending", error=None, resumable=False, ended=None,
                      owner_pid=os.getpid(), retried_with=record.version)
        store.write_header(execution_id, header)
        _run(store, record, header, lock, options, engine, load=True, history=history)
        return len(history)
    except BaseException:
        lock.release()
        raise


def _check_compatible(old: ServiceRecord, new: ServiceRecord) -> None:
    if [n for n, _ in old.inputs] != [n for n, _ in new.inputs] or \
            [n for n, _ in old.outputs] != [n for n, _ in new.outputs]:
        raise SchemaError(f"version {new.version} of {new.name} has other inputs/outputs "
                          f"than version {old.version}: retry_failed needs the same schema")


def with_suppress_unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(exc.errno, f"cannot clear {path}: {exc}") from exc


def header_json(header: dict[str, Any]) -> str:
    return json.dumps(header, indent=1, default=str)
