"""The local registry of named, versioned services.

Layout (one folder per service version, one immutable folder per revision)::

    <root>/services/<name>/<version>/<revision>/manifest.json, code.pkl, init.pkl,
                                                model-<k>.pkl, object-<k>.pkl, code.py
    <root>/services/<name>/<version>/current     the live revision's id

A revision (built by ``revision.py``) is written in full under
``services/.staging`` and published by one ``rename``; ``deploy`` claims
``current`` by an exclusive link (so two processes publishing the same name and
version give one service and one clear error) and ``redeploy`` swaps it with an
atomic replace. Listing reads manifests only and never unpickles; blobs carry a
SHA-256 that is checked before unpickling (:func:`read_blobs`, which hands them
still pickled to whoever loads the service).

Nothing read is trusted: ``current`` and every manifest carry a checksum
(``fsutil.read_json``) and a manifest's shape is checked (:func:`check_manifest`);
a damaged one raises ``StoreCorruptedError`` naming the file when that service is
asked for, and listing skips it with a ``LocalBatchWarning`` so the other services
stay listed (``localbatch verify`` reports it). Every file is 0600, every folder
0700; a killed publish leaves only ``services/.staging`` for ``gc``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from .._errors import (
    LocalBatchWarning,
    ServiceExistsError,
    ServiceLoadError,
    ServiceNotFoundError,
    StoreCorruptedError,
    StoreError,
)
from .._schema import EncodingType
from .fsutil import (
    checked_json_bytes,
    encode_component,
    make_private_dir,
    publish_exclusive,
    read_json,
    sha256,
    write_json,
)
from .revision import FORMAT_VERSION, ServiceSpec, build_revision, check_name, source_text

__all__ = ["Manifest", "Registry", "ServiceRecord", "check_manifest", "read_blobs"]


class Manifest(TypedDict, total=False):
    """``manifest.json`` of one revision (written by ``build_revision``, then
    completed by :meth:`Registry.publish`)."""

    format_version: int
    name: str
    version: str
    revision: str
    #: ``fn`` (code_fn), ``str`` (code_str) or ``realtime`` (a model's predict).
    kind: str
    #: The consume method's name (the alias, or the function's name); None: "consume".
    operation_id: str | None
    description: str
    #: ``[{"name": ..., "type": <EncodingType value>}]`` in call order.
    inputs: list[dict[str, str]]
    outputs: list[dict[str, str]]
    artifacts: list[str]
    #: ``Python`` or ``Realtime``.
    runtime: str
    vectorized: bool
    #: The SDK's ``code`` / ``initCode`` texts.
    code_text: str
    init_text: str
    #: ``{"code"|"init": co_filename}`` of the pickled functions (restored on loading).
    code_files: dict[str, str]
    code_str: str | None
    init_str: str | None
    #: Names of the ``model-<k>.pkl`` / ``object-<k>.pkl`` blobs.
    models: list[str]
    objects: list[str]
    snapshot_id: str
    published_by: str
    #: Python and library versions at publishing (checked for skew on loading).
    versions: dict[str, str]
    #: Blob file name → SHA-256 hex digest.
    blobs: dict[str, str]
    #: ISO times: first publication of this version, and of this revision.
    created: str
    published: str


@dataclass(frozen=True)
class ServiceRecord:
    """One published revision, as its manifest describes it (nothing unpickled)."""

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def revision(self) -> str:
        return str(self.manifest["revision"])

    @property
    def inputs(self) -> list[tuple[str, EncodingType]]:
        return [(d["name"], EncodingType(d["type"])) for d in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[tuple[str, EncodingType]]:
        return [(d["name"], EncodingType(d["type"])) for d in self.manifest["outputs"]]

    @property
    def artifacts(self) -> list[str]:
        return list(self.manifest["artifacts"])

    @property
    def operation_id(self) -> str:
        return self.manifest.get("operation_id") or "consume"

    def meta(self) -> dict[str, Any]:
        """The SDK's service metadata dict (list_services items)."""
        m = self.manifest
        return {
            "name": m["name"],
            "version": m["version"],
            "code": m.get("code_text") or "",
            "initCode": m.get("init_text") or "",
            "inputParameterDefinitions": [dict(d) for d in m["inputs"]],
            "outputParameterDefinitions": [dict(d) for d in m["outputs"]],
            "outputFileNames": list(m["artifacts"]),
            "operationId": m.get("operation_id"),
            "runtimeType": m["runtime"],
            "snapshotId": m["snapshot_id"],
            "creationTime": m["created"],
            "description": m.get("description") or "",
            "versionPublishedBy": m.get("published_by", "local"),
            "myPermissionOnService": "read/write",
        }


def _now_iso() -> str:
    # The SDK's creationTime: ISO without zone, 7 fractional digits.
    return _dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S.%f") + "0"


