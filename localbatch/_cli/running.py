"""``run``, ``resume`` and ``retry-failed``: start a batch, follow it, map its end.

Each command starts (or resumes) a batch, shows its progress on stderr, and turns
how it ended into the exit status (``exits``): Ctrl-C cancels cleanly, keeping the
recorded rows, and says how to go on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import SchemaError
from .._views import wait_with_progress
from .exits import (
    EXIT_CANCELED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ROWS_FAILED,
    STATE_EXIT,
    CliError,
)
from .lookup import (
    find_service,
    hint_prefix,
    open_client,
    open_executions,
    rerun_batch,
    resolve_id,
)
from .output import check_out, note, read_input, say, timing_text, write_response

if TYPE_CHECKING:
    from .._batch import Batch, BatchResponse

from .._store.states import ACTIVE, TERMINAL, ExecutionState, resumes_only_forced

__all__ = ["cmd_resume", "cmd_retry_failed", "cmd_run"]


# -- following a batch -------------------------------------------------------------------


def _progress_disabled(args: argparse.Namespace) -> bool | None:
    if args.progress is None:
        return None  # tqdm: shown only when stderr is a terminal
    return not args.progress


def _follow(args: argparse.Namespace, batch: Batch, begin: Callable[[], Any],
            out: Path | None, announce: Callable[[Batch], None], work: int | None) -> int:
    """Start (or resume) the batch, show progress, and map its end to an exit status.

    ``work``: how many rows this command runs (None: all), for the rate it reports.
    """
    started = time.monotonic()
    try:
        begin()
        announce(batch)
        wait_with_progress(open_executions(args), batch.execution_id, None, file=sys.stderr,
                           disable=_progress_disabled(args))
    except KeyboardInterrupt:
        return _interrupted(args, batch)
    return _finish(args, batch.results(), out, (work, time.monotonic() - started))


def _interrupted(args: argparse.Namespace, batch: Batch) -> int:
    """Ctrl-C: cancel cleanly (finished rows stay recorded) and say how to go on."""
    if batch.execution_id is None:
        note("interrupted before the batch started: nothing was recorded")
        return EXIT_CANCELED
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not
    try:                                                      # abandon the cancel halfway
        batch.cancel()
    finally:
        signal.signal(signal.SIGINT, previous)
    resp = batch.results()
    if resp.state != ExecutionState.CANCELED:
        return _finish(args, resp, None, None)
    note(f"canceled {resp.execution_id}: {resp.completed_item_count}/"
         f"{resp.total_item_count} rows recorded and kept ({resp.failed_item_count} failed)")
    note(f"to run the remaining rows: {hint_prefix(args)} resume {resp.execution_id} --force")
    return EXIT_CANCELED


def _finish(args: argparse.Namespace, resp: BatchResponse, out: Path | None,
            timing: tuple[int | None, float] | None) -> int:
    eid, state = resp.execution_id, resp.state
    done, total, failed = (resp.completed_item_count, resp.total_item_count,
                           resp.failed_item_count)
    if state == ExecutionState.COMPLETE:
        if out is not None:
            write_response(resp, out)
        say(f"Complete: {done}/{total} rows, {failed} failed{timing_text(timing, done)}"
            + (f"; wrote {out}" if out is not None else ""))
        if failed:
            note(f"{failed} row(s) failed: {hint_prefix(args)} failed {eid}  "
                 f"(re-run them: {hint_prefix(args)} retry-failed {eid})")
            return EXIT_ROWS_FAILED
        if out is None:
            say(f"results: {hint_prefix(args)} results {eid} --out FILE")
        return EXIT_OK
    if state == ExecutionState.CANCELED:
        note(f"{eid} was canceled: {done}/{total} rows recorded ({resp.error or 'by request'})")
        if done < total:  # canceled from another terminal: this one says how to go on too
            note(f"to run the remaining rows: {hint_prefix(args)} resume {eid} --force")
        return EXIT_CANCELED
    note(f"{eid} Failed: {resp.error or 'unknown error'} ({done}/{total} rows recorded)")
    if resp.resumable:
        note(f"to finish it: {hint_prefix(args)} resume {eid}")
    return STATE_EXIT.get(state, EXIT_FAILED)


# -- the commands ------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    service = find_service(open_client(args), args.service)
    records = read_input(args.input)
    options: dict[str, Any] = {"max_attempts": args.max_attempts}
    if args.row_timeout is not None:
        options["row_timeout"] = args.row_timeout
    if args.error_threshold is not None:
        options["error_threshold"] = args.error_threshold
    if args.keep:
        options["keep"] = args.keep
    with _naming(args.input):
        batch = service.batch(records, parallel_count=args.parallel_count or os.cpu_count()
                              or 1, **options)

    def start() -> None:
        with _naming(args.input):
            batch.start()

    def announce(b: Batch) -> None:
        # First line on stdout, flushed: a wrapper can pick the id up while it runs.
        say(f"execution {b.execution_id}")

    return _follow(args, batch, start, out, announce, None)


@contextlib.contextmanager
def _naming(input_path: str) -> Iterator[None]:
    """Input errors name the file: "in.csv: line 7: column 'hp' value 'x' is not ..."."""
    try:
        yield
    except SchemaError as exc:
        text = str(exc)  # Parquet errors already start with the file (and row group)
        raise CliError(text if text.startswith(input_path) else f"{input_path}: {text}"
                       ) from exc


def cmd_resume(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    client = open_client(args)
    eid = resolve_id(client, args.id)
    batch, overrides = rerun_batch(client, eid, args.parallel_count)
    header = batch.results().header
    state = header["state"]
    if state == ExecutionState.COMPLETE:
        say(f"{eid} is already Complete")
        return _finish(args, batch.results(), out, None)
    # The rule is the engine's (states.py); checked first here to word the refusal as
    # the command to type.
    if state in ACTIVE:
        raise CliError(f"{eid} is running (owner pid {header.get('owner_pid')}): it cannot be "
                       "resumed now")
    if not args.force and resumes_only_forced(header):
        raise CliError(f"{eid} is {state} ({header.get('error') or 'by request'}): "
                       f"{hint_prefix(args)} resume {eid} --force runs its remaining rows")

    def announce(b: Batch) -> None:
        say(f"execution {eid} resumed: {header.get('completed') or 0}/{header['total']} rows "
            "already recorded")

    work = int(header["total"]) - int(header.get("completed") or 0)
    return _follow(args, batch, lambda: batch.resume(force=args.force, **overrides), out,
                   announce, work)


def cmd_retry_failed(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    client = open_client(args)
    eid = resolve_id(client, args.id)
    batch, overrides = rerun_batch(client, eid, args.parallel_count)
    resp = batch.results()
    if resp.state not in TERMINAL:
        raise CliError(f"{eid} is {resp.state}: wait for it to end, or cancel it, first")
    if resp.completed_item_count < resp.total_item_count:
        # The engine would run the never-run rows too: that is a resume, so say so.
        missing = resp.total_item_count - resp.completed_item_count
        force = "" if resp.resumable else " --force"
        raise CliError(f"{eid} is {resp.state} with {missing} row(s) never run: "
                       f"{hint_prefix(args)} resume {eid}{force} first")
    if resp.failed_item_count == 0:
        say(f"{eid}: no failed rows to retry")
        return _finish(args, resp, out, None)

    def announce(b: Batch) -> None:
        version = f" with version {args.version}" if args.version else ""
        say(f"execution {eid}: retrying {resp.failed_item_count} failed row(s){version}")

    return _follow(args, batch, lambda: batch.retry_failed(args.version, **overrides), out,
                   announce, resp.failed_item_count)
