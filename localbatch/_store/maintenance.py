"""Store maintenance: ``verify`` reads every file and says what is damaged; ``gc``
removes what nothing will ever use again.

``verify`` checks what readers check, all at once (and notes files others may
read, from stores written before 0600/0700 was the rule): each execution's
``execution.json`` (checksum and shape), input and result parts (CRC-32 and row
range), the header's counters against the parts of an ended execution, each
artifact against its folder's checksums; each service version's ``current`` and
manifests, and every blob against its SHA-256. A :class:`Finding` is *damaged*
(the file cannot be trusted: exit status 1) or a *note* (a leftover, a part of
an older store that carries no checksum, a part moved aside by ``resume()``).

``gc`` removes, and with ``dry_run`` only lists:

- staging folders of a killed ``start()``/``redeploy()`` (``.staging/*``) and
  temporary files (``.tmp-*``, ``.old-*``) untouched for ``grace`` seconds (a live
  writer touches its own within that time: the default 10 minutes is far above
  any single write), never inside an execution whose owner lock is held;
- ``/dev/shm/localbatch-boards-*`` folders of dead owners: folders of this user
  holding board files that no live process maps (``/proc/<pid>/maps``) and that
  nobody touched for a minute; an empty folder is kept (its owner may be alive
  and about to start a worker), and on a system without ``/proc`` none is removed;
- revisions that no version's ``current`` points to and no execution pins (only
  when every ``execution.json`` is readable: a damaged one might pin any revision),
  older than ``grace`` (a revision being published is unreferenced for a moment).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ExecutionNotFoundError, StoreError
from .executions import CORRUPT_SUFFIX, PIN, ExecutionStore, checked_index
from .fsutil import read_json, sha256
from .registry import Registry, check_manifest
from .states import TERMINAL

__all__ = ["BOARDS_PREFIX", "Finding", "Removal", "gc_store", "verify_store"]

#: Prefix of the workers' board folders (``_workers/process.py`` names them).
BOARDS_PREFIX = "localbatch-boards-"
#: Seconds a leftover must be untouched before ``gc`` removes it.
GRACE = 600.0
BOARDS_GRACE = 60.0


@dataclass(frozen=True)
class Finding:
    """One thing ``verify`` found: a damaged file, or a note about one."""

    path: str
    problem: str
    damaged: bool = True

    def __str__(self) -> str:
        return f"{'damaged' if self.damaged else 'note'}: {self.path}: {self.problem}"


@dataclass(frozen=True)
class Removal:
    """One thing ``gc`` removed (or would remove)."""

    path: str
    reason: str
    size: int

    def __str__(self) -> str:
        return f"{self.path}  ({self.reason}, {self.size} bytes)"


# -- verify -------------------------------------------------------------------------------


def verify_store(root: Path, execution_id: str | None = None) -> list[Finding]:
    """Everything damaged (and worth a note) in the store, or in one execution."""
    store = ExecutionStore(root)
    if execution_id is not None:
        if not store.path(execution_id).is_dir():
            raise ExecutionNotFoundError(f"no execution with id {execution_id!r} in "
                                         f"{store.root}")
        return list(_verify_execution(store, execution_id))
    found = [f for eid in _execution_ids(store) for f in _verify_execution(store, eid)]
    found += _verify_registry(Registry(root))
    found += [Finding(str(p), "leftover of a killed writer (gc removes it)", False)
              for p in _staging_entries(root)]
    found += _not_private(root)
    return found


def _not_private(root: Path) -> list[Finding]:
    """One note naming the first of the files (folders) others may read (older stores)."""
    loose: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name, private in [*((d, 0o700) for d in dirnames), *((f, 0o600) for f in filenames)]:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & ~private:
                    loose.append(f"{path} (mode {stat.S_IMODE(mode):04o})")
    if not loose:
        return []
    return [Finding(loose[0], f"{len(loose)} store file(s)/folder(s) others may read, this "
                              f"one first: chmod -R go-rwx {root}", False)]


def _execution_ids(store: ExecutionStore) -> list[str]:
    if not store.root.is_dir():
        return []
    return sorted(p.name for p in store.root.iterdir()
                  if not p.name.startswith(".") and p.is_dir())


def _verify_execution(store: ExecutionStore, eid: str) -> Iterator[Finding]:
    folder = store.path(eid)
    try:
        header: dict[str, Any] | None = store.read_header(eid)
    except (StoreError, LookupError) as exc:
        header = None
        yield Finding(str(folder / "execution.json"), _reason(exc))
    for name in store.part_names(eid, "inputs"):
        yield from _verify_part(store, eid, name, "inputs", None)
    total = None if header is None else int(header["total"])
    for name in store.part_names(eid):
        yield from _verify_part(store, eid, name, "results", total)
    for name in sorted(os.listdir(folder / "results")) if (folder / "results").is_dir() else []:
        if name.endswith(CORRUPT_SUFFIX):
            yield Finding(str(folder / "results" / name),
                          "a damaged part moved aside by resume(); its rows ran again", False)
    if header is not None and header["state"] in TERMINAL and not header.get("damaged"):
        yield from _verify_counters(store, eid, header)
    yield from _verify_artifacts(store, eid)


def _verify_part(store: ExecutionStore, eid: str, name: str, kind: str, total: int | None
                 ) -> Iterator[Finding]:
    path = store.path(eid) / kind / name
    try:
        part = store.read_part(eid, name, kind, cache=False)  # the file, not a copy
        if total is not None:
            checked_index(part, total, path)
    except StoreError as exc:
        yield Finding(str(path), _reason(exc))
        return
    if part.version < 2:
        yield Finding(str(path), "format 1 part: no checksum to verify", False)


def _verify_counters(store: ExecutionStore, eid: str, header: dict[str, Any]
                     ) -> Iterator[Finding]:
    try:
        recorded = int((store.row_map(eid, int(header["total"])).part_of >= 0).sum())
    except StoreError:
        return  # the damaged part is reported already
    if recorded != header["completed"]:
        yield Finding(str(store.path(eid) / "execution.json"),
                      f"says {header['completed']} rows recorded, the parts hold {recorded}")


def _verify_artifacts(store: ExecutionStore, eid: str) -> Iterator[Finding]:
    base = store.path(eid) / "artifacts"
    for entry in sorted(os.listdir(base)) if base.is_dir() else []:
        if entry.startswith("."):
            yield Finding(str(base / entry), "half-written artifacts (resume or gc removes "
                                             "them)", False)
            continue
        if not entry.isdigit():
            continue
        index = int(entry)
        try:
            for name in store.list_artifacts(eid, index):
                store.read_artifact(eid, index, name)
        except StoreError as exc:
            yield Finding(str(base / entry), _reason(exc))


def _verify_registry(registry: Registry) -> list[Finding]:
    found: list[Finding] = []
    for vdir in _version_dirs(registry):
        try:
            registry.current_revision(vdir)
        except StoreError as exc:
            found.append(Finding(str(vdir / "current"), _reason(exc)))
        for rev in sorted(p for p in vdir.iterdir() if p.is_dir()):
            found += _verify_revision(rev)
    return found


def _verify_revision(rev: Path) -> list[Finding]:
    path = rev / "manifest.json"
    try:
        manifest = check_manifest(read_json(path), path)
    except FileNotFoundError:
        return [Finding(str(path), "missing")]
    except StoreError as exc:
        return [Finding(str(path), _reason(exc))]
    found = []
    for fname, digest in manifest["blobs"].items():
        try:
            ok = sha256((rev / fname).read_bytes()) == digest
        except OSError as exc:
            found.append(Finding(str(rev / fname), f"cannot be read: {exc.strerror}"))
            continue
        if not ok:
            found.append(Finding(str(rev / fname), "does not match its manifest's SHA-256"))
    return found


def _version_dirs(registry: Registry) -> list[Path]:
    if not registry.root.is_dir():
        return []
    return [vdir for sdir in sorted(registry.root.iterdir())
            if not sdir.name.startswith(".") and sdir.is_dir()
            for vdir in sorted(sdir.iterdir()) if vdir.is_dir()]


def _reason(exc: BaseException) -> str:
    """The message without the path it starts with (the finding names the file)."""
    text = str(exc)
    marker = " is damaged: "
    return text.split(marker, 1)[1] if marker in text else text


# -- gc -----------------------------------------------------------------------------------


def gc_store(root: Path, dry_run: bool = False, grace: float = GRACE, boards: bool = True
             ) -> list[Removal]:
    """Remove (``dry_run``: list) what nothing will use again; see the module docstring.

    ``boards=False`` leaves ``/dev/shm`` alone (it is shared by every store of the user).
    """
    now = time.time()
    store = ExecutionStore(root)
    found: list[tuple[Path, str]] = []
    for path in _staging_entries(root):
        # A staging folder is written without pause until it is published (or removed
        # by its writer on failure): one untouched for ``grace`` lost its writer. A
        # revision delete_service is deciding on is touched when hidden, so it waits too.
        if _untouched(path, now, grace):
            found.append((path, "staging leftover of a killed writer"))
    for eid in _execution_ids(store):
        if store.owner_alive(eid):
            continue
        found += [(p, "temporary file of a killed commit") for p in _temp_entries(
            store.path(eid), now, grace)]
    for vdir in _version_dirs(Registry(root)):
        found += [(p, "temporary file of a killed publish") for p in _temp_entries(
            vdir, now, grace)]
    found += [(p, "revision no version points to and no execution pins")
              for p in _unused_revisions(root, store, now, grace)]
    if boards:
        found += [(p, "board folder of a dead owner") for p in _dead_board_folders(now)]
    out = []
    for path, reason in found:
        out.append(Removal(str(path), reason, _size(path)))
        if not dry_run:
            _remove(path)
    return out


def _staging_entries(root: Path) -> list[Path]:
    out = []
    for area in ("services", "executions"):
        staging = root / area / ".staging"
        if staging.is_dir():
            out += sorted(staging.iterdir())
    return out


def _temp_entries(folder: Path, now: float, grace: float) -> list[Path]:
    """``.tmp-*``/``.old-*`` entries in a folder and its subfolders, untouched for grace."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if name.startswith((".tmp-", ".old-")) and _untouched(path, now, grace):
                out.append(path)
        dirnames[:] = [d for d in dirnames if not d.startswith((".tmp-", ".old-"))]
    return out


