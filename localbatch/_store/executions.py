"""The filesystem job store: one folder per execution, readable from any process.

::

    <root>/executions/<id>/execution.json   header + state, rewritten atomically by the owner
                          owner.lock        POSIX record lock held by the owner for its life
                          inputs/part-NNNNNN.lbp    the input spool (columnar)
                          results/part-NNNNNN.lbp   result parts (columnar, fixed schema)
                          artifacts/<index>/<name>  per-row files
                          execution.log     events (concurrent-log-handler)
                          cancel            marker: a cancel was requested

Commit protocol: a row is recorded when the part holding it is published (an
exclusive link of a fully written file), so a reader never sees half a part.
When two parts record the same row (``retry_failed``) the later one wins. The
owner derives counters from what it published and rewrites ``execution.json``
after each part; ``results()`` reads only that file and probes the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import (
    ArtifactNotFoundError,
    ExecutionNotFoundError,
    RowNotRecordedError,
    StoreCorruptedError,
    StoreError,
)
from .._format.columns import Column
from .._format.part import Part, encode_part
from .faults import hook
from .fsutil import (
    atomic_write,
    is_plain_file_name,
    make_private_dir,
    publish_exclusive,
    read_json,
    write_json,
)
from .states import ExecutionHeader

__all__ = [
    "ExecutionStore",
    "OwnerLock",
    "RowMap",
    "check_artifact_name",
    "check_execution_id",
]

FORMAT_VERSION = 1
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _after_write() -> None:
    hook("part.after_write")


def check_execution_id(execution_id: Any) -> str:
    if not isinstance(execution_id, str) or not _ID_RE.match(execution_id):
        raise ExecutionNotFoundError(f"no execution with id {execution_id!r} (not a valid id)")
    return execution_id


def check_artifact_name(name: Any) -> str:
    if not is_plain_file_name(name):
        raise ArtifactNotFoundError(f"{name!r} is not a valid artifact name")
    return name


class OwnerLock:
    """The owner's exclusive POSIX record lock on one execution.

    ``lockf`` locks belong to the process and are not inherited by children, so
    a worker can never keep a dead owner's execution "running". Because closing
    *any* descriptor of the file drops the process's lock, this process never
    probes a lock it holds: :data:`_HELD` short-circuits those probes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        with _HELD_LOCK:
            _HELD[str(self.path)] = self
        return True

    def release(self) -> None:
        with _HELD_LOCK:
            _HELD.pop(str(self.path), None)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


_HELD: dict[str, OwnerLock] = {}
_HELD_LOCK = threading.Lock()


def _probe_lock(path: Path) -> bool:
    """True when another process holds the lock at ``path``."""
    with _HELD_LOCK:
        if str(path) in _HELD:
            return True
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@dataclass
class RowMap:
    """Where each row's latest record lives: part file and position (-1 = none)."""

    parts: list[str]
    part_of: np.ndarray
    pos_of: np.ndarray

    def locate(self, index: int) -> tuple[str, int] | None:
        if not 0 <= index < len(self.part_of) or self.part_of[index] < 0:
            return None
        return self.parts[int(self.part_of[index])], int(self.pos_of[index])


