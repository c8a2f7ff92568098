"""The columnar codec (``_format``): every kind round-trips through a part file."""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from localbatch._errors import SchemaError
from localbatch._format.columns import (
    Column,
    concat_columns,
    decode_all,
    decode_one,
    encode_column,
    kind_for_encoding,
)
from localbatch._format.part import Part, PartCorruptedError, encode_part


def _through_file(kind: str, values: list) -> list:
    """Encode, write a part's bytes, read them back, decode every value."""
    data = encode_part({"x": encode_column(kind, values)}, len(values))
    part = Part(bytes(data))
    assert part.rows == len(values)
    col = part.column("x")
    one = [decode_one(col, i) for i in range(len(values))]
    every = decode_all(col)
    assert len(every) == len(values)
    for a, b in zip(one, every, strict=True):
        _assert_same(a, b)
    return every


def _assert_same(a, b) -> None:
    if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
        assert isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame)
        pd.testing.assert_frame_equal(a, b)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == b and type(a) is type(b)


def test_floats_keep_nan_as_a_value_and_none_as_missing():
    out = _through_file("float", [1.5, float("nan"), None, -0.0, 1e300, float("inf")])
    assert out[0] == 1.5
    assert isinstance(out[1], float) and math.isnan(out[1])
    assert out[2] is None
    assert out[3:] == [-0.0, 1e300, float("inf")]


def test_ints_with_none():
    out = _through_file("int", [0, -(2**63), 2**63 - 1, None, 7])
    assert out == [0, -(2**63), 2**63 - 1, None, 7]
    assert all(type(v) is int for v in out if v is not None)


def test_bools_with_none_never_become_false():
    assert _through_file("bool", [True, None, False]) == [True, None, False]
    assert _through_file("bool", [None, None]) == [None, None]


def test_strings_unicode_empty_and_none():
    values = ["plain", "", None, "ünïcødé ✓ 中文 🚀", "a\nb\tc\0d", "\ud800 lone surrogate"]
    assert _through_file("str", values) == values
    assert _through_file("str", [None, None, None]) == [None, None, None]


def test_json_vectors_and_matrices():
    values = [[1.0, 2.5], None, [], [[1, 2], [3, 4]], ["a", "b"], [float("nan")]]
    out = _through_file("json", values)
    assert out[:5] == values[:5]
    assert math.isnan(out[5][0])
    # numpy arrays are stored as their values, never as pickles.
    assert _through_file("json", [np.arange(3)]) == [[0, 1, 2]]


def test_frames_with_mixed_dtypes_round_trip_with_their_dtypes():
    df = pd.DataFrame({
        "f": [1.5, float("nan"), 3.0],
        "i": np.array([1, 2, 3], dtype=np.int32),
        "u": np.array([1, 2, 3], dtype=np.uint8),
        "b": [True, False, True],
        "s": ["x", None, "ü"],
        "t": pd.to_datetime(["2024-01-01", None, "2024-03-01T12:00:00"], format="ISO8601"),
        "tz": pd.to_datetime(["2024-01-01", "2024-06-01", None]).tz_localize("Europe/Paris"),
        "ni": pd.array([1, None, 3], dtype="Int64"),
        "nb": pd.array([True, None, False], dtype="boolean"),
        "cat": pd.Categorical(["a", "b", "a"]),
    })
    [out] = _through_file("frame", [df])
    pd.testing.assert_frame_equal(out, df)


