"""The input spool: validated records written as columnar parts before anything runs.

A batch's inputs are spooled into ``inputs/part-NNNNNN.lbp`` (``row``, ``label``
and one ``in.<name>`` column per input) inside the execution's staging folder,
which is published only when every value was valid. CSV/TSV files stream
through in bounded chunks (:class:`CsvSource`): each column is read as text and
cast with its declared type by the DataFrame path's rule, losslessly — "NA",
"None" and "007" stay text in a ``str`` column, an empty field is missing (None)
for every other type, and a number that its type cannot hold exactly
("9007199254740993" or "1e400" for a float) is an error naming its line.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import itertools
import math
from collections.abc import Iterator, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputFileError, SchemaError
from .._format.columns import Column, encode_column, kind_for_encoding
from .._format.part import encode_part
from .._schema import INT64, EncodingType, InputTable, check_columns, shown
from .fsutil import WriteBehind

__all__ = ["KEEP_BYTES", "CsvSource", "Lines", "SPOOL_ROWS", "spool_csv", "spool_table"]

SPOOL_ROWS = 65536
#: Bytes of input parts a start() keeps in memory, as written, for the run that follows
#: (it then reads and checks none of them back: 1M float rows, 16 MB, ~15 ms).
KEEP_BYTES = 32 << 20


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
        levels = list(zip(*labels, strict=True))
        table = pd.DataFrame({f"level_{k}": _typed(level) for k, level in enumerate(levels)})
    else:
        table = pd.DataFrame({"label": _typed(labels)})
    try:
        return encode_column("frame", [table])
    except SchemaError:  # periods, intervals...: text
        return encode_column("frame", [table.astype(object).map(
            lambda v: None if v is None else str(v))])


def _typed(labels: Sequence[Any]) -> Any:
    """Labels as a Series of their common type; labels of mixed types (or of a type the
    codec does not store) identify their rows as text."""
    import pandas as pd

    series = pd.Series(list(labels), dtype=object).infer_objects()
    if series.dtype == object and not all(v is None or isinstance(v, str) for v in series):
        series = series.map(lambda v: None if v is None else str(v))
    return series


def _write(out: WriteBehind, folder: Path, seq: int, start: int, labels: Sequence[Any],
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
        kind = kind_for_encoding(enc.value)
        try:
            cols[f"in.{name}"] = encode_column(kind, values)
        except OverflowError:
            raise SchemaError(f"input {name!r} has a value that does not fit a 64-bit "
                              "integer") from None
        except SchemaError as exc:  # a value the store cannot keep exactly: name its row
            row = next((start + k for k, v in enumerate(values)
                        if v is not None and _refused(kind, v)), start)
            raise SchemaError(f"row {row}: input {name!r}: {exc}") from None
    out.put(folder / f"part-{seq:06d}.lbp", encode_part(cols, n))


def _refused(kind: str, value: Any) -> bool:
    try:
        encode_column(kind, [value])
    except SchemaError:
        return True
    return False


def spool_table(table: InputTable, inputs: Sequence[tuple[str, EncodingType]],
                folder: Path, kept: dict[str, bytes] | None = None) -> int:
    """Write the records as input parts (``kept``: their bytes, up to ``KEEP_BYTES``)."""
    total = len(table)
    with WriteBehind(kept=kept, budget=KEEP_BYTES) as out:
        for seq, start in enumerate(range(0, total, SPOOL_ROWS)):
            stop = min(total, start + SPOOL_ROWS)
            cols = {k: v[start:stop] for k, v in table.columns.items()}
            _write(out, folder, seq, start, table.index[start:stop], cols, inputs)
    return total


class CsvSource:
    """A CSV/TSV path given to ``svc.batch``: header checked now, values at ``start()``.

    Read with the ``csv`` module, record by record, so that every record's first
    line is known (quoted newlines included) and a record with more or fewer
    fields than the header is an error naming its line, never a value dropped
    or invented. A UTF-8 byte order mark is skipped.
    """

    def __init__(self, path: Path, inputs: Sequence[tuple[str, EncodingType]]) -> None:
        self.path = path
        self.sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh, delimiter=self.sep), None)
        except OSError as exc:
            raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise InputFileError(f"{path} is not UTF-8 text: {exc}{_bom_hint(path)}") from None
        except csv.Error as exc:
            raise InputFileError(f"{path}: line 1: {exc}") from None
        if not header:
            raise InputFileError(f"{path} is empty: it needs a header line naming the inputs")
        self.header = header
        self._check_header(inputs)
        self.inputs = list(inputs)

    def _check_header(self, inputs: Sequence[tuple[str, EncodingType]]) -> None:
        try:
            check_columns(self.header, inputs)
        except SchemaError as exc:
            if "missing input" not in str(exc):
                raise
            hints = "".join(f"; {h}" for h in _header_hints(self.header, self.sep, inputs))
            raise InputFileError(f"{exc}. The header of {self.path.name} is "
                                 f"{shown(self.header, 200)}{hints}") from None

    def chunks(self) -> Iterator[tuple[Lines, dict[str, list[str]]]]:
        """Per up to ``SPOOL_ROWS`` records: their line numbers and each input's texts."""
        names = [n for n, _ in self.inputs]
        where = [self.header.index(n) for n in names]
        reader = None
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh, delimiter=self.sep, strict=True)
                next(reader, None)
                while True:
                    line = reader.line_num + 1
                    # A block at a time, in C: a Python step per record would cost
                    # more than parsing it (~1 us a record, measured).
                    with _gc_paused():
                        block = list(itertools.islice(reader, SPOOL_ROWS))
                    if not block:
                        break
                    lines = Lines(line, block, reader.line_num + 1)
                    records = self._checked(block, lines)
                    if records:
                        yield lines, _columns(records, names, where)
        except UnicodeDecodeError as exc:
            near = reader.line_num if reader is not None else 1
            raise InputFileError(f"{self.path}: near line {near}: not UTF-8 text: {exc}") \
                from None
        except csv.Error as exc:
            line = reader.line_num if reader is not None else 1
            raise InputFileError(f"{self.path}: line {line}: {exc}") from None

    def _checked(self, block: list[list[str]], lines: Lines) -> list[list[str]]:
        """The block's records without blank lines; a record of another width than the
        header is an error naming its line."""
        width = len(self.header)
        widths = set(map(len, block))
        if widths <= {width}:
            return block
        for k, record in enumerate(block):
            if record and len(record) != width:
                raise InputFileError(
                    f"{self.path}: line {lines.of_raw(k)}: {len(record)} field(s) where the "
                    f"header has {width} ({'an extra' if len(record) > width else 'a missing'}"
                    f" field: a separator too many or too few, or an unquoted {self.sep!r} "
                    "in a value?)")
        lines.drop_blank()
        return [r for r in block if r]  # blank lines are skipped, as every CSV reader does


