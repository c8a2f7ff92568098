"""Columnar encoding of row values.

Every value that crosses into the store (inputs, outputs, errors, console
text) is encoded per column into plain numeric numpy buffers, so reading a part
never unpickles anything. Kinds:

- ``float`` / ``int`` / ``bool``: a value array and a missing mask;
- ``str``: UTF-8 bytes, int64 offsets and a missing mask (``buffers.py``);
- ``json``: vectors and matrices as JSON text (a ``str`` column);
- ``frame``: DataFrames as one long table (row *i* owns ``nrows[i]`` rows of it)
  with the union of their columns, each a sub-column of one of the kinds above
  (plus ``datetime``), and per row the columns it really had (``frames.py``).

This module is the entry point: it dispatches on the kind. Columns are stored
in part files (``part.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .._errors import SchemaError
from .._schema import shown
from .buffers import Buffers, concat_strings, encode_strings, missing_mask, string_at, strings_all
from .frames import concat_frames, encode_frames, frame_at, frame_sizes, frames_all

__all__ = [
    "Column",
    "concat_columns",
    "decode_all",
    "decode_one",
    "encode_column",
    "kind_for_encoding",
    "value_sizes",
]


class Column(NamedTuple):
    """One encoded column (a plain tuple at runtime, so it pickles as one)."""

    #: ``float``, ``int``, ``bool``, ``str``, ``json`` or ``frame``.
    kind: str
    #: Kind-specific metadata (a frame's sub-columns); ``{}`` for the others.
    meta: dict[str, Any]
    #: The named numpy arrays that hold the values.
    buffers: Buffers


def kind_for_encoding(enc_value: str) -> str:
    return {
        "numeric": "float",
        "integer": "int",
        "logical": "bool",
        "character": "str",
        "vector": "json",
        "matrix": "json",
        "data.frame": "frame",
    }[enc_value]


# -- encoding ----------------------------------------------------------------

_NUMBER_DTYPES: dict[str, Any] = {"float": np.float64, "int": np.int64, "bool": np.bool_}


def _encode_number(values: Sequence[Any], dtype: Any) -> Buffers:
    # None must be masked before numpy sees it: np.array([None], float) is NaN and
    # np.array([None], bool) is False, which would lose the missing value.
    mask = missing_mask(values)
    if mask.any():
        values = [0 if m else v for v, m in zip(values, mask.tolist(), strict=True)]
    return {"values": np.asarray(values, dtype=dtype), "mask": mask}


def _encode_json(values: Sequence[Any]) -> Buffers:
    return encode_strings([None if v is None else _array_text(v) for v in values])


def _array_text(value: Any) -> str:
    """A vector or matrix as JSON: a plain (nested) list where ``np.asarray`` of it gives
    the same array back, else ``{"dtype", "shape", "data"}`` (``"bits"``, the elements'
    bits as unsigned integers, for floats with a NaN); raises SchemaError for arrays JSON
    cannot hold exactly (object, complex, bytes, floats wider than 64 bits)."""
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if kind == "f" and arr.dtype.itemsize not in (2, 4, 8):
        raise SchemaError(f"an array of dtype {arr.dtype} cannot be stored exactly (its "
                          f"values are wider than a float64): value {shown(value)}")
    bits = _odd_nan_bits(arr) if kind == "f" else None
    if bits is not None:
        return json.dumps({"dtype": arr.dtype.str, "shape": list(arr.shape), "bits": bits})
    if kind in "biufU":
        data = arr.tolist()
        back = np.asarray(data)
        if back.dtype == arr.dtype and back.shape == arr.shape:
            return json.dumps(data)
    if kind in "Mm":  # every unit, NaT included, as its int64 count (in native order)
        data = arr.astype(arr.dtype.newbyteorder("="), copy=False).view(np.int64).tolist()
    elif kind in "biufU":
        data = arr.tolist()
    else:
        raise SchemaError(f"an array of dtype {arr.dtype} cannot be stored exactly: use "
                          "numbers, bools, str or datetime64 (value {})".format(shown(value)))
    return json.dumps({"dtype": arr.dtype.str, "shape": list(arr.shape), "data": data})


def _odd_nan_bits(arr: np.ndarray) -> list[int] | None:
    """A float array's elements' bits when it holds a NaN other than the one JSON's NaN
    reads back as (JSON has one NaN: another's sign and payload live only in its bits),
    else None."""
    nan = np.isnan(arr)
    if not nan.any():
        return None
    native = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    bits = native.view(f"u{arr.dtype.itemsize}")
    plain = np.array(float("nan"), native.dtype).view(bits.dtype)
    return bits.tolist() if bool((bits[nan] != plain).any()) else None


def _array_from_text(text: str) -> Any:
    value = json.loads(text)
    if not isinstance(value, dict):
        return value  # a plain list, as every part before typed arrays holds
    dtype = np.dtype(value["dtype"])
    if "bits" in value:  # floats with a NaN (see _array_text)
        native = np.array(value["bits"], f"u{dtype.itemsize}").view(dtype.newbyteorder("="))
        return native.astype(dtype, copy=False).reshape(value["shape"])
    if dtype.kind in "Mm":
        native = np.array(value["data"], np.int64).view(dtype.newbyteorder("="))
        return native.astype(dtype, copy=False).reshape(value["shape"])
    return np.array(value["data"], dtype).reshape(value["shape"])


def encode_column(kind: str, values: Sequence[Any]) -> Column:
    """Encode a list of (already cast) values of one kind."""
    if kind in _NUMBER_DTYPES:
        return Column(kind, {}, _encode_number(values, _NUMBER_DTYPES[kind]))
    if kind == "str":
        return Column(kind, {}, encode_strings(values))
    if kind == "json":
        return Column(kind, {}, _encode_json(values))
    if kind == "frame":
        return Column(kind, *encode_frames(values))
    raise ValueError(f"unknown column kind {kind!r}")


# -- concatenation (several chunks into one part) ---------------------------


def concat_columns(columns: list[Column]) -> Column:
    """Concatenate encoded columns of one kind, in order."""
    kind = columns[0].kind
    if len(columns) == 1:
        return columns[0]
    bufs = [c.buffers for c in columns]
    if kind in ("str", "json"):
        return Column(kind, {}, concat_strings(bufs))
    if kind == "frame":
        return Column(kind, *concat_frames(columns))
    return Column(kind, {}, {k: np.concatenate([b[k] for b in bufs]) for k in bufs[0]})


# -- decoding -----------------------------------------------------------------


def _number_all(bufs: Buffers) -> list[Any]:
    values = bufs["values"].tolist()
    if bufs["mask"].any():
        for i in np.flatnonzero(bufs["mask"]).tolist():
            values[i] = None
    return values


def decode_one(col: Column, i: int) -> Any:
    """Value at position ``i`` of an encoded column."""
    kind, bufs = col.kind, col.buffers
    if kind in _NUMBER_DTYPES:
        return None if bufs["mask"][i] else bufs["values"][i].item()
    if kind == "str":
        return string_at(bufs, i)
    if kind == "json":
        text = string_at(bufs, i)
        return None if text is None else _array_from_text(text)
    return frame_at(col, i)


def decode_all(col: Column) -> list[Any]:
    """Every value of an encoded column as a Python list."""
    kind, bufs = col.kind, col.buffers
    if kind in _NUMBER_DTYPES:
        return _number_all(bufs)
    if kind == "str":
        return strings_all(bufs)
    if kind == "json":
        return [None if t is None else _array_from_text(t) for t in strings_all(bufs)]
    return frames_all(col)


# -- sizes ------------------------------------------------------------------------


def value_sizes(col: Column) -> np.ndarray:
    """The bytes each value of an encoded column takes in a part (its buffers' share:
    text and JSON bytes, 9 bytes per number and mask). What the per-row caps count."""
    kind, bufs = col.kind, col.buffers
    if kind in _NUMBER_DTYPES:
        return np.full(len(bufs["mask"]), 9, np.int64)
    if kind in ("str", "json"):
        return np.diff(bufs["offsets"])
    return frame_sizes(col)
