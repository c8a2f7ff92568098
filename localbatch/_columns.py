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
length). A part is written to a temporary name and published by the caller.
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
    return np.fromiter((v is None for v in values), dtype=np.bool_, count=len(values))


def _encode_number(values: Sequence[Any], dtype: Any) -> Column:
    try:
        arr = np.array(values, dtype=dtype)
        return "", {}, {"values": arr, "mask": np.zeros(len(values), np.bool_)}
    except (TypeError, ValueError):
        mask = _mask(values)
        filled = [0 if v is None else v for v in values]
        return "", {}, {"values": np.array(filled, dtype=dtype), "mask": mask}


def _encode_str(values: Sequence[Any]) -> Column:
    n = len(values)
    if n and all(v is None for v in values):
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
    kind = series.dtype.kind if isinstance(series.dtype, np.dtype) else "O"
    return {"f": "float", "i": "int", "u": "int", "b": "bool", "M": "datetime"}.get(kind, "str")


def _encode_sub(kind: str, series: Any) -> dict[str, np.ndarray]:
    if kind == "float":
        return {"values": series.to_numpy(np.float64), "mask": np.zeros(len(series), np.bool_)}
    if kind in ("int", "bool"):
        dtype = np.int64 if kind == "int" else np.bool_
        return {"values": series.to_numpy(dtype), "mask": np.zeros(len(series), np.bool_)}
    if kind == "datetime":
        return {"values": series.to_numpy().astype("datetime64[ns]").view(np.int64),
                "mask": series.isna().to_numpy()}
    values = [None if _missing(v) else str(v) for v in series.tolist()]
    return _encode_str(values)[2]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or type(v).__name__ in (
        "NAType", "NaTType")


def _encode_frame(values: Sequence[Any]) -> Column:
    import pandas as pd

    nrows = np.full(len(values), -1, np.int64)
    colset_ids = np.zeros(len(values), np.int32)
    colsets: dict[tuple[str, ...], int] = {}
    frames = []
    for i, df in enumerate(values):
        if df is None:
            continue
        key = tuple(str(c) for c in df.columns)
        colset_ids[i] = colsets.setdefault(key, len(colsets))
        nrows[i] = len(df)
        frames.append(df.set_axis(list(key), axis=1) if len(key) != len(set(key)) else df)
    buffers: dict[str, np.ndarray] = {"nrows": nrows, "colset": colset_ids}
    columns: list[list[str]] = []
    if frames:
        long = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
        long.columns = [str(c) for c in long.columns]
        for j, name in enumerate(long.columns):
            sub = long.iloc[:, j]
            kind = _frame_subkind(sub)
            columns.append([name, kind])
            for key, arr in _encode_sub(kind, sub).items():
                buffers[f"c{j}.{key}"] = arr
    meta = {"columns": columns, "colsets": [list(k) for k in colsets]}
    return "", meta, buffers


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


def _concat_frames(columns: list[Column]) -> Column:
    # Re-decoding is simplest and still columnar: frames are rare in big parts,
    # and the per-chunk encodings may have different column unions.
    values: list[Any] = []
    for col in columns:
        values.extend(decode_all(col))
    return encode_column("frame", values)


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


def _sub_series(kind: str, bufs: dict[str, np.ndarray], start: int, stop: int) -> Any:
    import pandas as pd

    if kind in ("float", "int", "bool"):
        vals = bufs["values"][start:stop]
        mask = bufs["mask"][start:stop]
        if not mask.any():
            return pd.Series(vals, copy=True)
        return pd.Series([None if m else v for v, m in zip(vals.tolist(), mask.tolist(),
                                                            strict=True)], dtype=object)
    if kind == "datetime":
        vals = bufs["values"][start:stop].view("datetime64[ns]").copy()
        vals[bufs["mask"][start:stop]] = np.datetime64("NaT")
        return pd.Series(vals)
    sub = {"data": bufs["data"], "offsets": bufs["offsets"], "mask": bufs["mask"]}
    return pd.Series([_str_at(sub, i) for i in range(start, stop)], dtype=object)


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
    names = meta["colsets"][int(bufs["colset"][i])]
    where = {name: j for j, (name, _) in enumerate(meta["columns"])}
    start, stop = int(starts[i]), int(starts[i + 1])
    data = {}
    for name in names:
        j = where[name]
        series = _sub_series(meta["columns"][j][1], subs[j], start, stop)
        data[name] = series.reset_index(drop=True)
    return pd.DataFrame(data, columns=names, index=pd.RangeIndex(stop - start))


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


# -- part files ----------------------------------------------------------------


def encode_part(columns: dict[str, Column], rows: int) -> bytes:
    """Serialise columns into the bytes of one part file."""
    header: dict[str, Any] = {"rows": rows, "columns": {}}
    chunks: list[bytes] = []
    offset = 0
    for name, (kind, meta, bufs) in columns.items():
        entry: dict[str, Any] = {"kind": kind, "meta": meta, "buffers": {}}
        for key, arr in bufs.items():
            arr = np.ascontiguousarray(arr)
            raw = arr.tobytes()
            entry["buffers"][key] = [arr.dtype.str, offset, arr.size]
            pad = (-len(raw)) % 8
            chunks.append(raw + b"\0" * pad)
            offset += len(raw) + pad
        header["columns"][name] = entry
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((-(len(head) + 8)) % 8)
    return b"".join([MAGIC, struct.pack("<I", len(head)), head, *chunks])


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

    def column(self, name: str) -> Column:
        col = self._cache.get(name)
        if col is None:
            entry = self._header["columns"][name]
            bufs = {}
            for key, (dtype, offset, count) in entry["buffers"].items():
                dt = np.dtype(dtype)
                if dt.hasobject:
                    raise ValueError("object buffers are never stored")
                bufs[key] = (np.frombuffer(self._body, dt, count, offset) if count
                             else np.zeros(0, dt))
            col = self._cache[name] = (entry["kind"], entry["meta"], bufs)
        return col


def read_part(data: bytes) -> Part:
    return Part(data)
