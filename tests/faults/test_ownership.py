"""One owner per execution, per process too; a read-only reader sees the true state.

Threads are lined up with a barrier and the races repeated; orphans are real (their
owner process is SIGKILLed); readers are real other processes, one of them running
as ``nobody`` through a read-only bind mount. A poller samples the state throughout
and must never see a ``Failed`` that is not the final truth: once a resume has
taken an orphan, no sample may read ``Failed`` again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from localbatch import ResumeError, ServiceNotFoundError
from localbatch._engines.executions import Executions
from localbatch._store.executions import OwnerLock

from . import faultfns
from .helpers import HERE, deploy, kill_group, record_counts, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def _frame(rows: int, b: float) -> pd.DataFrame:
    return pd.DataFrame({"a": [float(i) for i in range(rows)], "b": b})


def _together(n: int, fn) -> list[object]:
    """Run ``fn(k)`` in ``n`` threads released at once; their results or exceptions."""
    barrier = threading.Barrier(n)
    out: list[object] = [None] * n

    def run(k: int) -> None:
        barrier.wait()
        try:
            out[k] = fn(k)
        except Exception as exc:  # noqa: BLE001 - the test inspects what each got
            out[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


class Poller:
    """A thread sampling an execution's effective state until it ends."""

    def __init__(self, store: Path, execution_id: str) -> None:
        # Its own Executions object, as another client or the CLI would open it.
        self.executions = Executions.open(store)
        self.id = execution_id
        self.states: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            state = str(self.executions.header(self.id)["state"])
            self.states.append(state)
            if state in ("Complete", "Canceled"):
                return
            time.sleep(0.002)

    def stop(self) -> list[str]:
        """The samples, once the poller saw the end (or 30 s passed)."""
        self._thread.join(30)
        self._stop.set()
        self._thread.join(5)
        return self.states

    def assert_no_false_failure(self) -> None:
        """``Failed`` may only be read before anyone resumed (the orphan's true state)."""
        states = self.stop()
        first_live = next((k for k, s in enumerate(states) if s != "Failed"), len(states))
        late = [s for s in states[first_live:] if s == "Failed"]
        assert not late, f"a poll saw Failed after the run was taken: {states[first_live:]}"
        assert states and states[-1] == "Complete", states[-5:]


# -- the lock itself -------------------------------------------------------------------


def _other_process_can_lock(path: Path) -> bool:
    code = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
            "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except OSError:\n    print('held')\nelse:\n    print('free')\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=30, check=True).stdout.strip()
    return out == "free"


def test_threads_racing_for_one_lock_one_wins_every_time(tmp_path):
    path = tmp_path / "owner.lock"
    for _ in range(200):
        locks = [OwnerLock(path) for _ in range(8)]
        got = _together(8, lambda k, locks=locks: locks[k].acquire())
        assert got.count(True) == 1, got
        winner = locks[got.index(True)]
        # The losers' release must not drop the winner's lock (nor its registry entry).
        for lock in locks:
            if lock is not winner:
                lock.release()
        assert OwnerLock.probe(path)
        assert not OwnerLock(path).acquire()
        winner.release()
    assert OwnerLock(path).acquire()


def test_probes_in_the_owners_process_never_drop_its_lock(tmp_path):
    path = tmp_path / "owner.lock"
    lock = OwnerLock(path)
    assert lock.acquire()
    try:
        # Another spelling of the same file (the registry keys the inode, not the text).
        other = tmp_path / "." / "owner.lock"
        for _ in range(50):
            assert OwnerLock.probe(other)
            assert OwnerLock.read_note(other) is None
            assert not OwnerLock(other).acquire()
        assert not _other_process_can_lock(path)
    finally:
        lock.release()
    assert not OwnerLock.probe(path)
    assert _other_process_can_lock(path)


def test_lock_file_renamed_into_place_stays_one_owner(tmp_path):
    """Publishing renames the staging folder: the held lock follows the file."""
    staging, final = tmp_path / "staging", tmp_path / "final"
    staging.mkdir()
    lock = OwnerLock(staging / "owner.lock")
    assert lock.acquire()
    os.rename(staging, final)
    lock.moved(final / "owner.lock")
    try:
        assert OwnerLock.probe(final / "owner.lock")
        assert not OwnerLock(final / "owner.lock").acquire()
        assert not _other_process_can_lock(final / "owner.lock")
    finally:
        lock.release()


# -- Batch.start() from many threads ----------------------------------------------------


def test_start_from_many_threads_starts_once(client, store):
    svc = deploy(client, "once", faultfns.slow)
    for _ in range(15):
        batch = svc.batch(_frame(3, 0.0), engine="inline")
        got = _together(6, lambda k, batch=batch: batch.start().execution_id)
        assert len(set(got)) == 1 and isinstance(got[0], str), got
    assert len(client.list_executions()) == 15
    # The local engine too: one execution, every row recorded once.
    batch = svc.batch(_frame(20, 0.0), parallel_count=2)
    got = _together(4, lambda k: batch.start().execution_id)
    assert len(set(got)) == 1
    assert batch.wait(timeout=60).state == "Complete"
    assert (record_counts(store, batch.execution_id, 20) == 1).all()
    assert len(client.list_executions()) == 16


