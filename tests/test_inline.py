"""``engine="inline"``: rows run in the calling process, with the worker engine's results.

Every comparison runs the same service and records through both engines.
"""

from __future__ import annotations

import base64
import inspect
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from localbatch import ConfigurationError, DeployClient


# The SDK sample's service (its least-squares fit as plain coefficients, so workers
# start fast), plus console output on both streams and rows that fail.
def notebook_row(hp, wt):
    import sys

    import pandas as pd

    print(f"scoring hp={hp} wt={wt}")
    if hp == 175.0:
        raise ValueError(f"no quote for hp={hp}")
    if wt > 5.3:
        print("too heavy", file=sys.stderr)
        raise SystemExit(3)
    intercept, b_hp, b_wt = coef  # noqa: F821 - a model global
    answer = pd.DataFrame({"am_Pred": [intercept + b_hp * hp + b_wt * wt]})
    answer.to_csv("answer.csv")
    return answer


def where(a):
    t0 = time.perf_counter()
    time.sleep(0.01)
    return f"{os.getpid()} {threading.get_ident()} {t0} {time.perf_counter()}"


def pid_of(a):
    return float(os.getpid())


def counted_init():
    with open(init_log, "a") as fh:  # noqa: F821 - an object global
        fh.write("init\n")


def _deploy_notebook(client, mtcars):
    design = np.column_stack([np.ones(len(mtcars)), mtcars["hp"], mtcars["wt"]])
    coef = np.linalg.lstsq(design, mtcars["am"].to_numpy(float), rcond=None)[0]
    return (client.service("TxService").version("1.0").code_fn(notebook_row)
            .inputs(hp=float, wt=float).outputs(answer=pd.DataFrame)
            .models(coef=coef).artifacts(["answer.csv"]).deploy())


def _deploy(client, fn, name, output=str, init=None, **objects):
    return (client.service(name).version("1").code_fn(fn, init).inputs(a=float)
            .outputs(r=output).objects(**objects).deploy())


def test_inline_gives_the_worker_engines_results(client, mtcars, tmp_path):
    svc = _deploy_notebook(client, mtcars)
    records = mtcars[["hp", "wt"]]
    local = svc.batch(records, parallel_count=2).start()
    inline = svc.batch(records, parallel_count=2, engine="inline").start()
    a, b = local.wait(timeout=60), inline.results()

    assert (a.state, b.state) == ("Complete", "Complete")
    assert (a.completed_item_count, a.failed_item_count) == (32, 5)
    assert (b.completed_item_count, b.failed_item_count) == (32, 5)
    for i in range(32):
        x, y = a.execution(i), b.execution(i)
        assert (y.error, y.error_type, y.traceback) == (x.error, x.error_type, x.traceback)
        assert y.console_output == x.console_output
        assert y.artifacts == x.artifacts
        assert batch_files(inline, i) == batch_files(local, i)
        if x.error:
            assert y.outputs == x.outputs == {"answer": None}
        else:
            pd.testing.assert_frame_equal(y.outputs["answer"], x.outputs["answer"])

    # What each kind of row looks like, the same through both engines.
    assert b.execution(4).error == "ValueError: no quote for hp=175.0"
    assert f"line {_line_of('raise ValueError')}, in notebook_row" in b.execution(4).traceback
    assert b.execution(15).error == "SystemExit: 3"
    assert b.execution(15).console_output == "scoring hp=215.0 wt=5.424\ntoo heavy\n"
    assert b.execution(0).console_output == "scoring hp=110.0 wt=2.62\n"
    saved = base64.b64decode(b.execution(1).artifacts["answer.csv"])
    assert saved == inline.artifact(1, "answer.csv")
    assert inline.download(1, "answer.csv", tmp_path) == [str(tmp_path / "answer.csv")]
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    pd.testing.assert_frame_equal(a.failed().drop(columns="attempts", errors="ignore"),
                                  b.failed().drop(columns="attempts", errors="ignore"))
    assert (a.header["engine"], b.header["engine"]) == ("local", "inline")


def _line_of(text: str) -> int:
    lines, first = inspect.getsourcelines(notebook_row)
    return first + next(i for i, line in enumerate(lines) if text in line)


def batch_files(batch, index):
    return {name: batch.artifact(index, name) for name in batch.list_artifacts(index)}


def test_rows_run_in_the_calling_thread_one_after_another(client):
    svc = _deploy(client, where, "Where")
    batch = svc.batch(pd.DataFrame({"a": [float(i) for i in range(6)]}), parallel_count=4,
                      engine="inline")
    batch.start()
    res = batch.results()  # no wait: start() returned after the last row
    assert (res.state, res.completed_item_count) == ("Complete", 6)

    rows = [res.execution(i).outputs["r"].split() for i in range(6)]
    assert {(int(pid), int(tid)) for pid, tid, _, _ in rows} == {
        (os.getpid(), threading.get_ident())}
    spans = [(float(t0), float(t1)) for _, _, t0, t1 in rows]
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start  # in input order, never overlapping


