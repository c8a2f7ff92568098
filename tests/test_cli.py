"""The ``localbatch`` console script, run for real in subprocesses on a tmp store."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from scoring_fns import add, fail_on_three, slow, write_artifact


def _console_script() -> list[str]:
    beside = Path(sys.executable).with_name("localbatch")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("localbatch")
    return [found] if found else [sys.executable, "-m", "localbatch._cli"]


CLI = _console_script()
HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None


def lb(store: Path, *args: str, cwd: Path | None = None, timeout: float = 60
       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--store", str(store), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _deploy(client, name, fn, version="1.0", artifacts=None):
    definition = (client.service(name).version(version).code_fn(fn)
                  .inputs(a=float, b=float).outputs(y=float))
    if artifacts:
        definition = definition.artifacts(artifacts)
    return definition.deploy()


@pytest.fixture
def services(client):
    _deploy(client, "add", add)
    _deploy(client, "flaky", fail_on_three)
    _deploy(client, "flaky", add, version="2.0")  # same schema: retry-failed --version 2.0
    _deploy(client, "slow", slow)
    _deploy(client, "art", write_artifact, artifacts=["out.txt"])
    return client


def _csv(path: Path, rows: int, b: float = 0.5, extra: bool = False) -> Path:
    frame = pd.DataFrame({"a": [float(i) for i in range(rows)], "b": b})
    if extra:
        frame["note"] = "x"
    frame.to_csv(path, index=False)
    return path


def _execution_id(stdout: str) -> str:
    first = stdout.splitlines()[0]
    assert first.startswith("execution "), stdout
    return first.split()[1]


def _header(store: Path, execution_id: str) -> dict:
    return json.loads((store / "executions" / execution_id / "execution.json").read_text())


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("localbatch: error: ")
    return lines[0]


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _rows_recorded(store: Path, execution_id: str) -> bool:
    try:
        return _header(store, execution_id)["completed"] > 0
    except (OSError, ValueError):
        return False


# -- services, show, errors ---------------------------------------------------------------


def test_services_and_show(services, store):
    proc = lb(store, "services")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "VERSION"]
    assert any(line.split()[:2] == ["flaky", "1.0"] for line in lines)
    assert any(line.split()[:2] == ["flaky", "2.0"] for line in lines)
    assert "a: float, b: float -> y: float" in proc.stdout
    assert any(line.startswith("art ") and "out.txt" in line for line in lines)

    only = lb(store, "services", "flaky").stdout.splitlines()[1:]
    assert [line.split()[:2] for line in only] == [["flaky", "1.0"], ["flaky", "2.0"]]

    latest = lb(store, "show", "flaky")
    assert latest.returncode == 0 and latest.stdout.startswith("flaky 2.0")
    assert "call:      add(a, b)" in latest.stdout
    pinned = lb(store, "show", "flaky@1.0", "--json")
    cap = json.loads(pinned.stdout)
    assert (cap["version"], cap["operation_id"]) == ("1.0", "fail_on_three")


def test_errors_are_one_line_with_exit_codes(services, store, tmp_path):
    good = _csv(tmp_path / "in.csv", 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n2,oops\n")
    cases = [
        (("show", "nope"), 5, "No service found for nope"),
        (("run", "nope", str(good)), 5, "No service found for nope"),
        (("run", "add", str(tmp_path / "missing.csv")), 5, "input file not found"),
        (("run", "add", str(bad)), 5, "bad.csv: line 3: column 'b' value 'oops'"),
        (("run", "add", str(good), "--out", str(tmp_path / "x.xlsx")), 2, "--out"),
        (("status", "0123456789abcdef"), 5, "no execution with id"),
        (("results", "not-an-id"), 5, "no execution with id"),
    ]
    for args, code, text in cases:
        proc = lb(store, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert text in _one_line_error(proc), (args, proc.stderr)
    missing_column = tmp_path / "cols.csv"
    missing_column.write_text("a,c\n1,2\n")
    proc = lb(store, "run", "add", str(missing_column))
    assert proc.returncode == 5 and "missing input column(s): 'b'" in _one_line_error(proc)

    # argparse usage errors: exit 2 (the usage line, then the reason)
    for args in (("frobnicate",), ("prune", "--older-than", "7")):
        assert lb(store, *args).returncode == 2, args
    # ``python -m localbatch._cli`` exits with the same statuses as the console script.
    for args, code in ((("show", "nope"), 5), (("frobnicate",), 2)):
        proc = subprocess.run([sys.executable, "-m", "localbatch._cli", "--store", str(store),
                               *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == code, (args, proc.stderr)

    debug = lb(store, "--debug", "show", "nope")
    assert debug.returncode == 5 and "Traceback" in debug.stderr
    # --store after the command works too, and a missing store is never created
    nowhere = tmp_path / "nowhere"
    proc = subprocess.run([*CLI, "run", "add", str(good), "--store", str(nowhere)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 5 and "no localbatch store" in _one_line_error(proc)
    assert not nowhere.exists()


# -- run ----------------------------------------------------------------------------------


def test_run_writes_every_format(services, store, tmp_path):
    src = _csv(tmp_path / "in.csv", 12, b=0.25, extra=True)
    proc = lb(store, "run", "add", str(src), "-p", "2", "--out", str(tmp_path / "out.csv"))
    assert proc.returncode == 0, proc.stderr
    eid = _execution_id(proc.stdout)
    assert "Complete: 12/12 rows, 0 failed" in proc.stdout
    assert "ignoring columns that are not service inputs: note" in proc.stderr
    assert "add 1.0:" not in proc.stderr  # no bar by default when stderr is not a terminal
    out = pd.read_csv(tmp_path / "out.csv", index_col="index")
    assert out.index.tolist() == list(range(12))
    assert out["y"].tolist() == [i * 2.0 + 0.25 for i in range(12)]
    assert out["error"].isna().all()

    for suffix in ("json", "tsv", "parquet") if HAVE_PYARROW else ("json", "tsv"):
        target = tmp_path / f"again.{suffix}"
        proc = lb(store, "results", eid[:10], "--out", str(target))
        assert proc.returncode == 0, proc.stderr
        frame = {"json": lambda p: pd.read_json(p).set_index("index"),
                 "tsv": lambda p: pd.read_csv(p, sep="\t", index_col="index"),
                 "parquet": pd.read_parquet}[suffix](target)
        assert frame["y"].tolist() == out["y"].tolist(), suffix
    stdout_csv = lb(store, "results", eid).stdout
    assert stdout_csv.splitlines()[0] == "index,y,error"
    assert len(stdout_csv.splitlines()) == 13

    if not HAVE_PYARROW:
        proc = lb(store, "results", eid, "--out", str(tmp_path / "x.parquet"))
        assert proc.returncode == 5 and "pyarrow is needed" in _one_line_error(proc)
        return
    # Parquet input, a pinned version, JSON output
    pq = tmp_path / "in.parquet"
    pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}).to_parquet(pq)
    proc = lb(store, "run", "add@1.0", str(pq), "-p", "1", "--out", str(tmp_path / "o.json"))
    assert proc.returncode == 0, proc.stderr
    assert [r["y"] for r in json.loads((tmp_path / "o.json").read_text())] == [5.0, 8.0]


def test_some_rows_fail_exit_1_then_retry_failed(services, store, tmp_path):
    src = _csv(tmp_path / "in.csv", 6)
    proc = lb(store, "run", "flaky@1.0", str(src), "-p", "2", "--out", str(tmp_path / "o.csv"),
              "--progress")  # the bar, although stderr is not a terminal here
    assert proc.returncode == 1, proc.stderr
    eid = _execution_id(proc.stdout)
    assert "1 row(s) failed" in proc.stderr and f"failed {eid}" in proc.stderr
    bar = proc.stderr.replace("\r", "\n").splitlines()
    assert any("flaky 1.0: 100%" in ln and "6/6" in ln and "failed=1, Complete" in ln
               for ln in bar), proc.stderr

    proc = lb(store, "failed", eid, "--out", str(tmp_path / "failed.csv"))
    assert proc.returncode == 0, proc.stderr
    failed = pd.read_csv(tmp_path / "failed.csv")
    assert failed["row"].tolist() == [3]
    assert failed["error_type"].tolist() == ["ValueError"]
    assert failed["error_message"].tolist() == ["bad row 3.0"]

    # The same code fails again; --parallel-count overrides the stored option (it was once
    # silently ignored): the run's log line says what it ran with.
    assert lb(store, "retry-failed", eid, "-p", "1").returncode == 1
    log = (store / "executions" / eid / "execution.log").read_text().splitlines()
    runs = [line for line in log if "parallel_count" in line]
    assert runs[0].endswith("parallel_count 2") and runs[-1].endswith("parallel_count 1")
    proc = lb(store, "retry-failed", eid, "--version", "2.0", "--out", str(tmp_path / "r.csv"))
    assert proc.returncode == 0, proc.stderr
    assert "retrying 1 failed row(s) with version 2.0" in proc.stdout
    fixed = pd.read_csv(tmp_path / "r.csv", index_col="index")
    assert fixed.loc[3, "y"] == 3 * 2.0 + 0.5 and fixed["error"].isna().all()
    assert "no failed rows" in lb(store, "retry-failed", eid).stdout


def test_batch_failed_exits_3(services, store, tmp_path):
    src = _csv(tmp_path / "in.csv", 6)
    proc = lb(store, "run", "flaky@1.0", str(src), "-p", "1", "--error-threshold", "0",
              "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 3, proc.stderr
    eid = _execution_id(proc.stdout)
    assert f"{eid} Failed: error threshold exceeded" in proc.stderr
    assert _header(store, eid)["state"] == "Failed"
    assert not (tmp_path / "o.csv").exists()


def test_ctrl_c_cancels_keeps_rows_and_resume_finishes(services, store, tmp_path):
    src = _csv(tmp_path / "in.csv", 60, b=0.15)
    proc = subprocess.Popen([*CLI, "--store", str(store), "run", "slow", str(src), "-p", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        eid = _execution_id(proc.stdout.readline())
        _wait_until(lambda: _rows_recorded(store, eid))
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 4, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"resume {eid} --force" in err
    header = _header(store, eid)
    assert header["state"] == "Canceled"
    assert 0 < header["completed"] < 60 and header["failed"] == 0
    assert lb(store, "results", eid, "--out", str(tmp_path / "k.csv")).returncode == 0
    kept = pd.read_csv(tmp_path / "k.csv", index_col="index")
    assert len(kept) == header["completed"]
    assert kept["error"].isna().all()  # no KeyboardInterrupt recorded as a row error

    refused = lb(store, "resume", eid)
    assert refused.returncode == 5 and "--force" in _one_line_error(refused)
    refused = lb(store, "retry-failed", eid)  # would silently run the never-run rows too
    assert refused.returncode == 5 and "row(s) never run" in _one_line_error(refused)
    proc2 = lb(store, "resume", eid[:8], "--force", "--out", str(tmp_path / "all.csv"))
    assert proc2.returncode == 0, proc2.stderr
    assert f"{header['completed']}/60 rows already recorded" in proc2.stdout
    done = pd.read_csv(tmp_path / "all.csv", index_col="index")
    assert done["y"].tolist() == [float(i) for i in range(60)]
    assert _header(store, eid)["state"] == "Complete"


# -- status, artifacts, logs, cancel --------------------------------------------------------


def test_status_artifacts_logs_cancel(services, store, tmp_path):
    src = _csv(tmp_path / "in.csv", 4)
    proc = lb(store, "run", "art", str(src), "-p", "2")
    assert proc.returncode == 0, proc.stderr
    eid = _execution_id(proc.stdout)

    table = lb(store, "status").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "SERVICE", "STATE"]
    row = next(line for line in table if line.startswith(eid[:12]))
    assert "art 1.0" in row and "Complete" in row and "4/4" in row
    detail = lb(store, "status", eid[:6]).stdout
    assert f"execution: {eid}" in detail and "rows:      4/4 recorded, 0 failed" in detail

    assert lb(store, "artifacts", eid, "1").stdout.split() == ["out.txt"]
    proc = lb(store, "artifacts", eid, "1", "--download", str(tmp_path / "dl"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dl" / "out.txt").read_text() == "1.0,0.5"
    proc = lb(store, "artifacts", eid, "99")
    assert proc.returncode == 5 and "row 99" in _one_line_error(proc)

    logs = lb(store, "logs", eid)
    assert logs.returncode == 0 and "batch complete: 4 rows, 0 failed" in logs.stdout
    assert "already Complete" in lb(store, "cancel", eid).stdout


def test_logs_follow_ends_with_the_batch(services, store):
    batch = services.get_service("slow").batch(
        pd.DataFrame({"a": [float(i) for i in range(6)], "b": 0.2}), parallel_count=2).start()
    proc = lb(store, "logs", batch.execution_id, "--follow", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "batch complete: 6 rows, 0 failed" in proc.stdout
    assert batch.results().state == "Complete"


# -- an owner killed, prune ----------------------------------------------------------------


def test_prune_keeps_running_and_resumable(services, store, tmp_path):
    # An interrupted execution: its owner (a `localbatch run`) is SIGKILLed mid-run.
    src = _csv(tmp_path / "in.csv", 12, b=0.25)
    owner = subprocess.Popen([*CLI, "--store", str(store), "run", "slow", str(src), "-p", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             start_new_session=True)
    try:
        interrupted = _execution_id(owner.stdout.readline())
        _wait_until(lambda: _header(store, interrupted)["state"] == "InProgress")
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
    # A finished execution, and one still running in this process.
    quick = lb(store, "run", "add", str(_csv(tmp_path / "q.csv", 2)), "-p", "1")
    assert quick.returncode == 0, quick.stderr
    finished = _execution_id(quick.stdout)
    running = services.get_service("slow").batch(
        pd.DataFrame({"a": [1.0] * 40, "b": 0.5}), parallel_count=1).start()
    try:
        _prune_checks(store, tmp_path, interrupted, finished, running.execution_id)
    finally:
        running.cancel()
    assert running.results().state == "Canceled"
    proc = lb(store, "prune", "--older-than", "0s")
    assert f"deleted {interrupted}" in proc.stdout and f"deleted {running.execution_id}" in \
        proc.stdout
    assert [p for p in os.listdir(store / "executions") if not p.startswith(".")] == []


def _prune_checks(store: Path, tmp_path: Path, interrupted: str, finished: str, running: str
                  ) -> None:
    status = lb(store, "status").stdout.splitlines()
    assert "died (resumable)" in next(ln for ln in status if ln.startswith(interrupted[:12]))
    assert "alive" in next(ln for ln in status if ln.startswith(running[:12]))

    assert "deleted 0 execution(s)" in lb(store, "prune", "--older-than", "7d").stdout
    proc = lb(store, "prune", "--older-than", "0s")
    assert proc.returncode == 0, proc.stderr
    assert f"deleted {finished}" in proc.stdout
    assert "kept 1 running, 1 resumable" in proc.stdout
    ids = set(os.listdir(store / "executions"))
    assert finished not in ids and {interrupted, running} <= ids

    dry = lb(store, "prune", "--older-than", "0s", "--include-interrupted", "--dry-run")
    assert f"would delete {interrupted}" in dry.stdout and running not in dry.stdout
    assert interrupted in os.listdir(store / "executions")

    # The interrupted one resumes without --force; then it is finished and prunable.
    proc = lb(store, "resume", interrupted, "--out", str(tmp_path / "all.csv"))
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(tmp_path / "all.csv")["y"].tolist() == [float(i) for i in range(12)]
    assert "Canceled" in lb(store, "cancel", running).stdout
