"""The Batch API end to end: start, poll, read rows, cancel, other processes, frames.

Every batch runs in real worker processes (``parallel_count=2``) on a store under
tmp_path; "another process" is a real ``python -c`` subprocess on the same store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scoring_fns

from localbatch import (
    BatchError,
    BatchNotStartedError,
    BatchResponse,
    BatchTimeoutError,
    ExecutionNotFoundError,
    RowNotRecordedError,
)

TERMINAL = ("Complete", "Failed", "Canceled")


# -- service functions (pickled by value: workers never import this module) ----------


def logged_sleep(a, b, log):
    """Append "<row> <start time>" to a side file, then sleep: who ran, and when."""
    import time

    with open(log, "a") as fh:
        fh.write(f"{a} {time.time()!r}\n")
    time.sleep(b)
    return a


def vector_of(a, b):
    import numpy as np

    return np.arange(int(a)) * b


def frame_of(a, b):
    import pandas as pd

    return pd.DataFrame({"x": [a] * int(b), "y": [f"r{a}"] * int(b)})


def one_row(a, b):
    import pandas as pd

    if a == 2:
        raise KeyError("two")
    return pd.DataFrame({"s": [a + b], "t": ["ok"]})


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def add_svc(client):
    return (client.service("adder").version("1.0").code_fn(scoring_fns.add)
            .inputs(a=float, b=float).outputs(answer=float).deploy())


@pytest.fixture
def sleeper(client):
    return (client.service("sleeper").version("1.0").code_fn(logged_sleep)
            .inputs(a=int, b=float, log=str).outputs(answer=int).deploy())


def _sleep_records(n: int, seconds: float, log: Path) -> dict[str, list]:
    return {"a": list(range(n)), "b": [seconds] * n, "log": [str(log)] * n}


def _poll_until(predicate, timeout: float = 20.0, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def _started_rows(log: Path) -> list[tuple[int, float]]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:  # a line being written may be partial
            rows.append((int(parts[0]), float(parts[1])))
    return rows


def _nones(series: pd.Series) -> list:
    """Values with every missing one as None (pandas 3 shows missing text as NaN)."""
    return [None if pd.isna(v) else v for v in series.tolist()]


def _python(code: str, store: Path, timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``client`` open on ``store``."""
    prelude = ("import json, sys, time\nfrom localbatch import DeployClient\n"
               f"client = DeployClient({str(store)!r})\n")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, **kw)


def _popen(code: str, store: Path) -> subprocess.Popen:
    prelude = ("import json, sys, time\nfrom localbatch import DeployClient\n"
               f"client = DeployClient({str(store)!r})\n")
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- start ---------------------------------------------------------------------------------


def test_start_returns_at_once_sets_the_id_and_never_starts_twice(sleeper, tmp_path):
    log = tmp_path / "rows.log"
    batch = sleeper.batch(_sleep_records(4, 0.2, log), parallel_count=2)
    assert batch.execution_id is None
    with pytest.raises(BatchNotStartedError):
        batch.results()
    t0 = time.monotonic()
    assert batch.start() is batch
    spent = time.monotonic() - t0
    first = batch.execution_id
    assert isinstance(first, str) and first
    assert batch.state in ("Pending", "InProgress")  # the caller goes on while rows run
    assert batch.start() is batch and batch.execution_id == first
    assert sleeper.list_batch_executions() == [first]
    final = batch.wait(30)
    assert final.state == "Complete"
    # Rows ran at most once each although start() was called twice.
    assert sorted(r for r, _ in _started_rows(log)) == list(range(4))
    assert spent < time.monotonic() - t0 - 0.3, "start() waited for the rows"


def test_parallel_count_aliases_and_validation(add_svc):
    assert add_svc.batch({"a": [1.0], "b": [2.0]}, parallelCount=3).parallel_count == 3
    assert add_svc.batch({"a": [1.0], "b": [2.0]}).parallel_count == 10
    with pytest.raises(ValueError):
        add_svc.batch({"a": [1.0], "b": [2.0]}, parallel_count=0)
    with pytest.raises(TypeError):
        add_svc.batch({"a": [1.0], "b": [2.0]}, parallel_cuont=2)


