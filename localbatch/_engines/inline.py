"""The inline engine: rows run in the calling thread, one after another, during ``start()``.

The same results, errors, console capture and artifacts as the process engine,
for debugging with breakpoints and the fastest unit tests. There is no crash
isolation: a row that kills its process kills the caller.
"""

from __future__ import annotations

import threading

from .._errors import StoreError
from .._format.chunk import failed_rows
from .._logging import close_execution_logger
from .._store.commit import now_iso
from .._store.registry import ServiceRecord, read_blobs
from .._store.states import ExecutionState
from .._workers.runtime import Runtime
from .base import DoneHandle, Engine, RunContext, RunHandle, input_chunks

__all__ = ["InlineEngine", "clear_inline_runtimes", "inline_runtime"]

_RUNTIMES: dict[str, Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def inline_runtime(record: ServiceRecord, limits: dict[str, int]) -> Runtime:
    """One initialised runtime per revision in this process (init runs once)."""
    key = f"{record.path}|{sorted(limits.items())}"
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(key)
        if runtime is None:
            runtime = Runtime(record.manifest, read_blobs(record.path, record.manifest),
                              limits or None)
            runtime.inline = True
            runtime.initialize()
            _RUNTIMES[key] = runtime
        return runtime


def clear_inline_runtimes() -> None:
    """Forget loaded inline services (``client.close()``): the next use runs init again."""
    with _RUNTIMES_LOCK:
        _RUNTIMES.clear()


class InlineEngine(Engine):
    """Rows in the calling thread, during ``start()``. No crash isolation."""

    name = "inline"
    isolates_rows = False
    chunk_rows = 1000

    def run(self, ctx: RunContext) -> RunHandle:
        committer = ctx.committer
        try:
            self._run(ctx)
        except StoreError as exc:
            committer.set_state(ExecutionState.FAILED, error=f"StoreError: {exc}", resumable=True,
                                ended=now_iso())
        finally:
            ctx.store.drop_inputs(committer.id)  # a later run reads the files
            ctx.lock.release()
            close_execution_logger(ctx.log)
        return DoneHandle(committer.id)

    def _run(self, ctx: RunContext) -> None:
        committer = ctx.committer
        try:
            runtime = inline_runtime(ctx.record, ctx.options.limits)
        except BaseException as exc:  # noqa: B036 - init's SystemExit is an init error
            committer.set_state(ExecutionState.FAILED,
                                error=f"init failed: {type(exc).__name__}: {exc}",
                                resumable=False, ended=now_iso())
            return
        committer.set_state(ExecutionState.IN_PROGRESS, started=now_iso())
        failed = committer.failed_count
        for indices, columns in input_chunks(ctx.store, committer.id, ctx.record.inputs,
                                             committer.recorded):
            for start in range(0, len(indices), self.chunk_rows):
                if ctx.store.cancel_requested(committer.id):
                    committer.commit()
                    committer.set_state(ExecutionState.CANCELED, ended=now_iso(), resumable=False)
                    return
                stop = start + self.chunk_rows
                payload = runtime.run_rows(indices[start:stop],
                                           {k: v[start:stop] for k, v in columns.items()})
                committer.add(payload, {})
                failed += failed_rows(payload)
                limit = ctx.options.error_threshold
                if limit is not None and failed > limit:
                    committer.commit()
                    committer.set_state(ExecutionState.FAILED, resumable=False,
                                        ended=now_iso(), error=(
                                            f"error threshold exceeded: {failed} rows failed "
                                            f"(error_threshold={limit})"))
                    return
                if committer.due():
                    committer.commit()
        committer.commit()
        committer.set_state(ExecutionState.COMPLETE, ended=now_iso())
