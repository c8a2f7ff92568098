"""Declared types, lossless casting and record validation.

One casting function serves consume, batch and the command line. The SDK's
table is kept (``int`` → ``integer``, ``float`` → ``numeric``, ...) with its bug
fixed: a cast that would lose information (2.9 → int, "False" → bool, 3 → str)
is an error naming the input and the value.

Missing values follow one rule for every declared type: ``None``, ``pd.NA``
and ``NaT`` mean "missing" and reach the function as ``None``. A float ``NaN``
is a value for ``float`` inputs (it stays ``NaN``) and "missing" (``None``) for
every other type, because pandas stores missing ints, bools and strings as NaN.
"""

from __future__ import annotations

import keyword
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from ._errors import InvalidServiceError, LocalBatchWarning, SchemaError

__all__ = [
    "INT64",
    "EncodingType",
    "InputTable",
    "cast_column",
    "cast_value",
    "check_artifact_name",
    "check_columns",
    "check_input_name",
    "encoding_of",
    "frame_wire",
    "normalize_records",
    "shown",
]


class EncodingType(str, Enum):
    """The SDK's server-side types, with its Python ↔ server conversions.

    A ``str`` enum: each member equals its server type string, so SDK code that
    compares ``EncodingType.from_python(float) == "numeric"`` (as the SDK's own
    tests do) keeps working, while localbatch uses the members themselves.
    """

    integer = "integer"
    numeric = "numeric"
    character = "character"
    logical = "logical"
    vector = "vector"
    matrix = "matrix"
    dataframe = "data.frame"

    def __str__(self) -> str:
        return f"<EncodingType> {self.value}"

    def describe(self) -> tuple[str, str]:
        """``(name, value)``, as in the SDK."""
        return self.name, self.value

    @classmethod
    def from_python(cls, value: Any) -> EncodingType | None:
        """Server type for a Python type or type name, ``None`` if unsupported."""
        name = getattr(value, "__name__", value)
        return _FROM_PYTHON.get(name) if isinstance(name, str) else None

    @classmethod
    def to_python(cls, value: Any) -> str | None:
        """Display name of the Python type for a server type (or its name)."""
        enc = _coerce(value)
        return None if enc is None else _TO_PYTHON[enc]

    @classmethod
    def cast_from_python(cls, server_type: Any, value: Any, name: str = "value") -> Any:
        """Cast a client value to the SDK's request form, losslessly (raises SchemaError).

        Scalars come back as ``int``/``float``/``str``/``bool``; a vector or matrix as
        (nested) lists and a DataFrame as ``{column: list}``, the JSON the SDK sent.
        """
        enc = _coerce(server_type)
        if enc is None:
            raise SchemaError(f"unknown encoding type {server_type!r}")
        return _to_wire(enc, cast_value(enc, value, name))

    @classmethod
    def cast_to_python(cls, server_type: Any, value: Any) -> Any:
        """Turn a stored/raw output value into the Python value users get."""
        enc = _coerce(server_type)
        if value is None or enc is None:
            return value
        return _to_python_value(enc, value)


_FROM_PYTHON: dict[str, EncodingType] = {
    "int": EncodingType.integer,
    "float": EncodingType.numeric,
    "str": EncodingType.character,
    "bool": EncodingType.logical,
    "array": EncodingType.vector,
    "numpy.array": EncodingType.vector,
    "ndarray": EncodingType.vector,
    "numpy.ndarray": EncodingType.vector,
    "list": EncodingType.vector,
    "matrix": EncodingType.matrix,
    "numpy.matrix": EncodingType.matrix,
    "DataFrame": EncodingType.dataframe,
    "pandas.DataFrame": EncodingType.dataframe,
}

_TO_PYTHON = {
    EncodingType.integer: "int",
    EncodingType.numeric: "float",
    EncodingType.character: "str",
    EncodingType.logical: "bool",
    EncodingType.vector: "numpy.array",
    EncodingType.matrix: "numpy.matrix",
    EncodingType.dataframe: "pandas.DataFrame",
}


def _to_wire(enc: EncodingType, value: Any) -> Any:
    """The JSON-able request form of an already cast value."""
    if value is None:
        return None
    if enc in (EncodingType.vector, EncodingType.matrix):
        return np.asarray(value).tolist()
    if enc is EncodingType.dataframe:
        return frame_wire(value)
    return value


