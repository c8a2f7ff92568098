"""The seed flow (DESIGN §1) end to end on mtcars, under every worker start method."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

pytestmark = pytest.mark.startmethods

START_METHODS = ["spawn", "forkserver"]


def init():
    import pandas as pd  # noqa: F401 - the SDK sample's init loads what the service needs


def manualTransmission(hp, wt):  # noqa: N802 - the SDK sample's name
    import pandas as pd

    newdata = pd.DataFrame({"hp": [hp], "wt": [wt]})
    answer = pd.DataFrame({"am_Pred": cars_model.predict(newdata)})  # noqa: F821 - a model
    answer.to_csv("answer.csv")
    return answer


@pytest.fixture
def tx_service(client, mtcars):
    cars_model = smf.ols("am ~ hp + wt", data=mtcars).fit()
    svc = (client.service("TxService").version("1.0")
           .code_fn(manualTransmission, init).inputs(hp=float, wt=float)
           .outputs(answer=pd.DataFrame).models(cars_model=cars_model)
           .description("My first python model").artifacts(["answer.csv"]).deploy())
    return svc, cars_model.predict(mtcars[["hp", "wt"]]).to_numpy()


@pytest.mark.parametrize("start_method", START_METHODS)
def test_seed_flow(tx_service, mtcars, tmp_path, start_method):
    svc, expected = tx_service
    batch = svc.batch(mtcars[["hp", "wt"]], parallel_count=2, start_method=start_method)
    batch = batch.start()
    deadline = time.monotonic() + 60
    while True:  # the SDK sample's poll loop
        r = batch.results()
        if r.state in ("Failed", "Complete"):
            break
        assert time.monotonic() < deadline, "batch did not finish"
        time.sleep(0.05)
    batch.wait(30)  # the owner hands its workers back
    assert (r.state, r.completed_item_count, r.total_item_count) == ("Complete", 32, 32)
    assert r.failed_item_count == 0
    answer = r.execution(3).outputs["answer"]
    assert list(answer.columns) == ["am_Pred"]
    assert answer["am_Pred"].iloc[0] == pytest.approx(expected[3])
    got = [r.execution(i).outputs["answer"]["am_Pred"].iloc[0] for i in range(32)]
    np.testing.assert_allclose(got, expected)
    assert batch.list_artifacts(1) == ["answer.csv"]
    csv = batch.artifact(1, "answer.csv").decode()
    assert csv.splitlines()[0] == ",am_Pred"
    assert float(csv.splitlines()[1].split(",")[1]) == pytest.approx(expected[1])
    paths = batch.download(1, "answer.csv", destination=str(tmp_path))
    assert paths == [str(tmp_path / "answer.csv")]
    again = svc.get_batch(batch.execution_id)
    assert again.execution_id in svc.list_batch_executions() and again.state == "Complete"
    frame = r.to_frame()
    assert list(frame.columns) == ["answer.am_Pred", "error"]
    np.testing.assert_allclose(frame["answer.am_Pred"].to_numpy(), expected)
    assert frame.index.tolist() == mtcars.index.tolist()
    assert batch.cancel() is batch and batch.state == "Complete"
    header = r.header
    assert header["options"]["start_method"] == start_method


@pytest.mark.parametrize("start_method", START_METHODS)
def test_failed_rows_under_each_start_method(client, start_method):
    import scoring_fns

    svc = (client.service("flaky").version("1").code_fn(scoring_fns.fail_on_three)
           .inputs(a=int, b=int).outputs(answer=int).deploy())
    r = svc.batch({"a": [1, 3, 5], "b": [0, 0, 0]}, parallel_count=2,
                  start_method=start_method).start().wait(30)
    assert (r.state, r.failed_item_count) == ("Complete", 1)
    assert r.execution(1).error == "ValueError: bad row 3"
    assert r.execution(2).outputs["answer"] == 5


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_cancel_is_prompt_under_each_start_method(client, start_method):
    import scoring_fns

    slow = (client.service("slow").version("1").code_fn(scoring_fns.slow)
            .inputs(a=float, b=float).outputs(answer=float).deploy())
    batch = slow.batch({"a": [1.0] * 40, "b": [0.05] * 40}, parallel_count=2,
                       start_method=start_method).start()
    deadline = time.monotonic() + 30
    while batch.state == "Pending" and time.monotonic() < deadline:
        time.sleep(0.01)  # let the workers start: cancel must kill running rows
    t0 = time.monotonic()
    assert batch.cancel() is batch
    spent = time.monotonic() - t0
    assert batch.state == "Canceled"
    assert batch.results().completed_item_count < 40
    assert spent < 3.0, f"cancel() took {spent:.1f}s"
