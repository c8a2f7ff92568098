"""Services outlive the process, the script and the module that defined them."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localbatch import ServiceLoadError
from localbatch._store.fsutil import write_json

USERMOD = '''
FACTOR = 10


def init():
    global base
    base = 5


def mod_fn(a):
    return a * FACTOR + base + m.w


class Model:
    def __init__(self, w):
        self.w = w
'''

# A guard-less script: functions defined in its __main__, plus ones from a local module.
DEPLOY = '''
import sys

import usermod
from localbatch import DeployClient

SCALE = 3.0


def helper(a):
    return a + 1


def init():
    global offset
    offset = 0.25


def main_fn(a):
    return helper(a) * SCALE + offset


client = DeployClient(sys.argv[1])
client.service("from_main").version("1").code_fn(main_fn, init).inputs(a=float) \\
    .outputs(r=float).deploy()
client.service("from_module").version("1").code_fn(usermod.mod_fn, usermod.init) \\
    .inputs(a=float).outputs(r=float).models(m=usermod.Model(2)).deploy()
print("deployed")
'''

CONSUME = '''
import json
import sys

try:
    import usermod  # noqa: F401
    sys.exit("usermod is still importable: the test proves nothing")
except ModuleNotFoundError:
    pass
from localbatch import DeployClient

client = DeployClient(sys.argv[1])
out = {}
for name, op in (("from_main", "main_fn"), ("from_module", "mod_fn")):
    res = getattr(client.get_service(name), op)(2)
    out[name] = [res.error, res.outputs["r"]]
print(json.dumps(out))
'''


def _run(args: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_new_process_consumes_services_from_main_and_a_deleted_module(store: Path,
                                                                        tmp_path: Path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "usermod.py").write_text(USERMOD)
    (project / "deploy.py").write_text(DEPLOY)
    (elsewhere / "consume.py").write_text(CONSUME)
    assert _run(["deploy.py", str(store)], project).strip() == "deployed"
    # the module is gone before anything loads the service
    (project / "usermod.py").unlink()
    shutil.rmtree(project / "__pycache__", ignore_errors=True)
    out = json.loads(_run([str(elsewhere / "consume.py"), str(store)], elsewhere))
    assert out == {"from_main": ["", (2 + 1) * 3.0 + 0.25],
                   "from_module": ["", 2 * 10 + 5 + 2]}


def test_the_manifest_records_what_the_service_was_saved_with(client):
    svc = client.service("v").version("1").code_fn(lambda a: a).inputs(a=float).deploy()
    versions = svc._record.manifest["versions"]
    for key in ("python", "cloudpickle", "numpy", "pandas", "localbatch"):
        assert isinstance(versions[key], str) and versions[key], key


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rewrite(rec, fname: str, data: bytes, *, fix_hash: bool, python: str | None = None
             ) -> None:
    (rec.path / fname).write_bytes(data)
    manifest = json.loads((rec.path / "manifest.json").read_text())
    if fix_hash:
        manifest["blobs"][fname] = hashlib.sha256(data).hexdigest()
    if python:
        manifest["versions"]["python"] = python
    write_json(rec.path / "manifest.json", manifest)  # with its checksum


def test_a_tampered_blob_is_refused_before_unpickling(client, tmp_path: Path):
    svc = client.service("tampered").version("1").code_fn(lambda a: a).inputs(a=float) \
        .outputs(r=float).deploy()
    marker = tmp_path / "unpickled"
    _rewrite(svc._record, "code.pkl", pickle.dumps(_Touch(marker)), fix_hash=False)
    svc = client.get_service("tampered")
    with pytest.raises(ServiceLoadError, match="code.pkl .*does not match its manifest hash"):
        svc.consume(1.0)
    assert not marker.exists()


def test_a_service_that_cannot_load_any_more_is_a_clear_error(client):
    svc = client.service("skew").version("1").code_fn(lambda a: a).inputs(a=float) \
        .outputs(r=float).models(m=1).deploy()
    # as if saved with another Python, by a model class that no longer exists
    _rewrite(svc._record, "model-m.pkl", b"cghost_module_xyz\nGhost\n.", fix_hash=True,
             python="3.99.0")
    svc = client.get_service("skew")
    with pytest.raises(ServiceLoadError) as info:
        svc.consume(1.0)
    text = str(info.value)
    assert "skew 1" in text and "ghost_module_xyz" in text and "Python 3.99.0" in text
    assert "this is Python" in text and "Traceback" not in text
