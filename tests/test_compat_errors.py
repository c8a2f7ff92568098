"""The drop-in raises what the SDK raises: each SDK call that ML Server answers with an
HTTP error raises an ``HttpException`` subclass with that status, which is also the
localbatch error of the same situation.

``TABLE`` is the contract, one row per SDK call and situation: (call, status, the
localbatch class it also is). ML Server answers 401 only to a bad login; locally
``auth`` is accepted and ignored, so no row has it (``test_auth_is_never_refused``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from scoring_fns import add, write_artifact

import localbatch as lb
from localbatch import compat

HOST = "http://localhost:12800"
MISSING_ID = "0" * 32  # a well-formed execution id that does not exist


@pytest.fixture
def sdk(azureml_local, tmp_path):
    """The SDK's client through the drop-in, with a service and a finished batch."""
    from azureml.deploy import DeployClient
    from azureml.deploy.server import MLServer

    client = DeployClient(HOST, use=MLServer, auth=("admin", "pw"))
    svc = (client.service("TxService").version("1.0").code_fn(write_artifact)
           .inputs(a=float, b=float).outputs(y=float).artifacts(["out.txt"]).deploy())
    batch = svc.batch(pd.DataFrame({"a": [1.0, 2.0], "b": 0.5}), engine="inline").start()
    batch.results()
    while batch.results().state not in ("Complete", "Failed"):
        pass
    dead = svc.batch(pd.DataFrame({"a": [1.0], "b": 0.5}), engine="inline").start()
    dead.results()
    while dead.results().state not in ("Complete", "Failed"):
        pass
    dead.delete()
    yield {"client": client, "svc": svc, "batch": batch, "dead": dead, "tmp": tmp_path}
    client.close()


def _deploy(client: Any, name: str, version: str = "1.0") -> Any:
    return (client.service(name).version(version).code_fn(add).inputs(a=float, b=float)
            .outputs(y=float).deploy())


Call = Callable[[dict[str, Any]], Any]

#: (what the SDK code does, its HTTP status, the localbatch class it also is)
TABLE: list[tuple[str, Call, int, type[Exception]]] = [
    ("get_service of a missing name", lambda s: s["client"].get_service("Nope"), 404,
     lb.ServiceNotFoundError),
    ("get_service of a missing version",
     lambda s: s["client"].get_service("TxService", version="9.9"), 404,
     lb.ServiceNotFoundError),
    ("delete_service of a missing version",
     lambda s: s["client"].delete_service("TxService", version="9.9"), 404,
     lb.ServiceNotFoundError),
    ("redeploy_service of a missing name",
     lambda s: s["client"].redeploy_service("Nope", version="1.0", code_str="y = 1"), 404,
     lb.ServiceNotFoundError),
    ("get_service_pool_status of a missing name",
     lambda s: s["client"].get_service_pool_status("Nope", "1.0"), 404,
     lb.ServiceNotFoundError),
    ("create_or_update_service_pool of a missing name",
     lambda s: s["client"].create_or_update_service_pool("Nope", "1.0", 1, 2), 404,
     lb.ServiceNotFoundError),
    ("delete_service_pool of a missing name",
     lambda s: s["client"].delete_service_pool("Nope", "1.0"), 404, lb.ServiceNotFoundError),
    ("deploy() of a published name and version", lambda s: _deploy(s["client"], "TxService"),
     409, lb.ServiceExistsError),
    ("deploy_service of a published name and version",
     lambda s: s["client"].deploy_service("TxService", version="1.0", code_str="y = 1",
                                          inputs={"a": float}, outputs={"y": float}),
     409, lb.ServiceExistsError),
    ("deploy() of a name the server refuses", lambda s: _deploy(s["client"], "bad/name"), 400,
     lb.InvalidServiceError),
    ("get_batch of an unknown execution id", lambda s: s["svc"].get_batch(MISSING_ID), 404,
     lb.ExecutionNotFoundError),
    ("results() of a deleted execution", lambda s: s["dead"].results(), 404,
     lb.ExecutionNotFoundError),
    ("cancel() of a deleted execution", lambda s: s["dead"].cancel(), 404,
     lb.ExecutionNotFoundError),
    ("list_artifacts of a row without a result", lambda s: s["batch"].list_artifacts(99), 404,
     lb.RowNotRecordedError),
    ("artifact of a row without a result", lambda s: s["batch"].artifact(99, "out.txt"), 404,
     lb.RowNotRecordedError),
    ("artifact that the row does not have", lambda s: s["batch"].artifact(0, "other.txt"), 404,
     lb.ArtifactNotFoundError),
    ("download of an artifact the row does not have",
     lambda s: s["batch"].download(0, "other.txt", destination=s["tmp"]), 404,
     lb.ArtifactNotFoundError),
]


@pytest.mark.parametrize("what, call, status, also", TABLE, ids=[row[0] for row in TABLE])
def test_sdk_call_raises_http_exception(sdk, what, call, status, also):
    from azureml.common.http_client import HttpException

    with pytest.raises(HttpException) as info:
        call(sdk)
    exc = info.value
    assert exc.status == status, what
    assert isinstance(exc, also), type(exc).__mro__
    assert str(exc).startswith(f"({status})\nReason: ")
    assert exc.reason  # the localbatch message: what was missing or refused


def test_sdk_client_side_errors_stay_as_the_sdk_raises_them(sdk):
    from azureml.common.http_client import HttpException

    with pytest.raises(ValueError) as info:  # the SDK checks this before any request
        sdk["client"].delete_service("TxService")
    assert not isinstance(info.value, HttpException)
    with pytest.raises(lb.SchemaError) as info:  # cast on the client, as the SDK does
        sdk["svc"].batch(pd.DataFrame({"a": ["x"], "b": [1.0]}))
    assert not isinstance(info.value, HttpException)


def test_returned_objects_keep_working(sdk):
    svc, batch = sdk["svc"], sdk["batch"]
    again = sdk["client"].get_service("TxService", version="1.0")
    assert isinstance(again, lb.Service) and type(again).__name__ == type(svc).__name__
    fetched = svc.get_batch(batch.execution_id)
    assert fetched.results().completed_item_count == 2
    assert fetched.list_artifacts(0) == ["out.txt"]
    assert batch.artifact(1, "out.txt") == b"2.0,0.5"


def test_auth_is_never_refused(azureml_local):
    from azureml.deploy import DeployClient
    from azureml.deploy.server import MLServer

    client = DeployClient(HOST, use=MLServer, auth=("nobody", "wrong"))
    client.authentication(("still", "wrong"))
    assert client.list_services() == []


def test_http_classes_are_exported():
    for name in ("HttpNotFound", "HttpServiceExists", "HttpBadRequest",
                 "HttpExecutionNotFound", "HttpRowNotFound", "HttpArtifactNotFound"):
        cls = getattr(compat, name)
        assert issubclass(cls, compat.HttpException) and issubclass(cls, lb.LocalBatchError)
