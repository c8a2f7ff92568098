"""Key columns: input columns named by ``keep=[...]``, stored beside the inputs.

``svc.batch(records, keep=["car"])`` spools the named columns of the records into
``keys/part-NNNNNN.lbp`` of the execution, next to ``inputs/``: each part holds
``row`` (the row numbers it covers) and one ``key.<name>`` column per key: numbers
and text as plain columns with their dtype in the column's metadata (decoded in one
pass: a million text ids in ~0.2 s), anything else (timestamps, categories) as one
``frame`` value holding that column, so every dtype comes back as it went in.
Keys part N covers the rows of input part N (both are written chunk by chunk, the
same chunks), so output reads them side by side. CSV key columns are read as
text: an id "007" stays "007". They are never sent to workers; output
(``to_frame``, ``to_parquet``, the CLI's ``--out``) reads them part by part and
puts them beside the outputs. The names are stored in the
execution header (``keep``), so another process and the command line see them.

A source with keys is a :class:`KeyedSource`: the inputs as before, plus a way
to stream the key columns (from the records, or a second pass over a CSV file).
:func:`spool_source` spools any accepted source: inputs, then keys.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputFileError, SchemaError
from .._format.columns import Column, decode_all, decode_one, encode_column
from .._format.part import encode_part
from .._schema import EncodingType, InputTable
from .executions import ExecutionStore
from .fsutil import atomic_write
from .spool import SPOOL_ROWS, CsvSource, spool_csv, spool_table

__all__ = ["KEYS", "KeyedSource", "check_keep", "keys_frame", "keys_of_part",
           "keys_source", "label_start", "rows_hint", "spool_source", "write_keys"]

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
    cols = {"row": encode_column("int", np.arange(start, start + n, dtype=np.int64))}
    for name in frame.columns:
        try:
            cols[f"key.{name}"] = _encode_key(frame[name].reset_index(drop=True))
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"keep: column {name!r} cannot be stored: {exc}") from None
    folder.mkdir(mode=0o700, exist_ok=True)
    atomic_write(folder / f"part-{seq:06d}.lbp", encode_part(cols, n))


_NUMBER_KINDS = {"f": ("float", np.float64), "i": ("int", np.int64), "b": ("bool", np.bool_)}
# (uint64 above int64's range would not survive "int": unsigned columns go as frames.)


def _encode_key(series: Any) -> Column:
    dtype = series.dtype
    kind = getattr(dtype, "kind", "O")
    if kind in _NUMBER_KINDS and str(dtype) != "category":
        name, store_as = _NUMBER_KINDS[kind]
        numpy = isinstance(dtype, np.dtype)
        # NaN is a value of a numpy float column; a nullable (Int64, boolean) one has NA.
        mask = np.zeros(len(series), np.bool_) if numpy else series.isna().to_numpy()
        values = series.to_numpy(dtype=store_as, na_value=0) if not numpy else \
            series.to_numpy().astype(store_as)
        meta = {"dtype": dtype.str} if numpy else {"dtype": str(dtype), "extension": True}
        return Column(name, meta, {"values": values, "mask": mask})
    text = _texts(series)
    if text is not None:
        return Column("str", {"dtype": str(dtype)}, encode_column("str", text).buffers)
    return encode_column("frame", [series.to_frame(name="v")])


def _texts(series: Any) -> list[Any] | None:
    """The values as text and None, if that is all they are (ids, names)."""
    import pandas as pd

    values = series.tolist()
    missing = series.isna().to_numpy()
    out = [None if m else v for v, m in zip(values, missing.tolist(), strict=True)]
    if all(v is None or isinstance(v, str) for v in out) and (
            str(series.dtype) in ("object", "str", "string") or
            isinstance(series.dtype, pd.StringDtype)):
        return out
    return None


def _decode_key(col: Column) -> Any:
    import pandas as pd

    if col.kind == "frame":
        return decode_one(col, 0)["v"]
    if col.kind == "str":
        series = pd.Series(decode_all(col), dtype=object)
        if col.meta.get("dtype", "object") != "object":
            with contextlib.suppress(TypeError, ValueError):
                series = series.astype(col.meta["dtype"])
        return series
    values = np.asarray(col.buffers["values"])
    if not col.meta.get("extension"):
        return pd.Series(values.astype(np.dtype(col.meta["dtype"])))
    series = pd.Series(values, dtype=object)
    series[col.buffers["mask"]] = None
    return series.astype(col.meta["dtype"])


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


def spool_source(source: Any, inputs: Sequence[tuple[str, EncodingType]], staging: Path,
                 kept: dict[str, bytes] | None = None) -> int:
    """Spool the inputs (and key columns) of any accepted source; the row count.

    ``kept``: the input parts' bytes by file name, as many as ``KEEP_BYTES`` holds.
    """
    if hasattr(source, "spool"):
        return int(source.spool(staging, kept))
    inner = source.inner if isinstance(source, KeyedSource) else source
    if isinstance(inner, CsvSource):
        total = spool_csv(inner, staging / "inputs", kept)
    else:
        total = spool_table(inner, inputs, staging / "inputs", kept)
    if isinstance(source, KeyedSource):
        start = 0
        for seq, frame in enumerate(source.chunks()):
            write_keys(staging / KEYS, seq, start, frame)
            start += len(frame)
    return total


def label_start(source: Any) -> int | None:
    """The first input label when the labels count up by one from it, else None.

    Kept in the execution header (``label_start``), so ``to_frame`` builds a
    ``RangeIndex`` without reading the input spool back (1M rows: 16 MB of reads and
    checksums at the end of every batch). CSV and Arrow rows are labelled from 0; a
    DataFrame's labels are its index.
    """
    inner = source.inner if isinstance(source, KeyedSource) else source
    if isinstance(inner, InputTable):
        index = inner.index
        return index.start if isinstance(index, range) and index.step == 1 else None
    if isinstance(inner, CsvSource) or hasattr(inner, "spool"):
        return 0
    return None


# -- reading -----------------------------------------------------------------------------


def _key_table(part: Any) -> Any:
    import pandas as pd

    names = [n for n in part.names() if n.startswith("key.")]
    return pd.DataFrame({n[len("key."):]: _decode_key(part.column(n)) for n in names})


def keys_frame(store: ExecutionStore, execution_id: str) -> Any:
    """Every row's key columns, in row order (position = row number)."""
    import pandas as pd

    tables = [_key_table(store.read_part(execution_id, name, KEYS))
              for name in store.part_names(execution_id, KEYS)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def keys_of_part(store: ExecutionStore, execution_id: str, name: str) -> Any:
    """The key table of the rows of input part ``name``: a keys part covers the same
    rows as the input part of its name (both are spooled chunk by chunk)."""
    return _key_table(store.read_part(execution_id, name, KEYS))
