"""Columnar encoding of row values, and the part file that stores them.

Every value that crosses into the store (inputs, outputs, errors, console
text) is encoded per column into plain numeric numpy buffers, so reading a part
never unpickles anything. Kinds:

- ``float`` / ``int`` / ``bool``: a value array and a missing mask;
- ``str``: UTF-8 bytes, int64 offsets and a missing mask;
- ``json``: vectors and matrices as JSON text (a ``str`` column);
- ``frame``: DataFrames as one long table (row *i* owns ``nrows[i]`` rows of it)
  with the union of their columns, each a sub-column of one of the kinds above
  (plus ``datetime``), and per row the columns it really had.

Part file layout (``.lbp``)::

    b"LBP1" | uint32 header length | header JSON | 8-byte aligned raw buffers

The header lists each column's kind, metadata and buffers (dtype, offset,
length). A buffer whose elements are all equal (no missing value, every row on
its first attempt, one worker, a column of empty strings) is stored as
``[dtype, "const", length, bits]`` instead (the element's bytes as an unsigned
integer), and an int64 buffer counting by a fixed step (row numbers) as
``[dtype, "range", length, start, step]``: a fast batch's part is then about its
outputs and times, not its masks. A part is written to a temporary name and
published by the caller.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "Column",
    "Part",
    "concat_columns",
    "decode_all",
    "decode_one",
    "encode_column",
    "encode_part",
    "frame_table",
    "kind_for_encoding",
    "read_part",
]

MAGIC = b"LBP1"

#: A column: (kind, metadata, buffers).
Column = tuple[str, dict[str, Any], dict[str, np.ndarray]]


def kind_for_encoding(enc_value: str) -> str:
    return {
        "numeric": "float",
        "integer": "int",
        "logical": "bool",
        "character": "str",
        "vector": "json",
        "matrix": "json",
        "data.frame": "frame",
    }[enc_value]


# -- encoding ----------------------------------------------------------------


def _mask(values: Sequence[Any]) -> np.ndarray:
    # Arrays cannot hold None, and `None in list` is a C loop: the common case (no
    # missing value) never walks the values in Python.
    if isinstance(values, np.ndarray) and values.dtype != object or None not in values:
        return np.zeros(len(values), np.bool_)
    return np.fromiter((v is None for v in values), dtype=np.bool_, count=len(values))


def _all_none(values: Sequence[Any]) -> bool:
    if isinstance(values, list):
        return values.count(None) == len(values)
    return all(v is None for v in values)


def _encode_number(values: Sequence[Any], dtype: Any) -> Column:
    # None must be masked before numpy sees it: np.array([None], float) is NaN and
    # np.array([None], bool) is False, which would lose the missing value.
    mask = _mask(values)
    if mask.any():
        values = [0 if m else v for v, m in zip(values, mask.tolist(), strict=True)]
    return "", {}, {"values": np.asarray(values, dtype=dtype), "mask": mask}


def _encode_str(values: Sequence[Any]) -> Column:
    n = len(values)
    if n and _all_none(values):
        return "", {}, {"data": np.zeros(0, np.uint8), "offsets": np.zeros(n + 1, np.int64),
                        "mask": np.ones(n, np.bool_)}
    raw = [b"" if v is None else str(v).encode("utf-8", "surrogatepass") for v in values]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(map(len, raw), np.int64, n), out=offsets[1:])
    data = np.frombuffer(b"".join(raw), np.uint8)
    return "", {}, {"data": data, "offsets": offsets, "mask": _mask(values)}


def _encode_json(values: Sequence[Any]) -> Column:
    texts = [None if v is None else json.dumps(np.asarray(v).tolist()) for v in values]
    return _encode_str(texts)


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
        return texts, _mask(texts)
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


def _assemble(kind: str, pieces: list[tuple[int, Any]], total: int) -> dict[str, np.ndarray]:
    """One sub-column over the whole long table; rows of frames without it are missing."""
    if kind == "str":
        texts: list[Any] = [None] * total
        for start, series in pieces:
            values, _ = _sub_values(kind, series)
            texts[start:start + len(values)] = values
        return _encode_str(texts)[2]
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

    def column(self) -> Column:
        buffers: dict[str, np.ndarray] = {"nrows": self.nrows, "colset": self.colset}
        for k, (_, kind, _) in enumerate(self.specs):
            for key, arr in _assemble(kind, self.pieces[k], self.total).items():
                buffers[f"c{k}.{key}"] = arr
        meta = {"columns": self.specs, "colsets": [list(ids) for ids in self.colsets]}
        return "frame", meta, buffers


def _signature(df: Any) -> tuple[Any, ...]:
    return tuple(df.columns), tuple(_dtypes(df))


def _dtypes(df: Any) -> Any:
    """A frame's column dtypes. ``df.dtypes`` builds a Series (~15 us, per output row
    here); the block manager's array of them costs well under a microsecond."""
    mgr = getattr(df, "_mgr", None)
    get = getattr(mgr, "get_dtypes", None)
    return get() if get is not None else df.dtypes


