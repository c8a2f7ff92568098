"""Per-row artifacts: list, read, download (with the SDK's and the seed's spellings)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from localbatch import ArtifactNotFoundError, RowNotRecordedError


def two_files(a, b):
    """Row a writes report.txt always and data.bin when b > 0."""
    with open("report.txt", "w") as fh:
        fh.write(f"row {a}")
    if b > 0:
        with open("data.bin", "wb") as fh:
            fh.write(bytes([a % 256]) * b)
    with open("undeclared.txt", "w") as fh:
        fh.write("not collected")
    return a


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One finished batch shared by the read-only tests of this module."""
    from localbatch import DeployClient

    client = DeployClient(str(tmp_path_factory.mktemp("artifacts") / "store"))
    svc = (client.service("files").version("1").code_fn(two_files)
           .inputs(a=int, b=int).outputs(answer=int)
           .artifacts(["report.txt", "data.bin"]).deploy())
    b = svc.batch({"a": [0, 1, 2], "b": [3, 0, 5]}, parallel_count=2).start()
    assert b.wait(30).state == "Complete"
    client.close()
    return b


def test_list_and_read_artifacts(batch):
    assert batch.list_artifacts(0) == ["data.bin", "report.txt"]
    assert batch.list_artifacts(1) == ["report.txt"]  # declared but not written
    assert batch.artifact(0, "report.txt") == b"row 0"
    assert batch.artifact(2, fileName="data.bin") == b"\x02" * 5
    with pytest.raises(ArtifactNotFoundError):
        batch.artifact(1, "data.bin")
    with pytest.raises(LookupError):
        batch.artifact(0, "undeclared.txt")
    for bad in ("../execution.json", "a/b", "", ".."):
        with pytest.raises(LookupError):
            batch.artifact(0, bad)
    for missing in (3, -1):
        with pytest.raises(RowNotRecordedError):
            batch.list_artifacts(missing)


def test_row_responses_carry_base64_artifacts(batch):
    row = batch.results().execution(0)
    assert set(row.artifacts) == {"report.txt", "data.bin"}
    assert base64.b64decode(row.artifacts["report.txt"]) == b"row 0"
    assert row.artifact("report.txt") == b"row 0"
    assert row.artifact("report.txt", encoding="utf-8") == "row 0"
    assert batch.results().execution(1).artifacts["data.bin"] is None


def test_download_one_file_returns_the_paths(batch, tmp_path):
    paths = batch.download(2, "report.txt", tmp_path)
    assert paths == [str(tmp_path / "report.txt")]
    assert Path(paths[0]).read_bytes() == b"row 2"
    # The seed document's spellings.
    paths = batch.download(0, fileName="data.bin", dest=str(tmp_path))
    assert paths == [str(tmp_path / "data.bin")]
    assert Path(paths[0]).read_bytes() == b"\x00" * 3


def test_download_without_a_name_writes_all_of_the_rows_artifacts(batch, tmp_path):
    paths = batch.download(0, destination=tmp_path)
    assert sorted(paths) == [str(tmp_path / "data.bin"), str(tmp_path / "report.txt")]
    other = tmp_path / "other"
    other.mkdir()
    assert batch.download(1, destination=other) == [str(other / "report.txt")]
    assert (other / "report.txt").read_bytes() == b"row 1"


def test_download_defaults_to_the_current_directory_at_call_time(batch, tmp_path, monkeypatch):
    here = tmp_path / "later"
    here.mkdir()
    monkeypatch.chdir(here)  # after localbatch was imported
    paths = batch.download(1, "report.txt")
    assert paths == [str(here / "report.txt")]
    assert (here / "report.txt").read_bytes() == b"row 1"


def test_download_overwrites(batch, tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old and much longer content")
    batch.download(0, "report.txt", tmp_path)
    assert target.read_bytes() == b"row 0"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"], "a temp file was left"


def test_download_never_writes_through_a_symlink(batch, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "report.txt").symlink_to(victim)
    batch.download(2, "report.txt", dest)
    assert victim.read_text() == "precious"
    assert not (dest / "report.txt").is_symlink()
    assert (dest / "report.txt").read_bytes() == b"row 2"


def test_download_to_a_missing_folder_is_a_value_error(batch, tmp_path):
    with pytest.raises(ValueError, match="No such file or directory"):
        batch.download(0, "report.txt", tmp_path / "nope")
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError):
        batch.download(0, "report.txt", afile)
    with pytest.raises(ArtifactNotFoundError):
        batch.download(1, "data.bin", tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_download_all(batch, tmp_path):
    paths = batch.download_all(tmp_path)
    expected = {tmp_path / "0" / "data.bin", tmp_path / "0" / "report.txt",
                tmp_path / "1" / "report.txt", tmp_path / "2" / "data.bin",
                tmp_path / "2" / "report.txt"}
    assert {Path(p) for p in paths} == expected
    assert (tmp_path / "2" / "report.txt").read_bytes() == b"row 2"
    assert batch.download_all(tmp_path) != []  # again: overwrites
    with pytest.raises(ValueError):
        batch.download_all(tmp_path / "missing")


def test_download_all_never_writes_through_a_symlinked_row_folder(batch, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "0").symlink_to(elsewhere, target_is_directory=True)
    batch.download_all(dest)
    assert list(elsewhere.iterdir()) == []
    assert not (dest / "0").is_symlink()
    assert (dest / "0" / "report.txt").read_bytes() == b"row 0"


def test_artifacts_of_a_canceled_or_unstarted_batch(client):
    svc = (client.service("files").version("1").code_fn(two_files)
           .inputs(a=int, b=int).outputs(answer=int).artifacts(["report.txt"]).deploy())
    b = svc.batch({"a": [0], "b": [0]}, parallel_count=2)
    with pytest.raises(ValueError):  # BatchNotStartedError, as the SDK's ValueError
        b.list_artifacts(0)
