"""Private by default, and nothing left behind.

Every file the store writes is 0600 and every folder 0700, whatever the umask; a
store others can write (or another user owns) warns, and strict mode refuses it
before anything planted there can run; a live writer removes its own staging; a
batch starting while its service is deleted either runs (its revision is pinned)
or fails with ``ServiceNotFoundError``, never a raw ``FileNotFoundError``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
from pathlib import Path

import pandas as pd
import pytest

from localbatch import (
    ConfigurationError,
    DeployClient,
    LocalBatchWarning,
    ServiceNotFoundError,
    StoreError,
)
from localbatch._store.fsutil import sha256, write_json

from . import integrityfns

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root: Path) -> dict[str, list[str]]:
    """Paths under root whose mode is not private (files 0600, folders 0700)."""
    bad: dict[str, list[str]] = {"files": [], "folders": []}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if stat.S_IMODE(os.lstat(path).st_mode) != 0o700:
                bad["folders"].append(f"{oct(os.lstat(path).st_mode)} {path}")
        for name in filenames:
            path = os.path.join(dirpath, name)
            if stat.S_IMODE(os.lstat(path).st_mode) != 0o600:
                bad["files"].append(f"{oct(os.lstat(path).st_mode)} {path}")
    return bad


@pytest.mark.parametrize("engine", ["inline", "local"])
def test_every_file_is_0600_and_every_folder_0700(tmp_path, loose_umask, engine):
    root = tmp_path / "deep" / "store"
    client = DeployClient(str(root), engine=engine)
    svc = (client.service("p").version("1").code_fn(integrityfns.score)
           .inputs(a=float, b=float).outputs(y=float).artifacts(["out.txt"])
           .models(m={"k": 1}).deploy())
    batch = svc.batch(pd.DataFrame({"a": [0.0, 1.0, 7.0, 100.0], "b": 1.0}),
                      parallel_count=2).start()
    assert batch.wait(60).state == "Complete"
    client.redeploy_service("p", version="1", code_fn=integrityfns.score)
    batch.cancel()
    client.close()
    assert _modes(root) == {"files": [], "folders": []}
    assert stat.S_IMODE(os.stat(tmp_path / "deep").st_mode) == 0o700  # a parent it made


@pytest.mark.parametrize("mode, who", [(0o777, "everyone"), (0o770, "its group")])
def test_a_store_others_can_write_warns_and_strict_mode_refuses_it(tmp_path, monkeypatch,
                                                                  mode, who):
    root = tmp_path / "store"
    DeployClient(str(root)).close()
    os.chmod(root, mode)
    with pytest.warns(LocalBatchWarning, match=f"{root} is writable by {who}"):
        DeployClient(str(root))
    with pytest.raises(ConfigurationError, match="strict mode refuses it"):
        DeployClient(str(root), strict=True)
    monkeypatch.setenv("LOCALBATCH_STRICT", "1")
    with pytest.raises(ConfigurationError, match=f"writable by {who}"):
        DeployClient(str(root))
    with pytest.warns(LocalBatchWarning):
        DeployClient(str(root), strict=False)  # the argument overrides the variable


def test_a_writable_parent_counts_too(tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.warns(LocalBatchWarning, match=f"{parent} is writable by everyone"):
        DeployClient(str(parent / "store"))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_store_owned_by_another_user_warns_and_strict_mode_refuses_it(tmp_path):
    root = tmp_path / "store"
    DeployClient(str(root)).close()
    os.chown(root, 12345, 12345)
    with pytest.warns(LocalBatchWarning, match=r"owned by another user \(uid 12345"):
        DeployClient(str(root))
    with pytest.raises(ConfigurationError, match="owned by another user"):
        DeployClient(str(root), strict=True)


class _Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_planted_revision_never_runs_in_strict_mode(tmp_path, monkeypatch):
    from localbatch._cli import main

    root = tmp_path / "store"
    client = DeployClient(str(root), engine="inline")
    svc = client.service("p").version("1").code_fn(integrityfns.score) \
        .inputs(a=float, b=float).outputs(y=float).deploy()
    client.close()
    # Someone who can write the store plants code with a matching hash.
    marker = tmp_path / "planted-code-ran"
    rev = svc._record.path
    data = pickle.dumps(_Touch(marker))
    (rev / "code.pkl").write_bytes(data)
    manifest = json.loads((rev / "manifest.json").read_text())
    manifest["blobs"]["code.pkl"] = sha256(data)
    write_json(rev / "manifest.json", manifest)
    os.chmod(root, 0o777)
    monkeypatch.setenv("LOCALBATCH_STRICT", "1")
    with pytest.raises(ConfigurationError, match="not private"):
        DeployClient(str(root), engine="inline")
    inputs = tmp_path / "in.csv"
    inputs.write_text("a,b\n1,2\n")
    assert main(["--store", str(root), "run", "p", str(inputs)]) != 0
    assert not marker.exists()


def test_delete_service_during_start_is_a_clear_error_or_a_pinned_run(tmp_path):
    root = tmp_path / "store"
    client = DeployClient(str(root), engine="inline")
    svc = client.service("p").version("1").code_fn(integrityfns.score) \
        .inputs(a=float, b=float).outputs(y=float).deploy()
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": 1.0})
    # Deleted before the batch pinned its revision: a clear error, nothing left behind.
    client.delete_service("p", version="1")
    with pytest.raises(ServiceNotFoundError, match="deleted while the batch was starting"):
        svc.batch(frame).start()
    assert os.listdir(root / "executions" / ".staging") == []
    # Pinned first (a batch still spooling its inputs): the revision survives the delete.
    svc = client.service("p").version("1").code_fn(integrityfns.score) \
        .inputs(a=float, b=float).outputs(y=float).deploy()
    store = client._executions.store
    staging = store.staging("0" * 32, pin=svc._record)
    client.delete_service("p", version="1")
    assert (svc._record.path / "manifest.json").is_file()
    store.discard_staging(staging)


def test_a_live_publisher_removes_its_own_staging(tmp_path, monkeypatch):
    from localbatch._store import registry

    root = tmp_path / "store"
    client = DeployClient(str(root), engine="inline")
    real = registry._write_private

    def full_disk(path, data):
        if path.name == "code.py":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(registry, "_write_private", full_disk)
    with pytest.raises(StoreError, match="No space left"):
        client.service("p").version("1").code_fn(integrityfns.score) \
            .inputs(a=float, b=float).outputs(y=float).deploy()
    assert os.listdir(root / "services" / ".staging") == []
    # A start() whose inputs cannot be spooled removes its staging too.
    monkeypatch.undo()
    svc = client.service("p").version("1").code_fn(integrityfns.score) \
        .inputs(a=float, b=float).outputs(y=float).deploy()
    csv = tmp_path / "bad.csv"
    csv.write_text("a,b\n1,2\nnot a number,3\n")
    with pytest.raises(ValueError):
        svc.batch(str(csv)).start()
    staging = root / "executions" / ".staging"
    assert not staging.exists() or os.listdir(staging) == []
