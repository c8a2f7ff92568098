"""The ``frame`` column kind: DataFrame values as one long table.

Every DataFrame of a column is stacked into one long table (value *i* owns
``nrows[i]`` consecutive rows of it; ``nrows`` is -1 for None), stored as the
union of their columns. Each of those is a sub-column of a plain kind (``float``,
``int``, ``bool``, ``str``; plus ``datetime``, int64 nanoseconds, UTC for
tz-aware columns) whose buffers are named ``c<k>.<buffer>``. The metadata
lists each sub-column as ``[name, kind, dtype name]`` (the dtype is restored on
decoding where pandas can) and the distinct sets of sub-columns values really
had (``colsets``); the ``colset`` buffer says which set each value had.

pandas is imported inside the functions that handle a frame, as everywhere in
localbatch: a batch without DataFrame values never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .buffers import (
    Buffers,
    concat_strings,
    encode_strings,
    missing_mask,
    missing_strings,
    string_at,
)

if TYPE_CHECKING:
    from .columns import Column

__all__ = ["concat_frames", "encode_frames", "frame_at", "frame_table", "frames_all"]

#: A frame column's (metadata, buffers): ``columns.py`` wraps them into a Column.
FrameParts = tuple[dict[str, Any], Buffers]


# -- encoding ----------------------------------------------------------------


def _frame_subkind(series: Any) -> str:
    """The stored kind of one DataFrame column (its dtype name is kept beside it)."""
    kind = getattr(series.dtype, "kind", "O")
    if kind in ("f", "i", "u", "b"):
        return {"f": "float", "i": "int", "u": "int", "b": "bool"}[kind]
    if kind == "M":
        return "datetime"
    if str(series.dtype) == "object":
        return _object_kind(series)
    return "str"


def _object_kind(series: Any) -> str:
    """Object columns of plain numbers stay numbers (missing = None), not text."""
    present = [v for v in series.tolist() if not _missing(v)]
    if not present:
        return "str"
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return "bool"
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
           for v in present):
        return "int"
    if all(isinstance(v, (float, np.floating)) for v in present):
        return "float"
    return "str"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or type(v).__name__ in (
        "NAType", "NaTType")


def _absent(v: Any) -> bool:
    """Missing for a float column: None/NA/NaT, but a float NaN is a value."""
    return v is None or type(v).__name__ in ("NAType", "NaTType")


def _sub_values(kind: str, series: Any) -> tuple[Any, np.ndarray]:
    """(values, missing mask) of one frame column stored as ``kind``."""
    if kind == "datetime":
        if getattr(series.dtype, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return (series.to_numpy().astype("datetime64[ns]").view(np.int64),
                series.isna().to_numpy())
    if kind == "str":
        texts = [None if _missing(v) else str(v) for v in series.tolist()]
        return texts, missing_mask(texts)
    dtype = {"float": np.float64, "int": np.int64, "bool": np.bool_}[kind]
    if isinstance(series.dtype, np.dtype) and series.dtype != object:
        return series.to_numpy(dtype), np.zeros(len(series), np.bool_)
    # Nullable extension and object columns: NA/None are missing.
    raw = series.tolist()
    gone = _absent if kind == "float" else _missing
    mask = np.fromiter((gone(v) for v in raw), np.bool_, len(raw))
    fill = {"float": np.nan, "int": 0, "bool": False}[kind]
    return np.array([fill if m else v for v, m in zip(raw, mask.tolist(), strict=True)],
                    dtype), mask


def _assemble(kind: str, pieces: list[tuple[int, Any]], total: int) -> Buffers:
    """One sub-column over the whole long table; rows of frames without it are missing."""
    if kind == "str":
        texts: list[Any] = [None] * total
        for start, series in pieces:
            values, _ = _sub_values(kind, series)
            texts[start:start + len(values)] = values
        return encode_strings(texts)
    dtype = {"float": np.float64, "int": np.int64, "bool": np.bool_, "datetime": np.int64}[kind]
    values = np.zeros(total, dtype)
    mask = np.ones(total, np.bool_)
    for start, series in pieces:
        vals, missing = _sub_values(kind, series)
        values[start:start + len(vals)] = vals
        mask[start:start + len(vals)] = missing
    return {"values": values, "mask": mask}


class _FrameEncoder:
    """Frames as one long table of typed sub-columns, keyed by (name, dtype, kind).

    Consecutive frames with the same columns and dtypes are concatenated once, so
    a chunk of one-row frames (the SDK sample's output) costs one ``concat``.
    """

    def __init__(self, n: int) -> None:
        self.nrows = np.full(n, -1, np.int64)
        self.colset = np.zeros(n, np.int32)
        self.colsets: dict[tuple[int, ...], int] = {}
        self.subs: dict[tuple[str, str, str, int], int] = {}
        self.specs: list[list[str]] = []
        self.pieces: list[list[tuple[int, Any]]] = []
        self.total = 0

    def add_run(self, members: list[int], frames: list[Any]) -> None:
        import pandas as pd

        names = [str(c) for c in frames[0].columns]
        if len(frames) > 1 and not frames[0].columns.is_unique:
            # Positional labels: duplicate column names concatenate safely.
            frames = [f.set_axis(range(len(names)), axis=1) for f in frames]
        long = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        ids = []
        seen: dict[str, int] = {}
        dtypes = [str(t) for t in frames[0].dtypes]
        for j, name in enumerate(names):
            series = long.iloc[:, j]
            kind = _frame_subkind(series)
            occurrence = seen[name] = seen.get(name, -1) + 1
            key = (name, dtypes[j], kind, occurrence)
            if key not in self.subs:
                self.subs[key] = len(self.specs)
                self.specs.append([name, kind, dtypes[j]])
                self.pieces.append([])
            self.pieces[self.subs[key]].append((self.total, series))
            ids.append(self.subs[key])
        colset = self.colsets.setdefault(tuple(ids), len(self.colsets))
        for i, f in zip(members, frames, strict=True):
            self.nrows[i] = len(f)
            self.colset[i] = colset
        self.total += len(long)

    def column(self) -> FrameParts:
        buffers: Buffers = {"nrows": self.nrows, "colset": self.colset}
        for k, (_, kind, _) in enumerate(self.specs):
            for key, arr in _assemble(kind, self.pieces[k], self.total).items():
                buffers[f"c{k}.{key}"] = arr
        meta = {"columns": self.specs, "colsets": [list(ids) for ids in self.colsets]}
        return meta, buffers


def _signature(df: Any) -> tuple[Any, ...]:
    return tuple(df.columns), tuple(_dtypes(df))


def _dtypes(df: Any) -> Any:
    """A frame's column dtypes. ``df.dtypes`` builds a Series (~15 us, per output row
    here); the block manager's array of them costs well under a microsecond."""
    mgr = getattr(df, "_mgr", None)
    get = getattr(mgr, "get_dtypes", None)
    return get() if get is not None else df.dtypes


