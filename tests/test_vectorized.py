"""Vectorised services: one call per chunk with columns, bisection on errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from localbatch import InvalidServiceError

pytestmark = pytest.mark.timeout(60)


def predict(hp, wt):
    if (hp < 0).any():
        raise ValueError("negative hp")
    print(f"chunk of {len(hp)}")
    return hp * 0.01 - wt


def two(hp, wt):
    return {"s": hp + wt, "d": hp - wt}


def test_vectorized_matches_per_row_and_bisects_errors(client):
    svc = (client.service("vec").version("1").code_fn(predict).inputs(hp=float, wt=float)
           .outputs(am=float).vectorized().deploy())
    frame = pd.DataFrame({"hp": np.arange(500.0), "wt": np.linspace(1, 5, 500)})
    frame.loc[[17, 333], "hp"] = -1.0
    resp = svc.batch(frame, parallel_count=2).start().wait(timeout=30)
    assert resp.state == "Complete" and resp.failed_item_count == 2
    out = resp.to_frame()
    ok = out.drop(index=[17, 333])
    expect = (frame["hp"] * 0.01 - frame["wt"]).drop(index=[17, 333])
    assert np.allclose(ok["am"], expect)
    assert resp.execution(17).error == "ValueError: negative hp"
    assert resp.execution(333).error == "ValueError: negative hp"
    # A chunk's console output goes to its first row only.
    consoles = [resp.execution(i).console_output for i in range(500)]
    assert all(c.startswith("chunk of ") for c in consoles if c)
    assert sum(1 for c in consoles if c) < 500


def test_vectorized_multiple_outputs(client):
    svc = (client.service("two").version("1").code_fn(two).inputs(hp=float, wt=float)
           .outputs(s=float, d=float).vectorized().deploy())
    resp = svc.batch({"hp": [1.0, 2.0], "wt": [0.5, 0.25]}).start().wait(timeout=30)
    assert resp.to_frame()[["s", "d"]].values.tolist() == [[1.5, 0.5], [2.25, 1.75]]


def test_vectorized_with_artifacts_is_a_deploy_error(client):
    with pytest.raises(InvalidServiceError, match="vectorized"):
        (client.service("bad").version("1").code_fn(predict).inputs(hp=float, wt=float)
         .outputs(am=float).artifacts(["x.csv"]).vectorized().deploy())
