"""Notebook views and the progress bar (facade helpers, no engine logic)."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._batch import Batch, BatchResponse
    from ._service import ServiceResponse

__all__ = ["batch_html", "response_html", "wait_with_progress"]


def wait_with_progress(batch: Batch, timeout: float | None) -> dict[str, Any]:
    """Poll the batch with a tqdm bar (a widget in Jupyter, a bar in a terminal)."""
    from tqdm.auto import tqdm

    from ._jobs import TERMINAL, effective_header

    store, eid = batch._store, batch._id()
    header = effective_header(store, eid)
    deadline = None if timeout is None else time.monotonic() + timeout
    with tqdm(total=int(header["total"]), unit="row", dynamic_ncols=True,
              desc=f"{header['service']} {header['version']}") as bar:
        while True:
            done = int(header.get("completed") or 0)
            bar.update(done - bar.n)
            bar.set_postfix(failed=int(header.get("failed") or 0), state=header["state"],
                            refresh=False)
            if header["state"] in TERMINAL:
                return header
            if deadline is not None and time.monotonic() >= deadline:
                return header
            time.sleep(0.1)
            header = effective_header(store, eid)


def _table(frame: Any, rows: int = 5) -> str:
    try:
        return str(frame.head(rows).to_html(max_cols=12))
    except Exception:  # a view must never fail the notebook
        return ""


def batch_html(resp: BatchResponse) -> str:
    h = resp.header
    rate = ""
    if h.get("started") and resp.completed_item_count:
        rate = f" &middot; engine {html.escape(str(h.get('engine')))}"
    parts = [
        "<div><b>BatchResponse</b> ",
        f"<code>{html.escape(resp.execution_id)}</code><br>",
        f"service {html.escape(resp.api)} &middot; state <b>{html.escape(resp.state)}</b>",
        f" &middot; {resp.completed_item_count}/{resp.total_item_count} rows",
        f" &middot; {resp.failed_item_count} failed{rate}",
    ]
    if resp.error:
        parts.append(f"<br><span style='color:#b00'>{html.escape(resp.error)}</span>")
    if resp.completed_item_count:
        parts.append("<br>" + _table(resp.to_frame()))
    if resp.failed_item_count:
        parts.append("<br><b>failed rows</b>" + _table(resp.failed()))
    return "".join(parts) + "</div>"


def response_html(resp: ServiceResponse) -> str:
    rows = [f"<tr><th>{html.escape(k)}</th><td>{html.escape(repr(v))[:500]}</td></tr>"
            for k, v in resp.outputs.items()]
    err = f"<br><span style='color:#b00'>{html.escape(resp.error)}</span>" if resp.error else ""
    console = (f"<pre>{html.escape(resp.console_output[:2000])}</pre>"
               if resp.console_output else "")
    arts = ", ".join(html.escape(k) for k, v in resp.artifacts.items() if v is not None)
    return (f"<div><b>ServiceResponse</b> {html.escape(resp.api)}{err}<table>{''.join(rows)}"
            f"</table>{console}{'artifacts: ' + arts if arts else ''}</div>")
