"""Notebook views and the progress bar (facade helpers, no engine logic).

``wait_with_progress`` backs ``batch.wait(progress=True)`` and the command line;
``batch_html`` / ``response_html`` are the ``_repr_html_`` of ``BatchResponse``
and ``ServiceResponse`` (their ``str()`` keeps the SDK's layout).
"""

from __future__ import annotations

import html
import time
from typing import IO, TYPE_CHECKING, Any

from ._store.states import TERMINAL, ExecutionState
from ._store.timing import parse_time, run_seconds

if TYPE_CHECKING:
    from ._batch import BatchResponse
    from ._engines.base import RunHandle
    from ._engines.executions import Executions
    from ._responses import ServiceResponse

__all__ = ["batch_html", "elapsed_seconds", "parse_time", "response_html",
           "wait_with_progress"]

#: Above this many recorded rows a view shows counts only: reading every part
#: to render five rows would make displaying a response slow.
VIEW_ROW_LIMIT = 200_000
_POLL = 0.1


def _tqdm_class() -> Any:
    import warnings

    with warnings.catch_warnings():
        # Jupyter without ipywidgets: tqdm.auto falls back to a text bar and warns
        # about it; the text bar is what we want there, so the warning is noise.
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm


def _rows_done(header: dict[str, Any], run: RunHandle | None) -> int:
    """Recorded rows, plus the rows this process's supervisor holds but has not committed.

    The header's counters move once per committed part (~2 s); when this process owns
    the batch the bar can count the rows as they come back from the workers.
    """
    done = int(header.get("completed") or 0)
    committer = run.committer if run is not None else None
    if committer is not None and header["state"] not in TERMINAL:
        live = int(committer.completed_count) + int(getattr(committer, "buffered_rows", 0))
        done = max(done, min(live, int(header["total"])))
    return done


def _show(bar: Any, header: dict[str, Any], shown: str | None, run: RunHandle | None) -> str:
    """Draw the header on the bar; returns the postfix drawn (a disabled bar keeps none
    of its own, so the caller remembers it)."""
    postfix = f"failed={int(header.get('failed') or 0)}"
    if header["state"] != ExecutionState.IN_PROGRESS:
        postfix += f", {header['state']}"
    changed = postfix != shown
    # The postfix first: update() redraws, and must not draw the new count beside
    # the old state.
    bar.set_postfix_str(postfix, refresh=False)
    done = _rows_done(header, run)
    if header["state"] not in TERMINAL:
        # Never backwards while running: a commit moves rows from the buffer to the
        # counters in two steps.
        done = max(done, bar.n)
    if done != bar.n:
        bar.update(done - bar.n)
    elif changed:
        bar.refresh()
    return postfix


def wait_with_progress(executions: Executions, execution_id: str, timeout: float | None, *,
                       file: IO[str] | None = None, disable: bool | None = False
                       ) -> dict[str, Any]:
    """Poll the batch with a tqdm bar (a widget in Jupyter, a bar in a terminal).

    The bar counts recorded rows (rate and ETA from tqdm) and shows the failed
    rows so far. Returns the last header seen: terminal, or whatever it was when
    ``timeout`` ran out. ``disable=None`` hides the bar when ``file`` is not a tty.
    """
    eid = execution_id
    header = executions.header(eid)
    deadline = None if timeout is None else time.monotonic() + timeout
    # ``initial``: rows recorded before this wait (a resume) do not inflate the rate.
    with _tqdm_class()(total=int(header["total"]), initial=int(header.get("completed") or 0),
                       unit="row", dynamic_ncols=True, file=file, disable=disable,
                       desc=f"{header['service']} {header['version']}") as bar:
        shown, run = None, executions.run(eid)
        while True:
            shown = _show(bar, header, shown, run)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if header["state"] in TERMINAL:
                # The header turns terminal a moment before this process's supervisor
                # lets go of its workers and lock: wait for that too.
                header = executions.wait(eid, left)
                _show(bar, header, shown, run)
                return header
            if left == 0.0:
                return header
            # Wakes at once when this process's run ends.
            executions.pause(eid, _POLL if left is None else min(_POLL, left))
            header = executions.header(eid)