# -- results ---------------------------------------------------------------------------------


def test_results_fields_rows_and_sdk_str_layout(add_svc):
    batch = add_svc.batch({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 1.0, 1.0, 5.0]},
                          parallel_count=2).start()
    assert isinstance(batch.wait(30), BatchResponse)
    r = batch.results()
    assert (r.state, r.completed_item_count, r.total_item_count, r.failed_item_count) == \
        ("Complete", 4, 4, 0)
    assert r.error == "" and r.resumable is False
    assert r.execution_id == batch.execution_id and r.api == "/api/adder/1.0"
    assert str(r) == (
        "\n<BatchResponse> \n   api: /api/adder/1.0 \n"
        f"   execution_id: {batch.execution_id}\n"
        "   completed_item_count : 4\n   total_item_count: 4\n   state: Complete")
    assert repr(r) == str(r)
    # 0-based rows in input order.
    assert [r.execution(i).outputs["answer"] for i in range(4)] == [1.0, 3.0, 5.0, 11.0]
    row = r.execution(3)
    assert row.error == "" and row.console_output == "" and row.artifacts == {}
    assert row.api == "/api/adder/1.0"
    for bad in (4, -1, 100):
        with pytest.raises(LookupError):
            r.execution(bad)
    with pytest.raises(TypeError):
        r.execution("1")
    none_failed = r.failed()
    assert len(none_failed) == 0
    assert list(none_failed.columns) == ["row", "a", "b", "error_type", "error_message",
                                         "attempts"]
    assert str(batch).startswith("<Batch> \n")
    assert batch.execution_id in str(batch)


def test_state_is_callable_and_a_string(add_svc):
    batch = add_svc.batch({"a": [1.0], "b": [1.0]}, parallel_count=2).start()
    batch.wait(30)
    assert batch.state == "Complete"
    assert batch.state() == "Complete"
    assert isinstance(batch.state, str) and batch.state in TERMINAL
    assert f"{batch.state}" == "Complete"


def test_show_partial_results_and_its_aliases(sleeper, tmp_path):
    log = tmp_path / "rows.log"
    batch = sleeper.batch(_sleep_records(6, 0.15, log), parallel_count=2).start()
    # While it runs: no rows without partial results, under every spelling.
    running = batch.results(show_partial_results=False)
    assert running.state in ("Pending", "InProgress")
    for r in (running, batch.results(showPartialResults=False),
              batch.results(showPartialResult=False)):
        with pytest.raises(LookupError):
            r.execution(0)
    # A row not recorded yet raises a LookupError subclass with partial results too.
    with pytest.raises(RowNotRecordedError):
        batch.results(show_partial_results=True).execution(5)
    with pytest.raises(TypeError):
        batch.results(show_partial=True)
    batch.wait(30)
    for r in (batch.results(show_partial_results=False), batch.results(showPartialResults=False),
              batch.results(showPartialResult=True), batch.results()):
        assert r.state == "Complete"
        assert [r.execution(i).outputs["answer"] for i in range(6)] == list(range(6))


def test_counts_only_grow_while_polling(client, add_svc):
    n = 3000
    # Rows of ~1 ms, so several parts are committed while we poll.
    slow = client.service("ms").version("1").code_fn(scoring_fns.slow) \
        .inputs(a=float, b=float).outputs(answer=float).deploy()
    batch = slow.batch({"a": list(range(n)), "b": [0.001] * n}, parallel_count=2).start()
    seen = []
    while True:
        r = batch.results()
        seen.append((r.completed_item_count, r.state))
        assert r.total_item_count == n
        if r.state in TERMINAL:
            break
        time.sleep(0.01)
    batch.wait(10)  # the owner may still be handing its workers back
    counts = [c for c, _ in seen]
    assert counts == sorted(counts), "a count went down"
    assert counts[-1] == n and seen[-1][1] == "Complete"
    assert len(set(counts)) >= 3, f"expected intermediate counts, saw {sorted(set(counts))}"


