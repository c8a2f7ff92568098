"""Property tests: every value the store keeps comes back exactly, or is refused loudly.

Generated scalars, arrays and DataFrames (the numpy/pandas dtypes users meet,
datetimes of every unit and timezone, nullable and pyarrow-backed types, object
columns, odd labels and indexes) go through the codec and a part file's bytes:
each either comes back equal — dtype, unit, timezone, labels, index — or raises
SchemaError, and what the generator marks as storable must not raise. Then a few
hundred of them go through one real batch and ``consume``; and generated frames
written with ``DataFrame.to_csv`` give the same inputs as the DataFrame itself.
"""

from __future__ import annotations

import datetime
import decimal
import math
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from localbatch._errors import SchemaError
from localbatch._format.columns import concat_columns, decode_all, encode_column
from localbatch._format.part import Part, encode_part
from localbatch._schema import EncodingType

pytestmark = pytest.mark.timeout(120)

#: LOCALBATCH_PROPS_SCALE=20 runs twenty times the examples (a deeper search than CI's).
SCALE = int(os.environ.get("LOCALBATCH_PROPS_SCALE", "1"))
FAST = settings(max_examples=60 * SCALE, deadline=None)


def _through_part(col):
    """A column written into a part's bytes and read back (what the store does)."""
    return Part(encode_part({"c": col}, 0)).column("c")


def _decoded(kind, values):
    return decode_all(_through_part(encode_column(kind, values)))


# -- scalars ----------------------------------------------------------------------


@FAST
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))))
def test_floats_round_trip_bit_for_bit(values):
    out = _decoded("float", values)
    assert [None if v is None else np.float64(v).tobytes() for v in out] == \
        [None if v is None else np.float64(v).tobytes() for v in values]


@FAST
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
       st.lists(st.one_of(st.none(), st.booleans())),
       st.lists(st.one_of(st.none(), st.text(st.characters(codec=None)))))
def test_ints_bools_and_text_round_trip(ints, bools, texts):
    assert _decoded("int", ints) == ints
    assert _decoded("bool", bools) == bools
    assert _decoded("str", texts) == texts  # lone surrogates included


# -- arrays (vector and matrix outputs) ----------------------------------------------

_STORABLE = st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                      hnp.boolean_dtypes(), hnp.unicode_string_dtypes(max_len=4),
                      hnp.datetime64_dtypes(), hnp.timedelta64_dtypes())
_REFUSED = st.one_of(hnp.complex_number_dtypes(), hnp.byte_string_dtypes(max_len=4))
#: Native byte order only, for values that reach a worker as the service's objects
#: (which hand the function native arrays).
_NATIVE = st.one_of(hnp.floating_dtypes(endianness="="), hnp.integer_dtypes(endianness="="),
                    hnp.unsigned_integer_dtypes(endianness="="), hnp.boolean_dtypes(),
                    hnp.unicode_string_dtypes(endianness="=", max_len=4),
                    hnp.datetime64_dtypes(endianness="="), hnp.timedelta64_dtypes(endianness="="),
                    hnp.complex_number_dtypes(endianness="="))


def _same_array(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.dtype.kind in "Mm":
        assert (a.view(np.int64) == b.view(np.int64)).all()
    elif a.dtype.kind == "f":
        assert a.tobytes() == b.tobytes()  # NaN, -0.0 and infinities exactly
    else:
        assert np.array_equal(a, b)


@FAST
@given(st.data())
def test_arrays_keep_dtype_shape_and_values_or_are_refused(data):
    storable = data.draw(st.booleans())
    dtype = data.draw(_STORABLE if storable else _REFUSED)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4))
    arr = data.draw(hnp.arrays(dtype, shape))
    enc = EncodingType.vector if arr.ndim == 1 else EncodingType.matrix
    if not storable:
        with pytest.raises(SchemaError, match="cannot be stored exactly"):
            encode_column("json", [arr])
        return
    [out] = _decoded("json", [arr])
    _same_array(EncodingType.cast_to_python(enc, out), arr)


# -- DataFrames ------------------------------------------------------------------------

_UNITS = ["s", "ms", "us", "ns"]
_TZS = [None, "UTC", "Europe/Paris", "Asia/Kolkata", "America/St_Johns"]
#: int64 counts of each unit that are valid timestamps (NaT is int64 min).
_SPAN = {"s": 10**11, "ms": 10**14, "us": 10**17, "ns": 9 * 10**18}
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)


