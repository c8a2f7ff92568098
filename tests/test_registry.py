"""The registry on disk: names, versions, revisions, listing, deleting, races."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from localbatch import (
    InvalidServiceError,
    ServiceExistsError,
    ServiceLoadError,
    ServiceNotFoundError,
)
from localbatch._store.fsutil import write_json
from localbatch._store.registry import Registry, read_blobs

SDK_META_KEYS = {"name", "version", "code", "initCode", "inputParameterDefinitions",
                 "outputParameterDefinitions", "outputFileNames", "operationId", "runtimeType",
                 "snapshotId", "creationTime", "description", "versionPublishedBy",
                 "myPermissionOnService"}


def _deploy(client, name, version="1", code="r = a"):
    return client.service(name).version(version).code_str(code).inputs(a=float) \
        .outputs(r=float).deploy()


# -- names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, problem", [
    ("../x", "contains '/'"),
    ("a/b", "contains '/'"),
    ("a\\b", "contains '\\\\\\\\'"),
    ("", "is empty"),
    ("a\0b", "contains '\\\\x00'"),
    ("tab\there", "contains '\\\\t'"),
    ("x" * 129, "129 characters long \\(at most 128\\)"),
    (".", "'.' is not allowed"),
    ("..", "'..' is not allowed"),
])
def test_bad_names_are_value_errors_naming_the_problem(client, name, problem):
    with pytest.raises(ValueError, match="service name .*" + problem):
        _deploy(client, name)
    if name:  # a blank version is the SDK's "generate one"
        with pytest.raises(ValueError, match="version .*" + problem):
            _deploy(client, "ok", version=name)
    with pytest.raises(ValueError, match=problem):
        client.get_service(name)
    with pytest.raises(ValueError, match=problem):
        client.list_services(name)
    assert client.list_services() == []
    assert not (client.store_path / "x").exists()


def test_non_str_names_are_refused(client):
    with pytest.raises(InvalidServiceError, match="must be a str"):
        _deploy(client, 12)


@pytest.mark.parametrize("name", [
    "a!b@c#", "a!b@c#d$e%f^g&h*i(j)k-l+m.n,o<p_alphanumeric", ".hidden", "%2E", "with space",
    "été", "x" * 128, "!" * 128, "模型" * 64, "%%x",
])
def test_odd_names_round_trip(client, name):
    svc = _deploy(client, name, version=name)
    assert svc.name == name and svc.version == name
    [meta] = client.list_services(name)
    assert (meta["name"], meta["version"]) == (name, name)
    assert [m["name"] for m in client.list_services()] == [name]
    assert client.get_service(name).version == name
    assert client.get_service(name, version=name).name == name
    # one folder per name, never a path outside the services folder
    folders = [p for p in (client.store_path / "services").iterdir() if p.name != ".staging"]
    assert len(folders) == 1
    [vdir] = folders[0].iterdir()
    for part in (folders[0].name, vdir.name):
        assert len(part.encode()) <= 255 and not part.startswith(".")


# -- find, list, delete --------------------------------------------------------------------


def test_list_services_returns_the_sdk_s_metadata(client):
    _deploy(client, "one", "1.0")
    _deploy(client, "one", "2.0")
    _deploy(client, "two", "1.0")
    every = client.list_services()
    assert [(m["name"], m["version"]) for m in every] == [("one", "1.0"), ("one", "2.0"),
                                                         ("two", "1.0")]
    for meta in every:
        assert set(meta) == SDK_META_KEYS
    meta = every[0]
    assert meta["inputParameterDefinitions"] == [{"name": "a", "type": "numeric"}]
    assert meta["outputParameterDefinitions"] == [{"name": "r", "type": "numeric"}]
    assert meta["runtimeType"] == "Python" and meta["myPermissionOnService"] == "read/write"
    assert len(meta["creationTime"].split(".")[1]) == 7  # the SDK's 7 fractional digits
    assert [m["version"] for m in client.list_services("one")] == ["1.0", "2.0"]
    assert [m["name"] for m in client.list_services("two", version="1.0")] == ["two"]
    assert client.list_services("one", version="3.0") == []
    assert client.list_services("nobody") == []


def test_get_service_without_version_is_the_most_recently_published(client):
    _deploy(client, "svc", "b")
    _deploy(client, "svc", "a")  # newer, though it sorts first
    assert client.get_service("svc").version == "a"
    _deploy(client, "svc", "0")
    assert client.get_service("svc").version == "0"
    assert client.get_service("svc", version="b").version == "b"
    with pytest.raises(ServiceNotFoundError, match="No service found for svc version zz"):
        client.get_service("svc", version="zz")
    with pytest.raises(ValueError, match="No service found for nobody"):
        client.get_service("nobody")
    with pytest.raises(TypeError):
        client.get_service("svc", colour="red")


def test_delete_service_requires_a_version(client):
    _deploy(client, "del", "1")
    _deploy(client, "del", "2")
    with pytest.raises(ValueError, match="Missing the required parameter `version`"):
        client.delete_service("del")
    assert client.delete_service("del", version="1") is True
    assert [m["version"] for m in client.list_services("del")] == ["2"]
    with pytest.raises(ServiceNotFoundError):
        client.get_service("del", version="1")
    with pytest.raises(ServiceNotFoundError):
        client.delete_service("del", version="1")
    # the version can be published again
    assert _deploy(client, "del", "1", "r = a * 2")._service["code"] == "r = a * 2"


def test_delete_keeps_revisions_executions_still_use(store: Path):
    from localbatch._store.revision import ServiceSpec

    reg = Registry(store)
    rec = reg.publish(ServiceSpec(name="keep", version="1", code_str="r = 1"), replace=False)
    other = reg.publish(ServiceSpec(name="keep", version="1", code_str="r = 2"), replace=True)
    reg.delete("keep", "1", keep={rec.revision})
    assert rec.path.is_dir() and not other.path.exists()
    assert reg.list("keep") == []
    assert reg.revision("keep", "1", rec.revision).manifest["code_str"] == "r = 1"


# -- revisions on disk ------------------------------------------------------------------


def test_revisions_are_immutable_and_current_is_swapped(client):
    first = _deploy(client, "rev", "1")._record
    vdir = first.path.parent
    assert json.loads((vdir / "current").read_text())["revision"] == first.revision
    before = {p.name: p.read_bytes() for p in first.path.iterdir()}
    second = client.service("rev").version("1").code_str("r = a + 1").redeploy()._record
    assert json.loads((vdir / "current").read_text())["revision"] == second.revision
    assert {p.name: p.read_bytes() for p in first.path.iterdir()} == before
    assert second.manifest["created"] == first.manifest["created"]
    assert not any((client.store_path / "services" / ".staging").iterdir())


def test_manifest_records_versions_and_blob_hashes(client, mtcars):
    import hashlib

    import statsmodels.formula.api as smf

    model = smf.ols("am ~ hp + wt", data=mtcars).fit()
    rec = client.service("m").version("1").code_fn(lambda hp: hp).inputs(hp=float) \
        .models(model=model).objects(k=3).deploy()._record
    versions = rec.manifest["versions"]
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert {"cloudpickle", "numpy", "pandas", "localbatch", "statsmodels"} <= set(versions)
    assert set(rec.manifest["blobs"]) == {"code.pkl", "model-model.pkl", "object-k.pkl"}
    for fname, digest in rec.manifest["blobs"].items():
        assert hashlib.sha256((rec.path / fname).read_bytes()).hexdigest() == digest
    assert rec.manifest["format_version"] == 2  # checksummed manifest (Step 10)


class _Touch:
    """Unpickling this touches a file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(rec, fname: str, data: bytes, *, fix_hash: bool) -> None:
    import hashlib

    (rec.path / fname).write_bytes(data)
    if fix_hash:
        manifest = json.loads((rec.path / "manifest.json").read_text())
        manifest["blobs"][fname] = hashlib.sha256(data).hexdigest()
        write_json(rec.path / "manifest.json", manifest)  # with its checksum


