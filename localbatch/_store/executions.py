"""The filesystem job store: one folder per execution, readable from any process.

::

    <root>/executions/<id>/execution.json   header + state, rewritten atomically by the owner
                          owner.lock        POSIX record lock held by the owner for its life
                          pin.json          the revision it runs (written before spooling)
                          inputs/part-NNNNNN.lbp    the input spool (columnar)
                          results/part-NNNNNN.lbp   result parts (columnar, fixed schema)
                          results/part-NNNNNN.lbp.corrupt   a damaged part moved aside
                          artifacts/<index>/<name>  per-row files
                          artifacts/<index>/.localbatch-checksums   their CRC-32s
                          execution.log     events (concurrent-log-handler)
                          cancel            marker: a cancel was requested

Nothing read is trusted: parts carry a CRC-32 (``_format/part.py``),
``execution.json`` a checksum and a checked shape (``states.check_header``), each
artifact folder a ``.localbatch-checksums`` file; damage raises
``StoreCorruptedError`` naming the file. Whoever takes ownership of an execution
(:meth:`ExecutionStore.take_ownership`: resume, retry, cancel of an orphan) first
repairs what a previous owner left (:meth:`ExecutionStore.recover`): a damaged
result part is moved aside to ``*.corrupt`` (its rows then have no record and run
again), half-written ``artifacts/.tmp-*`` folders are removed. Every file is
0600, every folder 0700.

Commit protocol: a row is recorded when the part holding it is published (an
exclusive link of a fully written file), so a reader never sees half a part.
When two parts record the same row (``retry_failed``) the later one wins. The
owner derives counters from what it published and rewrites ``execution.json``
after each part; ``results()`` reads only that file and probes the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import (
    ArtifactNotFoundError,
    ExecutionNotFoundError,
    RowNotRecordedError,
    ServiceNotFoundError,
    StoreCorruptedError,
    StoreError,
)
from .._format.columns import Column
from .._format.part import Part
from .faults import hook
from .fsutil import (
    atomic_write,
    is_plain_file_name,
    make_private_dir,
    publish_exclusive,
    read_json,
    write_json,
)
from .states import ExecutionHeader, ExecutionState, check_header

__all__ = [
    "ARTIFACT_SUMS",
    "CORRUPT_SUFFIX",
    "ExecutionStore",
    "OwnerLock",
    "PIN",
    "RowMap",
    "check_artifact_name",
    "check_execution_id",
    "checked_index",
]

#: 2: checksummed parts, header and artifact folders (1: read unverified).
FORMAT_VERSION = 2
#: The file in each artifact folder naming the CRC-32 of every artifact in it.
ARTIFACT_SUMS = ".localbatch-checksums"
#: The file in an execution's staging folder naming the revision it pins.
PIN = "pin.json"
#: Suffix of a damaged result part moved aside by :meth:`ExecutionStore.recover`.
CORRUPT_SUFFIX = ".corrupt"
_PART_RE = re.compile(r"^part-(\d{6,})\.lbp")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _after_write() -> None:
    hook("part.after_write")


def check_execution_id(execution_id: Any) -> str:
    if not isinstance(execution_id, str) or not _ID_RE.match(execution_id):
        raise ExecutionNotFoundError(f"no execution with id {execution_id!r} (not a valid id)")
    return execution_id


def check_artifact_name(name: Any) -> str:
    if not is_plain_file_name(name) or name == ARTIFACT_SUMS:
        raise ArtifactNotFoundError(f"{name!r} is not a valid artifact name")
    return name


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


class OwnerLock:
    """The owner's exclusive lock on one execution: one owner per execution, per
    process too.

    Two layers, taken in this order and released together:

    - an in-process registry (:data:`_HELD`, keyed by the lock file's device and
      inode, so any spelling of the path and the staging folder's rename find the
      same entry): a second thread, or a ``resume()`` while this process's own run
      goes on, is refused exactly like another process;
    - a POSIX record lock (``lockf``), which is per process and not inherited by
      children, so a worker can never keep a dead owner's execution "running".

    Closing *any* descriptor of the file drops this process's record lock, so every
    open of a lock file in this process happens under :data:`_HELD_LOCK`, after the
    registry said this process does not hold it (a descriptor opened in the rare
    race with a rename is parked on the holder and closed at its release).

    The file's content is the owner's note, pre-allocated at :meth:`acquire` (while
    there was space) to :data:`NOTE_BYTES`: ``"<pid> <host>"`` and, once the run
    ended but ``execution.json`` could not be rewritten (a full disk, a read-only
    remount), the final state as one JSON line (:meth:`write_note`), written over
    the allocated bytes so it needs no new space. Readers merge it
    (:meth:`read_note`).
    """

    #: Bytes of the owner's note; an overwrite in place allocates no new blocks.
    NOTE_BYTES = 4096

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._key: tuple[int, int] | None = None
        self._parked: list[int] = []
        #: The final state noted by this process (read here without opening the file).
        self.note: dict[str, Any] | None = None

    def acquire(self) -> bool:
        with _HELD_LOCK:
            key = _file_key(self.path)
            if key is not None and key in _HELD:
                return False  # this process owns it already (another thread or run)
            fd = _open_unheld(self.path, os.O_RDWR | os.O_CREAT)
            if fd is None:
                return False
            key = _fstat_key(fd)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self._fd, self._key = fd, key
            _HELD[key] = self
        self._write_content(f"{os.getpid()} {socket.gethostname()}\n")
        return True

    def _write_content(self, text: str) -> None:
        """Overwrite the note in place (padded); a new file is allocated here."""
        assert self._fd is not None
        data = text.encode()[:self.NOTE_BYTES].ljust(self.NOTE_BYTES, b" ")
        try:
            os.pwrite(self._fd, data, 0)
        except OSError:
            # No space even for the note: at least clear a previous owner's.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, text.split("\n", 1)[0].encode() + b"\n", 0)

    def write_note(self, final: dict[str, Any]) -> bool:
        """Record the run's final state where readers find it without execution.json."""
        if self._fd is None:
            return False
        self.note = final
        line = json.dumps(final, default=str)
        if len(line) > self.NOTE_BYTES - 200:
            final = dict(final, error=str(final.get("error"))[:self.NOTE_BYTES // 2])
            line = json.dumps(final, default=str)
        try:
            os.pwrite(self._fd, f"{os.getpid()} {socket.gethostname()}\n{line}\n"
                      .encode().ljust(self.NOTE_BYTES, b" "), 0)
        except OSError:
            return False
        return True

    @staticmethod
    def read_note(path: Path) -> dict[str, Any] | None:
        """The final state an owner noted in ``path`` (None: none, or unreadable)."""
        with _HELD_LOCK:
            key = _file_key(path)
            if key is None:
                return None
            held = _HELD.get(key)
            if held is not None:
                return held.note
            try:
                fd = _open_unheld(path, os.O_RDONLY)
            except OSError:
                return None
            if fd is None:
                return None
            try:
                data = os.pread(fd, OwnerLock.NOTE_BYTES, 0)
            finally:
                os.close(fd)
        _, _, rest = data.decode(errors="replace").partition("\n")
        try:
            note = json.loads(rest.strip() or "null")
        except ValueError:
            return None
        return note if isinstance(note, dict) and isinstance(note.get("state"), str) else None

    @staticmethod
    def probe(path: Path) -> bool:
        """True when an owner (this process, or another) holds the lock at ``path``.

        Read-only: the file is opened ``O_RDONLY`` and asked with ``F_GETLK``, which
        places no lock (~1 µs), so a reader without write permission, or on a
        read-only mount, sees the truth. A reader that cannot open the file at all
        asks ``/proc/locks``; one that cannot find out either way reports an owner
        (the stored state stands), never a death it could not see.
        """
        with _HELD_LOCK:
            key = _file_key(path)
            if key is None:
                return False  # no lock file: nobody ever owned it (or it was deleted)
            if key in _HELD:
                return True
            try:
                fd = _open_unheld(path, os.O_RDONLY)
            except FileNotFoundError:
                return False
            except OSError:
                return _locked_in_proc_locks(key)
            if fd is None:
                return True
            try:
                return _write_locked(fd)
            finally:
                os.close(fd)

    def park(self, fd: int) -> None:
        """Keep a descriptor of the held file open until release (closing it now would
        drop the lock)."""
        self._parked.append(fd)

    def moved(self, path: Path) -> None:
        """The execution's folder was renamed (published): same file, new path."""
        self.path = path

    def release(self) -> None:
        with _HELD_LOCK:
            if self._key is not None and _HELD.get(self._key) is self:
                del _HELD[self._key]
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
            for fd in self._parked:
                os.close(fd)
            self._parked.clear()


_HELD: dict[tuple[int, int], OwnerLock] = {}
_HELD_LOCK = threading.Lock()

#: ``struct flock`` (Linux: short type, short whence, off_t start, off_t len, pid_t
#: pid; BSD/macOS: off_t start, off_t len, pid_t pid, short type, short whence).
_LINUX_FLOCK = sys.platform.startswith("linux")
_FLOCK = "hhqqi4x" if _LINUX_FLOCK else "qqihh"


def _file_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _fstat_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _open_unheld(path: Path, flags: int) -> int | None:
    """Open a lock file under ``_HELD_LOCK``; None (descriptor parked) if this process
    holds it: it was renamed into place since the caller's stat."""
    fd = os.open(path, flags | os.O_NOFOLLOW, 0o600)
    holder = _HELD.get(_fstat_key(fd))
    if holder is not None:
        holder.park(fd)
        return None
    return fd


def _write_locked(fd: int) -> bool:
    """Whether another process holds a lock on ``fd``'s file (``F_GETLK``, read-only)."""
    if _LINUX_FLOCK:
        ask = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, ask))[0]
    else:
        ask = struct.pack(_FLOCK, 0, 0, 0, fcntl.F_WRLCK, os.SEEK_SET)
        kind = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, ask))[3]
    return kind != fcntl.F_UNLCK