def test_frames_with_different_column_sets_and_none():
    a = pd.DataFrame({"x": [1, 2], "y": ["p", "q"]})
    b = pd.DataFrame({"z": [0.5]})
    c = pd.DataFrame({"x": [3.5], "y": ["r"]})  # same names as `a`, x now float
    empty = pd.DataFrame({"x": pd.Series([], dtype=np.int64)})
    out = _through_file("frame", [a, None, b, c, empty, a])
    assert out[1] is None
    for got, want in zip([out[0], out[2], out[3], out[4], out[5]], [a, b, c, empty, a],
                         strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_frame_object_columns_of_numbers_stay_numbers():
    df = pd.DataFrame({"n": pd.Series([1, None, 3], dtype=object)})
    [out] = _through_file("frame", [df])
    assert out["n"].tolist() == [1, None, 3]
    mixed = pd.DataFrame({"m": pd.Series(["a", 1, None], dtype=object)})
    with pytest.raises(SchemaError, match="column 'm'.*mixed types"):  # never silently text
        _through_file("frame", [mixed])


def test_frame_duplicate_and_non_string_column_names():
    df = pd.DataFrame([[1, 2.5, "a"]], columns=["x", "x", 0])
    [out] = _through_file("frame", [df])
    assert list(out.columns) == ["x", "x", 0]  # labels keep their type
    assert out.iloc[0].tolist() == [1, 2.5, "a"]


def test_many_one_row_frames_like_the_sdk_sample():
    frames = [pd.DataFrame({"am_Pred": [i / 10]}) for i in range(500)]
    out = _through_file("frame", frames)
    assert [f["am_Pred"].iloc[0] for f in out] == [i / 10 for i in range(500)]


@pytest.mark.parametrize("kind, chunks", [
    ("float", [[1.0, None], [float("nan")], [2.0]]),
    ("int", [[1], [None, 2]]),
    ("bool", [[True], [None], [False]]),
    ("str", [["a", None], ["ü", ""]]),
    ("json", [[[1, 2]], [None, []]]),
])
def test_concat_columns_equals_encoding_everything_at_once(kind, chunks):
    whole = [v for chunk in chunks for v in chunk]
    joined = concat_columns([encode_column(kind, chunk) for chunk in chunks])
    part = Part(encode_part({"x": joined}, len(whole)))
    for got, want in zip(decode_all(part.column("x")), whole, strict=True):
        _assert_same(got, want)


def test_concat_frames_with_different_column_sets():
    a = [pd.DataFrame({"x": [1]}), None]
    b = [pd.DataFrame({"y": ["q", "r"]}), pd.DataFrame({"x": [2.5], "y": ["s"]})]
    c = [pd.DataFrame([[1, 2]], columns=["x", "x"]), pd.DataFrame({"x": [7]})]
    chunks = [a, b, c]
    joined = concat_columns([encode_column("frame", chunk) for chunk in chunks])
    out = decode_all(Part(encode_part({"x": joined}, 6)).column("x"))
    for got, want in zip(out, [v for chunk in chunks for v in chunk], strict=True):
        if want is None:
            assert got is None
        else:
            pd.testing.assert_frame_equal(got, want)


def test_frame_table_is_the_long_table_of_all_values():
    from localbatch._format.frames import frame_table

    values = [pd.DataFrame({"am_Pred": [0.5], "lbl": ["a"]}), None,
              pd.DataFrame({"am_Pred": [1, 2]}),  # the same name with another dtype
              pd.DataFrame({"other": [True]}),
              pd.DataFrame({"am_Pred": pd.Series([], dtype=float)})]
    col = Part(encode_part({"x": encode_column("frame", values)}, 5)).column("x")
    nrows, table = frame_table(col)
    assert nrows.tolist() == [1, -1, 2, 1, 0]
    assert list(table.columns) == ["am_Pred", "lbl", "other"]
    assert table["am_Pred"].tolist()[:3] == [0.5, 1, 2] and pd.isna(table["am_Pred"][3])
    assert [None if pd.isna(v) else v for v in table["lbl"]] == ["a", None, None, None]
    assert [None if pd.isna(v) else v for v in table["other"]] == [None, None, None, True]
    expected = pd.concat([v for v in values if v is not None and len(v)], ignore_index=True)
    assert len(table) == len(expected) == 4


def test_encoding_a_frame_column_warns_nothing():
    frames = [pd.DataFrame({"x": [1]}), pd.DataFrame({"x": pd.Series([], dtype=float)}),
              pd.DataFrame({"y": [None]})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_column("frame", frames)


def test_part_rejects_garbage_and_object_buffers():
    with pytest.raises(ValueError):
        Part(b"not a part")
    data = bytearray(encode_part({"x": encode_column("int", [1])}, 1))
    data = bytes(data).replace(b'"<i8"', b'"|O8"', 1)
    with pytest.raises(ValueError, match="checksum mismatch"):
        Part(data)
    # Even with a checksum that matches, an object buffer is refused (never unpickled).
    crc = zlib.crc32(memoryview(data)[16:], zlib.crc32(data[4:8]))
    resealed = data[:8] + struct.pack("<I", crc) + data[12:]
    with pytest.raises(ValueError, match="bad buffer x.values"):
        Part(resealed).column("x")


def test_kind_for_every_encoding_type():
    assert [kind_for_encoding(e) for e in ("numeric", "integer", "logical", "character",
                                           "vector", "matrix", "data.frame")] == \
        ["float", "int", "bool", "str", "json", "json", "frame"]


# -- buffers stored without their bytes (const / range forms) ---------------------------


def _buffers_through_file(arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
    data = encode_part({"x": Column("float", {}, arrays)}, 0)
    part = Part(bytes(data))
    return part._header["columns"]["x"]["buffers"], part.column("x").buffers


@pytest.mark.parametrize("value", [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-310, 2.5])
def test_constant_float_buffers_keep_every_bit(value: float) -> None:
    arr = np.full(1000, value)
    entry, back = _buffers_through_file({"values": arr})
    assert entry["values"][1] == "const"
    assert back["values"].tobytes() == arr.tobytes()


def test_buffers_that_only_look_equal_keep_their_bytes() -> None:
    arr = np.array([0.0, -0.0, 0.0])  # equal as floats, not as bits
    entry, back = _buffers_through_file({"values": arr})
    assert isinstance(entry["values"][1], int)
    assert back["values"].tobytes() == arr.tobytes()


def test_row_numbers_are_stored_as_a_range_and_read_back_exactly() -> None:
    cases = {
        "up": np.arange(5, 5 + 70_000, dtype=np.int64),
        "down": np.arange(10, -50, -3, dtype=np.int64),
        "edge": np.array([2**63 - 3, 2**63 - 2, 2**63 - 1], np.int64),
        "broken": np.array([1, 2, 3, 5], np.int64),
        "mask": np.zeros(70_000, np.bool_),
        "offsets": np.zeros(70_001, np.int64),
        "one": np.array([7], np.int64),
    }
    entry, back = _buffers_through_file(cases)
    assert [entry[k][1] for k in ("up", "down", "edge", "mask", "offsets")] == [
        "range", "range", "range", "const", "const"]
    assert isinstance(entry["broken"][1], int) and isinstance(entry["one"][1], int)
    for key, arr in cases.items():
        assert back[key].dtype == arr.dtype and np.array_equal(back[key], arr), key
        assert not back[key].flags.writeable


def _ranges() -> st.SearchStrategy[np.ndarray]:
    """int64 arrays that count by a fixed step, within int64, some with one element off."""
    def build(start: int, step: int, n: int, off: int | None) -> np.ndarray:
        step = max(-(2**62), min(2**62, step))
        n = min(n, 1 + (2**63 - 1 - abs(start)) // max(1, abs(step)))
        values = [start + step * k for k in range(max(n, 2))]
        values = [v for v in values if -(2**63) <= v < 2**63] or [0, 0]
        if off is not None and len(values) > 1:
            values[off % len(values)] += 1 if values[off % len(values)] < 2**63 - 1 else -1
        return np.asarray(values, np.int64)
    return st.builds(build, st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63),
                     st.integers(2, 40), st.none() | st.integers(0, 40))


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    _ranges(),
    st.builds(np.full, st.integers(2, 30), st.floats(allow_nan=True)),
    hnp.arrays(st.sampled_from([np.int64, np.float64, np.bool_, np.uint8, np.int32]),
               st.integers(0, 30)),
))
def test_every_buffer_comes_back_bit_for_bit_and_without_bytes_only_when_it_may(arr) -> None:
    """The const and range forms are chosen exactly when every element is equal (as bits)
    or counts by one step, and whatever the form the bytes come back the same."""
    entry, back = _buffers_through_file({"values": arr})
    assert back["values"].dtype == arr.dtype and back["values"].tobytes() == arr.tobytes()
    form = entry["values"][1]
    bits = arr.view(f"<u{arr.itemsize}") if arr.dtype.kind in "biuf" else None
    const = bits is not None and arr.size >= 2 and len(set(bits.tolist())) == 1
    values = arr.tolist()
    ranged = arr.dtype == np.int64 and arr.size >= 2 and len(
        {b - a for a, b in zip(values, values[1:], strict=False)}) == 1
    assert (form == "const") == const
    assert (form == "range") == (ranged and not const)


def _follow(base: np.ndarray, last: int, off: int | None) -> np.ndarray:
    """``base`` moved up by one, then ``last`` (as bits); one element changed at ``off``."""
    bits = base.view(f"<u{base.itemsize}")
    out = np.empty_like(bits)
    out[:-1] = bits[1:]
    out[-1] = last % (1 << (8 * base.itemsize))
    if off is not None:
        out[off % len(out)] ^= 1
    return out.view(base.dtype)


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(st.sampled_from([np.float64, np.int64, np.int32, np.uint8, np.float32]),
                  st.integers(0, 30), elements=None),
       st.integers(0, 2**64 - 1), st.none() | st.integers(0, 40), st.booleans())
