"""The ``frame`` column kind: DataFrame values as one long table.

Every DataFrame of a column is stacked into one long table (value *i* owns
``nrows[i]`` consecutive rows of it; ``nrows`` is -1 for None), stored as the
union of their columns. Each of those is a sub-column (``series.py``: a kind,
a dtype token that restores the dtype exactly, and buffers named
``c<k>.<buffer>``). The metadata lists each sub-column as ``[name, kind, dtype
token]`` and the distinct sets of sub-columns values really had (``colsets``);
the ``colset`` buffer says which set each value had.

What a frame has beyond str column labels and a default ``RangeIndex`` is its
colset's *layout* (``layouts``, parallel to ``colsets``, absent when no value
needs one): the column labels as JSON keeps them (int, float, bool, None), the
columns' name, and the index — a ``RangeIndex``'s start and step, or index levels
stored as sub-columns named ``\x00i<k>`` with their names and ``freq``. A value
the codec cannot give back exactly raises SchemaError (see ``series.py``); the
worker fails that row alone (``_workers/outputs.py``).

pandas is imported inside the functions that handle a frame, as everywhere in
localbatch: a batch without DataFrame values never imports it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import SchemaError
from .buffers import (
    Buffers,
    concat_strings,
    encode_strings,
    missing_strings,
    string_at,
)
from .series import Sub, decode_sub, encode_series, refuse

if TYPE_CHECKING:
    from .columns import Column

__all__ = ["INDEX_PREFIX", "concat_frames", "encode_frames", "frame_at", "frame_sizes",
           "frame_table", "frames_all"]

#: A frame column's (metadata, buffers): ``columns.py`` wraps them into a Column.
FrameParts = tuple[dict[str, Any], Buffers]


# -- encoding ----------------------------------------------------------------

#: Sub-column names of index levels start with NUL: no column label can collide.
INDEX_PREFIX = "\x00i"
#: The JSON-exact label types (a label of another type fails its value).
_LABEL_TYPES = (str, int, float, bool, type(None))


def _label(value: Any, where: str) -> Any:
    """A column or index label as JSON keeps it (str, int, float, bool, None)."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if type(value) not in _LABEL_TYPES:
        raise refuse(where, value, "labels must be str, int, float, bool or None")
    return value


def _default_index(index: Any) -> bool:
    """A RangeIndex 0..n without a name: nothing to store."""
    return (type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1
            and index.name is None)


def _layout(df: Any) -> dict[str, Any] | None:
    """What a frame has beyond str column labels and a default index (None: nothing)."""
    layout: dict[str, Any] = {}
    labels = list(df.columns)
    if not all(type(c) is str for c in labels):
        layout["labels"] = [_label(c, "a column label") for c in labels]
    if df.columns.name is not None:
        layout["columns_name"] = _label(df.columns.name, "the columns' name")
    index = df.index
    if not _default_index(index):
        layout["index_names"] = [_label(n, "an index name") for n in index.names]
        if type(index).__name__ == "RangeIndex":
            layout["range"] = [index.start, index.step]
        elif index.nlevels > 1:
            layout["multi"] = True
        freq = getattr(index, "freqstr", None)
        if freq is not None:
            layout["freq"] = freq
    return layout or None


def _index_signature(index: Any) -> Any:
    if _default_index(index):
        return None
    levels = [index.get_level_values(k).dtype for k in range(index.nlevels)]
    return (type(index).__name__, tuple(index.names), tuple(map(str, levels)),
            getattr(index, "freqstr", None))


def _assemble(kind: str, pieces: list[tuple[int, Sub]], total: int) -> Buffers:
    """One sub-column over the whole long table; rows of frames without it are missing."""
    if kind == "str":
        texts: list[Any] = [None] * total
        for start, sub in pieces:
            texts[start:start + len(sub.values)] = sub.values
        return encode_strings(texts)
    values = np.zeros(total, _stored_dtype(kind))
    mask = np.ones(total, np.bool_)
    for start, sub in pieces:
        values[start:start + len(sub.values)] = sub.values
        mask[start:start + len(sub.values)] = sub.mask
    return {"values": values, "mask": mask}