def frame_wire(frame: Any) -> dict[str, list[Any]]:
    """A DataFrame as the SDK's JSON ``{column: values}``, by position: a duplicated
    name's second column is ``<name>.1`` (``frame[name]`` would be a frame there)."""
    out: dict[str, list[Any]] = {}
    for j, label in enumerate(frame.columns):
        key, n = str(label), 0
        while key in out:
            n += 1
            key = f"{label}.{n}"
        out[key] = frame.iloc[:, j].tolist()
    return out


def _coerce(value: Any) -> EncodingType | None:
    if isinstance(value, EncodingType):
        return value
    try:
        return EncodingType(value)
    except ValueError:
        return None


def encoding_of(type_: Any, name: str) -> EncodingType:
    """Deploy-time check of a declared type (SDK message kept)."""
    enc = EncodingType.from_python(type_)
    if enc is None:
        raise InvalidServiceError(
            f'Invalid `encoding` type "{type_}" for "{name}": use one of float, int, bool, '
            "str, numpy.array, numpy.matrix, pandas.DataFrame (as types or strings)"
        )
    return enc


def check_input_name(name: str) -> None:
    """Input, output, model and object names must be identifiers (they become variables)."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise InvalidServiceError(
            f"input/output name {name!r} must be a Python identifier and not a keyword"
        )


#: The longest file name the file systems localbatch runs on allow, in bytes.
NAME_MAX = 255


def check_artifact_name(name: Any) -> str:
    """An artifact name must name one file of the row's working folder on every file
    system: a non-empty str, not ``.``/``..``, without ``/``, ``\\`` or NUL, and at
    most 255 bytes in UTF-8 (bytes, not characters: 100 CJK characters are 300)."""
    why = ""
    if not isinstance(name, str):
        why = f"is a {type(name).__name__}, not a str"
    elif not name:
        why = "is empty"
    elif name in (".", ".."):
        why = "names a folder, not a file"
    elif "/" in name or "\\" in name:
        why = "has a path separator: artifacts are files of the row's working folder itself"
    elif "\0" in name:
        why = "has a NUL character"
    else:
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            why = "is not valid Unicode text (it holds a lone surrogate)"
        else:
            if size > NAME_MAX:
                why = f"is {size} bytes long in UTF-8, and a file name has at most {NAME_MAX}"
    if why:
        raise InvalidServiceError(f"artifact name {shown(name)} {why}: an artifact must be a "
                                  "plain file name")
    return name


# -- casting one value ------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    # pd.NA and NaT compare oddly; recognise them without importing pandas here.
    return type(value).__name__ in ("NAType", "NaTType")


def shown(value: Any, width: int = 80) -> str:
    """``repr(value)`` cut to ``width`` characters, whatever the value's ``__repr__`` does."""
    try:
        text = repr(value)
        if not isinstance(text, str):
            raise TypeError("__repr__ returned a non-string")
    except Exception:  # noqa: BLE001 - a user object whose __repr__ raises
        return f"<{type(value).__name__} object (repr failed)>"
    return text if len(text) <= width else text[:width - 3] + "..."


def _fail(enc: EncodingType, name: str, value: Any, why: str = "") -> SchemaError:
    what = _TO_PYTHON[enc]
    extra = f" ({why})" if why else ""
    # `name` may carry its role ("output 'answer'"); a bare name is an input.
    label = name if " " in name else f"input {name!r}"
    return SchemaError(
        f"Invalid {label}: {shown(value)} of type {type(value).__name__} cannot be "
        f"cast losslessly to {what}{extra}"
    )


def _cast_float(value: Any, name: str) -> Any:
    if type(value) is float:
        return value
    if isinstance(value, float):  # numpy.float64: a float subclass; hand over a plain one
        return float(value)
    if isinstance(value, (bool, np.bool_)):
        raise _fail(EncodingType.numeric, name, value, "a bool is not a number here")
    if isinstance(value, numbers.Real):
        out = float(value)
        # Python compares int and float exactly: 2**53 + 1 does not survive as a float.
        if out == value or math.isnan(out):
            return out
        raise _fail(EncodingType.numeric, name, value, "not exactly representable")
    raise _fail(EncodingType.numeric, name, value)


#: The smallest and largest int64, both included (what an ``integer`` column holds).
INT64 = (-(2**63), 2**63 - 1)


def _cast_int(value: Any, name: str) -> Any:
    if isinstance(value, (bool, np.bool_)):
        raise _fail(EncodingType.integer, name, value, "a bool is not a number here")
    if isinstance(value, numbers.Integral) or (
            isinstance(value, numbers.Real) and float(value).is_integer()):
        out = int(value)
        if not INT64[0] <= out <= INT64[1]:
            raise _fail(EncodingType.integer, name, value, "outside the 64-bit range")
        return out
    raise _fail(EncodingType.integer, name, value)


