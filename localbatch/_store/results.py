"""Reading an execution's results: one row, a whole table, the failed rows.

Reads part files only; nothing here unpickles or runs user code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._format.columns import Column, decode_all, decode_one
from .._format.frames import frame_table
from .._format.part import Part
from .._schema import EncodingType
from .executions import ExecutionStore, RowMap

__all__ = ["ResultReader", "RowRecord"]

_UNKNOWN: Any = object()


@dataclass
class RowRecord:
    """One row's recorded result, as stored (outputs still raw)."""

    index: int
    outputs: dict[str, Any]
    error_type: str | None
    error_message: str | None
    traceback: str | None
    console: str
    attempts: int
    worker_pid: int
    started: float
    ended: float
    history: list[dict[str, Any]]

    @property
    def error(self) -> str:
        if self.error_type is None:
            return ""
        return f"{self.error_type}: {self.error_message}" if self.error_message else \
            self.error_type


class ResultReader:
    """Reads rows of one execution; a snapshot of the parts published so far."""

    def __init__(self, store: ExecutionStore, execution_id: str, header: dict[str, Any],
                 outputs: list[tuple[str, EncodingType]], inputs: list[tuple[str, EncodingType]]
                 ) -> None:
        self.store = store
        self.id = execution_id
        self.total = int(header["total"])
        #: The first label of labels that count up by one (None: they do not; absent
        #: from stores written before 0.x: the input parts say).
        self._label_start = header.get("label_start", _UNKNOWN)
        self.outputs = outputs
        self.inputs = inputs
        self._map: RowMap | None = None

    @property
    def row_map(self) -> RowMap:
        if self._map is None:
            self._map = self.store.row_map(self.id, self.total)
        return self._map

    def recorded(self, index: int) -> bool:
        return self.row_map.locate(index) is not None

    def row(self, index: int) -> RowRecord:
        part, pos = self.store.read_row(self.id, self.row_map, index)
        outputs = {name: decode_one(part.column(f"out.{name}"), pos) for name, _ in self.outputs}
        history = decode_one(part.column("history"), pos)
        return RowRecord(
            index=index, outputs=outputs,
            error_type=decode_one(part.column("error_type"), pos),
            error_message=decode_one(part.column("error_message"), pos),
            traceback=decode_one(part.column("traceback"), pos),
            console=decode_one(part.column("console"), pos) or "",
            attempts=decode_one(part.column("attempts"), pos) or 1,
            worker_pid=decode_one(part.column("worker_pid"), pos) or 0,
            started=decode_one(part.column("started"), pos) or 0.0,
            ended=decode_one(part.column("ended"), pos) or 0.0,
            history=json.loads(history) if history else [],
        )

    # whole tables -----------------------------------------------------------------

    def _parts(self) -> list[Part]:
        return [self.store.read_part(self.id, name) for name in self.row_map.parts]

    def _latest(self, parts: list[Part]) -> tuple[np.ndarray, np.ndarray]:
        """(row index, position in the concatenated parts) of each row's latest record.

        The row map already knows each row's latest part and position in it, so this
        is a gather, not a sort of every record.
        """
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rmap = self.row_map
        rows = np.flatnonzero(rmap.part_of >= 0)
        starts = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([p.rows for p in parts], out=starts[1:])
        return rows, starts[rmap.part_of[rows]] + rmap.pos_of[rows]

    def _index(self, place: _Placement) -> Any:
        """The input index labels of the recorded rows (a RangeIndex for a default
        input index)."""
        import pandas as pd

        start = self._label_range_start()
        if start is None:
            rows = place.rows
            labels = self.labels()[rows] if len(rows) else np.zeros(0, object)
            return _label_index(labels)
        if place.size == self.total:
            return pd.RangeIndex(start, start + self.total, name="index")
        return pd.Index(place.rows + start, name="index")

    def _label_range_start(self) -> int | None:
        """The first label when the labels count up by one across every input part."""
        if self._label_start is not _UNKNOWN:
            start: int | None = self._label_start
            return start
        first: int | None = None
        expect: int | None = None
        for part in self.store.iter_inputs(self.id):
            span = part.stored_range("label", "values")
            if span is None or span[1] != 1 or (expect is not None and span[0] != expect):
                return None
            first = span[0] if first is None else first
            expect = span[0] + span[2]
        return first

    def labels(self) -> np.ndarray:
        """The input index label of every row (an object array, tuples kept whole).

        Integer labels without a missing one (a default RangeIndex) come back as an
        int64 array, without a Python object per row.
        """
        parts = list(self.store.iter_inputs(self.id))
        cols = [p.column("label") for p in parts]
        if cols and all(c.kind == "int" and not c.buffers["mask"].any() for c in cols):
            return np.concatenate([c.buffers["values"] for c in cols])
        values: list[Any] = []
        for part in parts:
            col = part.column("label")
            if col.kind != "frame":
                values.extend(decode_all(col))
                continue
            table = decode_one(col, 0)  # the chunk's labels as one table (see _spool)
            if list(table.columns) == ["label"]:
                values.extend(table["label"].tolist())
            else:
                values.extend(table.itertuples(index=False, name=None))
        out = np.empty(len(values), dtype=object)
        for k, value in enumerate(values):  # element-wise: tuples must not become rows
            out[k] = value
        return out

    def inputs_frame(self, rows: np.ndarray) -> Any:
        """The inputs of ``rows`` (ascending row numbers); parts without one are skipped."""
        import pandas as pd

        data: dict[str, list[Any]] = {name: [] for name, _ in self.inputs}
        for part in self.store.iter_inputs(self.id):
            keep = np.flatnonzero(np.isin(part.column("row").buffers["values"], rows)).tolist()
            if not keep:
                continue
            for name, _ in self.inputs:
                values = decode_all(part.column(f"in.{name}"))
                data[name].extend(values[k] for k in keep)
        return pd.DataFrame(data)

    def to_frame(self) -> Any:
        """One row per recorded input row, in input order (see ``BatchResponse.to_frame``)."""
        import pandas as pd

        parts = self._parts()
        place = _Placement(parts, self.row_map)
        data: dict[str, Any] = {}
        longs: list[tuple[str, np.ndarray, Any]] = []
        for name, enc in self.outputs:
            cols = [p.column(f"out.{name}") for p in parts]
            if cols and cols[0].kind in ("float", "int", "bool"):
                data[name] = _scalar_values(place, f"out.{name}", cols)
            elif enc is EncodingType.dataframe:
                nrows, long = _frame_table(cols)
                nrows = nrows[place.pos]
                if (nrows > 1).any():
                    longs.append((name, nrows,
                                  _take_long(long, _concat_counts(cols), place.pos)))
                    continue
                data.update(_one_row_columns(name, long, cols, place.pos, nrows))
            else:
                data[name] = _other_values(cols, place.pos, enc)
        data["error"] = _error_column(parts, place)
        index = self._index(place)
        # Object columns as Series of a stated dtype: pandas then skips inferring a
        # type from every one of a million values (most often all None).
        # Every column is a fresh array made here: no copy into pandas' blocks.
        frame = pd.DataFrame({name: pd.Series(values, index=index, dtype=object, copy=False)
                              if isinstance(values, np.ndarray) and values.dtype == object
                              else values for name, values in data.items()}, index=index,
                             copy=False)
        if longs:
            return _long_frame(frame, longs)
        return frame

    def failed_frame(self) -> Any:

        parts = self._parts()
        rows, pos = self._latest(parts)
        etype = _concat_str(p.column("error_type") for p in parts)[pos]
        bad = np.flatnonzero(np.asarray([t is not None for t in etype.tolist()], bool))
        labels = self.labels()[rows[bad]] if len(bad) else np.zeros(0, object)
        frame = self.inputs_frame(rows[bad])
        frame.index = _label_index(labels)
        frame["error_type"] = etype[bad].tolist()
        frame["error_message"] = _concat_str(
            p.column("error_message") for p in parts)[pos][bad].tolist()
        attempts = np.concatenate([p.column("attempts").buffers["values"] for p in parts]) \
            if parts else np.zeros(0, np.int64)
        frame["attempts"] = attempts[pos][bad]
        frame.insert(0, "row", rows[bad])
        return frame


