"""The Dask engine on a real LocalCluster (2 worker processes x 2 threads, on 127.0.0.1).

One cluster serves the whole module. Its worker processes are children of this
test process, so the module overrides conftest's reaping check: after each test
it stops the localbatch subprocesses kept warm on the cluster and then demands,
as conftest does, that nothing else is left running besides exactly the
cluster's own worker processes (and multiprocessing's resource tracker, which
the cluster started). When the module ends the cluster is closed and checked gone.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import scoring_fns
from faults.helpers import gone  # tests/ is on sys.path (conftest)

from localbatch import DeployClient

pytest.importorskip("distributed")


# -- the cluster and the reaping check ------------------------------------------------------


def _resource_tracker_pid() -> int | None:
    from multiprocessing import resource_tracker

    return resource_tracker._resource_tracker._pid


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster

    tracker_before = _resource_tracker_pid()
    # dashboard_address=None still serves HTTP on :8787 (a warning, an error here, when
    # that port is taken): a free loopback port instead.
    cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    dc = Client(cluster)
    try:
        yield dc
    finally:
        dc.close()
        cluster.close()
        if tracker_before is None and _resource_tracker_pid() is not None:
            # Started for the cluster's spawned workers: it must not outlive the module.
            from multiprocessing import resource_tracker

            resource_tracker._resource_tracker._stop()
        left = _wait_children_gone(allowed=set(), timeout=10)
        assert not left, f"the cluster left processes behind: {left}"


def _children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "--zygote" not in p.cmdline():
                out.append(p)
        except psutil.Error:
            pass
    return out


def _wait_children_gone(allowed: set[int], timeout: float,
                        tick: Callable[[], object] | None = None) -> list[tuple[int, str]]:
    """Wait for every child not in ``allowed`` to end; kill and return the ones left."""
    deadline = time.monotonic() + timeout
    while True:
        if tick is not None:
            tick()
        left = [p for p in _children() if p.pid not in allowed]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    out = []
    for p in left:
        try:
            out.append((p.pid, " ".join(p.cmdline()[-4:])))
            p.kill()
        except psutil.Error:
            pass
    return out


def _cluster_pids(dc) -> set[int]:
    dc.wait_for_workers(2, timeout=30)
    return set(dc.run(os.getpid).values())


@pytest.fixture(autouse=True)
def _reap_processes(dask_client):
    """conftest's check, tolerating exactly the cluster's processes (not what they start)."""
    yield
    from localbatch._engines.dask import close_worker_processes
    from localbatch._workers.pool import WORKER_POOL

    WORKER_POOL.close()
    allowed = _cluster_pids(dask_client) | {_resource_tracker_pid() or -1}
    left = _wait_children_gone(allowed, timeout=10,
                               tick=lambda: close_worker_processes(dask_client))
    assert not left, f"stray processes: {left}"


# -- helpers ------------------------------------------------------------------------------


def _deploy(client, name, fn, init=None, **kw):
    d = client.service(name).version("1").code_fn(fn, init) if init else \
        client.service(name).version("1").code_fn(fn)
    return d.inputs(**kw.pop("inputs", {"a": float, "b": float})) \
        .outputs(**kw.pop("outputs", {"answer": float})).deploy()


def _recorded_indices(client, execution_id: str) -> np.ndarray:
    """Every row index of every published part (a row recorded twice shows twice)."""
    store = client._executions.store
    parts = [store.read_part(execution_id, name).column("index").buffers["values"]
             for name in store.part_names(execution_id)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _rows(client, execution_id: str):
    executions = client._executions
    return executions.reader(execution_id, executions.header(execution_id), None)




def _wait_until(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- the seed flow ------------------------------------------------------------------------


def test_seed_flow_on_mtcars_with_artifacts(client, store, mtcars, dask_client, tmp_path,
                                            capsys):
    import statsmodels.formula.api as smf

    cars_model = smf.ols("am ~ hp + wt", data=mtcars).fit()
    init_log = str(tmp_path / "inits")

    def init():
        with open(init_log, "a") as fh:
            fh.write(f"{os.getpid()}\n")

    def manualTransmission(hp, wt):
        import pandas as pd

        newdata = pd.DataFrame({"hp": [hp], "wt": [wt]})
        answer = pd.DataFrame({"am_Pred": cars_model.predict(newdata)})
        answer.to_csv("answer.csv")
        return answer

    svc = (client.service("TxService").version("1.0").code_fn(manualTransmission, init)
           .inputs(hp=float, wt=float).outputs(answer=pd.DataFrame)
           .models(cars_model=cars_model).artifacts(["answer.csv"]).deploy())
    batch = svc.batch(mtcars[["hp", "wt"]], parallel_count=2, engine=dask_client).start()
    r = batch.wait(60)
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", 32, 0)
    assert r.header["engine"] == "dask"

    expected = cars_model.predict(mtcars[["hp", "wt"]]).to_numpy()
    for i in (0, 3, 31):
        answer = r.execution(i).outputs["answer"]
        assert list(answer.columns) == ["am_Pred"]
        assert answer["am_Pred"].iloc[0] == pytest.approx(expected[i])
    assert batch.list_artifacts(1) == ["answer.csv"]
    assert pd.read_csv(io.BytesIO(batch.artifact(1, "answer.csv")))["am_Pred"][0] \
        == pytest.approx(expected[1])
    dest = tmp_path / "dl"
    dest.mkdir()
    [path] = batch.download(1, "answer.csv", destination=dest)
    assert Path(path).read_bytes() == batch.artifact(1, "answer.csv")

    # Another client on the same store reads it like any batch.
    other = DeployClient(str(store)).get_service("TxService", version="1.0")
    again = other.get_batch(batch.execution_id)
    assert batch.execution_id in other.list_batch_executions()
    frame = again.results().to_frame()
    assert len(frame) == 32
    assert np.allclose(frame["answer.am_Pred"].to_numpy(dtype=float), expected)

    # The command line reads it from the store like any other batch.
    from localbatch._cli import main as cli

    assert cli(["--store", str(store), "status", batch.execution_id]) == 0
    assert "Complete" in capsys.readouterr().out
    assert cli(["--store", str(store), "results", batch.execution_id]) == 0
    assert len(pd.read_csv(io.StringIO(capsys.readouterr().out))) == 32

    # Rows ran in subprocesses of the Dask workers, and init ran once in each of them.
    reader = _rows(client, batch.execution_id)
    pids = {reader.row(i).worker_pid for i in range(32)}
    cluster = _cluster_pids(dask_client)
    # (a worker's parent is its keeper, whose parent is the Dask worker: see _workers/keeper.py)
    assert all(psutil.Process(pid).parent().ppid() in cluster for pid in pids)
    inits = Path(init_log).read_text().split()
    assert sorted(inits) == sorted(set(inits)) and {int(p) for p in inits} >= pids
    assert np.array_equal(_recorded_indices(client, batch.execution_id), np.arange(32))


def test_console_and_row_errors_come_back(client, dask_client):
    svc = _deploy(client, "shout", scoring_fns.fail_on_three)
    r = svc.batch(pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [1.0] * 4}), parallel_count=2,
                  engine=dask_client).start().wait(60)
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", 4, 1)
    bad = r.execution(2)
    assert bad.error_type == "ValueError" and "bad row 3" in bad.error
    assert r.execution(3).outputs["answer"] == 5.0

    loud = _deploy(client, "loud", scoring_fns.shout)
    r = loud.batch(pd.DataFrame({"a": [7.0, 8.0], "b": [1.0, 1.0]}), parallel_count=2,
                   engine=dask_client).start().wait(60)
    assert r.execution(1).console_output == "row a=8.0\n"


# -- failures charged to rows ------------------------------------------------------------


@pytest.mark.faults
def test_row_timeout_kills_only_that_row(client, dask_client):
    svc = _deploy(client, "slow", scoring_fns.slow)
    b = [0.0] * 6
    b[2] = 30.0
    t0 = time.monotonic()
    r = svc.batch(pd.DataFrame({"a": [float(i) for i in range(6)], "b": b}), parallel_count=2,
                  engine=dask_client, row_timeout=0.5).start().wait(60)
    assert time.monotonic() - t0 < 20
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", 6, 1)
    row = r.execution(2)
    assert row.error_type == "RowTimeout" and "row_timeout=0.5s" in row.error
    assert [r.execution(i).outputs["answer"] for i in (0, 1, 3, 4, 5)] == [0, 1, 3, 4, 5]


@pytest.mark.faults
def test_poison_row_fails_after_max_attempts_others_succeed(client, dask_client):
    svc = _deploy(client, "poison", scoring_fns.kill_on)
    n = 12
    r = svc.batch(pd.DataFrame({"a": [float(i) for i in range(n)], "b": [5.0] * n}),
                  parallel_count=2, engine=dask_client, max_attempts=2).start().wait(60)
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", n, 1)
    poison = r.execution(5)
    assert poison.error_type == "WorkerDied" and "SIGKILL" in poison.error
    assert poison.attempts == 2
    for i in set(range(n)) - {5}:
        # Requeued neighbours of the poison row never used an attempt.
        assert (r.execution(i).outputs["answer"], r.execution(i).attempts) == (i, 1)
    assert np.array_equal(_recorded_indices(client, r.execution_id), np.arange(n))


def test_error_threshold_fails_the_batch(client, dask_client):
    svc = _deploy(client, "threshold", scoring_fns.fail_on_three)
    r = svc.batch(pd.DataFrame({"a": [3.0] * 6, "b": [1.0] * 6}), parallel_count=2,
                  engine=dask_client, error_threshold=1).start().wait(60)
    assert r.state == "Failed" and not r.resumable
    assert r.error.startswith("error threshold exceeded:") and "(error_threshold=1)" in r.error


def kill_dask_worker_on(a, b):
    """Kills the row's grandparent-to-be-blamed: the Dask worker process running it."""
    if a == b:  # the worker's parent is its keeper (see _workers/keeper.py)
        os.kill(psutil.Process(os.getppid()).ppid(), signal.SIGKILL)
    return a