def _stored_dtype(kind: str) -> Any:
    return {"float": np.float64, "bool": np.bool_}.get(kind, np.int64)


class _FrameEncoder:
    """Frames as one long table of typed sub-columns, keyed by (name, dtype, kind).

    Consecutive frames with the same columns, dtypes and index shape are
    concatenated once, so a chunk of one-row frames (the SDK sample's output)
    costs one ``concat``. A run that cannot be stored as a whole (an object
    column of str in one frame and of int in the next) is stored frame by frame;
    a frame that cannot be stored raises SchemaError (its value fails, see
    ``_workers/outputs.py``).
    """

    def __init__(self, n: int) -> None:
        self.nrows = np.full(n, -1, np.int64)
        self.colset = np.zeros(n, np.int32)
        self.colsets: dict[tuple[Any, ...], int] = {}
        self.subs: dict[tuple[str, str, str, int], int] = {}
        self.specs: list[list[str]] = []
        self.pieces: list[list[tuple[int, Sub]]] = []
        self.total = 0

    def add_run(self, members: list[int], frames: list[Any]) -> None:
        try:
            long, named, layout = _encode_run(frames)
        except SchemaError:
            if len(frames) == 1:
                raise
            for i, frame in zip(members, frames, strict=True):
                self.add_run([i], [frame])
            return
        seen: dict[str, int] = {}
        ids = []
        for name, sub in named:
            seen[name] = seen.get(name, -1) + 1
            ids.append(self._register(name, sub, seen[name]))
        if layout is not None:
            layout = self._index_ids(layout, named, ids)
        key = (tuple(ids), None if layout is None else json.dumps(layout, sort_keys=True))
        colset = self.colsets.setdefault(key, len(self.colsets))
        for i, f in zip(members, frames, strict=True):
            self.nrows[i] = len(f)
            self.colset[i] = colset
        self.total += long

    @staticmethod
    def _index_ids(layout: dict[str, Any], named: list[tuple[str, Sub]], ids: list[int]
                   ) -> dict[str, Any]:
        """Index level sub-columns move from the column ids to the layout's "index"."""
        levels = [u for (name, _), u in zip(named, ids, strict=True)
                  if name.startswith(INDEX_PREFIX)]
        if levels:
            layout = {**layout, "index": levels}
            del ids[len(ids) - len(levels):]
        return layout

    def _register(self, name: str, sub: Sub, occurrence: int) -> int:
        key = (name, sub.token, sub.kind, occurrence)
        if key not in self.subs:
            self.subs[key] = len(self.specs)
            self.specs.append([name, sub.kind, sub.token])
            self.pieces.append([])
        self.pieces[self.subs[key]].append((self.total, sub))
        return self.subs[key]

    def column(self) -> FrameParts:
        buffers: Buffers = {"nrows": self.nrows, "colset": self.colset}
        for k, (_, kind, _) in enumerate(self.specs):
            for key, arr in _assemble(kind, self.pieces[k], self.total).items():
                buffers[f"c{k}.{key}"] = arr
        meta: dict[str, Any] = {"columns": self.specs,
                                "colsets": [list(ids) for ids, _ in self.colsets]}
        layouts = [None if lay is None else json.loads(lay) for _, lay in self.colsets]
        if any(lay is not None for lay in layouts):
            meta["layouts"] = layouts
        return meta, buffers


def _encode_run(frames: list[Any]) -> tuple[int, list[tuple[str, Sub]], dict[str, Any] | None]:
    """(rows, [(sub-column name, encoded)], layout) of frames with one signature."""
    import pandas as pd

    first = frames[0]
    layout = _layout(first)
    labels = list(first.columns)
    if len(frames) > 1:
        if not first.columns.is_unique:
            # Positional labels: duplicate column names concatenate safely.
            frames = [f.set_axis(range(len(labels)), axis=1) for f in frames]
        long = pd.concat(frames, ignore_index=_default_index(first.index))
    else:
        long = first
    dtypes = list(_dtypes(first))
    named = [(str(label), encode_series(_as(long.iloc[:, j], dtypes[j]), f"column {label!r}"))
             for j, label in enumerate(labels)]
    if layout is not None and "index_names" in layout and "range" not in layout:
        for k in range(first.index.nlevels):
            dtype = first.index.get_level_values(k).dtype
            # Concatenated as Series of the run's dtype: pandas may infer another for a
            # concatenated Index (object labels of str become its str dtype).
            level = pd.concat([pd.Series(f.index.get_level_values(k), dtype=dtype)
                               for f in frames], ignore_index=True) if len(frames) > 1 \
                else pd.Series(first.index.get_level_values(k), copy=False)
            named.append((f"{INDEX_PREFIX}{k}", encode_series(level.astype(dtype),
                                                              f"index level {k}")))
    return len(long), named, layout