class ExecutionStore:
    """Executions under ``<root>/executions``."""

    def __init__(self, root: Path) -> None:
        self.root = root / "executions"
        self._parts: dict[tuple[str, str], Part] = {}
        self._parts_lock = threading.Lock()

    # paths ------------------------------------------------------------------

    def path(self, execution_id: str) -> Path:
        return self.root / check_execution_id(execution_id)

    def exists(self, execution_id: str) -> bool:
        return (self.path(execution_id) / "execution.json").is_file()

    def _require(self, execution_id: str) -> Path:
        path = self.path(execution_id)
        if not (path / "execution.json").is_file():
            raise ExecutionNotFoundError(f"no execution with id {execution_id!r} in {self.root}")
        return path

    # creating ---------------------------------------------------------------

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def staging(self, execution_id: str) -> Path:
        """A private folder to build an execution in before it is published."""
        path = make_private_dir(self.root / ".staging") / execution_id
        (path / "inputs").mkdir(parents=True, mode=0o700)
        return path

    def publish(self, staging: Path, header: ExecutionHeader) -> OwnerLock:
        """Write the header, take the owner lock, and make the execution visible."""
        header.setdefault("format_version", FORMAT_VERSION)
        for sub in ("results", "artifacts"):
            (staging / sub).mkdir(mode=0o700, exist_ok=True)
        write_json(staging / "execution.json", header)
        lock = OwnerLock(staging / "owner.lock")
        if not lock.acquire():
            raise StoreError(f"cannot lock new execution {staging.name}")
        final = self.root / staging.name
        try:
            os.rename(staging, final)
        except OSError as exc:
            lock.release()
            raise StoreError(exc.errno, f"cannot publish execution: {exc}") from exc
        lock.path = final / "owner.lock"
        with _HELD_LOCK:
            _HELD.pop(str(staging / "owner.lock"), None)
            _HELD[str(lock.path)] = lock
        return lock

    def discard_staging(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    # header -----------------------------------------------------------------

    def read_header(self, execution_id: str) -> ExecutionHeader:
        path = self._require(execution_id)
        for _ in range(3):
            try:
                return dict(read_json(path / "execution.json"))
            except FileNotFoundError:
                time.sleep(0.01)
        raise ExecutionNotFoundError(f"execution {execution_id!r} was deleted")

    def write_header(self, execution_id: str, header: ExecutionHeader) -> None:
        hook("header.before_replace")
        write_json(self.path(execution_id) / "execution.json", header)
        hook("header.after_replace")

    def owner_alive(self, execution_id: str) -> bool:
        return _probe_lock(self.path(execution_id) / "owner.lock")

    def take_ownership(self, execution_id: str, attempts: int = 20) -> OwnerLock | None:
        """Become the owner (for resume/cancel of an orphan); None if someone holds it."""
        lock = OwnerLock(self._require(execution_id) / "owner.lock")
        for _ in range(attempts):
            # A reader's probe holds the lock for microseconds: retry briefly.
            if lock.acquire():
                return lock
            time.sleep(0.02)
        return None

    def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir()
                if not p.name.startswith(".") and (p / "execution.json").is_file()]

    def delete(self, execution_id: str) -> None:
        path = self._require(execution_id)
        trash = self.root / ".staging" / f"deleted-{execution_id}-{uuid.uuid4().hex[:6]}"
        make_private_dir(trash.parent)
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # cancel marker ------------------------------------------------------------

    def request_cancel(self, execution_id: str) -> None:
        atomic_write(self._require(execution_id) / "cancel", str(time.time()).encode())

    def cancel_requested(self, execution_id: str) -> bool:
        return (self.path(execution_id) / "cancel").exists()

    # parts ------------------------------------------------------------------------

    def write_part(self, directory: Path, seq: int, columns: dict[str, Column], rows: int
                   ) -> str:
        """Write a part under a temporary name, then publish it (the commit point)."""
        name = f"part-{seq:06d}.lbp"
        hook("part.before_write")
        data = encode_part(columns, rows)
        if not publish_exclusive(directory / name, data, on_written=_after_write):
            raise StoreError(f"part {directory / name} already exists")
        hook("part.after_publish")
        return name

    def part_names(self, execution_id: str, kind: str = "results") -> list[str]:
        folder = self.path(execution_id) / kind
        try:
            return sorted(n for n in os.listdir(folder) if n.startswith("part-")
                          and n.endswith(".lbp"))
        except FileNotFoundError:
            return []

    def read_part(self, execution_id: str, name: str, kind: str = "results",
                  cache: bool = True) -> Part:
        """A published part; ``cache=False``: neither from nor into the cache (a reader
        streaming every part must not hold them all)."""
        key = (execution_id, f"{kind}/{name}")
        with self._parts_lock:
            part = self._parts.get(key) if cache else None
        if part is not None:
            return part
        path = self.path(execution_id) / kind / name
        try:
            part = Part(path.read_bytes())
        except ValueError as exc:
            raise StoreCorruptedError(f"{path} is corrupt: {exc}") from exc
        except OSError as exc:
            raise StoreError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
        if kind == "results" and cache:
            with self._parts_lock:
                # Published parts are immutable, so caching them by name is safe. Input
                # parts are read once per run: caching them would hold the whole spool.
                if len(self._parts) > 256:
                    self._parts.clear()
                self._parts[key] = part
        return part

    def iter_inputs(self, execution_id: str) -> Iterator[Part]:
        for name in self.part_names(execution_id, "inputs"):
            yield self.read_part(execution_id, name, "inputs")

    def row_map(self, execution_id: str, total: int) -> RowMap:
        names = self.part_names(execution_id)
        part_of = np.full(total, -1, np.int32)
        pos_of = np.full(total, -1, np.int32)
        for k, name in enumerate(names):
            index = self.read_part(execution_id, name).column("index").buffers["values"]
            part_of[index] = k
            pos_of[index] = np.arange(len(index), dtype=np.int32)
        return RowMap(names, part_of, pos_of)

    def read_row(self, execution_id: str, row_map: RowMap, index: int) -> tuple[Part, int]:
        where = row_map.locate(index)
        if where is None:
            raise RowNotRecordedError(f"row {index} has no recorded result")
        return self.read_part(execution_id, where[0]), where[1]

    # artifacts -------------------------------------------------------------------

    def artifact_dir(self, execution_id: str, index: int) -> Path:
        return self.path(execution_id) / "artifacts" / str(int(index))

    def write_artifacts(self, execution_id: str, index: int, files: dict[str, bytes]) -> None:
        hook("artifacts.before_write")
        final = self.artifact_dir(execution_id, index)
        tmp = final.with_name(f".tmp-{index}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(mode=0o700)
        for name, data in files.items():
            with open(tmp / check_artifact_name(name), "xb") as fh:
                fh.write(data)
        if final.exists():
            # A retry or a crashed earlier attempt left files: the new attempt replaces them.
            old = final.with_name(f".old-{index}-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, final)

    def list_artifacts(self, execution_id: str, index: int) -> list[str]:
        folder = self.artifact_dir(execution_id, index)
        if folder.is_symlink() or not folder.is_dir():
            return []
        return sorted(n for n in os.listdir(folder) if not (folder / n).is_symlink()
                      and (folder / n).is_file())

    def read_artifact(self, execution_id: str, index: int, name: str) -> bytes:
        folder = self.artifact_dir(execution_id, index)
        check_artifact_name(name)
        if folder.is_symlink():
            raise ArtifactNotFoundError(f"row {index} has no artifact {name!r}")
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise ArtifactNotFoundError(f"row {index} has no artifact {name!r}") from None
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
