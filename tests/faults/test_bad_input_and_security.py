"""Bad input fails fast (nothing runs), per-row caps, and the store's trust boundary."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from localbatch import (
    ArtifactNotFoundError,
    ExecutionNotFoundError,
    InputFileError,
    LocalBatchWarning,
    SchemaError,
)

from .helpers import deploy, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]


def add(a, b):
    return a * 2.0 + b


def chatty(a, b):
    print("x" * 5000)
    with open("big.bin", "wb") as fh:
        fh.write(b"y" * 5000)
    return "z" * 5000


def _no_executions(store):
    folder = store / "executions"
    return not folder.exists() or not [p for p in folder.iterdir()
                                       if not p.name.startswith(".")]


def test_bad_csv_line_fails_start_and_creates_nothing(client, store, tmp_path):
    svc = deploy(client, "add", add)
    path = tmp_path / "rows.csv"
    path.write_text("a,b,extra\n1,2,x\n3,4,y\n5,oops,z\n")
    with pytest.warns(LocalBatchWarning, match="extra"):
        batch = svc.batch(str(path), parallel_count=2)
    with pytest.raises(InputFileError, match=r"line 4: column 'b' value 'oops'"):
        batch.start()
    assert batch.execution_id is None and _no_executions(store)
    staging = store / "executions" / ".staging"
    assert not staging.exists() or not list(staging.iterdir())


def test_missing_csv_columns_fail_in_batch(client, tmp_path):
    svc = deploy(client, "add", add)
    path = tmp_path / "rows.tsv"
    path.write_text("A\tc\n1\t2\n")
    with pytest.raises(SchemaError, match=r"'a' \(did you mean 'A'\?\), 'b'"):
        svc.batch(str(path))


def test_csv_text_columns_keep_na_and_leading_zeros(client, tmp_path):
    def echo(code, n):
        return f"{code}|{n}"

    svc = (client.service("echo").version("1").code_fn(echo).inputs(code=str, n=int)
           .outputs(out=str).deploy())
    path = tmp_path / "codes.csv"
    path.write_text("code,n\nNA,1\nNone,2\n007,\n")
    resp = svc.batch(str(path), parallel_count=1).start().wait(timeout=30)
    assert resp.to_frame()["out"].tolist() == ["NA|1", "None|2", "007|None"]


@pytest.mark.parametrize("records, error, match", [
    (pd.DataFrame({"a": [1.0]}), SchemaError, "missing input column"),
    (pd.DataFrame([[1.0, 2.0, 3.0]], columns=["a", "b", "b"]), SchemaError, "duplicate"),
    (pd.DataFrame({"a": [1.0, "x"], "b": [1.0, 2.0]}), SchemaError, r"row 1: .*'x'"),
    (pd.DataFrame({"a": [], "b": []}), SchemaError, "no records"),
    ({"a": [1.0, 2.0], "b": [1.0]}, SchemaError, "same length"),
    (pd.Series([1.0]), TypeError, "DataFrame"),
    (None, TypeError, "DataFrame"),
])
def test_bad_records_raise_in_batch(client, store, records, error, match):
    svc = deploy(client, "add", add)
    with pytest.raises(error, match=match):
        svc.batch(records).start()
    assert _no_executions(store)


def test_per_row_caps_truncate_with_a_marker(client):
    svc = (client.service("chatty").version("1").code_fn(chatty).inputs(a=float, b=float)
           .outputs(text=str).artifacts(["big.bin"]).deploy())
    batch = svc.batch({"a": [1.0], "b": [2.0]}, console_limit=100, artifact_limit=100,
                      output_limit=100).start()
    row = batch.wait(timeout=30).execution(0)
    assert row.console_output.startswith("x" * 100) and "console output truncated" in \
        row.console_output
    assert row.outputs["text"].startswith("z" * 100) and "output truncated" in \
        row.outputs["text"]
    data = batch.artifact(0, "big.bin")
    assert data.startswith(b"y" * 100) and b"artifact truncated" in data and len(data) < 200


def test_artifact_names_cannot_escape_and_symlinks_are_not_followed(client, store, tmp_path):
    def write(a, b):
        with open("out.txt", "w") as fh:
            fh.write("ok")
        return a

    svc = (client.service("w").version("1").code_fn(write).inputs(a=float, b=float)
           .outputs(y=float).artifacts(["out.txt"]).deploy())
    batch = svc.batch({"a": [1.0], "b": [1.0]}).start()
    batch.wait(timeout=30)
    for name in ("../execution.json", "/etc/passwd", "..", "a/b", ""):
        with pytest.raises(ArtifactNotFoundError):
            batch.artifact(0, name)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    folder = store / "executions" / batch.execution_id / "artifacts" / "0"
    os.symlink(secret, folder / "link.txt")
    assert batch.list_artifacts(0) == ["out.txt"]
    with pytest.raises(ArtifactNotFoundError):
        batch.artifact(0, "link.txt")
    # download writes only inside the destination, replacing a planted symlink itself.
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(secret, dest / "out.txt")
    assert batch.download(0, "out.txt", str(dest)) == [str(dest / "out.txt")]
    assert secret.read_text() == "secret" and (dest / "out.txt").read_text() == "ok"
    assert not (dest / "out.txt").is_symlink()


def test_execution_ids_are_validated(client):
    svc = deploy(client, "add", add)
    for bad in ("../x", "a/b", "", "x" * 200):
        with pytest.raises(ExecutionNotFoundError):
            svc.get_batch(bad)


def test_store_is_private(client, store):
    deploy(client, "add", add)
    for sub in ("", "services", "executions"):
        path = store / sub
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_reading_results_never_unpickles(client, monkeypatch):
    import pickle

    import cloudpickle

    svc = deploy(client, "add", add)
    batch = svc.batch({"a": [1.0, 2.0], "b": [1.0, 1.0]}).start()
    assert wait_until(lambda: batch.results().state == "Complete", 30)

    def refuse(*args, **kwargs):
        raise AssertionError("reading results unpickled something")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(cloudpickle, "loads", refuse)
    resp = batch.results()
    assert resp.execution(1).outputs["y"] == 5.0
    assert resp.to_frame()["y"].tolist() == [3.0, 5.0]
    assert [s["name"] for s in client.list_services()] == ["add"]


def test_a_service_without_inputs_cannot_be_batched(client, store):
    def constant():
        return 1.0

    svc = client.service("const").version("1").code_fn(constant).outputs(y=float).deploy()
    with pytest.raises(SchemaError, match="void inputs"):
        svc.batch(pd.DataFrame({"a": [1.0]}))
    assert _no_executions(store)


def test_an_output_beyond_int64_is_a_row_error_not_a_hang(client):
    def huge(a, b):
        return 2**70 if a == 1.0 else int(a)

    svc = (client.service("huge").version("1").code_fn(huge).inputs(a=float, b=float)
           .outputs(n=int).deploy())
    resp = svc.batch({"a": [0.0, 1.0, 2.0], "b": [0.0] * 3}).start().wait(timeout=30)
    assert resp.state == "Complete" and resp.failed_item_count == 1
    assert resp.execution(1).error.startswith("OutputTypeError:")
    assert "64-bit" in resp.execution(1).error
    assert resp.execution(2).outputs["n"] == 2
