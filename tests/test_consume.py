"""Request-response consumption: ``svc.<alias>(...)`` in a warm worker process.

Each service below starts one worker on its first call; the calls of a test
reuse it, so these tests are few and each checks many things.
"""

from __future__ import annotations

import base64
import inspect
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from localbatch import Service, ServiceResponse


def init():
    import pandas as pd  # noqa: F401 - the SDK sample's init


def manualTransmission(hp, wt):
    import pandas as pd

    newdata = pd.DataFrame({"hp": [hp], "wt": [wt]})
    answer = pd.DataFrame({"am_Pred": cars_model.predict(newdata)})  # noqa: F821 - a model
    answer.to_csv("answer.csv")
    with open("undeclared.txt", "w") as fh:
        fh.write("not an artifact")
    print("scored", hp, wt)
    return answer


def test_the_sdk_sample_consumed(client, mtcars):
    import statsmodels.formula.api as smf

    cars_model = smf.ols("am ~ hp + wt", data=mtcars).fit()
    svc = (client.service("TxService").version("1.0").code_fn(manualTransmission, init)
           .inputs(hp=float, wt=float).outputs(answer=pd.DataFrame)
           .models(cars_model=cars_model).description("My first python model")
           .artifacts(["answer.csv", "image.png"]).deploy())
    assert type(svc).__name__ == "TxserviceService" and isinstance(svc, Service)
    assert list(inspect.signature(svc.manualTransmission).parameters) == ["hp", "wt"]
    doc = inspect.getdoc(svc.manualTransmission)
    assert doc.startswith("Consume the TxService service.\n\nMy first python model")
    assert ":param float hp: The required service input." in doc
    assert "Output: pandas.DataFrame answer" in doc
    assert ":returns ServiceResponse:" in doc and "ValueError: If argument input types" in doc

    res = svc.manualTransmission(120, 2.8)
    assert isinstance(res, ServiceResponse)
    expected = float(cars_model.predict(pd.DataFrame({"hp": [120.0], "wt": [2.8]}))[0])
    assert res.error == "" and res.api == "/api/TxService/1.0"
    answer = res.outputs["answer"]
    assert isinstance(answer, pd.DataFrame) and list(answer.columns) == ["am_Pred"]
    assert answer["am_Pred"].tolist() == pytest.approx([expected])
    assert res.output("answer").equals(answer) and res.output("nope") is None
    assert res.raw_outputs == {"answer": {"am_Pred": [pytest.approx(expected)]}}
    assert "scored 120.0 2.8" in res.console_output

    # artifacts: {declared name: base64 text or None}, as the SDK returns them
    assert set(res.artifacts) == {"answer.csv", "image.png"}
    assert res.artifacts["image.png"] is None
    csv = res.artifact("answer.csv")
    assert csv == answer.to_csv().encode() and csv.startswith(b",am_Pred\n0,")
    assert res.artifact("answer.csv", decode=False) == base64.b64encode(csv).decode()
    assert res.artifact("answer.csv", encoding="utf-8") == csv.decode()
    assert res.artifact("image.png") is None and res.artifact("undeclared.txt") is None

    # the SDK's str() layout
    text = str(res)
    assert text.startswith("<ServiceResponse> \n   api: /api/TxService/1.0 \n   error: \n")
    assert "\n   console_output: scored" in text and "\n   outputs: {'answer':" in text
    assert "\n   raw_outputs: {'answer': {'am_Pred': [" in text
    assert text.split("\n")[-1].startswith("   artifacts: {'answer.csv': '")

    # keyword arguments, a second call in the same worker
    again = svc.manualTransmission(wt=2.8, hp=120)
    assert again.outputs["answer"].equals(answer)
    with pytest.raises(TypeError):
        svc.manualTransmission(120)


def count_init():
    global counter
    import os

    counter = 10
    with open(init_log, "a") as fh:  # noqa: F821 - an object of the service
        fh.write(f"{os.getpid()}\n")


def count_call(a):
    global counter
    import os

    counter += 1
    return {"n": counter, "pid": os.getpid()}


