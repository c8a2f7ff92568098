"""Errors say the real cause: a full disk (or a denied write) during a batch ends it
``Failed`` with that cause, in ``BatchResponse.error`` and in the CLI, never as
"owner pid N died" -- even when ``execution.json`` cannot be rewritten -- and
nothing half-written survives ``resume()``.

Injected faults (``LOCALBATCH_FAULT``) at every commit point, then a real full file
system: a 2 MiB tmpfs the test mounts (skipped where mounting is not permitted).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from localbatch import StoreCorruptedError
from localbatch._cli import main as cli_main
from localbatch._store.faults import POINTS
from localbatch._store.fsutil import read_json, write_json

from . import faultfns, integrityfns, ownership_fns
from .helpers import deploy, kill_group, record_counts, start_owner, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
ROWS = 60
CAUSES = {"enospc": os.strerror(errno.ENOSPC), "eacces": os.strerror(errno.EACCES)}


def _leftovers(store: Path, eid: str) -> list[str]:
    """Temporary files or folders anywhere in the execution (half-written things)."""
    folder = store / "executions" / eid
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.name.startswith((".tmp-", ".old-"))]


def _cli_status(store: Path, eid: str, capsys) -> str:
    capsys.readouterr()
    assert cli_main(["status", eid, "--store", str(store)]) == 0
    return capsys.readouterr().out


def _check_recorded(batch, store: Path, eid: str, rows: int) -> None:
    counts = record_counts(store, eid, rows)
    assert (counts == 1).all(), f"rows recorded twice or never: {np.flatnonzero(counts != 1)}"
    frame = batch.results().to_frame()
    assert list(frame["y"]) == [i * 2.0 for i in range(rows)]


@pytest.mark.parametrize("action", ["enospc", "eacces"])
@pytest.mark.parametrize("point", POINTS)
def test_store_error_at_each_commit_point_says_its_cause(client, store, fault_log, capsys,
                                                         point, action):
    svc = deploy(client, "art", faultfns.with_artifact, artifacts=["row.txt"])
    owner, eid = start_owner(store, "art", rows=ROWS, b=0.01,
                             env={"LOCALBATCH_FAULT": f"{point}:1:{action}"})
    batch = svc.get_batch(eid)
    try:
        assert wait_until(lambda: batch.results().state == "Failed", 60)
        resp = batch.results()
        # Read while the owner process still lives: its failure, not a death.
        assert resp.error.startswith("StoreError:") and CAUSES[action] in resp.error, resp.error
        assert resp.resumable and "owner pid" not in resp.error
        status = _cli_status(store, eid, capsys)
        assert "Failed" in status and CAUSES[action] in status, status
    finally:
        kill_group(owner)
    log = (store / "executions" / eid / "execution.log").read_text()
    assert "out of memory" not in log and CAUSES[action] in log
    assert not _leftovers(store, eid)
    done = batch.resume().wait(timeout=60)
    assert done.state == "Complete", done.error
    assert not _leftovers(store, eid)
    _check_recorded(batch, store, eid, ROWS)
    for index in range(0, ROWS, 7):
        assert batch.artifact(index, "row.txt") == f"row {index}".encode()


# -- a real full file system -----------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs under tmp_path (the store goes inside)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"mounting a tmpfs is not permitted here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def _fill(folder: Path) -> Path:
    """Take every free byte of the file system (the disk is now full)."""
    filler = folder / "filler"
    chunk = b"\0" * (16 << 10)
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with open(filler, "ab", buffering=0) as fh:  # and the last partial chunk's bytes
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def _status_in_another_process(store: Path, eid: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "localbatch._cli", "status", eid, "--json",
                          "--store", str(store)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_full_disk_with_the_header_unwritable_reports_enospc(small_fs, fault_log, capsys):
    from localbatch import DeployClient

    store = small_fs / "store"
    with DeployClient(str(store)) as client:
        svc = deploy(client, "art", faultfns.with_artifact, artifacts=["row.txt"])
        rows = 200
        # ~5 s of rows: the disk fills long before the last one (on a loaded machine too).
        batch = svc.batch(pd.DataFrame({"a": [float(i) for i in range(rows)], "b": 0.05}),
                          parallel_count=2).start()
        eid = batch.execution_id
        assert wait_until(lambda: batch.results().completed_item_count > 0, 60)
        filler = _fill(small_fs)
        resp = batch.wait(timeout=60)
        cause = os.strerror(errno.ENOSPC)
        # The owner's own process: the cause, from memory or from its note.
        assert resp.state == "Failed" and cause in resp.error and resp.resumable, resp.error
        raw = json.loads((store / "executions" / eid / "execution.json").read_text())
        assert raw["state"] == "InProgress", "the disk was not full at the final write"
        # Another process (the CLI): the owner's note in owner.lock, not "owner died".
        other = _status_in_another_process(store, eid)
        assert other["state"] == "Failed" and cause in other["error"], other
        assert not other.get("interrupted") and other["completed"] == resp.completed_item_count
        assert cause in _cli_status(store, eid, capsys)
        assert "out of memory" not in (store / "executions" / eid / "execution.log").read_text()
        assert not _leftovers(store, eid)
        filler.unlink()
        done = batch.resume(parallel_count=4).wait(timeout=60)
        assert done.state == "Complete" and not done.error
        assert not _leftovers(store, eid)
        _check_recorded(batch, store, eid, rows)


def test_full_disk_mid_artifact_leaves_nothing_half_written(small_fs, fault_log):
    from localbatch import DeployClient

    store = small_fs / "store"
    with DeployClient(str(store)) as client:
        svc = (client.service("big").version("1").code_fn(ownership_fns.big_artifact)
               .inputs(a=float, b=float).outputs(y=float).artifacts(["blob.bin"]).deploy())
        rows, kib = 40, 192
        batch = svc.batch(pd.DataFrame({"a": [float(i) for i in range(rows)], "b": kib}),
                          parallel_count=2).start()
        eid = batch.execution_id
        resp = batch.wait(timeout=60)
        assert resp.state == "Failed" and os.strerror(errno.ENOSPC) in resp.error, resp.error
        assert resp.resumable and "owner pid" not in resp.error
        assert not _leftovers(store, eid)
        subprocess.run(["mount", "-o", "remount,size=32m", str(small_fs)], check=True)
        done = batch.resume().wait(timeout=60)
        assert done.state == "Complete", done.error
        assert not _leftovers(store, eid)
        assert (record_counts(store, eid, rows) == 1).all()
        for index in range(rows):
            data = batch.artifact(index, "blob.bin")
            assert data == bytes([index % 251]) * (kib << 10), index


@pytest.mark.parametrize("source", ["frame", "csv"])
def test_full_disk_while_spooling_the_inputs_fails_start_and_leaves_nothing(small_fs, tmp_path,
                                                                            source):
    """The spool is written behind two threads: a write that fails there still fails
    start() with the cause, and no staging, temp file or execution is left."""
    from localbatch import DeployClient, StoreError
    from localbatch._store.spool import SPOOL_ROWS

    store = small_fs / "store"
    rows = 3 * SPOOL_ROWS  # three parts of 1 MiB each: the 2 MiB disk fills
    frame = pd.DataFrame({"a": np.arange(rows, dtype=float), "b": np.arange(rows) / 7})
    given: object = frame
    if source == "csv":
        given = str(tmp_path / "in.csv")  # outside the small disk
        frame.to_csv(given, index=False)
    with DeployClient(str(store)) as client:
        svc = deploy(client, "spool", integrityfns.score)
        with pytest.raises(StoreError, match=os.strerror(errno.ENOSPC)):
            svc.batch(given).start()
        executions = store / "executions"
        left = sorted(p.name for p in executions.iterdir() if p.name != ".staging")
        assert left == [], left
        staging = executions / ".staging"
        assert not staging.exists() or os.listdir(staging) == []
        # The space is free again: the same batch runs.
        done = svc.batch(frame.iloc[:1000]).start().wait(timeout=60)
        assert done.state == "Complete" and done.completed_item_count == 1000


# -- an unknown state never hangs a wait -------------------------------------------------


def test_unknown_state_raises_instead_of_hanging(client, store):
    svc = deploy(client, "fast", faultfns.slow)
    batch = svc.batch({"a": [1.0, 2.0], "b": [0.0, 0.0]}, engine="inline").start()
    assert batch.wait(timeout=30).state == "Complete"
    path = store / "executions" / batch.execution_id / "execution.json"
    for bad in ("Exploded", None, 7):
        header = read_json(path)
        header["state"] = bad
        write_json(path, header)  # a valid checksum: the state itself must be refused
        got: list[BaseException | None] = []

        def wait(got=got) -> None:
            try:
                batch.wait()
                got.append(None)
            except BaseException as exc:  # noqa: BLE001 - inspected below
                got.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(10)
        assert got, "wait() hung on an unknown state"
        assert isinstance(got[0], StoreCorruptedError) and str(path) in str(got[0])
        with pytest.raises(StoreCorruptedError, match="state"):
            batch.results()
    client.list_executions()  # one damaged header never breaks a listing
