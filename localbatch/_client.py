"""``DeployClient`` / ``MLServer``: the SDK's client, on a local store."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from ._batch import Batch
from ._definition import RealtimeDefinition, ServiceDefinition
from ._engines.executions import Executions
from ._engines.inline import clear_inline_runtimes
from ._engines.registry import get_engine, warm_service
from ._errors import ConfigurationError, InvalidServiceError, ServiceNotFoundError
from ._service import Service
from ._store.executions import ExecutionStore
from ._store.fsutil import open_store_root
from ._store.registry import Registry, ServiceRecord
from ._store.revision import ServiceSpec
from ._workers.pool import DEFAULT_START_METHOD, WORKER_POOL
from ._workers.process import START_METHODS

__all__ = ["DeployClient", "MLServer", "Operationalization", "default_store"]

_SPEC_KEYS = {"version", "alias", "description", "code_str", "init_str", "code_fn", "init_fn",
              "objects", "models", "inputs", "outputs", "artifacts", "vectorized"}
_REALTIME_KEYS = {"version", "alias", "description", "serialized_model"}


def default_store() -> Path:
    """``$LOCALBATCH_HOME``, else a per-user data folder."""
    home = os.environ.get("LOCALBATCH_HOME")
    if home:
        return Path(home).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "share")
    return Path(base) / "localbatch"


def _resolve_store(host: Any) -> Path:
    if host is None:
        return default_store()
    if isinstance(host, Path):
        return host.expanduser().resolve()
    if not isinstance(host, str):
        raise ConfigurationError(f"DeployClient(host) takes a store path or an http(s) URL, not "
                                 f"{type(host).__name__}")
    if host.lower().startswith(("http://", "https://")):
        return default_store()
    if not host.strip():
        # Path("") is the working directory: never make it a store by accident.
        raise ConfigurationError("DeployClient(host) got an empty store path: pass a folder, "
                                 "an http(s) URL or nothing for the default store")
    return Path(host).expanduser().resolve()


class Operationalization:
    """The SDK's abstract client: builders on top of the deploy/get/list primitives."""

    def initializer(self, *args: Any, **kwargs: Any) -> None:
        """Kept for SDK compatibility: nothing to initialise locally."""

    def destructor(self) -> None:
        """Kept for SDK compatibility."""

    def authentication(self, context: Any) -> None:
        """Accepted and ignored: a local store needs no login."""

    def service(self, name: str) -> ServiceDefinition:
        """A fluent builder of a standard service: ``.code_fn(...)....deploy()``."""
        return ServiceDefinition(name, self)

    def realtime_service(self, name: str) -> RealtimeDefinition:
        """A fluent builder of a realtime service: ``.serialized_model(m).deploy()``."""
        return RealtimeDefinition(name, self)


