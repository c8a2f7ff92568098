"""Orphans die: workers and everything their rows started end soon after their owner.

The owner is a real process running a batch, SIGKILLed while its rows hold the
GIL (a catastrophic regex: no thread of the worker can run), while a row's child
sleeps in a session of its own, or while rows sleep. Every process below the
owner must be gone within 3 s (measured: tens of milliseconds, see the report).
Also: ``row_timeout`` kills a row's children in new sessions, and a ``fork()``ed
child of the owner can wait for a batch (and exit) without hanging or touching
its parent's workers.
"""

from __future__ import annotations

import atexit
import os
import signal
import time

import pandas as pd
import psutil
import pytest

from localbatch._workers.pool import WORKER_POOL

from . import isolation_fns
from .helpers import deploy, start_owner
from .test_row_isolation import row_records

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

#: Measured time from the owner's SIGKILL to the last process's end, per case.
DEATH_SECONDS: dict[str, float] = {}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _running(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
@pytest.mark.parametrize("row", ["gil", "gil+child", "sleep+child"])
def test_everything_dies_within_3s_of_the_owner(client, store, fault_log, start_method, row):
    b = {"gil": 0.0, "gil+child": 1.0, "sleep+child": 2.0}[row]
    deploy(client, "orphans", isolation_fns.hold_gil)
    owner, _ = start_owner(store, "orphans", 4, b, env={"FAULT_LOG": str(fault_log)},
                           start_method=start_method)
    try:
        noted = 2 if row == "gil" else 4
        _wait_for(lambda: len(list(fault_log.glob("pid-*"))) >= noted, 60,
                  "rows did not start")
        time.sleep(0.3)  # well inside the regex / the sleep
        tree = {p.pid for p in psutil.Process(owner.pid).children(recursive=True)}
        tree |= {int(p.name[4:]) for p in fault_log.glob("pid-*")}
        assert _running(tree) == tree
        t0 = time.monotonic()
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        _wait_for(lambda: not _running(tree), 3.0,
                  f"still running 3 s after the owner died: {_running(tree)}")
        DEATH_SECONDS[f"{row}/{start_method}"] = time.monotonic() - t0
    finally:
        owner.kill()
        owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()


def test_row_timeout_kills_children_in_their_own_session(client, store, fault_log):
    svc = deploy(client, "orphans-timeout", isolation_fns.sleepy_child)
    frame = pd.DataFrame({"a": [0.0, 1.0], "b": [0.0, 0.0]})
    resp = svc.batch(frame, parallel_count=2, row_timeout=1.0).start().wait(timeout=60)
    assert resp.state == "Complete" and resp.failed_item_count == 2
    assert resp.execution(0).error.startswith("RowTimeout")
    pids = {int(p.name[4:]) for p in fault_log.glob("pid-*")}
    assert len(pids) == 2
    _wait_for(lambda: not _running(pids), 3.0, f"row children outlived row_timeout: {pids}")


def _forked(body) -> int:
    """Run ``body`` in a fork()ed child (exit status 0 if it returned, 1 if it raised);
    the child is killed if it does not end within 20 s."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the fork()ed child hung")


def test_wait_in_a_forked_child_of_the_owner_returns(client, store, fault_log, monkeypatch):
    """Issue 13.5: batch.wait() in a fork()ed child of the owner never returned."""
    svc = deploy(client, "forked", isolation_fns.slow_row)
    frame = pd.DataFrame({"a": [float(i) for i in range(20)], "b": 0.0})
    batch = svc.batch(frame, parallel_count=2).start()

    def child() -> None:
        resp = batch.wait(timeout=15)
        assert resp.state == "Complete" and resp.completed_item_count == 20
        assert batch.results().state == "Complete"

    assert _forked(child) == 0
    assert batch.wait(timeout=30).state == "Complete"


def test_a_forked_child_exiting_leaves_its_parents_workers_alone(client, store):
    """The child's exit hooks must not stop the parent's warm workers or fork server."""
    svc = deploy(client, "forked-exit", isolation_fns.fd_writer)
    frame = pd.DataFrame({"a": [float(i) for i in range(20)], "b": 0.0})
    first = svc.batch(frame, parallel_count=2).start().wait(timeout=30)
    assert first.state == "Complete"
    warm = [w for ws in WORKER_POOL._idle.values() for w in ws]  # noqa: SLF001
    pids = {w.pid for w in warm}
    assert pids

    def child() -> None:
        batch = svc.batch(frame, parallel_count=1)  # a child may use the service too
        assert batch.start().wait(timeout=15).state == "Complete"
        atexit._run_exitfuncs()  # noqa: SLF001 - what a normal exit of the child runs

    assert _forked(child) == 0
    assert all(w.alive() for w in warm)
    again = svc.batch(frame, parallel_count=2).start().wait(timeout=30)
    assert again.state == "Complete" and again.failed_item_count == 0
    ran = {r[1] for r in row_records(store, again.execution_id).values()}
    assert {psutil.Process(pid).ppid() for pid in ran} <= pids  # the same warm workers


def test_report_death_times():
    """Prints the measured times (run with -s) for the report."""
    for case, seconds in sorted(DEATH_SECONDS.items()):
        print(f"owner SIGKILL -> all gone: {case}: {seconds * 1000:.0f} ms")
