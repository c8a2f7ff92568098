"""The job store on disk (DESIGN §3): header, columnar parts, file counts, safe reading."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import scoring_fns

import localbatch
from localbatch import DeployClient
from localbatch._format.part import Part
from localbatch._store.fsutil import read_json, write_json
from localbatch._store.states import ACTIVE, TERMINAL, ExecutionState

RESULT_COLUMNS = {"index", "attempts", "worker_pid", "started", "ended", "error_type",
                  "error_message", "traceback", "console", "history"}


def predict_frame(hp, wt):
    import pandas as pd

    print(f"scoring {hp}")
    with open("answer.csv", "w") as fh:
        fh.write(f"{hp},{wt}\n")
    if hp < 0:
        raise ValueError("negative hp")
    return pd.DataFrame({"am_Pred": [hp / 100 - wt / 10], "label": [f"car{hp}"]})


@pytest.fixture
def add_svc(client):
    return (client.service("adder").version("1.0").code_fn(scoring_fns.add)
            .inputs(a=float, b=float).outputs(answer=float).deploy())


def test_execution_states_are_stored_as_the_sdk_strings(tmp_path: Path):
    write_json(tmp_path / "execution.json", {"state": ExecutionState.IN_PROGRESS})
    assert json.loads((tmp_path / "execution.json").read_text())["state"] == "InProgress"
    state = read_json(tmp_path / "execution.json")["state"]
    assert type(state) is str and state == ExecutionState.IN_PROGRESS and state in ACTIVE
    assert [s.value for s in ExecutionState] == [
        "Pending", "InProgress", "Complete", "Failed", "Canceled"]
    assert set(ExecutionState) == ACTIVE | TERMINAL and not ACTIVE & TERMINAL
    assert f"{ExecutionState.COMPLETE}" == str(ExecutionState.COMPLETE) == "Complete"


def _folder(store: Path, batch) -> Path:
    return store / "executions" / batch.execution_id


def test_header_has_format_version_and_the_documented_fields(add_svc, store):
    batch = add_svc.batch({"a": [1.0, 2.0, 3.0], "b": [0.0, 0.0, 0.0]}, parallel_count=2).start()
    batch.wait(30)
    header = json.loads((_folder(store, batch) / "execution.json").read_text())
    assert header["format_version"] == 2  # checksummed header (Step 10)
    for key in ("service", "version", "revision", "total", "parallel_count", "state",
                "completed", "failed", "error", "created", "started", "ended"):
        assert key in header, key
    assert (header["service"], header["version"], header["total"], header["parallel_count"],
            header["state"], header["completed"], header["failed"]) == \
        ("adder", "1.0", 3, 2, "Complete", 3, 0)
    assert header["ended"] >= header["started"] >= header["created"]


def test_result_parts_are_columnar_with_the_fixed_schema(client, store):
    svc = (client.service("tx").version("1").code_fn(predict_frame)
           .inputs(hp=float, wt=float).outputs(answer=pd.DataFrame)
           .artifacts(["answer.csv"]).deploy())
    batch = svc.batch({"hp": [110.0, -1.0, 93.0], "wt": [2.6, 2.3, 3.2]},
                      parallel_count=2).start()
    batch.wait(30)
    folder = _folder(store, batch)
    names = sorted(os.listdir(folder / "results"))
    assert names and all(re.fullmatch(r"part-\d{6}\.lbp", n) for n in names)
    rows: dict[int, tuple] = {}
    for name in names:
        data = (folder / "results" / name).read_bytes()
        assert data[:4] == b"LBP2"  # format 2: checksummed (_format/part.py)
        part = Part(data)
        assert set(part.names()) == RESULT_COLUMNS | {"out.answer"}
        kinds = {n: part.column(n)[0] for n in part.names()}
        assert kinds["out.answer"] == "frame"  # a DataFrame is stored as data
        assert kinds["console"] == kinds["traceback"] == kinds["error_type"] == "str"
        # One console blob per part with per-row offsets.
        console = part.column("console")[2]
        assert set(console) == {"data", "offsets", "mask"}
        assert len(console["offsets"]) == part.rows + 1
        from localbatch._format.columns import decode_all

        for i, idx in enumerate(decode_all(part.column("index"))):
            rows[idx] = tuple(decode_all(part.column(c))[i]
                              for c in ("console", "error_type", "worker_pid"))
    assert sorted(rows) == [0, 1, 2]
    assert rows[0][0] == "scoring 110.0\n" and rows[0][1] is None and rows[0][2] > 0
    assert rows[1][1] == "ValueError"
    # Artifacts are per-row folders (a row that raised keeps the files it wrote)
    # with what the parts hold.
    assert sorted(os.listdir(folder / "artifacts")) == ["0", "1", "2"]
    header = json.loads((folder / "execution.json").read_text())
    assert (header["completed"], header["failed"]) == (3, 1)


def test_ten_thousand_fast_rows_leave_few_files(add_svc, store):
    n = 10_000
    batch = add_svc.batch({"a": [float(i) for i in range(n)], "b": [1.0] * n},
                          parallel_count=2).start()
    r = batch.wait(60)
    assert (r.state, r.completed_item_count) == ("Complete", n)
    files = [Path(d) / f for d, _, fs in os.walk(_folder(store, batch)) for f in fs]
    assert len(files) < 100, sorted(str(f) for f in files)
    frame = r.to_frame()
    assert len(frame) == n and frame["answer"].iloc[-1] == 2.0 * (n - 1) + 1.0


def _forbid_unpickling(monkeypatch) -> None:
    import pickle

    import cloudpickle

    def boom(*args, **kwargs):
        raise AssertionError("reading results unpickled something")

    for module in (pickle, cloudpickle):
        for name in ("loads", "load", "Unpickler"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, boom)


def test_reading_never_unpickles(client, store, monkeypatch):
    svc = (client.service("tx").version("1").code_fn(predict_frame)
           .inputs(hp=float, wt=float).outputs(answer=pd.DataFrame)
           .artifacts(["answer.csv"]).deploy())
    batch = svc.batch(pd.DataFrame({"hp": [110.0, -1.0, 93.0], "wt": [2.6, 2.3, 3.2]},
                                   index=["a", "b", "c"]), parallel_count=2).start()
    batch.wait(30)
    client.close()  # no worker left that could talk to us
    _forbid_unpickling(monkeypatch)
    reader = DeployClient(str(store))  # a fresh reader: no cached parts
    svc2 = reader.get_service("tx", version="1")
    assert svc2.list_batch_executions() == [batch.execution_id]
    again = svc2.get_batch(batch.execution_id)
    r = again.results()
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", 3, 1)
    answer = r.execution(0).outputs["answer"]
    assert answer["label"].tolist() == ["car110.0"]
    assert r.execution(1).error == "ValueError: negative hp"
    frame = r.to_frame()
    assert frame.index.tolist() == ["a", "b", "c"]
    assert list(frame.columns) == ["answer.am_Pred", "answer.label", "error"]
    assert r.failed().index.tolist() == ["b"]
    assert again.list_artifacts(2) == ["answer.csv"]
    assert again.artifact(2, "answer.csv") == b"93.0,3.2\n"
    assert reader.list_executions()[0]["state"] == "Complete"


_PACKAGE = Path(localbatch.__file__).parent
#: Every module that reads a store; only the registry's revision builder pickles.
_READERS = sorted(str(p.relative_to(_PACKAGE)) for p in [
    *(_PACKAGE / "_format").glob("*.py"), *(_PACKAGE / "_store").glob("*.py"),
    _PACKAGE / "_batch.py"] if p.name != "revision.py")


@pytest.mark.parametrize("module", _READERS)
def test_reading_modules_do_not_import_pickle(module):
    tree = ast.parse((_PACKAGE / module).read_text())
    imported = {alias.name for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom)}
    assert not {"pickle", "cloudpickle", "_pickle", "dill", "joblib"} & imported


def test_a_reader_in_another_process_never_sees_half_a_part(client, store, monkeypatch):
    import localbatch._store.commit as commit

    monkeypatch.setattr(commit, "PART_ROWS", 100)  # many commits while the reader polls
    monkeypatch.setattr(commit, "PART_INTERVAL", 0.0)
    svc = (client.service("ms").version("1").code_fn(scoring_fns.slow)
           .inputs(a=float, b=float).outputs(answer=float).deploy())
    n = 2000
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import json, os, sys, time
        from localbatch import DeployClient
        from localbatch._format.part import Part
        client = DeployClient({str(store)!r})
        print("ready", flush=True)
        while not client.list_executions():
            time.sleep(0.005)
        eid = client.list_executions()[0]["execution_id"]
        batch = client.get_execution(eid)
        results = os.path.join({str(store)!r}, "executions", eid, "results")
        polls, sizes, errors = 0, [], []
        while True:
            try:
                for name in os.listdir(results):
                    if name.startswith("part-"):
                        with open(os.path.join(results, name), "rb") as fh:
                            Part(fh.read()).column("out.answer")
                r = batch.results()
                frame = r.to_frame()
                bad = frame[frame["answer"] != frame.index.to_numpy() * 1.0]
                if len(bad):
                    errors.append(f"wrong rows {{bad.index.tolist()[:5]}}")
                if len(frame):
                    last = int(frame.index[-1])
                    if r.execution(last).outputs["answer"] != last:
                        errors.append(f"row {{last}} differs")
                sizes.append(len(frame))
            except Exception as exc:
                errors.append(f"{{type(exc).__name__}}: {{exc}}")
            polls += 1
            if r.state in ("Complete", "Failed", "Canceled"):
                break
        print(json.dumps({{"polls": polls, "sizes": sizes, "errors": errors[:10]}}))
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "ready"
    batch = svc.batch({"a": [float(i) for i in range(n)], "b": [0.0005] * n},
                      parallel_count=2).start()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    report = json.loads(out)
    assert report["errors"] == []
    sizes = report["sizes"]
    assert sizes == sorted(sizes) and sizes[-1] == n
    assert len(set(sizes)) >= 3, f"the reader saw too few commits: {sorted(set(sizes))}"
    assert batch.wait(10).state == "Complete"


def test_execution_log_has_worker_events_not_rows(add_svc, store):
    n = 500
    batch = add_svc.batch({"a": [float(i) for i in range(n)], "b": [0.0] * n},
                          parallel_count=2).start()
    batch.wait(30)
    log = (_folder(store, batch) / "execution.log").read_text()
    lines = log.splitlines()
    started = re.findall(r"worker (\d+) started \((?:spawn|forkserver)\)", log)
    assert 1 <= len(started) <= 2 and all(int(p) > 0 for p in started)  # on demand, <= 2
    assert any("batch complete" in line for line in lines)
    assert len(lines) < 15, log


@pytest.mark.faults
def test_execution_log_records_a_worker_death_with_pid_and_status(client, store):
    svc = (client.service("killer").version("1").code_fn(scoring_fns.kill_on)
           .inputs(a=int, b=int).outputs(answer=int).deploy())
    batch = svc.batch({"a": [1, 2, 3], "b": [0, 2, 0]}, parallel_count=2,
                      max_attempts=1).start()
    r = batch.wait(30)
    assert r.state == "Complete" and r.failed_item_count == 1
    assert r.execution(1).error.startswith("WorkerDied")
    log = (_folder(store, batch) / "execution.log").read_text()
    started = set(re.findall(r"worker (\d+) started", log))
    ended = re.findall(r"worker (\d+) ended: (.*)", log)
    assert len(ended) == 1 and ended[0][0] in started
    assert "signal 9" in ended[0][1] and "row 1" in ended[0][1]


def test_execution_log_records_a_cancel(client, store, tmp_path):
    svc = (client.service("ms").version("1").code_fn(scoring_fns.slow)
           .inputs(a=float, b=float).outputs(answer=float).deploy())
    batch = svc.batch({"a": [1.0] * 20, "b": [0.1] * 20}, parallel_count=2).start()
    deadline = time.monotonic() + 10
    while batch.state == "Pending" and time.monotonic() < deadline:
        time.sleep(0.01)
    batch.cancel()
    log = (_folder(store, batch) / "execution.log").read_text()
    assert "canceled" in log.lower()


def test_parts_kept_in_memory_stay_within_their_byte_bound(tmp_path: Path, monkeypatch):
    """The parts a process wrote or read are cached up to PART_CACHE_BYTES, least
    recently used out first; what is out of the cache is read from its file."""
    import numpy as np

    from localbatch._format.columns import encode_column
    from localbatch._store import executions

    monkeypatch.setattr(executions, "PART_CACHE_BYTES", 20_000)
    store = executions.ExecutionStore(tmp_path)
    folder = tmp_path / "executions" / "e1" / "results"
    folder.mkdir(parents=True)
    for seq in range(20):  # ~8 KB each
        values = np.arange(seq * 1000, (seq + 1) * 1000, dtype=np.float64)
        store.write_part(folder, seq, {"y": encode_column("float", values)}, 1000)
        assert store._cached_bytes <= 20_000  # noqa: SLF001 - the bound itself
    for seq in (0, 19):  # evicted long ago, and the last written
        part = store.read_part("e1", f"part-{seq:06d}.lbp")
        assert part.column("y").buffers["values"][0] == seq * 1000
    assert store._cached_bytes <= 20_000  # noqa: SLF001


def test_threads_reading_while_the_owner_writes_and_evicts_see_only_right_values(
        client, monkeypatch):
    """The owner's part cache is shared by its supervisor thread (which puts every part it
    publishes there) and every thread that reads. With a bound so small that each part
    evicts another, two threads poll results while the batch runs: no wrong value, no
    error, and the cache's byte count still adds up."""
    import threading

    import numpy as np

    import localbatch._store.commit as commit
    from localbatch._store import executions

    monkeypatch.setattr(commit, "PART_ROWS", 20)
    monkeypatch.setattr(commit, "PART_INTERVAL", 0.0)
    monkeypatch.setattr(executions, "PART_CACHE_BYTES", 4_000)
    svc = (client.service("cache-race").version("1").code_fn(scoring_fns.slow)
           .inputs(a=float, b=float).outputs(answer=float).deploy())
    n = 600
    batch = svc.batch(pd.DataFrame({"a": [float(i) for i in range(n)], "b": 0.002}),
                      parallel_count=2).start()
    problems: list[str] = []
    reads = [0, 0]

    def poll(slot: int) -> None:
        try:
            while True:
                resp = batch.results()
                frame = resp.to_frame()
                if not (frame["answer"].to_numpy() == frame.index.to_numpy() * 1.0).all():
                    problems.append(f"wrong values in a frame of {len(frame)} rows")
                if len(frame):
                    last = int(frame.index[-1])
                    if resp.execution(last).outputs["answer"] != last:
                        problems.append(f"row {last} read wrong")
                reads[slot] += 1
                if resp.state in ("Complete", "Failed", "Canceled"):
                    return
        except Exception as exc:  # noqa: BLE001 - any error is what the test looks for
            problems.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=poll, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert batch.wait(60).state == "Complete"
    assert not problems, problems[:3]
    assert min(reads) > 1  # both read while it ran
    final = batch.results().to_frame()
    assert np.array_equal(final["answer"].to_numpy(), np.arange(n) * 1.0)
    store = client._executions.store  # noqa: SLF001 - the cache's own accounting
    assert store._cached_bytes == sum(p.nbytes for p in store._parts.values())  # noqa: SLF001


