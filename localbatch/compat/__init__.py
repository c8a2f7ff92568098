"""A drop-in for code written against the SDK: ``azureml.deploy`` backed by localbatch.

Application code written for Machine Learning Server runs unchanged::

    from localbatch.compat import install_azureml

    dropin = install_azureml()             # or: with localbatch.compat.azureml(): ...
    from azureml.deploy import DeployClient
    from azureml.deploy.server import MLServer

    client = DeployClient("http://localhost:12800", use=MLServer, auth=("admin", "pw"))
    ...                                    # get_service, batch, results, artifacts
    dropin.uninstall()

``install_azureml()`` puts the modules ``azureml``, ``azureml.deploy``,
``azureml.deploy.server`` (with ``.service``, ``.mlserver``,
``.encoding_type``), ``azureml.deploy.operationalization``,
``azureml.deploy.deploy_client`` and ``azureml.common.http_client`` into
``sys.modules``, exposing localbatch's classes under the SDK's paths. It refuses
to shadow a real ``azureml`` package that is already imported.

The drop-in's ``DeployClient`` is localbatch's, with two differences for code
written against a server: an http(s) host (or none) opens the drop-in's store
(``home``, else ``$LOCALBATCH_HOME``, else the per-user default), and where ML
Server answers an HTTP error, the drop-in raises :class:`HttpException` with the
status the server would have answered. Each is a subclass that keeps its
localbatch class, so ``except HttpException`` (SDK code) and ``except
ServiceExistsError`` / ``except ValueError`` (localbatch code) both catch it::

    HttpNotFound             404  ServiceNotFoundError    get/delete/redeploy, pools
    HttpServiceExists        409  ServiceExistsError      deploy of a published version
    HttpBadRequest           400  InvalidServiceError     a definition the server refuses
    HttpExecutionNotFound    404  ExecutionNotFoundError  get_batch, results, cancel
    HttpRowNotFound          404  RowNotRecordedError     list_artifacts, artifact, download
    HttpArtifactNotFound     404  ArtifactNotFoundError   artifact, download

The SDK's client-side errors stay as they are (``ValueError`` for a bad input
value or a missing ``version=``, ``TypeError`` for an unknown keyword). ML Server
answers 401 to a bad login; locally ``auth`` is accepted and ignored, so no call
raises it. The services and batches the drop-in's client returns map their errors
the same way. Modules imported while the drop-in was installed keep the classes
they bound; those classes follow the drop-in that is installed when they are called.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import localbatch as lb

from .._client import default_store
from .._definition import OperationalizationDefinition
from .._engines.registry import get_engine
from .._errors import (
    ArtifactNotFoundError,
    ConfigurationError,
    ExecutionNotFoundError,
    InvalidServiceError,
    LocalBatchError,
    RowNotRecordedError,
    ServiceExistsError,
    ServiceNotFoundError,
)

__all__ = ["DeployClient", "DropIn", "HttpArtifactNotFound", "HttpBadRequest", "HttpException",
           "HttpExecutionNotFound", "HttpNotFound", "HttpRowNotFound", "HttpServiceExists",
           "azureml", "install_azureml"]

_MARK = "__localbatch_dropin__"
_F = TypeVar("_F", bound=Callable[..., Any])


class HttpException(LocalBatchError):
    """The SDK's ``azureml.common.http_client.HttpException``; locally, a failed lookup."""

    def __init__(self, status: int | None = None, reason: str | None = None,
                 resp: Any = None) -> None:
        if resp is not None:
            status = getattr(resp, "status_code", status)
            reason = getattr(resp, "reason", reason)
        self.status, self.reason = status, reason
        self.body = getattr(resp, "text", None)
        self.headers = getattr(resp, "headers", None)
        super().__init__(status, reason)

    def __str__(self) -> str:
        text = f"({self.status})\nReason: {self.reason}\n"
        if self.headers:
            text += f"HTTP response headers: {self.headers}\n"
        if self.body:
            text += f"HTTP response body: {self.body}\n"
        return text


class HttpNotFound(HttpException, ServiceNotFoundError):
    """A missing service: ML Server answers 404, so SDK code catches ``HttpException``."""


class HttpServiceExists(HttpException, ServiceExistsError):
    """A deploy of a name and version already published: ML Server answers 409."""


class HttpBadRequest(HttpException, InvalidServiceError):
    """A service definition the server refuses (a bad name, type or option): 400."""


class HttpExecutionNotFound(HttpException, ExecutionNotFoundError):
    """No batch execution with that id: ML Server answers 404 "Execution not found"."""


class HttpRowNotFound(HttpException, RowNotRecordedError):
    """The files of a row that has no result (yet): 404."""


class HttpArtifactNotFound(HttpException, ArtifactNotFoundError):
    """No artifact of that name for the row: 404."""