def test_a_buffer_that_follows_another_comes_back_bit_for_bit(base, last, off, after) -> None:
    """End times are the next rows' start times: such a buffer is stored as "next" of
    the other exactly when it is bitwise that buffer moved up by one (NaN payloads,
    -0.0, every integer edge), and whatever the form every bit comes back."""
    if base.size == 0:
        base = np.zeros(2, base.dtype)
    follower = _follow(base, last, off)
    # The buffer it follows comes first in the part; "after" puts an unrelated one between.
    arrays = {"started": base}
    if after:
        arrays["other"] = np.arange(base.size, dtype=base.dtype)[::-1].copy()
    arrays["ended"] = follower
    entry, back = _buffers_through_file(arrays)
    for key, arr in arrays.items():
        assert back[key].dtype == arr.dtype and back[key].tobytes() == arr.tobytes(), key
        assert not back[key].flags.writeable
    bits = lambda a: a.view(f"<u{a.itemsize}").tolist()  # noqa: E731

    def breaks(key):  # where ``ended`` does not follow ``key``, and its last element
        pairs = zip(bits(follower)[:-1], bits(arrays[key])[1:], strict=True)
        return [k for k, (a, b) in enumerate(pairs) if a != b] + [base.size - 1]

    # The model: the first earlier buffer stored (with bytes or steps) that it follows, but at a
    # few breaks (its first element must follow), if any.
    leaders = [key for key in arrays if key != "ended"
               and entry[key][1] not in ("const", "range", "next")  # stored: bytes, steps
               and base.size >= 2 and breaks(key)[0] != 0 and len(breaks(key)) <= 64]
    simple = entry["ended"][1] in ("const", "range")
    if leaders and not simple:
        assert entry["ended"][1:5] == ["next", base.size, "x", leaders[0]]
        assert entry["ended"][5][0::2] == breaks(leaders[0])
    else:
        assert entry["ended"][1] != "next"


