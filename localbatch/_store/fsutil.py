"""Filesystem primitives: atomic writes, safe path components, private folders.

Every write in the store goes through :func:`atomic_write` (temp file in the same
folder, then ``os.replace``) or :func:`publish_exclusive` (temp file, then
``os.link``, which fails if the name exists: an exclusive claim with full content).
:func:`atomic_write_with` is the one temp-then-rename writer; files localbatch
writes outside the store (downloads, CLI output) use it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from .._errors import StoreCorruptedError, StoreError

__all__ = [
    "atomic_write",
    "atomic_write_with",
    "encode_component",
    "is_plain_file_name",
    "make_private_dir",
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


def _bytes_writer(data: bytes) -> Callable[[BinaryIO], None]:
    def write(fh: BinaryIO) -> None:
        fh.write(data)
    return write


def publish_exclusive(path: Path, data: bytes, on_written: Callable[[], None] | None = None
                      ) -> bool:
    """Create ``path`` with ``data`` unless it exists; False if someone else won."""
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


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=str).encode())


def read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreError(exc.errno, f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(data)
    except ValueError as exc:
        raise StoreCorruptedError(f"{path} is not valid JSON: {exc}") from exc


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