@pytest.mark.faults
def test_row_that_kills_dask_workers_is_isolated_and_failed(client, dask_client):
    svc = _deploy(client, "killworker", kill_dask_worker_on)
    scheduler = dask_client.cluster.scheduler
    saved = scheduler.allowed_failures
    # KilledWorker at a task's first lost worker instead of its fourth: same path, faster.
    scheduler.allowed_failures = 0
    try:
        n = 12
        r = svc.batch(pd.DataFrame({"a": [float(i) for i in range(n)], "b": [5.0] * n}),
                      parallel_count=2, engine=dask_client, max_attempts=2).start().wait(60)
    finally:
        scheduler.allowed_failures = saved
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", n, 1)
    bad = r.execution(5)
    assert bad.error_type == "WorkerDied" and "KilledWorker" in bad.error
    assert bad.attempts == 2
    for i in set(range(n)) - {5}:
        # A row that shared a dying Dask worker may be charged once, then runs alone.
        assert r.execution(i).outputs["answer"] == i and r.execution(i).attempts <= 2
    assert np.array_equal(_recorded_indices(client, r.execution_id), np.arange(n))


def test_init_error_fails_the_batch(client, dask_client):
    def bad_init():
        raise RuntimeError("no model here")

    svc = _deploy(client, "badinit", scoring_fns.add, init=bad_init)
    r = svc.batch(pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 1.0]}), parallel_count=2,
                  engine=dask_client).start().wait(60)
    assert r.state == "Failed"
    assert r.error == "init failed: RuntimeError: no model here"
    assert r.completed_item_count == 0