@pytest.mark.parametrize("form", [
    ["<f8", "next", 3, "x", "nothing", [2, 0]],    # a buffer that is not there
    ["<f8", "next", 3, "y", "values", [2, 0]],     # a column that is not there
    ["<f8", "next", 2, "x", "started", [1, 0]],    # another length
    ["<i8", "next", 3, "x", "started", [2, 0]],    # another dtype
    ["<f8", "next", 3, "x", "mask", [2, 0]],       # a buffer stored without bytes
    ["<f8", "next", 3, "x", "started", [2, -1]],   # bits outside the dtype
    ["<f8", "next", 3, "x", "started", [2, 2**64]],
    ["<f8", "next", 3, "x", "started", [2, 1.5]],
    ["<f8", "next", 3, "x", "started", 0],         # breaks that are not a list
    ["<f8", "next", 3, "x", "started", []],        # no last element
    ["<f8", "next", 3, "x", "started", [1, 0]],    # breaks that end before the last
    ["<f8", "next", 3, "x", "started", [3, 0]],    # ... or after it
    ["<f8", "next", 3, "x", "started", [1, 0, 1, 0, 2, 0]],  # not increasing
    ["<f8", "next", 3, "x", "started", [-1, 0, 2, 0]],       # before the first
    ["<f8", "next", 3, "x", "started", [2]],       # a position without its bits
    ["<f8", "next", 3, "x", "started"],            # too short
    ["<f8", "next", 0, "x", "started", [0, 0]],    # empty
    ["<c16", "next", 3, "x", "started", [2, 0]],   # not a plain number
])
def test_a_follow_form_that_names_nothing_valid_is_damage_not_a_crash(form) -> None:
    """A header edited with its checksum fixed: every bad "next" is PartCorruptedError."""
    arrays = {"started": np.array([1.5, 2.5, 3.5]), "ended": np.array([2.5, 3.5, 4.5]),
              "mask": np.zeros(3, np.bool_)}
    data = encode_part({"x": Column("float", {}, arrays)}, 3)
    with pytest.raises(PartCorruptedError):
        Part(_with_form(data, "ended", "next", form)).column("x")


