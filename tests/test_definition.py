"""The fluent builders and the SDK's deploy-time rules (nothing here runs a worker)."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from localbatch import (
    InvalidServiceError,
    RealtimeDefinition,
    ServiceDefinition,
    ServiceExistsError,
    ServiceNotFoundError,
)


def score(hp, wt):
    return hp + wt


def init():
    pass


def scale(x, factor=2.0):
    return x * factor


def batch(a):  # a name that would hide Service.batch
    return a


# -- builders -------------------------------------------------------------------------


def test_every_setter_stores_its_value_and_returns_the_builder(client):
    d = client.service("TxService")
    chain = (d.version("1.0").alias("tx").description("about").code_fn(score, init)
             .inputs(hp=float).inputs(wt="float").outputs(answer=pd.DataFrame)
             .models(m1=1).models(m2=2).objects(o1="a").artifacts(["a.csv"])
             .artifact("b.png").artifacts(None).vectorized(False))
    assert chain is d and isinstance(d, ServiceDefinition)
    assert d._defs == {
        "version": "1.0", "alias": "tx", "description": "about", "code_str": None,
        "init_str": None, "code_fn": score, "init_fn": init, "objects": {"o1": "a"},
        "models": {"m1": 1, "m2": 2}, "inputs": {"hp": float, "wt": "float"},
        "outputs": {"answer": pd.DataFrame}, "artifacts": ["a.csv", "b.png"],
        "vectorized": False}
    d.code_str("r = 1", "import os")
    assert (d._defs["code_str"], d._defs["init_str"]) == ("r = 1", "import os")
    text = str(d)
    assert text.startswith("<ServiceDefinition> TxService") and "'about'" in text


def test_artifacts_takes_a_list_not_a_string(client):
    with pytest.raises(ValueError, match=r"\.artifact\('a.csv'\)"):
        client.service("x").artifacts("a.csv")


def test_realtime_builder(client):
    d = client.realtime_service("rt")
    assert isinstance(d, RealtimeDefinition)
    assert d.version("1").alias("go").description("d").serialized_model(object()) is d
    with pytest.raises(ValueError, match="one and only one model"):
        d.serialized_model(object())
    assert not hasattr(d, "code_fn")


# -- deploy-time rules -----------------------------------------------------------------


def _types(svc, key="inputParameterDefinitions"):
    return [(d["name"], d["type"]) for d in svc._service[key]]


def test_types_as_python_types_or_strings(client):
    svc = (client.service("types").version("1").code_str("r = 1")
           .inputs(a=float, b="int", c=str, d="bool", e=np.array, f="numpy.matrix",
                   g=pd.DataFrame, h=list, i=np.ndarray, j="DataFrame")
           .outputs(r=float).deploy())
    assert _types(svc) == [("a", "numeric"), ("b", "integer"), ("c", "character"),
                           ("d", "logical"), ("e", "vector"), ("f", "matrix"),
                           ("g", "data.frame"), ("h", "vector"), ("i", "vector"),
                           ("j", "data.frame")]


@pytest.mark.parametrize("bad", ["numeric", dict, np.float64, "float64"])
def test_unknown_types_are_refused_before_anything_is_written(client, bad):
    with pytest.raises(ValueError, match='for "x"'):
        client.service("bad").version("1").code_str("r = 1").inputs(x=bad).deploy()
    with pytest.raises(InvalidServiceError):
        client.service("bad").version("1").code_str("r = 1").outputs(x=bad).deploy()
    assert client.list_services() == []
    assert not any((client.store_path / "services").glob("*/*/*"))


def test_fn_parameters_fix_the_input_order_and_must_be_declared(client):
    svc = client.service("order").version("1").code_fn(score).inputs(wt=int, hp=float) \
        .outputs(r=float).deploy()
    assert _types(svc) == [("hp", "numeric"), ("wt", "integer")]
    with pytest.raises(ValueError, match=r"parameter 'wt' of score\(\) is not declared"):
        client.service("order").version("2").code_fn(score).inputs(hp=float).deploy()
    with pytest.raises(ValueError, match=r"'extra' are not parameters of score\(\)"):
        client.service("order").version("3").code_fn(score) \
            .inputs(hp=float, wt=float, extra=float).deploy()
    # a parameter with a default may stay undeclared
    svc = client.service("scale").version("1").code_fn(scale).inputs(x=float).deploy()
    assert _types(svc) == [("x", "numeric")]


def test_alias_defaults_to_the_function_name(client):
    svc = client.service("a").version("1").code_fn(score).inputs(hp=float, wt=float).deploy()
    assert svc._service["operationId"] == "score" and callable(svc.score)
    lam = client.service("b").version("1").code_fn(lambda a: a).inputs(a=float).deploy()
    assert lam._service["operationId"] is None and callable(lam.consume)
    code = client.service("c").version("1").code_str("r = a").inputs(a=float).deploy()
    assert code.capabilities()["operation_id"] == "consume" and callable(code.consume)
    named = client.service("d").version("1").code_str("r = a").inputs(a=float) \
        .alias("go").deploy()
    assert named._service["operationId"] == "go" and callable(named.go)


def test_alias_may_not_hide_a_service_member(client):
    with pytest.raises(InvalidServiceError, match="would hide Service.batch"):
        client.service("e").version("1").code_fn(batch).inputs(a=float).deploy()
    with pytest.raises(InvalidServiceError, match="would hide Service.capabilities"):
        client.service("e").version("1").code_fn(score).inputs(hp=float, wt=float) \
            .alias("capabilities").deploy()
    with pytest.raises(InvalidServiceError, match="identifier"):
        client.service("e").version("1").code_str("r = 1").alias("not valid").deploy()
    svc = client.service("e").version("1").code_fn(batch).inputs(a=float) \
        .alias("batch_score").deploy()
    assert callable(svc.batch_score) and svc.batch.__func__ is type(svc).batch


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_a_blank_version_gets_a_generated_unique_one(client, blank):
    versions = set()
    for _ in range(2):
        d = client.service("guid").code_str("r = 1")
        if blank is not None:
            d.version(blank)
        versions.add(d.deploy().version)
    assert len(versions) == 2
    for v in versions:
        assert str(uuid.UUID(v)) == v


def test_code_str_wins_over_code_fn_and_keeps_insertion_order(client):
    svc = (client.service("both").version("1").code_fn(score).code_str("r = b - a")
           .inputs(b=float, a=float).deploy())
    assert _types(svc) == [("b", "numeric"), ("a", "numeric")]
    assert svc._service["code"] == "r = b - a" and svc._service["operationId"] is None


def test_code_text_is_the_sdk_s(client):
    svc = client.service("text").version("1").code_fn(score, init) \
        .inputs(hp=float, wt=float).outputs(answer=float).deploy()
    meta = svc._service
    assert "def score(hp, wt):" in meta["code"]
    assert meta["code"].endswith("answer = score(hp, wt)")
    assert "def init():" in meta["initCode"] and meta["initCode"].endswith("init()")


def test_deploy_and_redeploy_dict_forms(client):
    first = client.deploy_service("dict", version="1", code_fn=score, init_fn=init,
                                  inputs={"hp": float, "wt": float}, outputs={"r": float},
                                  artifacts=["out.csv"], description="one")
    assert first.version == "1" and first._service["outputFileNames"] == ["out.csv"]
    client.deploy_service("dict", version="2", code_str="r = 1", inputs={"q": int},
                          outputs={"r": int})
    # no version: the latest (2); IO left unset keeps the old IO
    again = client.redeploy_service("dict", code_str="r = q * 3", description="three")
    assert again.version == "2" and again._service["description"] == "three"
    assert _types(again) == [("q", "integer")]
    assert _types(again, "outputParameterDefinitions") == [("r", "integer")]
    # an explicit version, new IO
    new_io = client.redeploy_service("dict", version="1", code_fn=scale,
                                     inputs={"x": float}, outputs={"y": float})
    assert _types(new_io) == [("x", "numeric")]
    assert new_io._service["outputFileNames"] == ["out.csv"]  # artifacts kept too
    with pytest.raises(ValueError, match="unknown service option.*colour"):
        client.deploy_service("dict", version="9", code_str="r = 1", colour="red")


def test_redeploy_via_builder_swaps_the_revision(client):
    d = client.service("swap").version("1").code_str("r = a").inputs(a=float).outputs(r=float)
    old = d.deploy()
    new = client.service("swap").version("1").code_str("r = a + 1").redeploy()
    assert new._record.revision != old._record.revision
    assert client.get_service("swap", version="1")._service["code"] == "r = a + 1"
    assert len(client.list_services("swap")) == 1


def test_deploy_twice_and_redeploy_nothing_are_clear_errors(client):
    client.service("twice").version("1").code_str("r = 1").deploy()
    with pytest.raises(ServiceExistsError, match="already exists: use redeploy"):
        client.service("twice").version("1").code_str("r = 2").deploy()
    with pytest.raises(ServiceNotFoundError) as info:
        client.service("never").code_str("r = 1").redeploy()
    assert isinstance(info.value, ValueError)  # what the SDK raised
    with pytest.raises(ServiceNotFoundError):
        client.service("twice").version("7").code_str("r = 1").redeploy()


def test_a_service_needs_code(client):
    with pytest.raises(InvalidServiceError, match="needs code"):
        client.service("nocode").version("1").inputs(a=float).deploy()
    with pytest.raises(InvalidServiceError, match="does not compile"):
        client.service("nocode").version("1").code_str("r = (").deploy()
    with pytest.raises(InvalidServiceError, match="plain file name"):
        client.service("nocode").version("1").code_str("r = 1").artifact("../x").deploy()
    with pytest.raises(InvalidServiceError, match="identifier"):
        client.service("nocode").version("1").code_str("r = 1").models(**{"a b": 1}).deploy()


# -- documents -------------------------------------------------------------------------

SDK_CAPABILITY_KEYS = {"api", "name", "version", "description", "published_by", "runtime",
                       "creation_time", "snapshot_id", "inputs", "outputs", "inputs_encoded",
                       "outputs_encoded", "artifacts", "operation_id", "swagger",
                       "public-functions"}


def test_capabilities_have_exactly_the_sdk_keys(client):
    svc = client.service("TxService").version("1.0").code_fn(score) \
        .inputs(hp=float, wt=int).outputs(answer=pd.DataFrame).description("d") \
        .artifacts(["answer.csv"]).deploy()
    caps = svc.capabilities()
    assert set(caps) == SDK_CAPABILITY_KEYS and caps.get("alias") is None
    assert caps["api"] == "/api/TxService/1.0"
    assert caps["swagger"] == "http://localhost:12800/api/TxService/1.0/swagger.json"
    assert caps["inputs"] == [{"name": "hp", "type": "numeric"},
                              {"name": "wt", "type": "integer"}]
    assert caps["inputs_encoded"] == [{"name": "hp", "type": "float"},
                                      {"name": "wt", "type": "int"}]
    assert caps["outputs_encoded"] == [{"name": "answer", "type": "pandas.DataFrame"}]
    assert caps["artifacts"] == ["answer.csv"] and caps["operation_id"] == "score"
    assert caps["runtime"] == "Python" and caps["description"] == "d"
    assert caps["public-functions"] == {
        "score": "score(self,hp,wt)", "capabilities": "capabilities()",
        "swagger": "swagger(json=True)", "get_batch": "get_batch(execution_id)",
        "list_batch_execution": "list_batch_execution()",
        "batch": "batch(records, parallel_count=10)"}
    # every advertised function exists (the SDK's bug B7 fixed)
    for sig in caps["public-functions"].values():
        assert callable(getattr(svc, sig.split("(")[0]))


def test_swagger_is_a_swagger_2_json_text(client):
    import json

    svc = client.service("Doc").version("2").code_fn(score).inputs(hp=float, wt=int) \
        .outputs(answer=pd.DataFrame).description("about").deploy()
    text = svc.swagger()
    assert isinstance(text, str) and svc.swagger(json=True) == text
    doc = json.loads(text)
    assert doc["swagger"] == "2.0"
    assert doc["info"] == {"description": "about", "title": "Doc", "version": "2"}
    paths = doc["paths"]
    assert paths["/api/Doc/2"]["post"]["operationId"] == "score"
    assert paths["/api/Doc/2/batch"]["post"]["operationId"] == "StartBatchExecution"
    assert paths["/api/Doc/2/batch"]["get"]["operationId"] == "GetBatchExecutions"
    assert set(paths["/api/Doc/2/batch/{executionId}"]) == {"get", "delete"}
    assert "/api/Doc/2/batch/{executionId}/{index}/files" in paths
    assert "/api/Doc/2/batch/{executionId}/{index}/files/{fileName}" in paths
    props = doc["definitions"]["InputParameters"]["properties"]
    assert props["hp"] == {"type": "number", "description": "numeric"}
    assert props["wt"] == {"type": "integer", "description": "integer"}
    assert doc["definitions"]["OutputParameters"]["properties"]["answer"] == {
        "type": "object", "description": "data.frame"}
