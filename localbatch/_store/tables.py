"""Result tables part by part: key columns beside the outputs, and Parquet output.

``result_frames`` yields the table ``to_frame()`` would return, one input part
(``SPOOL_ROWS`` rows) at a time, so a writer never holds the whole result. Each
window is read by a :class:`ResultReader` restricted to its rows: every result
part holding a latest record of a row of the window is cut down to those records
(only the columns a table needs) and its row numbers made relative to the
window, and ``ResultReader.to_frame`` builds the window's table as it builds the
whole one: the two cannot drift apart.

``write_parquet`` writes those tables with one ``ParquetWriter`` through a temp
file and a rename: the schema comes from the first window, with columns that
were all missing there typed from the declared outputs (text otherwise), and
every later window is cast to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._format.columns import Column, decode_all, encode_column
from .._format.part import Part, encode_part
from .._schema import EncodingType
from .executions import RowMap
from .fsutil import atomic_write_with
from .keys import keys_frame, keys_of_part
from .results import ResultReader

__all__ = ["attach_keys", "failed_with_keys", "frame_with_keys", "result_frames",
           "write_parquet"]

#: The columns of a result part that a table reads (not tracebacks, console, history).
_TABLE_COLUMNS = ("index", "error_type", "error_message")
_NUMBERS = ("float", "int", "bool")


# -- key columns -------------------------------------------------------------------------


def attach_keys(frame: Any, keys: Any) -> Any:
    """``frame`` with the key columns first; ``keys`` has one row per recorded row.

    A multi-row DataFrame output repeats a row once per position: its keys repeat too.
    """
    if keys is None or keys.shape[1] == 0:
        return frame
    if len(frame) != len(keys) and "position" in (frame.index.names or []):
        starts = np.asarray(frame.index.get_level_values("position")) == 0
        keys = keys.iloc[np.cumsum(starts) - 1]
    for k, name in enumerate(keys.columns):
        frame.insert(k, name, keys[name].array)  # .array: the dtype stays (Int64, tz)
    return frame


def frame_with_keys(reader: ResultReader, keep: list[str]) -> Any:
    """The whole ``to_frame()`` table with the ``keep`` columns of the recorded rows."""
    frame = reader.to_frame()
    if not keep:
        return frame
    rows = np.flatnonzero(reader.row_map.part_of >= 0)
    return attach_keys(frame, keys_frame(reader.store, reader.id).iloc[rows])


def failed_with_keys(reader: ResultReader, keep: list[str]) -> Any:
    """The failed rows' table with the ``keep`` columns after ``row``."""
    frame = reader.failed_frame()
    if not keep:
        return frame
    keys = keys_frame(reader.store, reader.id).iloc[frame["row"].to_numpy()]
    for k, name in enumerate(keep):
        frame.insert(1 + k, name, keys[name].array)
    return frame


# -- windows -----------------------------------------------------------------------------


class _WindowReader(ResultReader):
    """A ResultReader over the rows ``lo..lo+n-1`` of an execution, renumbered from 0."""

    def __init__(self, base: ResultReader, row_map: RowMap, parts: list[Part],
                 labels: np.ndarray) -> None:
        super().__init__(base.store, base.id, {"total": len(labels)}, base.outputs,
                         base.inputs)
        self._window_map, self._window_parts, self._window_labels = row_map, parts, labels

    @property
    def row_map(self) -> RowMap:
        return self._window_map

    def _parts(self) -> list[Part]:
        return self._window_parts

    def _index(self, place: Any) -> Any:
        return _label_index(self._window_labels[place.rows])


def _label_index(labels: np.ndarray) -> Any:
    """The input's index as ``to_frame`` names it: "index", or "index_0".. for tuples."""
    import pandas as pd

    values = labels.tolist()
    if labels.dtype == object and values and all(isinstance(v, tuple) for v in values):
        names = [f"index_{k}" for k in range(len(values[0]))]
        return pd.MultiIndex.from_tuples(values, names=names)
    if labels.dtype != object:
        return pd.Index(labels, name="index")
    return pd.Index(values, name="index", dtype=object if not values else None)


def _labels(part: Part) -> np.ndarray:
    col = part.column("label")
    if col.kind == "int" and not col.buffers["mask"].any():
        return np.asarray(col.buffers["values"])
    values = decode_all(col)
    if col.kind == "frame":  # the chunk's labels as one table (see spool._label_column)
        table = values[0]
        values = (table["label"].tolist() if list(table.columns) == ["label"]
                  else list(table.itertuples(index=False, name=None)))
    out = np.empty(len(values), dtype=object)
    for k, value in enumerate(values):  # element-wise: tuples must not become rows
        out[k] = value
    return out


def _cut(part: Part, keep: np.ndarray, lo: int, names: list[str]) -> Part:
    """The records at positions ``keep`` of a result part, rows renumbered from ``lo``."""
    full = len(keep) == part.rows
    cols: dict[str, Column] = {}
    for name in names:
        col = part.column(name)
        if name == "index":
            values = np.asarray(col.buffers["values"])[keep] - lo
            cols[name] = Column("int", {}, {"values": values,
                                            "mask": np.zeros(len(keep), np.bool_)})
        elif full:
            cols[name] = col
        elif col.kind in _NUMBERS:
            cols[name] = Column(col.kind, col.meta, {k: np.asarray(b)[keep]
                                                     for k, b in col.buffers.items()})
        else:
            values = decode_all(col)
            cols[name] = encode_column(col.kind, [values[p] for p in keep.tolist()])
    return Part(encode_part(cols, len(keep)))