def test_failed_rows_keep_the_batch_complete(client):
    svc = (client.service("flaky").version("1").code_fn(scoring_fns.fail_on_three)
           .inputs(a=int, b=int).outputs(answer=int).deploy())
    frame = pd.DataFrame({"a": [1, 3, 5, 3], "b": [1, 1, 1, 2]}, index=["w", "x", "y", "z"])
    r = svc.batch(frame, parallel_count=2).start().wait(30)
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", 4, 2)
    bad = r.execution(1)
    assert bad.error == "ValueError: bad row 3"
    assert "bad row 3" in bad.traceback and "fail_on_three" in bad.traceback
    assert bad.error_type == "ValueError" and bad.attempts == 1
    assert r.execution(0).outputs == {"answer": 2} and r.execution(0).error == ""
    failed = r.failed()
    assert failed.index.tolist() == ["x", "z"]
    assert failed["row"].tolist() == [1, 3]
    assert failed["a"].tolist() == [3, 3] and failed["b"].tolist() == [1, 2]
    assert failed["error_type"].tolist() == ["ValueError"] * 2
    assert failed["error_message"].tolist() == ["bad row 3"] * 2
    assert failed["attempts"].tolist() == [1, 1]
    frame_out = r.to_frame()
    assert frame_out.index.tolist() == ["w", "x", "y", "z"]
    assert _nones(frame_out["error"]) == [None, "ValueError: bad row 3", None,
                                          "ValueError: bad row 3"]


def test_console_output_is_per_row(client):
    svc = (client.service("loud").version("1").code_fn(scoring_fns.shout)
           .inputs(a=int, b=int).outputs(answer=int).deploy())
    r = svc.batch({"a": [1, 2, 3], "b": [0, 0, 0]}, parallel_count=2).start().wait(30)
    assert [r.execution(i).console_output for i in range(3)] == \
        ["row a=1\n", "row a=2\n", "row a=3\n"]


# -- wait, to_frame ------------------------------------------------------------------------


def test_wait_timeout_then_final_response(sleeper, tmp_path):
    batch = sleeper.batch(_sleep_records(2, 0.2, tmp_path / "log"), parallel_count=2).start()
    with pytest.raises(BatchTimeoutError) as info:
        batch.wait(timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    final = batch.wait()
    assert isinstance(final, BatchResponse)
    assert (final.state, final.completed_item_count) == ("Complete", 2)
    assert batch.wait(0).state == "Complete"  # a finished batch returns at once


def test_to_frame_scalars_keep_the_input_index(add_svc):
    frame = pd.DataFrame({"b": [1.0, 2.0, 3.0], "a": [10.0, 20.0, 30.0]},
                         index=pd.Index(["Mazda RX4", "Datsun 710", "Valiant"]))
    out = add_svc.batch(frame, parallel_count=2).start().wait(30).to_frame()
    assert out.index.tolist() == ["Mazda RX4", "Datsun 710", "Valiant"]
    assert list(out.columns) == ["answer", "error"]
    assert out["answer"].tolist() == [21.0, 42.0, 63.0]
    assert _nones(out["error"]) == [None, None, None]


@pytest.mark.parametrize("index", [
    pd.date_range("2024-01-01", periods=3, freq="D"),
    pd.Index([0.5, 1.5, 2.5]),
    pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)]),
    pd.Index(["x", 2, None], dtype=object),
], ids=["datetime", "float", "multi", "mixed"])
def test_to_frame_and_failed_keep_the_type_of_the_input_index(client, index):
    svc = (client.service("flaky").version("1").code_fn(scoring_fns.fail_on_three)
           .inputs(a=int, b=int).outputs(answer=int).deploy())
    frame = pd.DataFrame({"a": [1, 3, 5], "b": [0, 0, 0]}, index=index)
    r = svc.batch(frame, parallel_count=2).start().wait(30)
    out = r.to_frame()
    if isinstance(index, pd.MultiIndex):
        assert out.index.tolist() == index.tolist() and out.index.nlevels == 2
    elif index.dtype == object:
        assert _nones(out.index.to_series()) == ["x", "2", None]  # mixed labels: as text
    else:
        assert out.index.tolist() == index.tolist() and out.index.dtype == index.dtype
        assert out.index.name == "index"
    assert out["answer"].tolist()[0] == 1
    assert r.failed().index.tolist() == out.index[[1]].tolist()


