"""Workers from a warm template, started as the work needs them (issue 15).

Each test tries to break one promise: a batch starts the workers its chunks can
use and no more; CPU-bound rows never get more workers than cores; the live
workers stay bounded however many services a process deploys; idle ones are
reaped; workers are forked from a template that loaded the service but ran no
``init``, and that holds no state of the test process; a guard-less script
works; a retired or killed worker is replaced without charging a row. No
timings here: speed lives in bench/compare.py (first_batch, suite).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import warm_fns
import warm_state
from faults.helpers import gone  # tests/ is on sys.path (conftest)

from localbatch._engines.base import RUNS
from localbatch._engines.local import CORES
from localbatch._store.fsutil import write_json
from localbatch._workers import pool, zygote

ROOT = Path(__file__).resolve().parents[1]
#: Tests of the template itself (the default where forking is safe: Linux).
template = pytest.mark.skipif(pool.DEFAULT_START_METHOD != "forkserver",
                              reason="workers are spawned by default here")


def deploy(client, name, fn, init=None, outputs=None, **models):
    builder = client.service(name).version("1.0").code_fn(fn, init).inputs(a=float, b=float)
    builder = builder.outputs(**(outputs or {"y": float}))
    if models:
        builder = builder.models(**models)
    return builder.deploy()


def rows(n: int, b: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"a": [float(i) for i in range(n)], "b": [b] * n})


def started(store: Path, execution_id: str) -> list[int]:
    log = (store / "executions" / execution_id / "execution.log").read_text()
    return [int(p) for p in re.findall(r"worker (\d+) started", log)]


def template_pid() -> int:
    """The live template's pid."""
    return zygote._CLIENT.proc.pid  # noqa: SLF001 - the test looks at the live template


def answer(resp, i: int) -> list[int]:
    """Row ``i``'s answer from warm_fns' ``where_loaded`` and friends: its ints."""
    return [int(v) for v in resp.execution(i).outputs["y"].split(":")]


def descendants_but_template() -> list[psutil.Process]:
    server = zygote._CLIENT  # noqa: SLF001 - the test looks at the live template
    template = server.proc.pid if server is not None and server.alive() else None
    return [p for p in psutil.Process().children(recursive=True)
            if p.pid != template and p.status() != psutil.STATUS_ZOMBIE]


def live_workers() -> list[psutil.Process]:
    """This process's worker processes: the template's children and spawned workers."""
    server = zygote._CLIENT  # noqa: SLF001 - the test looks at the live template
    template = server.proc.pid if server is not None and server.alive() else None
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE or p.pid == template:
                continue
            if p.ppid() == template or "localbatch._workers.child" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- on demand -------------------------------------------------------------------------


def test_a_one_chunk_batch_with_parallel_count_10_starts_one_worker(client, store):
    svc = deploy(client, "one-chunk", warm_fns.nap)
    resp = svc.batch(rows(5), parallel_count=10).start().wait(60)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    assert len(started(store, resp.execution_id)) == 1
    assert len(live_workers()) == 1


def test_rows_that_wait_get_more_workers_up_to_parallel_count(client, store):
    svc = deploy(client, "naps", warm_fns.nap)
    resp = svc.batch(rows(300, 0.01), parallel_count=4).start().wait(120)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    n = len(started(store, resp.execution_id))
    assert 1 < n <= 4, n


def test_cpu_bound_rows_get_no_more_workers_than_cores(client, store):
    svc = deploy(client, "busy", warm_fns.busy)
    resp = svc.batch(rows(300, 0.002), parallel_count=10).start().wait(120)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    assert 1 <= len(started(store, resp.execution_id)) <= CORES


@pytest.mark.skipif(CORES < 2, reason="one core: one worker is all CPU-bound rows get")
def test_a_small_batch_of_slow_cpu_bound_rows_gets_a_second_worker(client, store):
    """The test-suite pattern: the SDK sample's 32 rows of ~4 ms, parallel_count=10.
    Their chunks are sized for the workers the batch may grow to, so rows wait for a
    second worker instead of all going to the first one in two chunks once the first
    chunk (8 rows, faster than a worker is thought busy) has timed them."""
    svc = deploy(client, "few-busy", warm_fns.busy)
    resp = svc.batch(rows(32, 0.004), parallel_count=10).start().wait(120)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    assert 2 <= len(started(store, resp.execution_id)) <= CORES


