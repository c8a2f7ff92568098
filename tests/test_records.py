"""Every accepted form of ``records``, the SDK's record-order test, and schema errors.

Schema errors raise in ``svc.batch()`` (CSV/TSV values, which stream, at ``start()``)
and leave no execution behind.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scoring_fns
from hypothesis import given, settings
from hypothesis import strategies as st

from localbatch import InputFileError, LocalBatchWarning, SchemaError


def describe(x, n, s, flag):
    """What the row received, as text: the NaN/None rule made visible."""
    return f"{x!r}|{n!r}|{s!r}|{flag!r}"


def frame_total(df, k):
    return float(df["x"].sum()) * k


@pytest.fixture
def add_svc(client):
    return (client.service("adder").version("1.0").code_fn(scoring_fns.add)
            .inputs(a=float, b=float).outputs(answer=float).deploy())


def _no_execution(client, store: Path) -> None:
    assert client.list_executions() == []
    root = store / "executions"
    if root.exists():
        assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
        staging = root / ".staging"
        assert not staging.exists() or list(staging.iterdir()) == []


def _answers(batch) -> list[float]:
    r = batch.start().wait(30)
    assert r.state == "Complete"
    return [r.execution(i).outputs["answer"] for i in range(r.total_item_count)]


# -- forms ---------------------------------------------------------------------------------


def test_dataframe_with_extra_columns_warns_once_and_ignores_them(add_svc, mtcars):
    frame = mtcars.rename(columns={"hp": "a", "wt": "b"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = add_svc.batch(frame, parallel_count=2)
    ours = [w for w in caught if issubclass(w.category, LocalBatchWarning)]
    assert len(ours) == 1 and len(caught) == 1
    assert "mpg" in str(ours[0].message) and "a," not in str(ours[0].message)
    assert ours[0].filename == __file__, "the warning should point at the caller"
    assert list(batch.records.columns) == ["a", "b"]
    assert _answers(batch) == (frame["a"] * 2.0 + frame["b"]).tolist()


@pytest.mark.parametrize("records", [
    {"a": [1.0, 2.0], "b": [0.0, 1.0], "c": [9, 9]},
    [{"a": 1.0, "b": 0.0, "c": 9}, {"a": 2.0, "b": 1.0, "c": 9, "d": 1}],
])
def test_extra_keys_warn_once_for_dicts_and_record_lists(add_svc, records):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = add_svc.batch(records, parallel_count=2)
    assert [w.category for w in caught] == [LocalBatchWarning]
    assert caught[0].filename == __file__
    assert _columns(batch) == {"a": [1.0, 2.0], "b": [0.0, 1.0]}


def _columns(batch):
    """The cast input columns as Python values (numeric ones are kept as numpy arrays)."""
    return {k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v
            for k, v in batch.records.columns.items()}


def test_record_order_any_column_order_gives_the_same_records(add_svc):
    """The SDK's test: the same data with its columns in any order is the same batch."""
    base = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]}, index=[10, 20, 30])
    forms = [base, base[["b", "a"]], {"b": [0.5, 1.5, 2.5], "a": [1, 2, 3]},
             [{"b": 0.5, "a": 1}, {"a": 2, "b": 1.5}, {"b": 2.5, "a": 3}]]
    batches = [add_svc.batch(f, parallel_count=2) for f in forms]
    for batch in batches:
        assert list(batch.records.columns) == ["a", "b"]  # the service's input order
        assert _columns(batch) == {"a": [1.0, 2.0, 3.0], "b": [0.5, 1.5, 2.5]}
        assert all(type(v) is float for v in _columns(batch)["a"])
    assert list(batches[0].records.index) == list(batches[1].records.index) == [10, 20, 30]
    results = [_answers(b) for b in batches[:2]]
    assert results[0] == results[1] == [2.5, 5.5, 8.5]


def test_dict_of_equal_length_lists(add_svc):
    assert _answers(add_svc.batch({"a": [1, 2], "b": np.array([0.5, 0.25])},
                                  parallel_count=2)) == [2.5, 4.25]
    with pytest.raises(SchemaError, match="same length"):
        add_svc.batch({"a": [1, 2, 3], "b": [1.0]})


