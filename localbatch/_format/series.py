"""One DataFrame column ↔ a typed sub-column of a ``frame`` value, exactly or not at all.

A column is stored as one of these kinds, with a dtype *token* beside it (a dtype
name pandas parses, or one of the ``string`` spellings below) to restore it:

- ``float`` / ``int`` / ``bool``: numpy numbers, the nullable ``Int64``/``Float64``/
  ``boolean`` dtypes, pyarrow-backed numbers, and ``object`` columns holding only
  Python numbers of one kind; a values array and a missing mask;
- ``datetime64[<unit>]`` / ``timedelta64[<unit>]``: int64 counts of the column's own
  unit (so 2300-01-01 in seconds stays 2300-01-01), UTC for tz-aware columns,
  numpy- or pyarrow-backed;
- ``str``: ``str``/``string`` dtypes and ``object`` columns holding only ``str``;
- categories: their codes as ``int``, the categories and their order in the token;
- ``datetime`` (read only): int64 nanoseconds, as parts written before 0.x stored
  every datetime.

Anything else — ``object`` columns of bytes, Decimal, dates or mixed types,
periods, intervals, complex numbers, uint64 beyond int64 — raises
:class:`~localbatch._errors.SchemaError` naming the column and a value: it is never
turned into text. Every column whose dtype is not a plain numpy number is
decoded again right after encoding and compared with the original (dtype and
values, missing in the same places), so a dtype this module gets wrong fails
loudly instead of coming back changed. Plain numpy numbers need no check: their
cast to int64/float64 and back is exact by construction.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np

from .._errors import SchemaError

__all__ = ["Sub", "decode_sub", "dtype_token", "encode_series", "refuse"]

_NUMBER = {"f": "float", "i": "int", "u": "int", "b": "bool"}
_DTYPES = {"float": np.float64, "int": np.int64, "bool": np.bool_}
_FILL = {"float": np.nan, "int": 0, "bool": False}


class Sub(NamedTuple):
    """One column, encoded: its kind, dtype token, values and missing mask."""

    kind: str
    token: str
    #: A numpy array (number kinds) or a list of str/None (``str``).
    values: Any
    mask: np.ndarray


def refuse(where: str, value: Any, why: str) -> SchemaError:
    """The error for a value that cannot be stored exactly."""
    from .._schema import shown

    return SchemaError(f"{where}: cannot store {shown(value)} of type "
                       f"{type(value).__name__} exactly ({why})")


def dtype_token(dtype: Any) -> str:
    """A dtype's name that :func:`_dtype_from_token` turns back into the same dtype."""
    name = type(dtype).__name__
    if name == "StringDtype":
        nan_marker = dtype.na_value is not dtype.na_value or isinstance(dtype.na_value, float)
        base = "str" if nan_marker else "string"
        return f"{base}[{dtype.storage}]"
    return str(dtype)


def _dtype_from_token(token: str) -> Any:
    import pandas as pd

    if token.startswith("category{"):
        spec = json.loads(token[len("category"):])
        return pd.CategoricalDtype(spec["categories"], ordered=spec["ordered"])
    if token.startswith(("str[", "string[")):
        base, storage = token[:-1].split("[")
        return pd.StringDtype(storage, na_value=np.nan if base == "str" else pd.NA)
    return pd.api.types.pandas_dtype(token)


# -- encoding ----------------------------------------------------------------


def encode_series(series: Any, where: str) -> Sub:
    """A column as a sub-column; raises SchemaError if it cannot come back exactly."""
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in _NUMBER:
        return _numpy_numbers(series, dtype, where)
    sub = _encode_other(series, dtype, where)
    _check(series, sub, where)
    return sub


def _numpy_numbers(series: Any, dtype: np.dtype, where: str) -> Sub:
    kind = _NUMBER[dtype.kind]
    values = series.to_numpy()
    if dtype == np.uint64 and len(values) and values.max() > np.iinfo(np.int64).max:
        big = int(values[values > np.iinfo(np.int64).max][0])
        raise refuse(where, big, "beyond the 64-bit signed range")
    return Sub(kind, str(dtype), values.astype(_DTYPES[kind], copy=False),
               np.zeros(len(values), np.bool_))