def test_live_workers_stay_bounded_however_many_services_a_process_deploys(client):
    for i in range(12):  # a test suite: a new service each time
        svc = deploy(client, f"svc-{i}", warm_fns.nap)
        resp = svc.batch(rows(32), parallel_count=10).start().wait(60)
        assert resp.state == "Complete"
        assert len(live_workers()) <= pool.MAX_IDLE
        # Every process below this one but the template: workers and their keepers.
        assert len(descendants_but_template()) <= 2 * CORES
    assert pool.WORKER_POOL.idle_count() <= pool.MAX_IDLE


def test_threads_deploying_and_batching_their_own_services_at_once_share_one_template(
        client):
    """Four threads, each its own service, deploy and run batches at the same time: the
    template's preloads and forks interleave; every row is right, workers stay bounded."""
    errors: list[BaseException] = []

    def suite(i: int) -> None:
        try:
            svc = deploy(client, f"threaded-{i}", warm_fns.nap)
            for n in (30, 12):
                resp = svc.batch(rows(n, 0.002), parallel_count=3).start().wait(120)
                assert resp.state == "Complete" and resp.failed_item_count == 0, resp.error
                assert resp.to_frame()["y"].tolist() == [float(k) for k in range(n)]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=suite, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    # Bounded as the pool promises: the cap, or what the two services handed back last
    # keep (all of theirs: threads interleaving look like services used in turn).
    bound = max(pool.MAX_IDLE, 2 * 3)
    assert wait_for(lambda: not RUNS.live())
    assert pool.WORKER_POOL.idle_count() <= bound
    assert wait_for(lambda: len(live_workers()) <= bound), live_workers()


def test_idle_workers_are_reaped(client, monkeypatch):
    monkeypatch.setattr(pool, "IDLE_TIMEOUT", 0.3)
    svc = deploy(client, "reaped", warm_fns.nap)
    assert svc.batch(rows(32, 0.01), parallel_count=3).start().wait(60).state == "Complete"
    assert wait_for(lambda: not live_workers(), timeout=10), live_workers()
    # The service still works afterwards (from the template, which stays).
    assert svc.batch(rows(3), parallel_count=3).start().wait(60).state == "Complete"


def test_two_services_used_in_turn_keep_their_workers_and_a_one_use_service_does_not(client):
    """The idle cap's protection: the service handed back before the last keeps its
    workers only when it is used in turn (two services alternating), so a test suite's
    one-use services still leave at most the cap. Real workers, leased and handed back
    as a batch does; over the cap on purpose (3 each, the cap is one per core)."""
    n = pool.MAX_IDLE + 1
    keys = {name: (str(deploy(client, name, warm_fns.nap)._record.path),  # noqa: SLF001
                   pool.DEFAULT_START_METHOD, ()) for name in ("turn-a", "turn-b", "once")}

    def batch(name: str) -> set[int]:
        """What a batch does with its workers: lease the idle ones, start the rest,
        hand them all back at the end."""
        key = keys[name]
        workers = pool.WORKER_POOL.take_idle(key, n)
        workers += [pool.start_worker(key, key[1], {"path": key[0]}, None)
                    for _ in range(n - len(workers))]
        pool.WORKER_POOL.give_back(workers)
        return {w.pid for w in workers}

    batch("turn-a")
    batch("turn-b")  # turn-a was used once: over the cap, its workers go
    a = batch("turn-a")
    b = batch("turn-b")  # both used in turn now: both keep theirs
    assert batch("turn-a") == a and batch("turn-b") == b
    assert pool.WORKER_POOL.idle_count() == 2 * n > pool.MAX_IDLE
    batch("once")  # a new service: turn-a is no longer among the last two handed back
    assert pool.WORKER_POOL.idle_count(keys["turn-a"]) == 0
    assert pool.WORKER_POOL.idle_count(keys["turn-b"]) == n


# -- the template ----------------------------------------------------------------------


@template
def test_workers_fork_from_a_template_that_unpickled_the_model(client):
    svc = deploy(client, "where", warm_fns.where_loaded, outputs={"y": str},
                 where=warm_fns.LoadedWhere())
    resp = svc.batch(rows(20), parallel_count=2).start().wait(60)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    for i in range(20):
        loaded_in, pid, keeper = answer(resp, i)
        # Unpickled once, in the template: the parent of the worker's keeper.
        assert loaded_in == psutil.Process(keeper).ppid() != pid


