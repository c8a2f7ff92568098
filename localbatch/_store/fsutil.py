"""Filesystem primitives: atomic writes, safe path components, private folders.

Every write in the store goes through :func:`atomic_write` (temp file in the same
folder, then ``os.replace``) or :func:`publish_exclusive` (temp file, then
``os.link``, which fails if the name exists: an exclusive claim with full content).
:func:`atomic_write_with` is the one temp-then-rename writer; files localbatch
writes outside the store (downloads, CLI output) use it too.

Private by default: every file the store writes is created 0600 and every folder
0700 (whatever the umask), so only the owner of the store reads pickles, code,
inputs, results and logs. :func:`check_store_root` says when a store folder is not
private: writable by others, or owned by another user.

Checked JSON: every JSON object the store writes (``execution.json``, manifests,
``current``) carries ``"checksum": "crc32:<hex>"``, the CRC-32 of its canonical
form (the object without the checksum, keys sorted, compact separators);
:func:`read_json` checks it and drops it, so a flipped bit or an edited field
raises :class:`StoreCorruptedError` naming the file, like invalid JSON does. An
object without a checksum is accepted only from an older store (``format_version``
missing or 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import uuid
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from .._errors import ConfigurationError, LocalBatchWarning, StoreCorruptedError, StoreError

__all__ = [
    "JSON_FORMAT",
    "WriteBehind",
    "atomic_write",
    "atomic_write_with",
    "check_store_root",
    "checked_json_bytes",
    "encode_component",
    "is_plain_file_name",
    "make_private_dir",
    "open_store_root",
    "publish_exclusive",
    "read_json",
    "sha256",
    "unlink_if_present",
    "write_json",
]

#: Set LOCALBATCH_FSYNC=1 for power-loss durability (files and folders fsynced).
FSYNC = os.environ.get("LOCALBATCH_FSYNC", "") not in ("", "0")


#: Longest encoded component kept readable; file systems cap a name at 255 bytes.
_MAX_COMPONENT = 200
#: Prefix of hashed components. ``quote`` always writes "%" plus two hex digits, so
#: "%%" never starts a readable one: the two forms cannot collide.
_HASHED = "%%"
_NOT_IN_FILE_NAME = re.compile(r"[/\\\0]")


def encode_component(text: str) -> str:
    """A user-given name as one safe path component.

    Short names are percent-encoded (reversible with ``urllib.parse.unquote``); a
    name whose encoding would pass the file system's limit (128 "!" or 128 CJK
    characters do) becomes ``%%`` plus its SHA-256, so callers that need the name
    back must keep it beside the folder (the registry's manifests do).
    """
    enc = quote(text, safe="")
    if len(enc) > _MAX_COMPONENT:
        return _HASHED + sha256(text.encode("utf-8", "surrogatepass"))
    # A leading dot would hide the folder and "." / ".." must never appear.
    return "%2E" + enc[1:] if enc.startswith(".") else enc


def is_plain_file_name(name: Any) -> bool:
    """A name that stays one file inside its folder: a non-empty str, not ``.`` or
    ``..``, without ``/``, ``\\`` or NUL (the rule for artifact names)."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..")
            and not _NOT_IN_FILE_NAME.search(name))


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) readable by the owner only."""
    if not path.is_dir():
        # mkdir(parents=True) would give the parents the umask's mode, not 0o700.
        if not path.parent.is_dir():
            make_private_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
    return path


def _temp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:12]}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, write: Callable[[BinaryIO], None], mode: int = 0o600) -> Path:
    """A new temp file beside ``path`` holding what ``write`` wrote (gone on failure)."""
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if FSYNC:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write_with(path: Path, write: Callable[[BinaryIO], None], mode: int = 0o600
                      ) -> None:
    """Replace ``path`` with what ``write`` writes into a temp file beside it.

    Readers see the old file or the new one, never half; a symlink at ``path`` is
    replaced, never written through. Errors (``OSError``, or ``write``'s own) pass
    through unchanged and leave no temp file behind. ``mode`` is the new file's
    permission bits (before the umask): 0o600 in the store, 0o644 for user files.
    """
    tmp = _write_temp(path, write, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if FSYNC:
        _fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``; readers see the old or the new file, never half."""
    try:
        atomic_write_with(path, _bytes_writer(data))
    except OSError as exc:
        raise StoreError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc


class WriteBehind:
    """:func:`atomic_write` on two threads, while the caller encodes the next file.

    Writing a new file is mostly the kernel finding pages for it (on the 2-core
    benchmark VM, 2.6 ms of CPU per MB, against 0.2 ms to overwrite cached pages),
    and ``write`` releases the GIL: the input spool of 1M float rows (16 MB) took
    71 ms in ``start()`` written in turn, 46 ms behind two threads. At most
    ``depth`` files wait (bounded memory); leaving the ``with`` block waits for
    every write and raises the first error, unless the block itself raised.
    """

    def __init__(self, threads: int = 2, depth: int = 4,
                 kept: dict[str, bytes] | None = None, budget: int = 0) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="localbatch-write")
        self._pending: deque[Future[None]] = deque()
        self._depth = depth
        #: What was written, by file name, while it fits ``budget`` bytes (see
        #: ``ExecutionStore.keep_inputs``).
        self._kept, self._budget = kept, budget

    def put(self, path: Path, data: bytes) -> None:
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(atomic_write, path, data))
        if self._kept is not None and len(data) <= self._budget:
            self._kept[path.name] = data
            self._budget -= len(data)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        first: BaseException | None = None
        while self._pending:
            error = self._pending.popleft().exception()
            first = first or error
        self._pool.shutdown(wait=True)
        if first is not None and exc is None:
            raise first