# -- cancel, a lost Dask worker, a dead owner ---------------------------------------------


def hold(a, folder):
    """Marks that the row started (with its pid), then runs far longer than the test."""
    with open(os.path.join(folder, f"{int(a)}"), "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(60)
    return a


def test_cancel_stops_a_running_chunk(client, dask_client, tmp_path):
    svc = _deploy(client, "hold", hold, inputs={"a": float, "folder": str})
    marks = tmp_path / "marks"
    marks.mkdir()
    batch = svc.batch(pd.DataFrame({"a": [float(i) for i in range(8)], "folder": str(marks)}),
                      parallel_count=2, engine=dask_client).start()
    first = _wait_until(lambda: sorted(marks.iterdir()), 30, "a row to start")
    pid = int(_wait_until(lambda: first[0].read_text(), 5, "its pid"))
    t0 = time.monotonic()
    batch.cancel()
    assert time.monotonic() - t0 < 5
    r = batch.results()
    assert (r.state, r.completed_item_count) == ("Canceled", 0)
    _wait_until(lambda: gone(pid), 3, "the row's process to die")
    started = set(os.listdir(marks))
    time.sleep(0.5)
    assert set(os.listdir(marks)) == started  # nothing started after cancel() returned
    assert not any(k.startswith("localbatch-") for keys in dask_client.processing().values()
                   for k in keys)


@pytest.mark.faults
def test_killed_dask_worker_mid_batch_every_row_once(client, dask_client):
    svc = _deploy(client, "slowkill", scoring_fns.slow)
    n = 60
    batch = svc.batch(pd.DataFrame({"a": [float(i) for i in range(n)], "b": [0.05] * n}),
                      parallel_count=2, engine=dask_client).start()

    def busy_worker():
        for addr, keys in dask_client.processing().items():
            if any(str(k).startswith("localbatch-") for k in keys):
                return addr
        return None

    addr = _wait_until(busy_worker, 30, "a chunk on a worker")
    victim = dask_client.run(os.getpid, workers=[addr])[addr]
    os.kill(victim, signal.SIGKILL)  # while it runs a chunk of ours
    r = batch.wait(60)
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", n, 0)
    assert np.array_equal(_recorded_indices(client, batch.execution_id), np.arange(n))
    assert [r.execution(i).outputs["answer"] for i in range(n)] == list(range(n))
    # A lost Dask worker is nobody's fault: no row used a second attempt.
    assert {r.execution(i).attempts for i in range(n)} == {1}
    assert victim not in _cluster_pids(dask_client)  # the nanny replaced it


def gated(a, gate):
    """Rows from 10 on wait for the gate file."""
    import time as _time

    while a >= 10 and not os.path.exists(gate):
        _time.sleep(0.01)
    return a * 2.0


OWNER = textwrap.dedent("""
    import sys, time
    from distributed import Client
    from localbatch import DeployClient
    store, address, gate = sys.argv[1:4]
    import pandas as pd
    dc = Client(address)
    svc = DeployClient(store, engine=dc).get_service("gated", version="1")
    frame = pd.DataFrame({"a": [float(i) for i in range(40)], "gate": gate})
    batch = svc.batch(frame, parallel_count=2).start()
    print(batch.execution_id, flush=True)
    time.sleep(120)
""")


@pytest.mark.faults
def test_owner_death_then_resume(client, store, dask_client, tmp_path):
    svc = _deploy(client, "gated", gated, inputs={"a": float, "gate": str})
    gate = tmp_path / "gate"
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(store),
                              dask_client.scheduler.address, str(gate)],
                             stdout=subprocess.PIPE, text=True)
    try:
        execution_id = owner.stdout.readline().strip()
        assert execution_id, "the owner process did not start its batch"
        batch = svc.get_batch(execution_id)
        _wait_until(lambda: batch.results().completed_item_count > 0, 30, "a committed part")
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        owner.stdout.close()
    r = batch.results()
    assert r.state == "Failed" and r.resumable and r.error.startswith("Interrupted")
    done_before = r.completed_item_count
    assert 0 < done_before < 40

    gate.touch()
    on_dask = DeployClient(str(store), engine=dask_client).get_service("gated", version="1")
    resumed = on_dask.get_batch(execution_id).resume()
    r = resumed.wait(60)
    assert (r.state, r.completed_item_count, r.failed_item_count) == ("Complete", 40, 0)
    assert r.header["resumed"] == 1
    assert [r.execution(i).outputs["answer"] for i in range(40)] == [2.0 * i for i in range(40)]
    assert np.array_equal(_recorded_indices(client, execution_id), np.arange(40))