def _temporal(draw, n, base):
    unit = draw(st.sampled_from(_UNITS))
    ints = draw(st.lists(st.integers(-_SPAN[unit], _SPAN[unit]), min_size=n, max_size=n))
    arr = np.array(ints, np.int64).view(f"{base}64[{unit}]")
    nat = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    arr[np.array(nat, np.bool_)] = np.datetime64("NaT") if base == "datetime" \
        else np.timedelta64("NaT")
    series = pd.Series(arr)
    tz = draw(st.sampled_from(_TZS)) if base == "datetime" else None
    if tz is not None:
        series = series.dt.tz_localize("UTC").dt.tz_convert(tz)
    if draw(st.integers(0, 4)) == 0:  # pyarrow-backed now and then
        series = series.astype(pd.ArrowDtype(_arrow_type(series.dtype)))
    return series


def _arrow_type(dtype):
    import pyarrow as pa

    unit = getattr(dtype, "unit", None) or np.datetime_data(dtype)[0]
    if dtype.kind == "m":
        return pa.duration(unit)
    tz = getattr(dtype, "tz", None)
    return pa.timestamp(unit, tz=None if tz is None else str(tz))


def _nullable(draw, n, elements):
    return draw(st.lists(st.one_of(st.none(), elements), min_size=n, max_size=n))


#: Column makers: (storable, function of (draw, n) → Series).
COLUMNS = {
    "float64": (True, lambda d, n: pd.Series(d(st.lists(st.floats(), min_size=n, max_size=n)),
                                             dtype="float64")),
    "float32": (True, lambda d, n: pd.Series(d(st.lists(st.floats(width=32), min_size=n,
                                                        max_size=n)), dtype="float32")),
    "int8": (True, lambda d, n: pd.Series(d(st.lists(st.integers(-128, 127), min_size=n,
                                                     max_size=n)), dtype="int8")),
    "int64": (True, lambda d, n: pd.Series(d(st.lists(st.integers(-(2**63), 2**63 - 1),
                                                      min_size=n, max_size=n)), dtype="int64")),
    "uint64": (True, lambda d, n: pd.Series(d(st.lists(st.integers(0, 2**63 - 1), min_size=n,
                                                       max_size=n)), dtype="uint64")),
    "bool": (True, lambda d, n: pd.Series(d(st.lists(st.booleans(), min_size=n, max_size=n)),
                                          dtype="bool")),
    "datetime": (True, lambda d, n: _temporal(d, n, "datetime")),
    "timedelta": (True, lambda d, n: _temporal(d, n, "timedelta")),
    "Int64": (True, lambda d, n: pd.Series(_nullable(d, n, st.integers(-(2**63), 2**63 - 1)),
                                           dtype="Int64")),
    "UInt8": (True, lambda d, n: pd.Series(_nullable(d, n, st.integers(0, 255)), dtype="UInt8")),
    "Float64": (True, lambda d, n: pd.Series(_nullable(d, n, st.floats(allow_nan=False)),
                                             dtype="Float64")),
    "boolean": (True, lambda d, n: pd.Series(_nullable(d, n, st.booleans()), dtype="boolean")),
    "str": (True, lambda d, n: pd.Series(_nullable(d, n, _TEXT), dtype="str")),
    "string": (True, lambda d, n: pd.Series(_nullable(d, n, _TEXT), dtype="string[python]")),
    "int64[pyarrow]": (True, lambda d, n: pd.Series(_nullable(d, n, st.integers(-(2**63),
                                                                              2**63 - 1)),
                                                    dtype="int64[pyarrow]")),
    "double[pyarrow]": (True, lambda d, n: pd.Series(_nullable(d, n, st.floats(allow_nan=False)),
                                                     dtype="double[pyarrow]")),
    "string[pyarrow]": (True, lambda d, n: pd.Series(_nullable(d, n, _TEXT),
                                                     dtype="string[pyarrow]")),
    "category": (True, lambda d, n: pd.Series(d(st.lists(st.sampled_from("abc"), min_size=n,
                                                         max_size=n)), dtype="category")),
    "object-str": (True, lambda d, n: pd.Series(_nullable(d, n, _TEXT), dtype=object)),
    "object-int": (True, lambda d, n: pd.Series(_nullable(d, n, st.integers(-(2**63),
                                                                          2**63 - 1)),
                                                dtype=object)),
    "object-float": (True, lambda d, n: pd.Series(_nullable(d, n, st.floats()), dtype=object)),
    "object-bool": (True, lambda d, n: pd.Series(_nullable(d, n, st.booleans()), dtype=object)),
    "object-bigint": (False, lambda d, n: pd.Series([2**70] * n, dtype=object)),
    "object-bytes": (False, lambda d, n: pd.Series([b"\x00"] * n, dtype=object)),
    "object-decimal": (False, lambda d, n: pd.Series([decimal.Decimal("0.1")] * n,
                                                     dtype=object)),
    "object-date": (False, lambda d, n: pd.Series([datetime.date(2020, 1, 1)] * n,
                                                  dtype=object)),
    # (one value cannot be of mixed types: a row of one holds bytes instead)
    "object-mixed": (False, lambda d, n: pd.Series(([1, "1"] * n)[:n] if n != 1 else [b""],
                                                   dtype=object)),
    "object-list": (False, lambda d, n: pd.Series([[1]] * n, dtype=object)),
    "complex": (False, lambda d, n: pd.Series([1 + 2j] * n, dtype="complex128")),
    "uint64-big": (False, lambda d, n: pd.Series([2**64 - 1] * n, dtype="uint64")),
    "period": (False, lambda d, n: pd.Series(pd.period_range("2020", periods=n, freq="D"))),
}