class Lines:
    """The first line of each record of a block, worked out only when asked (an error).

    A block whose records are one line each (the common case) numbers them from its
    first line; otherwise a quoted newline inside a field moves every later record
    down a line, and blank lines (records of no field) are skipped.
    """

    def __init__(self, first: int, block: list[list[str]], end: int) -> None:
        self.first = first
        self._block = block
        self._simple = end - first == len(block)
        self._kept: list[int] | None = None

    def drop_blank(self) -> None:
        self._kept = [k for k, r in enumerate(self._block) if r]

    def __len__(self) -> int:
        return len(self._block) if self._kept is None else len(self._kept)

    def __getitem__(self, k: int) -> int:
        """The line of record ``k`` (blank lines not counted)."""
        return self.of_raw(k if self._kept is None else self._kept[k])

    def of_raw(self, k: int) -> int:
        if self._simple:
            return self.first + k
        return self.first + k + sum(f.count("\n") for r in self._block[:k] for f in r)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while a block of records is built: its ~65k new lists would set off
    collections that find nothing (lists of str make no cycles) and cost more than
    the parsing itself (measured: 1.2 s → 0.5 s of CPU for 500k records)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _columns(records: list[list[str]], names: list[str], where: list[int]
             ) -> dict[str, list[str]]:
    """The input columns of a block of records (one C-level transpose)."""
    with _gc_paused():
        columns = list(zip(*records, strict=True))
    return {name: list(columns[k]) for name, k in zip(names, where, strict=True)}


#: Separators a header of one field may really be split by.
_SEPARATORS = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "pipes"}


def _header_hints(header: list[str], sep: str, inputs: Sequence[tuple[str, EncodingType]]
                  ) -> list[str]:
    """Why a header may not name the inputs: another separator, a BOM, spaces."""
    hints = []
    if len(header) == 1:
        for other, called in _SEPARATORS.items():
            if other != sep and other in header[0]:
                hints.append(
                    f"the whole header is one field containing {other!r}: is the file "
                    f"separated by {called}? localbatch reads .csv files as comma-separated "
                    "and .tsv/.tab files as tab-separated")
                break
    if any(h.startswith(("\ufeff", "\u00ef\u00bb\u00bf")) for h in header):
        hints.append("the header starts with a byte order mark (BOM) that was saved twice or "
                     "converted wrongly: save the file as UTF-8")
    names = {n for n, _ in inputs}
    if any(h.strip() in names and h not in names for h in header):
        hints.append("some header names have spaces around them")
    return hints