def test_blob_hash_is_checked_before_unpickling(client, tmp_path: Path):
    rec = client.service("h").version("1").code_fn(lambda a: a).inputs(a=float).deploy()._record
    marker = tmp_path / "unpickled"
    _plant(rec, "code.pkl", pickle.dumps(_Touch(marker)), fix_hash=False)
    record = client.get_service("h")._record
    with pytest.raises(ServiceLoadError, match="code.pkl .*does not match its manifest hash"):
        read_blobs(record.path, record.manifest)
    assert not marker.exists()


def test_listing_and_getting_never_unpickle(client, tmp_path: Path):
    # deploy() has the local engine's template load the service (in its own process, at
    # once): the planting below would race with it. Inline, nothing loads ahead of need.
    client.engine = "inline"
    rec = client.service("lazy").version("1").code_str("r = a").inputs(a=float) \
        .models(m=1).deploy()._record
    marker = tmp_path / "unpickled"
    _plant(rec, "model-m.pkl", pickle.dumps(_Touch(marker)), fix_hash=True)
    # a model whose class cannot be imported any more
    ghost = client.service("ghost").version("1").code_str("r = a").inputs(a=float) \
        .models(m=1).deploy()._record
    _plant(ghost, "model-m.pkl", b"cghost_module_xyz\nGhost\n.", fix_hash=True)
    assert {m["name"] for m in client.list_services()} == {"lazy", "ghost"}
    for name in ("lazy", "ghost"):
        svc = client.get_service(name)
        svc.capabilities()
        json.loads(svc.swagger())
        str(svc)
    assert not marker.exists()
    # ...while loading does unpickle (so the check above could fail)
    record = client.get_service("lazy")._record
    blobs = read_blobs(record.path, record.manifest)
    pickle.loads(blobs["model-m.pkl"])
    assert marker.exists()


