"""``verify`` finds every damaged file and only those; ``gc`` removes leftovers and
unused revisions, never what a live owner or an execution still uses."""

from __future__ import annotations

import mmap
import os
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from faults import integrityfns  # tests/ is on sys.path (conftest)

from localbatch import DeployClient, StoreCorruptedError
from localbatch._cli import main
from localbatch._store.fsutil import write_json
from localbatch._store.maintenance import gc_store

ROWS = 120  # rows 0 and 100 write an artifact


def _age(path: Path, seconds: float = 3600.0) -> None:
    """Make ``path`` and everything under it look untouched for ``seconds``."""
    when = time.time() - seconds
    for dirpath, _, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (when, when))
        os.utime(dirpath, (when, when))
    if path.is_file():
        os.utime(path, (when, when))


@pytest.fixture
def finished(tmp_path):
    root = tmp_path / "store"
    client = DeployClient(str(root), engine="inline")
    svc = (client.service("fz").version("1").code_fn(integrityfns.score)
           .inputs(a=float, b=float).outputs(y=float).artifacts(["out.txt"]).deploy())
    batch = svc.batch(pd.DataFrame({"a": [float(i) for i in range(ROWS)], "b": 2.0})).start()
    assert batch.wait(60).state == "Complete"
    yield root, client, batch.execution_id
    client.close()


def test_verify_says_intact_for_a_clean_store(finished, capsys):
    root, client, eid = finished
    assert client.verify() == []
    assert client.verify(eid) == []
    assert main(["--store", str(root), "verify"]) == 0
    assert "intact" in capsys.readouterr().out


def test_verify_lists_each_damaged_file_with_its_reason(finished, capsys):
    root, client, eid = finished
    folder = root / "executions" / eid
    part = folder / "results" / "part-000000.lbp"
    part.write_bytes(part.read_bytes() + b"garbage")
    artifact = folder / "artifacts" / "100" / "out.txt"
    artifact.write_bytes(b"ROW 100 artifact")
    blob = client.get_service("fz")._record.path / "code.pkl"
    blob.write_bytes(blob.read_bytes()[:-1])
    found = {f.path: f for f in client.verify()}
    assert set(found) == {str(part), str(artifact.parent), str(blob)}, found
    assert "checksum mismatch" in found[str(part)].problem
    assert "SHA-256" in found[str(blob)].problem
    assert all(f.damaged for f in found.values())
    assert {f.path for f in client.verify(eid)} == {str(part), str(artifact.parent)}
    assert main(["--store", str(root), "verify"]) == 1
    out = capsys.readouterr().out
    assert str(part) in out and str(blob) in out and "3 damaged file(s)" in out
    assert main(["--store", str(root), "verify", eid[:10]]) == 1


def test_verify_reports_a_header_that_disagrees_with_the_parts(finished):
    root, client, eid = finished
    path = root / "executions" / eid / "execution.json"
    import json

    header = json.loads(path.read_text())
    header["completed"] -= 1
    write_json(path, header)  # a well-formed header that lies
    [finding] = client.verify()
    assert finding.path == str(path) and "the parts hold 120" in finding.problem


