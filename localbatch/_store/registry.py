"""The local registry of named, versioned services.

Layout (one folder per service version, one immutable folder per revision)::

    <root>/services/<name>/<version>/<revision>/manifest.json, code.pkl, init.pkl,
                                                model-<k>.pkl, object-<k>.pkl, code.py
    <root>/services/<name>/<version>/current     the live revision's id

A revision is written in full under ``services/.staging`` and published by one
``rename``; ``deploy`` claims ``current`` by an exclusive link (so two processes
publishing the same name and version give one service and one clear error) and
``redeploy`` swaps it with an atomic replace. Listing reads manifests only and
never unpickles; blobs carry a SHA-256 that is checked before unpickling.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import inspect
import json
import keyword
import os
import shutil
import sys
import sysconfig
import types
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import (
    InvalidServiceError,
    ServiceExistsError,
    ServiceLoadError,
    ServiceNotFoundError,
    StoreError,
)
from .._schema import EncodingType, check_input_name, encoding_of
from .._version import __version__ as _lb_version
from .fsutil import (
    encode_component,
    make_private_dir,
    publish_exclusive,
    read_json,
    sha256,
    write_json,
)

__all__ = ["Registry", "ServiceRecord", "ServiceSpec", "check_name"]

FORMAT_VERSION = 1


def check_name(name: Any, what: str = "service name") -> str:
    """Names and versions: 1-128 printable characters, no separators, not . or .."""
    if not isinstance(name, str):
        raise InvalidServiceError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidServiceError(f"{what} is empty")
    if len(name) > 128:
        raise InvalidServiceError(f"{what} is {len(name)} characters long (at most 128)")
    if name in (".", ".."):
        raise InvalidServiceError(f"{what} {name!r} is not allowed")
    bad = [c for c in name if c in "/\\" or not c.isprintable()]
    if bad:
        raise InvalidServiceError(
            f"{what} {name!r} contains {bad[0]!r}: '/', '\\', NUL and control characters "
            "are not allowed")
    return name


@dataclass
class ServiceSpec:
    """What a user declared with the fluent builder or ``deploy_service``."""

    name: str
    version: str | None = None
    alias: str | None = None
    description: str | None = None
    code_fn: Callable[..., Any] | None = None
    init_fn: Callable[..., Any] | None = None
    code_str: str | None = None
    init_str: str | None = None
    models: dict[str, Any] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    artifacts: list[str] | None = None
    serialized_model: Any = None
    vectorized: bool = False
    runtime: str = "Python"


@dataclass(frozen=True)
class ServiceRecord:
    """One published revision, as its manifest describes it (nothing unpickled)."""

    path: Path
    manifest: dict[str, Any]

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


def _versions() -> dict[str, str]:
    import cloudpickle
    import numpy
    import pandas

    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "cloudpickle": cloudpickle.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "localbatch": _lb_version,
    }


def _library_versions(values: Iterable[Any]) -> dict[str, str]:
    """Versions of the libraries whose objects are pickled (statsmodels, sklearn...)."""
    out = {}
    for value in values:
        if value is None:
            continue
        top = (type(value).__module__ or "").split(".")[0]
        version = getattr(sys.modules.get(top), "__version__", None)
        if top and top not in ("builtins", "__main__") and isinstance(version, str):
            out[top] = version
    return out


# -- turning a spec into a manifest and blobs ------------------------------------


def _declared(types: dict[str, Any] | None) -> list[dict[str, str]]:
    out = []
    for name, type_ in (types or {}).items():
        check_input_name(name)
        out.append({"name": name, "type": encoding_of(type_, name).value})
    return out


def _fn_inputs(fn: Callable[..., Any], declared: list[dict[str, str]]) -> list[dict[str, str]]:
    """Order inputs by the function's parameters; every parameter must be declared."""
    by_name = {d["name"]: d for d in declared}
    ordered = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name in by_name:
            ordered.append(by_name.pop(param.name))
        elif param.default is param.empty:
            raise InvalidServiceError(
                f"parameter {param.name!r} of {fn.__name__}() is not declared in inputs(): "
                f"declare it, e.g. .inputs({param.name}=float)")
    if by_name:
        raise InvalidServiceError(
            f"input(s) {', '.join(map(repr, by_name))} are not parameters of {fn.__name__}()")
    return ordered