def _as(series: Any, dtype: Any) -> Any:
    """A concatenated column in its frames' own dtype (concat may infer another)."""
    return series if series.dtype == dtype else series.astype(dtype)


def _signature(df: Any) -> tuple[Any, ...]:
    columns = tuple(df.columns)
    # Labels 1, 1.0 and True are equal as tuples: their types tell such frames apart.
    types = None if all(type(c) is str for c in columns) else tuple(map(type, columns))
    return columns, types, tuple(_dtypes(df)), _index_signature(df.index), df.columns.name


def _dtypes(df: Any) -> Any:
    """A frame's column dtypes. ``df.dtypes`` builds a Series (~15 us, per output row
    here); the block manager's array of them costs well under a microsecond."""
    mgr = getattr(df, "_mgr", None)
    get = getattr(mgr, "get_dtypes", None)
    return get() if get is not None else df.dtypes


def encode_frames(values: Sequence[Any]) -> FrameParts:
    """(metadata, buffers) of a column of DataFrames (or None); raises SchemaError for
    a frame it cannot give back exactly."""
    enc = _FrameEncoder(len(values))
    members: list[int] = []
    frames: list[Any] = []
    current: tuple[Any, ...] | None = None
    for i, df in enumerate(values):
        if df is None:
            continue
        sig = _signature(df)
        if sig != current and frames:
            enc.add_run(members, frames)
            members, frames = [], []
        current = sig
        members.append(i)
        frames.append(df)
    if frames:
        enc.add_run(members, frames)
    return enc.column()


# -- concatenation ----------------------------------------------------------


def _spec_keys(specs: list[list[str]]) -> list[tuple[str, str, str, int]]:
    """(name, kind, dtype, occurrence) of each sub-column: duplicates of one name
    inside a frame are told apart by their order, as the encoder registered them."""
    keys = []
    seen: dict[tuple[str, ...], int] = {}
    for spec in specs:
        triple = tuple(spec)
        seen[triple] = seen.get(triple, -1) + 1
        keys.append((spec[0], spec[1], spec[2], seen[triple]))
    return keys


def _sub_buffers(bufs: Buffers, j: int) -> Buffers:
    """Sub-column ``j``'s buffers, without their ``c<j>.`` prefix."""
    prefix = f"c{j}."
    return {k[len(prefix):]: v for k, v in bufs.items() if k.startswith(prefix)}


def _missing_sub(kind: str, n: int) -> Buffers:
    if kind == "str":
        return missing_strings(n)
    return {"values": np.zeros(n, _stored_dtype(kind)), "mask": np.ones(n, np.bool_)}


def _union(columns: list[Column]) -> tuple[list[list[str]], list[list[int]]]:
    """The union of the columns' sub-columns, and per column where each of its own
    sub-columns lands in that union."""
    union: dict[tuple[str, str, str, int], int] = {}
    specs: list[list[str]] = []
    remaps = []
    for col in columns:
        remap = []
        for key in _spec_keys(col.meta["columns"]):
            if key not in union:
                union[key] = len(specs)
                specs.append(list(key[:3]))
            remap.append(union[key])
        remaps.append(remap)
    return specs, remaps