#: Columns refused for their dtype, whatever their values.
_REFUSED_DTYPES = ("complex", "period")


@st.composite
def frames(draw, max_rows=4, max_cols=4):
    """(frame, storable): a DataFrame and whether the store must keep it."""
    n = draw(st.integers(0, max_rows))
    kinds = draw(st.lists(st.sampled_from(sorted(COLUMNS)), max_size=max_cols))
    # A column refused for its values is stored when it has none; a dtype never is.
    storable = all(COLUMNS[k][0] or (n == 0 and k not in _REFUSED_DTYPES) for k in kinds)
    labels = draw(st.lists(st.one_of(_TEXT, st.integers(-5, 5), st.just("dup")),
                           min_size=len(kinds), max_size=len(kinds)))
    if kinds and draw(st.integers(0, 9)) == 0:
        labels[0] = ("a", "b")  # a tuple label: refused
        storable = False
    frame = pd.DataFrame({k: COLUMNS[kind][1](draw, n) for k, kind in enumerate(kinds)})
    frame.columns = labels
    frame.index = draw(_indexes(n))
    if len(kinds) == 0 and n and draw(st.booleans()):
        frame.columns.name = "cols"
    return frame, storable


@st.composite
def _indexes(draw, n):
    form = draw(st.sampled_from(["default", "range", "str", "datetime", "multi", "int"]))
    if form == "range":
        return pd.RangeIndex(3, 3 + 2 * n, 2, name=draw(st.sampled_from([None, "r"])))
    if form == "str":
        return pd.Index(draw(st.lists(_TEXT, min_size=n, max_size=n)), name="key", dtype=object)
    if form == "datetime":
        return pd.date_range("2300-01-01", periods=n, freq="h", tz="Europe/Paris", unit="s")
    if form == "multi" and n:
        return pd.MultiIndex.from_arrays([list(range(n)), ["x"] * n], names=["i", None])
    if form == "int":
        return pd.Index(draw(st.lists(st.integers(-10, 10), min_size=n, max_size=n)),
                        dtype="int64")
    return pd.RangeIndex(n)


def _assert_frame_same(got, want):
    pd.testing.assert_frame_equal(got, want, check_exact=True, check_freq=True,
                                  check_index_type=True, check_column_type=True)