def test_write_behind_writes_every_file_and_raises_the_first_error_after_all_ended(
        tmp_path: Path):
    from localbatch import StoreError
    from localbatch._store.fsutil import WriteBehind

    folder = tmp_path / "spool"
    folder.mkdir()
    with WriteBehind(depth=2) as out:
        for k in range(20):
            out.put(folder / f"f{k}", bytes([k]) * (k * 1000))
    assert sorted(os.listdir(folder)) == sorted(f"f{k}" for k in range(20))
    assert all((folder / f"f{k}").read_bytes() == bytes([k]) * (k * 1000) for k in range(20))
    # A write that fails (its folder is gone) fails the block, with its cause; the
    # writes around it still end before the block is left, and leave no temp file.
    with pytest.raises(StoreError, match="No such file"), WriteBehind(depth=8) as out:
        out.put(folder / "g0", b"x")
        out.put(tmp_path / "missing" / "g1", b"y")
        out.put(folder / "g2", b"z")
    assert (folder / "g0").read_bytes() == b"x" and (folder / "g2").read_bytes() == b"z"
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp")]
    # An error of the block itself wins over a write's.
    with pytest.raises(KeyError), WriteBehind() as out:
        out.put(tmp_path / "missing" / "g3", b"y")
        raise KeyError("the caller's own")