def test_init_once_per_worker_and_a_fresh_copy_of_its_globals_per_call(client, tmp_path: Path):
    log = tmp_path / "init.log"
    svc = (client.service("counter").version("1").code_fn(count_call, count_init)
           .inputs(a=float).outputs(n=int, pid=int).objects(init_log=str(log)).deploy())
    results = [svc.count_call(k) for k in range(3)]
    assert [r.error for r in results] == ["", "", ""]
    # a dict keyed by the declared outputs fills several of them
    assert [r.outputs["n"] for r in results] == [11, 11, 11]
    pids = {r.outputs["pid"] for r in results}
    assert len(pids) == 1 and pids != {os.getpid()}
    assert log.read_text().split() == [str(pids.pop())]
    assert "counter" not in globals()  # the caller's globals are its own


def misbehave(mode, n, x, flag, s):
    import os
    import sys

    if mode == "raise":
        raise ValueError(f"bad n={n}")
    if mode == "exit":
        sys.exit(3)
    if mode == "kbd":
        raise KeyboardInterrupt
    if mode == "chdir":
        os.chdir("/")
    if mode == "die":
        os._exit(7)
    print("types", *(type(v).__name__ for v in (n, x, flag, s)))
    return {"out": f"{n}|{x}|{flag}|{s}", "pid": os.getpid()}


def test_errors_are_data_and_the_caller_is_unaffected(client):
    svc = (client.service("misbehave").version("1").code_fn(misbehave)
           .inputs(mode=str, n=int, x=float, flag=bool, s=str).outputs(out=str, pid=int)
           .deploy())
    assert list(inspect.signature(svc.misbehave).parameters) == ["mode", "n", "x", "flag", "s"]
    # lossless casting: numpy scalars are fine and reach the code as Python types
    ok = svc.misbehave("ok", np.int64(2), np.float32(0.5), np.bool_(True), np.str_("a"))
    assert ok.error == "" and ok.outputs["out"] == "2|0.5|True|a"
    assert "types int float bool str" in ok.console_output
    pid = ok.outputs["pid"]

    raised = svc.misbehave("raise", 2, 1.0, False, "s")
    assert raised.error == "ValueError: bad n=2"
    assert raised.outputs == {"out": None, "pid": None}
    assert "in misbehave" in raised.traceback and raised.traceback.rstrip().endswith(
        "ValueError: bad n=2")
    assert svc.misbehave("exit", 1, 1.0, False, "s").error == "SystemExit: 3"
    assert svc.misbehave("kbd", 1, 1.0, False, "s").error == "KeyboardInterrupt"

    cwd = os.getcwd()
    assert svc.misbehave("chdir", 1, 1.0, False, "s").error == ""
    assert os.getcwd() == cwd
    # the worker survived all of that
    assert svc.misbehave("ok", 1, 1.0, False, "s").outputs["pid"] == pid

    died = svc.misbehave("die", 1, 1.0, False, "s")
    assert died.error.startswith("WorkerDied: worker died") and "7" in died.error
    after = svc.misbehave("ok", 3, 1.0, True, "z")
    assert after.error == "" and after.outputs["pid"] != pid

    # lossy inputs are refused in the caller, naming input and value
    for args, name, shown in ((("ok", 2.9, 1.0, True, "a"), "n", "2.9"),
                              (("ok", 2, 1.0, "False", "a"), "flag", "'False'"),
                              (("ok", 2, 1.0, True, 3), "s", "3")):
        with pytest.raises(ValueError, match=f"'{name}'.*{shown}"):
            svc.misbehave(*args)


CODE = """
calls = calls + 1
total = (a + b) * scale + offset
if a > 100:
    big = True
"""