def test_list_of_record_dicts(add_svc):
    records = [{"a": 1.0, "b": 2.0}, {"b": 0.0, "a": 5}]
    assert _answers(add_svc.batch(records, parallel_count=2)) == [4.0, 10.0]


def test_list_of_records_with_dataframe_values(client):
    svc = (client.service("frames-in").version("1").code_fn(frame_total)
           .inputs(df=pd.DataFrame, k=int).outputs(answer=float).deploy())
    records = [{"df": pd.DataFrame({"x": [1, 2]}), "k": 1},
               {"df": pd.DataFrame({"x": [0.5], "other": ["z"]}), "k": 10},
               {"df": {"x": [3, 4]}, "k": 2}]  # a dict is cast to a DataFrame
    assert _answers(svc.batch(records, parallel_count=2)) == [3.0, 5.0, 14.0]


def test_csv_and_tsv_paths(add_svc, tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("extra,b,a\nx,1.5,1\ny,0,2\nz,-1,3\n")
    tsv = tmp_path / "in.tsv"
    tsv.write_text("b\ta\n1.5\t1\n0\t2\n-1\t3\n")
    with pytest.warns(LocalBatchWarning, match="extra"):
        from_csv = add_svc.batch(csv, parallel_count=2)
    from_tsv = add_svc.batch(str(tsv), parallel_count=2)
    assert _answers(from_csv) == _answers(from_tsv) == [3.5, 4.0, 5.0]


def test_csv_header_errors_raise_in_batch(add_svc, client, store, tmp_path):
    missing = tmp_path / "missing.csv"
    missing.write_text("a,c\n1,2\n")
    with pytest.raises(SchemaError, match="'b'"):
        add_svc.batch(missing)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputFileError):
        add_svc.batch(empty)
    with pytest.raises(InputFileError):
        add_svc.batch(tmp_path / "nope.csv")
    with pytest.raises(TypeError):
        add_svc.batch(tmp_path / "data.json")
    _no_execution(client, store)