def test_gc_removes_leftovers_and_unused_revisions_only(finished, capsys):
    root, client, eid = finished
    svc1 = client.get_service("fz")
    pinned_rev = svc1._record.path
    # Two redeploys: the middle revision is used by nothing, the first by the execution.
    client.redeploy_service("fz", version="1", code_fn=integrityfns.score)
    unused = client.get_service("fz")._record.path
    client.redeploy_service("fz", version="1", code_fn=integrityfns.score)
    current = client.get_service("fz")._record.path
    # A killed redeploy and a killed start() left staging folders; a killed commit a temp.
    dead_rev = root / "services" / ".staging" / f"20260101T000000-x-{uuid.uuid4().hex}"
    dead_rev.mkdir(parents=True)
    (dead_rev / "model-m.pkl").write_bytes(b"x" * 1000)
    dead_start = root / "executions" / ".staging" / uuid.uuid4().hex
    (dead_start / "inputs").mkdir(parents=True)
    temp = root / "executions" / eid / ".tmp-execution.json-0123456789ab"
    temp.write_bytes(b"{")
    live_start = root / "executions" / ".staging" / uuid.uuid4().hex
    live_start.mkdir()  # being written right now: untouched for less than the grace
    for path in (dead_rev, dead_start, temp, unused, pinned_rev, current):
        _age(path)
    expected = {str(p) for p in (dead_rev, dead_start, temp, unused)}

    in_store = {r.path for r in client.gc(dry_run=True) if "board" not in r.reason}
    assert in_store == expected
    assert all(Path(p).exists() for p in expected)  # a dry run removes nothing
    assert main(["--store", str(root), "gc", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(f"would remove {p}  (" in out for p in expected)
    assert {r.path for r in gc_store(root, boards=False)} == expected  # /dev/shm: below
    assert not any(Path(p).exists() for p in expected)
    assert pinned_rev.is_dir() and current.is_dir() and live_start.is_dir()
    # What stays still works: the execution reads, the service runs.
    frame = client.get_execution(eid).results().to_frame()
    assert len(frame) == ROWS
    assert client.get_service("fz").score(3.0, 2.0).outputs["y"] == 6.5
    assert gc_store(root, boards=False) == []
    assert [f for f in client.verify() if f.damaged] == []


def test_gc_keeps_all_revisions_while_an_execution_json_is_damaged(finished):
    root, client, eid = finished
    client.redeploy_service("fz", version="1", code_fn=integrityfns.score)
    _age(root / "services")
    (root / "executions" / eid / "execution.json").write_text("[1, 2]")
    assert gc_store(root, boards=False) == []  # the damaged header might pin any revision


@pytest.mark.skipif(not os.path.isdir("/dev/shm") or not os.path.exists("/proc/self/maps"),
                    reason="board folders live in /dev/shm, liveness is read from /proc")
def test_gc_removes_board_folders_of_dead_owners_only(finished):
    _, client, _ = finished
    tag = uuid.uuid4().hex[:8]
    dead = Path(f"/dev/shm/localbatch-boards-test{tag}dead")
    live = Path(f"/dev/shm/localbatch-boards-test{tag}live")
    empty = Path(f"/dev/shm/localbatch-boards-test{tag}empty")
    try:
        for folder in (dead, live, empty):
            folder.mkdir()
        (dead / "board-1").write_bytes(b"\0" * 4096)
        board = live / "board-1"
        board.write_bytes(b"\0" * 4096)
        with open(board, "r+b") as fh:
            mapped = mmap.mmap(fh.fileno(), 4096)  # a live owner maps its boards
        for folder in (dead, live, empty):
            _age(folder)
        removed = {r.path for r in client.gc() if "board" in r.reason}
        assert str(dead) in removed and not dead.exists()
        assert live.exists() and empty.exists()  # mapped, or maybe about to be used
        assert str(live) not in removed and str(empty) not in removed
        mapped.close()
    finally:
        import shutil

        for folder in (dead, live, empty):
            shutil.rmtree(folder, ignore_errors=True)


def test_verify_notes_files_others_may_read_without_calling_them_damaged(finished, capsys):
    root, client, eid = finished
    header = root / "executions" / eid / "execution.json"
    os.chmod(header, 0o644)  # as a store written before 0600 was the rule
    [note] = client.verify()
    assert not note.damaged and note.path.startswith(str(header)) and "go-rwx" in note.problem
    assert main(["--store", str(root), "verify"]) == 0
    assert "intact (1 note(s))" in capsys.readouterr().out


def test_a_part_damaged_after_it_was_written_is_found_by_every_check_that_reads_files(
        finished):
    """This process keeps the parts it wrote in memory (a to_frame() right after a batch
    reads none of them back): its reads keep giving the values it wrote, never wrong
    ones, while verify, a reader in another client and resume read the file."""
    root, client, eid = finished

    def from_another_client():
        other = DeployClient(str(root), engine="inline")
        try:
            return other.get_service("fz", version="1").get_batch(eid).results().to_frame()
        finally:
            other.close()

    before = from_another_client()
    batch = client.get_service("fz", version="1").get_batch(eid)
    part = root / "executions" / eid / "results" / "part-000000.lbp"
    data = bytearray(part.read_bytes())
    data[-3] ^= 0xFF
    part.write_bytes(bytes(data))
    # Never read back since this process wrote it: the values as written.
    pd.testing.assert_frame_equal(batch.results().to_frame(), before)
    assert [f.path for f in client.verify(eid)] == [str(part)]
    with pytest.raises(StoreCorruptedError, match="part-000000.lbp"):
        from_another_client()
    resumed = batch.resume().wait(60)  # the same process: it moves the damaged part aside
    assert resumed.state == "Complete"
    assert (part.parent / "part-000000.lbp.corrupt").exists()
    pd.testing.assert_frame_equal(resumed.to_frame(), before)