class MLServer(Operationalization):
    """The local "server": a registry of services and a store of executions."""

    def __init__(self, store: Any = None, *, engine: Any = None,
                 start_method: str | None = None, strict: bool | None = None) -> None:
        self.store_path = _resolve_store(store)
        if self.store_path.exists() and not self.store_path.is_dir():
            raise ConfigurationError(f"store {self.store_path} is a file, not a folder")
        try:
            # strict: a store others can write is an error, not a warning (None: the
            # LOCALBATCH_STRICT environment variable decides).
            open_store_root(self.store_path, strict)
        except OSError as exc:
            raise ConfigurationError(f"cannot create store {self.store_path}: {exc}") from None
        self._registry = Registry(self.store_path)
        start_method = start_method or os.environ.get("LOCALBATCH_START_METHOD",
                                                      DEFAULT_START_METHOD)
        _check_start_method(start_method)
        #: Shared with every Service and Batch of this client (fails fast on a bad engine).
        self._executions = Executions(ExecutionStore(self.store_path), self._registry, engine,
                                      start_method)
        self._engine = engine

    def __repr__(self) -> str:
        return f"<{type(self).__name__} store={str(self.store_path)!r}>"

    @property
    def engine(self) -> Any:
        """The default engine of this client's batches and calls, as given (None: local).

        Setting it applies to every later batch and call of its services.
        """
        return self._engine

    @engine.setter
    def engine(self, engine: Any) -> None:
        self._executions.engine = get_engine(engine)  # a bad engine fails here
        self._engine = engine

    @property
    def start_method(self) -> str:
        """How worker processes start (``"spawn"`` or ``"forkserver"``); settable."""
        return self._executions.start_method

    @start_method.setter
    def start_method(self, start_method: str) -> None:
        _check_start_method(start_method)
        self._executions.start_method = start_method

    # services -----------------------------------------------------------------

    def get_service(self, name: str, **opts: Any) -> Any:
        """The ``Service`` of ``name`` (``version=None``: the most recently published)."""
        version = opts.pop("version", None)
        _no_extra(opts, "get_service")
        # Not warmed here: getting (or listing) a service never unpickles its code, in this
        # process or another; its first batch warms the template (deploy did already).
        return Service(self._find(name, version), self._executions)

    def _find(self, name: str, version: str | None = None) -> Any:
        """The registry's record; not found says what is there (close names, versions)."""
        try:
            return self._registry.get(name, version)
        except ServiceNotFoundError as exc:
            if not str(exc).startswith("No service found"):
                raise  # a revision gone under a running batch: nothing to suggest
            raise ServiceNotFoundError(f"{exc}{_not_found_help(self._registry, name, version)}"
                                       ) from None

    def list_services(self, name: str | None = None, **opts: Any) -> list[dict[str, Any]]:
        """The SDK's metadata dicts of every service, or of one name (and ``version``)."""
        version = opts.pop("version", None)
        _no_extra(opts, "list_services")
        return [r.meta() for r in self._registry.list(name, version)]

    def delete_service(self, name: str, **opts: Any) -> bool:
        """Unpublish one version (``version=`` is required, as in the SDK); True."""
        version = opts.pop("version", None)
        _no_extra(opts, "delete_service")
        if version is None:
            raise ValueError("Missing the required parameter `version`: delete_service(name, "
                             "version=...) deletes one version")
        store = self._executions.store
        # Revisions of executions, and of batches still starting, stay (see Registry.delete),
        # which also deletes a version whose manifest is damaged.
        try:
            return self._registry.delete(name, version,
                                         lambda: store.pinned_revisions(name, version))
        except ServiceNotFoundError:
            self._find(name, version)  # raises the error that suggests close names
            raise

    def deploy_service(self, name: str, **opts: Any) -> Any:
        """Publish a service from the builder's options as keywords; returns the Service."""
        return self._publish(name, opts, replace=False)

    def redeploy_service(self, name: str, force: bool = False, **opts: Any) -> Any:
        """Replace a version (no version: the latest); IO left unset keeps the old IO."""
        return self._publish(name, opts, replace=True)

    def deploy_realtime(self, name: str, **opts: Any) -> Any:
        """Publish a realtime service: ``serialized_model`` with ``.predict(DataFrame)``."""
        return self._publish(name, opts, replace=False, realtime=True)

    def redeploy_realtime(self, name: str, force: bool = False, **opts: Any) -> Any:
        """Replace a realtime version (``version=`` is required, as in the SDK)."""
        if opts.get("version") is None:
            raise ValueError("Missing the required parameter `version` when calling "
                             "`update_realtime_service`")
        return self._publish(name, opts, replace=True, realtime=True)

    def _publish(self, name: str, opts: dict[str, Any], *, replace: bool,
                 realtime: bool = False) -> Any:
        allowed = _REALTIME_KEYS if realtime else _SPEC_KEYS
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise InvalidServiceError(f"unknown service option(s): {', '.join(unknown)} "
                                      f"(allowed: {', '.join(sorted(allowed))})")
        spec = ServiceSpec(name=name, runtime="Realtime" if realtime else "Python")
        for key, value in opts.items():
            setattr(spec, key, value)
        spec.models = dict(spec.models or {})
        spec.objects = dict(spec.objects or {})
        if replace and spec.version is None:
            try:
                spec.version = self._registry.latest(name).version
            except ServiceNotFoundError:
                raise ServiceNotFoundError(f"No service found for {name}: deploy it first"
                                           f"{_not_found_help(self._registry, name, None)}")
        # The consume method lives on the Service: it may not hide one of its members.
        record = self._registry.publish(spec, replace=replace, reserved=dir(Service))
        return Service(self._warm(record), self._executions)

    def _warm(self, record: ServiceRecord) -> ServiceRecord:
        """Its workers' template starts loading it now, ahead of the first batch."""
        warm_service(self._executions.engine, record, self._executions.start_method)
        return record

    # session pools of ML Server 9.3: nothing to manage locally -----------------

    def create_or_update_service_pool(self, name: str, version: str, initial_pool_size: int,
                                      max_pool_size: int, **opts: Any) -> None:
        """Local no-op: warm worker pools are managed automatically."""
        self._find(name, version)

    def get_service_pool_status(self, name: str, version: str, **opts: Any
                                ) -> list[dict[str, str]]:
        """Local stand-in: the one local "node" is always ready."""
        self._find(name, version)
        return [{"computeNodeEndpoint": "local", "status": "Success"}]

    def delete_service_pool(self, name: str, version: str, **opts: Any) -> bool:
        """Local no-op: idle workers stop by themselves."""
        self._find(name, version)
        return True

    # executions (beyond the SDK) --------------------------------------------------

    def list_executions(self, name: str | None = None, version: str | None = None
                        ) -> list[dict[str, Any]]:
        """Every execution in the store (newest last), with its effective state."""
        return self._executions.listing(name, version)

    def get_execution(self, execution_id: str) -> Any:
        """The ``Batch`` of an execution id, without knowing its service."""
        header = self._executions.store.read_header(execution_id)
        try:
            record = self._registry.revision(header["service"], header["version"],
                                             header["revision"])
        except ServiceNotFoundError:
            record = self._registry.get(header["service"])
        return Batch(Service(record, self._executions), execution_id=execution_id)

    def verify(self, execution_id: str | None = None) -> list[Any]:
        """What is damaged in the store (or in one execution): a list of findings, each
        with ``path``, ``problem`` and ``damaged`` (False: a note). Empty: all intact."""
        from ._store.maintenance import verify_store

        return verify_store(self.store_path, execution_id)

    def gc(self, dry_run: bool = False) -> list[Any]:
        """Remove staging leftovers, dead owners' board folders and revisions nothing
        uses; returns what was (``dry_run``: would be) removed, with ``path``,
        ``reason`` and ``size``."""
        from ._store.maintenance import gc_store

        return gc_store(self.store_path, dry_run)

    def close(self) -> None:
        """Stop this process's idle warm workers now (they also stop at exit).

        Inline services loaded in this process are forgotten too.
        """
        WORKER_POOL.close()
        clear_inline_runtimes()

    def __enter__(self) -> MLServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_LIST_HINT = "list them with client.list_services(), or `localbatch services` in a shell"


