"""The ``azureml`` drop-in: SDK code runs unchanged on a local store.

The proof is ``tests/sample_app``, an application written only against the
SDK's import paths, run end to end through the ``azureml_local`` fixture.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import localbatch
from localbatch import compat

HERE = Path(__file__).resolve().parent
HOST = "http://localhost:12800"
AUTH = ("admin", "password")
SDK_ONLY = importlib.util.find_spec("azureml") is None


# The SDK sample notebook's service; `cars_model` is a global at run time (.models()).
def init():
    import pandas as pd  # noqa: F401 - the SDK's init loads what the service needs


def manualTransmission(hp, wt):
    import pandas as pd

    newdata = pd.DataFrame({"hp": [hp], "wt": [wt]})
    answer = pd.DataFrame({"am_Pred": cars_model.predict(newdata)})  # noqa: F821
    answer.to_csv("answer.csv")
    return answer


def _fit(mtcars: pd.DataFrame):
    import statsmodels.formula.api as smf

    return smf.ols("am ~ hp + wt", data=mtcars).fit()


def _deploy_tx(cars_model) -> None:
    """Deploy as the notebook does, through the drop-in's DeployClient."""
    from azureml.deploy import DeployClient
    from azureml.deploy.server import MLServer

    client = DeployClient(HOST, use=MLServer, auth=AUTH)
    (client.service("TxService").version("1.0")
     .code_fn(manualTransmission, init)
     .inputs(hp=float, wt=float)
     .outputs(answer=pd.DataFrame)
     .models(cars_model=cars_model)
     .description("My first python model")
     .artifacts(["answer.csv"])
     .deploy())


def _sample_app():
    return importlib.import_module("sample_app.cars")


def _azureml_modules() -> dict[str, object]:
    return {k: v for k, v in sys.modules.items() if k == "azureml" or k.startswith("azureml.")}


# -- the sample application, end to end -----------------------------------------------


def test_sample_app_batch_flow_end_to_end(azureml_local, mtcars, tmp_path):
    cars_model = _fit(mtcars)
    _deploy_tx(cars_model)
    dest = tmp_path / "downloads"
    dest.mkdir()

    report = _sample_app().score_cars(mtcars[["hp", "wt"]], dest, poll=0.05)

    expected = cars_model.predict(mtcars[["hp", "wt"]]).to_numpy()
    assert (report.state, report.total, report.completed) == ("Complete", 32, 32)
    assert report.errors == {}
    np.testing.assert_allclose(report.predictions, expected, rtol=1e-12)
    assert report.quote == pytest.approx(
        float(cars_model.predict(pd.DataFrame({"hp": [120], "wt": [2.8]})).iloc[0]))
    assert report.artifact_names == ["answer.csv"]
    from_artifact = pd.read_csv(io.BytesIO(report.artifact), index_col=0)
    assert from_artifact["am_Pred"].iloc[0] == pytest.approx(expected[1], rel=1e-12)
    assert report.downloaded == [str(dest / "answer.csv")]
    assert (dest / "answer.csv").read_bytes() == report.artifact
    assert report.found_again
    # It all happened in the fixture's store under tmp_path, with real workers.
    assert azureml_local.store == tmp_path / "azureml-store"
    header = localbatch.DeployClient(azureml_local.store).get_execution(
        report.execution_id).results().header
    assert (header["engine"], header["owner_pid"]) == ("local", os.getpid())


@pytest.mark.parametrize("azureml_local", ["inline"], indirect=True)
def test_sample_app_inline_gives_the_same_answers(azureml_local, mtcars, tmp_path):
    cars_model = _fit(mtcars)
    _deploy_tx(cars_model)

    report = _sample_app().score_cars(mtcars[["hp", "wt"]], tmp_path, poll=0.05)

    assert report.state == "Complete" and report.polls == 1  # rows ran during start()
    np.testing.assert_allclose(report.predictions,
                               cars_model.predict(mtcars[["hp", "wt"]]).to_numpy(), rtol=1e-12)
    assert (tmp_path / "answer.csv").read_bytes() == report.artifact
    header = localbatch.DeployClient(azureml_local.store).get_execution(
        report.execution_id).results().header
    assert header["engine"] == "inline"