@template
def test_a_service_the_template_evicted_is_loaded_there_again(client):
    """The template keeps the last PRELOAD_SERVICES services loaded; a batch of one it
    let go still forks from it, loaded again (not in each worker), with its own models,
    not those of a service loaded since."""
    from localbatch._workers.loading import PRELOAD_SERVICES

    n = PRELOAD_SERVICES + 2
    services = [deploy(client, f"evicted-{i}", warm_fns.where_and_tag, outputs={"y": str},
                       where=warm_fns.LoadedWhere(), tag=i) for i in range(n)]
    for k in (0, n - 1, 1, 0):
        resp = services[k].batch(rows(6), parallel_count=2).start().wait(60)
        assert resp.state == "Complete" and resp.failed_item_count == 0, resp.error
        for i in range(6):
            loaded_in, pid, keeper, tag = answer(resp, i)
            assert loaded_in == psutil.Process(keeper).ppid() == template_pid() != pid
            assert tag == k


@template
def test_a_template_never_serves_a_service_changed_on_disk_since_it_loaded_it(client):
    """The template loaded a service; then its model file changes on disk. Re-signed
    (blob and manifest hash rewritten together), workers get the new model, not the
    template's copy; tampered (hash left), they refuse it before unpickling."""
    svc = deploy(client, "changed", warm_fns.where_and_tag, outputs={"y": str},
                 where=warm_fns.LoadedWhere(), tag=1)

    def tags() -> set[int]:
        pool.WORKER_POOL.close()  # fresh workers: they load (from the template) again
        resp = svc.batch(rows(4), parallel_count=2).start().wait(60)
        assert resp.state == "Complete" and resp.failed_item_count == 0, resp.error
        return {answer(resp, i)[3] for i in range(4)}

    assert tags() == {1}  # the template holds tag=1 now
    blob = svc._record.path / "model-tag.pkl"  # noqa: SLF001
    manifest = json.loads((svc._record.path / "manifest.json").read_text())  # noqa: SLF001
    data = pickle.dumps(2)
    blob.write_bytes(data)
    manifest["blobs"]["model-tag.pkl"] = hashlib.sha256(data).hexdigest()
    write_json(svc._record.path / "manifest.json", manifest)  # noqa: SLF001
    assert tags() == {2}
    blob.write_bytes(pickle.dumps(3))  # the manifest still names 2's hash
    pool.WORKER_POOL.close()
    resp = svc.batch(rows(4), parallel_count=2).start().wait(60)
    assert resp.state == "Failed", resp.state
    assert "model-tag.pkl" in str(resp.error) and "hash" in str(resp.error), resp.error


@template
def test_a_model_that_starts_a_thread_is_loaded_in_each_worker_instead(client):
    """The template never forks with a second thread running: it starts afresh."""
    svc = deploy(client, "threads", warm_fns.where_loaded, outputs={"y": str},
                 where=warm_fns.StartsThread())
    for _ in range(2):
        resp = svc.batch(rows(10), parallel_count=2).start().wait(60)
        assert resp.state == "Complete" and resp.failed_item_count == 0, resp.error
        for i in range(10):
            loaded_in, pid, _ = answer(resp, i)
            assert loaded_in == pid
    assert zygote._CLIENT.alive()  # noqa: SLF001


@template
def test_the_template_starts_loading_a_service_at_deploy(client):
    deploy(client, "ahead", warm_fns.nap)
    assert client.start_method == "forkserver"
    assert zygote._CLIENT is not None and zygote._CLIENT.alive()  # noqa: SLF001
    assert not live_workers()  # no worker before a batch needs one


@template
def test_a_template_stuck_loading_a_model_is_replaced(client, monkeypatch):
    """A template that does not load a service in time is killed; the next one does
    not load that service, and its workers load it themselves."""
    monkeypatch.setattr(zygote, "FORK_TIMEOUT", 3.0)
    svc = deploy(client, "stuck", warm_fns.where_loaded, outputs={"y": str},
                 where=warm_fns.StuckInTemplate())
    resp = svc.batch(rows(4), parallel_count=1).start().wait(60)
    assert resp.state == "Complete" and resp.failed_item_count == 0, resp.error
    loaded_in, pid, _ = answer(resp, 0)
    assert loaded_in == pid
    assert zygote._CLIENT.alive()  # noqa: SLF001