def _locked_in_proc_locks(key: tuple[int, int]) -> bool:
    """Whether ``/proc/locks`` lists a POSIX lock on the file; True if it cannot say."""
    dev, ino = key
    wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    try:
        with open("/proc/locks") as fh:
            return any(line.split()[5] == wanted for line in fh
                       if len(line.split()) > 5 and line.split()[1] == "POSIX")
    except OSError:
        return True


def _probe_lock(path: Path) -> bool:
    """True when an owner holds the lock at ``path`` (see :meth:`OwnerLock.probe`)."""
    return OwnerLock.probe(path)


class RowMap:
    """Where each row's latest record lives: part file and position (-1 = none).

    Made from ``spans`` (each part's first row and row count) when every part holds
    consecutive rows and no two parts hold the same row (a batch that ran without
    retries, most often): its arrays are then made only when asked, and a reader that
    needs only the counts (``to_frame`` of a whole batch) makes none (1M rows: 8 MB).
    """

    def __init__(self, parts: list[str], part_of: np.ndarray | None = None,
                 pos_of: np.ndarray | None = None, *,
                 spans: list[tuple[int, int]] | None = None, total: int = 0) -> None:
        self.parts = parts
        self._part_of, self._pos_of, self._spans = part_of, pos_of, spans
        self.total = total if part_of is None else len(part_of)

    @property
    def part_of(self) -> np.ndarray:
        return self._arrays()[0]

    @property
    def pos_of(self) -> np.ndarray:
        return self._arrays()[1]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(part_of, pos_of), made from the spans the first time they are asked for."""
        if self._part_of is None or self._pos_of is None:
            self._part_of, self._pos_of = _placed(self.total, [
                slice(start, start + count) for start, count in self._spans or []])
        return self._part_of, self._pos_of

    def recorded_count(self) -> int:
        """How many rows have a record."""
        if self._part_of is None and self._spans is not None:
            return sum(count for _, count in self._spans)
        return int(np.count_nonzero(self.part_of >= 0))

    def locate(self, index: int) -> tuple[str, int] | None:
        if not 0 <= index < self.total or self.part_of[index] < 0:
            return None
        return self.parts[int(self.part_of[index])], int(self.pos_of[index])


#: Bytes of result parts an :class:`ExecutionStore` keeps in memory: those it read,
#: and those it wrote (64 MiB: the parts of ~2M rows of one float output).
PART_CACHE_BYTES = 64 << 20


class ExecutionStore:
    """Executions under ``<root>/executions``."""

    def __init__(self, root: Path) -> None:
        self.root = root / "executions"
        #: Result parts this process read or wrote, least recently used first (see
        #: :meth:`read_part`), and their bytes.
        self._parts: OrderedDict[tuple[str, str], Part] = OrderedDict()
        self._cached_bytes = 0
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

    def staging(self, execution_id: str, pin: Any = None) -> Path:
        """A private folder to build an execution in before it is published.

        ``pin`` (a ``ServiceRecord``) pins the revision the batch will run from now
        on, before its header exists: ``delete_service`` keeps a pinned revision
        (:meth:`pinned_revisions`), and a revision deleted before the pin was
        written is reported here as deleted, not as a missing file in a worker.
        """
        path = make_private_dir(self.root / ".staging") / execution_id
        path.mkdir(mode=0o700)  # mkdir(parents=True) would make it 0o777 & ~umask
        (path / "inputs").mkdir(mode=0o700)
        if pin is not None:
            write_json(path / PIN, {"service": pin.name, "version": pin.version,
                                    "revision": pin.revision})
            if not (pin.path / "manifest.json").is_file():
                self.discard_staging(path)
                raise ServiceNotFoundError(f"service {pin.name!r} version {pin.version!r} "
                                           "was deleted while the batch was starting")
        return path

    def pinned_revisions(self, service: str, version: str) -> set[str]:
        """Revisions of a service version that executions (published or starting) use."""
        out = set()
        for eid in self.list_ids():
            try:
                header = self.read_header(eid)
            except (StoreError, LookupError):
                continue
            if header["service"] == service and header["version"] == version:
                out.add(header["revision"])
        staging = self.root / ".staging"
        for pin in staging.glob(f"*/{PIN}") if staging.is_dir() else []:
            with contextlib.suppress(OSError, StoreError):
                p = read_json(pin)
                if isinstance(p, dict) and (p.get("service"), p.get("version")) == (
                        service, version):
                    out.add(str(p.get("revision")))
        return out

    def publish(self, staging: Path, header: ExecutionHeader) -> OwnerLock:
        """Write the header, take the owner lock, and make the execution visible."""
        header["format_version"] = FORMAT_VERSION
        try:
            for sub in ("results", "artifacts"):
                (staging / sub).mkdir(mode=0o700, exist_ok=True)
            write_json(staging / "execution.json", header)
        except BaseException:
            self.discard_staging(staging)  # a live owner cleans up after itself
            raise
        lock = OwnerLock(staging / "owner.lock")
        if not lock.acquire():
            self.discard_staging(staging)
            raise StoreError(f"cannot lock new execution {staging.name}")
        final = self.root / staging.name
        try:
            os.rename(staging, final)
        except OSError as exc:
            lock.release()
            self.discard_staging(staging)
            raise StoreError(exc.errno, f"cannot publish execution: {exc}") from exc
        lock.moved(final / "owner.lock")
        return lock

    def discard_staging(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    # header -----------------------------------------------------------------

    def read_header(self, execution_id: str) -> ExecutionHeader:
        path = self._require(execution_id)
        for _ in range(3):
            try:
                return dict(check_header(read_json(path / "execution.json"),
                                         path / "execution.json"))
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
        """Become the owner (for resume/cancel of an orphan); None if someone holds it.

        The new owner first repairs what the last one left (:meth:`recover`).
        """
        lock = OwnerLock(self._require(execution_id) / "owner.lock")
        for _ in range(attempts):
            # A reader's probe holds the lock for microseconds: retry briefly.
            if lock.acquire():
                try:
                    self.recover(execution_id)
                except BaseException:
                    lock.release()
                    raise
                return lock
            time.sleep(0.02)
        return None

    def recover(self, execution_id: str) -> list[str]:
        """Repair an execution this process owns; returns the parts moved aside.

        A result part that fails its check is renamed ``*.corrupt`` (``verify`` still
        reports it) and its rows count as not recorded, so ``resume()`` runs them
        again, once; a header that said ``Complete`` then says ``Failed`` (resumable,
        naming the part); other states keep theirs, with the counters recounted.
        Half-written artifact folders (``.tmp-*``, ``.old-*``) of a killed commit are
        removed.
        """
        folder = self.path(execution_id)
        _remove_leftovers(folder / "artifacts")
        moved = []
        for name in self.part_names(execution_id):
            try:
                self.read_part(execution_id, name, cache=False)  # the file, not a copy
            except StoreCorruptedError:
                moved.append(name)
                os.replace(folder / "results" / name,
                           folder / "results" / f"{name}{CORRUPT_SUFFIX}")
                self._forget_part((execution_id, f"results/{name}"))
        if moved:
            # A damaged header is reported by whoever reads it next; the move stands.
            with contextlib.suppress(StoreCorruptedError):
                self._reopen_header(execution_id, moved)
        return moved

    def recorded_counts(self, execution_id: str, total: int) -> tuple[int, int]:
        """(recorded, failed) rows as the published result parts say (the latest
        record of each row counts), whatever the header's counters say."""
        row_map = self.row_map(execution_id, total)
        failed = 0
        for k, name in enumerate(row_map.parts):
            part = self.read_part(execution_id, name)
            index = part.column("index").buffers["values"]
            latest = row_map.part_of[index] == k
            failed += int((~part.column("error_type").buffers["mask"][latest]).sum())
        return int((row_map.part_of >= 0).sum()), failed

    def _reopen_header(self, execution_id: str, moved: list[str]) -> None:
        """Counters recounted without the moved parts; an ended run is resumable."""
        header = self.read_header(execution_id)
        completed, failed = self.recorded_counts(execution_id, int(header["total"]))
        header.update(completed=completed, failed=failed)
        if header["state"] == ExecutionState.COMPLETE:  # no longer true; resume() finishes it
            header.update(state=ExecutionState.FAILED, resumable=True,
                          error=f"StoreCorruptedError: damaged result part(s) "
                                f"{', '.join(moved)} moved aside; resume() runs their rows "
                                "again")
        self.write_header(execution_id, header)

    def next_part_seq(self, execution_id: str, kind: str = "results") -> int:
        """The number of the next part: one past every part, moved-aside ones too."""
        try:
            names = os.listdir(self.path(execution_id) / kind)
        except FileNotFoundError:
            return 0
        seqs = [int(m.group(1)) for m in map(_PART_RE.match, names) if m]
        return max(seqs, default=-1) + 1

    def created_of(self, execution_id: str) -> str:
        """When the execution's folder last changed (ISO): a damaged header's stand-in."""
        import datetime as dt

        try:
            mtime = os.stat(self.path(execution_id)).st_mtime
        except OSError:
            return ""
        return dt.datetime.fromtimestamp(mtime).isoformat(timespec="microseconds")

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
        part = Part.encoded(columns, rows)
        if not publish_exclusive(directory / name, part.pieces(), on_written=_after_write):
            raise StoreError(f"part {directory / name} already exists")
        hook("part.after_publish")
        if directory.name == "results":
            # What was just published, as it was written: a to_frame() right after the
            # batch reads none of it back (1M trivial rows: ~60 ms of reads and checks).
            self._remember((directory.parent.name, f"results/{name}"), part)
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
        if cache:
            with self._parts_lock:
                part = self._parts.get(key)
                if part is not None:
                    self._parts.move_to_end(key)
                    return part
        path = self.path(execution_id) / kind / name
        try:
            part = Part(path.read_bytes())
        except ValueError as exc:
            raise StoreCorruptedError(f"{path} is damaged: {exc}") from None
        except OSError as exc:
            raise StoreError(exc.errno, f"cannot read {path}: {exc.strerror}") from exc
        if kind == "results" and cache:
            # Published parts are immutable, so caching them by name is safe. Input
            # parts are read once per run: caching them would hold the whole spool.
            self._remember(key, part)
        return part

    def _remember(self, key: tuple[str, str], part: Part) -> None:
        """Cache a result part, dropping the least recently used beyond PART_CACHE_BYTES."""
        with self._parts_lock:
            self._uncache(key)
            self._parts[key] = part
            self._cached_bytes += part.nbytes
            while self._cached_bytes > PART_CACHE_BYTES and len(self._parts) > 1:
                self._uncache(next(iter(self._parts)))

    def _forget_part(self, key: tuple[str, str]) -> None:
        with self._parts_lock:
            self._uncache(key)

    def _uncache(self, key: tuple[str, str]) -> None:
        """Drop a cached part (the caller holds the lock)."""
        old = self._parts.pop(key, None)
        if old is not None:
            self._cached_bytes -= old.nbytes

    def keep_inputs(self, execution_id: str, parts: dict[str, bytes]) -> None:
        """Input parts this process just wrote, for its run to take (``iter_inputs(take=
        True)``) without reading and checking them back; what it leaves is dropped when
        it ends (``drop_inputs``), so a later run reads the files."""
        for name, data in parts.items():
            self._remember((execution_id, f"inputs/{name}"), Part(data, checked=False))

    def drop_inputs(self, execution_id: str) -> None:
        with self._parts_lock:
            for key in [k for k in self._parts if k[0] == execution_id
                        and k[1].startswith("inputs/")]:
                self._uncache(key)

    def iter_inputs(self, execution_id: str, take: bool = False) -> Iterator[Part]:
        """The input parts in order (``take``: a kept one leaves memory once read)."""
        for name in self.part_names(execution_id, "inputs"):
            yield self.read_part(execution_id, name, "inputs")
            if take:
                self._forget_part((execution_id, f"inputs/{name}"))

    def row_map(self, execution_id: str, total: int) -> RowMap:
        names = self.part_names(execution_id)
        parts = [self.read_part(execution_id, name) for name in names]
        spans: list[tuple[int, int] | None] = []
        for part in parts:
            span = part.stored_range("index", "values")
            spans.append((span[0], span[2]) if span is not None and span[1] == 1
                         and span[2] == part.rows and span[0] >= 0
                         and span[0] + span[2] <= total else None)
        if all(spans) and _disjoint(spans):  # type: ignore[arg-type]
            return RowMap(names, spans=spans, total=total)  # type: ignore[arg-type]
        # Consecutive rows (most parts) as a slice: no index to build and check.
        rows = [slice(span[0], span[0] + span[1]) if span is not None
                else checked_index(part, total, self.path(execution_id) / "results" / name)
                for name, part, span in zip(names, parts, spans, strict=True)]
        return RowMap(names, *_placed(total, rows))

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
        try:
            for name, data in files.items():
                _write_private(tmp / check_artifact_name(name), data)
            sums = {name: _crc(data) for name, data in files.items()}
            _write_private(tmp / ARTIFACT_SUMS, json.dumps(sums).encode())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half folder
            raise
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
        return sorted(n for n in os.listdir(folder) if n != ARTIFACT_SUMS
                      and not (folder / n).is_symlink() and (folder / n).is_file())

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
            data = fh.read()
        sums = self._artifact_sums(folder)
        if sums is not None and sums.get(name) != _crc(data):
            raise StoreCorruptedError(f"{folder / name} is damaged: its checksum in "
                                      f"{folder / ARTIFACT_SUMS} does not match")
        return data

    def _artifact_sums(self, folder: Path) -> dict[str, str] | None:
        """Name → CRC-32 of a row's artifacts (None: a folder of an older store)."""
        path = folder / ARTIFACT_SUMS
        try:
            with open(path, "rb") as fh:
                sums = json.loads(fh.read())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StoreCorruptedError(f"{path} is damaged: {exc}") from None
        if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
            raise StoreCorruptedError(f"{path} is damaged: not a name -> checksum object")
        return sums


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _remove_leftovers(folder: Path) -> None:
    """Half-written artifact folders of a commit that was killed or failed."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            if name.startswith((".tmp-", ".old-")):
                shutil.rmtree(folder / name, ignore_errors=True)


def _placed(total: int, rows: list[slice | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(part_of, pos_of) of parts holding these rows, in commit order (a later part's
    record of a row wins)."""
    part_of = np.full(total, -1, np.int32)
    pos_of = np.full(total, -1, np.int32)
    for k, where in enumerate(rows):
        part_of[where] = k
        pos_of[where] = np.arange(len(pos_of[where]), dtype=np.int32)
    return part_of, pos_of


def _disjoint(spans: list[tuple[int, int]]) -> bool:
    """No row in two of these (first row, count) spans."""
    ordered = sorted(spans)
    return all(a[0] + a[1] <= b[0] for a, b in zip(ordered, ordered[1:], strict=False))


def checked_index(part: Part, total: int, path: Path) -> np.ndarray:
    """A result part's row numbers, each a row of the execution."""
    try:
        index = part.column("index").buffers["values"]
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreCorruptedError(f"{path} is damaged: no row index ({exc})") from None
    if len(index) != part.rows or (len(index) and (index.min() < 0 or index.max() >= total)):
        raise StoreCorruptedError(f"{path} is damaged: its rows lie outside 0..{total - 1}")
    return index
