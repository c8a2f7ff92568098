"""One bad row costs one row: what a row does to its worker is undone before the next row.

Each hazard runs on two rows of a batch on ONE worker (parallel_count=1), once
with the guard checking every row (a new worker's first rows) and once in the
fast loop (``LOCALBATCH_WATCH_ROWS=0``). Every row checks that nothing of an
earlier row is left (see ``isolation_fns.hazard``) and writes its own index to
its console, so a leak fails the rows that see it and shows in their consoles.
The promise: no row fails, every console is exactly its own row's, and the next
batch on the same warm worker pool succeeds in full.
"""

from __future__ import annotations

import os
import re
import time

import pandas as pd
import psutil
import pytest

from localbatch._format.columns import decode_all
from localbatch._format.part import Part

from . import isolation_fns
from .helpers import deploy, gone

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

HAZARDS = ["rmcwd", "tempdir", "rmfolder", "rmscratch", "files", "closefd", "dupfd",
           "signals", "environ", "syspath", "stdout", "umask", "interpreter", "child",
           "grandchild"]


def frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"a": [float(i) for i in range(rows)], "b": 1.0})


def row_records(store, execution_id) -> dict[int, tuple[str, int, int, str | None]]:
    """(console, worker pid, attempts, error type) of every row, read from the parts."""
    out = {}
    for path in sorted((store / "executions" / execution_id / "results").glob("part-*.lbp")):
        part = Part(path.read_bytes())
        cols = [decode_all(part.column(name)) for name in
                ("console", "worker_pid", "attempts", "error_type")]
        for i, console, pid, attempts, error in zip(part.column("index").buffers["values"],
                                                    *cols, strict=True):
            out[int(i)] = (console or "", pid, attempts or 1, error)
    return out


def expected_console(row: int) -> str:
    return f"fd1-{row}\nfd2-{row}\npy{row}\n"


def run_hazard(client, store, monkeypatch, mode: str, rows: int, bad: list[int],
               start_method: str = "spawn"):
    monkeypatch.setenv("ISO_MODE", mode)
    monkeypatch.setenv("ISO_ROWS", ",".join(map(str, bad)))
    svc = deploy(client, f"iso-{mode}", isolation_fns.hazard)
    resp = svc.batch(frame(rows), parallel_count=1, start_method=start_method).start()
    resp = resp.wait(timeout=90)
    watch = os.environ.get("LOCALBATCH_WATCH_ROWS", "")
    for row in bad:  # the rows did harm, as meant, with the loop meant
        assert f"harm-{watch}\n" in resp.execution(row).console_output
    return svc, resp


def assert_all_good(store, resp, rows: int, noted: tuple[int, ...] = ()
                    ) -> dict[int, tuple[str, int, int, str | None]]:
    records = row_records(store, resp.execution_id)
    failed = {i: resp.execution(i).error for i, r in records.items() if r[3] is not None}
    assert not failed, dict(list(failed.items())[:3])
    assert resp.state == "Complete" and resp.completed_item_count == rows
    assert resp.failed_item_count == 0
    assert (resp.to_frame()["y"] == [i * 2.0 + 1 for i in range(rows)]).all()
    harm = f"harm-{os.environ.get('LOCALBATCH_WATCH_ROWS', '')}\n"
    bad = {int(r) for r in os.environ.get("ISO_ROWS", "").split(",") if r}
    wrong = {i: r[0] for i, r in records.items()
             if r[0] != expected_console(i) + (harm if i in bad else "")
             and not (i in noted and r[0].startswith(expected_console(i) + harm
                                                     + "\n[localbatch: "))}
    assert not wrong, dict(list(wrong.items())[:3])
    assert {r[2] for r in records.values()} == {1}  # no row was charged an attempt
    return records


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
@pytest.mark.parametrize("loop", ["checked", "fast"])
@pytest.mark.parametrize("mode", ["rmcwd", "tempdir"])
def test_issue_instance_row_deletes_its_cwd(client, store, fault_log, monkeypatch, mode, loop,
                                            start_method):
    """Issue 13.1: row 3 deletes its cwd; 2000 rows, then a next batch on the warm worker."""
    if loop == "fast":
        monkeypatch.setenv("LOCALBATCH_WATCH_ROWS", "0")
    svc, resp = run_hazard(client, store, monkeypatch, mode, 2000, [3, 1500], start_method)
    records = assert_all_good(store, resp, 2000)
    assert len({r[1] for r in records.values()}) == 1  # one worker, never replaced
    again = svc.batch(frame(300), parallel_count=1, start_method=start_method).start()
    again = again.wait(timeout=60)
    assert_all_good(store, again, 300)
    assert {r[1] for r in row_records(store, again.execution_id).values()} == \
        {r[1] for r in records.values()}  # the same warm worker


