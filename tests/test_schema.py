"""EncodingType and lossless casting: the SDK's own unit tests, then its bug fixed."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from localbatch import EncodingType, SchemaError
from localbatch._schema import cast_column, cast_value, check_input_name, encoding_of


def _matrix(rows):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.matrix(rows)


FRAME = {"n": [2.0, 3.0, 5.0], "s": ["aa", "bb", "cc"], "b": [True, False, True]}

# -- the SDK's test_encoding_type.py, case for case ----------------------------------


@pytest.mark.parametrize("input_type, input_value, expected", [
    ("int", 5, 5),
    ("float", 5.12345, 5.12345),
    ("str", "MLServer", "MLServer"),
    ("bool", True, True),
    ("numpy.array", np.array([1, 2]), [1, 2]),
    ("numpy.matrix", "matrix", [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]),
    ("pandas.DataFrame", pd.DataFrame(FRAME)[["n", "s", "b"]], FRAME),
])
def test_sdk_cast_from_python(input_type, input_value, expected):
    if isinstance(input_value, str) and input_value == "matrix":
        input_value = _matrix(np.arange(12).reshape((3, 4)))
    server_type = EncodingType.from_python(input_type)
    assert EncodingType.cast_from_python(server_type, input_value) == expected


@pytest.mark.parametrize("output_type, output_value, expected", [
    (EncodingType.integer.value, 5, 5),
    (EncodingType.numeric.value, 5.12345, 5.12345),
    (EncodingType.character.value, "MLServer", "MLServer"),
    (EncodingType.logical.value, True, True),
])
def test_sdk_cast_to_python_primitives(output_type, output_value, expected):
    out = EncodingType.cast_to_python(output_type, output_value)
    assert out == expected and type(out) is type(expected)


def test_sdk_cast_to_python_non_primitives():
    vec = EncodingType.cast_to_python(EncodingType.vector.value, [1, 2])
    assert isinstance(vec, np.ndarray) and np.all(vec == np.array([1, 2]))
    grid = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    mat = EncodingType.cast_to_python(EncodingType.matrix.value, grid)
    assert isinstance(mat, np.matrix) and np.all(mat == _matrix(grid))
    frame = EncodingType.cast_to_python(EncodingType.dataframe.value, FRAME)
    assert frame.equals(pd.DataFrame(FRAME))
    assert EncodingType.cast_to_python("numeric", None) is None


@pytest.mark.parametrize("input_type, expected", [
    ("int", "integer"), ("float", "numeric"), ("str", "character"), ("bool", "logical"),
    ("numpy.array", "vector"), ("numpy.matrix", "matrix"), ("pandas.DataFrame", "data.frame"),
    (int, "integer"), (float, "numeric"), (str, "character"), (bool, "logical"),
    (np.array, "vector"), (np.matrix, "matrix"), (pd.DataFrame, "data.frame"),
    # the SDK's other spellings, and numpy.ndarray (bug B15 fixed)
    ("array", "vector"), ("list", "vector"), (list, "vector"), ("matrix", "matrix"),
    ("DataFrame", "data.frame"), (np.ndarray, "vector"),
])
def test_sdk_from_python(input_type, expected):
    enc = EncodingType.from_python(input_type)
    assert enc == expected  # a str enum: SDK code compares with the server string
    assert enc is EncodingType(expected)


@pytest.mark.parametrize("input_type", ["numeric", "integer", dict, np.float64, "tuple", None, 3])
def test_from_python_rejects_what_the_sdk_rejects(input_type):
    assert EncodingType.from_python(input_type) is None


@pytest.mark.parametrize("server_type, expected", [
    ("integer", "int"), ("numeric", "float"), ("character", "str"), ("logical", "bool"),
    ("vector", "numpy.array"), ("matrix", "numpy.matrix"), ("data.frame", "pandas.DataFrame"),
    ("dataframe", None), ("nope", None),
])
def test_sdk_to_python(server_type, expected):
    assert EncodingType.to_python(server_type) == expected


def test_str_and_describe():
    assert str(EncodingType.numeric) == "<EncodingType> numeric"
    assert str(EncodingType.dataframe) == "<EncodingType> data.frame"
    assert EncodingType.dataframe.describe() == ("dataframe", "data.frame")
    assert [e.value for e in EncodingType] == [
        "integer", "numeric", "character", "logical", "vector", "matrix", "data.frame"]


# -- lossless casting (the SDK's bug fixed) -------------------------------------------


@pytest.mark.parametrize("enc, value, shown", [
    (EncodingType.integer, 2.9, "2.9"),
    (EncodingType.logical, "False", "'False'"),
    (EncodingType.character, 3, "3"),
    (EncodingType.numeric, True, "True"),
    (EncodingType.numeric, "1.5", "'1.5'"),
    (EncodingType.numeric, 2 ** 53 + 1, str(2 ** 53 + 1)),
    (EncodingType.integer, "7", "'7'"),
    (EncodingType.logical, 2, "2"),
    (EncodingType.logical, 1.0, "1.0"),
    (EncodingType.vector, "abc", "'abc'"),
    (EncodingType.matrix, [1, 2], "[1, 2]"),
    (EncodingType.dataframe, [1, 2], "[1, 2]"),
])
def test_lossy_casts_are_errors_naming_input_and_value(enc, value, shown):
    with pytest.raises(ValueError) as info:
        cast_value(enc, value, "hp")
    assert isinstance(info.value, SchemaError)
    text = str(info.value)
    assert "'hp'" in text and shown in text and EncodingType.to_python(enc) in text


@pytest.mark.parametrize("enc, value, expected", [
    (EncodingType.numeric, np.float64(2.5), 2.5),
    (EncodingType.numeric, np.float32(0.5), 0.5),
    (EncodingType.numeric, np.int64(3), 3.0),
    (EncodingType.numeric, 3, 3.0),
    (EncodingType.integer, np.int32(7), 7),
    (EncodingType.integer, 2.0, 2),
    (EncodingType.integer, np.float64(4.0), 4),
    (EncodingType.logical, np.bool_(True), True),
    (EncodingType.logical, np.int64(0), False),
    (EncodingType.character, np.str_("a"), "a"),
])
def test_lossless_casts_keep_the_value_with_plain_python_types(enc, value, expected):
    out = cast_value(enc, value, "x")
    assert out == expected and type(out) is type(expected)


def test_missing_values():
    for enc in (EncodingType.integer, EncodingType.character, EncodingType.logical):
        assert cast_value(enc, float("nan"), "x") is None
        assert cast_value(enc, pd.NA, "x") is None
        assert cast_value(enc, None, "x") is None
    assert math.isnan(cast_value(EncodingType.numeric, float("nan"), "x"))
    assert cast_value(EncodingType.numeric, None, "x") is None
    assert cast_value(EncodingType.dataframe, None, "x") is None


def test_containers():
    vec = cast_value(EncodingType.vector, [1, 2, 3], "v")
    assert isinstance(vec, np.ndarray) and vec.tolist() == [1, 2, 3]
    assert cast_value(EncodingType.vector, pd.Series([1.5]), "v").tolist() == [1.5]
    assert cast_value(EncodingType.matrix, [[1, 2], [3, 4]], "m").shape == (2, 2)
    with pytest.raises(SchemaError, match="3-dimensional"):
        cast_value(EncodingType.matrix, np.zeros((2, 2, 2)), "m")
    frame = cast_value(EncodingType.dataframe, {"a": [1, 2]}, "d")
    assert isinstance(frame, pd.DataFrame) and frame["a"].tolist() == [1, 2]
    assert EncodingType.cast_from_python("vector", [1, 2]) == [1, 2]  # SDK bug B15 fixed


def test_cast_from_python_is_lossless_too():
    with pytest.raises(ValueError, match="2.9"):
        EncodingType.cast_from_python("integer", 2.9)
    with pytest.raises(ValueError, match="'False'"):
        EncodingType.cast_from_python(EncodingType.logical, "False")
    assert EncodingType.cast_from_python("integer", None) is None
    with pytest.raises(SchemaError, match="unknown encoding"):
        EncodingType.cast_from_python("float", 1.0)


def test_cast_column_names_the_row():
    assert list(cast_column(EncodingType.numeric, pd.Series([1, 2]), "a")) == [1.0, 2.0]
    assert cast_column(EncodingType.integer, [1, 2.0], "a") == [1, 2]
    with pytest.raises(SchemaError, match=r"row 2: .*'a'.*2\.5"):
        cast_column(EncodingType.integer, [1, 2, 2.5], "a")


def test_declared_types_and_names():
    assert encoding_of("pandas.DataFrame", "x") is EncodingType.dataframe
    with pytest.raises(ValueError, match='"numeric" for "x"'):
        encoding_of("numeric", "x")
    for bad in ("1a", "a-b", "class", "", None):
        with pytest.raises(ValueError):
            check_input_name(bad)
    check_input_name("hp")