def _not_found_help(registry: Registry, name: str, version: str | None) -> str:
    """"; did you mean 'TxService'? (...)" or the versions a found name has."""
    records = registry.list()
    versions = [r.version for r in records if r.name == name]
    if version is not None and versions:
        return f"; its versions: {', '.join(versions)}"
    names = sorted({r.name for r in records})
    if not names:
        return " (this store has no services yet)"
    by_lower: dict[str, list[str]] = {}
    for n in names:
        by_lower.setdefault(n.lower(), []).append(n)
    close = by_lower.get(name.lower()) or [
        n for low in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
        for n in by_lower[low]]
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"{hint} ({_LIST_HINT})"


def _check_start_method(start_method: Any) -> None:
    if start_method not in START_METHODS:
        raise ConfigurationError(f"start_method must be one of {START_METHODS}")


def _no_extra(opts: dict[str, Any], where: str) -> None:
    if opts:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(opts)}")


_USE_NAMES = {"MLServer", "azureml.deploy.server.MLServer", "localbatch.MLServer"}


def _check_use(use: Any) -> None:
    if use is None:
        return
    if isinstance(use, type) and issubclass(use, Operationalization):
        return
    if isinstance(use, str) and use in _USE_NAMES:
        return
    if isinstance(use, tuple) and len(use) == 2 and use[0] in _USE_NAMES:
        return
    if isinstance(use, type) and use.__name__ == "MLServer":
        return
    raise ImportError(f"No module named `use={use!r}`: use MLServer, 'MLServer' or "
                      "'azureml.deploy.server.MLServer'")


class DeployClient(MLServer):
    """Open a local store, with the SDK's constructor.

    ``DeployClient()`` opens the default store (``$LOCALBATCH_HOME``, else a per-user
    folder); ``DeployClient("path/to/store")`` that folder; the SDK form
    ``DeployClient("http://host:12800", use=MLServer, auth=(user, pw))`` the default
    store (``auth`` is accepted and ignored).
    """

    def __init__(self, host: Any = None, auth: Any = None, use: Any = None, *,
                 engine: Any = None, start_method: str | None = None,
                 strict: bool | None = None) -> None:
        _check_use(use)
        super().__init__(host, engine=engine, start_method=start_method, strict=strict)
        if auth is not None:
            self.authentication(auth)
