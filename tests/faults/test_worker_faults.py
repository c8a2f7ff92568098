"""Worker faults: deaths charged to one row, bounded attempts, hangs, init failures."""

from __future__ import annotations

import pandas as pd
import pytest

from localbatch import BatchTimeoutError

from . import faultfns
from .helpers import deploy, pid_alive, record_counts, runs_per_row, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

ROWS = 150
POISON = 70


def frame(rows: int = ROWS, b: float = POISON) -> pd.DataFrame:
    return pd.DataFrame({"a": [float(i) for i in range(rows)], "b": b})


@pytest.mark.parametrize("mode, expect", [
    ("sigkill", "signal 9"), ("segfault", "signal 11"), ("exit", "exit code 1"),
    ("oom", "possibly out of memory")])
def test_poison_row_fails_alone_after_max_attempts(client, store, fault_log, monkeypatch,
                                                   mode, expect):
    monkeypatch.setenv("FAULT_MODE", mode)
    svc = deploy(client, "die", faultfns.die)
    resp = svc.batch(frame(), parallel_count=2).start().wait(timeout=90)
    assert resp.state == "Complete"
    assert resp.completed_item_count == ROWS and resp.failed_item_count == 1
    bad = resp.execution(POISON)
    assert bad.error.startswith("WorkerDied: worker died") and expect in bad.error
    assert bad.attempts == 3
    assert runs_per_row(fault_log, ROWS)[POISON] == 3
    frame_out = resp.to_frame()
    good = frame_out.drop(index=POISON)
    assert (good["y"] == [i * 2.0 + POISON for i in good.index]).all()
    assert good["error"].isna().all()
    assert (record_counts(store, resp.execution_id, ROWS) == 1).all()


def test_transient_death_in_a_big_chunk_charges_only_its_row(client, store, fault_log):
    rows, poison = 10000, 9000
    svc = deploy(client, "die-once", faultfns.die_once)
    resp = svc.batch(frame(rows, poison), parallel_count=2).start().wait(timeout=90)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    log = (store / "executions" / resp.execution_id / "execution.log").read_text()
    death = next(line for line in log.splitlines() if f"(row {poison};" in line)
    in_flight = int(death.split(f"(row {poison}; ")[1].split()[0])
    assert in_flight >= 100, death
    assert resp.execution(poison).attempts == 2
    # The rest of the dead worker's chunks was requeued without using an attempt.
    frame_out = resp.to_frame()
    assert (frame_out["y"] == [i * 2.0 + poison for i in range(rows)]).all()
    attempts = [resp.execution(i).attempts for i in range(rows - 200, rows) if i != poison]
    assert set(attempts) == {1}
    assert (record_counts(store, resp.execution_id, rows) == 1).all()


def test_system_exit_and_keyboard_interrupt_are_row_errors(client, fault_log):
    svc = deploy(client, "exit", faultfns.raise_exit)
    resp = svc.batch(frame(20, 5.0), parallel_count=2).start().wait(timeout=60)
    assert resp.state == "Complete" and resp.failed_item_count == 2
    assert resp.execution(5).error == "SystemExit: 4"
    assert resp.execution(6).error == "KeyboardInterrupt"
    tb = resp.execution(5).traceback
    assert resp.execution(5).attempts == 1 and "in raise_exit" in tb and "SystemExit: 4" in tb
    assert runs_per_row(fault_log, 20)[5] == 1


def test_row_timeout_kills_the_row_and_its_children(client, fault_log):
    svc = deploy(client, "hang", faultfns.hang)
    resp = svc.batch(frame(30, 7.0), parallel_count=2, row_timeout=1.5).start().wait(timeout=60)
    assert resp.state == "Complete" and resp.failed_item_count == 1
    err = resp.execution(7).error
    assert err.startswith("RowTimeout:") and "row_timeout=1.5s" in err
    child = int((fault_log / "child.pid").read_text())
    assert wait_until(lambda: not pid_alive(child), 5), "the row's child process survived"
    assert resp.execution(8).outputs["y"] == 8 * 2.0 + 7


def test_hung_row_without_timeout_stays_in_progress_and_cancel_returns(client, fault_log):
    svc = deploy(client, "hang", faultfns.hang)
    batch = svc.batch(frame(10, 3.0), parallel_count=2).start()
    with pytest.raises(BatchTimeoutError):
        batch.wait(timeout=1.5)
    assert batch.results().state == "InProgress"
    child = int((fault_log / "child.pid").read_text())
    batch.cancel()
    assert batch.state == "Canceled"
    assert wait_until(lambda: not pid_alive(child), 5)


def test_init_timeout_fails_the_batch(client, fault_log):
    svc = deploy(client, "slow-init", faultfns.slow, init=faultfns.hang_init)
    resp = svc.batch(frame(10, 0.0), parallel_count=2, init_timeout=1).start().wait(timeout=30)
    assert resp.state == "Failed" and resp.error.startswith("InitTimeout")
    assert resp.completed_item_count == 0
    assert not any(p.name[0].isdigit() for p in fault_log.iterdir())


def test_init_error_fails_the_batch_and_runs_no_row(client, fault_log):
    svc = deploy(client, "bad-init", faultfns.slow, init=faultfns.bad_init)
    resp = svc.batch(frame(10, 0.0), parallel_count=2).start().wait(timeout=30)
    assert resp.state == "Failed"
    assert resp.error == "init failed: RuntimeError: model file missing"
    assert not resp.resumable and resp.completed_item_count == 0
    assert list(fault_log.iterdir()) == []


def test_error_threshold_fails_the_batch(client, fault_log):
    svc = deploy(client, "flaky", faultfns.flaky)
    resp = svc.batch(frame(400, 2.0), parallel_count=2, error_threshold=5).start().wait(
        timeout=60)
    assert resp.state == "Failed" and "error threshold exceeded" in resp.error
    assert resp.failed_item_count > 5 or resp.completed_item_count < 400
