"""Loading a service: a manifest and its blobs become the callable that scores a row.

Three kinds of service (``manifest["kind"]``):

- ``fn``: a pickled function, an optional pickled ``init`` function, models and
  objects that become globals of both;
- ``str``: ``init_str`` and ``code_str`` source, run with ``exec``;
- ``realtime``: a fitted model whose ``predict`` takes a DataFrame.

User code is pickled by value (cloudpickle), so unpickling is where a version
skew between the publishing and the scoring interpreter shows: the error then
names the versions that differ. Nothing here runs rows (see :mod:`.runtime`).

The warm template (:mod:`.zygote`) calls :func:`preload`: it reads and verifies
a revision's blobs and unpickles them (importing what the service needs), but
runs no ``init``. A worker forked from it then finds the manifest, the blobs
and their unpickled objects in its copy of this module's cache, so
:func:`load_callable` unpickles nothing (:func:`read_service` still reads and
checks the blobs on disk: a revision changed since is refused, not served from
memory); it only runs ``init`` (in the worker: a connection init opens is never shared
across a fork). Each cached object is used once, so a second load in the same
process unpickles afresh.
"""

from __future__ import annotations

import builtins
import dis
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ServiceLoadError
from .._store.fsutil import read_json, sha256
from .._store.registry import read_blobs

__all__ = ["Call", "forget_preloaded", "load_callable", "preload", "preloaded", "read_service"]

#: Scores one row: its input values in the order of the manifest's inputs.
Call = Callable[[Sequence[Any]], Any]

#: Services a template keeps loaded: each holds its blobs and their objects
#: (a statsmodels OLS result: ~1 MB); more are loaded again on demand.
PRELOAD_SERVICES = 8
#: Revision folder → (manifest, verified blobs), most recently used last.
_SERVICES: OrderedDict[str, tuple[dict[str, Any], dict[str, bytes]]] = OrderedDict()
#: id(blob) → (blob, its unpickled object): the blob is kept, so its id stays unique.
_OBJECTS: dict[int, tuple[bytes, Any]] = {}


def preload(spec: dict[str, Any]) -> None:
    """Read, verify and unpickle a revision's blobs now, without running ``init``
    (the warm template's work). Raises what the worker's own load would raise."""
    path = spec.get("path")
    if path is None or path in _SERVICES:
        if path is not None:
            _SERVICES.move_to_end(path)
        return
    manifest, blobs = read_service(spec)
    objects = {}
    for fname, blob in blobs.items():
        if fname.endswith(".pkl"):
            objects[id(blob)] = (blob, _loads(blob, fname[:-4], manifest))
    _SERVICES[path] = (manifest, blobs)
    _OBJECTS.update(objects)
    while len(_SERVICES) > PRELOAD_SERVICES:
        forget_preloaded(next(iter(_SERVICES)))


def preloaded(path: str) -> bool:
    return path in _SERVICES


def forget_preloaded(path: str) -> None:
    """Drop a preloaded revision (evicted, or found to start threads)."""
    _, blobs = _SERVICES.pop(path, (None, {}))
    for blob in blobs.values():
        _OBJECTS.pop(id(blob), None)


