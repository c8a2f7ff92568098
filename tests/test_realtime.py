"""Realtime services: one fitted model with ``.predict(DataFrame)``, consumed with a frame."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from localbatch import InvalidServiceError


class Doubler:
    """A model defined by the user (pickled by value): two prediction columns."""

    def predict(self, frame):
        return np.column_stack([frame["hp"] * 2, frame["wt"] * 2])


def test_statsmodels_results_via_builder_and_deploy_realtime(client, mtcars):
    import statsmodels.formula.api as smf

    model = smf.ols("am ~ hp + wt", data=mtcars).fit()
    svc = client.realtime_service("LinModService").version("1.0") \
        .serialized_model(model).description("realtime").deploy()
    assert type(svc).__name__ == "LinmodserviceService"
    assert list(inspect.signature(svc.consume).parameters) == ["inputData"]
    caps = svc.capabilities()
    assert caps["runtime"] == "Realtime" and caps["operation_id"] == "consume"
    assert caps["inputs"] == [{"name": "inputData", "type": "data.frame"}]
    assert caps["outputs"] == [{"name": "outputData", "type": "data.frame"}]
    assert caps["artifacts"] == []

    frame = mtcars[["hp", "wt"]].head(5)
    res = svc.consume(frame)
    assert res.error == ""
    out = res.outputs["outputData"]
    assert isinstance(out, pd.DataFrame) and len(out) == 5
    assert list(out.columns) == ["am_Pred"]
    np.testing.assert_allclose(out["am_Pred"], model.predict(frame))
    one = svc.consume(mtcars[["hp", "wt"]].iloc[[3]])
    assert len(one.outputs["outputData"]) == 1

    # the dict form, with an alias, and a model of the user's own class
    other = client.deploy_realtime("doubler", version="1", serialized_model=Doubler(),
                                   alias="predict_it")
    res = other.predict_it(pd.DataFrame({"hp": [1.0, 2.0, 3.0], "wt": [0.5, 1.0, 1.5]}))
    assert res.error == ""
    assert res.outputs["outputData"].to_numpy().tolist() == [[2, 1], [4, 2], [6, 3]]


def test_realtime_deploy_rules(client):
    with pytest.raises(ValueError, match="can't be None"):
        client.deploy_realtime("rt", version="1")
    with pytest.raises(InvalidServiceError, match=r"no \.predict"):
        client.realtime_service("rt").version("1").serialized_model(object()).deploy()
    with pytest.raises(ValueError, match="unknown service option"):
        client.deploy_realtime("rt", version="1", serialized_model=Doubler(), code_str="x")
    client.deploy_realtime("rt", version="1", serialized_model=Doubler())
    with pytest.raises(ValueError, match="Missing the required parameter `version`"):
        client.redeploy_realtime("rt", serialized_model=Doubler())
    again = client.realtime_service("rt").version("1").serialized_model(Doubler()) \
        .description("new").redeploy()
    assert again._service["description"] == "new" and again._service["runtimeType"] == "Realtime"
