"""Key columns: input columns named by ``keep=[...]``, stored beside the inputs.

``svc.batch(records, keep=["car"])`` spools the named columns of the records into
``keys/part-NNNNNN.lbp`` of the execution, next to ``inputs/``: each part holds
``row`` (the row numbers it covers) and ``keys``, one ``frame`` value whose table
has the part's key columns, so their dtypes (text ids, ints, timestamps) come back
as they went in. Keys part N covers the rows of input part N (both are written
chunk by chunk, the same chunks), so output reads them side by side. CSV key
columns are read as text: an id "007" stays "007". They are never sent to
workers; output (``to_frame``, ``to_parquet``, the CLI's ``--out``) reads them
part by part and puts them beside the outputs. The names are stored in the
execution header (``keep``), so another process and the command line see them.

A source with keys is a :class:`KeyedSource`: the inputs as before, plus a way
to stream the key columns (from the records, or a second pass over a CSV file).
:func:`spool_source` spools any accepted source: inputs, then keys.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputFileError, SchemaError
from .._format.columns import decode_one, encode_column
from .._format.part import encode_part
from .._schema import EncodingType, InputTable
from .executions import ExecutionStore
from .fsutil import atomic_write
from .spool import SPOOL_ROWS, CsvSource, spool_csv, spool_table

__all__ = ["KEYS", "KeyedSource", "check_keep", "keys_frame", "keys_of_part",
           "keys_source", "rows_hint", "spool_source", "write_keys"]

#: The folder of an execution that holds its key columns.
KEYS = "keys"
#: Names a key column may not take: they are columns of every output table.
_RESERVED = ("error", "index", "row")


# -- validating and writing --------------------------------------------------------------


def check_keep(keep: Any, available: Sequence[Any], outputs: Sequence[str]) -> list[str]:
    """The ``keep`` names as a list; an unknown one is an error with close matches."""
    if keep is None:
        return []
    names = [keep] if isinstance(keep, str) else list(keep)
    if not all(isinstance(n, str) for n in names):
        raise TypeError("keep must be a column name or a list of column names")
    if len(set(names)) != len(names):
        raise SchemaError(f"keep names a column twice: {names}")
    present = [str(c) for c in available]
    for name in names:
        if name not in present:
            raise SchemaError(f"keep: no column {name!r} in the records"
                              f"{_did_you_mean(name, present)} (columns: "
                              f"{', '.join(present[:20])})")
        if name in outputs or name in _RESERVED:
            raise SchemaError(f"keep: column {name!r} would clash with the output column of "
                              "that name")
    return names


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(lower[c]) for c in close)}?" if close else ""


def write_keys(folder: Path, seq: int, start: int, frame: Any) -> None:
    """One keys part: rows ``start..start+len(frame)`` and their key columns."""
    n = len(frame)
    table = frame.reset_index(drop=True)
    cols = {"row": encode_column("int", np.arange(start, start + n, dtype=np.int64)),
            "keys": encode_column("frame", [table])}
    folder.mkdir(mode=0o700, exist_ok=True)
    atomic_write(folder / f"part-{seq:06d}.lbp", encode_part(cols, n))


# -- sources with keys -------------------------------------------------------------------


@dataclass
class KeyedSource:
    """Validated inputs, and the key columns to store beside them."""

    inner: InputTable | CsvSource
    keep: list[str]
    #: Yields the key columns as DataFrames of up to SPOOL_ROWS rows, in row order.
    chunks: Callable[[], Iterator[Any]]

    def __len__(self) -> int:
        return len(self.inner)


def keys_source(source: Any, records: Any, keep: Any, outputs: Sequence[str]) -> Any:
    """``source`` with the ``keep`` columns of ``records`` attached (as is when none)."""
    if keep is None or (not isinstance(keep, str) and not list(keep)):
        return source
    if hasattr(source, "with_keep"):  # Parquet and Arrow sources read keys themselves
        return source.with_keep(keep, outputs)
    if isinstance(source, CsvSource):
        names = check_keep(keep, _csv_header(source), outputs)
        return KeyedSource(source, names, lambda: _csv_keys(source, names))
    frame = _records_frame(records)
    names = check_keep(keep, list(frame.columns), outputs)
    picked = frame[names]
    return KeyedSource(source, names, lambda: (picked.iloc[k:k + SPOOL_ROWS]
                                               for k in range(0, len(picked), SPOOL_ROWS)))


def _records_frame(records: Any) -> Any:
    import pandas as pd

    if isinstance(records, pd.DataFrame):
        return records
    if isinstance(records, dict):
        return pd.DataFrame(dict(records))
    return pd.DataFrame(list(records))


def _csv_header(source: CsvSource) -> list[str]:
    with open(source.path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh, delimiter=source.sep), None) or []


def _csv_keys(source: CsvSource, names: list[str]) -> Iterator[Any]:
    """A second pass over the file for the key columns, as text (ids like "007" stay)."""
    import pandas as pd

    try:
        yield from pd.read_csv(source.path, sep=source.sep, usecols=names, dtype=str,
                               keep_default_na=False, na_filter=False, chunksize=SPOOL_ROWS,
                               encoding="utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{source.path}: {exc}") from None


# -- spooling any source -----------------------------------------------------------------


def rows_hint(source: Any) -> int | None:
    """How many rows a source has, when that is known before reading it."""
    inner = source.inner if isinstance(source, KeyedSource) else source
    if isinstance(inner, CsvSource):
        return None
    if hasattr(inner, "rows_hint"):
        return inner.rows_hint()
    return len(inner)


def spool_source(source: Any, inputs: Sequence[tuple[str, EncodingType]], staging: Path
                 ) -> int:
    """Spool the inputs (and key columns) of any accepted source; the row count."""
    if hasattr(source, "spool"):
        return int(source.spool(staging))
    inner = source.inner if isinstance(source, KeyedSource) else source
    if isinstance(inner, CsvSource):
        total = spool_csv(inner, staging / "inputs")
    else:
        total = spool_table(inner, inputs, staging / "inputs")
    if isinstance(source, KeyedSource):
        start = 0
        for seq, frame in enumerate(source.chunks()):
            write_keys(staging / KEYS, seq, start, frame)
            start += len(frame)
    return total


# -- reading -----------------------------------------------------------------------------


def _key_parts(store: ExecutionStore, execution_id: str) -> Iterator[tuple[int, Any]]:
    """(first row, key table) of each keys part, in row order."""
    for name in store.part_names(execution_id, KEYS):
        part = store.read_part(execution_id, name, KEYS)
        rows = part.column("row").buffers["values"]
        yield (int(rows[0]) if len(rows) else 0), decode_one(part.column("keys"), 0)


def keys_frame(store: ExecutionStore, execution_id: str) -> Any:
    """Every row's key columns, in row order (position = row number)."""
    import pandas as pd

    tables = [t for _, t in _key_parts(store, execution_id)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def keys_of_part(store: ExecutionStore, execution_id: str, name: str) -> Any:
    """The key table of the rows of input part ``name``: a keys part covers the same
    rows as the input part of its name (both are spooled chunk by chunk)."""
    part = store.read_part(execution_id, name, KEYS)
    return decode_one(part.column("keys"), 0)