#: localbatch's error → the drop-in's, with the status ML Server answers (first match).
_HTTP: tuple[tuple[type[LocalBatchError], type[HttpException], int], ...] = (
    (ServiceNotFoundError, HttpNotFound, 404),
    (ServiceExistsError, HttpServiceExists, 409),
    (InvalidServiceError, HttpBadRequest, 400),
    (ExecutionNotFoundError, HttpExecutionNotFound, 404),
    (RowNotRecordedError, HttpRowNotFound, 404),
    (ArtifactNotFoundError, HttpArtifactNotFound, 404),
)


def _as_http(exc: LocalBatchError) -> HttpException | None:
    for error, http, status in _HTTP:
        if isinstance(exc, error):
            return http(status, str(exc))  # str(): "(404)\nReason: No service found..."
    return None


def _http_errors(method: _F) -> _F:
    """``method`` raising the drop-in's HttpException subclasses (see ``_HTTP``), and
    returning the drop-in's Service and Batch."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return _adopt(method(*args, **kwargs))
        except HttpException:
            raise
        except LocalBatchError as exc:
            http = _as_http(exc)
            if http is None:
                raise
            raise http from None

    return wrapper  # type: ignore[return-value]


class _HttpService:
    """Mixed into a returned Service's class: its batch calls map errors to HTTP ones."""

    get_batch = _http_errors(lb.Service.get_batch)
    batch = _http_errors(lb.Service.batch)


class _HttpBatch(lb.Batch):
    """The drop-in's Batch: the calls ML Server answers over HTTP map their errors."""

    results = _http_errors(lb.Batch.results)
    cancel = _http_errors(lb.Batch.cancel)
    list_artifacts = _http_errors(lb.Batch.list_artifacts)
    artifact = _http_errors(lb.Batch.artifact)
    download = _http_errors(lb.Batch.download)


@functools.lru_cache(maxsize=256)
def _service_class(cls: type) -> type:
    return type(cls.__name__, (_HttpService, cls), {"__module__": cls.__module__})


def _adopt(value: Any) -> Any:
    """A Service or Batch made by localbatch, as the drop-in's (same object, same state)."""
    if isinstance(value, lb.Service) and not isinstance(value, _HttpService):
        value.__class__ = _service_class(type(value))
    elif isinstance(value, lb.Batch) and not isinstance(value, _HttpBatch):
        value.__class__ = _HttpBatch
    return value


@dataclass(frozen=True)
class _Settings:
    home: Path | None
    engine: Any


def _is_server_host(host: Any) -> bool:
    return host is None or (isinstance(host, str)
                            and host.lower().startswith(("http://", "https://")))


class DeployClient(lb.DeployClient):
    """``azureml.deploy.DeployClient`` under the drop-in: the SDK's constructor, locally.

    ``DeployClient(HOST, use=MLServer, auth=...)`` with an http(s) ``HOST`` (or
    ``None``) opens the installed drop-in's store; a path opens that store. The
    drop-in's ``engine`` is the default for ``engine``.
    """

    def __init__(self, host: Any = None, auth: Any = None, use: Any = None, *,
                 engine: Any = None, start_method: str | None = None) -> None:
        settings = _settings()
        if settings is not None:
            if settings.home is not None and _is_server_host(host):
                host = settings.home
            if engine is None:
                engine = settings.engine
        super().__init__(host, auth, use, engine=engine, start_method=start_method)

    get_service = _http_errors(lb.DeployClient.get_service)
    delete_service = _http_errors(lb.DeployClient.delete_service)
    deploy_service = _http_errors(lb.DeployClient.deploy_service)
    redeploy_service = _http_errors(lb.DeployClient.redeploy_service)
    deploy_realtime = _http_errors(lb.DeployClient.deploy_realtime)
    redeploy_realtime = _http_errors(lb.DeployClient.redeploy_realtime)
    get_execution = _http_errors(lb.DeployClient.get_execution)
    create_or_update_service_pool = _http_errors(lb.DeployClient.create_or_update_service_pool)
    get_service_pool_status = _http_errors(lb.DeployClient.get_service_pool_status)
    delete_service_pool = _http_errors(lb.DeployClient.delete_service_pool)


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name, f"localbatch drop-in for {name}")
    setattr(mod, _MARK, True)
    mod.__dict__.update(attrs)
    mod.__all__ = sorted(k for k, v in attrs.items()  # type: ignore[attr-defined]
                         if not isinstance(v, types.ModuleType))
    return mod


def _package(name: str, **attrs: Any) -> types.ModuleType:
    mod = _module(name, **attrs)
    mod.__path__ = []  # type: ignore[attr-defined]  # a package: submodules resolve
    return mod