def test_per_client_engine(store):
    inline_client = DeployClient(store, engine="inline")
    svc = _deploy(inline_client, pid_of, "Pid", output=float)
    records = pd.DataFrame({"a": [1.0, 2.0]})

    res = svc.batch(records, parallel_count=2).start().results()
    assert res.header["engine"] == "inline"
    assert {res.execution(i).outputs["r"] for i in range(2)} == {float(os.getpid())}

    # A batch can still ask for workers.
    res = svc.batch(records, parallel_count=2, engine="local").start().wait(timeout=60)
    assert res.header["engine"] == "local"
    assert float(os.getpid()) not in {res.execution(i).outputs["r"] for i in range(2)}
    inline_client.close()


def test_inline_init_runs_once_per_process(client, tmp_path):
    log = tmp_path / "init.log"
    svc = _deploy(client, pid_of, "Init", output=float, init=counted_init, init_log=str(log))
    for _ in range(2):
        res = svc.batch(pd.DataFrame({"a": [1.0, 2.0]}), engine="inline").start().results()
        assert res.state == "Complete" and res.failed_item_count == 0
    assert log.read_text() == "init\n"


def test_inline_init_failure_fails_the_batch(client):
    def bad_init():
        raise RuntimeError("no model file")

    svc = _deploy(client, pid_of, "BadInit", output=float, init=bad_init)
    res = svc.batch(pd.DataFrame({"a": [1.0]}), engine="inline").start().results()
    assert res.state == "Failed"
    assert res.error == "init failed: RuntimeError: no model file"
    assert not res.resumable


DEBUG_SCRIPT = """\
import pandas as pd
from localbatch import DeployClient


def row(a, b):
    total = a + b
    breakpoint()
    return total


client = DeployClient({store!r}, engine="inline")
svc = (client.service("Dbg").version("1").code_fn(row)
       .inputs(a=float, b=float).outputs(r=float).deploy())
res = svc.batch(pd.DataFrame({{"a": [1.0], "b": [2.0]}})).start().results()
print("ROW CONSOLE", repr(res.execution(0).console_output))
"""


def test_breakpoint_in_an_inline_row_talks_to_the_terminal(tmp_path):
    script = tmp_path / "debug_me.py"
    script.write_text(DEBUG_SCRIPT.format(store=str(tmp_path / "store")))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONBREAKPOINT"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, str(script)], input="p total\nc\n", env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    terminal, row_console = proc.stdout.split("ROW CONSOLE", 1)
    assert "(Pdb) 3.0" in terminal
    assert "Pdb" not in row_console


def fail_on_three(a):
    if a == 3:
        raise ValueError(f"bad row {a}")
    return a


def test_inline_honours_error_threshold(client):
    svc = _deploy(client, fail_on_three, "Threshold", output=float)
    records = pd.DataFrame({"a": [3.0] * 4})
    local = svc.batch(records, parallel_count=2, error_threshold=1).start().wait(timeout=60)
    inline = svc.batch(records, error_threshold=1, engine="inline").start().results()
    assert local.state == "Failed" and local.error.startswith("error threshold exceeded")
    # How many rows ran before the threshold tripped depends on chunking; the outcome not.
    for resp in (local, inline):
        assert resp.state == "Failed" and not resp.resumable
        assert resp.error.startswith("error threshold exceeded: ")
        assert resp.error.endswith("rows failed (error_threshold=1)")


def test_inline_client_consumes_in_process(store):
    inline_client = DeployClient(store, engine="inline")
    svc = _deploy(inline_client, pid_of, "Consume", output=float)
    try:
        assert svc.pid_of(1.0).outputs["r"] == float(os.getpid())
    finally:
        inline_client.close()


def test_the_clients_engine_and_start_method_can_change_after_it_is_made(store):
    """Every service and batch of a client follows a later ``client.engine = ...``
    (they share the client's executions), and a bad value fails at the assignment."""
    client = DeployClient(str(store))
    svc = client.service("w").version("1").code_fn(where).inputs(a=float) \
        .outputs(answer=str).deploy()
    client.engine = "inline"
    batch = svc.batch({"a": [1.0, 2.0]}, parallel_count=2).start()
    # Inline rows ran during start(), in this very process and thread.
    assert batch.results().state == "Complete"
    pids = {row.split()[0] for row in batch.results().to_frame()["answer"]}
    assert pids == {str(os.getpid())}
    assert svc.where(1.0).outputs["answer"].split()[0] == str(os.getpid())
    client.engine = None
    assert svc.where(1.0).outputs["answer"].split()[0] != str(os.getpid())
    client.start_method = "forkserver"
    assert svc.batch({"a": [1.0]}).parallel_count == 10
    assert svc.batch({"a": [1.0]}).start().wait(60).header["options"]["start_method"] \
        == "forkserver"
    with pytest.raises(ConfigurationError):
        client.engine = "no-such-engine"
    with pytest.raises(ConfigurationError):
        client.start_method = "fork"
    assert (client.engine, client.start_method) == (None, "forkserver")
    client.close()
