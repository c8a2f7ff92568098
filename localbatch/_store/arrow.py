"""Parquet and Arrow input, streamed into the input spool with bounded memory.

``svc.batch("scores.parquet")``, a folder of Parquet files, a ``pyarrow.Table``
or a ``pyarrow.RecordBatchReader`` become an :class:`ArrowSource`. Building it
reads schemas only (a file's footer): the input columns must be there, and the
``keep`` columns too. ``spool()`` (at ``start()``) then reads each file row group
by row group, in batches of ``SPOOL_ROWS`` rows and only the columns it needs,
casts every input column with the same lossless rules as a DataFrame
(``_schema.cast_column``) and writes one input part (and one keys part) per
batch. An error names the file, the row group and the row of the file.

Memory is one batch (64k rows of the needed columns) and its Arrow buffers, not
the file: measured with ``bench/parquet_memory.py``.

pyarrow is an optional extra, imported here only when such an input is given;
without it the error says what to install.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputFileError, SchemaError
from .._format.columns import Column, encode_column, kind_for_encoding
from .._format.part import encode_part
from .._schema import EncodingType, cast_column, check_columns
from .fsutil import WriteBehind
from .keys import KEYS, check_keep, write_keys
from .spool import KEEP_BYTES, SPOOL_ROWS

__all__ = ["INSTALL_HINT", "PARQUET_SUFFIXES", "ArrowSource", "arrow_source", "require_pyarrow"]

INSTALL_HINT = 'Parquet and Arrow need pyarrow: pip install "localbatch[parquet]"'
PARQUET_SUFFIXES = (".parquet", ".pq")
_READ_BUFFER = 1 << 20


def require_pyarrow() -> Any:
    """The pyarrow module; ImportError with the install hint when it is missing."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the submodule every caller needs
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return pyarrow


def _is_parquet_path(records: Any) -> bool:
    if not isinstance(records, (str, os.PathLike)):
        return False
    path = Path(records)
    return path.suffix.lower() in PARQUET_SUFFIXES or path.is_dir()


def arrow_source(records: Any, inputs: Sequence[tuple[str, EncodingType]]
                 ) -> ArrowSource | None:
    """An ArrowSource for a Parquet path/folder, a Table or a RecordBatchReader; else None."""
    if _is_parquet_path(records):
        require_pyarrow()
        return ArrowSource(inputs, files=_parquet_files(Path(records)))
    kind = type(records).__module__.split(".")[0]
    if kind != "pyarrow":
        return None
    pa = require_pyarrow()
    if isinstance(records, (pa.Table, pa.RecordBatch)):
        return ArrowSource(inputs, table=pa.table(records))
    if isinstance(records, pa.RecordBatchReader):
        return ArrowSource(inputs, reader=records)
    return None


def _parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file())
        if not files:
            raise InputFileError(f"{path} holds no .parquet files")
        return files
    if not path.is_file():
        raise InputFileError(f"cannot read {path}: no such file")
    return [path]


@dataclass
class _Piece:
    """A batch of rows to spool: a table, where it came from, its first row there."""

    table: Any
    where: str
    first: int


