"""The part file (``.lbp``): encoded columns in one file, read without unpickling.

Part file layout (format 2)::

    b"LBP2" | uint32 header length | uint32 CRC-32 | uint32 0 | header JSON | raw buffers

The CRC-32 (``zlib.crc32``) covers the header length, the header and every byte
after it up to the end of the file, so a flipped bit anywhere, a truncation,
appended bytes or an edited header (a part's row range, a buffer offset) fails
the check; every :class:`Part` made from bytes checks it before reading
anything. Measured on a 64 MiB part: ~31 ms (about 2 GB/s), 2-3 % of writing
the part. Buffers start 8-byte aligned.

Format 1 parts (``b"LBP1" | uint32 header length | header JSON | buffers``, no
checksum: stores written before 0.x) are still read, unverified, so an old store
keeps working and ``resume()`` appends format 2 parts to it; ``localbatch
verify`` lists them as unverifiable. Any part that cannot be parsed raises
:class:`PartCorruptedError` (a ``ValueError``); the store names the file.

The header lists each column's kind, metadata and buffers (dtype, offset,
length). A buffer whose elements are all equal (no missing value, every row on
its first attempt, one worker, a column of empty strings) is stored as
``[dtype, "const", length, bits]`` instead (the element's bytes as an unsigned
integer), and an int64 buffer counting by a fixed step (row numbers) as
``[dtype, "range", length, start, step]``; a buffer whose elements are those of an
earlier stored buffer of the same dtype and length moved up by one (each row's end
time is the next row's start time), but at a few breaks (where a part's next chunk
ran apart, and the last element), as ``[dtype, "next", length, column, key,
[position, bits, ...]]``; a 4- or 8-byte buffer whose elements' bits step by small
integers (start times of rows that ran back to back are ~1 ulp apart; a part's few
worker pids) as ``[dtype, "delta", length, first bits, step dtype, offset, [position,
step bits, ...]]``: its steps in 1, 2 or 4 bytes at ``offset`` (null: every step is
zero), but at a few breaks, whose whole steps the list gives (a row the scheduler
preempted, where a part's next chunk ran on another worker). A fast batch's part is
then about its outputs: 1M trivial rows wrote 28.3 MB of results, 9.3 MB with these
forms. A part is written to a temporary name and published by the caller.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, NamedTuple

import numpy as np

from .columns import Column

__all__ = ["FORMAT_VERSION", "Part", "PartCorruptedError", "encode_part"]

MAGIC = b"LBP2"
MAGIC_V1 = b"LBP1"
FORMAT_VERSION = 2
#: magic, header length, CRC-32, reserved (zero).
_PREFIX = struct.Struct("<4sIII")


class PartCorruptedError(ValueError):
    """The bytes are not an intact part file (the store turns this into
    ``StoreCorruptedError`` naming the file)."""


def encode_part(columns: dict[str, Column], rows: int) -> bytes:
    """Serialise columns into the bytes of one part file."""
    layout = _layout(columns, rows)
    return b"".join([layout.first, *layout.chunks])


class _Layout(NamedTuple):
    """One part file in pieces, checksummed, not joined."""

    header: dict[str, Any]
    #: The prefix and the header JSON.
    first: bytes
    #: The buffers that follow (read-only byte views of the columns' arrays; padding).
    chunks: list[Any]
    #: The stored buffers by offset.
    at: dict[int, memoryview]


def _layout(columns: dict[str, Column], rows: int) -> _Layout:
    """The pieces of the part file of these columns."""
    header: dict[str, Any] = {"rows": rows, "columns": {}}
    chunks: list[Any] = []
    at: dict[int, memoryview] = {}
    stored: list[tuple[str, str, np.ndarray]] = []  # with bytes or steps: for "next"
    offset = 0
    for name, col in columns.items():
        entry: dict[str, Any] = {"kind": col.kind, "meta": col.meta, "buffers": {}}
        for key, arr in col.buffers.items():
            pattern = _pattern(arr) or _follows(arr, stored)
            if pattern is not None:
                entry["buffers"][key] = [arr.dtype.str, pattern[0], arr.size, *pattern[1:]]
                continue
            arr = np.ascontiguousarray(arr)
            stored.append((name, key, arr))
            steps = _steps(arr)
            if steps is not None:  # stored as its first element and its small steps
                first, small, breaks = steps
                some = bool(small.any())  # else every step but the breaks is 0: no bytes
                entry["buffers"][key] = [arr.dtype.str, "delta", arr.size, first,
                                         small.dtype.str, offset if some else None, breaks]
                if not some:
                    continue
                arr = small
            else:
                entry["buffers"][key] = [arr.dtype.str, offset, arr.size]
            at[offset] = memoryview(arr).toreadonly().cast("B")
            chunks.append(at[offset])
            pad = (-arr.nbytes) % 8
            if pad:
                chunks.append(b"\0" * pad)
            offset += arr.nbytes + pad
        header["columns"][name] = entry
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((-(len(head) + _PREFIX.size)) % 8)
    size = struct.pack("<I", len(head))
    crc = zlib.crc32(head, zlib.crc32(size))
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return _Layout(header, _PREFIX.pack(MAGIC, len(head), crc, 0) + head, chunks, at)


def _parse(data: bytes, checked: bool = True) -> tuple[dict[str, Any], memoryview]:
    """(header, body) of a part's bytes, checked; PartCorruptedError otherwise."""
    if data[:4] == MAGIC:
        if len(data) < _PREFIX.size:
            raise PartCorruptedError(f"truncated: {len(data)} bytes")
        _, size, crc, _ = _PREFIX.unpack_from(data, 0)
        actual = zlib.crc32(memoryview(data)[_PREFIX.size:], zlib.crc32(data[4:8])) \
            if checked else crc
        if actual != crc:
            raise PartCorruptedError(f"checksum mismatch (stored {crc:08x}, computed "
                                     f"{actual:08x}): damaged, truncated or edited")
        start = _PREFIX.size
    elif data[:4] == MAGIC_V1 and len(data) >= 8:
        (size,) = struct.unpack_from("<I", data, 4)
        start = 8
    else:
        raise PartCorruptedError("not a localbatch part file (bad magic)")
    try:
        header = json.loads(data[start:start + size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise PartCorruptedError(f"unreadable header: {exc}") from None
    body = memoryview(data)[start + size:]
    _check_header(header, len(body))
    return header, body


def _check_header(header: Any, body_size: int) -> None:
    """Every buffer a header names lies inside the body and has a known form."""
    if not isinstance(header, dict) or not isinstance(header.get("rows"), int) \
            or not isinstance(header.get("columns"), dict):
        raise PartCorruptedError("header lacks rows/columns")
    try:
        for name, entry in header["columns"].items():
            for key, (dtype, offset, count, *args) in entry["buffers"].items():
                dt = np.dtype(dtype)
                if dt.hasobject or not isinstance(count, int) or count < 0:
                    raise PartCorruptedError(f"bad buffer {name}.{key}")
                if offset == "next":
                    _check_next(header["columns"], name, key, dt, count, args)
                elif offset == "delta":
                    _check_delta(name, key, dt, count, args, body_size)
                elif isinstance(offset, str):
                    if offset not in ("const", "range") or not all(
                            isinstance(a, int) for a in args):
                        raise PartCorruptedError(f"bad buffer form {name}.{key}")
                elif not (isinstance(offset, int) and offset >= 0
                          and offset + count * dt.itemsize <= body_size):
                    raise PartCorruptedError(f"buffer {name}.{key} lies outside the file")
            if not isinstance(entry["kind"], str) or not isinstance(entry["meta"], dict):
                raise PartCorruptedError(f"bad column {name}")
    except PartCorruptedError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise PartCorruptedError(f"malformed header: {type(exc).__name__}: {exc}") from None


def _pattern(arr: np.ndarray) -> tuple[Any, ...] | None:
    """("const", bits) or ("range", start, step) for a buffer that needs no bytes.

    Equality is bitwise (the element's bytes as an unsigned integer), so -0.0,
    NaN payloads and infinities are kept exactly and JSON only ever holds integers.
    """
    if arr.size < 2 or arr.dtype.kind not in "biuf" or arr.ndim != 1:
        return None
    bits = arr.view(f"<u{arr.dtype.itemsize}")
    if arr.strides[0] == 0:  # one value seen n times (np.broadcast_to): nothing to scan
        return "const", int(bits[0])
    # The ends first: most buffers with bytes (times, outputs) fail there, before a pass
    # over every element (12,000 floats: 0.7 us instead of 3.9).
    if bits[-1] == bits[0] and (bits == bits[0]).all():
        return "const", int(bits[0])
    if arr.dtype == np.int64:
        start, step = int(arr[0]), int(arr[1]) - int(arr[0])
        last = start + step * (arr.size - 1)  # Python ints: no overflow while checking
        if (last == int(arr[-1]) and -(2**63) <= last < 2**63 and abs(step) < 2**63
                and (arr == start + step * np.arange(arr.size, dtype=np.int64)).all()):
            return "range", start, step
    return None


#: Elements of a "next" buffer that do not follow (chunks of a part that ran apart, and
#: the last one): at most this many, else its bytes are stored.
_MAX_BREAKS = 64


def _follows(arr: np.ndarray, stored: list[tuple[str, str, np.ndarray]]
             ) -> tuple[Any, ...] | None:
    """("next", column, key, breaks) when ``arr`` is an earlier stored buffer moved up
    by one (bitwise) but at a few positions: the end times of rows that ran back to
    back, one break where a part's next chunk ran apart. ``breaks`` lists position,
    bits, position, bits... and always ends with the last element."""
    if arr.size < 2 or arr.dtype.kind not in "iuf" or arr.ndim != 1:
        return None
    bits = arr.view(f"<u{arr.dtype.itemsize}")
    for name, key, other in stored:
        if other.dtype != arr.dtype or other.size != arr.size:
            continue
        obits = other.view(bits.dtype)
        # The first element first: a buffer that does not follow fails there.
        if bits[0] != obits[1]:
            continue
        apart = np.flatnonzero(bits[:-1] != obits[1:])
        if len(apart) >= _MAX_BREAKS:
            continue
        breaks: list[int] = []
        for pos in [*apart.tolist(), arr.size - 1]:
            breaks += [pos, int(bits[pos])]
        return "next", name, key, breaks
    return None


def _check_next(columns: dict[str, Any], name: str, key: str, dtype: np.dtype, count: int,
                args: list[Any]) -> None:
    """A "next" buffer names a buffer stored with bytes, of its dtype and length, and
    its breaks are increasing positions inside it, the last one last, with bits that
    fit the dtype."""
    if len(args) != 3 or not isinstance(args[0], str) or not isinstance(args[1], str) \
            or not _valid_breaks(args[2], count, dtype) \
            or dtype.kind not in "iuf" or dtype.itemsize not in (1, 2, 4, 8):
        raise PartCorruptedError(f"bad buffer form {name}.{key}")
    try:
        other_dtype, other_offset, other_count, *_ = \
            columns[args[0]]["buffers"][args[1]]
    except (KeyError, TypeError, ValueError):
        raise PartCorruptedError(f"buffer {name}.{key} follows a buffer that is not "
                                 "there") from None
    if (type(other_offset) is not int and other_offset != "delta") or other_count != count \
            or np.dtype(other_dtype) != dtype:
        raise PartCorruptedError(f"buffer {name}.{key} follows a buffer of another form")


def _valid_breaks(breaks: Any, count: int, dtype: np.dtype) -> bool:
    """A "next" buffer's breaks: pairs at positions below ``count``, the last element
    last."""
    return _pairs(breaks, count, dtype) and bool(breaks) and breaks[-2] == count - 1


def _pairs(breaks: Any, below: int, dtype: np.dtype) -> bool:
    """A list of (position, bits) pairs, flat: integers, positions increasing from 0 and
    below ``below``, bits that fit ``dtype``."""
    if not isinstance(breaks, list) or len(breaks) % 2 \
            or not all(type(v) is int for v in breaks):
        return False
    positions, values = breaks[0::2], breaks[1::2]
    return (all(0 <= p < below for p in positions)
            and all(a < b for a, b in zip(positions, positions[1:], strict=False))
            and all(0 <= v < 1 << (8 * dtype.itemsize) for v in values))


#: The step widths a "delta" buffer may use, narrowest first.
_STEP_DTYPES = (np.dtype("|i1"), np.dtype("<i2"), np.dtype("<i4"))


#: What a break costs in the header (two integers in JSON), against a byte a step.
_BREAK_BYTES = 24
_NONE = np.zeros(0, np.intp)


def _steps(arr: np.ndarray) -> tuple[int, np.ndarray, list[int]] | None:
    """(first element's bits, steps, breaks) when the steps between elements' bits fit a
    narrower integer than the elements but at most ``_MAX_BREAKS`` of them: times of rows
    that ran one after the other (~1 ulp apart), a part's few worker pids. Of the widths
    that can (none at all when every step but the breaks is zero), the one that takes the
    fewest bytes, counting ``_BREAK_BYTES`` a break (the narrowest on a tie), if that is
    fewer than the elements take; a break's narrow step is 0 and its whole step, as
    unsigned bits, is in ``breaks`` (position, bits, ...). Bitwise, with wraparound, so
    any value comes back exactly."""
    size = arr.dtype.itemsize
    if arr.size < 16 or arr.dtype.kind not in "iuf" or arr.ndim != 1 or size < 4:
        return None
    bits = arr.view(f"<u{size}")
    signed = f"<i{size}"
    # A few steps first: a buffer of unrelated values (outputs) fails there.
    head = np.diff(bits[:9]).view(signed)
    if int(head.min()) < -(2**31) or int(head.max()) >= 2**31:
        return None
    steps = np.diff(bits).view(signed)
    # Zero steps but at breaks (the pids of a part whose chunks ran on two workers)
    # are stored in no bytes: a width for that case too.
    moved = np.count_nonzero(steps)
    best = (_BREAK_BYTES * moved, _STEP_DTYPES[0], np.flatnonzero(steps)) \
        if moved <= _MAX_BREAKS else None
    low, high = int(steps.min()), int(steps.max())
    for dt in _STEP_DTYPES:
        if dt.itemsize >= size or (best is not None and best[0] <= dt.itemsize * steps.size):
            break  # a wider width takes more bytes than the best so far
        info = np.iinfo(dt)
        apart = _NONE if info.min <= low and high <= info.max else \
            _few((steps < info.min) | (steps > info.max))
        if apart is not None:
            cost = dt.itemsize * steps.size + _BREAK_BYTES * apart.size
            if best is None or cost < best[0]:
                best = (cost, dt, apart)
    if best is None or best[0] >= size * steps.size:  # no smaller than the elements
        return None
    _, dt, apart = best
    small = steps.astype(dt)
    small[apart] = 0
    breaks: list[int] = []
    for pos, step in zip(apart.tolist(), steps[apart].view(bits.dtype).tolist(), strict=True):
        breaks += [pos, step]
    return int(bits[0]), small, breaks


def _few(where: np.ndarray) -> np.ndarray | None:
    """The positions where ``where`` is true, if there are no more than ``_MAX_BREAKS``."""
    return np.flatnonzero(where) if np.count_nonzero(where) <= _MAX_BREAKS else None


def _check_delta(name: str, key: str, dtype: np.dtype, count: int, args: list[Any],
                 body_size: int) -> None:
    """A "delta" buffer: first bits that fit its dtype, a step dtype narrower than it,
    its steps inside the file (or none), and breaks at increasing steps with bits that
    fit the dtype."""
    try:
        first, step_dtype, offset, *rest = args
        steps = np.dtype(step_dtype)
    except (TypeError, ValueError):
        raise PartCorruptedError(f"bad buffer form {name}.{key}") from None
    breaks = rest[0] if len(rest) == 1 else None
    if type(first) is not int or not (offset is None or type(offset) is int) or count < 1 \
            or dtype.kind not in "iuf" or dtype.itemsize not in (4, 8) \
            or not 0 <= first < 1 << (8 * dtype.itemsize) \
            or steps not in _STEP_DTYPES or steps.itemsize >= dtype.itemsize \
            or not _valid_step_breaks(breaks, count, dtype):
        raise PartCorruptedError(f"bad buffer form {name}.{key}")
    if offset is not None and not (offset >= 0
                                   and offset + (count - 1) * steps.itemsize <= body_size):
        raise PartCorruptedError(f"buffer {name}.{key} lies outside the file")


def _valid_step_breaks(breaks: Any, count: int, dtype: np.dtype) -> bool:
    """A "delta" buffer's breaks: at most ``_MAX_BREAKS`` pairs, at its steps."""
    return _pairs(breaks, count - 1, dtype) and len(breaks) <= 2 * _MAX_BREAKS


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
    """A part file read into memory, or one this process encoded; columns are decoded
    lazily."""

    __slots__ = ("rows", "version", "nbytes", "_data", "_header", "_body", "_cache",
                 "_pieces", "_at")

    def __init__(self, data: bytes | _Layout, checked: bool = True) -> None:
        """``data``: a file's bytes, or the layout this process just encoded (see
        :meth:`encoded`); ``checked=False``: bytes this process just encoded, not read
        from a file (the checksum is for what a file may have become since)."""
        self._at: dict[int, memoryview] | None
        if isinstance(data, _Layout):
            self._header, self._body, self._data = data.header, None, None
            self._pieces, self._at = [data.first, *data.chunks], data.at
            self.version = FORMAT_VERSION
        else:
            self._header, self._body = _parse(data, checked)
            self._data, self._pieces, self._at = data, [data], None
            #: 2, or 1 for a part of an older store (read without a checksum to check).
            self.version = FORMAT_VERSION if data[:4] == MAGIC else 1
        self.nbytes = sum(len(p) for p in self._pieces)
        self.rows: int = self._header["rows"]
        self._cache: dict[str, Column] = {}

    @classmethod
    def encoded(cls, columns: dict[str, Column], rows: int) -> Part:
        """A part of these columns as the writer encoded it: the header it built (not
        parsed back) and its buffers where they are (not joined into one ``bytes``: a
        copy of every byte, ~10 ms a 1M trivial rows' results). It holds the columns'
        arrays: the caller must not change them."""
        layout = _layout(columns, rows)
        if any(entry["meta"] for entry in layout.header["columns"].values()):
            # Metadata (frames) may hold tuples that JSON makes lists: read it back as
            # every other reader will.
            return cls(b"".join([layout.first, *layout.chunks]), checked=False)
        return cls(layout)

    def pieces(self) -> list[Any]:
        """The file's bytes, in pieces to write one after the other."""
        return self._pieces

    @property
    def data(self) -> bytes:
        """The file's bytes (joined, for an encoded part)."""
        if self._data is None:
            self._data = b"".join(self._pieces)
        return self._data

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
                if offset == "next":
                    bufs[key] = self._next(dt, count, args)
                else:
                    bufs[key] = self._buffer(dt, offset, count, args)
            col = self._cache[name] = Column(entry["kind"], entry["meta"], bufs)
        return col

    def _buffer(self, dtype: np.dtype, form: Any, count: int, args: list[Any]
                ) -> np.ndarray:
        """Any buffer but a "next" one, from its header entry."""
        if form == "delta":
            return self._delta(dtype, count, args)
        if isinstance(form, str):
            return _materialize(dtype, form, count, args)
        return self._stored(dtype, count, form) if count else np.zeros(0, dtype)

    def _stored(self, dtype: np.dtype | str, count: int, offset: int) -> np.ndarray:
        """A buffer's bytes (read-only either way): in the file, or as encoded."""
        if self._at is not None:
            return np.frombuffer(self._at[offset], dtype, count)
        return np.frombuffer(self._body, dtype, count, offset)

    def _delta(self, dtype: np.dtype, count: int, args: list[Any]) -> np.ndarray:
        """A "delta" buffer: its first element's bits plus the running sum of its steps
        and breaks (unsigned, so a wraparound step comes back as it went)."""
        first, step_dtype, offset, breaks = args
        unsigned = np.dtype(f"<u{dtype.itemsize}")
        bits = np.empty(count, unsigned)
        bits[0] = first
        if offset is None:
            bits[1:] = 0
        else:
            steps = self._stored(step_dtype, count - 1, offset)
            bits[1:] = steps.astype(f"<i{dtype.itemsize}").view(unsigned)
        if breaks:
            bits[1:][breaks[0::2]] = np.array(breaks[1::2], unsigned)
        np.cumsum(bits, out=bits)
        arr = bits.view(dtype)
        arr.flags.writeable = False
        return arr

    def _next(self, dtype: np.dtype, count: int, args: list[Any]) -> np.ndarray:
        """A "next" buffer: the buffer it follows (stored with bytes or as steps, as the
        header check made sure), moved up by one, then its breaks."""
        column, key, breaks = args
        _, form, _, *rest = self._header["columns"][column]["buffers"][key]
        source = self._buffer(dtype, form, count, rest)
        arr = np.empty(count, dtype)
        arr[:-1] = source[1:]
        bits = arr.view(f"<u{dtype.itemsize}")
        bits[breaks[0::2]] = np.array(breaks[1::2], bits.dtype)
        arr.flags.writeable = False
        return arr