@settings(max_examples=120 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.none(), frames()), min_size=1, max_size=4))
def test_frames_come_back_exactly_or_are_refused(items):
    values = [None if item is None else item[0] for item in items]
    if not all(item is None or item[1] for item in items):
        with pytest.raises(SchemaError):
            encode_column("frame", values)
        return
    col = encode_column("frame", values)
    out = decode_all(_through_part(col))
    for got, want in zip(out, values, strict=True):
        if want is None:
            assert got is None
        else:
            _assert_frame_same(got, want)
    # Chunks concatenated into one part keep every value too.
    half = len(values) // 2
    joined = concat_columns([encode_column("frame", values[:half]),
                             encode_column("frame", values[half:])])
    for got, want in zip(decode_all(_through_part(joined)), values, strict=True):
        if want is not None:
            _assert_frame_same(got, want)


# -- through a real batch and consume ---------------------------------------------------


def _echo(i):
    return ROWS[int(i)]  # noqa: F821 - the service's objects


def _generated_rows(n):
    """``n`` generated (frame, storable), array, float and text values: drawn by
    hypothesis one example at a time (no shrinking), to run in one batch after."""
    rows = []

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(frames(max_rows=3, max_cols=3),
           hnp.arrays(_NATIVE, hnp.array_shapes(min_dims=1, max_dims=1, min_side=0,
                                                max_side=3)),
           st.one_of(st.none(), st.floats()), _TEXT)
    def collect(frame, v, x, s):
        rows.append((frame, v, x, s))

    collect()
    return rows


def test_a_batch_of_generated_values_gives_each_back_exactly_or_fails_its_row(client):
    rows = _generated_rows(300)
    values = [{"df": f, "v": v, "x": x, "s": s} for (f, _), v, x, s in rows]
    svc = (client.service("echo").version("1").code_fn(_echo).inputs(i=int)
           .outputs(df=pd.DataFrame, v=np.ndarray, x=float, s=str)
           .objects(ROWS=values).deploy())
    resp = svc.batch({"i": list(range(len(rows)))}, parallel_count=2).start().wait(timeout=100)
    refused = 0
    for i, ((frame, storable), v, x, s) in enumerate(rows):
        row = resp.execution(i)
        if not (storable and v.dtype.kind != "c"):
            assert row.error_type == "OutputTypeError", (i, row.error)
            assert "output 'df'" in row.error or "output 'v'" in row.error
            refused += 1
            continue
        assert row.error == "", (i, row.error)
        _assert_frame_same(row.outputs["df"], frame)
        _same_array(row.outputs["v"], v)
        assert row.outputs["s"] == s
        assert row.outputs["x"] == x or (x is not None and math.isnan(x)
                                         and math.isnan(row.outputs["x"]))
    assert 0 < refused < len(rows)  # the generator tried both
    assert resp.failed_item_count == refused
    # consume gives the same values back (the first storable row)
    first = next(i for i, ((_, ok), v, _, _) in enumerate(rows)
                 if ok and v.dtype.kind != "c")
    _assert_frame_same(svc._echo(first).outputs["df"], rows[first][0][0])


# -- CSV input: the same values as the DataFrame, or the same refusal ------------------

_CSV_TYPES = {"f": float, "i": int, "b": bool, "s": str}