def _unused_revisions(root: Path, store: ExecutionStore, now: float, grace: float
                      ) -> list[Path]:
    registry = Registry(root)
    pinned: set[tuple[str, str, str]] = set()
    for eid in _execution_ids(store):
        try:
            h = store.read_header(eid)
        except (StoreError, LookupError):
            return []  # a damaged header may pin any revision: keep them all
        pinned.add((h["service"], h["version"], h["revision"]))
    for pin in (store.root / ".staging").glob(f"*/{PIN}"):  # batches still starting
        try:
            p = read_json(pin)
            pinned.add((p["service"], p["version"], p["revision"]))
        except (OSError, StoreError, LookupError, TypeError):
            return []  # unreadable: it may pin any revision
    out = []
    for vdir in _version_dirs(registry):
        try:
            current = registry.current_revision(vdir)
        except StoreError:
            continue  # damaged pointer: keep the version whole
        for rev in sorted(p for p in vdir.iterdir() if p.is_dir()):
            if rev.name == current or rev.name.startswith(".") \
                    or not _untouched(rev, now, grace):
                continue
            try:
                manifest = check_manifest(read_json(rev / "manifest.json"),
                                          rev / "manifest.json")
            except (OSError, StoreError):
                continue  # damaged: verify reports it, a person decides
            if (manifest["name"], manifest["version"], rev.name) not in pinned:
                out.append(rev)
    return out