@pytest.mark.parametrize("engine", ["local", "inline"])
def test_the_first_run_takes_its_inputs_as_written_and_later_runs_read_the_files(
        tmp_path: Path, monkeypatch, engine):
    """start() keeps the input parts it wrote (up to KEEP_BYTES) for the run that
    follows: here every input file is damaged as soon as it is published, and that
    run still scores every row exactly; nothing of them is left in memory after it,
    and a part over the budget is read (and checked) from its file."""
    import numpy as np

    from localbatch._store import executions, spool

    client = DeployClient(str(tmp_path / "store"), engine=engine)
    svc = (client.service("adder").version("1.0").code_fn(scoring_fns.add)
           .inputs(a=float, b=float).outputs(answer=float).deploy())
    store = client._executions.store  # noqa: SLF001 - the cache itself
    real = executions.ExecutionStore.keep_inputs

    def damage_then_keep(self, execution_id, parts):
        for path in (self.path(execution_id) / "inputs").glob("part-*.lbp"):
            path.write_bytes(b"damaged on disk")
        real(self, execution_id, parts)

    monkeypatch.setattr(executions.ExecutionStore, "keep_inputs", damage_then_keep)
    n = 2 * spool.SPOOL_ROWS + 5  # three input parts
    df = pd.DataFrame({"a": np.arange(n, dtype=float), "b": 0.5})
    resp = svc.batch(df, parallel_count=2).start().wait(60)
    assert resp.state == "Complete" and resp.completed_item_count == n, resp.error
    assert resp.to_frame()["answer"].tolist() == (df["a"] * 2.0 + 0.5).tolist()
    assert not [k for k in store._parts if k[1].startswith("inputs/")]  # noqa: SLF001
    # Over the budget: the first part is kept, the second is read from its file.
    monkeypatch.setattr(spool, "KEEP_BYTES", 700_000)  # a part is 0.5 MB (in.a)
    resp = svc.batch(df, parallel_count=2).start().wait(60)
    assert resp.state == "Failed" and "inputs/part-000001.lbp is damaged" in resp.error, \
        resp.error
    assert resp.completed_item_count <= spool.SPOOL_ROWS  # rows of part 0 only
    # A later run (resume) reads the files, the first one's part too.
    again = client.get_execution(resp.execution_id).resume().wait(60)
    assert again.state == "Failed" and "is damaged" in again.error, again.error
    assert not [k for k in store._parts if k[1].startswith("inputs/")]  # noqa: SLF001
    client.close()


