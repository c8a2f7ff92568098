"""The part file (``.lbp``): encoded columns in one file, read without unpickling.

Part file layout::

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
from typing import Any

import numpy as np

from .columns import Column

__all__ = ["Part", "encode_part"]

MAGIC = b"LBP1"


def encode_part(columns: dict[str, Column], rows: int) -> bytes:
    """Serialise columns into the bytes of one part file."""
    header: dict[str, Any] = {"rows": rows, "columns": {}}
    chunks: list[Any] = []
    offset = 0
    for name, col in columns.items():
        entry: dict[str, Any] = {"kind": col.kind, "meta": col.meta, "buffers": {}}
        for key, arr in col.buffers.items():
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
            col = self._cache[name] = Column(entry["kind"], entry["meta"], bufs)
        return col