def _source(fn: Callable[..., Any] | None) -> str | None:
    if fn is None:
        return None
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return None


def _module_of(obj: Any) -> Any:
    if isinstance(obj, types.ModuleType):
        return obj
    name = getattr(obj, "__module__", None) or type(obj).__module__
    return sys.modules.get(name) if isinstance(name, str) else None


def _referenced(obj: Any) -> list[Any]:
    """Globals a function's code names (helpers and modules it calls), one level deep."""
    code = getattr(obj, "__code__", None)
    if not isinstance(code, types.CodeType):
        return []
    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack += [k for k in c.co_consts if isinstance(k, types.CodeType)]
    ns = getattr(obj, "__globals__", {})
    return [ns[n] for n in sorted(names) if n in ns]


def _user_modules(objs: Iterable[Any]) -> list[Any]:
    """Modules of user code outside site-packages and the standard library.

    They are pickled by value, so a service survives its module being moved or
    deleted; helpers the code calls from other local modules come along too.
    """
    skip = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    found: list[Any] = []
    roots = [o for o in objs if o is not None]
    for obj in roots + [r for o in roots for r in _referenced(o)]:
        mod = _module_of(obj)
        path = getattr(mod, "__file__", None)
        if mod is None or path is None or mod.__name__ in ("__main__", "builtins"):
            continue
        if mod.__name__.split(".")[0] == "localbatch" or mod in found:
            continue
        if not any(os.path.abspath(path).startswith(p) for p in skip):
            found.append(mod)
    return found


def _pickle(obj: Any, label: str, user_objs: Iterable[Any]) -> bytes:
    import cloudpickle

    mods = _user_modules(user_objs)
    for mod in mods:
        with contextlib.suppress(ValueError):
            cloudpickle.register_pickle_by_value(mod)
    try:
        return bytes(cloudpickle.dumps(obj, protocol=5))
    except Exception as exc:
        raise InvalidServiceError(f"Error serializing {label}: {type(exc).__name__}: {exc}")
    finally:
        for mod in mods:
            with contextlib.suppress(ValueError):
                cloudpickle.unregister_pickle_by_value(mod)


def _code_text(spec: ServiceSpec, inputs: list[dict[str, str]], outputs: list[dict[str, str]]
               ) -> tuple[str, str]:
    """The SDK's `code` / `initCode` texts (source plus the generated call line)."""
    if spec.code_str is not None:
        return spec.code_str, spec.init_str or ""
    if spec.code_fn is None:
        return "", ""
    args = ", ".join(d["name"] for d in inputs)
    call = f"{spec.code_fn.__name__}({args})"
    line = f"{outputs[0]['name']} = {call}" if outputs else call
    code = (_source(spec.code_fn) or "") + "\n" + line
    init = (_source(spec.init_fn) + "\ninit()") if spec.init_fn and _source(spec.init_fn) else ""
    return code, init


def _realtime_model(model: Any) -> Any:
    if model is None:
        raise InvalidServiceError("The serialized_model parameter can't be None: pass a "
                                  "fitted model with .predict(DataFrame)")
    if isinstance(model, (bytes, bytearray)):
        import cloudpickle

        try:
            model = cloudpickle.loads(bytes(model))
        except Exception as exc:
            raise InvalidServiceError(
                f"serialized_model bytes are not a pickled model ({type(exc).__name__}): pass "
                "the fitted model object itself")
    if not callable(getattr(model, "predict", None)):
        raise InvalidServiceError(
            f"serialized_model of type {type(model).__name__} has no .predict(DataFrame)")
    return model