def _window(base: ResultReader, full_map: RowMap, lo: int, labels: np.ndarray
            ) -> _WindowReader:
    hi = lo + len(labels)
    part_of, pos_of = full_map.part_of[lo:hi], full_map.pos_of[lo:hi]
    names = [*_TABLE_COLUMNS, *(f"out.{n}" for n, _ in base.outputs)]
    new_of = np.full(len(labels), -1, np.int32)
    new_pos = np.full(len(labels), -1, np.int32)
    parts: list[Part] = []
    for k in np.unique(part_of[part_of >= 0]).tolist():
        part = base.store.read_part(base.id, full_map.parts[k], cache=False)
        index = np.asarray(part.column("index").buffers["values"])
        inside = (index >= lo) & (index < hi)
        latest = np.zeros(len(index), np.bool_)
        rel = index[inside] - lo
        latest[np.flatnonzero(inside)] = (part_of[rel] == k) & (
            pos_of[rel] == np.flatnonzero(inside))
        keep = np.flatnonzero(latest)
        new_of[index[keep] - lo] = len(parts)
        new_pos[index[keep] - lo] = np.arange(len(keep), dtype=np.int32)
        parts.append(_cut(part, keep, lo, names))
    row_map = RowMap([f"window-{k}" for k in range(len(parts))], new_of, new_pos)
    return _WindowReader(base, row_map, parts, labels)


def _row_map(base: ResultReader) -> RowMap:
    """``store.row_map`` without the part cache: with a few hundred large parts the cache
    would hold every one of them, i.e. the whole result (measured: 200 MB at 5M rows)."""
    names = base.store.part_names(base.id)
    part_of = np.full(base.total, -1, np.int32)
    pos_of = np.full(base.total, -1, np.int32)
    for k, name in enumerate(names):
        index = base.store.read_part(base.id, name, cache=False).column("index")
        values = index.buffers["values"]
        part_of[values] = k
        pos_of[values] = np.arange(len(values), dtype=np.int32)
    return RowMap(names, part_of, pos_of)


def result_frames(base: ResultReader, keep: list[str]) -> Iterator[Any]:
    """The ``to_frame()`` table one input part at a time (windows without a recorded
    row are skipped), with the ``keep`` columns."""
    store, eid = base.store, base.id
    full_map = _row_map(base)
    for name in store.part_names(eid, "inputs"):
        part = store.read_part(eid, name, "inputs")
        rows = np.asarray(part.column("row").buffers["values"])
        if not len(rows) or not (full_map.part_of[rows] >= 0).any():
            continue
        window = _window(base, full_map, int(rows[0]), _labels(part))
        frame = window.to_frame()
        if keep:
            recorded = np.flatnonzero(window.row_map.part_of >= 0)
            frame = attach_keys(frame, keys_of_part(store, eid, name).iloc[recorded])
        yield frame


# -- Parquet -----------------------------------------------------------------------------


_ARROW_TYPES = {EncodingType.numeric: "float64", EncodingType.integer: "int64",
                EncodingType.logical: "bool_", EncodingType.character: "string"}


def _settled(pa: Any, schema: Any, outputs: list[tuple[str, EncodingType]]) -> Any:
    """The schema with its all-missing (null) columns typed: declared type, else text."""
    declared = dict(outputs)
    fields = []
    for f in schema:
        if pa.types.is_null(f.type):
            name = _ARROW_TYPES.get(declared.get(f.name), "string")  # type: ignore[arg-type]
            f = f.with_type(getattr(pa, name)())
        fields.append(f)
    return pa.schema(fields, metadata=schema.metadata)


def _conform(pa: Any, table: Any, schema: Any) -> Any:
    """A later window's table in the writer's schema (a column it lacks is missing)."""
    extra = [n for n in table.schema.names if n not in schema.names]
    if extra:
        raise ValueError(f"result column(s) {extra} first appear after the first part: "
                         "write this result with to_frame() instead")
    columns = []
    for f in schema:
        if f.name in table.schema.names:
            columns.append(table.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def write_parquet(frames: Iterator[Any], path: Path, empty: Callable[[], Any],
                  outputs: list[tuple[str, EncodingType]]) -> int:
    """Write the tables to ``path`` (temp file and rename); the number of rows written.

    ``empty``: makes the table to write when there is none (no recorded row).
    """
    from .arrow import require_pyarrow

    pa = require_pyarrow()
    counted: list[int] = []
    atomic_write_with(Path(path), functools.partial(_write_tables, pa, frames, empty, outputs,
                                                    counted), mode=0o644)
    return sum(counted)


def _write_tables(pa: Any, frames: Iterator[Any], empty: Callable[[], Any],
                  outputs: list[tuple[str, EncodingType]], counted: list[int], fh: Any
                  ) -> None:
    import pyarrow.parquet as pq

    writer = schema = None
    try:
        for frame in frames:
            table = pa.Table.from_pandas(frame, preserve_index=True)
            if writer is None:
                schema = _settled(pa, table.schema, outputs)
                writer = pq.ParquetWriter(fh, schema)
            writer.write_table(_conform(pa, table, schema))
            counted.append(table.num_rows)
        if writer is None:
            table = pa.Table.from_pandas(empty(), preserve_index=True)
            writer = pq.ParquetWriter(fh, _settled(pa, table.schema, outputs))
            writer.write_table(table.cast(writer.schema))
    finally:
        if writer is not None:
            writer.close()