@pytest.mark.parametrize("loop", ["checked", "fast"])
@pytest.mark.parametrize("mode", HAZARDS)
def test_hazard_is_undone_before_the_next_row(client, store, fault_log, monkeypatch, mode,
                                              loop):
    if loop == "fast":
        monkeypatch.setenv("LOCALBATCH_WATCH_ROWS", "0")
    svc, resp = run_hazard(client, store, monkeypatch, mode, 300, [3, 150])
    assert_all_good(store, resp, 300)
    again = svc.batch(frame(50), parallel_count=1).start().wait(timeout=60)
    assert_all_good(store, again, 50)
    for pid_file in fault_log.glob("pid-*"):  # children the rows left are gone
        pid = int(pid_file.name[4:])
        assert gone(pid)


def test_c_level_change_is_undone_while_the_guard_watches(client, store, fault_log,
                                                          monkeypatch):
    """C code calling chdir() raises no flag: a watched worker checks every row anyway."""
    svc, resp = run_hazard(client, store, monkeypatch, "cchdir", 300, [3, 150])
    assert_all_good(store, resp, 300)


def test_leftover_thread_retires_the_worker_and_charges_no_row(client, store, fault_log,
                                                               monkeypatch):
    """A non-daemon thread cannot be undone: the worker finishes its chunk, then is
    replaced while idle; no row fails or is charged an attempt, the next batch runs."""
    svc, resp = run_hazard(client, store, monkeypatch, "thread", 400, [3, 200])
    records = assert_all_good(store, resp, 400, noted=(3, 200))
    pids = [records[i][1] for i in range(400)]
    # The worker of row 3 retired within the batch; the one of row 200 retires at the end
    # of its chunk (which may be the batch's last): neither runs the next batch's rows.
    assert len(set(pids)) >= 2, "the worker was not replaced after the bad row"
    log = (store / "executions" / resp.execution_id / "execution.log").read_text()
    assert re.search(r"worker \d+ retired", log), log
    bad = resp.execution(3).console_output
    assert "left 1 non-daemon thread(s) running (iso-left)" in bad
    again = svc.batch(frame(50), parallel_count=1).start().wait(timeout=60)
    later = assert_all_good(store, again, 50, noted=(3,))
    assert not {later[i][1] for i in range(50)} & {pids[3], pids[200]}
    for pid in {pids[3], pids[200]}:  # a worker no bad row ran on stays warm
        deadline = time.monotonic() + 5
        while not gone(pid):
            assert time.monotonic() < deadline, f"retired worker {pid} still running"
            time.sleep(0.05)