def read_service(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and blobs a worker is told to load: a revision folder of the store,
    or a bundle sent by value (its blob hashes are checked before anything is unpickled)."""
    if "path" in spec:
        path = Path(spec["path"])
        manifest = read_json(path / "manifest.json")
        blobs = read_blobs(path, manifest)  # hash-checked: nothing on disk is trusted
        cached = _SERVICES.get(spec["path"])
        if cached is not None and cached[0] == manifest:
            # Forked from a template that loaded these very bytes (same hashes):
            # its unpickled objects stand for them. ~1 ms per MB of blobs, against
            # an unpickle (and its imports) of ~0.3-1 s for a statsmodels model.
            return cached
        forget_preloaded(spec["path"])
        return manifest, blobs
    for fname, digest in spec["manifest"]["blobs"].items():
        if sha256(spec["blobs"][fname]) != digest:
            raise ServiceLoadError(f"service blob {fname} does not match its hash")
    return spec["manifest"], spec["blobs"]


def load_callable(manifest: dict[str, Any], blobs: dict[str, bytes]
                  ) -> tuple[Call, Callable[..., Any] | None]:
    """Unpickle the service and run its ``init`` once.

    Returns the row call, and the service function itself when it can be called
    as is with the row's values (the hot path), else None.
    """
    values = _globals_from_blobs(manifest, blobs)
    if manifest["kind"] == "fn":
        return _init_fn(manifest, blobs, values)
    if manifest["kind"] == "str":
        return _init_str(manifest, values), None
    model = values["model"]
    return (lambda args: _predict(model, args[0])), None


def _globals_from_blobs(manifest: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for fname, blob in blobs.items():
        group, _, rest = fname.partition("-")
        if group in ("model", "object"):
            values[rest[:-4]] = _loads(blob, f"{group} {rest[:-4]!r}", manifest)
    return values


def _init_fn(manifest: dict[str, Any], blobs: dict[str, bytes], values: dict[str, Any]
             ) -> tuple[Call, Callable[..., Any] | None]:
    fn = _loads(blobs["code.pkl"], "code_fn", manifest)
    files = manifest.get("code_files") or {}
    # The function's own captured globals are shared with helpers pickled beside
    # it, so models go into that dict: helpers then see them as globals too.
    ns = fn.__globals__
    ns.setdefault("__builtins__", builtins)
    if "init.pkl" in blobs:
        init = _loads(blobs["init.pkl"], "init_fn", manifest)
        _restore_filenames([init], files.get("init"))
        for key, value in init.__globals__.items():
            ns.setdefault(key, value)
        ns.update(values)
        _rebind(init, ns)()
    else:
        ns.update(values)
    _restore_filenames([fn, *(f for f in _functions_of(ns)
                              if f.__module__ == fn.__module__)], files.get("code"))
    snapshot = dict(ns)
    if any(_writes_globals(f.__code__) for f in [fn, *_functions_of(ns)]):
        # Each call gets a fresh copy of the post-init globals: the namespace the
        # function and its helpers share is reset to the snapshot before the call.
        def call(args: Sequence[Any]) -> Any:
            ns.clear()
            ns.update(snapshot)
            return fn(*args)

        return call, None
    # Nothing in the code can rebind a global, so one shared namespace is
    # indistinguishable from a fresh copy per call, and much cheaper.
    return (lambda args: fn(*args)), fn


def _init_str(manifest: dict[str, Any], values: dict[str, Any]) -> Call:
    ns: dict[str, Any] = {"__builtins__": builtins, "__name__": "__main__", **values}
    init = manifest.get("init_str")
    if init:
        exec(compile(init, "<init_str>", "exec"), ns)
    code = compile(manifest["code_str"], "<code_str>", "exec")
    names = [d["name"] for d in manifest["inputs"]]
    outs = [d["name"] for d in manifest["outputs"]]

    def call(args: Sequence[Any]) -> Any:
        fresh = dict(ns)
        fresh.update(zip(names, args, strict=False))
        exec(code, fresh)
        return {n: fresh.get(n) for n in outs}

    return call


def _predict(model: Any, frame: Any) -> Any:
    """Realtime services: one prediction row per input row, as the SDK's outputData."""
    import pandas as pd  # not at start-up: ~0.4 s that most services never need

    pred = model.predict(frame)
    if isinstance(pred, pd.DataFrame):
        return pred.reset_index(drop=True)
    endog = getattr(getattr(model, "model", None), "endog_names", None)
    column = f"{endog}_Pred" if isinstance(endog, str) else "prediction"
    arr = np.asarray(pred)
    if arr.ndim == 2:
        return pd.DataFrame(arr, columns=[f"{column}_{j}" for j in range(arr.shape[1])])
    return pd.DataFrame({column: arr})


# -- unpickling ----------------------------------------------------------------------


def _loads(blob: bytes, label: str, manifest: dict[str, Any]) -> Any:
    done = _OBJECTS.pop(id(blob), None)
    if done is not None and done[0] is blob:
        return done[1]  # unpickled by the template this worker was forked from
    import cloudpickle

    try:
        return cloudpickle.loads(blob)
    except Exception as exc:
        raise ServiceLoadError(
            f"cannot load {label} of service {manifest['name']} {manifest['version']}: "
            f"{type(exc).__name__}: {exc} ({_version_skew(manifest.get('versions', {}))})"
        ) from exc


def _version_skew(saved: dict[str, Any]) -> str:
    """Saved versions beside this interpreter's, naming the ones that differ."""
    here = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in saved:
        mod = sys.modules.get(name)
        if name != "python" and mod is not None:
            here[name] = str(getattr(mod, "__version__", "?"))
    shown = {"python": "Python"}
    differ = [f"saved with {shown.get(k, k)} {v}, this is {shown.get(k, k)} {here[k]}"
              for k, v in saved.items() if k in here and here[k] != v]
    listed = ", ".join(f"{k} {v}" for k, v in saved.items())
    return ("version skew: " + "; ".join(differ) if differ else f"saved with {listed}")


# -- globals and code objects --------------------------------------------------------


def _writes_globals(code: types.CodeType) -> bool:
    """Whether code (or code nested in it) can rebind a global name."""
    if "globals" in code.co_names:
        return True
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
            return True
    return any(isinstance(c, types.CodeType) and _writes_globals(c) for c in code.co_consts)


def _functions_of(ns: dict[str, Any]) -> list[Any]:
    """Python functions whose globals are ``ns`` (the service function and its helpers)."""
    return [v for v in ns.values() if isinstance(v, types.FunctionType)
            and v.__globals__ is ns]


def _rebind(fn: Any, ns: dict[str, Any]) -> Any:
    new = types.FunctionType(fn.__code__, ns, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_with_filename(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _restore_filenames(fns: Sequence[Any], filename: str | None) -> None:
    """cloudpickle 3 names by-value code "<dynamic-code>": give tracebacks, pdb and
    breakpoints the real file back (line numbers are kept)."""
    if not filename:
        return
    for fn in fns:
        if fn.__code__.co_filename == "<dynamic-code>":
            fn.__code__ = _with_filename(fn.__code__, filename)