@pytest.mark.skipif(not SDK_ONLY, reason="a real azureml package is installed here")
def test_sample_app_is_written_only_against_the_sdk():
    for path in (HERE / "sample_app").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for n in node.names}
        imported |= {node.module or "" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}
        assert not any(m.startswith("localbatch") for m in imported), path
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.startswith("sample_app")}
    try:
        with pytest.raises(ModuleNotFoundError, match="azureml"):
            _sample_app()
    finally:
        for k in [k for k in sys.modules if k.startswith("sample_app")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_missing_service_answers_404_like_ml_server(azureml_local):
    from azureml.common.http_client import HttpException
    from azureml.deploy import DeployClient
    from azureml.deploy.server import MLServer

    client = DeployClient(HOST, use=MLServer, auth=AUTH)
    assert _sample_app().find_service(client, "NoSuchService", "1.0") is None
    with pytest.raises(HttpException) as info:
        client.get_service("NoSuchService", version="1.0")
    assert info.value.status == 404
    assert isinstance(info.value, localbatch.ServiceNotFoundError)
    assert str(info.value).startswith("(404)\nReason: ")
    assert "NoSuchService" in str(info.value)


# -- the module tree ----------------------------------------------------------------------


def test_sdk_import_paths_expose_localbatch_classes(tmp_path):
    with compat.azureml(tmp_path / "home"):
        import azureml.deploy.server as server
        from azureml.deploy import DeployClient, Operationalization, ServiceDefinition
        from azureml.deploy.operationalization import RealtimeDefinition
        from azureml.deploy.server import (
            Batch,
            BatchResponse,
            EncodingType,
            MLServer,
            Service,
            ServiceResponse,
        )
        from azureml.deploy.server.service import Batch as ServiceModuleBatch

        assert (MLServer, Service, ServiceResponse, Batch, BatchResponse, EncodingType) == (
            localbatch.MLServer, localbatch.Service, localbatch.ServiceResponse,
            localbatch.Batch, localbatch.BatchResponse, localbatch.EncodingType)
        assert ServiceModuleBatch is Batch and server.MLServer is MLServer
        assert ServiceDefinition is localbatch.ServiceDefinition
        assert RealtimeDefinition is localbatch.RealtimeDefinition
        assert issubclass(DeployClient, localbatch.DeployClient)
        for use in (MLServer, "MLServer", "azureml.deploy.server.MLServer"):
            client = DeployClient(HOST, use=use, auth=AUTH)
            assert isinstance(client, MLServer) and isinstance(client, Operationalization)
            assert client.store_path == (tmp_path / "home").resolve()
        assert DeployClient(str(tmp_path / "explicit")).store_path == tmp_path / "explicit"
        with pytest.raises(ImportError):
            DeployClient(HOST, use=12345)
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("azureml.api")


def test_uninstall_restores_sys_modules(tmp_path):
    before = _azureml_modules()
    handle = compat.install_azureml(tmp_path / "a")
    assert set(handle.modules) <= set(sys.modules)
    assert {"azureml", "azureml.deploy", "azureml.deploy.server"} <= set(handle.modules)

    handle.uninstall()
    handle.uninstall()  # idempotent
    assert _azureml_modules() == before
    assert not handle.installed
    if SDK_ONLY:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("azureml.deploy")

    with pytest.raises(RuntimeError), compat.azureml(tmp_path / "b"):
        raise RuntimeError("the with block failed")
    assert _azureml_modules() == before


def test_nested_installs_unwind_in_order(tmp_path):
    before = _azureml_modules()
    outer = compat.install_azureml(tmp_path / "outer")
    try:
        from azureml.deploy import DeployClient

        with compat.azureml(tmp_path / "inner", engine="inline") as inner:
            client = DeployClient(HOST)
            assert (client.store_path, client.engine) == (inner.store, "inline")
        # A class bound under the inner drop-in follows the one installed now.
        client = DeployClient(HOST)
        assert (client.store_path, client.engine) == (outer.store, None)
        assert "azureml.deploy" in sys.modules
    finally:
        outer.uninstall()
    assert _azureml_modules() == before


def test_refuses_to_shadow_a_real_azureml():
    before = _azureml_modules()
    for name in ("azureml", "azureml.core"):
        fake = types.ModuleType(name)  # what an imported azureml-core looks like here
        saved = sys.modules.get(name)
        sys.modules[name] = fake
        try:
            with pytest.raises(localbatch.ConfigurationError, match="real `azureml`"):
                compat.install_azureml()
            assert sys.modules[name] is fake
            assert "azureml.deploy" not in sys.modules
        finally:
            if saved is None:
                del sys.modules[name]
            else:
                sys.modules[name] = saved
    assert _azureml_modules() == before


def test_bad_engine_is_refused_at_install():
    before = _azureml_modules()
    with pytest.raises(localbatch.ConfigurationError, match="engine"):
        compat.install_azureml(engine="warp-drive")
    assert _azureml_modules() == before


# -- python -m localbatch.compat ----------------------------------------------------------

GUARDLESS = """\
import sys
import time

import pandas as pd
from azureml.deploy import DeployClient
from azureml.deploy.server import MLServer

from helper import double  # a module beside the script


def add(a, b):
    if a == 5.0:
        time.sleep(1)  # still running when the script reaches its end
    return double(a) + b


client = DeployClient("http://localhost:12800", use=MLServer, auth=("admin", "pw"))
svc = (client.service("Adder").version("1.0").code_fn(add)
       .inputs(a=float, b=float).outputs(answer=float).deploy())
batch = svc.batch(pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.5, 0.5, 0.5]}),
                  parallel_count=2).start()
while True:
    res = batch.results()
    if res.state in ("Failed", "Complete"):
        break
    time.sleep(0.05)
print("ANSWERS", [res.execution(i).outputs["answer"] for i in range(res.total_item_count)])
print("ARGV", sys.argv[1:])
print("STORE", client.store_path)
left = svc.batch(pd.DataFrame({"a": [5.0], "b": [1.0]}), parallel_count=1).start()
print("LEFT", left.execution_id)
"""


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=90)


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, LOCALBATCH_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent),
                                                    env.get("PYTHONPATH", "")) if p)
    return env