def _build_modules() -> dict[str, types.ModuleType]:
    """The SDK's module tree, each module exposing localbatch's classes."""
    service_names = dict(Service=lb.Service, WebServiceService=lb.Service,
                         ServiceResponse=lb.ServiceResponse, Batch=lb.Batch,
                         BatchResponse=lb.BatchResponse)
    service = _module("azureml.deploy.server.service", **service_names)
    mlserver = _module("azureml.deploy.server.mlserver", MLServer=lb.MLServer)
    encoding = _module("azureml.deploy.server.encoding_type", EncodingType=lb.EncodingType)
    server = _package("azureml.deploy.server", MLServer=lb.MLServer, MLServerAdapter=lb.MLServer,
                      EncodingType=lb.EncodingType, **service_names, service=service,
                      mlserver=mlserver, encoding_type=encoding)
    operationalization = _module(
        "azureml.deploy.operationalization", Operationalization=lb.Operationalization,
        OperationalizationDefinition=OperationalizationDefinition,
        ServiceDefinition=lb.ServiceDefinition, RealtimeDefinition=lb.RealtimeDefinition)
    deploy_client = _module("azureml.deploy.deploy_client", DeployClient=DeployClient)
    deploy = _package("azureml.deploy", DeployClient=DeployClient,
                      Operationalization=lb.Operationalization,
                      ServiceDefinition=lb.ServiceDefinition,
                      RealtimeDefinition=lb.RealtimeDefinition, MLServerAdapter=lb.MLServer,
                      server=server, operationalization=operationalization,
                      deploy_client=deploy_client)
    http_client = _module("azureml.common.http_client", HttpException=HttpException)
    common = _package("azureml.common", http_client=http_client)
    root = _package("azureml", deploy=deploy, common=common)
    mods = (root, deploy, deploy_client, operationalization, server, service, mlserver,
            encoding, common, http_client)
    return {m.__name__: m for m in mods}


# Installs nest: the modules go in with the first handle and out with the last;
# the innermost handle's settings apply.
_LOCK = threading.RLock()
#: Installed handles, innermost last, each with the settings it was installed with.
_STACK: list[tuple[DropIn, _Settings]] = []
_INSTALLED: dict[str, types.ModuleType] = {}


def _settings() -> _Settings | None:
    with _LOCK:
        return _STACK[-1][1] if _STACK else None


def _foreign_azureml() -> list[str]:
    """Names of ``azureml`` modules in ``sys.modules`` that are not the drop-in's."""
    return sorted(name for name, mod in list(sys.modules.items())
                  if (name == "azureml" or name.startswith("azureml."))
                  and not getattr(mod, _MARK, False))


class DropIn:
    """An installed drop-in; ``uninstall()`` (or leaving its ``with``) takes it out."""

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings
        self.installed = True

    @property
    def store(self) -> Path:
        """The store ``DeployClient(HOST, use=MLServer, ...)`` opens under this drop-in."""
        return self._settings.home if self._settings.home is not None else default_store()

    @property
    def engine(self) -> Any:
        """The default engine of the drop-in's clients (None: localbatch's default)."""
        return self._settings.engine

    @property
    def modules(self) -> list[str]:
        """The module names the drop-in puts into ``sys.modules``."""
        return sorted(_INSTALLED)

    def uninstall(self) -> None:
        """Take the drop-in out; the last handle out removes its modules. Idempotent."""
        with _LOCK:
            if not self.installed:
                return
            self.installed = False
            _STACK[:] = [entry for entry in _STACK if entry[0] is not self]
            if _STACK:
                return
            for name, mod in _INSTALLED.items():
                if sys.modules.get(name) is mod:
                    del sys.modules[name]
            _INSTALLED.clear()

    def __enter__(self) -> DropIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        state = "installed" if self.installed else "uninstalled"
        return f"<DropIn {state} store={str(self.store)!r} engine={self.engine!r}>"


def install_azureml(home: str | Path | None = None, *, engine: Any = None) -> DropIn:
    """Install the ``azureml`` drop-in into ``sys.modules``; returns its handle.

    ``home``: the store that ``DeployClient`` opens for an http(s) host (default:
    ``$LOCALBATCH_HOME``, else the per-user store). ``engine``: the default engine
    of its clients, e.g. ``"inline"`` to run rows in this process. Raises
    ``ConfigurationError`` rather than shadow a real ``azureml`` already imported.
    """
    settings = _Settings(None if home is None else Path(home).expanduser().resolve(), engine)
    _check_engine(engine)
    with _LOCK:
        foreign = _foreign_azureml()
        if foreign:
            raise ConfigurationError(
                f"a real `azureml` package is already imported ({', '.join(foreign[:3])}): "
                "the localbatch drop-in will not shadow it. Run the code in a fresh "
                "interpreter, or without azureml-model-management-sdk installed.")
        if not _STACK:
            _INSTALLED.update(_build_modules())
        sys.modules.update(_INSTALLED)
        handle = DropIn(settings)
        _STACK.append((handle, settings))
        return handle


def _check_engine(engine: Any) -> None:
    """Fail at install, not at the first batch, on a bad engine name."""
    if engine is not None:
        get_engine(engine)


@contextlib.contextmanager
def azureml(home: str | Path | None = None, *, engine: Any = None) -> Iterator[DropIn]:
    """Scoped form of :func:`install_azureml`: ``with localbatch.compat.azureml(): ...``."""
    handle = install_azureml(home, engine=engine)
    try:
        yield handle
    finally:
        handle.uninstall()