def build_revision(spec: ServiceSpec, reserved: Iterable[str] = ()
                   ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Validate a spec and produce its manifest and blobs (nothing written yet).

    ``reserved`` are names the consume method may not take (the facade's own
    methods: a function called ``batch`` would otherwise hide ``Service.batch``).
    """
    check_name(spec.name)
    for key in list(spec.models) + list(spec.objects):
        check_input_name(key)
    blobs: dict[str, bytes] = {}
    if spec.runtime == "Realtime":
        model = _realtime_model(spec.serialized_model)
        inputs = [{"name": "inputData", "type": "data.frame"}]
        outputs = [{"name": "outputData", "type": "data.frame"}]
        kind, op_id = "realtime", "consume"
        blobs["model-model.pkl"] = _pickle(model, "serialized_model", [model])
    else:
        inputs, outputs = _declared(spec.inputs), _declared(spec.outputs)
        kind, op_id = _code_kind(spec, inputs, blobs)
        if spec.code_fn is not None and spec.code_str is None:
            inputs = _fn_inputs(spec.code_fn, inputs)
    if spec.alias is not None:
        op_id = spec.alias
    _check_operation(op_id, set(reserved))
    artifacts = _check_artifacts(spec.artifacts or [])
    if spec.vectorized and artifacts:
        raise InvalidServiceError("a vectorized service cannot declare artifacts: artifacts "
                                  "are per-row files, vectorized calls are per chunk")
    for group, values in (("model", spec.models), ("object", spec.objects)):
        for key, value in values.items():
            blobs[f"{group}-{key}.pkl"] = _pickle(value, f"{group} {key!r}", [value])
    code_text, init_text = _code_text(spec, inputs, outputs)
    code_files = {key: fn.__code__.co_filename for key, fn in
                  (("code", spec.code_fn), ("init", spec.init_fn))
                  if fn is not None and hasattr(fn, "__code__")}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "kind": kind,
        "operation_id": op_id,
        "description": spec.description or "",
        "inputs": inputs,
        "outputs": outputs,
        "artifacts": artifacts,
        "runtime": spec.runtime,
        "vectorized": bool(spec.vectorized),
        "code_text": code_text,
        "code_files": code_files,
        "init_text": init_text,
        "code_str": spec.code_str,
        "init_str": spec.init_str,
        "models": sorted(spec.models),
        "objects": sorted(spec.objects),
        "snapshot_id": str(uuid.uuid4()),
        "published_by": os.environ.get("USER", "local"),
        "versions": {**_versions(), **_library_versions(
            [spec.serialized_model, *spec.models.values(), *spec.objects.values()])},
        "blobs": {k: sha256(v) for k, v in blobs.items()},
    }
    return manifest, blobs


def _code_kind(spec: ServiceSpec, inputs: list[dict[str, str]], blobs: dict[str, bytes]
               ) -> tuple[str, str | None]:
    if spec.code_str is not None:
        if not isinstance(spec.code_str, str) or not spec.code_str.strip():
            raise InvalidServiceError("code_str must be a non-empty str of Python source")
        for text, label in ((spec.code_str, "code_str"), (spec.init_str, "init_str")):
            if text:
                try:
                    compile(text, f"<{label}>", "exec")
                except SyntaxError as exc:
                    raise InvalidServiceError(f"{label} does not compile: {exc}")
        return "str", None
    if spec.code_fn is None or not callable(spec.code_fn):
        raise InvalidServiceError("a service needs code: call .code_fn(fn, init) or "
                                  ".code_str(source, init)")
    if spec.init_fn is not None and not callable(spec.init_fn):
        raise InvalidServiceError("init must be callable (or None)")
    fns = [spec.code_fn, spec.init_fn]
    blobs["code.pkl"] = _pickle(spec.code_fn, "code_fn", fns)
    if spec.init_fn is not None:
        blobs["init.pkl"] = _pickle(spec.init_fn, "init_fn", fns)
    name = getattr(spec.code_fn, "__name__", None)
    return "fn", name if name and name.isidentifier() and name != "<lambda>" else None


def _check_operation(op_id: str | None, reserved: set[str]) -> None:
    if op_id is None:
        return
    if not isinstance(op_id, str) or not op_id.isidentifier() or keyword.iskeyword(op_id):
        raise InvalidServiceError(
            f"alias {op_id!r} must be a Python identifier and not a keyword: it names the "
            "consume method")
    if op_id in reserved:
        raise InvalidServiceError(
            f"the consume method name {op_id!r} would hide Service.{op_id}: give the service "
            f"another alias, e.g. .alias({op_id + '_score'!r})")


def _check_artifacts(names: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for name in names:
        if (not isinstance(name, str) or not name or name in (".", "..")
                or "/" in name or "\\" in name or "\0" in name):
            raise InvalidServiceError(
                f"artifact name {name!r} must be a plain file name (no folders)")
        if name not in out:
            out.append(name)
    return out


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
        if replace:
            write_json(current, {"revision": revision})
        elif not publish_exclusive(current, json.dumps({"revision": revision}).encode()):
            shutil.rmtree(vdir / revision, ignore_errors=True)
            raise ServiceExistsError(
                f"service {spec.name!r} version {version!r} already exists: use redeploy() "
                "(or delete_service) to replace it")
        return self.get(spec.name, version)

    def _write_revision(self, vdir: Path, revision: str, manifest: dict[str, Any],
                        blobs: dict[str, bytes], spec: ServiceSpec) -> None:
        staging = make_private_dir(self.root / ".staging") / f"{revision}-{uuid.uuid4().hex}"
        try:
            staging.mkdir(mode=0o700)
            for fname, data in blobs.items():
                (staging / fname).write_bytes(data)
            src = _source(spec.code_fn)
            if src or spec.code_str:
                (staging / "code.py").write_text(src or spec.code_str or "")
            write_json(staging / "manifest.json", manifest)
            make_private_dir(vdir)
            os.rename(staging, vdir / revision)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(exc.errno, f"cannot publish service: {exc}") from exc

    # reading ----------------------------------------------------------------

    def _current(self, vdir: Path) -> str | None:
        try:
            return str(read_json(vdir / "current")["revision"])
        except FileNotFoundError:
            return None

    def get(self, name: str, version: str | None = None) -> ServiceRecord:
        check_name(name)
        if version is None:
            return self.latest(name)
        check_name(version, "version")
        vdir = self._version_dir(name, version)
        revision = self._current(vdir)
        if revision is None:
            raise ServiceNotFoundError(f"No service found for {name} version {version}")
        return self.revision(name, version, revision)

    def revision(self, name: str, version: str, revision: str) -> ServiceRecord:
        check_name(revision, "revision")
        path = self._version_dir(name, version) / revision
        try:
            return ServiceRecord(path, read_json(path / "manifest.json"))
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
                record = self._live(vdir)
                # Names and versions come from the manifest: long ones are hashed on disk.
                if record is not None and (name is None or record.name == name):
                    out.append(record)
        out.sort(key=lambda r: (r.name, r.manifest["created"], r.manifest["published"]))
        return out

    def _live(self, vdir: Path) -> ServiceRecord | None:
        rev = self._current(vdir) if vdir.is_dir() else None
        if rev is None:
            return None
        try:
            return ServiceRecord(vdir / rev, read_json(vdir / rev / "manifest.json"))
        except FileNotFoundError:
            return None  # deleted between the two reads

    # deleting ---------------------------------------------------------------

    def delete(self, name: str, version: str, keep: set[str]) -> bool:
        """Unpublish a version; revisions in ``keep`` (used by executions) stay on disk."""
        record = self.get(name, version)
        vdir = record.path.parent
        os.unlink(vdir / "current")
        for rev in vdir.iterdir():
            if rev.is_dir() and rev.name not in keep:
                shutil.rmtree(rev, ignore_errors=True)
        with contextlib.suppress(OSError):
            vdir.rmdir()
        return True

    # loading blobs ---------------------------------------------------------------

    @staticmethod
    def read_blobs(record: ServiceRecord) -> dict[str, bytes]:
        """Every blob of a revision, hash-verified (still pickled)."""
        return read_blobs(record.path, record.manifest)


def read_blobs(path: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    out = {}
    for fname, digest in manifest["blobs"].items():
        try:
            data = (path / fname).read_bytes()
        except OSError as exc:
            raise ServiceLoadError(f"service blob {fname} cannot be read: {exc}") from exc
        if sha256(data) != digest:
            raise ServiceLoadError(
                f"service blob {fname} of {manifest['name']} {manifest['version']} does not "
                "match its manifest hash: refusing to unpickle it")
        out[fname] = data
    return out