def test_run_a_guardless_sdk_script(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "helper.py").write_text("def double(x):\n    return 2 * x\n")
    script = app / "score.py"
    assert "__main__" not in GUARDLESS  # no guard: workers must never import the script
    script.write_text(GUARDLESS)
    home = tmp_path / "home"

    proc = _run(["-m", "localbatch.compat", str(script), "--fast", "x"], tmp_path, _env(home))

    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["ANSWERS"] == "[2.5, 4.5, 6.5]"
    assert lines["ARGV"] == "['--fast', 'x']"
    assert lines["STORE"] == str(home.resolve())
    # The batch left running at the script's end was waited for.
    assert "waiting for 1 running batch" in proc.stderr
    left = localbatch.DeployClient(home).get_execution(lines["LEFT"]).results()
    assert (left.state, left.execution(0).outputs["answer"]) == ("Complete", 11.0)

    if SDK_ONLY:  # without the drop-in, the same script cannot even import
        plain = _run([str(script)], tmp_path, _env(home))
        assert plain.returncode != 0 and "No module named 'azureml'" in plain.stderr


MODULE = """\
import os

import pandas as pd
from azureml.deploy import DeployClient
from azureml.deploy.server import MLServer


def pid(a):
    return float(os.getpid())


svc = (DeployClient("https://ml.example.com", use=MLServer).service("Pid").version("1")
       .code_fn(pid).inputs(a=float).outputs(p=float).deploy())
res = svc.batch(pd.DataFrame({"a": [1.0, 2.0]}), parallel_count=2).start().results()
print(res.state, {res.execution(i).outputs["p"] == os.getpid() for i in range(2)})
"""


def test_run_a_module_inline_with_options(tmp_path):
    (tmp_path / "pidapp.py").write_text(MODULE)
    store = tmp_path / "chosen-store"
    env = _env(tmp_path / "unused-home")

    proc = _run(["-m", "localbatch.compat", "--store", str(store), "--engine=inline",
                 "-m", "pidapp"], tmp_path, env)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Complete", "{True}"]  # rows ran in the script's process
    assert (store / "executions").is_dir()
    assert not (tmp_path / "unused-home").exists()


def test_command_line_errors(tmp_path):
    env = _env(tmp_path / "home")
    missing = _run(["-m", "localbatch.compat", str(tmp_path / "nope.py")], tmp_path, env)
    assert missing.returncode == 2 and "no such script" in missing.stderr
    bad = _run(["-m", "localbatch.compat", "--engine", "warp", str(tmp_path / "x.py")],
               tmp_path, env)
    assert bad.returncode == 2 and "unknown engine 'warp'" in bad.stderr
    usage = _run(["-m", "localbatch.compat", "--help"], tmp_path, env)
    assert usage.returncode == 0 and "SCRIPT.py" in usage.stdout
    assert not (tmp_path / "home").exists()

