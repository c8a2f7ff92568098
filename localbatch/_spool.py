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
from pathlib import Path
from typing import Any

import numpy as np

from ._columns import Column, encode_column, encode_part, kind_for_encoding
from ._errors import InputFileError, SchemaError
from ._fsutil import atomic_write
from ._schema import EncodingType, InputTable, cast_column

__all__ = ["CsvSource", "SPOOL_ROWS", "spool_csv", "spool_table"]

SPOOL_ROWS = 65536


def _label_column(labels: Sequence[Any]) -> Column:
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        return encode_column("int", [int(v) for v in labels])
    return encode_column("str", [None if v is None else str(v) for v in labels])


def _write(folder: Path, seq: int, start: int, labels: Sequence[Any],
           columns: dict[str, list[Any]], inputs: Sequence[tuple[str, EncodingType]]) -> None:
    n = len(labels)
    cols: dict[str, Column] = {
        "row": encode_column("int", list(range(start, start + n))),
        "label": _label_column(labels),
    }
    for name, enc in inputs:
        values = columns[name]
        if enc in (EncodingType.vector, EncodingType.matrix):
            values = [None if v is None else np.asarray(v) for v in values]
        cols[f"in.{name}"] = encode_column(kind_for_encoding(enc.value), values)
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
        from ._schema import _check_columns

        _check_columns(header, inputs)
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


def _cast_text(enc: EncodingType, series: Any, name: str, first_line: int) -> list[Any]:
    """Cast a column read as text; errors name the file line."""
    import pandas as pd

    if enc is EncodingType.character:
        return series.tolist()
    text = series.str.strip()
    empty = (text == "").to_numpy()
    if enc is EncodingType.logical:
        mapped = text.str.lower().map({"true": True, "false": False})
        bad = mapped.isna().to_numpy() & ~empty
        values = [None if e else bool(v) for v, e in zip(mapped.tolist(), empty, strict=False)]
    else:
        nums = pd.to_numeric(text.mask(empty, None), errors="coerce")
        bad = nums.isna().to_numpy() & ~empty & ~text.str.lower().isin(["nan"]).to_numpy()
        if enc is EncodingType.integer:
            frac = (nums.fillna(0) % 1 != 0).to_numpy()
            bad |= frac & ~empty
        values = None
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise InputFileError(
            f"line {first_line + pos}: column {name!r} value {series.iloc[pos]!r} is not a "
            f"valid {EncodingType.to_python(enc)}")
    if values is not None:
        return values
    if enc is EncodingType.integer:
        return [None if e else int(v) for v, e in zip(nums.tolist(), empty, strict=False)]
    if enc is EncodingType.numeric:
        return [None if e else float(v) for v, e in zip(nums.tolist(), empty, strict=False)]
    try:
        return cast_column(enc, series, name)
    except SchemaError as exc:
        raise InputFileError(f"line {first_line}: {exc}") from None


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
        labels = list(range(total, total + len(frame)))
        _write(folder, seq, total, labels, cols, source.inputs)
        total += len(frame)
    if total == 0:
        raise InputFileError(f"{source.path} has a header but no records")
    return total