def _keep_old_io(spec: ServiceSpec, old: ServiceRecord) -> None:
    """Redeploy rule of the SDK: inputs, outputs and artifacts left unset stay as they were."""
    if spec.inputs is None:
        spec.inputs = {n: EncodingType.to_python(e) for n, e in old.inputs}
    if spec.outputs is None:
        spec.outputs = {n: EncodingType.to_python(e) for n, e in old.outputs}
    if spec.artifacts is None:
        spec.artifacts = old.artifacts


# -- the registry on disk ----------------------------------------------------------


class Registry:
    """Publish, find, list and delete services under ``<root>/services``."""

    def __init__(self, root: Path) -> None:
        self.root = root / "services"

    def _version_dir(self, name: str, version: str) -> Path:
        return self.root / encode_component(name) / encode_component(version)

    # publishing ---------------------------------------------------------------

    def publish(self, spec: ServiceSpec, *, replace: bool,
                reserved: Iterable[str] = ()) -> ServiceRecord:
        """Write a revision and make it live; ``reserved``: names the alias may not take."""
        created = _now_iso()
        if replace:
            old = self.get(spec.name, spec.version or self.latest(spec.name).version)
            _keep_old_io(spec, old)
            version, created = old.version, old.manifest["created"]
        else:
            # The SDK: "If the version is left blank, a unique guid is generated".
            blank = spec.version is None or (isinstance(spec.version, str)
                                             and not spec.version.strip())
            version = str(uuid.uuid4()) if blank else spec.version
        check_name(version, "version")
        manifest, blobs = build_revision(spec, reserved)
        vdir = self._version_dir(spec.name, version)
        current = vdir / "current"
        revision = f"{_dt.datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        manifest.update(version=version, revision=revision, created=created,
                        published=_now_iso())
        self._write_revision(vdir, revision, manifest, blobs, spec)
        pointer = {"format_version": FORMAT_VERSION, "revision": revision}
        if replace:
            write_json(current, pointer)
        elif not publish_exclusive(current, checked_json_bytes(pointer)):
            shutil.rmtree(vdir / revision, ignore_errors=True)
            raise ServiceExistsError(
                f"service {spec.name!r} version {version!r} already exists: use redeploy() "
                "(or delete_service) to replace it")
        return self.get(spec.name, version)

    def _write_revision(self, vdir: Path, revision: str, manifest: Manifest,
                        blobs: dict[str, bytes], spec: ServiceSpec) -> None:
        staging = make_private_dir(self.root / ".staging") / f"{revision}-{uuid.uuid4().hex}"
        try:
            staging.mkdir(mode=0o700)
            for fname, data in blobs.items():
                _write_private(staging / fname, data)
            src = source_text(spec.code_fn)
            if src or spec.code_str:
                _write_private(staging / "code.py", (src or spec.code_str or "").encode())
            write_json(staging / "manifest.json", manifest)
            make_private_dir(vdir)
            os.rename(staging, vdir / revision)
        except BaseException as exc:
            # A live publisher removes its own staging (a full disk, Ctrl-C); only a
            # killed one leaves it, for ``gc``.
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise StoreError(exc.errno, f"cannot publish service: {exc}") from exc
            raise

    # reading ----------------------------------------------------------------

    def current_revision(self, vdir: Path) -> str | None:
        """The revision id in a version folder's ``current``; None if it has none."""
        path = vdir / "current"
        try:
            pointer = read_json(path)
        except FileNotFoundError:
            return None
        revision = pointer.get("revision") if isinstance(pointer, dict) else None
        if not isinstance(revision, str):
            raise StoreCorruptedError(f"{path} is damaged: no revision id")
        try:
            return check_name(revision, "revision")
        except ValueError:
            raise StoreCorruptedError(f"{path} is damaged: bad revision id") from None

    def get(self, name: str, version: str | None = None) -> ServiceRecord:
        check_name(name)
        if version is None:
            return self.latest(name)
        check_name(version, "version")
        vdir = self._version_dir(name, version)
        revision = self.current_revision(vdir)
        if revision is None:
            raise ServiceNotFoundError(f"No service found for {name} version {version}")
        return self.revision(name, version, revision)

    def revision(self, name: str, version: str, revision: str) -> ServiceRecord:
        check_name(revision, "revision")
        path = self._version_dir(name, version) / revision
        try:
            return ServiceRecord(path, check_manifest(read_json(path / "manifest.json"),
                                                      path / "manifest.json"))
        except FileNotFoundError:
            raise ServiceNotFoundError(
                f"revision {revision} of service {name} version {version} is gone")

    def latest(self, name: str) -> ServiceRecord:
        records = self.list(name)
        if not records:
            raise ServiceNotFoundError(f"No service found for {name}")
        return max(records, key=lambda r: (r.manifest["created"], r.manifest["published"]))

    def list(self, name: str | None = None, version: str | None = None) -> list[ServiceRecord]:
        """Live revisions, by name then creation; reads manifests only (never unpickles)."""
        if name is not None and version is not None:
            try:
                return [self.get(name, version)]
            except ServiceNotFoundError:
                return []
        if name is not None:
            sdirs = [self.root / encode_component(check_name(name))]
        elif self.root.is_dir():
            sdirs = [p for p in self.root.iterdir() if not p.name.startswith(".")]
        else:
            sdirs = []
        out = []
        for sdir in sdirs:
            for vdir in sdir.iterdir() if sdir.is_dir() else []:
                try:
                    record = self._live(vdir)
                except StoreCorruptedError as exc:
                    # One damaged file hides its own version only; verify reports it.
                    warnings.warn(f"skipped a damaged service version: {exc}",
                                  LocalBatchWarning, stacklevel=3)
                    continue
                # Names and versions come from the manifest: long ones are hashed on disk.
                if record is not None and (name is None or record.name == name):
                    out.append(record)
        out.sort(key=lambda r: (r.name, r.manifest["created"], r.manifest["published"]))
        return out

    def _live(self, vdir: Path) -> ServiceRecord | None:
        rev = self.current_revision(vdir) if vdir.is_dir() else None
        if rev is None:
            return None
        path = vdir / rev / "manifest.json"
        try:
            return ServiceRecord(vdir / rev, check_manifest(read_json(path), path))
        except FileNotFoundError:
            return None  # deleted between the two reads

    # deleting ---------------------------------------------------------------

    def delete(self, name: str, version: str,
               keep: set[str] | Callable[[], set[str]]) -> bool:
        """Unpublish a version; revisions in ``keep`` (used by executions) stay on disk.

        ``keep`` may be a function, asked again after the doomed revisions are hidden
        (renamed into ``.staging``): a batch that pinned one meanwhile gets it back,
        and a batch that pins later finds it gone (:meth:`ExecutionStore.staging`
        checks after pinning), so no batch starts on a revision being deleted. A
        version whose ``current`` or manifest is damaged can be deleted too.
        """
        check_name(name)
        check_name(version, "version")
        vdir = self._version_dir(name, version)
        try:
            os.unlink(vdir / "current")
        except FileNotFoundError:
            raise ServiceNotFoundError(f"No service found for {name} version {version}")
        pinned = keep if callable(keep) else (lambda: keep)
        kept = pinned()
        trash = make_private_dir(self.root / ".staging")
        hidden = []
        for rev in vdir.iterdir():
            if rev.is_dir() and rev.name not in kept:
                target = trash / f"deleted-{rev.name}-{uuid.uuid4().hex[:8]}"
                os.rename(rev, target)
                os.utime(target)  # fresh: gc leaves it alone while this call decides
                hidden.append((rev, target))
        kept = pinned() if hidden and callable(keep) else kept
        for rev, target in hidden:
            if rev.name in kept:
                os.rename(target, rev)
            else:
                shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):
            vdir.rmdir()
        return True


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


