"""The command line's smaller promises (issue 16, item 7), each run for real.

``status`` after ``retry-failed`` keeps the first start and a rate over the time
spent running; ``status`` of a running execution counts the published parts, not
the header's trailing counters; ``cancel`` from another terminal says how to go
on; ``--download`` never creates a missing parent; ``failed`` without failures says
so in words.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from output_fns import slow_fail_on_three
from scoring_fns import add, slow, write_artifact

from localbatch._cli.output import short_time


def lb(store: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localbatch._cli", "--store", str(store),
                           *args], capture_output=True, text=True, timeout=timeout)


def _fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                 text.splitlines())}


def _deploy(client, name, fn, artifacts=None):
    d = (client.service(name).version("1.0").code_fn(fn).inputs(a=float, b=float)
         .outputs(y=float))
    return (d.artifacts(artifacts) if artifacts else d).deploy()


def _frame(n: int, b: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"a": [float(i) for i in range(n)], "b": b})


def test_status_after_retry_keeps_the_first_start_and_a_sane_rate(client, store):
    svc = _deploy(client, "flaky", slow_fail_on_three)
    batch = svc.batch(_frame(10, 0.05), engine="inline").start()
    first = batch.wait(timeout=60).header
    assert first["failed"] == 1
    batch.retry_failed()
    after = batch.wait(timeout=60).header
    assert after["first_started"] == first["started"] != after["started"]
    out = lb(store, "status", batch.execution_id)
    assert out.returncode == 0, out.stderr
    fields = _fields(out.stdout)
    assert fields["started"] == short_time(first["started"])
    assert fields["retried"].startswith("started ")
    seconds = float(fields["elapsed"].split("s")[0])
    assert seconds >= 0.4  # the first run's ten rows of 0.05 s count, not only the retry
    rate = float(fields["elapsed"].split("(")[1].split(" ")[0].replace(",", ""))
    assert rate <= 10 / 0.4


def test_status_of_a_running_execution_counts_published_parts(client, store):
    svc = _deploy(client, "add", add)
    resp = svc.batch(_frame(20), engine="inline").start().wait(timeout=60)
    executions = client._executions
    # Make it read as running with trailing counters, as between two header writes:
    # this process holds the owner lock, the header says InProgress and 0 recorded.
    lock = executions.store.take_ownership(resp.execution_id)
    try:
        header = executions.store.read_header(resp.execution_id)
        header.update(state="InProgress", completed=0, failed=0, ended=None)
        executions.store.write_header(resp.execution_id, header)
        one = _fields(lb(store, "status", resp.execution_id).stdout)
        listing = lb(store, "status").stdout
    finally:
        lock.release()
    assert one["state"] == "InProgress"
    assert one["rows"] == "20/20 recorded, 0 failed"
    assert "20/20" in listing


def test_cancel_from_another_terminal_prints_a_resume_hint(client, store, tmp_path):
    _deploy(client, "slow", slow)
    path = tmp_path / "in.csv"
    _frame(40, 0.2).to_csv(path, index=False)
    run = subprocess.Popen([sys.executable, "-m", "localbatch._cli", "--store", str(store),
                            "run", "slow", str(path), "-p", "1", "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        eid = run.stdout.readline().split()[-1]
        time.sleep(0.5)
        out = lb(store, "cancel", eid)
        assert out.returncode == 0, out.stderr
        assert "Canceled" in out.stdout
        assert f"resume {eid} --force" in out.stdout
    finally:
        run.wait(timeout=60)
        run.stdout.close()
        err = run.stderr.read()
        run.stderr.close()
    assert run.returncode == 4
    assert f"resume {eid} --force" in err  # the terminal running it says so too


def test_download_refuses_a_missing_parent(client, store, tmp_path):
    svc = _deploy(client, "art", write_artifact, ["out.txt"])
    resp = svc.batch(_frame(2), engine="inline").start().wait(timeout=60)
    missing = tmp_path / "nonexistent" / "x"
    out = lb(store, "artifacts", resp.execution_id, "0", "--download", str(missing))
    assert out.returncode == 5
    assert "does not exist" in out.stderr and str(missing.parent) in out.stderr
    assert not missing.parent.exists()
    new = tmp_path / "new"
    ok = lb(store, "artifacts", resp.execution_id, "0", "--download", str(new))
    assert ok.returncode == 0, ok.stderr
    assert (new / "out.txt").read_text() == "0.0,0.0"
    (tmp_path / "file").write_text("")
    assert lb(store, "artifacts", resp.execution_id, "0", "--download",
              str(tmp_path / "file")).returncode == 5


def test_failed_without_failures_says_so(client, store, tmp_path):
    svc = _deploy(client, "add", add)
    resp = svc.batch(_frame(3), engine="inline").start().wait(timeout=60)
    out = lb(store, "failed", resp.execution_id)
    assert out.returncode == 0
    assert out.stdout.strip() == "no failed rows (3/3 rows recorded)"
    target = tmp_path / "f.csv"
    assert lb(store, "failed", resp.execution_id, "--out", str(target)).returncode == 0
    assert target.read_text().startswith("index,row")  # a file still gets its header


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_results_out_by_extension(client, store, tmp_path, suffix):
    pytest.importorskip("pyarrow")
    svc = _deploy(client, "add", add)
    resp = svc.batch(_frame(3), engine="inline").start().wait(timeout=60)
    target = tmp_path / f"r{suffix}"
    out = lb(store, "results", resp.execution_id, "--out", str(target))
    assert out.returncode == 0, out.stderr
    got = pd.read_parquet(target) if suffix == ".parquet" else pd.read_csv(target)
    assert got["y"].tolist() == [0.0, 2.0, 4.0]