def _chunk_result(rows: list[int], pid: int, y: float | None = None) -> dict:
    """A worker's chunk result as the committer buffers it (start times ~1 ulp apart)."""
    import numpy as np

    from localbatch._format.columns import encode_column

    started = 1.7e9 + np.array(rows, np.float64) * 2.5e-7
    return {"index": np.array(rows, np.int64), "started": started,
            "ended": started + 1e-7, "errors": None, "console": None,
            "outputs": {"y": encode_column("float", [float(r) if y is None else y
                                                     for r in rows])},
            "artifacts": {}, "pid": pid}


def _committer(tmp_path: Path, total: int):
    import logging
    import uuid

    from localbatch._schema import EncodingType
    from localbatch._store.commit import Committer
    from localbatch._store.executions import ExecutionStore

    store = ExecutionStore(tmp_path)
    eid = uuid.uuid4().hex
    (store.path(eid) / "results").mkdir(parents=True)
    return store, eid, Committer(store, eid, {"total": total},
                                 [("y", EncodingType.numeric)], logging.getLogger("t"))


def test_chunks_that_came_back_out_of_order_are_stored_in_row_order(tmp_path):
    """Two workers' chunks arrive out of order; the part holds them in row order, so its
    row numbers are a range and its pids take no bytes, and every row reads its own."""
    import numpy as np

    store, eid, committer = _committer(tmp_path, 60)
    for rows, pid in ((range(20, 40), 7), (range(0, 20), 9), (range(40, 60), 7)):
        committer.add(_chunk_result(list(rows), pid), {})
    committer.commit()
    (name,) = store.part_names(eid)
    part = Part((store.path(eid) / "results" / name).read_bytes())
    assert part.stored_range("index", "values") == (0, 1, 60)
    header = json.loads(part.data[16:16 + int.from_bytes(part.data[4:8], "little")])
    pids = header["columns"]["worker_pid"]["buffers"]["values"]
    assert pids[1] == "delta" and pids[5] is None and pids[6][0::2] == [19]
    assert part.column("worker_pid").buffers["values"].tolist() == [9] * 20 + [7] * 40
    assert part.column("out.y").buffers["values"].tolist() == [float(r) for r in range(60)]
    assert np.array_equal(part.column("started").buffers["values"],
                          1.7e9 + np.arange(60) * 2.5e-7)


