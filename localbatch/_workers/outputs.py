"""Output encoding in the worker: return values → cast, encoded, capped columns.

A bad value costs its row, never its chunk. The protocol, per chunk:

1. each row's value is cast to its output's declared type, losslessly
   (:func:`~localbatch._schema.cast_value`); anything the cast raises — a
   ``SchemaError`` or whatever the user's object raised while being looked at —
   fails that row (``OutputTypeError``, naming the output and a repr-safe,
   truncated value);
2. each output column is encoded at once (the fast path); the codec raises rather
   than store a value it cannot give back exactly. If it raises, every value of
   that column is encoded alone to find the rows at fault, those rows fail and
   the columns are encoded again without them;
3. the real encoded bytes of every row are counted (``value_sizes``): a row whose
   output is over the ``output_bytes`` cap fails (``OutputTooLarge``). Text
   outputs are cut to the cap with a marker instead, as before. Fixed-width
   scalars (8 bytes) are not capped.

A failed row has no outputs at all (every output column holds None there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import SchemaError
from .._format.chunk import RowError
from .._format.columns import Column, encode_column, kind_for_encoding, value_sizes
from .._schema import EncodingType, cast_value, shown

__all__ = ["encode_outputs", "python_values"]

_PLAIN = {EncodingType.numeric: float, EncodingType.integer: int,
          EncodingType.logical: bool}
_PLAIN_DTYPES = {EncodingType.numeric: np.float64, EncodingType.integer: np.int64,
                 EncodingType.logical: np.bool_}
#: Kinds whose values are fixed-width (8 bytes a value): never over a cap.
_FIXED = ("float", "int", "bool")
#: Room for the truncation marker after text cut to the cap.
_MARKER = 128


def encode_outputs(outputs: list[tuple[str, EncodingType]], values: dict[str, list[Any]],
                   errors: list[RowError | None], cap: int,
                   types: dict[str, set[type]] | None = None) -> dict[str, Column]:
    """Cast, encode and cap every output column; failures become row errors in ``errors``.

    ``types``: the set of the value types of columns whose caller has it already.
    """
    for name, enc in outputs:
        column = values[name]
        if isinstance(column, np.ndarray):
            continue
        known = (types or {}).get(name)
        if _already_typed(enc, column, known):
            if known is not None and type(None) not in known and column:
                # Exact scalars, none missing: an array now, in one C loop (the codec
                # would look for None in them again: 10,000 floats, 0.15 ms).
                values[name] = np.fromiter(column, _PLAIN_DTYPES[enc], len(column))
            continue
        for k, value in enumerate(column):
            if value is None or errors[k] is not None:
                column[k] = None
                continue
            try:
                column[k] = _capped(_cast_output(enc, value, name), cap)
            except Exception as exc:  # noqa: BLE001 - the user's object may raise anything
                _fail(values, errors, k, ("OutputTypeError", _reason(exc, name, value), ""))
    # Twice at most: the second pass runs without the rows the first one failed, and
    # a column that still cannot be encoded then fails every row that has a value.
    for last in (False, True):
        encoded, bad = _encode_checked(outputs, values, cap, last)
        if not bad:
            return encoded
        for k, error in bad.items():
            _fail(values, errors, k, error)
    return {name: encode_column(kind_for_encoding(enc.value), values[name])
            for name, enc in outputs}


def _encode_checked(outputs: list[tuple[str, EncodingType]], values: dict[str, list[Any]],
                    cap: int, last: bool) -> tuple[dict[str, Column], dict[int, RowError]]:
    """The encoded columns and the rows that could not be encoded or are over the cap."""
    encoded: dict[str, Column] = {}
    bad: dict[int, RowError] = {}
    for name, enc in outputs:
        kind = kind_for_encoding(enc.value)
        column = values[name]
        try:
            encoded[name] = col = encode_column(kind, column)
        except Exception as exc:  # noqa: BLE001 - the codec refuses what it cannot keep
            found = {} if last else _unencodable(name, kind, column)
            if not found:  # only their mix fails (or the second pass): every value
                found = {k: ("OutputTypeError", _reason(exc, name, v), "")
                         for k, v in enumerate(column) if v is not None}
            bad.update(found)
            continue
        if kind not in _FIXED:
            sizes = value_sizes(col)
            # Text was cut to the cap already; its marker may go a little beyond.
            for k in np.flatnonzero(sizes > cap + (_MARKER if kind == "str" else 0)).tolist():
                size = int(sizes[k])
                bad.setdefault(k, ("OutputTooLarge", f"output {name!r} is {size} bytes, over "
                                   f"the per-row cap of {cap} (batch option output_limit)", ""))
    return encoded, bad


def _unencodable(name: str, kind: str, column: list[Any]) -> dict[int, RowError]:
    """The rows whose value cannot be encoded even alone."""
    found: dict[int, RowError] = {}
    for k, value in enumerate(column):
        if value is None:
            continue
        try:
            encode_column(kind, [value])
        except Exception as exc:  # noqa: BLE001 - see encode_outputs
            found[k] = ("OutputTypeError", _reason(exc, name, value), "")
    return found


def _fail(values: dict[str, list[Any]], errors: list[RowError | None], k: int,
          error: RowError) -> None:
    """Row ``k`` failed: its error, and no output at all."""
    errors[k] = error
    for name, column in values.items():
        if isinstance(column, np.ndarray):
            values[name] = column = column.tolist()
        column[k] = None


def _reason(exc: BaseException, name: str, value: Any) -> str:
    """An error message that names the output and the value, whatever they do."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception of the user's whose __str__ raises
        text = ""
    if not text:
        text = type(exc).__name__
    label = f"output {name!r}"
    if label in text:
        return text
    if isinstance(exc, SchemaError):  # the codec's own message names the column and value
        return f"{label}, {text}"
    return f"{label}: cannot store {shown(value)} of type {type(value).__name__}: {text}"


def _already_typed(enc: EncodingType, column: list[Any], types: set[type] | None = None
                   ) -> bool:
    """A column of exact scalars of the declared type needs no per-value cast
    (``types``: the types of its values, when the caller knows them)."""
    want = _PLAIN.get(enc)
    if want is None:
        return False
    if not (set(map(type, column)) if types is None else types) <= {want, type(None)}:
        return False
    if want is int:
        ints = [v for v in column if v is not None]
        return not ints or (min(ints) >= -(2**63) and max(ints) < 2**63)
    return True


def _capped(value: Any, cap: int) -> Any:
    """Text longer than the cap (in UTF-8 bytes) is cut there with a marker."""
    # 4 bytes a character at most: shorter text is under the cap without encoding it.
    if not isinstance(value, str) or len(value) * 4 <= cap:
        return value
    data = value.encode("utf-8", "surrogatepass")
    if len(data) <= cap:
        return value
    try:
        kept = data[:cap].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:  # the cut split a character: drop its first bytes
        kept = data[:exc.start].decode("utf-8", "surrogatepass")
    return kept + f"\n[localbatch: output truncated, {len(data) - cap} more bytes]"


def _cast_output(enc: EncodingType, value: Any, name: str) -> Any:
    if enc is EncodingType.numeric and type(value) is float:
        return value
    if enc is EncodingType.dataframe:
        import pandas as pd

        if isinstance(value, pd.Series):
            return value.to_frame()
    return cast_value(enc, value, f"output {name!r}")


def python_values(column: Any) -> Any:
    """Row functions get Python scalars (float, int, bool), as the SDK gave them."""
    return column.tolist() if isinstance(column, np.ndarray) and column.dtype != object \
        else column
