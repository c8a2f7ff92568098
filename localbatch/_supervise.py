"""What every engine's supervisor shares: ownership, the end states, the exit wait.

A supervisor is a thread of the process that owns an execution. Subclasses
(the local process engine in ``_runner``, the Dask engine in ``_dask``) write
``_run`` (the loop) and ``_stop_work`` (stop every running row); this class
turns the ways a run can end into the execution's state, once, and always
releases the ownership:

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
from typing import Protocol

from ._commit import Committer, now_iso
from ._engine import RunContext, RunHandle
from ._errors import StoreError
from ._logging import close_execution_logger

__all__ = ["BatchAborted", "OwnedRun", "RUNNING", "SupervisorBase", "register_exit_wait"]

ACTIVE_STATES = ("Pending", "InProgress")


class OwnedRun(Protocol):
    """What every engine's supervisor offers the process that owns it."""

    id: str
    done: threading.Event
    committer: Committer

    def cancel(self, timeout: float | None = None) -> bool: ...


#: Executions owned by supervisors of this process (any engine), by id.
RUNNING: dict[str, OwnedRun] = {}
RUNNING_LOCK = threading.Lock()


class BatchAborted(Exception):
    """The batch as a whole cannot go on; the message becomes its ``error``."""

    def __init__(self, error: str, resumable: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.resumable = resumable


class SupervisorBase(RunHandle):
    """One execution's owner thread: registered in RUNNING, cancellable, always released."""

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
        self._thread = threading.Thread(target=self._main, name=f"localbatch-{self.id[:8]}",
                                        daemon=True)

    # lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        with RUNNING_LOCK:
            RUNNING[self.id] = self
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
                with RUNNING_LOCK:
                    RUNNING.pop(self.id, None)
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

    # the end states ----------------------------------------------------------------

    def _finish(self) -> None:
        self.committer.commit()
        self.committer.set_state("Complete", ended=now_iso())
        self.log.info("batch complete: %d rows, %d failed", self.committer.completed_count,
                      self.committer.failed_count)

    def _finish_canceled(self) -> None:
        self._stop_work()
        self.committer.commit()
        self.committer.set_state("Canceled", ended=now_iso(), resumable=False)
        self.log.info("batch canceled after %d rows", self.committer.completed_count)

    def _abort(self, error: str, *, resumable: bool) -> None:
        self.log.error("batch failed: %s", error)
        self._stop_work()
        with contextlib.suppress(StoreError):
            self.committer.commit()
        with contextlib.suppress(StoreError):
            self.committer.set_state("Failed", error=error, resumable=resumable,
                                     ended=now_iso())

    def _mark_in_progress(self) -> None:
        if self.committer.header.get("state") == "Pending":
            self.committer.set_state("InProgress", started=now_iso())

    def _count_failures(self, errors: list[object]) -> None:
        self._failed_seen += sum(e is not None for e in errors)

    def _check_threshold(self) -> None:
        limit = self.options.error_threshold
        if limit is not None and self._failed_seen > limit:
            raise BatchAborted(f"error threshold exceeded: {self._failed_seen} rows failed "
                               f"(error_threshold={limit})")


# -- a script that reaches its end waits for the batches it owns ------------------------


def _wait_for_owned() -> None:
    with RUNNING_LOCK:
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