def _with_form(data: bytes, key: str, was: str, form: list) -> bytes:
    """A part whose buffer ``x.key`` (stored as ``was``) says ``form`` instead, resealed
    with a checksum that matches: an edit the checksum cannot see."""
    import json as _json

    size = struct.unpack_from("<I", data, 4)[0]
    header = _json.loads(data[16:16 + size])
    assert header["columns"]["x"]["buffers"][key][1] == was
    header["columns"]["x"]["buffers"][key] = form
    head = _json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((-(len(head) + 16)) % 8)
    body = data[16 + size:]
    crc = zlib.crc32(body, zlib.crc32(head, zlib.crc32(struct.pack("<I", len(head)))))
    return b"LBP2" + struct.pack("<III", len(head), crc, 0) + head + body


def test_a_part_of_plain_results_is_mostly_its_values() -> None:
    n = 10_000
    columns = {
        "attempts": encode_column("int", np.ones(n, np.int64)),
        "error": encode_column("str", [None] * n),
        "console": encode_column("str", [None] * n),
        "y": encode_column("float", np.random.default_rng(0).random(n)),
    }
    data = encode_part(columns, n)
    assert len(data) < 8 * n + 4096  # the y values, plus a header
    part = Part(bytes(data))
    assert decode_all(part.column("error")) == [None] * n
    assert decode_all(part.column("attempts")) == [1] * n


@pytest.mark.parametrize("apart", [0, 1, 63, 64, 150])
def test_a_buffer_that_follows_at_too_many_breaks_keeps_its_bytes(apart) -> None:
    rng = np.random.default_rng(apart)
    started = rng.random(300)
    ended = np.append(started[1:], 7.0)
    ended[rng.choice(299, apart, replace=False)] += 1.0  # chunks that ran apart
    entry, back = _buffers_through_file({"started": started, "ended": ended})
    assert back["ended"].tobytes() == ended.tobytes()
    assert (entry["ended"][1] == "next") == (apart < 64)


_SCALARS = st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-(2**64), 2**64),
                     st.booleans(), st.text(max_size=3),
                     st.floats().map(np.float64), st.integers(-5, 5).map(np.int32))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["numeric", "integer", "logical"]),
       st.one_of(st.lists(_SCALARS, max_size=12),  # mixed, and of one type each:
                 st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12),
                 st.lists(st.floats(allow_nan=True), max_size=12),
                 st.lists(st.booleans(), max_size=12)),
       st.booleans())
def test_output_columns_are_the_same_whether_or_not_their_types_are_known(enc, values,
                                                                         failed_first) -> None:
    """The worker passes the types it saw (``set(map(type, rets))``) to skip a second
    pass: what is stored, and which rows fail, must not change."""
    from localbatch._schema import EncodingType
    from localbatch._workers.outputs import encode_outputs

    encoding = EncodingType(enc)

    def run(types: bool) -> tuple[list[Any], list[Any]]:
        column = list(values)
        errors: list[Any] = [None] * len(column)
        if failed_first and column:
            column[0], errors[0] = None, ("E", "row failed", "")
        known = {"y": set(map(type, column))} if types else None
        out = encode_outputs([("y", encoding)], {"y": column}, errors, 1 << 20, known)
        col = out["y"]
        buffers = {k: (v.dtype.str, v.tobytes()) for k, v in col.buffers.items()}
        return [col.kind, buffers], [e and e[0] for e in errors]

    assert run(True) == run(False)