# -- packaging -------------------------------------------------------------------------------


NO_DASK = textwrap.dedent("""
    import sys
    sys.modules["dask"] = None
    sys.modules["distributed"] = None
    from localbatch import DeployClient
    try:
        DeployClient(sys.argv[1], engine="dask")
    except ImportError as exc:
        print("ImportError:", exc)
""")

LOCAL_ONLY = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    import scoring_fns
    from localbatch import DeployClient
    c = DeployClient(sys.argv[1])
    svc = c.service("plain").version("1").code_fn(scoring_fns.add) \\
        .inputs(a=float, b=float).outputs(answer=float).deploy()
    r = svc.batch({"a": [1.0, 2.0], "b": [1.0, 1.0]}, parallel_count=2).start().wait(60)
    print(r.state, "dask" in sys.modules, "distributed" in sys.modules)
    r2 = DeployClient(sys.argv[1], engine="dask").get_service("plain").batch(
        {"a": [1.0], "b": [1.0]}, parallel_count=2).start().wait(60)
    print(r2.state, r2.error)
""")


def test_without_dask_the_error_names_the_extra(tmp_path):
    out = subprocess.run([sys.executable, "-c", NO_DASK, str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=60)
    assert 'ImportError: the Dask engine needs dask.distributed: pip install ' \
           '"localbatch[dask]"' in out.stdout, out.stderr


def test_local_engine_never_imports_dask(tmp_path):
    tests = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", LOCAL_ONLY, str(tmp_path / "s"), tests],
                         capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines[0] == "Complete False False", out.stderr
    # engine="dask" with no Client anywhere: the batch fails and says what is missing.
    assert lines[1].startswith("Failed ConfigurationError: engine='dask' needs a "
                               "dask.distributed Client"), out.stderr


LIGHT_IMPORTS = textwrap.dedent("""
    import importlib, sys
    module, *absent = sys.argv[1:]
    importlib.import_module(module)
    print(" ".join(m for m in absent if m in sys.modules) or "-")
""")


@pytest.mark.parametrize("module, absent", [
    # A Dask worker unpickling run_chunk imports neither the supervisor nor the store.
    ("localbatch._engines.dask_tasks", ["localbatch._engines.supervisor",
                                        "localbatch._engines.base", "localbatch._engines.dask",
                                        "localbatch._store.commit", "distributed"]),
    # The worker program pulls in no engine, no committer and no pandas.
    ("localbatch._workers.child", ["localbatch._engines", "localbatch._store.commit",
                                   "localbatch._workers.process", "pandas"]),
])
def test_worker_side_modules_import_only_what_they_need(module, absent):
    out = subprocess.run([sys.executable, "-c", LIGHT_IMPORTS, module, *absent],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "-", out.stderr