def _cast_str(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return str(value)
    raise _fail(EncodingType.character, name, value)


def _cast_bool(value: Any, name: str) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    # 0 and 1 round-trip exactly (int(True) == 1); any other value would be a guess.
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise _fail(EncodingType.logical, name, value)


def _cast_vector(value: Any, name: str) -> Any:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(
        value, (Sequence, np.ndarray)
    ) and not hasattr(value, "to_numpy"):
        raise _fail(EncodingType.vector, name, value)
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise _fail(EncodingType.vector, name, value, f"{arr.ndim}-dimensional")
    return arr


def _cast_matrix(value: Any, name: str) -> Any:
    if isinstance(value, (str, bytes, Mapping)):
        raise _fail(EncodingType.matrix, name, value)
    try:
        arr = np.asarray(value)
    except ValueError as exc:
        raise _fail(EncodingType.matrix, name, value, str(exc))
    if arr.ndim != 2:
        raise _fail(EncodingType.matrix, name, value, f"{arr.ndim}-dimensional")
    return arr


def _cast_frame(value: Any, name: str) -> Any:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return value
    if isinstance(value, Mapping):
        try:
            return pd.DataFrame(dict(value))
        except ValueError as exc:
            raise _fail(EncodingType.dataframe, name, value, str(exc))
    raise _fail(EncodingType.dataframe, name, value)


_CASTS = {
    EncodingType.numeric: _cast_float,
    EncodingType.integer: _cast_int,
    EncodingType.character: _cast_str,
    EncodingType.logical: _cast_bool,
    EncodingType.vector: _cast_vector,
    EncodingType.matrix: _cast_matrix,
    EncodingType.dataframe: _cast_frame,
}


def cast_value(enc: EncodingType, value: Any, name: str) -> Any:
    """Cast one value losslessly to ``enc``; missing values follow the module's rule."""
    if enc in _SCALARS and _is_missing(value):
        # NaN is a value of a float input; for every other type it means "missing".
        return value if enc is EncodingType.numeric and isinstance(value, float) else None
    if value is None:
        return None
    return _CASTS[enc](value, name)


_SCALARS = frozenset(
    (EncodingType.numeric, EncodingType.integer, EncodingType.character, EncodingType.logical)
)


def _to_python_value(enc: EncodingType, value: Any) -> Any:
    if enc is EncodingType.numeric:
        return float(value)
    if enc is EncodingType.integer:
        return int(value)
    if enc is EncodingType.logical:
        return bool(value)
    if enc is EncodingType.vector:
        return np.asarray(value)
    if enc is EncodingType.matrix:
        with warnings.catch_warnings():
            # numpy.matrix is what the SDK returns; its deprecation notice is not the user's.
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            return np.matrix(value)
    if enc is EncodingType.dataframe:
        import pandas as pd

        return value if isinstance(value, pd.DataFrame) else pd.DataFrame(value)
    return value


# -- casting a whole column ---------------------------------------------------


def cast_column(enc: EncodingType, values: Any, name: str, offset: int = 0) -> Any:
    """Cast a column (pandas Series, array or list); errors name the row position.

    Returns a numpy array for clean numeric columns, else a list.
    """
    fast = _fast_column(enc, values)
    if fast is not None:
        return fast
    seq = values.tolist() if hasattr(values, "tolist") and enc not in (
        EncodingType.dataframe, EncodingType.vector, EncodingType.matrix) else list(values)
    out = []
    for pos, value in enumerate(seq):
        try:
            out.append(cast_value(enc, value, name))
        except SchemaError as exc:
            raise SchemaError(f"row {pos + offset}: {exc}") from None
    return out


def _fast_column(enc: EncodingType, values: Any) -> Any:
    """Vectorised casts for the common numpy dtypes, as arrays; None means the slow path.

    Only casts that are lossless for every value are taken here (ints beyond 2**53
    as floats, or beyond int64, go the slow path and fail there, naming the row).
    """
    dtype = getattr(values, "dtype", None)
    if dtype is None or not isinstance(dtype, np.dtype) or len(values) == 0:
        return None
    arr = np.asarray(values)
    kind = dtype.kind
    if enc is EncodingType.numeric and (kind == "f" or kind in "iu" and np.abs(arr).max()
                                        <= 2**53):
        return arr.astype(np.float64, copy=False)
    if enc is EncodingType.integer and (kind == "i" or kind == "u" and arr.max() < 2**63):
        return arr.astype(np.int64, copy=False)
    if enc is EncodingType.logical and kind == "b":
        return arr.astype(np.bool_, copy=False)
    return None


# -- whole record sets ---------------------------------------------------------


@dataclass
class InputTable:
    """Validated batch input: cast columns in the service's input order."""

    columns: dict[str, list[Any]]
    index: Sequence[Any]

    def __len__(self) -> int:
        return len(self.index)


def normalize_records(records: Any, inputs: Sequence[tuple[str, EncodingType]]) -> InputTable:
    """Validate and cast records of any accepted form; nothing runs on failure."""
    if not inputs:
        raise SchemaError("Attempt to batch a service with void inputs.")
    import pandas as pd

    if isinstance(records, pd.DataFrame):
        return _from_frame(records, inputs)
    if isinstance(records, Mapping):
        return _from_dict(records, inputs)
    if isinstance(records, (list, tuple)) and all(isinstance(r, Mapping) for r in records):
        return _from_record_list(list(records), inputs)
    raise TypeError(
        f"records of type {type(records).__name__} are not accepted: pass a pandas "
        "DataFrame, a dict of equal-length lists, a list of record dicts, or the path of "
        "a .csv/.tsv file"
    )


def check_columns(present: Sequence[Any], inputs: Sequence[tuple[str, EncodingType]]) -> None:
    """The records' column names: no duplicate, and every declared input present."""
    seen: set[Any] = set()
    dups = sorted({str(c) for c in present if c in seen or seen.add(c)})
    if dups:
        raise SchemaError(f"duplicate columns in records: {', '.join(dups)}")
    missing = [n for n, _ in inputs if n not in seen]
    if missing:
        lower = {str(c).lower(): c for c in present}
        hints = [f"{m!r} (did you mean {lower[m.lower()]!r}?)" if m.lower() in lower else repr(m)
                 for m in missing]
        raise SchemaError(f"records are missing input column(s): {', '.join(hints)}")
    extra = [str(c) for c in present if c not in {n for n, _ in inputs}]
    if extra:
        warnings.warn(f"ignoring columns that are not service inputs: {', '.join(extra)}",
                      LocalBatchWarning, stacklevel=4)


def _from_frame(frame: Any, inputs: Sequence[tuple[str, EncodingType]]) -> InputTable:
    import pandas as pd

    if isinstance(frame.columns, pd.MultiIndex):
        raise SchemaError("records have MultiIndex columns: flatten them to input names")
    check_columns(list(frame.columns), inputs)
    if len(frame) == 0:
        raise SchemaError("no records: the input has 0 rows")
    cols = {name: cast_column(enc, frame[name], name) for name, enc in inputs}
    index = frame.index
    if isinstance(index, pd.RangeIndex):
        # Kept as a range: a million labels are not walked one by one.
        return InputTable(cols, range(index.start, index.stop, index.step))
    return InputTable(cols, index.tolist())


def _from_dict(records: Mapping[str, Any], inputs: Sequence[tuple[str, EncodingType]]
               ) -> InputTable:
    check_columns(list(records), inputs)
    lengths = {name: len(records[name]) for name, _ in inputs}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise SchemaError(
            f'Record out of bounds ({detail}), all records must be of the same length.'
        )
    n = next(iter(lengths.values()))
    if n == 0:
        raise SchemaError("no records: the input lists are empty")
    cols = {name: cast_column(enc, records[name], name) for name, enc in inputs}
    return InputTable(cols, range(n))


def _from_record_list(
    records: list[Mapping[str, Any]], inputs: Sequence[tuple[str, EncodingType]]
) -> InputTable:
    if not records:
        raise SchemaError("no records: the input list is empty")
    names = [n for n, _ in inputs]
    cols: dict[str, list[Any]] = {n: [] for n in names}
    warned = False
    for pos, rec in enumerate(records):
        missing = [n for n in names if n not in rec]
        if missing:
            raise SchemaError(f"record {pos} is missing input(s): {', '.join(map(repr, missing))}")
        if not warned and len(rec) > len(names):
            check_columns(list(rec), inputs)
            warned = True
        for name, enc in inputs:
            try:
                cols[name].append(cast_value(enc, rec[name], name))
            except SchemaError as exc:
                raise SchemaError(f"row {pos}: {exc}") from None
    return InputTable(cols, range(len(records)))