# -- a second owner in the owner's own process ------------------------------------------


def test_resume_while_this_process_runs_it_is_refused(client, store, fault_log):
    svc = deploy(client, "slow", faultfns.slow)
    rows = 160
    batch = svc.batch(_frame(rows, 0.05), parallel_count=2).start()
    eid = batch.execution_id
    poller = Poller(store, eid)
    for _ in range(3):
        got = _together(4, lambda k: client.get_execution(eid).resume(force=k % 2 == 0))
        for g in got:
            # Refused while it runs; a resume of the finished batch is a no-op.
            assert (isinstance(g, ResumeError) and "is running" in str(g)) or (
                not isinstance(g, Exception) and batch.state == "Complete"), got
    assert batch.wait(timeout=60).state == "Complete"
    poller.assert_no_false_failure()
    assert set(poller.states) <= {"Pending", "InProgress", "Complete"}, set(poller.states)
    assert (record_counts(store, eid, rows) == 1).all()


# -- real orphans, resumed by threads and by processes ------------------------------------

ORPHANS = """
import sys, time
sys.path.insert(0, {tests!r})
import pandas as pd
from localbatch import DeployClient
svc = DeployClient({store!r}).get_service("slow")
frame = pd.DataFrame({{"a": [float(i) for i in range({rows})], "b": 0.1}})
for _ in range({count}):
    print(svc.batch(frame, parallel_count=1).start().execution_id, flush=True)
time.sleep(600)
"""


def _orphans(client, store: Path, count: int, rows: int) -> list[str]:
    """``count`` executions whose owner process was SIGKILLed mid-run."""
    code = textwrap.dedent(ORPHANS).format(tests=str(HERE.parent), store=str(store),
                                           rows=rows, count=count)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert owner.stdout is not None
    ids = [owner.stdout.readline().strip() for _ in range(count)]
    try:
        assert all(ids), f"owner failed (exit {owner.poll()})"
        assert wait_until(lambda: all(client.get_execution(e).results().completed_item_count
                                      for e in ids), 60)
    finally:
        kill_group(owner)
    for eid in ids:
        assert client.get_execution(eid).results().error.startswith("Interrupted")
    return ids


def test_threads_resuming_one_orphan_one_wins(client, store, fault_log):
    deploy(client, "slow", faultfns.slow)
    rows = 60
    for eid in _orphans(client, store, count=3, rows=rows):
        poller = Poller(store, eid)
        got = _together(6, lambda k, eid=eid: client.get_execution(eid).resume(parallel_count=4))
        winners = [g for g in got if not isinstance(g, Exception)]
        assert len(winners) == 1, got
        assert all(isinstance(g, ResumeError) for g in got if g not in winners), got
        assert winners[0].wait(timeout=60).state == "Complete"
        poller.assert_no_false_failure()
        resp = client.get_execution(eid).results()
        assert resp.completed_item_count == rows and not resp.error
        assert (record_counts(store, eid, rows) == 1).all()


RESUMER = """
import sys
sys.path.insert(0, {tests!r})
from localbatch import DeployClient, ResumeError
batch = DeployClient({store!r}).get_execution({eid!r})
sys.stdin.readline()
try:
    batch.resume(parallel_count=4)
except ResumeError:
    print("refused", flush=True)
    sys.exit(0)
print("owner", flush=True)
batch.wait()
"""


def test_processes_resuming_one_orphan_one_wins(client, store, fault_log):
    deploy(client, "slow", faultfns.slow)
    rows = 60
    (eid,) = _orphans(client, store, count=1, rows=rows)
    code = textwrap.dedent(RESUMER).format(tests=str(HERE.parent), store=str(store), eid=eid)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    poller = Poller(store, eid)
    time.sleep(1.5)  # all three imported localbatch and opened the execution
    for p in procs:  # line them up: one write each, as close together as possible
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = sorted(p.communicate(timeout=90)[0].split()[0] for p in procs)
    assert outs == ["owner", "refused", "refused"]
    poller.assert_no_false_failure()
    assert client.get_execution(eid).results().state == "Complete"
    assert (record_counts(store, eid, rows) == 1).all()


# -- a reader without write access ------------------------------------------------------

READER = """
import json, sys
from pathlib import Path
from localbatch._engines.executions import Executions
ex = Executions.open(Path(sys.argv[1]))
print(json.dumps([ex.header(sys.argv[2])["state"], ex.store.owner_alive(sys.argv[2])]))
"""


