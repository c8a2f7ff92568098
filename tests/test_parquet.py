"""Parquet and Arrow input and output: streamed by row group, cast like a DataFrame.

Each test tries to break one promise: same rows and values as the DataFrame path,
lossless casting with errors naming file, row group and row, several windows and
retried rows written exactly like ``to_frame()``, and the install hint without pyarrow.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from scoring_fns import add, fail_on_three  # noqa: E402

from localbatch import InputFileError, SchemaError  # noqa: E402


@pytest.fixture
def svc(client):
    return (client.service("add").version("1.0").code_fn(add).inputs(a=float, b=float)
            .outputs(y=float).deploy())


@pytest.fixture
def flaky(client):
    return (client.service("flaky").version("1.0").code_fn(fail_on_three)
            .inputs(a=float, b=float).outputs(y=float).deploy())


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"a": np.arange(n, dtype=float), "b": 0.5,
                         "car": [f"car{i:03d}" for i in range(n)]})


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal tables, a missing value being missing whatever its spelling (None, NaN)."""
    def plain(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.astype(object).where(frame.notna(), None)

    pd.testing.assert_frame_equal(plain(got), plain(want), check_dtype=False)


def _run(svc, records, **kw):
    return svc.batch(records, engine="inline", **kw).start().wait(timeout=60)


@pytest.fixture
def small_spool(monkeypatch):
    """Seven-row spool parts: several windows without a big input."""
    import localbatch._store.arrow as arrow
    import localbatch._store.keys as keys
    import localbatch._store.spool as spool

    for mod in (spool, arrow, keys):
        monkeypatch.setattr(mod, "SPOOL_ROWS", 7)


def test_parquet_file_scores_like_the_dataframe(svc, tmp_path):
    frame = _frame(25)
    path = tmp_path / "in.parquet"
    frame.to_parquet(path, row_group_size=10)
    got = _run(svc, path, keep=["car"]).to_frame()
    want = _run(svc, frame, keep=["car"]).to_frame()
    pd.testing.assert_frame_equal(got, want)
    assert _run(svc, str(path), keep="car").completed_item_count == 25


def test_folder_table_and_reader_inputs(svc, tmp_path, small_spool):
    frame = _frame(30)[["a", "b"]]
    folder = tmp_path / "parts"
    folder.mkdir()
    frame.iloc[:12].to_parquet(folder / "a.parquet")
    frame.iloc[12:].to_parquet(folder / "b.parquet")
    (folder / "notes.txt").write_text("not a part")
    want = _run(svc, frame[["a", "b"]]).to_frame()
    for records in (folder, pa.table(frame), pa.table(frame).to_reader(max_chunksize=4)):
        pd.testing.assert_frame_equal(_run(svc, records).to_frame(), want)


def test_cast_errors_name_file_row_group_and_row(client, tmp_path):
    svc = (client.service("ints").version("1.0").code_fn(add).inputs(a=int, b=float)
           .outputs(y=float).deploy())
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"a": [1.0] * 12 + [2.9] + [1.0] * 3, "b": 0.5}).to_parquet(
        path, row_group_size=5)
    batch = svc.batch(path, engine="inline")
    with pytest.raises(InputFileError) as info:
        batch.start()
    text = str(info.value)
    assert str(path) in text and "row group 2" in text and "row 12" in text and "2.9" in text
    assert client.list_executions() == []  # nothing was published


def test_ints_with_nulls_stay_exact(client, tmp_path):
    svc = (client.service("echo").version("1.0").code_str("y = str(a)", None)
           .inputs(a=int).outputs(y=str).deploy())
    big = 2**53 + 1
    table = pa.table({"a": pa.array([big, None, 7], pa.int64())})
    got = _run(svc, table).to_frame()["y"].tolist()
    assert got == [str(big), "None", "7"]


