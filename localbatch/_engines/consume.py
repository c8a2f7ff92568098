"""Request-response: one call of a service, in a warm worker (or here, inline).

The call is a chunk of one row sent to a worker leased from the warm pool; a
failure to start, a death or a timeout becomes the call's row error, so the
facade builds its ``ServiceResponse`` the same way in every case.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .._format.chunk import ChunkResult
from .._store.registry import ServiceRecord
from .._workers.pool import WORKER_POOL
from .._workers.process import WorkerLost, WorkerProcess
from .._workers.protocol import InitError, Ready
from .base import Engine
from .inline import inline_runtime

__all__ = ["consume"]


def consume(record: ServiceRecord, values: dict[str, Any], *, start_method: str = "spawn",
            init_timeout: float = 300.0, timeout: float | None = None,
            engine: Engine | None = None) -> ChunkResult:
    """Run one call in a warm worker of the service; returns the worker's row result.

    With an engine that does not isolate rows (``inline``) the call runs here.
    """
    if engine is not None and not engine.isolates_rows:
        return _consume_inline(record, values)
    key = (str(record.path), start_method, ())
    taken = WORKER_POOL.take_idle(key, 1)
    worker = taken[0] if taken else WorkerProcess(key, start_method)
    if not taken:
        worker.start({"path": str(record.path)}, None)
    if not worker.ready:
        started = worker.await_ready(init_timeout)
        if not isinstance(started, Ready):
            return _init_failed(started, init_timeout, worker.pid)
    result = worker.run_chunk(0, [0], {k: [v] for k, v in values.items()}, timeout=timeout)
    if isinstance(result, WorkerLost):
        return (_failed_call("Timeout", f"call exceeded {timeout:g}s", worker.pid)
                if result.reason == "timeout" else
                _failed_call("WorkerDied", result.why, worker.pid))
    WORKER_POOL.give_back([worker])
    return result


def _consume_inline(record: ServiceRecord, values: dict[str, Any]) -> ChunkResult:
    try:
        runtime = inline_runtime(record, {})
    except BaseException as exc:  # noqa: B036 - init's SystemExit is an init error too
        return _failed_call(type(exc).__name__, f"init failed: {exc}", os.getpid())
    return runtime.run_rows([0], {k: [v] for k, v in values.items()})


def _init_failed(started: InitError | WorkerLost, init_timeout: float, pid: int
                 ) -> ChunkResult:
    """A worker that did not start: its init error (with traceback and console), or why."""
    if isinstance(started, InitError):
        etype, message, tb = started.error
        failed = _failed_call(etype, f"init failed: {message}", pid)
        failed.update(errors=[(etype, f"init failed: {message}", tb)],
                      console=[started.console or None])
        return failed
    if started.reason == "timeout":
        return _failed_call("InitTimeout", f"init did not return within {init_timeout:g}s", pid)
    return _failed_call("WorkerDied", f"{started.why} during init", pid)


def _failed_call(error_type: str, message: str, pid: int) -> ChunkResult:
    now = time.time()
    return {"index": [0], "started": [now], "ended": [now], "errors": [(error_type, message, "")],
            "console": [None], "outputs": None, "artifacts": {}, "pid": pid}
