"""Readers in other processes while workers die; several batches on one store."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from . import faultfns
from .helpers import HERE, deploy, record_counts

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

READER = """
import sys, time, tempfile
sys.path.insert(0, {tests!r})
from localbatch import DeployClient, RowNotRecordedError
svc = DeployClient({store!r}).get_service("die")
batch = svc.get_batch({eid!r})
last, polls, dest = -1, 0, tempfile.mkdtemp()
while True:
    resp = batch.results()
    assert resp.completed_item_count >= last, "counts went backwards"
    last = resp.completed_item_count
    for i in range(0, {rows}, 7):
        try:
            names = batch.list_artifacts(i)
            assert names == ["row.txt"], names
            batch.download(i, "row.txt", dest)
            # `resp` is a snapshot: a row recorded after it may be unknown to it.
            assert resp.execution(i).outputs["y"] == i * 2.0
        except RowNotRecordedError:
            continue
    polls += 1
    if resp.state in ("Complete", "Failed", "Canceled"):
        break
print(polls, last, resp.state, flush=True)
"""


def test_readers_during_worker_kills(client, store, tmp_path, monkeypatch):
    log = tmp_path / "runs"
    log.mkdir()
    monkeypatch.setenv("FAULT_LOG", str(log))
    rows = 300
    svc = (client.service("die").version("2").code_fn(_artifact_then_die_once)
           .inputs(a=float, b=float).outputs(y=float).artifacts(["row.txt"]).deploy())
    frame = pd.DataFrame({"a": [float(i) for i in range(rows)], "b": 0.0})
    batch = svc.batch(frame, parallel_count=2).start()
    code = textwrap.dedent(READER).format(tests=str(HERE.parent), store=str(store),
                                          eid=batch.execution_id, rows=rows)
    code = code.replace('get_service("die")', 'get_service("die", version="2")')
    readers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    resp = batch.wait(timeout=90)
    outs = [r.communicate(timeout=60) for r in readers]
    for (out, err), reader in zip(outs, readers, strict=True):
        assert reader.returncode == 0, err
        assert out.split()[2] == "Complete"
    assert resp.state == "Complete" and resp.failed_item_count == 0
    assert (record_counts(store, batch.execution_id, rows) == 1).all()
    deaths = sum(1 for p in log.iterdir() if p.name.startswith("died-"))
    assert deaths >= 5, "the fault did not fire often enough to test anything"


def _artifact_then_die_once(a, b):
    import os

    with open("row.txt", "w") as fh:
        fh.write(f"row {int(a)}")
    marker = os.path.join(os.environ["FAULT_LOG"], f"died-{int(a)}")
    if int(a) % 29 == 5 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return a * 2.0


def test_several_batches_on_one_store_do_not_interfere(client, store, tmp_path, monkeypatch):
    monkeypatch.setenv("FAULT_LOG", str(tmp_path))
    fast = deploy(client, "slow", faultfns.slow)
    flaky = deploy(client, "flaky", faultfns.flaky)
    batches = [fast.batch({"a": [float(i) for i in range(50)], "b": [0.01] * 50},
                          parallel_count=2).start() for _ in range(2)]
    batches.append(flaky.batch({"a": [float(i) for i in range(60)], "b": [7.0] * 60},
                               parallel_count=2).start())
    batches[0].cancel()
    results = [b.wait(timeout=60) for b in batches]
    assert results[0].state == "Canceled"
    assert results[1].state == "Complete" and results[1].to_frame()["y"].tolist() == [
        i * 2.0 for i in range(50)]
    assert results[2].state == "Complete" and results[2].failed_item_count == 9
    ids = {b.execution_id for b in batches}
    assert len(ids) == 3 and set(fast.list_batch_executions()) == ids - {
        batches[2].execution_id}
