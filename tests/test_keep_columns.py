"""Key columns: ``svc.batch(records, keep=[...])`` carries input columns to every output.

The promise: the named columns come back beside the outputs, row for row, with their
values and types, in ``to_frame()``, ``to_parquet()``, CSV and the command line, from
this process and from another one; a name that is not there fails before anything runs.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from output_fns import two_rows
from scoring_fns import add, fail_on_three

from localbatch import DeployClient, SchemaError


@pytest.fixture
def svc(client):
    return (client.service("flaky").version("1.0").code_fn(fail_on_three)
            .inputs(a=float, b=float).outputs(y=float).deploy())


def _cars(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"a": [float(i) for i in range(n)], "b": 1.0,
                         "car": [f"car-{i}" for i in range(n)],
                         "customer_id": [1000 + i for i in range(n)]},
                        index=[f"r{i}" for i in range(n)])


def _run(svc, records, **kw):
    return svc.batch(records, engine="inline", **kw).start().wait(timeout=60)


def test_keys_come_back_beside_the_outputs_with_their_types(svc):
    frame = _run(svc, _cars(), keep=["car", "customer_id"]).to_frame()
    assert list(frame.columns) == ["car", "customer_id", "y", "error"]
    assert frame["car"].tolist() == [f"car-{i}" for i in range(6)]
    assert frame["customer_id"].tolist() == [1000 + i for i in range(6)]
    assert frame.index.tolist() == [f"r{i}" for i in range(6)]
    assert frame.loc["r3", "error"].startswith("ValueError")  # failed rows keep their key
    failed = _run(svc, _cars().drop(columns="customer_id"), keep=["car"]).failed()
    assert list(failed.columns[:2]) == ["row", "car"] and failed["car"].tolist() == ["car-3"]


@pytest.mark.parametrize("form", ["dict", "records", "csv"])
def test_every_input_form_carries_keys(svc, tmp_path, form):
    cars = _cars().reset_index(drop=True)
    cars["car"] = [f"00{i}" for i in range(6)]  # ids that look like numbers stay text
    if form == "dict":
        records = {k: list(v) for k, v in cars.items()}
    elif form == "records":
        records = cars.to_dict("records")
    else:
        records = tmp_path / "cars.csv"
        cars.to_csv(records, index=False)
    frame = _run(svc, records, keep=["car", "customer_id"]).to_frame()
    assert frame["car"].tolist() == [f"00{i}" for i in range(6)]
    assert [str(v) for v in frame["customer_id"]] == [str(1000 + i) for i in range(6)]


def test_an_input_column_can_be_kept_too(svc):
    frame = _run(svc, _cars(3)[["a", "b"]], keep=["a"]).to_frame()
    assert frame["a"].tolist() == [0.0, 1.0, 2.0]


def test_bad_keep_names_fail_before_anything_runs(svc, client):
    with pytest.raises(SchemaError, match="did you mean 'car'"):
        svc.batch(_cars(), keep=["Car"])
    with pytest.raises(SchemaError, match="clash"):
        svc.batch(_cars().rename(columns={"car": "y"}), keep=["y"])
    with pytest.raises(SchemaError, match="twice"):
        svc.batch(_cars(), keep=["car", "car"])
    with pytest.raises(TypeError, match="column name"):
        svc.batch(_cars(), keep=[1])
    assert client.list_executions() == []


def test_keys_repeat_for_multi_row_frame_outputs(client):
    svc = (client.service("two").version("1.0").code_fn(two_rows).inputs(a=float, b=float)
           .outputs(out=pd.DataFrame).deploy())
    frame = _run(svc, _cars(3).drop(columns="customer_id"), keep=["car"]).to_frame()
    assert frame["car"].tolist() == ["car-0", "car-0", "car-1", "car-1", "car-2", "car-2"]
    assert frame["out.v"].tolist() == [0.0, 1.0, 1.0, 1.0, 2.0, 1.0]


def test_keep_is_stored_and_seen_by_another_process(svc, store, tmp_path):
    resp = _run(svc, _cars().drop(columns="customer_id"), keep=["car"])
    assert resp.header["keep"] == ["car"] and resp.keep == ["car"]
    other = DeployClient(str(store)).get_execution(resp.execution_id).results()
    assert other.to_frame()["car"].tolist() == [f"car-{i}" for i in range(6)]
    code = ("import sys; from localbatch import DeployClient\n"
            "c = DeployClient(sys.argv[1]); b = c.get_execution(sys.argv[2])\n"
            "print(b.results().to_frame()['car'].tolist())\n")
    out = subprocess.run([sys.executable, "-c", code, str(store), resp.execution_id],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str([f"car-{i}" for i in range(6)]), out.stderr


def test_to_parquet_and_csv_carry_keys(svc, tmp_path):
    pytest.importorskip("pyarrow")
    resp = _run(svc, _cars().drop(columns="customer_id"), keep=["car"])
    out = tmp_path / "out.parquet"
    resp.to_parquet(out)
    got = pd.read_parquet(out)
    pd.testing.assert_frame_equal(got, resp.to_frame(), check_dtype=False)


def test_cli_keep_to_parquet_and_csv(client, store, tmp_path):
    pytest.importorskip("pyarrow")
    (client.service("add").version("1.0").code_fn(add).inputs(a=float, b=float)
     .outputs(y=float).deploy())
    path = tmp_path / "cars.parquet"
    _cars().reset_index(drop=True).to_parquet(path)
    for out in (tmp_path / "r.parquet", tmp_path / "r.csv"):
        run = subprocess.run([sys.executable, "-m", "localbatch._cli", "--store", str(store),
                              "run", "add", str(path), "--keep", "car", "--keep",
                              "customer_id", "--out", str(out), "-p", "1"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        got = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)
        assert list(got.columns)[-4:] == ["car", "customer_id", "y", "error"]
        assert got["car"].tolist() == [f"car-{i}" for i in range(6)]
    bad = subprocess.run([sys.executable, "-m", "localbatch._cli", "--store", str(store),
                          "run", "add", str(path), "--keep", "cars", "--keep", "customer_id"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 5 and "did you mean 'car'" in bad.stderr


def test_results_command_prints_keys(svc, store):
    resp = _run(svc, _cars().drop(columns="customer_id"), keep=["car"])
    out = subprocess.run([sys.executable, "-m", "localbatch._cli", "--store", str(store),
                          "results", resp.execution_id], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.splitlines()[0] == "index,car,y,error"


def test_key_dtypes_come_back_as_they_went_in(svc):
    n = 6
    frame = pd.DataFrame({
        "a": [float(i) for i in range(n)], "b": 1.0,
        "when": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
        "grade": pd.Categorical(list("abcabc")),
        "small": pd.Series(range(n), dtype="int32"),
        "flag": [True, False] * 3,
        "maybe": pd.array([1, None, 3, None, 5, 6], dtype="Int64"),
        "name": ["x", None, "z", "w", "v", "u"],
        "score": [0.5, float("nan"), 1.5, 2.5, 3.5, 4.5],
    })
    keep = [c for c in frame.columns if c not in ("a", "b")]
    got = _run(svc, frame, keep=keep).to_frame()[keep].reset_index(drop=True)
    want = frame[keep]
    # Categories go through the frame codec: their dtype is its to keep (values are ours).
    assert got["grade"].astype(str).tolist() == list("abcabc")
    keep.remove("grade")
    for name in keep:
        assert got[name].dtype == want[name].dtype, name
    pd.testing.assert_frame_equal(got[keep], want[keep])