# -- concurrent publishers -----------------------------------------------------------------

_RACER = r"""
import sys, time
from pathlib import Path
from localbatch import DeployClient, ServiceExistsError

store, go, me, rounds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
client = DeployClient(store)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.0005)
for v in range(rounds):
    try:
        client.service("race").version(str(v)).code_str("r = a").inputs(a=float) \
            .outputs(r=float).description(me).deploy()
        print(v, "won", flush=True)
    except ServiceExistsError as exc:
        print(v, "lost", exc, flush=True)
"""


def test_two_processes_publishing_the_same_version_give_one_service(client, tmp_path: Path):
    script = tmp_path / "racer.py"
    script.write_text(_RACER)
    go = tmp_path / "go"
    rounds = 8
    procs = [subprocess.Popen([sys.executable, str(script), str(client.store_path), str(go),
                               me, str(rounds)], stdout=subprocess.PIPE, text=True)
             for me in ("p1", "p2")]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0]
    results: dict[int, list[tuple[str, str]]] = {}
    for me, out in zip(("p1", "p2"), outs, strict=True):
        for line in out.splitlines():
            v, verdict, *rest = line.split(" ", 2)
            results.setdefault(int(v), []).append((verdict, me))
            if verdict == "lost":
                assert "already exists: use redeploy()" in rest[0]
    for v in range(rounds):
        verdicts = sorted(results[v])
        assert [x for x, _ in verdicts] == ["lost", "won"], (v, verdicts)
        winner = [me for x, me in verdicts if x == "won"][0]
        assert client.get_service("race", version=str(v))._service["description"] == winner
        # the loser left no revision behind
        vdir = client.get_service("race", version=str(v))._record.path.parent
        assert len([p for p in vdir.iterdir() if p.is_dir()]) == 1
    assert len(client.list_services("race")) == rounds
    assert not any((client.store_path / "services" / ".staging").iterdir())


def test_exists_error_is_a_value_error(client):
    _deploy(client, "dup")
    with pytest.raises(ValueError):
        _deploy(client, "dup")
    assert issubclass(ServiceExistsError, ValueError)
