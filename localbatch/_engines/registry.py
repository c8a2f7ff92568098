"""Engines: where a batch's rows run. A small seam with interchangeable backends.

- ``local`` (default): supervised worker processes on this machine;
- ``inline``: rows run in the calling thread, one after another, during
  ``start()``: the same results, errors, console capture and artifacts, for
  debugging with breakpoints and the fastest unit tests. There is no crash
  isolation there: a row that kills its process kills the caller;
- ``dask``: chunks of rows on a Dask cluster (``localbatch[dask]``), results
  committed to the same local store. Imported only when asked for.
"""

from __future__ import annotations

import threading
from typing import Any

from .._errors import ConfigurationError, StoreError
from .._format.chunk import failed_rows
from .._logging import close_execution_logger
from .._store.commit import now_iso
from .._store.registry import Registry, ServiceRecord
from .._workers.pool import WORKER_POOL
from .._workers.runtime import Runtime
from .base import BatchOptions, DoneHandle, Engine, RunContext, RunHandle, input_chunks
from .local import LocalSupervisor, pool_key

__all__ = [
    "ENGINES",
    "InlineEngine",
    "LocalEngine",
    "clear_inline_runtimes",
    "get_engine",
    "inline_runtime",
]


class LocalEngine(Engine):
    """Supervised worker processes (see ``_runner``)."""

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


_RUNTIMES: dict[str, Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def inline_runtime(record: ServiceRecord, limits: dict[str, int]) -> Runtime:
    """One initialised runtime per revision in this process (init runs once)."""
    key = f"{record.path}|{sorted(limits.items())}"
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(key)
        if runtime is None:
            runtime = Runtime(record.manifest, Registry.read_blobs(record), limits or None)
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
            committer.set_state("Failed", error=f"StoreError: {exc}", resumable=True,
                                ended=now_iso())
        finally:
            ctx.lock.release()
            close_execution_logger(ctx.log)
        return DoneHandle()

    def _run(self, ctx: RunContext) -> None:
        committer = ctx.committer
        try:
            runtime = inline_runtime(ctx.record, ctx.options.limits)
        except BaseException as exc:  # noqa: B036 - init's SystemExit is an init error
            committer.set_state("Failed", error=f"init failed: {type(exc).__name__}: {exc}",
                                resumable=False, ended=now_iso())
            return
        committer.set_state("InProgress", started=now_iso())
        failed = committer.failed_count
        for indices, columns in input_chunks(ctx.store, committer.id, ctx.record.inputs,
                                             committer.recorded):
            for start in range(0, len(indices), self.chunk_rows):
                if ctx.store.cancel_requested(committer.id):
                    committer.commit()
                    committer.set_state("Canceled", ended=now_iso(), resumable=False)
                    return
                stop = start + self.chunk_rows
                payload = runtime.run_rows(indices[start:stop],
                                           {k: v[start:stop] for k, v in columns.items()})
                committer.add(payload, {})
                failed += failed_rows(payload)
                limit = ctx.options.error_threshold
                if limit is not None and failed > limit:
                    committer.commit()
                    committer.set_state("Failed", resumable=False, ended=now_iso(), error=(
                        f"error threshold exceeded: {failed} rows failed "
                        f"(error_threshold={limit})"))
                    return
                if committer.due():
                    committer.commit()
        committer.commit()
        committer.set_state("Complete", ended=now_iso())


ENGINES: dict[str, type[Engine]] = {"local": LocalEngine, "inline": InlineEngine}


def get_engine(engine: Any) -> Engine:
    """An engine from a name, an Engine, or a ``dask.distributed.Client``."""
    if engine is None or engine == "local":
        return LocalEngine()
    if isinstance(engine, Engine):
        return engine
    if isinstance(engine, str):
        if engine == "dask":
            from .dask import DaskEngine

            return DaskEngine()
        cls = ENGINES.get(engine)
        if cls is None:
            raise ConfigurationError(
                f"unknown engine {engine!r}: use 'local', 'inline', 'dask' or a "
                "dask.distributed.Client")
        return cls()
    if type(engine).__module__.startswith("distributed"):
        from .dask import DaskEngine

        return DaskEngine(engine)
    raise ConfigurationError(f"engine must be 'local', 'inline' or a dask.distributed.Client, "
                             f"not {type(engine).__name__}")
