"""Progress bar (``batch.wait(progress=True)``), notebook HTML views, library logging."""

from __future__ import annotations

import io
import logging

import pandas as pd
import pytest
from scoring_fns import add, fail_on_three, shout, slow

from localbatch import BatchTimeoutError


def _deploy(client, name, fn):
    return (client.service(name).version("1.0").code_fn(fn)
            .inputs(a=float, b=float).outputs(y=float).deploy())


def _frame(rows: int, b: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({"a": [float(i) for i in range(rows)], "b": b})


def test_wait_with_progress_draws_a_bar_to_the_end(client, capsys):
    svc = _deploy(client, "flaky", fail_on_three)
    resp = svc.batch(_frame(12), parallel_count=2).start().wait(progress=True)
    assert (resp.state, resp.completed_item_count, resp.failed_item_count) == ("Complete", 12, 1)
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("flaky 1.0: 100%")
    assert "12/12" in last and "row/s" in last and "failed=1, Complete" in last


def test_progress_counts_only_this_runs_rows_and_honours_timeout(client):
    from localbatch._views import wait_with_progress

    svc = _deploy(client, "slow", slow)
    batch = svc.batch(_frame(8, b=0.5), parallel_count=2).start()
    with pytest.raises(BatchTimeoutError):
        batch.wait(timeout=0.3, progress=True)
    out = io.StringIO()
    header = wait_with_progress(batch._executions, batch.execution_id, 0.2, file=out)
    assert header["state"] in ("Pending", "InProgress")  # timed out, still running
    assert "slow 1.0:" in out.getvalue() and "/8" in out.getvalue()
    batch.cancel()
    hidden = io.StringIO()
    assert wait_with_progress(batch._executions, batch.execution_id, None, file=hidden,
                              disable=True)["state"] == "Canceled"
    assert hidden.getvalue() == ""


def test_batch_html_shows_state_counts_rate_rows_and_errors(client):
    svc = _deploy(client, "<b>x&y", fail_on_three)  # a legal name that is also markup
    resp = svc.batch(_frame(6), parallel_count=2).start().wait()
    page = resp._repr_html_()
    assert "<b>x&y" not in page and "&lt;b&gt;x&amp;y" in page
    assert ">Complete<" in page and "6/6 rows" in page and "1 failed" in page
    assert "rows/s" in page and "<progress value='6' max='6'>" in page
    assert "first rows" in page and page.count("<table") == 2
    assert "ValueError" in page and "bad row 3.0" in page
    # the SDK's str() layout is untouched
    assert str(resp).startswith("\n<BatchResponse>") and "<b>x&y" in str(resp)


def test_batch_html_of_a_canceled_batch_has_no_failed_table(client):
    svc = _deploy(client, "slow", slow)
    batch = svc.batch(_frame(20, b=0.5), parallel_count=2).start()
    resp = batch.cancel().results()
    page = resp._repr_html_()
    assert ">Canceled<" in page and f"{resp.completed_item_count}/20 rows" in page
    assert "failed rows" not in page


def test_response_html_renders_frames_errors_console(client):
    svc = (client.service("frame").version("1.0")
           .code_str("import pandas as pd\nanswer = pd.DataFrame({'v': [a, b]})")
           .inputs(a=float, b=float).outputs(answer=pd.DataFrame).deploy())
    page = svc.consume(1.5, 2.5)._repr_html_()
    assert "<table" in page and "1.5" in page and "2.5" in page and ">answer<" in page

    bad = _deploy(client, "flaky", fail_on_three).fail_on_three(3, 1)
    page = bad._repr_html_()
    assert "ValueError: bad row 3.0" in page and "<summary>traceback</summary>" in page
    assert str(bad).startswith("<ServiceResponse>")  # str() keeps the SDK's text layout

    loud = _deploy(client, "shout", shout).shout(4, 1)
    assert "console output" in loud._repr_html_() and "row a=4.0" in loud._repr_html_()


def test_library_logging_and_execution_log(client):
    logger = logging.getLogger("localbatch")
    assert all(isinstance(h, logging.NullHandler) for h in logger.handlers)
    svc = _deploy(client, "add", add)
    batch = svc.batch(_frame(3), parallel_count=2).start()
    batch.wait()
    log = client.store_path / "executions" / batch.execution_id / "execution.log"
    text = log.read_text()
    assert "batch complete: 3 rows, 0 failed" in text and "worker" in text