@pytest.mark.parametrize("loop", ["checked", "fast"])
def test_row_closing_the_workers_own_fds_is_charged_like_a_crash(client, store, fault_log,
                                                                 monkeypatch, loop):
    """Its connection cannot be put back: the worker dies at once, the row is charged
    (and fails after max_attempts), no other row is."""
    if loop == "fast":
        monkeypatch.setenv("LOCALBATCH_WATCH_ROWS", "0")
    monkeypatch.setenv("ISO_MODE", "closerange")
    monkeypatch.setenv("ISO_ROWS", "3")
    svc = deploy(client, "iso-closerange", isolation_fns.hazard)
    resp = svc.batch(frame(300), parallel_count=1).start().wait(timeout=90)
    assert resp.state == "Complete" and resp.failed_item_count == 1
    bad = resp.execution(3)
    assert bad.error.startswith("WorkerDied: worker died: the row left it unable to restore")
    assert bad.attempts == 3
    records = row_records(store, resp.execution_id)
    assert {r[2] for i, r in records.items() if i != 3} == {1}
    wrong = [i for i, r in records.items() if i != 3 and r[0] != expected_console(i)]
    assert not wrong


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change user")
def test_row_changing_the_workers_user_is_charged_alone(client, store, fault_log, monkeypatch):
    """As nobody, the worker cannot reach its own folders: it dies at once, charged to
    the row; every other row runs as before, uncharged."""
    monkeypatch.setenv("ISO_MODE", "setuid")
    monkeypatch.setenv("ISO_ROWS", "3")
    svc = deploy(client, "iso-setuid", isolation_fns.hazard)
    resp = svc.batch(frame(300), parallel_count=1).start().wait(timeout=90)
    assert resp.state == "Complete" and resp.failed_item_count == 1
    assert resp.execution(3).error.startswith("WorkerDied: worker died: the row left it")
    records = row_records(store, resp.execution_id)
    assert {r[2] for i, r in records.items() if i != 3} == {1}
    assert all(r[0] == expected_console(i) for i, r in records.items() if i != 3)


def test_consume_after_a_retiring_call_gets_a_fresh_worker(client, store, fault_log,
                                                           monkeypatch):
    monkeypatch.setenv("ISO_MODE", "thread")
    monkeypatch.setenv("ISO_ROWS", "3")
    svc = deploy(client, "iso-consume", isolation_fns.hazard)
    first = svc.hazard(3.0, 1.0)
    assert not first.error and first.outputs["y"] == 7.0
    for _ in range(3):
        res = svc.hazard(4.0, 1.0)
        assert not res.error and res.outputs["y"] == 9.0, res.error


def test_fd_output_is_attributed_to_its_row_beyond_the_watch_window(client, store):
    """Issue 13.6: after a worker's first 1000 rows fd output landed on the wrong row."""
    rows = 3000
    svc = deploy(client, "iso-fd", isolation_fns.fd_writer)
    resp = svc.batch(frame(rows), parallel_count=1).start().wait(timeout=90)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    records = row_records(store, resp.execution_id)
    assert len(records) == rows and len({r[1] for r in records.values()}) == 1

    def own(i: int) -> str:
        return f"<o{i}><e{i}>" + (f"<c{i}>" if i % 7 == 0 else "")

    wrong = {i: r[0] for i, r in records.items() if r[0] != own(i)}
    assert not wrong, dict(list(wrong.items())[:5])


def test_fd_output_the_map_cannot_show_is_named_and_the_worker_then_checks_every_row(
        client, store, monkeypatch):
    """Output that begins with 0xFF leaves the capture's map unchanged (see
    ``_workers/capture.py``): the rest of its chunk's fd output goes to the chunk's last
    row, naming the rows it came from, and every row after that is exact again."""
    monkeypatch.setenv("LOCALBATCH_WATCH_ROWS", "0")  # the fast loop from the first row
    svc = deploy(client, "iso-fd-binary", isolation_fns.fd_binary)
    # spawn: a fresh worker reads LOCALBATCH_WATCH_ROWS (a warm template read it earlier)
    resp = svc.batch(frame(3000), parallel_count=1, start_method="spawn").start()
    resp = resp.wait(timeout=90)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    records = row_records(store, resp.execution_id)
    noted = [i for i, r in records.items() if r[0].startswith("[localbatch: ")]
    assert len(noted) == 1, noted
    last = noted[0]
    assert records[last][0] == (
        f"[localbatch: written to fd 1 or 2 by one of rows 1500-{last}, in output that "
        "began with byte 0xFF; from now on every row is checked]\n\ufffd"
        + "".join(f"<o{i}>" for i in range(1500, last + 1)))
    assert 1500 <= last < 2999  # the rest of that chunk only
    wrong = {i: r[0] for i, r in records.items()
             if r[0] != ("" if 1500 <= i < last else f"<o{i}>") and i != last}
    assert not wrong, dict(list(wrong.items())[:5])