def _stepped() -> st.SearchStrategy[np.ndarray]:
    """Arrays whose elements' bits go up or down by small steps (times of rows that ran
    back to back, a few pids), of 4- and 8-byte dtypes, with a wraparound or a jump, and
    up to more outliers than a part keeps as breaks."""
    def build(dtype: str, first: int, steps: list[int], jump: int | None) -> np.ndarray:
        size = np.dtype(dtype).itemsize
        bits, value = [], first
        for k, step in enumerate([0, *steps]):  # Python ints: no overflow
            value += step + (jump if jump is not None and k == len(steps) // 2 else 0)
            bits.append(value % (1 << (8 * size)))
        return np.array(bits, f"<u{size}").view(dtype)
    return st.builds(build, st.sampled_from(["<f8", "<i8", "<u8", "<f4", "<i4", "<u4"]),
                     st.integers(0, 2**64 - 1),
                     st.lists(st.integers(-(2**33), 2**33) | st.integers(-3, 3)
                              | st.sampled_from([w + e for b in (8, 16, 32)
                                                 for w in (2**(b - 1), -(2**(b - 1)))
                                                 for e in (-1, 0, 1)]),  # the widths' edges
                              min_size=0, max_size=160),
                     st.none() | st.integers(-(2**40), 2**40))


def _step_form(arr: np.ndarray) -> tuple[int, list[int]] | None:
    """The rule, written out: (step width, 0 for none; the steps that are breaks) of the
    "delta" form ``arr`` takes, or None."""
    size = arr.dtype.itemsize
    bits = [int(b) for b in arr.view(f"<u{size}")]
    half = 1 << (8 * size - 1)
    steps = [((b - a + half) % (2 * half)) - half for a, b in zip(bits, bits[1:], strict=False)]
    if len(arr) < 16 or any(not -(2**31) <= d < 2**31 for d in steps[:8]):
        return None
    options = [(24 * sum(d != 0 for d in steps), 0, [k for k, d in enumerate(steps) if d])]
    for w in (1, 2, 4):
        if w < size:
            low, high = -(1 << (8 * w - 1)), 1 << (8 * w - 1)
            apart = [k for k, d in enumerate(steps) if not low <= d < high]
            options.append((w * len(steps) + 24 * len(apart), w, apart))
    fit = [o for o in options if len(o[2]) <= 64]
    if not fit:
        return None
    cost, width, apart = min(fit, key=lambda o: o[0])  # the first of equals: the narrowest
    return (width, apart) if cost < size * len(steps) else None


@settings(max_examples=300, deadline=None)
@given(_stepped())
def test_a_buffer_stored_as_steps_comes_back_bit_for_bit(arr) -> None:
    """The "delta" form is chosen exactly when the rule says, with the width and breaks it
    says, and every bit comes back."""
    entry, back = _buffers_through_file({"values": arr})
    assert back["values"].dtype == arr.dtype and back["values"].tobytes() == arr.tobytes()
    assert not back["values"].flags.writeable
    form = entry["values"]
    if form[1] in ("const", "range"):
        return
    expected = _step_form(arr)
    assert (form[1] == "delta") == (expected is not None), (form, expected)
    if expected is not None:
        width, apart = expected
        assert form[6][0::2] == apart
        assert (form[5] is None) == (width == 0)  # no bytes: every step but breaks is 0
        if width:
            assert np.dtype(form[4]).itemsize == width


@pytest.mark.parametrize("form", [
    ["<f8", "delta", 20, 0, "<i8", 0, []],      # steps as wide as the values
    ["<f4", "delta", 20, 0, "<i4", 0, []],
    ["<f8", "delta", 20, 0, "<f4", 0, []],      # not integer steps
    ["<f8", "delta", 20, -1, "|i1", 0, []],     # first bits outside the dtype
    ["<f8", "delta", 20, 2**64, "|i1", 0, []],
    ["<f8", "delta", 20, 0, "|i1", 10**9, []],  # steps outside the file
    ["<f8", "delta", 20, 0, "|i1", -8, []],
    ["<f8", "delta", 20, 0, "|i1", "0", []],    # an offset that is no number
    ["<f8", "delta", 20, 0, "|i1", 0],          # too short
    ["<f8", "delta", 20, 0, "|i1", 0, [], 1],   # too long
    ["<f8", "delta", 0, 0, "|i1", 0, []],       # empty
    ["<f8", "delta", 20, 0, "bogus", 0, []],    # not a dtype
    ["|b1", "delta", 20, 0, "|i1", 0, []],      # not a number
    ["<f8", "delta", 20, 0, "|i1", 0, {}],      # breaks that are no list
    ["<f8", "delta", 20, 0, "|i1", 0, [3]],     # a position without its step
    ["<f8", "delta", 20, 0, "|i1", 0, [19, 1]],  # a step past the last
    ["<f8", "delta", 20, 0, "|i1", 0, [-1, 1]],
    ["<f8", "delta", 20, 0, "|i1", 0, [4, 1, 2, 1]],  # positions not increasing
    ["<f8", "delta", 20, 0, "|i1", 0, [4, 1, 4, 1]],
    ["<f8", "delta", 20, 0, "|i1", 0, [4, 2**64]],  # step bits outside the dtype
    ["<f4", "delta", 20, 0, "|i1", 0, [4, 2**32]],
    ["<f8", "delta", 20, 0, "|i1", 0, [4, -1]],
    ["<f8", "delta", 20, 0, "|i1", 0, [4, 1.5]],
    ["<f8", "delta", 200, 0, "|i1", None, [p for k in range(65) for p in (k, 1)]],  # too many
])
def test_a_step_form_that_names_nothing_valid_is_damage_not_a_crash(form) -> None:
    values = 1e9 + np.arange(20) * 2.5e-7
    data = encode_part({"x": Column("float", {}, {"values": values})}, 20)
    with pytest.raises(PartCorruptedError):
        Part(_with_form(data, "values", "delta", form)).column("x")


@pytest.mark.parametrize(("step", "width"), [
    (127, 1), (-128, 1), (128, 2), (-129, 2), (32767, 2), (-32768, 2), (32768, 4),
    (2**31 - 1, 4), (-(2**31), 4), (2**31, None)])
def test_steps_take_the_narrowest_width_that_holds_them(step, width) -> None:
    bits = (1 << 40) + np.arange(20, dtype=np.int64) * step
    entry, back = _buffers_through_file({"values": bits.view(np.uint64).view(np.float64)})
    assert back["values"].view(np.int64).tolist() == bits.tolist()
    form = entry["values"]
    assert (np.dtype(form[4]).itemsize if form[1] == "delta" else None) == width


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["started", "pid", "y", "none", "frame"]), min_size=1,
                max_size=5, unique=True), st.integers(1, 40), st.integers(0, 2**31))