@template
def test_a_template_killed_mid_batch_costs_each_of_its_workers_one_row_at_most(client, store):
    """The template dies (SIGKILL, as the OOM killer would) while its workers score a
    batch. Its workers die with it (their keepers' parent-death signal, the chain that
    ends them with their owner): each costs the row it was running one attempt, as any
    worker crash does. The batch completes, every row once and right, on workers of a
    fresh template; the dead ones are let go without waiting for the exit reports their
    template can no longer send (that wait took 5 s a worker)."""
    svc = deploy(client, "orphans", warm_fns.nap)
    batch = svc.batch(rows(400, 0.02), parallel_count=2).start()
    assert wait_for(lambda: batch.results().completed_item_count > 0, 30)  # ~2 s in
    first = template_pid()
    t0 = time.monotonic()
    os.kill(first, signal.SIGKILL)
    resp = batch.wait(60)
    assert resp.state == "Complete" and resp.failed_item_count == 0, resp.error
    assert resp.to_frame()["y"].tolist() == [float(i) for i in range(400)]
    attempts = [resp.execution(i).attempts for i in range(400)]
    assert max(attempts) <= 2 and attempts.count(2) <= 2, attempts
    log = (store / "executions" / resp.execution_id / "execution.log").read_text()
    assert "worker died (exit status unknown)" in log  # the kill came mid-batch
    again = svc.batch(rows(10), parallel_count=2).start().wait(60)
    assert again.state == "Complete" and again.failed_item_count == 0, again.error
    assert zygote._CLIENT.alive() and template_pid() != first  # noqa: SLF001
    pool.WORKER_POOL.close()
    # ~2 s of rows were left at the kill; waiting for reports took 13 s and more.
    assert time.monotonic() - t0 < 8.0


@template
def test_a_template_killed_while_idle_is_replaced_and_the_service_preloaded_again(client):
    """A template that dies idle (long after it loaded the service) is not blamed on
    that service: the next template loads it too, and workers fork from it warm."""
    svc = deploy(client, "idle-template", warm_fns.where_loaded, outputs={"y": str},
                 where=warm_fns.LoadedWhere())
    assert svc.batch(rows(5), parallel_count=1).start().wait(60).state == "Complete"
    pool.WORKER_POOL.close()  # no warm worker left: the next batch must fork one
    first = template_pid()
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: gone(first))
    resp = svc.batch(rows(20), parallel_count=2).start().wait(60)
    assert resp.state == "Complete" and resp.failed_item_count == 0, resp.error
    assert [resp.execution(i).attempts for i in range(20)] == [1] * 20
    second = template_pid()
    assert second != first
    for i in range(20):
        loaded_in, pid, keeper = answer(resp, i)
        assert loaded_in == psutil.Process(keeper).ppid() == second != pid


@pytest.mark.parametrize("deaths", [pool.TEMPLATE_TRIES - 1, pool.TEMPLATE_TRIES])
@template
def test_a_template_that_dies_as_it_is_asked_for_a_worker_is_replaced(client, monkeypatch,
                                                                     deaths):
    """Each template is killed just as the owner asks it for a worker (the real
    process, SIGKILLed at that moment): a fresh one serves the batch, up to
    TEMPLATE_TRIES templates; past that the batch fails naming the cause."""
    svc = deploy(client, "dies-at-fork", warm_fns.nap)
    real_fork = zygote.ForkServerClient.fork
    killed: list[int] = []

    def fork_after_a_kill(self, child_fd: int, board_path: str) -> int:
        if len(killed) < deaths:
            os.kill(self.proc.pid, signal.SIGKILL)
            killed.append(self.proc.pid)
        return real_fork(self, child_fd, board_path)

    monkeypatch.setattr(zygote.ForkServerClient, "fork", fork_after_a_kill)
    resp = svc.batch(rows(10), parallel_count=1).start().wait(60)
    assert len(killed) == deaths
    if deaths < pool.TEMPLATE_TRIES:
        assert resp.state == "Complete" and resp.failed_item_count == 0, resp.error
        assert [resp.execution(i).attempts for i in range(10)] == [1] * 10
        assert template_pid() not in killed
    else:
        assert resp.state == "Failed"
        assert "template died" in str(resp.error), resp.error