def test_missing_input_column_is_a_schema_error(svc, tmp_path):
    path = tmp_path / "in.parquet"
    pd.DataFrame({"A": [1.0], "b": [2.0]}).to_parquet(path)
    with pytest.raises(SchemaError, match="did you mean 'A'") as info:
        svc.batch(path)
    assert str(info.value).startswith(str(path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no .parquet files"):
        svc.batch(tmp_path / "empty")
    with pytest.raises(InputFileError, match="no such file"):
        svc.batch(tmp_path / "missing.parquet")


def test_to_parquet_equals_to_frame_across_windows_and_retries(flaky, tmp_path, small_spool):
    frame = _frame(40)
    batch = flaky.batch(frame, keep=["car"], engine="inline").start()
    batch.wait(timeout=60)
    batch.retry_failed()  # row 3 gets a second record in a later part
    resp = batch.wait(timeout=60)
    out = tmp_path / "out.parquet"
    assert resp.to_parquet(out) == 40
    got = pd.read_parquet(out)
    want = resp.to_frame()
    assert list(got.columns) == ["car", "y", "error"]
    _same(got, want)
    assert got.loc[3, "error"].startswith("ValueError")


def test_to_parquet_of_partial_and_empty_results(svc, tmp_path):
    resp = _run(svc, _frame(5)[["a", "b"]])
    out = tmp_path / "o.parquet"
    resp.to_parquet(out)
    assert len(pd.read_parquet(out)) == 5
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temp file and a rename


def test_without_pyarrow_the_error_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['pyarrow'] = None\n"
            "from localbatch._store.arrow import require_pyarrow\n"
            "try:\n    require_pyarrow()\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert 'pip install "localbatch[parquet]"' in out.stdout, out.stderr


def test_local_engine_reads_parquet(svc, tmp_path):
    path = tmp_path / "in.parquet"
    _frame(50)[["a", "b"]].to_parquet(path)
    resp = svc.batch(path, parallel_count=2).start().wait(timeout=60)
    assert resp.state == "Complete" and resp.completed_item_count == 50
    assert resp.to_frame()["y"].tolist() == [i * 2.0 + 0.5 for i in range(50)]


def test_to_parquet_of_multi_row_frame_outputs(client, tmp_path, small_spool):
    from output_fns import two_rows

    svc = (client.service("two").version("1.0").code_fn(two_rows).inputs(a=float, b=float)
           .outputs(out=pd.DataFrame).deploy())
    frame = _frame(20)
    resp = _run(svc, frame, keep=["car"])
    out = tmp_path / "long.parquet"
    assert resp.to_parquet(out) == 40
    _same(pd.read_parquet(out), resp.to_frame())


def test_to_parquet_types_columns_missing_in_the_first_part(client, tmp_path, small_spool):
    svc = (client.service("text").version("1.0")
           .code_str("y = None if a == 3 else str(a)", None)
           .inputs(a=float, b=float).outputs(y=str).deploy())
    frame = _frame(20)[["a", "b"]]
    frame.loc[:6, "a"] = 3.0  # y is missing in the whole first part: no type to see there
    resp = _run(svc, frame)
    out = tmp_path / "o.parquet"
    resp.to_parquet(out)
    schema = pq.read_schema(out)
    assert "string" in str(schema.field("y").type)
    assert "string" in str(schema.field("error").type)
    _same(pd.read_parquet(out), resp.to_frame())


# -- property: Parquet input is cast exactly like the same DataFrame ---------------------

_VALUES = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=True, allow_infinity=True))


@pytest.mark.parametrize("declared", [int, float])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_VALUES, min_size=1, max_size=6), as_float=st.booleans())
def test_parquet_casts_like_the_dataframe(client, tmp_path, declared, values, as_float):
    """Same column through Parquet and through a DataFrame: same values, or both refused."""
    name = f"echo-{declared.__name__}"
    try:
        svc = client.get_service(name)
    except LookupError:
        svc = (client.service(name).version("1.0").code_str("y = repr(a)", None)
               .inputs(a=declared).outputs(y=str).deploy())
    if as_float or any(isinstance(v, float) for v in values):
        column = pa.array([None if v is None else float(v) for v in values], pa.float64())
    else:
        column = pa.array(values, pa.int64())
    table = pa.table({"a": column})
    frame = table.to_pandas(integer_object_nulls=True)
    results = []
    for records in (table, frame):
        try:
            results.append(_run(svc, records).to_frame()["y"].tolist())
        except SchemaError as exc:
            text = str(exc)  # the same reason; where it is named differs (Table: row N)
            results.append(f"refused: {text[text.find('Invalid'):]}")
    assert results[0] == results[1]