def test_code_str_binds_inputs_and_reads_outputs_from_variables(client):
    name = "a!b@c#d$e%f^g&h*i(j)k-l+m.n,o<p_alphanumeric"
    svc = (client.service(name).version("1").code_str(CODE, "offset = 0.5\ncalls = 0")
           .inputs(a=float, b=float).outputs(total=float, big=bool, calls=int)
           .models(scale=2.0).deploy())
    assert type(svc).__name__ == "ABCDEFGHIJKLMNOPAlphanumericService"
    assert list(inspect.signature(svc.consume).parameters) == ["a", "b"]
    small = svc.consume(1, 2)
    assert small.error == "" and small.outputs == {"total": 6.5, "big": None, "calls": 1}
    large = svc.consume(a=200, b=0)
    assert large.outputs == {"total": 400.5, "big": True, "calls": 1}
    with pytest.raises(ValueError, match="'b'"):
        svc.consume(1, "x")


def test_class_names_follow_the_sdk(client):
    for name, cls in (("12345", "Service12345Service"), ("test", "TestService"),
                      ("LinModService", "LinmodserviceService"),
                      ("model2go v1", "Model2GoV1Service")):
        svc = client.service(name).version("1").code_str("r = 1").deploy()
        assert type(svc).__name__ == cls
        assert str(svc).startswith(f"<{cls}> \n")


def test_service_response_from_the_sdk_s_fixture():
    """The SDK's test_service_response_object_creation, then its bug B13 fixed."""
    import warnings

    frame = {"n": [2.0, 3.0, 5.0], "s": ["aa", "bb", "cc"], "b": [True, False, True]}
    schema = [{"name": "out_int", "type": "integer"}, {"name": "out_float", "type": "numeric"},
              {"name": "out_str", "type": "character"}, {"name": "out_bool", "type": "logical"},
              {"name": "out_numpy.array", "type": "vector"},
              {"name": "out_numpy.matrix", "type": "matrix"},
              {"name": "out_pandas.DataFrame", "type": "data.frame"}]
    raw = {"out_int": 5, "out_float": 4.567, "out_str": "MLServer", "out_bool": True,
           "out_numpy.array": [1, 2, 3], "out_numpy.matrix": [[1, 2], [3, 4]],
           "out_pandas.DataFrame": frame}
    response = {"success": True, "errorMessage": "NameError: name 'p' is not defined",
                "consoleOutput": "{'a': 5}", "changedFiles": ["file1.png"],
                "outputParameters": raw,
                "outputFiles": {"file1.png": base64.b64encode(b"png").decode()}}
    sr = ServiceResponse("/api/TestService/v1", response, schema)
    assert sr.error == response["errorMessage"] and sr.console_output == "{'a': 5}"
    assert sr.api == "/api/TestService/v1" and sr.raw_outputs == raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        outs = sr.outputs
        assert np.all(outs["out_numpy.matrix"] == np.matrix([[1, 2], [3, 4]]))
    assert (outs["out_int"], outs["out_float"], outs["out_str"], outs["out_bool"]) == (
        5, 4.567, "MLServer", True)
    assert np.all(sr.output("out_numpy.array") == np.array([1, 2, 3]))
    assert sr.output("out_pandas.DataFrame").equals(pd.DataFrame(frame))
    assert sr.artifact("file1.png") == b"png" and sr.artifact("file2.png") is None
    bad = ServiceResponse("/api/x/1", {"outputFiles": {"f": "%%%"}}, [])
    with pytest.raises(ValueError, match="Artifact b64decode error"):
        bad.artifact("f")
    assert bad.artifact("f", decode=False) == "%%%"
    # no outputFiles, no outputs: a dict and an empty dict, never an AttributeError
    empty = ServiceResponse("/api/x/1", {}, [{"name": "r", "type": "numeric"}])
    assert empty.artifacts == {} and empty.artifact("x") is None
    assert empty.outputs == {"r": None} and empty.error == "" and empty.console_output == ""


def loud_init():
    import os

    os.write(1, b"init on fd 1\n")  # below Python: C code, a child process
    print("init printed")
    raise RuntimeError("no model today")


def never_runs(a):
    return a


def test_a_failed_init_says_what_it_wrote_to_fd_1_and_2_too(client):
    svc = (client.service("loud-init").version("1").code_fn(never_runs, loud_init)
           .inputs(a=float).outputs(y=float).deploy())
    res = svc.never_runs(1.0)
    assert "no model today" in res.error
    assert res.console_output == "init on fd 1\ninit printed\n"
