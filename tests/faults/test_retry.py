"""retry_failed(): only failed rows re-run, records replaced atomically, history kept."""

from __future__ import annotations

import pytest

from . import faultfns
from .helpers import record_counts, runs_per_row

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def fixed(a, b):
    return a * 2.0


def test_retry_failed_on_another_version(client, store, tmp_path, monkeypatch):
    log = tmp_path / "runs"
    log.mkdir()
    monkeypatch.setenv("FAULT_LOG", str(log))
    svc = (client.service("score").version("1").code_fn(faultfns.flaky)
           .inputs(a=float, b=float).outputs(y=float).deploy())
    (client.service("score").version("2").code_fn(fixed)
     .inputs(a=float, b=float).outputs(y=float).deploy())
    batch = svc.batch({"a": [float(i) for i in range(40)], "b": [10.0] * 40},
                      parallel_count=2).start()
    first = batch.wait(timeout=60)
    assert first.failed_item_count == 4
    failed = first.failed()
    assert failed["row"].tolist() == [0, 10, 20, 30]
    assert failed["error_type"].tolist() == ["ValueError"] * 4
    assert failed["a"].tolist() == [0.0, 10.0, 20.0, 30.0] and (failed["attempts"] == 1).all()

    # The same version re-runs only the failed rows (they fail again).
    again = batch.retry_failed().wait(timeout=60)
    assert again.failed_item_count == 4 and again.completed_item_count == 40
    runs = runs_per_row(log, 40)
    assert runs[[0, 10, 20, 30]].tolist() == [2, 2, 2, 2] and runs.sum() == 44

    fixed_resp = batch.retry_failed(version="2").wait(timeout=60)
    assert fixed_resp.state == "Complete" and fixed_resp.failed_item_count == 0
    assert fixed_resp.to_frame()["y"].tolist() == [i * 2.0 for i in range(40)]
    row = fixed_resp.execution(10)
    assert [h["error"] for h in row.history] == ["ValueError: row 10 is bad"] * 2
    assert row.history[-1]["version"] == "1"
    # Earlier records stay in their parts; the latest one is what readers see.
    assert record_counts(store, batch.execution_id, 40)[10] == 3
    assert batch.retry_failed().wait(timeout=30).failed_item_count == 0


def test_retry_failed_refuses_rows_that_never_ran(client, tmp_path, monkeypatch):
    from localbatch import ResumeError

    monkeypatch.setenv("FAULT_LOG", str(tmp_path))
    svc = (client.service("slow").version("1").code_fn(faultfns.slow)
           .inputs(a=float, b=float).outputs(y=float).deploy())
    batch = svc.batch({"a": [float(i) for i in range(40)], "b": [0.2] * 40},
                      parallel_count=2).start()
    batch.cancel()
    with pytest.raises(ResumeError, match="never ran"):
        batch.retry_failed()
    assert batch.results().state == "Canceled"