def _dead_board_folders(now: float) -> list[Path]:
    shm = Path("/dev/shm")
    proc = Path("/proc/self/maps")
    if not shm.is_dir() or not proc.exists():
        return []
    candidates = []
    for path in shm.glob(BOARDS_PREFIX + "*"):
        try:
            st = path.lstat()
            files = list(path.iterdir()) if path.is_dir() and not path.is_symlink() else []
        except OSError:
            continue
        if st.st_uid == os.geteuid() and files and _untouched(path, now, BOARDS_GRACE):
            candidates.append(path)
    if not candidates:
        return []
    mapped = _mapped_paths()
    return [p for p in candidates if not any(m.startswith(f"{p}/") for m in mapped)]


def _mapped_paths() -> set[str]:
    """Every file some live process maps (the boards' owners and workers map theirs)."""
    out: set[str] = set()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/maps") as fh:
                    for line in fh:
                        if BOARDS_PREFIX in line:
                            out.add(line.split(None, 5)[-1].strip().removesuffix(" (deleted)"))
            except OSError:
                continue  # exited meanwhile, or not ours to read
    return out


def _untouched(path: Path, now: float, grace: float) -> bool:
    """No file or folder under ``path`` changed in the last ``grace`` seconds."""
    try:
        newest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            for dirpath, _, filenames in os.walk(path):
                newest = max(newest, os.lstat(dirpath).st_mtime,
                             *(os.lstat(os.path.join(dirpath, f)).st_mtime for f in filenames))
    except OSError:
        return False
    return now - newest >= grace


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(os.lstat(os.path.join(d, f)).st_size
                       for d, _, files in os.walk(path) for f in files)
        return path.lstat().st_size
    except OSError:
        return 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