def _encode_other(series: Any, dtype: Any, where: str) -> Sub:
    token = dtype_token(dtype)
    if token == "object":
        return _object_column(series, where)
    if type(dtype).__name__ == "ArrowDtype":
        return _arrow_column(series, dtype, token, where)
    kind = getattr(dtype, "kind", "O")
    if kind in "Mm":
        return _temporal(series, dtype, token)
    if type(dtype).__name__ == "StringDtype":
        return _texts(series, token)
    if type(dtype).__name__ == "CategoricalDtype":
        return _categories(series, dtype, where)
    if kind in _NUMBER and hasattr(series.array, "_mask"):  # nullable Int64, Float64, boolean
        return _masked_numbers(series, _NUMBER[kind], token)
    raise refuse(where, series.iloc[0] if len(series) else dtype, f"dtype {token} is not "
                 "stored: use float, int, bool, str, datetime64 or timedelta64 columns")


def _categories(series: Any, dtype: Any, where: str) -> Sub:
    """Codes as ints; the categories (JSON labels) and their order in the token."""
    cats = dtype.categories.tolist()
    odd = next((c for c in cats if type(c) not in (str, int, float, bool)), None)
    if odd is not None:
        raise refuse(where, odd, "categories must be str, int, float or bool")
    codes = series.cat.codes.to_numpy().astype(np.int64)
    token = "category" + json.dumps({"categories": cats, "ordered": bool(dtype.ordered)})
    return Sub("int", token, codes, codes < 0)


def _masked_numbers(series: Any, kind: str, token: str) -> Sub:
    mask = series.isna().to_numpy()
    values = series.to_numpy(_DTYPES[kind], na_value=_FILL[kind])
    return Sub(kind, token, values, mask)


def _texts(series: Any, token: str) -> Sub:
    texts = [None if m else v for v, m in zip(series.tolist(), series.isna().tolist(),
                                              strict=True)]
    return Sub("str", token, texts, np.fromiter((t is None for t in texts), np.bool_,
                                                len(texts)))