#: Manifest fields every reader uses, with their types.
_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "version": str, "revision": str, "kind": str, "inputs": list,
    "outputs": list, "artifacts": list, "runtime": str, "created": str, "published": str,
    "blobs": dict, "snapshot_id": str,
}


def check_manifest(obj: Any, where: Path) -> Manifest:
    """A parsed ``manifest.json`` with the shape readers rely on; StoreCorruptedError
    naming ``where`` otherwise."""
    if not isinstance(obj, dict):
        raise StoreCorruptedError(f"{where} is damaged: not an object")
    for key, types in _MANIFEST_FIELDS.items():
        if not isinstance(obj.get(key), types):
            raise StoreCorruptedError(f"{where} is damaged: {key} = {obj.get(key)!r}")
    try:
        for d in (*obj["inputs"], *obj["outputs"]):
            EncodingType(d["type"])
            if not isinstance(d["name"], str):
                raise TypeError("a name is not a str")
    except (TypeError, KeyError, ValueError) as exc:
        raise StoreCorruptedError(f"{where} is damaged: bad inputs/outputs ({exc})") from None
    return obj  # type: ignore[return-value]


def read_blobs(path: Path, manifest: Manifest) -> dict[str, bytes]:
    """Every blob of the revision at ``path``, hash-verified (still pickled)."""
    out = {}
    for fname, digest in manifest["blobs"].items():
        try:
            data = (path / fname).read_bytes()
        except OSError as exc:
            raise ServiceLoadError(f"service blob {fname} cannot be read: {exc}") from exc
        if sha256(data) != digest:
            raise ServiceLoadError(
                f"{path / fname} is damaged: service blob {fname} of {manifest['name']} "
                f"{manifest['version']} does not match its manifest hash: refusing to "
                "unpickle it")
        out[fname] = data
    return out