def test_rows_can_be_numpy_integers_but_not_bools(add_svc):
    batch = add_svc.batch({"a": [1.0, 2.0], "b": [0.0, 0.0]}, parallel_count=2).start()
    r = batch.wait(30)
    assert r.execution(np.int64(1)).outputs["answer"] == 4.0
    assert batch.list_artifacts(np.int32(0)) == []
    with pytest.raises(TypeError):
        r.execution(True)
    with pytest.raises(TypeError):
        r.execution(1.0)


def test_to_frame_one_row_frames_become_prefixed_columns(client):
    svc = (client.service("onerow").version("1").code_fn(one_row)
           .inputs(a=int, b=int).outputs(answer=pd.DataFrame).deploy())
    out = svc.batch({"a": [0, 1, 2, 3], "b": [1, 1, 1, 1]}, parallel_count=2).start() \
        .wait(30).to_frame()
    assert list(out.columns) == ["answer.s", "answer.t", "error"]
    assert out.index.tolist() == [0, 1, 2, 3]
    assert out["answer.s"].tolist()[:2] == [1, 2] and out["answer.s"].tolist()[3] == 4
    assert _nones(out["answer.t"]) == ["ok", "ok", None, "ok"]
    assert pd.isna(out["answer.s"].tolist()[2])
    assert out["error"].tolist()[2] == "KeyError: 'two'"


def test_to_frame_vectors_become_list_columns(client):
    svc = (client.service("vec").version("1").code_fn(vector_of)
           .inputs(a=int, b=float).outputs(v=np.ndarray).deploy())
    r = svc.batch({"a": [3, 0, 2], "b": [1.0, 1.0, 0.5]}, parallel_count=2).start().wait(30)
    out = r.to_frame()
    assert out["v"].tolist() == [[0.0, 1.0, 2.0], [], [0.0, 0.5]]
    np.testing.assert_array_equal(r.execution(0).outputs["v"], np.array([0.0, 1.0, 2.0]))


def test_to_frame_multi_row_frames_give_a_long_table(client):
    svc = (client.service("long").version("1").code_fn(frame_of)
           .inputs(a=int, b=int).outputs(answer=pd.DataFrame).deploy())
    frame = pd.DataFrame({"a": [7, 8, 9], "b": [2, 0, 3]}, index=["p", "q", "r"])
    r = svc.batch(frame, parallel_count=2).start().wait(30)
    out = r.to_frame()
    assert out.index.names == ["index", "position"]
    assert out.index.tolist() == [("p", 0), ("p", 1), ("r", 0), ("r", 1), ("r", 2)]
    assert out["answer.x"].tolist() == [7, 7, 9, 9, 9]
    assert out["answer.y"].tolist() == ["r7", "r7", "r9", "r9", "r9"]
    assert "error" in out.columns
    pd.testing.assert_frame_equal(r.execution(2).outputs["answer"],
                                  pd.DataFrame({"x": [9, 9, 9], "y": ["r9"] * 3}))


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_mid_run_stops_every_row(sleeper, tmp_path):
    log = tmp_path / "rows.log"
    n = 200
    batch = sleeper.batch(_sleep_records(n, 0.05, log), parallel_count=2).start()
    _poll_until(lambda: batch.results().completed_item_count > 0)
    assert batch.cancel() is batch
    cancelled_at = time.time()
    r = batch.results()
    assert r.state == "Canceled" and batch.state == "Canceled"
    assert 0 < r.completed_item_count < n
    started = _started_rows(log)
    assert all(t < cancelled_at for _, t in started)
    time.sleep(0.5)
    assert _started_rows(log) == started, "a row started after cancel() returned"
    # Finished rows stay readable; the rest are not recorded.
    recorded = [i for i in range(n) if _recorded(r, i)]
    assert len(recorded) == r.completed_item_count
    assert all(r.execution(i).outputs["answer"] == i for i in recorded)
    assert batch.cancel() is batch and batch.state == "Canceled"