def _temporal(series: Any, dtype: Any, token: str) -> Sub:
    if getattr(dtype, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    arr = series.to_numpy()
    unit = np.datetime_data(arr.dtype)[0]
    base = "datetime64" if arr.dtype.kind == "M" else "timedelta64"
    return Sub(f"{base}[{unit}]", token, arr.view(np.int64), np.isnat(arr))


def _arrow_column(series: Any, dtype: Any, token: str, where: str) -> Sub:
    import pyarrow as pa

    typ = dtype.pyarrow_dtype
    mask = series.isna().to_numpy()
    if pa.types.is_timestamp(typ) or pa.types.is_duration(typ):
        ints = pa.array(series.array).cast(pa.int64()).fill_null(0)
        base = "datetime64" if pa.types.is_timestamp(typ) else "timedelta64"
        return Sub(f"{base}[{typ.unit}]", token, ints.to_numpy(zero_copy_only=False), mask)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return _texts(series, token)
    kind = _NUMBER.get(getattr(dtype, "kind", ""), "")
    if kind and (pa.types.is_integer(typ) or pa.types.is_floating(typ)
                 or pa.types.is_boolean(typ)):
        if pa.types.is_uint64(typ):
            _numpy_numbers(series.dropna().astype("uint64"), np.dtype("uint64"), where)
        return _masked_numbers(series, kind, token)
    raise refuse(where, series.iloc[0] if len(series) else dtype, f"dtype {token} is not "
                 "stored")


def _present(v: Any) -> bool:
    return not (v is None or (isinstance(v, float) and v != v)
                or type(v).__name__ in ("NAType", "NaTType"))


def _object_column(series: Any, where: str) -> Sub:
    """Object columns of one plain type (str, bool, int, float; missing = None)."""
    raw = series.tolist()
    present = [v for v in raw if _present(v)]
    types = set(map(type, present))
    if types <= {str}:
        texts = [v if _present(v) else None for v in raw]
        return Sub("str", "object", texts, np.fromiter((t is None for t in texts), np.bool_,
                                                        len(texts)))
    for kind, allowed in (("bool", {bool}), ("int", {int}), ("float", {float})):
        if types <= allowed:
            if kind == "float":  # NaN is a value here: only None/NA/NaT are missing
                mask = np.fromiter((v is None or type(v).__name__ in ("NAType", "NaTType")
                                    for v in raw), np.bool_, len(raw))
            else:
                mask = np.fromiter((not _present(v) for v in raw), np.bool_, len(raw))
            filled = [_FILL[kind] if m else v for v, m in zip(raw, mask.tolist(), strict=True)]
            try:
                values = np.array(filled, _DTYPES[kind])
            except OverflowError:
                big = next(v for v in present if not -(2**63) <= v < 2**63)
                raise refuse(where, big, "beyond the 64-bit signed range") from None
            return Sub(kind, "object", values, mask)
    odd = next((v for v in present if type(v) not in (str, bool, int, float)), None)
    if odd is not None:
        raise refuse(where, odd, "object columns hold str, int, float or bool values only; "
                     "convert it to one of those")
    raise refuse(where, present[0], f"an object column of mixed types "
                 f"({', '.join(sorted(t.__name__ for t in types))}); give it one type")


def _check(series: Any, sub: Sub, where: str) -> None:
    """Decode what was encoded and compare: a dtype stored wrongly fails here."""
    try:
        back = decode_sub(sub.kind, sub.token, sub.values, sub.mask)
        same = str(back.dtype) == str(series.dtype) and _equal(series, back)
    except Exception:  # noqa: BLE001 - a dtype pandas cannot rebuild is not stored
        same = False
    if not same:
        raise refuse(where, series.iloc[0] if len(series) else series.dtype,
                     f"its dtype {series.dtype} does not come back exactly")


def _equal(series: Any, back: Any) -> bool:
    left = series.reset_index(drop=True)
    if not left.isna().equals(back.isna()):
        return False
    present = ~left.isna().to_numpy()
    return bool(left[present].reset_index(drop=True).equals(back[present]
                                                            .reset_index(drop=True)))


# -- decoding -----------------------------------------------------------------


def decode_sub(kind: str, token: str, values: Any, mask: np.ndarray) -> Any:
    """A sub-column's values (a slice of its buffers) back as a Series of its dtype."""
    import pandas as pd

    if kind.startswith(("datetime64[", "timedelta64[")):
        return _decode_temporal(kind, token, values, mask)
    if token.startswith("category{"):
        codes = np.where(np.asarray(mask, np.bool_), -1, np.asarray(values, np.int64))
        return pd.Series(pd.Categorical.from_codes(codes, dtype=_dtype_from_token(token)))
    if kind == "str":
        series = pd.Series(list(values), dtype=object)
    elif not mask.any() and token != "object":
        series = pd.Series(np.asarray(values), copy=True)
    else:
        series = pd.Series([None if m else v for v, m in zip(np.asarray(values).tolist(),
                                                              mask.tolist(), strict=True)],
                           dtype=object)
    if token == "object" or str(series.dtype) == token:
        return series
    target = _dtype_from_token(token)
    if isinstance(target, np.dtype) and target.kind in "iub" and mask.any():
        return series  # numpy ints and bools cannot hold a missing value: keep None
    return series.astype(target)


def _decode_temporal(kind: str, token: str, values: Any, mask: np.ndarray) -> Any:
    import pandas as pd

    target = _dtype_from_token(token)
    ints = np.asarray(values, np.int64)
    if type(target).__name__ == "ArrowDtype":
        import pyarrow as pa

        arr = pa.array(ints, mask=np.asarray(mask, np.bool_)).cast(target.pyarrow_dtype)
        return pd.Series(pd.arrays.ArrowExtensionArray(arr))
    arr = ints.view(kind).copy()
    arr[np.asarray(mask, np.bool_)] = np.datetime64("NaT") if kind[0] == "d" \
        else np.timedelta64("NaT")
    series = pd.Series(arr)
    tz = getattr(target, "tz", None)
    return series if tz is None else series.dt.tz_localize("UTC").dt.tz_convert(tz)