def _bytes_writer(data: bytes | Sequence[Any]) -> Callable[[BinaryIO], None]:
    pieces = [data] if isinstance(data, bytes) else data

    def write(fh: BinaryIO) -> None:
        fh.flush()
        _write_pieces(fh.fileno(), pieces)
    return write


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


def _write_pieces(fd: int, pieces: Sequence[Any]) -> None:
    """Write byte pieces in turn with as few ``writev`` calls as the kernel allows (a
    part's ~30 pieces in one call: 80 parts, 9.3 MB, took 29 ms of CPU here, against 37
    ms written a piece at a time and 32 ms joined first)."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while written:  # a short write: drop what went, go on from there
            if written >= len(views[0]):
                written -= len(views.pop(0))
            else:
                views[0], written = views[0][written:], 0


def publish_exclusive(path: Path, data: bytes | Sequence[Any],
                      on_written: Callable[[], None] | None = None) -> bool:
    """Create ``path`` with ``data`` (bytes, or pieces written in turn) unless it exists;
    False if someone else won."""
    try:
        tmp = _write_temp(path, _bytes_writer(data))
    except OSError as exc:
        raise StoreError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        if on_written is not None:
            on_written()
        os.link(tmp, path)
        if FSYNC:
            _fsync_dir(path.parent)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise StoreError(exc.errno, f"cannot publish {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


#: The ``format_version`` from which a JSON object must carry a checksum.
JSON_FORMAT = 2
_CHECKSUM = "checksum"


def _json_crc(obj: dict[str, Any]) -> str:
    body = {k: v for k, v in obj.items() if k != _CHECKSUM}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return f"crc32:{zlib.crc32(canon.encode()):08x}"


def checked_json_bytes(obj: Any) -> bytes:
    """The bytes :func:`write_json` writes: a dict gains its checksum."""
    text = json.dumps(obj, indent=1, default=str)
    if not isinstance(obj, dict):
        return text.encode()
    plain = json.loads(text)  # the checksum covers what a reader will parse back
    plain[_CHECKSUM] = _json_crc(plain)
    return json.dumps(plain, indent=1).encode()


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, checked_json_bytes(obj))


def read_json(path: Path) -> Any:
    """The JSON at ``path``, its checksum checked and dropped (see the module docstring).

    ``FileNotFoundError`` passes through; other I/O errors are ``StoreError``, damage
    is ``StoreCorruptedError`` naming the file.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreError(exc.errno, f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise StoreCorruptedError(f"{path} is damaged: not valid JSON ({exc})") from None
    if isinstance(obj, dict):
        _check_json(path, obj)
    return obj


def _check_json(path: Path, obj: dict[str, Any]) -> None:
    stored = obj.pop(_CHECKSUM, None)
    if stored is None:
        version = obj.get("format_version", 1)
        if not isinstance(version, int) or version >= JSON_FORMAT:
            raise StoreCorruptedError(f"{path} is damaged: its checksum is missing")
        return
    if stored != _json_crc(obj):
        raise StoreCorruptedError(f"{path} is damaged: checksum mismatch (edited or "
                                  "corrupted on disk)")


def check_store_root(path: Path) -> list[str]:
    """Why the store folder ``path`` (or a folder above it) is not private; [] if it is.

    A store whose folder others can write (or that another user owns) can be made to
    run planted code: a revision's pickles are loaded from it. Sticky folders such as
    ``/tmp`` above the store are fine: others cannot replace what they do not own.
    """
    problems: list[str] = []
    uid = os.geteuid()
    for folder in [path, *path.parents]:
        try:
            st = os.stat(folder)
        except OSError:
            continue  # not created yet
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            who = "everyone" if st.st_mode & stat.S_IWOTH else "its group"
            problems.append(f"{folder} is writable by {who} "
                            f"(mode {stat.S_IMODE(st.st_mode):04o})")
        # Folders above the store may belong to root (/, /home); the store is ours.
        if st.st_uid != uid and (folder == path or st.st_uid != 0):
            problems.append(f"{folder} is owned by another user (uid {st.st_uid}, "
                            f"not {uid})")
    return problems


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unlink_if_present(path: Path) -> None:
    """Remove ``path``; already gone is fine, any other failure is a StoreError."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(exc.errno, f"cannot clear {path}: {exc}") from exc


def _strict_from_env() -> bool:
    return os.environ.get("LOCALBATCH_STRICT", "") not in ("", "0")


def open_store_root(path: Path, strict: bool | None = None) -> None:
    """Create the store folder (0700) and check it is private (:func:`check_store_root`).

    A store others can write is used with a ``LocalBatchWarning`` naming the path and
    the problem; in strict mode (``strict=True``, or ``LOCALBATCH_STRICT=1`` when
    ``strict`` is None) it is refused with ``ConfigurationError``, so nothing planted
    there is ever loaded.
    """
    make_private_dir(path)
    problems = check_store_root(path)
    if not problems:
        return
    text = (f"store {path} is not private: {'; '.join(problems)}. Whoever can write there "
            "can plant a service revision that localbatch would run: chmod 700 the store "
            "and the folders above it (and make it yours)")
    if _strict_from_env() if strict is None else strict:
        raise ConfigurationError(text + " (strict mode refuses it)")
    warnings.warn(text, LocalBatchWarning, stacklevel=4)