def _label_index(labels: np.ndarray) -> Any:
    """The input's index: named "index", or levels "index_0".. for a MultiIndex."""
    import pandas as pd

    if labels.dtype != object:
        return pd.Index(labels, name="index")
    values = list(labels)
    if values and all(isinstance(v, tuple) for v in values):
        width = len(values[0])
        return pd.MultiIndex.from_tuples(values, names=[f"index_{k}" for k in range(width)])
    return pd.Index(values, name="index", dtype=object if not values else None)


def _error_column(parts: list[Part], place: _Placement) -> Any:
    """"Type: message" per row, None where the row succeeded."""
    if not parts:
        return []
    if place.all_missing("error_type"):  # no row failed: decode nothing
        return np.full(place.size, None, dtype=object)
    types = _concat_str(p.column("error_type") for p in parts)[place.pos].tolist()
    messages = _concat_str(p.column("error_message") for p in parts)[place.pos].tolist()
    return [None if t is None else (f"{t}: {m}" if m else t)
            for t, m in zip(types, messages, strict=True)]


def _concat_str(cols: Any) -> np.ndarray:
    values: list[Any] = []
    for col in cols:
        values.extend(decode_all(col))
    return np.asarray(values, dtype=object)


class _Placement:
    """Where each stored record goes in a table of the recorded rows, in row order.

    Parts are in commit order, so writing every part's values to their rows' places
    in turn leaves each row's latest record there: no sort, no concatenation.
    """

    def __init__(self, parts: list[Part], row_map: RowMap) -> None:
        self.parts = parts
        self._map = row_map
        self.size = row_map.recorded_count()
        # A row's place is its rank among recorded rows (itself when all are).
        self._rank = None if self.size == row_map.total else \
            np.cumsum(row_map.part_of >= 0) - 1
        self._rows: np.ndarray | None = None
        self._pos: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        """The recorded rows, ascending (made when asked: 8 MB for 1M rows)."""
        if self._rows is None:
            self._rows = np.flatnonzero(self._map.part_of >= 0)
        return self._rows

    @property
    def pos(self) -> np.ndarray:
        """Each row's latest record as a position in the concatenated parts."""
        if self._pos is None:
            starts = np.zeros(len(self.parts) + 1, np.int64)
            np.cumsum([p.rows for p in self.parts], out=starts[1:])
            self._pos = starts[self._map.part_of[self.rows]] + self._map.pos_of[self.rows]
        return self._pos

    def scatter(self, arrays: list[np.ndarray], dtype: Any) -> np.ndarray:
        out = np.empty(self.size, dtype)
        for part, values in zip(self.parts, arrays, strict=True):
            span = part.stored_range("index", "values") if self._rank is None else None
            if span is not None and span[1] == 1:  # consecutive rows: a copy, no index
                out[span[0]:span[0] + span[2]] = values
                continue
            index = part.column("index").buffers["values"]
            out[index if self._rank is None else self._rank[index]] = values
        return out

    def none_missing(self, name: str) -> bool:
        """No record has a missing value in column ``name`` (a stored constant mask is
        read from the header, not made)."""
        return all(p.stored_const(name, "mask") is False or not p.column(name).buffers["mask"].any()
                   for p in self.parts)

    def all_missing(self, name: str) -> bool:
        return all(p.stored_const(name, "mask") is True or p.column(name).buffers["mask"].all()
                   for p in self.parts)