def test_a_row_recorded_twice_in_one_part_keeps_its_later_record(tmp_path):
    """Chunks whose rows interleave are stored as they came: a row's later record (a
    retry after a failure recorded in the same part) stays the one that counts."""
    store, eid, committer = _committer(tmp_path, 20)
    committer.add(_chunk_result(list(range(10, 20)), 7), {})
    committer.add(_chunk_result([2, 3, 15], 8, y=-1.0), {})  # rows 10-19 overlap
    committer.add(_chunk_result(list(range(0, 10)), 9), {})
    committer.commit()
    row_map = store.row_map(eid, 20)
    got = []
    for row in range(20):
        part, pos = store.read_row(eid, row_map, row)
        got.append(part.column("out.y").buffers["values"][pos])
    # Rows 2 and 3 are recorded twice too: their second record (from rows 0-9) came last.
    assert got == [float(r) for r in range(20) if r != 15][:15] + [-1.0] + \
        [float(r) for r in range(16, 20)]


@pytest.mark.parametrize(("part_rows", "parts"), [(10, 2), (11, 1)])
def test_chunks_with_rows_between_them_are_parts_of_their_own_when_large(
        tmp_path, monkeypatch, part_rows, parts):
    """Rows 0-9 and 20-29 buffered together (10-19 still running elsewhere): two parts of
    consecutive rows when each holds PART_ROWS rows, else one part."""
    import localbatch._store.commit as commit

    monkeypatch.setattr(commit, "PART_ROWS", part_rows)
    store, eid, committer = _committer(tmp_path, 40)
    committer.add(_chunk_result(list(range(20, 30)), 7), {})
    committer.add(_chunk_result(list(range(0, 10)), 9), {})
    assert committer.commit() == 20 and committer.completed_count == 20
    names = store.part_names(eid)
    assert len(names) == parts
    read = [Part((store.path(eid) / "results" / n).read_bytes()) for n in names]
    if parts == 2:
        assert [p.stored_range("index", "values") for p in read] == [(0, 1, 10), (20, 1, 10)]
    values = [v for p in read for v in p.column("out.y").buffers["values"].tolist()]
    assert values == [float(r) for r in [*range(0, 10), *range(20, 30)]]


