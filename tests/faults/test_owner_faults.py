"""The owner dies: workers follow, readers see it, resume() finishes exactly once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from localbatch import ResumeError

from . import faultfns
from .helpers import (
    HERE,
    deploy,
    kill_group,
    pid_alive,
    record_counts,
    runs_per_row,
    start_owner,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def _worker_pids(store, execution_id):
    log = (store / "executions" / execution_id / "execution.log").read_text()
    return [int(line.split("worker ")[1].split()[0]) for line in log.splitlines()
            if " started (" in line]


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_owner_killed_mid_row_workers_exit_and_resume_finishes(client, store, fault_log,
                                                               start_method):
    svc = deploy(client, "slow", faultfns.slow)
    owner, eid = start_owner(store, "slow", rows=100, b=0.1, start_method=start_method)
    batch = svc.get_batch(eid)
    assert wait_until(lambda: batch.results().completed_item_count >= 2, 30)
    workers = _worker_pids(store, eid)
    kill_group(owner)
    t0 = time.monotonic()
    assert wait_until(lambda: not any(pid_alive(p) for p in workers), 5)
    assert time.monotonic() - t0 < 3, "workers must exit within ~2 s of the owner's death"
    resp = batch.results()
    assert resp.state == "Failed" and resp.resumable
    assert resp.error.startswith(f"Interrupted: owner pid {owner.pid} died")
    before = resp.completed_item_count
    done = batch.resume().wait(timeout=60)
    assert done.state == "Complete" and done.completed_item_count == 100
    assert done.to_frame()["y"].tolist() == [i * 2.0 for i in range(100)]
    assert (record_counts(store, eid, 100) == 1).all()
    runs = runs_per_row(fault_log, 100)
    assert (runs >= 1).all() and before > 0


def test_owner_killed_while_a_row_sleeps_a_minute(client, store, fault_log):
    svc = deploy(client, "slow", faultfns.slow)
    owner, eid = start_owner(store, "slow", rows=2, b=60.0)
    try:
        assert wait_until(lambda: len(list(fault_log.iterdir())) >= 1, 30)
        workers = _worker_pids(store, eid)
    finally:
        kill_group(owner)
    assert wait_until(lambda: not any(pid_alive(p) for p in workers), 4)
    assert svc.get_batch(eid).results().state == "Failed"


RESUMER = """
import sys
sys.path.insert(0, {tests!r})
from localbatch import DeployClient, ResumeError
svc = DeployClient({store!r}).get_service("slow")
try:
    svc.get_batch({eid!r}).resume()
except ResumeError as exc:
    print("refused", exc, flush=True)
    sys.exit(0)
print("owner", flush=True)
svc.get_batch({eid!r}).wait()
"""


def test_two_simultaneous_resumes_one_owner(client, store, fault_log):
    deploy(client, "slow", faultfns.slow)
    owner, eid = start_owner(store, "slow", rows=30, b=0.05)
    kill_group(owner)
    code = textwrap.dedent(RESUMER).format(tests=str(HERE.parent), store=str(store), eid=eid)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = sorted(p.communicate(timeout=90)[0].split()[0] for p in procs)
    assert outs == ["owner", "refused"]
    resp = client.get_execution(eid).results()
    assert resp.state == "Complete"
    assert (record_counts(store, eid, 30) == 1).all()


def test_resume_of_canceled_or_init_failed_needs_force(client, store, fault_log):
    svc = deploy(client, "slow", faultfns.slow)
    batch = svc.batch({"a": [float(i) for i in range(60)], "b": [0.2] * 60},
                      parallel_count=2).start()
    assert wait_until(lambda: batch.results().completed_item_count >= 1, 30)
    batch.cancel()
    assert batch.state == "Canceled"
    with pytest.raises(ResumeError, match="force=True"):
        batch.resume()
    assert batch.resume(force=True).wait(timeout=60).state == "Complete"
    assert (record_counts(store, batch.execution_id, 60) == 1).all()

    bad = deploy(client, "bad-init", faultfns.slow, init=faultfns.bad_init)
    failed = bad.batch({"a": [1.0], "b": [0.0]}, parallel_count=1).start()
    assert failed.wait(timeout=30).state == "Failed"
    with pytest.raises(ResumeError, match="force=True"):
        failed.resume()


def test_cancel_of_an_orphan_marks_it_canceled(client, store, fault_log):
    svc = deploy(client, "slow", faultfns.slow)
    owner, eid = start_owner(store, "slow", rows=20, b=0.2)
    kill_group(owner)
    batch = svc.get_batch(eid)
    batch.cancel()
    assert batch.results().state == "Canceled"