@pytest.fixture
def readonly_view(store):
    """The store seen through a read-only bind mount any user can reach."""
    view = Path(tempfile.mkdtemp(prefix="localbatch-ro-"))
    view.chmod(0o755)
    try:
        subprocess.run(["mount", "--bind", str(store), str(view)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        view.rmdir()
        pytest.skip(f"bind mounts are not permitted here: {exc}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True,
                       capture_output=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False, capture_output=True)
        view.rmdir()


def _read_as_root(view: Path, eid: str) -> tuple[str, bool]:
    """What another process (root, through the read-only mount) reads."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", READER, str(view), eid], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    state, alive = json.loads(out.stdout)
    return state, alive


def _read_as_nobody(view: Path, eid: str) -> tuple[str, bool]:
    """What user ``nobody`` reads: a forked child that drops to it (the interpreter
    lives under root's private home, so a fresh one cannot start as nobody)."""
    import localbatch._store.executions as store_mod

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            # The parent's registry of held locks is not this process's.
            store_mod._HELD.clear()  # noqa: SLF001
            store_mod._HELD_LOCK = threading.Lock()  # noqa: SLF001
            ex = Executions.open(view)
            os.write(w, json.dumps([str(ex.header(eid)["state"]),
                                    ex.store.owner_alive(eid)]).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, json.dumps(["error", repr(exc)]).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    state, alive = json.loads(data)
    assert state != "error", alive
    return state, alive


def _open_up(store: Path, lock_mode: int) -> None:
    """Let every user read the store (the lock file gets ``lock_mode``)."""
    for folder, _dirs, files in os.walk(store):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), lock_mode if name == "owner.lock" else 0o644)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize("lock_mode", [0o644, 0o600], ids=["lock-readable", "lock-unreadable"])
def test_reader_as_nobody_on_a_readonly_mount_sees_the_live_batch(client, store, fault_log,
                                                                   readonly_view, lock_mode):
    svc = deploy(client, "slow", faultfns.slow)
    batch = svc.batch(_frame(200, 0.1), parallel_count=2).start()
    eid = batch.execution_id
    assert wait_until(lambda: batch.results().completed_item_count > 0, 60)
    _open_up(store, lock_mode)
    # Root through the read-only mount: the old probe's O_RDWR open failed with EROFS.
    assert _read_as_root(readonly_view, eid) == ("InProgress", True)
    # nobody: no write permission anywhere (and, with 0600, not even read on the lock).
    assert _read_as_nobody(readonly_view, eid) == ("InProgress", True)
    batch.cancel()
    _open_up(store, lock_mode)  # the owner's last header is a new file, private again
    assert _read_as_nobody(readonly_view, eid) == ("Canceled", False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_reader_as_nobody_sees_a_dead_owner_as_interrupted(client, store, fault_log,
                                                           readonly_view):
    deploy(client, "slow", faultfns.slow)
    (eid,) = _orphans(client, store, count=1, rows=40)
    _open_up(store, 0o644)
    assert _read_as_nobody(readonly_view, eid) == ("Failed", False)


# -- delete_service while a batch starts ------------------------------------------------


def test_delete_service_before_start_fails_the_start_clearly(client, store):
    svc = deploy(client, "gone", faultfns.slow)
    batch = svc.batch(_frame(5, 0.0), parallel_count=1)
    client.delete_service("gone", version="1")
    with pytest.raises(ServiceNotFoundError, match="'gone' version '1' was deleted"):
        batch.start()
    assert batch.execution_id is None
    assert client.list_executions() == []
    staging = store / "executions" / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_delete_service_racing_start_never_fails_raw(client, store):
    """Either the start fails naming the service, or the batch runs to the end."""
    outcomes = set()
    for k in range(8):
        svc = (client.service("race").version(str(k)).code_fn(faultfns.slow)
               .inputs(a=float, b=float).outputs(y=float).deploy())
        batch = svc.batch(_frame(3000, 0.0), parallel_count=2)

        def delete(k=k) -> None:
            time.sleep(0.004 * k)  # sweep the deletion across the start
            client.delete_service("race", version=str(k))

        got = _together(2, lambda i, batch=batch, delete=delete:
                        batch.start() if i == 0 else delete())
        if isinstance(got[0], Exception):
            assert isinstance(got[0], ServiceNotFoundError), got[0]
            assert f"'race' version '{k}' was deleted" in str(got[0])
            outcomes.add("refused")
            continue
        resp = batch.wait(timeout=60)
        assert resp.state == "Complete", resp.error
        assert resp.completed_item_count == 3000 and resp.failed_item_count == 0
        outcomes.add("ran")
    assert outcomes  # which ones happen depends on the machine's speed


def test_resume_runs_from_the_pinned_revision_when_the_registry_lost_it(client, store,
                                                                        fault_log):
    svc = deploy(client, "slow", faultfns.slow)
    (eid,) = _orphans(client, store, count=1, rows=60)
    # The registry's copy disappears (a delete that raced the start, a manual cleanup).
    shutil.rmtree(svc._record.path)  # noqa: SLF001 - the revision folder on disk
    executions = Executions.open(store)  # get_execution would need the registry's copy
    executions.resume(eid, {"parallel_count": 4})
    header = executions.wait(eid, timeout=60)
    assert header["state"] == "Complete", header.get("error")
    assert (record_counts(store, eid, 60) == 1).all()