def _scalar_values(place: _Placement, name: str, cols: list[Column]) -> Any:
    kind = cols[0].kind
    values = place.scatter([c.buffers["values"] for c in cols], cols[0].buffers["values"].dtype)
    if place.none_missing(name):
        return values
    mask = place.scatter([c.buffers["mask"] for c in cols], np.bool_)
    if kind == "float":
        out = values.astype(np.float64)
        out[mask] = np.nan
        return out
    obj = values.astype(object)
    obj[mask] = None
    return obj


def _other_values(cols: list[Column], pos: np.ndarray, enc: EncodingType) -> Any:
    values = np.asarray([v for c in cols for v in decode_all(c)] + [None], dtype=object)[:-1]
    picked = values[pos]
    if enc in (EncodingType.vector, EncodingType.matrix):
        return [None if v is None else v for v in picked.tolist()]
    return picked


def _concat_counts(cols: list[Column]) -> np.ndarray:
    return np.concatenate([c.buffers["nrows"] for c in cols]) if cols else np.zeros(0, np.int64)


def _frame_table(cols: list[Column]) -> tuple[np.ndarray, Any]:
    """Per-record row counts and the concatenated long table of a frame output."""
    import pandas as pd

    tables = [t for t in (frame_table(col)[1] for col in cols) if len(t)]
    if not tables:
        long = pd.DataFrame()
    else:
        long = pd.concat(tables, ignore_index=True, sort=False) if len(tables) > 1 \
            else tables[0]
    return _concat_counts(cols), long


def _one_row_columns(name: str, long: Any, cols: list[Column], pos: np.ndarray,
                     nrows: np.ndarray) -> dict[str, Any]:
    counts = np.maximum(_concat_counts(cols), 0)
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    out: dict[str, Any] = {}
    have = nrows == 1
    take = starts[pos][have]
    for column in long.columns:
        values = np.full(len(pos), None, dtype=object)
        values[have] = long[column].to_numpy()[take]
        series_like = values
        if have.all():
            series_like = long[column].to_numpy()[take]
        out[f"{name}.{column}"] = series_like
    return out


def _take_long(long: Any, counts: np.ndarray, pos: np.ndarray) -> Any:
    counts = np.maximum(counts, 0)
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    pieces = [np.arange(starts[p], starts[p] + counts[p]) for p in pos.tolist()]
    return long.iloc[np.concatenate(pieces) if pieces else []].reset_index(drop=True)


def _long_frame(frame: Any, longs: list[tuple[str, np.ndarray, Any]]) -> Any:
    """Multi-row DataFrame outputs: one row per (input index, position)."""
    import pandas as pd

    name, nrows, long = longs[0]
    counts = np.maximum(nrows, 0)
    repeat = np.repeat(np.arange(len(frame)), counts)
    base = frame.iloc[repeat].copy()
    position = np.concatenate([np.arange(c) for c in counts]) if len(counts) else []
    outer = frame.index[repeat]
    levels = ([outer.get_level_values(k) for k in range(outer.nlevels)]
              if isinstance(outer, pd.MultiIndex) else [outer])
    base.index = pd.MultiIndex.from_arrays([*levels, position],
                                           names=[*frame.index.names, "position"])
    for column in long.columns:
        base[f"{name}.{column}"] = long[column].to_numpy()
    return base