def _bom_hint(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return ""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return " (it starts with a UTF-16 byte order mark: save it as UTF-8)"
    return ""


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


def _text_to_float(text: str) -> float | None:
    """A float from CSV text, if the text means that float exactly; None otherwise.

    Exactly: the text is the float's shortest form ("0.1", as every writer of floats
    writes it), or another spelling of the same decimal ("0.10", "1e-1"), or the
    float's exact binary value ("9007199254740992"): what the DataFrame path
    accepts. "9007199254740993" (no float is that integer) and "1e400" (inf) are not.
    """
    if "_" in text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    shortest = repr(value)
    if shortest == text or value != value:  # the common case; NaN is a float value
        return value
    if math.isinf(value):
        return value if text.lstrip("+-").lower() in ("inf", "infinity") else None
    try:
        exact = Decimal(text)
    except InvalidOperation:
        return None
    return value if exact in (Decimal(shortest), Decimal(value)) else None


def _text_to_bool(text: str) -> bool | None:
    return {"true": True, "false": False}.get(text.lower())


_PARSERS = {EncodingType.integer: _text_to_int, EncodingType.numeric: _text_to_float,
            EncodingType.logical: _text_to_bool}


def _cast_text(enc: EncodingType, texts: list[str], name: str, lines: Lines) -> list[Any]:
    """Cast a column read as text, losslessly; errors name the file line.

    ``str`` inputs keep the text as it is ("NA", "007", ""); for every other type an
    empty field (spaces around it ignored) is missing, and so is "nan" for ``int``
    and ``bool`` (NaN means "missing" for every type but float).
    """
    if enc is EncodingType.character:
        return texts
    values: list[Any] = []
    quick = _QUICK.get(enc)
    for k, raw in enumerate(texts):
        if quick is not None:
            # The common case in one step: the text is the number's own shortest form
            # (what DataFrame.to_csv writes), so it is exact. ~2x the per-value path.
            try:
                value = quick(raw)
                if (repr(value) == raw and -_INT_BOUND <= value < _INT_BOUND
                        if quick is int else repr(value) == raw):
                    values.append(value)
                    continue
            except ValueError:
                pass
        values.append(_cast_one(enc, raw, name, lines, k))
    return values


#: The one-step parsers of the common case, and the bound of a 64-bit int.
_QUICK: dict[EncodingType, Any] = {EncodingType.numeric: float, EncodingType.integer: int}
_INT_BOUND = 2**63


def _cast_one(enc: EncodingType, raw: str, name: str, lines: Lines, k: int) -> Any:
    text = raw.strip()
    if not text or (enc is not EncodingType.numeric and text.lower() == "nan"):
        return None
    value = _PARSERS[enc](text)
    if value is None:
        raise InputFileError(f"line {lines[k]}: column {name!r} value {shown(raw)} "
                             f"{_why(enc, text)}")
    return value


def _why(enc: EncodingType, text: str) -> str:
    """Why a text is not a value of ``enc``: not a number at all, or not exactly one."""
    try:
        number = Decimal(text) if "_" not in text else None
    except InvalidOperation:
        number = None
    if number is not None and enc is EncodingType.numeric:
        return ("is not exactly a float: a float keeps 15 to 17 significant digits, "
                "between 2.2e-308 and 1.8e308 (declare the input str or int to keep it)")
    if number is not None and enc is EncodingType.integer and number.is_finite() \
            and number == number.to_integral_value():
        return "is beyond the 64-bit integer range"
    return f"is not a valid {EncodingType.to_python(enc)}"


def spool_csv(source: CsvSource, folder: Path, kept: dict[str, bytes] | None = None) -> int:
    """Stream the file into input parts; raises InputFileError naming the line."""
    for name, enc in source.inputs:
        if enc in (EncodingType.vector, EncodingType.matrix, EncodingType.dataframe):
            raise InputFileError(f"input {name!r} is a {enc.value}: it cannot be read "
                                 "from a CSV/TSV file")
    total = 0
    with WriteBehind(kept=kept, budget=KEEP_BYTES) as out:
        for seq, (lines, texts) in enumerate(source.chunks()):
            cols = {name: _cast_text(enc, texts[name], name, lines)
                    for name, enc in source.inputs}
            labels = range(total, total + len(lines))
            _write(out, folder, seq, total, labels, cols, source.inputs)
            total += len(lines)
    if total == 0:
        raise InputFileError(f"{source.path} has a header but no records")
    return total