def _recorded(r: BatchResponse, index: int) -> bool:
    try:
        r.execution(index)
    except LookupError:
        return False
    return True


def test_cancel_on_a_finished_batch_does_nothing(add_svc):
    batch = add_svc.batch({"a": [1.0, 2.0], "b": [0.0, 0.0]}, parallel_count=2).start()
    batch.wait(30)
    assert batch.cancel() is batch
    r = batch.results()
    assert (r.state, r.completed_item_count) == ("Complete", 2)
    assert r.execution(1).outputs["answer"] == 4.0


def test_cancel_before_start_is_an_error(add_svc):
    with pytest.raises(BatchNotStartedError):
        add_svc.batch({"a": [1.0], "b": [0.0]}).cancel()


def test_cancel_from_another_process_asks_the_owner(sleeper, store, tmp_path):
    log = tmp_path / "rows.log"
    n = 400  # ~10 s of rows: far longer than the canceling interpreter takes to start
    batch = sleeper.batch(_sleep_records(n, 0.05, log), parallel_count=2).start()
    _poll_until(lambda: len(_started_rows(log)) >= 2)
    proc = _python(f"""
        svc = client.get_service("sleeper", version="1.0")
        b = svc.get_batch({batch.execution_id!r})
        assert b.cancel() is b
        print(b.state)
    """, store)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Canceled"
    done_at = time.time()
    r = batch.wait(10)
    assert r.state == "Canceled" and r.completed_item_count < n
    # The owner (this process) stopped its own rows: the other process only asked.
    events = (store / "executions" / batch.execution_id / "execution.log").read_text()
    assert re.search(rf"pid={os.getpid()} .*canceled", events), events
    started = _started_rows(log)
    time.sleep(0.3)
    assert _started_rows(log) == started and all(t < done_at for _, t in started)


# -- other processes ----------------------------------------------------------------------------


def test_get_batch_and_listing_from_another_process(sleeper, store, tmp_path):
    log = tmp_path / "rows.log"
    watcher = _popen("""
        svc = client.get_service("sleeper", version="1.0")
        print("ready", flush=True)
        while not svc.list_batch_executions():
            time.sleep(0.005)
        eid = svc.list_batch_executions()[0]
        seen = []
        while True:
            b = svc.get_batch(eid)
            r = b.results()
            seen.append([r.state, r.completed_item_count, r.total_item_count])
            if r.state in ("Complete", "Failed", "Canceled"):
                break
            time.sleep(0.02)
        print(json.dumps({"seen": seen, "listed": svc.list_batch_executions(),
                          "alias": svc.get_batch_executions(),
                          "row": r.execution(29).outputs["answer"]}))
    """, store)
    assert watcher.stdout.readline().strip() == "ready"
    batch = sleeper.batch(_sleep_records(30, 0.05, log), parallel_count=2).start()
    eid = batch.execution_id
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    report = json.loads(out)
    seen = report["seen"]
    assert any(s in ("Pending", "InProgress") for s, _, _ in seen), "never saw it running"
    assert seen[-1] == ["Complete", 30, 30]
    counts = [c for _, c, _ in seen]
    assert counts == sorted(counts)
    assert report["listed"] == [eid] and report["alias"] == [eid]
    assert report["row"] == 29
    assert batch.wait(5).state == "Complete"


def test_unknown_execution_id_is_a_lookup_error(add_svc, store):
    for bad in ("0" * 32, "../../etc", "", "a/b"):
        with pytest.raises(ExecutionNotFoundError):
            add_svc.get_batch(bad)
    with pytest.raises(LookupError):
        add_svc.get_batch("f" * 32)
    proc = _python("""
        svc = client.get_service("adder", version="1.0")
        try:
            svc.get_batch("deadbeef" * 4)
        except LookupError as exc:
            print(type(exc).__name__)
    """, store)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ExecutionNotFoundError"


