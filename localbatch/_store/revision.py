"""Turning a service spec into a revision: a manifest and its blobs.

What the user declared (:class:`ServiceSpec`) is validated and turned into the
manifest (``manifest.json``: names, typed inputs and outputs, the SDK's code
texts, library versions, each blob's SHA-256) and the blobs themselves: the
code, init, models and objects pickled with cloudpickle. Modules of user code
outside site-packages and the standard library are pickled by value, so a
service survives its module being moved or deleted. Nothing is written here:
``registry.py`` publishes the result. This is the one module under ``_store``
that pickles.
"""

from __future__ import annotations

import contextlib
import inspect
import keyword
import os
import sys
import sysconfig
import types
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import InvalidServiceError
from .._schema import check_artifact_name, check_input_name, encoding_of
from .._version import __version__ as _lb_version
from .fsutil import sha256

if TYPE_CHECKING:
    from .registry import Manifest

__all__ = ["FORMAT_VERSION", "ServiceSpec", "build_revision", "check_name", "source_text"]

#: 2: manifests and `current` carry a checksum (fsutil.read_json); 1 is read unverified.
FORMAT_VERSION = 2


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


def source_text(fn: Callable[..., Any] | None) -> str | None:
    """The source of a function, when Python can find it."""
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
    code = (source_text(spec.code_fn) or "") + "\n" + line
    init_source = source_text(spec.init_fn)
    init = init_source + "\ninit()" if init_source else ""
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
                   ) -> tuple[Manifest, dict[str, bytes]]:
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
    manifest: Manifest = {
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
        check_artifact_name(name)
        if name == ".localbatch-checksums":  # the artifact folder's own checksum file
            raise InvalidServiceError(f"artifact name {name!r} is reserved by localbatch")
        if name not in out:
            out.append(name)
    return out