@st.composite
def _input_frames(draw):
    n = draw(st.integers(1, 6))
    cols = draw(st.lists(st.sampled_from(sorted(_CSV_TYPES)), min_size=1, max_size=4,
                         unique=True))
    data = {}
    for c in cols:
        if c == "f":
            data[c] = pd.Series(draw(st.lists(st.one_of(
                st.floats(), st.integers(-(2**60), 2**60)), min_size=n,
                max_size=n)), dtype=object if draw(st.booleans()) else None)
            if data[c].dtype != object:
                data[c] = data[c].astype("float64")
        elif c == "i":
            data[c] = pd.Series(_nullable(draw, n, st.integers(-(2**63), 2**63 - 1)),
                                dtype="Int64")
        elif c == "b":
            data[c] = pd.Series(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        else:
            data[c] = pd.Series(draw(st.lists(st.text(st.characters(
                exclude_categories=("Cs",), exclude_characters="\r"), min_size=1, max_size=5),
                min_size=n, max_size=n)), dtype=object)
    return pd.DataFrame(data)


def _spooled(tmp, source_or_table, inputs, csv):
    from localbatch._store.spool import spool_csv, spool_table

    folder = tmp / ("csv" if csv else "frame")
    folder.mkdir()
    if csv:
        spool_csv(source_or_table, folder)
    else:
        spool_table(source_or_table, inputs, folder)
    parts = [Part(p.read_bytes()) for p in sorted(folder.iterdir())]
    return {n: [v for p in parts for v in decode_all(p.column(f"in.{n}"))] for n, _ in inputs}


@settings(max_examples=80 * SCALE, deadline=None)
@given(_input_frames(), st.sampled_from(["", "nan"]))
def test_csv_written_by_to_csv_gives_the_dataframe_paths_values_or_its_error(frame, na_rep):
    import tempfile
    from pathlib import Path

    from localbatch._schema import normalize_records
    from localbatch._store.spool import CsvSource

    inputs = [(c, EncodingType.from_python(_CSV_TYPES[c])) for c in frame.columns]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "in.csv"
        frame.to_csv(path, index=False, na_rep=na_rep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                table = normalize_records(frame, inputs)
            except SchemaError:
                table = None
        try:
            from_csv = _spooled(tmp, CsvSource(path, inputs), inputs, csv=True)
        except SchemaError:
            from_csv = None
        if table is None or from_csv is None:
            assert table is None and from_csv is None, (table, from_csv)
            return
        expected = _spooled(tmp, table, inputs, csv=False)
        if na_rep == "" and "f" in expected:
            # to_csv writes NaN as an empty field, which is "missing" (None) in a CSV
            expected["f"] = [None if isinstance(v, float) and math.isnan(v) else v
                             for v in expected["f"]]
        assert _nan_free(from_csv) == _nan_free(expected)


def _nan_free(columns):
    """NaN as a marker, so that == compares it (NaN != NaN)."""
    return {k: ["NaN" if isinstance(v, float) and math.isnan(v) else v for v in vs]
            for k, vs in columns.items()}


# -- inputs through a real batch: the function sees each value exactly ----------------


def _echo_inputs(f, i, b, s):
    return {"f": f, "i": i, "b": b, "s": s}


def test_generated_dataframe_inputs_reach_the_function_and_come_back_exactly(client):
    rows = []

    @settings(max_examples=300, deadline=None, database=None, phases=[Phase.generate])
    @given(st.one_of(st.none(), st.floats()), st.one_of(st.none(),
                                                        st.integers(-(2**63), 2**63 - 1)),
           st.one_of(st.none(), st.booleans()),
           st.one_of(st.none(), st.text(st.characters(codec=None), max_size=8)))
    def collect(f, i, b, s):
        rows.append((f, i, b, s))

    collect()
    frame = pd.DataFrame({
        "f": pd.Series([r[0] for r in rows], dtype=object),
        "i": pd.Series([r[1] for r in rows], dtype="Int64"),
        "b": pd.Series([r[2] for r in rows], dtype="boolean"),
        "s": pd.Series([r[3] for r in rows], dtype=object),
    })
    svc = (client.service("echo-in").version("1").code_fn(_echo_inputs)
           .inputs(f=float, i=int, b=bool, s=str).outputs(f=float, i=int, b=bool, s=str)
           .deploy())
    resp = svc.batch(frame, parallel_count=2).start().wait(timeout=100)
    assert resp.failed_item_count == 0
    out = resp.to_frame()
    for k, (f, i, b, s) in enumerate(rows):
        got = resp.execution(k).outputs
        assert got["i"] == i and got["b"] == b and got["s"] == s
        assert got["f"] == f or (f is not None and math.isnan(f) and math.isnan(got["f"]))
    assert len(out) == len(rows)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([2, 4, 8]), st.sampled_from(["<", ">"]),
       hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), st.data())
def test_float_vectors_keep_every_bit_nan_sign_and_payload_too(size, order, shape, data):
    """Vectors and matrices are JSON in a part: a float array of any bits (a NaN with
    its sign and payload, -0.0, infinities, subnormals) comes back bit for bit."""
    bits = data.draw(hnp.arrays(f"<u{size}", shape))
    arr = bits.view(f"<f{size}").astype(f"{order}f{size}")
    back = decode_all(_through_part(encode_column("json", [arr])))[0]
    back = np.asarray(back, dtype=arr.dtype) if isinstance(back, list) else back
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()


def test_floats_wider_than_64_bits_are_refused_not_rounded():
    with pytest.raises(SchemaError, match="cannot be stored exactly"):
        encode_column("json", [np.array([1.0, 2.0], np.longdouble)])