def test_csv_bad_value_names_its_line_and_leaves_no_execution(add_svc, client, store, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3,oops\n")
    batch = add_svc.batch(path, parallel_count=2)  # values are read as they stream
    with pytest.raises(InputFileError, match="line 3"):
        batch.start()
    assert batch.execution_id is None
    _no_execution(client, store)


# -- schema errors: raised by batch(), nothing runs -------------------------------------------


@pytest.mark.parametrize("records, match", [
    (pd.DataFrame({"a": [1.0]}), "missing input"),
    (pd.DataFrame({"A": [1.0], "b": [1.0]}), "did you mean 'A'"),
    ({"a": [1.0, "x"], "b": [1.0, 2.0]}, "'x'"),
    ({"a": [1.0], "b": [True]}, "bool"),
    ([{"a": 1.0, "b": 1.0}, {"a": 2.0}], "record 1"),
    ([{"a": 1.0, "b": "2"}], "row 0"),
    (pd.DataFrame({"a": [], "b": []}), "0 rows"),
    ({"a": [], "b": []}, "empty"),
    ([], "empty"),
])
def test_schema_errors_raise_in_batch_and_nothing_runs(add_svc, client, store, records, match):
    with pytest.raises(SchemaError, match=match):
        add_svc.batch(records, parallel_count=2)
    _no_execution(client, store)


def test_lossless_casts_only(client, store):
    svc = (client.service("ints").version("1").code_fn(scoring_fns.add)
           .inputs(a=int, b=int).outputs(answer=float).deploy())
    with pytest.raises(SchemaError, match="2.9"):
        svc.batch({"a": [1, 2.9], "b": [1, 1]})
    with pytest.raises(ValueError):  # SchemaError is a ValueError, as the SDK raised
        svc.batch(pd.DataFrame({"a": ["1"], "b": [1]}))
    ok = svc.batch({"a": [1, 2.0], "b": np.array([1, 1], dtype=np.int8)}, parallel_count=2)
    assert _columns(ok) == {"a": [1, 2], "b": [1, 1]}
    _no_execution(client, store)


def test_records_of_an_unsupported_type(add_svc):
    with pytest.raises(TypeError):
        add_svc.batch(42)
    with pytest.raises(TypeError):
        add_svc.batch([1, 2])


# -- missing values: the rule of _schema's docstring ---------------------------------------


def test_nan_and_none_follow_one_rule_through_a_batch(client):
    svc = (client.service("describe").version("1").code_fn(describe)
           .inputs(x=float, n=int, s=str, flag=bool).outputs(answer=str).deploy())
    frame = pd.DataFrame({
        "x": [1.5, float("nan"), None, 2.0],
        "n": [1, None, 3, None],  # pandas makes this float64 with NaN
        "s": ["a", None, float("nan"), "NA"],
        "flag": [True, None, False, pd.NA],
    })
    r = svc.batch(frame, parallel_count=2).start().wait(30)
    got = [r.execution(i).outputs["answer"] for i in range(4)]
    # A float NaN stays NaN for a float input; for every other type it means missing.
    # pandas stores None in a float column as NaN, so that row's x is NaN too.
    assert got == ["1.5|1|'a'|True", "nan|None|None|None", "nan|3|None|False",
                   "2.0|None|'NA'|None"]


def test_none_stays_none_for_a_float_input_given_as_a_list(client):
    svc = (client.service("describe").version("1").code_fn(describe)
           .inputs(x=float, n=int, s=str, flag=bool).outputs(answer=str).deploy())
    records = {"x": [None, float("nan")], "n": [None, 2], "s": [None, ""],
               "flag": [None, True]}
    r = svc.batch(records, parallel_count=2).start().wait(30)
    assert [r.execution(i).outputs["answer"] for i in range(2)] == [
        "None|None|None|None", "nan|2|''|True"]


def test_float_outputs_keep_nan_and_none_apart(client):
    svc = (client.service("nan-out").version("1").code_fn(scoring_fns.slow)
           .inputs(a=float, b=float).outputs(answer=float).deploy())
    r = svc.batch({"a": [float("nan"), None, 1.0], "b": [0.0, 0.0, 0.0]},
                  parallel_count=2).start().wait(30)
    outs = [r.execution(i).outputs["answer"] for i in range(3)]
    assert math.isnan(outs[0]) and outs[1] is None and outs[2] == 1.0


# -- CSV values are cast losslessly -------------------------------------------------------


def echo_int(n, x):
    return n


def test_csv_integers_are_exact_and_nan_is_missing(client, tmp_path):
    svc = (client.service("ints").version("1").code_fn(echo_int)
           .inputs(n=int, x=float).outputs(answer=int).deploy())
    path = tmp_path / "ints.csv"
    path.write_text("n,x\n9007199254740993,1\n,2\n007,3\n2.0,4\nnan,nan\n1e3,\n")
    r = svc.batch(path, parallel_count=2).start().wait(30)
    assert [r.execution(i).outputs["answer"] for i in range(6)] == \
        [9007199254740993, None, 7, 2, None, 1000]


@pytest.mark.parametrize("value", ["99999999999999999999", "2.5", "1_000", "inf", "0x10"])
def test_csv_integers_that_would_lose_information_are_errors(client, tmp_path, value):
    svc = (client.service("ints").version("1").code_fn(echo_int)
           .inputs(n=int, x=float).outputs(answer=int).deploy())
    path = tmp_path / "ints.csv"
    path.write_text(f"n,x\n1,1\n{value},2\n")
    with pytest.raises(InputFileError, match=f"line 3: column 'n' value '{value}'"):
        svc.batch(path).start()


def test_an_int_beyond_64_bits_is_a_schema_error_not_a_crash(client, store):
    svc = (client.service("ints").version("1").code_fn(echo_int)
           .inputs(n=int, x=float).outputs(answer=int).deploy())
    with pytest.raises(SchemaError, match="64-bit"):
        svc.batch({"n": [1, 2**70], "x": [0.0, 0.0]}).start()
    _no_execution(client, store)


def test_to_frame_keeps_an_index_that_counts_up_only_in_places(add_svc):
    import numpy as np
    import pandas as pd

    # The first spool part's labels count up by one, the second's do not.
    n = 70_000
    labels = list(range(65_536)) + list(range(200_000 + n - 65_536, 200_000, -1))
    df = pd.DataFrame({"a": np.arange(n, dtype=float), "b": 1.0}, index=labels)
    frame = add_svc.batch(df, parallel_count=2).start().wait(60).to_frame()
    assert frame.index.tolist() == labels
    shifted = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": 0.0}, index=range(5, 8))
    frame = add_svc.batch(shifted, parallel_count=1).start().wait(60).to_frame()
    assert frame.index.tolist() == [5, 6, 7] and frame.index.name == "index"


@pytest.mark.parametrize("source", ["frame", "csv", "parquet"])
def test_to_frame_of_labels_counting_up_reads_no_input_part(add_svc, client, store, tmp_path,
                                                            source):
    """The header says where counting-up labels start: to_frame builds its RangeIndex
    without reading the spool back (here every input part is damaged), and a header
    without it (a store from before) still gets the index from the parts."""
    from localbatch import DeployClient
    from localbatch._store.fsutil import read_json, write_json

    n = 70_000  # two spool parts
    df = pd.DataFrame({"a": np.arange(n, dtype=float), "b": 1.0},
                      index=pd.RangeIndex(7, 7 + n) if source == "frame" else None)
    given: object = df
    if source == "csv":
        given = str(tmp_path / "in.csv")
        df.to_csv(given, index=False)
    elif source == "parquet":
        pytest.importorskip("pyarrow")
        given = str(tmp_path / "in.parquet")
        df.to_parquet(given, index=False)
    eid = add_svc.batch(given, parallel_count=2).start().wait(60).execution_id
    first = 7 if source == "frame" else 0
    header_path = store / "executions" / eid / "execution.json"
    assert read_json(header_path)["label_start"] == first
    parts = sorted((store / "executions" / eid / "inputs").glob("part-*.lbp"))
    assert len(parts) == 2
    saved = [p.read_bytes() for p in parts]
    for p in parts:
        p.write_bytes(b"damaged")
    with DeployClient(str(store)) as other:
        frame = other.get_execution(eid).results().to_frame()
    assert isinstance(frame.index, pd.RangeIndex) and frame.index.name == "index"
    assert frame.index[0] == first and len(frame) == n
    assert frame["answer"].tolist() == (df["a"] * 2.0 + 1.0).tolist()
    # A header from before label_start: the parts are read (and must be whole).
    header = read_json(header_path)
    del header["label_start"]
    write_json(header_path, header)
    for p, data in zip(parts, saved, strict=True):
        p.write_bytes(data)
    with DeployClient(str(store)) as other:
        again = other.get_execution(eid).results().to_frame()
    pd.testing.assert_frame_equal(again, frame)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 12)), max_size=8),
       st.integers(0, 45))
def test_a_row_map_made_from_spans_reads_like_one_made_from_arrays(spans, probe) -> None:
    """A row map kept as its parts' spans answers as the arrays it stands for would
    (they are made only when asked)."""
    from localbatch._store.executions import RowMap

    total = 42
    spans = [(a, min(n, total - a)) for a, n in spans if a < total]
    part_of = np.full(total, -1, np.int32)
    pos_of = np.full(total, -1, np.int32)
    for k, (a, n) in enumerate(spans):
        part_of[a:a + n] = k
        pos_of[a:a + n] = np.arange(n)
    names = [f"p{k}" for k in range(len(spans))]
    arrays = RowMap(names, part_of, pos_of)
    ordered = sorted(spans)
    if all(a[0] + a[1] <= b[0] for a, b in zip(ordered, ordered[1:], strict=False)):
        lazy = RowMap(names, spans=spans, total=total)
        assert lazy.recorded_count() == arrays.recorded_count() == int((part_of >= 0).sum())
        assert lazy.locate(probe) == arrays.locate(probe)
        assert lazy.part_of.tolist() == part_of.tolist()
        assert lazy.pos_of.tolist() == pos_of.tolist()