def concat_frames(columns: list[Column]) -> FrameParts:
    """Concatenate frame columns buffer by buffer (no decoding): the union of their
    sub-columns, each filled with "missing" where a chunk did not have it."""
    specs, remaps = _union(columns)
    colsets: dict[tuple[Any, ...], int] = {}
    colset_bufs, pieces = [], [[] for _ in specs]
    for col, remap in zip(columns, remaps, strict=True):
        meta, bufs = col.meta, col.buffers
        layouts = meta.get("layouts") or [None] * len(meta["colsets"])
        ids = [colsets.setdefault((tuple(remap[j] for j in cs), _remapped(lay, remap)),
                                  len(colsets))
               for cs, lay in zip(meta["colsets"], layouts, strict=True)]
        colset_bufs.append(np.asarray(ids, np.int32)[bufs["colset"]] if ids
                           else np.zeros(len(bufs["nrows"]), np.int32))
        rows = int(np.maximum(bufs["nrows"], 0).sum())
        have = {u: j for j, u in enumerate(remap)}
        for u, spec in enumerate(specs):
            pieces[u].append(_sub_buffers(bufs, have[u]) if u in have
                             else _missing_sub(spec[1], rows))
    buffers: Buffers = {
        "nrows": np.concatenate([c.buffers["nrows"] for c in columns]),
        "colset": np.concatenate(colset_bufs),
    }
    for u, spec in enumerate(specs):
        if spec[1] == "str":
            merged = concat_strings(pieces[u])
        else:
            merged = {k: np.concatenate([p[k] for p in pieces[u]]) for k in ("values", "mask")}
        for key, arr in merged.items():
            buffers[f"c{u}.{key}"] = arr
    out: dict[str, Any] = {"columns": specs, "colsets": [list(ids) for ids, _ in colsets]}
    if any(lay is not None for _, lay in colsets):
        out["layouts"] = [None if lay is None else json.loads(lay) for _, lay in colsets]
    return out, buffers


def _remapped(layout: dict[str, Any] | None, remap: list[int]) -> str | None:
    """A layout with its index level ids in the union's numbering, as a hashable key."""
    if layout is None:
        return None
    if "index" in layout:
        layout = {**layout, "index": [remap[j] for j in layout["index"]]}
    return json.dumps(layout, sort_keys=True)


# -- decoding -----------------------------------------------------------------


def _sub_series(spec: list[str], bufs: Buffers, start: int, stop: int) -> Any:
    import pandas as pd

    _, kind, dtype = spec
    if kind == "datetime":  # parts of before 0.x: nanoseconds, UTC when tz-aware
        vals = bufs["values"][start:stop].view("datetime64[ns]").copy()
        vals[bufs["mask"][start:stop]] = np.datetime64("NaT")
        series = pd.Series(vals)
        if "," in dtype:
            series = series.dt.tz_localize("UTC")
        return _restore_old(series, dtype)
    if kind == "str":
        sub = {"data": bufs["data"], "offsets": bufs["offsets"], "mask": bufs["mask"]}
        values: Any = [string_at(sub, i) for i in range(start, stop)]
        mask = bufs["mask"][start:stop]
    else:
        values, mask = bufs["values"][start:stop], bufs["mask"][start:stop]
    try:
        return decode_sub(kind, dtype, values, mask)
    except (TypeError, ValueError):  # a dtype this pandas does not know: the plain values
        return decode_sub(kind, "object", values, mask)


def _restore_old(series: Any, dtype: str) -> Any:
    try:
        return series.astype(dtype)
    except (TypeError, ValueError):
        return series


def _frame_rows(col: Column) -> tuple[np.ndarray, list[Buffers]]:
    meta, bufs = col.meta, col.buffers
    subs = [_sub_buffers(bufs, j) for j in range(len(meta["columns"]))]
    starts = np.zeros(len(bufs["nrows"]) + 1, np.int64)
    np.cumsum(np.maximum(bufs["nrows"], 0), out=starts[1:])
    return starts, subs


def _frame_at(col: Column, i: int, starts: np.ndarray, subs: list[Buffers]) -> Any:
    import pandas as pd

    meta, bufs = col.meta, col.buffers
    if bufs["nrows"][i] < 0:
        return None
    c = int(bufs["colset"][i])
    ids = meta["colsets"][c]
    layout = (meta.get("layouts") or [None] * (c + 1))[c] or {}
    start, stop = int(starts[i]), int(starts[i + 1])
    data = {pos: _sub_series(meta["columns"][j], subs[j], start, stop)
            for pos, j in enumerate(ids)}
    frame = pd.DataFrame(data, index=pd.RangeIndex(stop - start))
    frame.columns = layout.get("labels") or [meta["columns"][j][0] for j in ids]
    if "columns_name" in layout:
        frame.columns.name = layout["columns_name"]
    if "index_names" in layout:
        frame.index = _index(layout, [_sub_series(meta["columns"][j], subs[j], start, stop)
                                      for j in layout.get("index", [])], stop - start)
    return frame