def test_a_later_part_over_the_same_rows_wins_when_parts_are_ranges(tmp_path):
    """Parts that are each a range but hold the same rows (rows run again) are mapped row
    by row, in commit order: the later part's record counts."""
    store, eid, committer = _committer(tmp_path, 30)
    committer.add(_chunk_result(list(range(0, 30)), 7), {})
    committer.commit()
    committer.add(_chunk_result(list(range(10, 20)), 8, y=-1.0), {})
    committer.commit()
    row_map = store.row_map(eid, 30)
    assert row_map.recorded_count() == 30
    got = [store.read_row(eid, row_map, r)[0].column("out.y").buffers["values"][
        store.read_row(eid, row_map, r)[1]] for r in range(30)]
    assert got == [float(r) if not 10 <= r < 20 else -1.0 for r in range(30)]


def test_a_part_is_due_at_part_rows_but_no_sooner_than_part_interval(tmp_path, monkeypatch):
    """Enough rows make a part due once PART_INTERVAL has passed since the last one (a
    fast batch writes a few large parts, not one per chunk); PART_SECONDS makes a part of
    however few rows due."""
    import localbatch._store.commit as commit

    monkeypatch.setattr(commit, "PART_ROWS", 10)
    monkeypatch.setattr(commit, "PART_INTERVAL", 0.3)
    monkeypatch.setattr(commit, "PART_SECONDS", 0.6)
    store, eid, committer = _committer(tmp_path, 100)
    assert not committer.due()  # nothing buffered
    committer.add(_chunk_result(list(range(0, 20)), 7), {})
    assert committer.due()  # the first part: no part before it
    committer.commit()
    committer.add(_chunk_result(list(range(20, 40)), 7), {})
    assert not committer.due()  # enough rows, but just after a part
    time.sleep(0.35)
    assert committer.due()
    committer.commit()
    time.sleep(0.35)
    committer.add(_chunk_result([40, 41], 7), {})
    assert not committer.due()  # two rows: not PART_ROWS yet
    time.sleep(0.65)
    assert committer.due()  # buffered for PART_SECONDS
    assert committer.commit() == 2 and len(store.part_names(eid)) == 3