@pytest.mark.parametrize("loop", ["checked", "fast"])
def test_a_row_that_reopens_dev_stdout_keeps_its_output_and_costs_no_other_row(
        client, store, monkeypatch, loop):
    """Opening /dev/stdout for writing (Python's open "w", a shell's ``>``) truncates the
    worker's capture file. It failed every later row of the batch with an internal error
    (2992 of 3000); each row now gets its own output, and the worker goes on."""
    if loop == "fast":
        monkeypatch.setenv("LOCALBATCH_WATCH_ROWS", "0")
    svc = deploy(client, f"iso-reopen-{loop}", isolation_fns.reopens_stdout)
    resp = svc.batch(frame(3000), parallel_count=1, start_method="spawn").start()
    resp = resp.wait(timeout=90)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    records = row_records(store, resp.execution_id)
    assert len({r[1] for r in records.values()}) == 1  # one worker all along

    def own(i: int) -> str:
        return {1500: "<r1500>", 2000: "<s2000>", 2500: "<r2500>"}.get(i, f"<o{i}>")

    wrong = {i: r[0] for i, r in records.items() if r[0] != own(i)}
    assert not wrong, dict(list(wrong.items())[:5])


def test_vectorised_fd_output_goes_to_the_first_row_of_its_call(client, store):
    svc = (client.service("iso-vector-fd").version("1").code_fn(isolation_fns.vector_fd)
           .inputs(a=float, b=float).outputs(y=float).vectorized().deploy())
    resp = svc.batch(frame(3000), parallel_count=1).start().wait(timeout=60)
    assert resp.state == "Complete" and resp.failed_item_count == 1
    records = row_records(store, resp.execution_id)
    printed = {i: r[0] for i, r in records.items() if r[0]}
    assert 0 in printed and 77 in printed  # the first call's, and row 77 bisected alone
    # Each call's output is on its first row (a failed call's on the first row of the
    # first half it is split into), whole, and nowhere else.
    wrong = {i: text for i, text in printed.items() if not re.fullmatch(f"(<v{i}>)+", text)}
    assert not wrong, wrong


def test_row_error_whose_str_raises_fails_that_row_only(client, store, monkeypatch):
    monkeypatch.setenv("ISO_MODE", "none")
    svc = deploy(client, "iso-str", isolation_fns.bad_str)
    resp = svc.batch(frame(200), parallel_count=1).start().wait(timeout=60)
    assert resp.state == "Complete" and resp.failed_item_count == 1
    assert resp.execution(5).error.startswith("Unprintable: <Unprintable: str() raised>")
    assert resp.execution(6).outputs["y"] == 13.0


@pytest.fixture(autouse=True)
def _no_leftover_children():
    """Every test here leaves no process behind (workers are the pool's, reaped at exit)."""
    yield
    me = psutil.Process(os.getpid())
    for child in me.children(recursive=True):
        if "sleep" in " ".join(child.cmdline()):
            pytest.fail(f"left a row's child running: {child.pid} {child.cmdline()}")


def test_vectorized_chunk_is_undone_before_the_next_chunk(client, store):
    svc = (client.service("iso-vector").version("1").code_fn(isolation_fns.vector_hazard)
           .inputs(a=float, b=float).outputs(y=float).vectorized().deploy())
    resp = svc.batch(frame(3000), parallel_count=1).start().wait(timeout=60)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    assert (resp.to_frame()["y"] == [i * 2.0 + 1 for i in range(3000)]).all()
    assert len({r[1] for r in row_records(store, resp.execution_id).values()}) == 1
