"""A drop-in for code written against the SDK: ``azureml.deploy`` backed by localbatch.

``install_azureml()`` puts modules ``azureml``, ``azureml.deploy`` and
``azureml.deploy.server`` (plus ``azureml.deploy.operationalization`` and
``azureml.common``) into ``sys.modules``, exposing localbatch's classes under the
SDK's paths, and returns a handle whose ``uninstall()`` takes them out again;
``with azureml():`` is the scoped form. ``DeployClient(HOST, use=MLServer,
auth=...)`` then opens the default local store (``$LOCALBATCH_HOME``).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

from .._errors import ConfigurationError, LocalBatchError

__all__ = ["DropIn", "HttpException", "azureml", "install_azureml"]

_MARK = "__localbatch_dropin__"


class HttpException(LocalBatchError):
    """The SDK's HTTP error, importable for ``except`` clauses; no HTTP happens locally."""

    def __init__(self, status: int | None = None, reason: str | None = None,
                 resp: object = None) -> None:
        super().__init__(f"({status})\nReason: {reason}\n")
        self.status, self.reason, self.body, self.headers = status, reason, None, None


def _modules() -> dict[str, types.ModuleType]:
    import localbatch as lb

    from .._definition import OperationalizationDefinition

    def module(name: str, **attrs: object) -> types.ModuleType:
        mod = types.ModuleType(name, f"localbatch drop-in for {name}")
        setattr(mod, _MARK, True)
        mod.__dict__.update(attrs)
        mod.__all__ = sorted(k for k in attrs if not k.startswith("_"))  # type: ignore[attr-defined]
        return mod

    server_names = dict(MLServer=lb.MLServer, MLServerAdapter=lb.MLServer, Service=lb.Service,
                        ServiceResponse=lb.ServiceResponse, Batch=lb.Batch,
                        BatchResponse=lb.BatchResponse, EncodingType=lb.EncodingType)
    server = module("azureml.deploy.server", **server_names)
    server.__path__ = []  # type: ignore[attr-defined]
    service = module("azureml.deploy.server.service", **server_names)
    mlserver = module("azureml.deploy.server.mlserver", MLServer=lb.MLServer)
    encoding = module("azureml.deploy.server.encoding_type", EncodingType=lb.EncodingType)
    operationalization = module(
        "azureml.deploy.operationalization", Operationalization=lb.Operationalization,
        OperationalizationDefinition=OperationalizationDefinition,
        ServiceDefinition=lb.ServiceDefinition, RealtimeDefinition=lb.RealtimeDefinition)
    deploy = module("azureml.deploy", DeployClient=lb.DeployClient,
                    Operationalization=lb.Operationalization,
                    ServiceDefinition=lb.ServiceDefinition,
                    RealtimeDefinition=lb.RealtimeDefinition, MLServerAdapter=lb.MLServer,
                    server=server, operationalization=operationalization)
    deploy.__path__ = []  # type: ignore[attr-defined]
    http_client = module("azureml.common.http_client", HttpException=HttpException)
    common = module("azureml.common", http_client=http_client)
    common.__path__ = []  # type: ignore[attr-defined]
    root = module("azureml", deploy=deploy, common=common)
    root.__path__ = []  # type: ignore[attr-defined]
    server.service, server.mlserver, server.encoding_type = service, mlserver, encoding  # type: ignore[attr-defined]
    return {m.__name__: m for m in (root, deploy, server, service, mlserver, encoding,
                                      operationalization, common, http_client)}


class DropIn:
    """Handle of an installed drop-in; ``uninstall()`` restores ``sys.modules``."""

    def __init__(self, names: list[str]) -> None:
        self._names = names
        self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            for name in self._names:
                mod = sys.modules.get(name)
                if mod is not None and getattr(mod, _MARK, False):
                    del sys.modules[name]
            self.installed = False

    def __enter__(self) -> DropIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def install_azureml() -> DropIn:
    """Install the ``azureml`` drop-in; refuses to shadow a real, imported ``azureml``."""
    existing = sys.modules.get("azureml")
    if existing is not None and not getattr(existing, _MARK, False):
        raise ConfigurationError(
            "a real `azureml` package is already imported: the localbatch drop-in will not "
            "shadow it (run in a fresh interpreter, or uninstall azureml-model-management-sdk)")
    mods = _modules()
    sys.modules.update(mods)
    return DropIn(list(mods))


@contextlib.contextmanager
def azureml() -> Iterator[DropIn]:
    """Scoped form: ``with localbatch.compat.azureml(): ...``."""
    handle = install_azureml()
    try:
        yield handle
    finally:
        handle.uninstall()