def _index(layout: dict[str, Any], levels: list[Any], n: int) -> Any:
    """A frame's stored index: a range, one level or a MultiIndex."""
    import pandas as pd

    names = layout["index_names"]
    if "range" in layout:
        first, step = layout["range"]
        return pd.RangeIndex(first, first + step * n, step, name=names[0])
    # dtype= : an object level of str must not come back as pandas' str dtype.
    if layout.get("multi"):
        return pd.MultiIndex.from_arrays([pd.Index(s, dtype=s.dtype) for s in levels],
                                         names=names)
    index = pd.Index(levels[0], name=names[0], dtype=levels[0].dtype)
    if "freq" in layout:
        index = type(index)(index, freq=layout["freq"], name=names[0])
    return index


def frame_at(col: Column, i: int) -> Any:
    """The DataFrame at position ``i`` of a frame column (None where there was none)."""
    starts, subs = _frame_rows(col)
    return _frame_at(col, i, starts, subs)


def frames_all(col: Column) -> list[Any]:
    """Every value of a frame column."""
    starts, subs = _frame_rows(col)
    return [_frame_at(col, i, starts, subs) for i in range(len(col.buffers["nrows"]))]


def frame_table(col: Column) -> tuple[np.ndarray, Any]:
    """A frame column as (rows per value, one long DataFrame of all their rows).

    Read straight from the stored sub-columns, without building a DataFrame per
    value: value *i* owns ``max(nrows[i], 0)`` consecutive rows of the table
    (``nrows`` is -1 for None). Sub-columns of one name (the same column with
    another dtype in other values) are merged; a frame's second column of a
    duplicated name is called ``<name>.1``.
    """
    import pandas as pd

    meta, bufs = col.meta, col.buffers
    starts, subs = _frame_rows(col)
    total = int(starts[-1])
    owner_colset = np.repeat(bufs["colset"], np.maximum(bufs["nrows"], 0))
    merged: dict[str, Any] = {}
    for j, key in enumerate(_spec_keys(meta["columns"])):
        if key[0].startswith(INDEX_PREFIX):
            continue  # a value's own index is not a column of the table
        name = key[0] if key[3] == 0 else f"{key[0]}.{key[3]}"
        series = _sub_series(meta["columns"][j], subs[j], 0, total)
        having = [k for k, ids in enumerate(meta["colsets"]) if j in ids]
        covered = np.isin(owner_colset, having)
        if name not in merged:
            merged[name] = (series, covered)
            continue
        first, before = merged[name]
        both = first.astype(object).where(before, series.astype(object))
        merged[name] = (both, before | covered)
    data = {pos: series for pos, (series, _) in enumerate(merged.values())}
    table = pd.DataFrame(data, index=pd.RangeIndex(total))
    table.columns = list(merged)
    return bufs["nrows"], table




def frame_sizes(col: Column) -> np.ndarray:
    """The bytes each frame value takes in the stored buffers (see ``value_sizes``)."""
    meta, bufs = col.meta, col.buffers
    counts = np.maximum(bufs["nrows"], 0)
    starts = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    specs = meta["columns"]
    numeric = np.asarray([sum(specs[j][1] != "str" for j in [*ids, *(lay or {}).get("index", [])])
                          for ids, lay in zip(meta["colsets"], meta.get("layouts")
                                              or [None] * len(meta["colsets"]), strict=True)]
                         or [0], np.int64)
    sizes = counts * 9 * numeric[bufs["colset"]]
    for j, spec in enumerate(specs):
        if spec[1] == "str":
            offsets = bufs[f"c{j}.offsets"]
            sizes += offsets[starts[1:]] - offsets[starts[:-1]]
    return sizes