@dataclass
class ArrowSource:
    """Parquet files, a Table or a RecordBatchReader given to ``svc.batch``."""

    inputs: Sequence[tuple[str, EncodingType]]
    files: list[Path] = field(default_factory=list)
    table: Any = None
    reader: Any = None
    keep: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inputs = list(self.inputs)
        for names, where in self._schemas():
            try:
                check_columns(names, self.inputs)
            except SchemaError as exc:
                raise SchemaError(f"{where}: {exc}") from None

    def _schemas(self) -> Iterator[tuple[list[str], str]]:
        import pyarrow.parquet as pq

        if self.table is not None or self.reader is not None:
            source = self.table if self.table is not None else self.reader
            yield list(source.schema.names), type(source).__name__
            return
        for path in self.files:
            try:
                schema = pq.read_schema(path)
            except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
                raise InputFileError(f"cannot read {path}: {exc}") from None
            yield list(schema.names), str(path)

    def with_keep(self, keep: Any, outputs: Sequence[str]) -> ArrowSource:
        for names, _ in self._schemas():
            self.keep = check_keep(keep, names, outputs)
        return self

    def rows_hint(self) -> int | None:
        import pyarrow.parquet as pq

        if self.table is not None:
            return int(self.table.num_rows)
        if self.reader is not None:
            return None
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files)

    # reading ------------------------------------------------------------------------------

    def _columns(self) -> list[str]:
        names = [n for n, _ in self.inputs]
        return names + [k for k in self.keep if k not in names]

    def _pieces(self) -> Iterator[_Piece]:
        if self.table is not None:
            for start in range(0, self.table.num_rows, SPOOL_ROWS):
                yield _Piece(self.table.slice(start, SPOOL_ROWS), "Table", start)
        elif self.reader is not None:
            yield from _rechunk(self.reader, "RecordBatchReader")
        else:
            for path in self.files:
                yield from self._file_pieces(path)

    def _file_pieces(self, path: Path) -> Iterator[_Piece]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            # Buffered reads: a row group's column chunks are streamed, not read whole.
            pf = pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
            first = 0
            for group in range(pf.num_row_groups):
                for batch in pf.iter_batches(batch_size=SPOOL_ROWS, row_groups=[group],
                                             columns=self._columns(), use_threads=False):
                    yield _Piece(pa.Table.from_batches([batch]), f"{path}: row group {group}",
                                 first)
                    first += batch.num_rows
                # Arrow's allocator keeps what it freed; hand it back between row groups.
                pa.default_memory_pool().release_unused()
        except (OSError, ValueError) as exc:
            raise InputFileError(f"cannot read {path}: {exc}") from None

    # spooling -----------------------------------------------------------------------------

    def spool(self, staging: Path, kept: dict[str, bytes] | None = None) -> int:
        """Write the input (and keys) parts; the number of rows."""
        total = 0
        with WriteBehind(kept=kept, budget=KEEP_BYTES) as out:
            for seq, piece in enumerate(self._pieces()):
                n = piece.table.num_rows
                self._write_inputs(out, staging / "inputs", seq, total, piece)
                if self.keep:
                    write_keys(staging / KEYS, seq, total,
                               piece.table.select(self.keep).to_pandas())
                total += n
        if total == 0:
            where = ", ".join(map(str, self.files)) or type(self.table or self.reader).__name__
            raise InputFileError(f"{where} has no rows")
        return total

    def _write_inputs(self, out: WriteBehind, folder: Path, seq: int, start: int,
                      piece: _Piece) -> None:
        """One input part in the spool's layout (``row``, ``label``, ``in.<name>``)."""
        n = piece.table.num_rows
        rows = np.arange(start, start + n, dtype=np.int64)
        cols: dict[str, Column] = {"row": encode_column("int", rows),
                                   "label": encode_column("int", rows)}
        for name, enc in self.inputs:
            values = self._cast(piece, name, enc)
            if enc in (EncodingType.vector, EncodingType.matrix):
                values = [None if v is None else np.asarray(v) for v in values]
            try:
                cols[f"in.{name}"] = encode_column(kind_for_encoding(enc.value), values)
            except OverflowError:
                raise InputFileError(f"{piece.where}: input {name!r} has a value that does "
                                     "not fit a 64-bit integer") from None
        out.put(folder / f"part-{seq:06d}.lbp", encode_part(cols, n))

    def _cast(self, piece: _Piece, name: str, enc: EncodingType) -> Any:
        # Ints and bools with nulls become objects with None (never floats with NaN:
        # 2**53 + 1 must stay exact); the cast then follows the DataFrame rules.
        series = piece.table.column(name).to_pandas(integer_object_nulls=True)
        try:
            return cast_column(enc, series, name, offset=piece.first)
        except SchemaError as exc:
            raise InputFileError(f"{piece.where}: {exc}") from None


def _rechunk(reader: Any, where: str) -> Iterator[_Piece]:
    """Batches of a reader grouped into pieces of about SPOOL_ROWS rows."""
    import pyarrow as pa

    buffered: list[Any] = []
    rows = first = 0
    for batch in reader:
        buffered.append(batch)
        rows += batch.num_rows
        if rows >= SPOOL_ROWS:
            yield _Piece(pa.Table.from_batches(buffered), where, first)
            first += rows
            buffered, rows = [], 0
    if rows:
        yield _Piece(pa.Table.from_batches(buffered), where, first)