# -- HTML views ----------------------------------------------------------------------


def elapsed_seconds(header: dict[str, Any]) -> float | None:
    """Seconds spent running, over every run (first, resumes, retries); to now while
    running; None before it started."""
    return run_seconds(header, time.time())


def _rate_text(header: dict[str, Any]) -> str:
    seconds = elapsed_seconds(header)
    done = int(header.get("completed") or 0)
    if seconds is None:
        return ""
    text = f" &middot; {seconds:.1f}&nbsp;s"
    if done and seconds > 0:
        text += f" &middot; {done / seconds:,.1f}&nbsp;rows/s"
    return text


def _html_table(frame: Any, rows: int) -> str:
    try:
        return str(frame.head(rows).to_html(max_cols=12, border=0))  # escapes cell text
    except Exception:  # a view must never fail the notebook
        return ""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def batch_html(resp: BatchResponse, rows: int = 5) -> str:
    """State, counts, rate, the first rows of ``to_frame()`` and the failed rows."""
    h = resp.header
    done, total, failed = (resp.completed_item_count, resp.total_item_count,
                           resp.failed_item_count)
    state_color = {ExecutionState.COMPLETE: "#080", ExecutionState.FAILED: "#b00",
                   ExecutionState.CANCELED: "#a60"}.get(resp.state,
                                                                                 "#06c")
    parts = [
        "<div class='localbatch-batch'><b>BatchResponse</b> ",
        f"<code>{_esc(resp.execution_id)}</code><br>",
        f"service <code>{_esc(resp.api)}</code> &middot; state ",
        f"<b style='color:{state_color}'>{_esc(resp.state)}</b><br>",
        f"<progress value='{done}' max='{max(total, 1)}'></progress> ",
        f"{done}/{total} rows &middot; {failed} failed{_rate_text(h)}",
    ]
    if resp.error:
        parts.append(f"<br><span style='color:#b00'>{_esc(resp.error)}</span>")
    if resp.resumable:
        parts.append("<br>resumable: <code>batch.resume()</code> finishes the remaining rows")
    if done > VIEW_ROW_LIMIT:
        parts.append("<br><i>rows not shown for a batch this large: use to_frame()</i>")
    elif done:
        parts.append(f"<br><b>first rows</b>{_html_table(resp.to_frame(), rows)}")
        if failed:
            parts.append(f"<b>failed rows</b> (first {min(failed, 10)} of {failed})"
                         f"{_html_table(resp.failed(), 10)}")
    return "".join(parts) + "</div>"


def _value_html(value: Any) -> str:
    if hasattr(value, "to_html") and hasattr(value, "columns"):
        return _html_table(value, 10)
    return f"<code>{html.escape(repr(value)[:500])}</code>"


def response_html(resp: ServiceResponse) -> str:
    """Outputs (DataFrames as tables), the error with its traceback, console, artifacts."""
    rows = [f"<tr><th style='text-align:left'>{_esc(k)}</th><td>{_value_html(v)}</td></tr>"
            for k, v in resp.outputs.items()] if not resp.error else []
    err = ""
    if resp.error:
        err = f"<br><span style='color:#b00'>{_esc(resp.error)}</span>"
        if resp.traceback:
            err += (f"<details><summary>traceback</summary><pre>{_esc(resp.traceback[-4000:])}"
                    "</pre></details>")
    console = (f"<details><summary>console output</summary><pre>"
               f"{_esc(resp.console_output[:2000])}</pre></details>"
               if resp.console_output else "")
    names = [k for k, v in resp.artifacts.items() if v is not None]
    arts = f"artifacts: {_esc(', '.join(names))}" if names else ""
    table = f"<table>{''.join(rows)}</table>" if rows else ""
    return (f"<div class='localbatch-response'><b>ServiceResponse</b> "
            f"<code>{_esc(resp.api)}</code>{err}{table}{console}{arts}</div>")
