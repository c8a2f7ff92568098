"""The input spool: validated records written as columnar parts before anything runs.

A batch's inputs are spooled into ``inputs/part-NNNNNN.lbp`` (``row``, ``label``
and one ``in.<name>`` column per input) inside the execution's staging folder,
which is published only when every value was valid. CSV/TSV files stream
through in bounded chunks: each column is read as text and cast with its
declared type, so "NA", "None" and "007" stay text in a ``str`` column; an
empty field is missing (None) for every other type.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputFileError, SchemaError
from .._format.columns import Column, encode_column, kind_for_encoding
from .._format.part import encode_part
from .._schema import INT64, EncodingType, InputTable, check_columns
from .fsutil import atomic_write

__all__ = ["CsvSource", "SPOOL_ROWS", "spool_csv", "spool_table"]

SPOOL_ROWS = 65536


def _label_column(labels: Sequence[Any]) -> Column:
    """The input's index labels, with their types (see ``ResultReader.labels``)."""
    if isinstance(labels, range):
        return encode_column("int", np.arange(labels.start, labels.stop, labels.step))
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
           for v in labels):
        return encode_column("int", [int(v) for v in labels])
    if all(isinstance(v, (float, np.floating)) for v in labels):
        return encode_column("float", [float(v) for v in labels])
    if all(isinstance(v, str) for v in labels):
        return encode_column("str", list(labels))
    import pandas as pd

    # Timestamps, MultiIndex tuples, mixed: one frame value holding the whole chunk's
    # labels, so their types survive (a frame column keeps dtypes).
    if all(isinstance(v, tuple) for v in labels):
        table = pd.DataFrame([list(v) for v in labels])
        table.columns = [f"level_{k}" for k in range(table.shape[1])]
    else:
        table = pd.DataFrame({"label": pd.Series(list(labels), dtype=object).infer_objects()})
    return encode_column("frame", [table])


def _write(folder: Path, seq: int, start: int, labels: Sequence[Any],
           columns: dict[str, list[Any]], inputs: Sequence[tuple[str, EncodingType]]) -> None:
    n = len(labels)
    cols: dict[str, Column] = {
        "row": encode_column("int", np.arange(start, start + n, dtype=np.int64)),
        "label": _label_column(labels),
    }
    for name, enc in inputs:
        values = columns[name]
        if enc in (EncodingType.vector, EncodingType.matrix):
            values = [None if v is None else np.asarray(v) for v in values]
        try:
            cols[f"in.{name}"] = encode_column(kind_for_encoding(enc.value), values)
        except OverflowError:
            raise SchemaError(f"input {name!r} has a value that does not fit a 64-bit "
                              "integer") from None
    atomic_write(folder / f"part-{seq:06d}.lbp", encode_part(cols, n))


def spool_table(table: InputTable, inputs: Sequence[tuple[str, EncodingType]],
                folder: Path) -> int:
    total = len(table)
    for seq, start in enumerate(range(0, total, SPOOL_ROWS)):
        stop = min(total, start + SPOOL_ROWS)
        cols = {k: v[start:stop] for k, v in table.columns.items()}
        _write(folder, seq, start, table.index[start:stop], cols, inputs)
    return total


class CsvSource:
    """A CSV/TSV path given to ``svc.batch``: header checked now, values at ``start()``."""

    def __init__(self, path: Path, inputs: Sequence[tuple[str, EncodingType]]) -> None:
        self.path = path
        self.sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh, delimiter=self.sep), None)
        except OSError as exc:
            raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise InputFileError(f"{path} is not UTF-8 text: {exc}") from None
        if not header:
            raise InputFileError(f"{path} is empty: it needs a header line naming the inputs")
        check_columns(header, inputs)
        self.inputs = list(inputs)

    def chunks(self) -> Iterator[Any]:
        import pandas as pd

        names = [n for n, _ in self.inputs]
        try:
            yield from pd.read_csv(self.path, sep=self.sep, usecols=names, dtype=str,
                                   keep_default_na=False, na_filter=False,
                                   chunksize=SPOOL_ROWS, encoding="utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputFileError(f"{self.path}: {exc}") from None



def _text_to_int(text: str) -> int | None:
    """An exact integer from CSV text ("007", "2.0", "1e3"); None if it is not one."""
    if "_" in text:
        return None  # int() would read "1_000"; no CSV writer means that
    try:
        value = int(text)
    except ValueError:
        try:
            exact = Decimal(text)  # Decimal, not float: "9007199254740993.0" stays exact
        except InvalidOperation:
            return None
        if not exact.is_finite() or exact != exact.to_integral_value():
            return None
        value = int(exact)
    return value if INT64[0] <= value <= INT64[1] else None


def _cast_ints(text: list[str], empty: np.ndarray) -> tuple[list[Any], np.ndarray]:
    values: list[Any] = []
    bad = np.zeros(len(text), np.bool_)
    for k, (t, e) in enumerate(zip(text, empty.tolist(), strict=True)):
        if e or t.lower() == "nan":  # NaN means "missing" for every type but float
            values.append(None)
            continue
        value = _text_to_int(t)
        bad[k] = value is None
        values.append(value)
    return values, bad


def _cast_floats(text: Any, empty: np.ndarray) -> tuple[list[Any], np.ndarray]:
    import pandas as pd

    nums = pd.to_numeric(text.mask(empty, None), errors="coerce")
    bad = nums.isna().to_numpy() & ~empty & ~text.str.lower().isin(["nan"]).to_numpy()
    return [None if e else float(v) for v, e in zip(nums.tolist(), empty, strict=True)], bad


def _cast_bools(text: Any, empty: np.ndarray) -> tuple[list[Any], np.ndarray]:
    mapped = text.str.lower().map({"true": True, "false": False})
    bad = mapped.isna().to_numpy() & ~empty
    return [None if e else bool(v) for v, e in zip(mapped.tolist(), empty, strict=True)], bad


def _cast_text(enc: EncodingType, series: Any, name: str, first_line: int) -> list[Any]:
    """Cast a column read as text, losslessly; errors name the file line."""
    if enc is EncodingType.character:
        return series.tolist()
    text = series.str.strip()
    empty = (text == "").to_numpy()
    if enc is EncodingType.logical:
        values, bad = _cast_bools(text, empty)
    elif enc is EncodingType.integer:
        values, bad = _cast_ints(text.tolist(), empty)
    else:
        values, bad = _cast_floats(text, empty)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise InputFileError(
            f"line {first_line + pos}: column {name!r} value {series.iloc[pos]!r} is not a "
            f"valid {EncodingType.to_python(enc)}")
    return values


def spool_csv(source: CsvSource, folder: Path) -> int:
    """Stream the file into input parts; raises InputFileError naming the line."""
    total = 0
    for seq, frame in enumerate(source.chunks()):
        first_line = total + 2  # 1-based, after the header line
        cols = {}
        for name, enc in source.inputs:
            if enc in (EncodingType.vector, EncodingType.matrix, EncodingType.dataframe):
                raise InputFileError(f"input {name!r} is a {enc.value}: it cannot be read "
                                     "from a CSV/TSV file")
            cols[name] = _cast_text(enc, frame[name], name, first_line)
        labels = range(total, total + len(frame))
        _write(folder, seq, total, labels, cols, source.inputs)
        total += len(frame)
    if total == 0:
        raise InputFileError(f"{source.path} has a header but no records")
    return total
