"""The pytest plugin, tested with pytest's own ``pytester`` on inner test suites."""

from __future__ import annotations

import os

pytest_plugins = ["pytester"]

USES_FIXTURES = '''
import os
import sys
import time

import pandas as pd
import psutil
import pytest

LEFT_RUNNING = {}


def add(a, b):
    return a + b


def slow(a, b):
    time.sleep(b)
    return a


def _workers():
    # The warm template (a child with --zygote) outlives tests by design; workers don't.
    return [p for p in psutil.Process().children(recursive=True)
            if "localbatch" in " ".join(p.cmdline())
            and not (p.ppid() == os.getpid() and "--zygote" in p.cmdline())]


def _deploy(client, fn, name):
    return (client.service(name).version("1.0").code_fn(fn)
            .inputs(a=float, b=float).outputs(answer=float).deploy())


def test_client_on_a_fresh_store(localbatch_client, tmp_path):
    assert str(localbatch_client.store_path).startswith(str(tmp_path))
    assert localbatch_client.list_services() == []
    svc = _deploy(localbatch_client, add, "Add")
    res = svc.batch(pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [1.0, 1.0, 1.0]}),
                    parallel_count=2).start().wait(timeout=60)
    assert [res.execution(i).outputs["answer"] for i in range(3)] == [2.0, 3.0, 4.0]
    assert _workers()  # warm workers stay up while the test runs


def test_teardown_stopped_the_warm_workers():
    assert _workers() == []


def test_left_running_batch(localbatch_client):
    svc = _deploy(localbatch_client, slow, "Slow")
    batch = svc.batch(pd.DataFrame({"a": [1.0] * 4, "b": [30.0] * 4}), parallel_count=2)
    batch.start()
    LEFT_RUNNING["store"] = localbatch_client.store_path
    LEFT_RUNNING["id"] = batch.execution_id


def test_teardown_canceled_it():
    from localbatch import DeployClient

    assert _workers() == []
    res = DeployClient(LEFT_RUNNING["store"]).get_execution(LEFT_RUNNING["id"]).results()
    assert res.state == "Canceled"


@pytest.mark.parametrize("localbatch_client", ["inline"], indirect=True)
def test_inline_client(localbatch_client):
    svc = _deploy(localbatch_client, add, "Add")
    res = svc.batch(pd.DataFrame({"a": [1.0], "b": [2.0]})).start().results()
    assert (res.state, res.execution(0).outputs["answer"]) == ("Complete", 3.0)
    assert _workers() == []  # no process was started


def test_azureml_local(azureml_local, tmp_path):
    from azureml.deploy import DeployClient
    from azureml.deploy.server import MLServer

    client = DeployClient("http://localhost:12800", use=MLServer, auth=("admin", "pw"))
    assert client.store_path == azureml_local.store == tmp_path / "azureml-store"
    assert os.environ["LOCALBATCH_HOME"] == str(tmp_path / "azureml-store")
    svc = _deploy(client, add, "Add")
    res = svc.batch(pd.DataFrame({"a": [1.0], "b": [2.0]}), parallel_count=1).start()
    assert res.wait(timeout=60).execution(0).outputs["answer"] == 3.0


@pytest.mark.parametrize("azureml_local", ["inline"], indirect=True)
def test_azureml_local_inline(azureml_local):
    from azureml.deploy import DeployClient

    svc = _deploy(DeployClient("http://localhost:12800"), add, "Add")
    res = svc.batch(pd.DataFrame({"a": [1.0], "b": [2.0]})).start().results()
    assert res.state == "Complete" and azureml_local.engine == "inline"


def test_the_drop_in_was_for_that_test_only():
    assert not any(m == "azureml" or m.startswith("azureml.") for m in sys.modules)
    assert os.environ.get("LOCALBATCH_HOME") == {home!r}
    assert _workers() == []
'''

NO_FIXTURES = '''
import os
import sys


def test_nothing_is_activated(request):
    plugin = request.config.pluginmanager.get_plugin("localbatch")  # loaded, not activated
    assert {"localbatch_client", "azureml_local"} <= set(vars(plugin))
    assert not any(m == "azureml" or m.startswith("azureml.") for m in sys.modules)
    assert "localbatch.compat" not in sys.modules


def test_plain_code(tmp_path):
    assert not (tmp_path / "localbatch-store").exists()
    assert not (tmp_path / "azureml-store").exists()
'''


def test_suite_that_uses_the_fixtures(pytester):
    pytester.makepyfile(USES_FIXTURES.replace("{home!r}",
                                              repr(os.environ.get("LOCALBATCH_HOME"))))
    result = pytester.runpytest("-p", "no:cacheprovider", "-q", "--durations=5")
    result.assert_outcomes(passed=8)


def test_suite_that_does_not_use_them(pytester, tmp_path, monkeypatch):
    home = tmp_path / "untouched-home"
    pytester.makepyfile(NO_FIXTURES)
    # A fresh interpreter, as a user's test run is: only the entry point loads the plugin.
    monkeypatch.setenv("LOCALBATCH_HOME", str(home))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)
    assert not home.exists()

