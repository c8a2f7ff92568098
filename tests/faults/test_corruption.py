"""Corruption fuzz: no damaged file ever changes what a reader sees without a word.

A finished store (two executions, one with failed rows and artifacts; two services,
one redeployed) is damaged one file at a time — a random bit flipped, the file
truncated, garbage appended, or a header/JSON field edited (the stored checksum left
as it was: an edit that also forges the checksum is not damage) — over every file
kind. After each damage every read (``list_executions``, ``list_services``,
``results()``, ``to_frame()``, ``execution(i)``, ``artifact``) must return exactly
what it returned before, or raise ``StoreCorruptedError`` naming the damaged file,
or (listings) report that file as damaged while listing everything else. Zero
silent differences; the outcomes are counted and printed. Seeded, ~20 s.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from localbatch import (
    DeployClient,
    LocalBatchWarning,
    ServiceNotFoundError,
    StoreCorruptedError,
)

from . import integrityfns

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

SEED = 20261130
ROWS = 1200  # two result parts, two input parts
ART_ROWS = 120  # rows 0 and 100 write an artifact
BUDGET_S = 18.0
DAMAGES = ("flip", "truncate", "append", "edit")


def _build(root: Path) -> list[str]:
    """Three executions: 1200 rows (failed rows, two parts), 120 rows with artifacts,
    and 3 rows of a service redeployed since."""
    client = DeployClient(str(root), engine="inline")
    plain = (client.service("fz").version("1").code_fn(integrityfns.score)
             .inputs(a=float, b=float).outputs(y=float).deploy())
    # Artifacts cost a working folder per row: fewer rows.
    art = (client.service("art").version("1").code_fn(integrityfns.score)
           .inputs(a=float, b=float).outputs(y=float).artifacts(["out.txt"]).deploy())
    other = (client.service("other").version("1").code_str("y = a + 1").inputs(a=float)
             .outputs(y=float).deploy())
    client.redeploy_service("other", version="1", code_str="y = a + 2")
    ids = []
    for svc, frame in ((plain, _frame(ROWS)), (art, _frame(ART_ROWS)),
                       (other, pd.DataFrame({"a": [1.0, 2.0, 3.0]}))):
        batch = svc.batch(frame, parallel_count=2).start()
        assert batch.wait(60).state == "Complete"
        ids.append(batch.execution_id)
    client.close()
    return ids


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"a": [float(i) for i in range(rows)], "b": 2.0})


def _reads(root: Path, ids: list[str]) -> dict[str, Any]:
    """Every read a user makes; each value, or the exception it raised."""
    out: dict[str, Any] = {}

    def attempt(key: str, fn: Any) -> None:
        try:
            out[key] = fn()
        except Exception as exc:  # classified by the caller
            out[key] = exc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = DeployClient(str(root), engine="inline")
        attempt("list_executions", client.list_executions)
        attempt("list_services", client.list_services)
        out["warnings"] = [str(w.message) for w in caught
                           if issubclass(w.category, LocalBatchWarning)]
    for eid in ids:
        try:
            batch = client.get_execution(eid)
        except Exception as exc:
            out[f"{eid}:open"] = exc
            continue
        attempt(f"{eid}:results", lambda b=batch: _summary(b.results()))
        attempt(f"{eid}:to_frame", lambda b=batch: b.results().to_frame())
        for i in (0, 7, 100, ROWS - 1):
            attempt(f"{eid}:execution({i})", lambda b=batch, i=i: _row(b.results(), i))
        for i in (0, 100):
            attempt(f"{eid}:artifact({i})", lambda b=batch, i=i: b.artifact(i, "out.txt"))
    client.close()
    return out


def _summary(resp: Any) -> tuple[Any, ...]:
    return (str(resp.state), resp.completed_item_count, resp.failed_item_count,
            resp.total_item_count, resp.error)


def _row(resp: Any, i: int) -> tuple[Any, ...]:
    r = resp.execution(i)
    return (r.outputs, r.error, r.console_output, r.artifacts)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
        if not (isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame)):
            return False
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=True)
        except AssertionError:
            return False
        return True
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return a == b


def _classify(key: str, got: Any, want: Any, damaged: Path, out: dict[str, Any]) -> str:
    """"same", "raised" or "reported"; anything else fails the test."""
    if _same(got, want):
        return "same"
    if isinstance(got, StoreCorruptedError):
        assert str(damaged) in str(got), f"{key}: {got} does not name {damaged}"
        return "raised"
    if key == "list_executions" and isinstance(got, list):
        flagged = [h for h in got if h.get("damaged")]
        assert len(flagged) == 1 and str(damaged) in flagged[0]["error"], (key, got)
        rest = [h for h in got if not h.get("damaged")]
        assert rest == [h for h in want if h["execution_id"] != flagged[0]["execution_id"]]
        return "reported"
    if key == "list_services" and isinstance(got, list):
        assert any(str(damaged) in w for w in out["warnings"]), (key, out["warnings"])
        assert all(m in want for m in got) and len(got) == len(want) - 1, (got, want)
        return "reported"
    raise AssertionError(f"SILENT DIFFERENCE in {key} after damaging {damaged}: "
                         f"{got!r} != {want!r}")


# -- damage ---------------------------------------------------------------------------------


def _damage(path: Path, kind: str, rng: random.Random) -> str:
    data = path.read_bytes()
    if kind == "flip" and data:
        k = rng.randrange(len(data))
        bit = 1 << rng.randrange(8)
        path.write_bytes(data[:k] + bytes([data[k] ^ bit]) + data[k + 1:])
        return f"bit {bit} of byte {k}"
    if kind == "truncate" and data:
        size = rng.randrange(len(data))
        path.write_bytes(data[:size])
        return f"truncated to {size}"
    if kind == "edit" and data:
        return _edit(path, data, rng)
    path.write_bytes(data + rng.randbytes(rng.randint(1, 64)))
    return "appended"


def _edit(path: Path, data: bytes, rng: random.Random) -> str:
    """A field changed by hand: a JSON value (checksum kept), or a digit of a part header."""
    try:
        obj = json.loads(data)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and obj:
        key = rng.choice(sorted(obj))
        value = obj[key]
        choice = rng.randrange(3)
        if choice == 0:
            obj = [1, 2]
        elif key == "state" or choice == 1:
            obj[key] = "Bogus" if isinstance(value, str) else [1, 2]
        else:
            obj[key] = (value + 1 if isinstance(value, int) and not isinstance(value, bool)
                        else f"{value}x" if isinstance(value, str) else None)
        path.write_text(json.dumps(obj, indent=1))
        return f"edited {key}"
    head = data[:4096]
    digits = [m.start() for m in re.finditer(rb"\d", head[16:])]
    if data[:3] != b"LBP" or not digits:
        return _damage(path, "flip", rng)
    k = 16 + rng.choice(digits)
    new = rng.choice([d for d in b"0123456789" if d != data[k]])
    path.write_bytes(data[:k] + bytes([new]) + data[k + 1:])
    return f"header digit at {k}"


def _kind(path: Path) -> str:
    name = path.name
    if name.endswith(".lbp"):
        return f"{path.parent.name} part"
    if name.startswith("part-") or name.isdigit():
        return name
    return name if not name.endswith(".pkl") else "blob"


# -- the fuzz -------------------------------------------------------------------------------


def test_corruption_fuzz_has_no_silent_difference(tmp_path):
    pristine = tmp_path / "pristine"
    ids = _build(pristine)
    want = _reads(pristine, ids)
    assert not any(isinstance(v, StoreCorruptedError) for v in want.values()), want
    # An execution's revision/ holds hard links to the registry's files (the pin that
    # outlives delete_service): the same inodes, fuzzed once under their registry name.
    files = sorted(p for p in pristine.rglob("*")
                   if p.is_file() and "revision" not in p.relative_to(pristine).parts[2:3])
    kinds = sorted({_kind(p) for p in files})
    assert {"results part", "inputs part", "execution.json", "manifest.json", "current",
            "out.txt", ".localbatch-checksums", "blob"} <= set(kinds), kinds
    rng = random.Random(SEED)
    # Every (file kind, damage) pair once, then random ones until the budget is spent.
    plan = [(k, d) for k in kinds for d in DAMAGES]
    outcomes: Counter[str] = Counter()
    trials = 0
    deadline = time.monotonic() + BUDGET_S
    while plan or time.monotonic() < deadline:
        kind, damage = plan.pop(0) if plan else (rng.choice(kinds), rng.choice(DAMAGES))
        path = rng.choice([p for p in files if _kind(p) == kind])
        original = path.read_bytes()
        how = _damage(path, damage, rng)
        try:
            got = _reads(pristine, ids)
            for key, value in want.items():
                if key == "warnings":
                    continue
                # When the execution cannot be opened, each of its reads gets that error.
                seen = got.get(key, got.get(f"{key.split(':')[0]}:open"))
                outcomes[_classify(key, seen, value, path, got)] += 1
        except AssertionError as exc:
            raise AssertionError(f"{path.relative_to(pristine)} ({damage}: {how}): {exc}")
        finally:
            path.write_bytes(original)
        trials += 1
    print(f"\ncorruption fuzz: {trials} damaged files over {len(kinds)} kinds; reads: "
          f"{dict(outcomes)}; silent differences: 0")
    assert outcomes["raised"] + outcomes["reported"] > 0


# -- single classes, deterministic ------------------------------------------------------------


@pytest.fixture
def built(tmp_path):
    root = tmp_path / "store"
    return root, _build(root)


def _header_path(root: Path, eid: str) -> Path:
    return root / "executions" / eid / "execution.json"


@pytest.mark.parametrize("content", ["[1, 2]", "garbage{", "", '{"state": "Bogus"}'])
def test_a_damaged_execution_json_is_listed_as_damaged_and_hides_nothing_else(built, content):
    from localbatch._cli import main

    root, (eid, art, other) = built
    _header_path(root, eid).write_text(content)
    client = DeployClient(str(root))
    listing = client.list_executions()
    damaged = [h for h in listing if h.get("damaged")]
    assert [h["execution_id"] for h in damaged] == [eid]
    assert damaged[0]["state"] == "Failed" and "execution.json" in damaged[0]["error"]
    assert [h["execution_id"] for h in listing if not h.get("damaged")] == [art, other]
    with pytest.raises(StoreCorruptedError, match="execution.json"):
        client.get_execution(eid)
    assert client.get_execution(other).results().state == "Complete"
    # Deleting a service, the CLI's status and prune keep working.
    assert main(["--store", str(root), "status"]) == 0
    assert main(["--store", str(root), "status", other]) == 0
    assert main(["--store", str(root), "prune", "--older-than", "1w"]) == 0
    assert client.delete_service("fz", version="1")
    frame = client.get_execution(other).results().to_frame()
    assert frame["y"].tolist() == [2.0, 3.0, 4.0]  # run by its first revision


def test_an_unknown_state_is_damage_not_a_hang(built):
    root, (eid, _, _) = built
    batch = DeployClient(str(root)).get_execution(eid)  # opened before the damage
    path = _header_path(root, eid)
    header = json.loads(path.read_text())
    header["state"] = "Sleeping"
    from localbatch._store.fsutil import write_json

    write_json(path, header)  # checksum forged: the parse itself must refuse the state
    client = DeployClient(str(root))
    with pytest.raises(StoreCorruptedError, match="unknown state 'Sleeping'"):
        client.get_execution(eid)
    with pytest.raises(StoreCorruptedError, match="execution.json"):
        batch.wait(timeout=30)  # raises at once: no poll loop spins on a state it cannot know
    from localbatch._store.executions import ExecutionStore

    with pytest.raises(StoreCorruptedError, match="execution.json"):
        ExecutionStore(root).read_header(eid)


def test_a_truncated_manifest_hides_only_its_version(built):
    root, _ = built
    client = DeployClient(str(root))
    manifest = client.get_service("fz")._record.path / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])
    with pytest.warns(LocalBatchWarning, match="manifest.json"):
        names = [m["name"] for m in client.list_services()]
    assert names == ["art", "other"]
    with pytest.raises(StoreCorruptedError, match="manifest.json"):
        client.get_service("fz", version="1")
    assert client.get_service("other").version == "1"
    assert client.delete_service("fz", version="1")  # a damaged version can be deleted
    assert [m["name"] for m in client.list_services()] == ["art", "other"]  # no warning
    with pytest.raises(ServiceNotFoundError):
        client.delete_service("fz", version="1")


def test_editing_a_part_row_range_is_detected(built):
    root, (eid, _, _) = built
    part = root / "executions" / eid / "results" / "part-000000.lbp"
    data = part.read_bytes()
    # The row index is stored as a range [start, step]: move it by one row.
    edited = re.sub(rb'"range",(\d+),0,1', lambda m: m.group(0).replace(b",0,1", b",1,1"),
                    data, count=1)
    assert edited != data and len(edited) == len(data)
    part.write_bytes(edited)
    batch = DeployClient(str(root)).get_execution(eid)
    with pytest.raises(StoreCorruptedError, match="part-000000.lbp.*checksum"):
        batch.results().to_frame()


@pytest.mark.parametrize("start", [b"-1", b"999999", b"1"])
def test_a_resealed_part_whose_row_range_leaves_the_batch_is_damage(built, start):
    """Edited with its checksum fixed: rows outside the batch are found by the row map
    (which reads a range without building its index); a range moved inside the batch
    is read as what it now says (a checksum is not a signature): row 0 unrecorded."""
    import struct
    import zlib

    root, (eid, _, _) = built
    part = root / "executions" / eid / "results" / "part-000000.lbp"
    data = part.read_bytes()
    edited = re.sub(rb'"range",(\d+),0,1', lambda m: m.group(0).replace(b",0,1",
                                                                       b"," + start + b",1"),
                    data, count=1)
    head = struct.unpack_from("<I", data, 4)[0] + len(edited) - len(data)
    body = edited[16:]
    size = struct.pack("<I", head)
    crc = zlib.crc32(body, zlib.crc32(size))
    part.write_bytes(edited[:4] + size + struct.pack("<I", crc) + edited[12:16] + body)
    batch = DeployClient(str(root)).get_execution(eid)
    if start == b"1":
        frame = batch.results().to_frame()
        assert len(frame) == batch.results().total_item_count - 1 and frame.index[0] == 1
        return
    with pytest.raises(StoreCorruptedError, match="part-000000.lbp.*outside"):
        batch.results().to_frame()


def test_resume_reruns_the_rows_of_a_damaged_part_exactly_once(built, fault_log):
    root, (eid, _, _) = built
    shutil.rmtree(fault_log)
    fault_log.mkdir()
    results = root / "executions" / eid / "results"
    part = results / "part-000001.lbp"
    part.write_bytes(part.read_bytes()[:-50])
    client = DeployClient(str(root), engine="inline")
    batch = client.get_execution(eid)
    with pytest.raises(StoreCorruptedError, match="part-000001.lbp"):
        batch.results().to_frame()
    done = batch.resume().wait(60)
    assert done.state == "Complete" and done.completed_item_count == ROWS
    frame = batch.results().to_frame()
    assert len(frame) == ROWS and frame["y"][1000] == 2000.5
    reran = sorted(int(n.split("-")[0]) for n in os.listdir(fault_log))
    assert reran == list(range(1000, ROWS)), "each row of the damaged part runs once"
    assert (results / "part-000001.lbp.corrupt").exists()
    assert batch.resume().wait(60).state == "Complete"  # nothing more to run
    assert len(os.listdir(fault_log)) == ROWS - 1000


def test_half_written_artifacts_never_survive_resume(built):
    root, (_, eid, _) = built
    art = root / "executions" / eid / "artifacts"
    (art / ".tmp-5-deadbeef").mkdir()
    (art / ".tmp-5-deadbeef" / "out.txt").write_text("half")
    (art / ".old-6-deadbeef").mkdir()
    batch = DeployClient(str(root), engine="inline").get_execution(eid)
    assert batch.resume().wait(60).state == "Complete"
    assert sorted(n for n in os.listdir(art) if n.startswith(".")) == []


def test_format_1_parts_are_still_read(built):
    """Stores written before the checksum keep working (read unverified)."""
    import struct

    root, (eid, _, _) = built
    before = DeployClient(str(root)).get_execution(eid).results().to_frame()
    for part in (root / "executions" / eid).glob("*/part-*.lbp"):
        data = part.read_bytes()
        (size,) = struct.unpack_from("<I", data, 4)
        head = data[16:16 + size]
        pad = b" " * ((-(len(head) + 8)) % 8)  # format 1 aligned the body after 8 bytes
        head += pad
        body = data[16 + size:]
        part.write_bytes(b"LBP1" + struct.pack("<I", len(head)) + head + body)
    after = DeployClient(str(root)).get_execution(eid).results().to_frame()
    pd.testing.assert_frame_equal(before, after)


def test_json_of_older_stores_is_read_and_a_missing_checksum_is_damage_from_format_2(
        built):
    root, (eid, _, _) = built
    path = _header_path(root, eid)
    header = json.loads(path.read_text())
    del header["checksum"]
    path.write_text(json.dumps(header))  # format 2 without its checksum: damage
    with pytest.raises(StoreCorruptedError, match="checksum is missing"):
        DeployClient(str(root)).get_execution(eid)
    header["format_version"] = 1  # as a store written before checksums
    path.write_text(json.dumps(header))
    assert DeployClient(str(root)).get_execution(eid).results().state == "Complete"