def test_a_part_kept_as_written_reads_like_its_file(names, n, seed) -> None:
    """The writer caches ``Part.encoded`` (its header as built, not parsed back): every
    column must decode exactly as from the file's bytes, and the headers must agree."""
    import json as _json

    rng = np.random.default_rng(seed)
    make = {
        "started": lambda: encode_column("float", 1.7e9 + np.cumsum(rng.integers(0, 3, n))
                                         * 2.4e-7),
        "pid": lambda: encode_column("int", np.repeat(rng.integers(1, 9, 2), [n // 2,
                                                                             n - n // 2])),
        "y": lambda: encode_column("float", rng.random(n)),
        "none": lambda: encode_column("str", [None] * n),
        "frame": lambda: encode_column("frame", [pd.DataFrame({"a": [k], "b": ["x"]})
                                                 for k in range(n)]),
    }
    columns = {name: make[name]() for name in names}
    kept = Part.encoded(columns, n)
    read = Part(bytes(kept.data))
    size = struct.unpack_from("<I", kept.data, 4)[0]
    assert kept._header == _json.loads(kept.data[16:16 + size])  # noqa: SLF001
    for name in names:
        got, want = decode_all(kept.column(name)), decode_all(read.column(name))
        for a, b in zip(got, want, strict=True):
            _assert_same(a, b)


def test_a_part_kept_as_written_holds_its_arrays_and_writes_the_file_bytes(tmp_path) -> None:
    """``Part.encoded`` joins nothing: its stored buffers are read-only views of the arrays
    it was given, and its pieces, written in turn, are the bytes ``encode_part`` makes."""
    from localbatch._store.fsutil import publish_exclusive

    values = np.random.default_rng(3).random(1000)
    started = 1.7e9 + np.arange(1000) * 2.5e-7
    started[500] += 0.01  # a preempted row: one break
    columns = {"y": Column("float", {}, {"values": values, "mask": np.zeros(1000, bool)}),
               "started": Column("float", {}, {"values": started})}
    kept = Part.encoded(columns, 1000)
    back = kept.column("y").buffers["values"]
    assert np.shares_memory(back, values) and not back.flags.writeable
    assert np.array_equal(kept.column("started").buffers["values"], started)
    assert publish_exclusive(tmp_path / "p.lbp", kept.pieces())
    data = (tmp_path / "p.lbp").read_bytes()
    assert data == encode_part(columns, 1000) == kept.data and kept.nbytes == len(data)
    assert np.array_equal(Part(data).column("started").buffers["values"], started)