def test_init_runs_in_each_worker_not_in_the_template(client, store, tmp_path, monkeypatch):
    inits = tmp_path / "inits"
    inits.mkdir()
    monkeypatch.setenv("WARM_INIT_DIR", str(inits))
    svc = deploy(client, "inits", warm_fns.init_pid, warm_fns.record_init,
                 outputs={"y": str})
    resp = svc.batch(rows(200, 0.0), parallel_count=2).start().wait(60)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    pairs = {tuple(answer(resp, i)) for i in range(200)}
    assert all(init == pid for init, pid in pairs)  # each worker ran its own init
    ran = {int(p.name) for p in inits.iterdir()}
    # Only workers ran it (one that started as the last rows went may have scored none).
    # (started() logs each worker's keeper, the parent of the process that runs rows.)
    assert {pid for _, pid in pairs} <= ran
    assert len(ran) <= len(started(store, resp.execution_id))
    assert template_pid() not in ran


def test_no_state_of_the_test_process_leaks_into_a_worker(client, monkeypatch):
    svc = deploy(client, "leak", warm_fns.read_state, outputs={"y": str})
    monkeypatch.setattr(warm_state, "VALUE", "set in the test process after import")
    resp = svc.batch(rows(3), parallel_count=2).start().wait(60)
    assert [resp.execution(i).outputs["y"] for i in range(3)] == ["fresh"] * 3


@template
def test_the_owners_environment_of_the_moment_reaches_forked_workers(client, monkeypatch):
    svc = deploy(client, "env", warm_fns.init_pid, warm_fns.record_init, outputs={"y": str})
    svc.batch(rows(1), parallel_count=1).start().wait(60)  # the template is up
    folder = Path(os.environ["LOCALBATCH_HOME"]).parent / "late-inits"
    folder.mkdir()
    monkeypatch.setenv("WARM_INIT_DIR", str(folder))  # set after the template started
    pool.WORKER_POOL.close()
    assert svc.batch(rows(1), parallel_count=1).start().wait(60).state == "Complete"
    assert len(list(folder.iterdir())) == 1


SCRIPT = """
import pandas as pd
from localbatch import DeployClient

def double(a, b):
    return a * 2.0

client = DeployClient({store!r})
svc = (client.service("guardless").version("1.0").code_fn(double)
       .inputs(a=float, b=float).outputs(y=float).deploy())
resp = svc.batch(pd.DataFrame({{"a": [1.0, 2.0, 3.0], "b": [0.0] * 3}}),
                 parallel_count=10).start().wait(60)
print("RESULT", resp.state, resp.to_frame()["y"].tolist(), client.start_method)
"""


@pytest.mark.parametrize("start_method", [None, "spawn"])
def test_a_script_without_a_main_guard_works(tmp_path, start_method):
    script = tmp_path / "guardless.py"
    script.write_text(textwrap.dedent(SCRIPT.format(store=str(tmp_path / "store"))))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LOCALBATCH_START_METHOD", None)
    if start_method:
        env["LOCALBATCH_START_METHOD"] = start_method
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    want = start_method or pool.DEFAULT_START_METHOD
    assert f"RESULT Complete [2.0, 4.0, 6.0] {want}" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count("RESULT") == 1  # the script ran once: no worker imported it


# -- replacement -------------------------------------------------------------------------


def test_a_retired_worker_is_replaced_and_costs_no_attempt(client, store):
    svc = deploy(client, "retire", warm_fns.retire_after_row_zero)
    resp = svc.batch(rows(40), parallel_count=1).start().wait(60)
    assert resp.state == "Complete" and resp.failed_item_count == 0, resp.error
    assert [resp.execution(i).attempts for i in range(40)] == [1] * 40
    assert resp.to_frame()["y"].tolist() == [float(i) for i in range(40)]
    log = (store / "executions" / resp.execution_id / "execution.log").read_text()
    assert "retired" in log and len(started(store, resp.execution_id)) == 2


def test_a_killed_idle_worker_is_replaced_and_costs_no_attempt(client, store):
    svc = deploy(client, "killed", warm_fns.nap)
    first = svc.batch(rows(5), parallel_count=1).start().wait(60)
    (pid,) = started(store, first.execution_id)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: gone(pid))
    resp = svc.batch(rows(20), parallel_count=1).start().wait(60)
    assert resp.state == "Complete" and resp.failed_item_count == 0
    assert [resp.execution(i).attempts for i in range(20)] == [1] * 20
    assert pid not in started(store, resp.execution_id)