def test_an_execution_outlives_the_script_that_started_it(client, add_svc, store, tmp_path):
    # A plain script, no main guard: it starts a batch and reaches its end at once.
    script = tmp_path / "start_and_leave.py"
    script.write_text(textwrap.dedent(f"""
        from localbatch import DeployClient

        def slow_add(a, b):
            import time
            time.sleep(0.02)
            return a * 2.0 + b

        client = DeployClient({str(store)!r})
        svc = (client.service("leaver").version("1").code_fn(slow_add)
               .inputs(a=float, b=float).outputs(answer=float).deploy())
        batch = svc.batch({{"a": list(range(20)), "b": [1.0] * 20}}, parallel_count=2).start()
        print(batch.execution_id, batch.state, flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    eid, state_at_end = proc.stdout.split()
    assert state_at_end in ("Pending", "InProgress")
    waited = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(waited) == 1 and "waiting" in waited[0], proc.stderr
    svc = client.get_service("leaver", version="1")
    r = svc.get_batch(eid).results()
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", 20, 0)
    assert [r.execution(i).outputs["answer"] for i in (0, 19)] == [1.0, 39.0]
    assert svc.list_batch_executions() == [eid]


def test_delete_removes_a_finished_execution(add_svc, sleeper, store, tmp_path):
    running = sleeper.batch(_sleep_records(4, 0.2, tmp_path / "log"), parallel_count=2).start()
    with pytest.raises(BatchError):
        running.delete()
    running.cancel()
    batch = add_svc.batch({"a": [1.0], "b": [2.0]}, parallel_count=2).start()
    batch.wait(30)
    folder = store / "executions" / batch.execution_id
    assert folder.is_dir()
    assert batch.delete() is None
    assert not folder.exists()
    assert add_svc.list_batch_executions() == []
    with pytest.raises(LookupError):
        add_svc.get_batch(batch.execution_id)
    with pytest.raises(LookupError):
        batch.results()
    running.delete()  # canceled is finished too
    assert sleeper.list_batch_executions() == []
    assert all(p.name.startswith(".") for p in (store / "executions").iterdir())
    staging = store / "executions" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []  # no trash left behind


def test_get_batch_of_another_service_is_not_found(add_svc, client):
    other = (client.service("other").version("1").code_fn(scoring_fns.add)
             .inputs(a=float, b=float).outputs(answer=float).deploy())
    batch = add_svc.batch({"a": [1.0], "b": [2.0]}, parallel_count=2).start()
    batch.wait(30)
    with pytest.raises(LookupError):
        other.get_batch(batch.execution_id)
    assert other.list_batch_executions() == []


def test_execution_ids_are_safe_names(add_svc):
    batch = add_svc.batch({"a": [1.0], "b": [2.0]}, parallel_count=2).start()
    batch.wait(30)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", batch.execution_id)
    assert os.sep not in batch.execution_id


def test_the_workers_a_batch_needs_start_before_its_inputs_are_spooled(add_svc, store):
    from localbatch._engines.base import BatchOptions
    from localbatch._engines.local import LocalEngine, pool_key
    from localbatch._workers.pool import WORKER_POOL

    options = BatchOptions(parallel_count=3, start_method="spawn")  # forked: see test_warm_workers
    key = pool_key(add_svc._record, options)
    LocalEngine().prepare(add_svc._record, options, rows=None)  # a CSV: size unknown
    assert WORKER_POOL.idle_count(key) == 0
    LocalEngine().prepare(add_svc._record, options, rows=2)  # the first worker
    assert WORKER_POOL.idle_count(key) == 1
    LocalEngine().prepare(add_svc._record, options, rows=1000)  # more start as work waits
    assert WORKER_POOL.idle_count(key) == 1
    early = {w.pid for w in WORKER_POOL._idle[key]}

    batch = add_svc.batch({"a": [1.0, 2.0, 3.0], "b": [1.0] * 3}, parallel_count=3,
                          start_method="spawn").start()
    assert batch.wait(30).state == "Complete"
    log = (store / "executions" / batch.execution_id / "execution.log").read_text()
    # The batch ran on the workers started ahead of it, and started no other.
    assert {int(p) for p in re.findall(r"worker (\d+) started", log)} == early