def _encode_frame(values: Sequence[Any]) -> Column:
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


def encode_column(kind: str, values: Sequence[Any]) -> Column:
    """Encode a list of (already cast) values of one kind."""
    if kind == "float":
        _, meta, bufs = _encode_number(values, np.float64)
    elif kind == "int":
        _, meta, bufs = _encode_number(values, np.int64)
    elif kind == "bool":
        _, meta, bufs = _encode_number(values, np.bool_)
    elif kind == "str":
        _, meta, bufs = _encode_str(values)
    elif kind == "json":
        _, meta, bufs = _encode_json(values)
    elif kind == "frame":
        _, meta, bufs = _encode_frame(values)
    else:
        raise ValueError(f"unknown column kind {kind!r}")
    return kind, meta, bufs


# -- concatenation (several chunks into one part) ---------------------------


def _concat_str(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
        offsets.append(p["offsets"][1:] + base)
        base += int(p["offsets"][-1])
    return {
        "data": np.concatenate([p["data"] for p in parts]),
        "offsets": np.concatenate(offsets),
        "mask": np.concatenate([p["mask"] for p in parts]),
    }


def concat_columns(columns: list[Column]) -> Column:
    """Concatenate encoded columns of one kind, in order."""
    kind = columns[0][0]
    if len(columns) == 1:
        return columns[0]
    bufs = [c[2] for c in columns]
    if kind in ("str", "json"):
        return kind, {}, _concat_str(bufs)
    if kind == "frame":
        return _concat_frames(columns)
    return kind, {}, {k: np.concatenate([b[k] for b in bufs]) for k in bufs[0]}


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


def _missing_sub(kind: str, n: int) -> dict[str, np.ndarray]:
    if kind == "str":
        return {"data": np.zeros(0, np.uint8), "offsets": np.zeros(n + 1, np.int64),
                "mask": np.ones(n, np.bool_)}
    dtype = {"float": np.float64, "int": np.int64, "bool": np.bool_, "datetime": np.int64}[kind]
    return {"values": np.zeros(n, dtype), "mask": np.ones(n, np.bool_)}


def _concat_frames(columns: list[Column]) -> Column:
    """Concatenate frame columns buffer by buffer (no decoding): the union of their
    sub-columns, each filled with "missing" where a chunk did not have it."""
    union: dict[tuple[str, str, str, int], int] = {}
    specs: list[list[str]] = []
    remaps = []
    for _, meta, _ in columns:
        remap = []
        for key in _spec_keys(meta["columns"]):
            if key not in union:
                union[key] = len(specs)
                specs.append(list(key[:3]))
            remap.append(union[key])
        remaps.append(remap)
    colsets: dict[tuple[int, ...], int] = {}
    colset_bufs, pieces = [], [[] for _ in specs]
    for (_, meta, bufs), remap in zip(columns, remaps, strict=True):
        ids = [colsets.setdefault(tuple(remap[j] for j in cs), len(colsets))
               for cs in meta["colsets"]]
        colset_bufs.append(np.asarray(ids, np.int32)[bufs["colset"]] if ids
                           else np.zeros(len(bufs["nrows"]), np.int32))
        rows = int(np.maximum(bufs["nrows"], 0).sum())
        have = {u: j for j, u in enumerate(remap)}
        for u, spec in enumerate(specs):
            if u in have:
                prefix = f"c{have[u]}."
                pieces[u].append({k[len(prefix):]: v for k, v in bufs.items()
                                  if k.startswith(prefix)})
            else:
                pieces[u].append(_missing_sub(spec[1], rows))
    buffers: dict[str, np.ndarray] = {
        "nrows": np.concatenate([c[2]["nrows"] for c in columns]),
        "colset": np.concatenate(colset_bufs),
    }
    for u, spec in enumerate(specs):
        if spec[1] == "str":
            merged = _concat_str(pieces[u])
        else:
            merged = {k: np.concatenate([p[k] for p in pieces[u]]) for k in ("values", "mask")}
        for key, arr in merged.items():
            buffers[f"c{u}.{key}"] = arr
    return "frame", {"columns": specs, "colsets": [list(k) for k in colsets]}, buffers


# -- decoding -----------------------------------------------------------------


def _str_at(bufs: dict[str, np.ndarray], i: int) -> str | None:
    if bufs["mask"][i]:
        return None
    start, end = int(bufs["offsets"][i]), int(bufs["offsets"][i + 1])
    return bufs["data"][start:end].tobytes().decode("utf-8", "surrogatepass")


def _str_all(bufs: dict[str, np.ndarray]) -> list[str | None]:
    data = bufs["data"].tobytes()
    offs = bufs["offsets"].tolist()
    mask = bufs["mask"].tolist()
    return [None if m else data[offs[i]:offs[i + 1]].decode("utf-8", "surrogatepass")
            for i, m in enumerate(mask)]


def _number_all(bufs: dict[str, np.ndarray]) -> list[Any]:
    values = bufs["values"].tolist()
    if bufs["mask"].any():
        for i in np.flatnonzero(bufs["mask"]).tolist():
            values[i] = None
    return values


def _sub_series(spec: list[str], bufs: dict[str, np.ndarray], start: int, stop: int
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
        series = pd.Series([_str_at(sub, i) for i in range(start, stop)], dtype=object)
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


def _frame_rows(col: Column) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    meta, bufs = col[1], col[2]
    subs = []
    for j in range(len(meta["columns"])):
        prefix = f"c{j}."
        subs.append({k[len(prefix):]: v for k, v in bufs.items() if k.startswith(prefix)})
    starts = np.zeros(len(bufs["nrows"]) + 1, np.int64)
    np.cumsum(np.maximum(bufs["nrows"], 0), out=starts[1:])
    return starts, subs


def _frame_at(col: Column, i: int, starts: np.ndarray, subs: list[dict[str, Any]]) -> Any:
    import pandas as pd

    meta, bufs = col[1], col[2]
    if bufs["nrows"][i] < 0:
        return None
    ids = meta["colsets"][int(bufs["colset"][i])]
    start, stop = int(starts[i]), int(starts[i + 1])
    data = {pos: _sub_series(meta["columns"][j], subs[j], start, stop)
            for pos, j in enumerate(ids)}
    frame = pd.DataFrame(data, index=pd.RangeIndex(stop - start))
    frame.columns = [meta["columns"][j][0] for j in ids]
    return frame


def decode_one(col: Column, i: int) -> Any:
    """Value at position ``i`` of an encoded column."""
    kind, _, bufs = col
    if kind in ("float", "int", "bool"):
        return None if bufs["mask"][i] else bufs["values"][i].item()
    if kind == "str":
        return _str_at(bufs, i)
    if kind == "json":
        text = _str_at(bufs, i)
        return None if text is None else json.loads(text)
    starts, subs = _frame_rows(col)
    return _frame_at(col, i, starts, subs)


def decode_all(col: Column) -> list[Any]:
    """Every value of an encoded column as a Python list."""
    kind, _, bufs = col
    if kind in ("float", "int", "bool"):
        return _number_all(bufs)
    if kind == "str":
        return _str_all(bufs)
    if kind == "json":
        return [None if t is None else json.loads(t) for t in _str_all(bufs)]
    starts, subs = _frame_rows(col)
    return [_frame_at(col, i, starts, subs) for i in range(len(bufs["nrows"]))]


def frame_table(col: Column) -> tuple[np.ndarray, Any]:
    """A frame column as (rows per value, one long DataFrame of all their rows).

    Read straight from the stored sub-columns, without building a DataFrame per
    value: value *i* owns ``max(nrows[i], 0)`` consecutive rows of the table
    (``nrows`` is -1 for None). Sub-columns of one name (the same column with
    another dtype in other values) are merged; a frame's second column of a
    duplicated name is called ``<name>.1``.
    """
    import pandas as pd

    meta, bufs = col[1], col[2]
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


# -- part files ----------------------------------------------------------------


def encode_part(columns: dict[str, Column], rows: int) -> bytes:
    """Serialise columns into the bytes of one part file."""
    header: dict[str, Any] = {"rows": rows, "columns": {}}
    chunks: list[Any] = []
    offset = 0
    for name, (kind, meta, bufs) in columns.items():
        entry: dict[str, Any] = {"kind": kind, "meta": meta, "buffers": {}}
        for key, arr in bufs.items():
            arr = np.ascontiguousarray(arr)
            pattern = _pattern(arr)
            if pattern is not None:
                entry["buffers"][key] = [arr.dtype.str, pattern[0], arr.size, *pattern[1:]]
                continue
            entry["buffers"][key] = [arr.dtype.str, offset, arr.size]
            chunks.append(memoryview(arr).cast("B"))
            pad = (-arr.nbytes) % 8
            if pad:
                chunks.append(b"\0" * pad)
            offset += arr.nbytes + pad
        header["columns"][name] = entry
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((-(len(head) + 8)) % 8)
    return b"".join([MAGIC, struct.pack("<I", len(head)), head, *chunks])


def _pattern(arr: np.ndarray) -> tuple[Any, ...] | None:
    """("const", bits) or ("range", start, step) for a buffer that needs no bytes.

    Equality is bitwise (the element's bytes as an unsigned integer), so -0.0,
    NaN payloads and infinities are kept exactly and JSON only ever holds integers.
    """
    if arr.size < 2 or arr.dtype.kind not in "biuf" or arr.ndim != 1:
        return None
    bits = arr.view(f"<u{arr.dtype.itemsize}")
    if (bits == bits[0]).all():
        return "const", int(bits[0])
    if arr.dtype == np.int64:
        start, step = int(arr[0]), int(arr[1]) - int(arr[0])
        last = start + step * (arr.size - 1)  # Python ints: no overflow while checking
        if (-(2**63) <= last < 2**63 and abs(step) < 2**63
                and (arr == start + step * np.arange(arr.size, dtype=np.int64)).all()):
            return "range", start, step
    return None


def _materialize(dtype: np.dtype, form: str, count: int, args: list[Any]) -> np.ndarray:
    if form == "const":
        arr = np.full(count, args[0], f"<u{dtype.itemsize}").view(dtype)
    elif form == "range":
        arr = (args[0] + args[1] * np.arange(count, dtype=np.int64)).astype(dtype)
    else:
        raise ValueError(f"unknown buffer form {form!r}")
    arr.flags.writeable = False  # like the frombuffer views of stored buffers
    return arr


class Part:
    """A part file read into memory; columns are decoded lazily."""

    __slots__ = ("rows", "_header", "_body", "_cache")

    def __init__(self, data: bytes) -> None:
        if data[:4] != MAGIC:
            raise ValueError("not a localbatch part file")
        (size,) = struct.unpack_from("<I", data, 4)
        self._header = json.loads(data[8:8 + size])
        self._body = memoryview(data)[8 + size:]
        self.rows: int = self._header["rows"]
        self._cache: dict[str, Column] = {}

    def names(self) -> list[str]:
        return list(self._header["columns"])

    def __contains__(self, name: str) -> bool:
        return name in self._header["columns"]

    def stored_const(self, name: str, key: str) -> Any:
        """The value every element of a buffer stored without bytes has, else None."""
        dtype, form, count, *args = self._header["columns"][name]["buffers"][key]
        if form != "const":
            return None
        return _materialize(np.dtype(dtype), form, 1, args)[0].item()

    def stored_range(self, name: str, key: str) -> tuple[int, int, int] | None:
        """(start, step, length) of a buffer stored as a range, else None."""
        entry = self._header["columns"].get(name)
        if entry is None or key not in entry["buffers"]:
            return None
        _, form, count, *args = entry["buffers"][key]
        if form != "range" or entry["buffers"].get("mask", [None, None])[1] != "const":
            return None
        return args[0], args[1], count

    def column(self, name: str) -> Column:
        col = self._cache.get(name)
        if col is None:
            entry = self._header["columns"][name]
            bufs = {}
            for key, (dtype, offset, count, *args) in entry["buffers"].items():
                dt = np.dtype(dtype)
                if dt.hasobject:
                    raise ValueError("object buffers are never stored")
                if isinstance(offset, str):
                    bufs[key] = _materialize(dt, offset, count, args)
                else:
                    bufs[key] = (np.frombuffer(self._body, dt, count, offset) if count
                                 else np.zeros(0, dt))
            col = self._cache[name] = (entry["kind"], entry["meta"], bufs)
        return col


def read_part(data: bytes) -> Part:
    return Part(data)