def encode_frames(values: Sequence[Any]) -> FrameParts:
    """(metadata, buffers) of a column of DataFrames (or None)."""
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
    dtype = {"float": np.float64, "int": np.int64, "bool": np.bool_, "datetime": np.int64}[kind]
    return {"values": np.zeros(n, dtype), "mask": np.ones(n, np.bool_)}


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
    colsets: dict[tuple[int, ...], int] = {}
    colset_bufs, pieces = [], [[] for _ in specs]
    for col, remap in zip(columns, remaps, strict=True):
        meta, bufs = col.meta, col.buffers
        ids = [colsets.setdefault(tuple(remap[j] for j in cs), len(colsets))
               for cs in meta["colsets"]]
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
    return {"columns": specs, "colsets": [list(k) for k in colsets]}, buffers


# -- decoding -----------------------------------------------------------------


def _sub_series(spec: list[str], bufs: Buffers, start: int, stop: int
                ) -> Any:
    import pandas as pd

    _, kind, dtype = spec
    if kind in ("float", "int", "bool"):
        vals = bufs["values"][start:stop]
        mask = bufs["mask"][start:stop]
        if not mask.any() and dtype != "object":
            series = pd.Series(vals, copy=True)
        else:
            series = pd.Series([None if m else v for v, m in zip(vals.tolist(), mask.tolist(),
                                                                  strict=True)], dtype=object)
    elif kind == "datetime":
        vals = bufs["values"][start:stop].view("datetime64[ns]").copy()
        vals[bufs["mask"][start:stop]] = np.datetime64("NaT")
        series = pd.Series(vals)
        if "," in dtype:  # tz-aware: stored as UTC
            series = series.dt.tz_localize("UTC")
    else:
        sub = {"data": bufs["data"], "offsets": bufs["offsets"], "mask": bufs["mask"]}
        series = pd.Series([string_at(sub, i) for i in range(start, stop)], dtype=object)
    return _restore(series, dtype)


def _restore(series: Any, dtype: str) -> Any:
    """Give a decoded column its original dtype back where pandas can."""
    if dtype == "object" or str(series.dtype) == dtype:
        return series
    if _numpy_kind(dtype) in ("i", "u", "b") and series.isna().any():
        return series  # numpy ints and bools cannot hold a missing value: keep None
    try:
        return series.astype(dtype)
    except (TypeError, ValueError):
        return series


def _numpy_kind(dtype: str) -> str:
    """The numpy kind of a dtype name, "" for pandas' own (nullable) dtypes."""
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return ""


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
    ids = meta["colsets"][int(bufs["colset"][i])]
    start, stop = int(starts[i]), int(starts[i + 1])
    data = {pos: _sub_series(meta["columns"][j], subs[j], start, stop)
            for pos, j in enumerate(ids)}
    frame = pd.DataFrame(data, index=pd.RangeIndex(stop - start))
    frame.columns = [meta["columns"][j][0] for j in ids]
    return frame


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


